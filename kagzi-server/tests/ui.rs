//! The dashboard over real HTTP, on PostgreSQL and on SQLite: pages a person reads (runs,
//! a run's timeline, schedules, workers, queues), the actions behind its buttons, the refusal
//! of forms posted from other sites, and the login that an API key asks for.

mod support;

use std::time::Duration;

use kagzi::{Client, RunId, RunStatus, Worker, WorkflowContext};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, LOCATION, SET_COOKIE};
use serde_json::{Value, json};
use support::{TestDb, eventually};

/// An HTTP client that shows redirects instead of following them.
fn browser_like() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// `order`: two steps, a wait for `approve`, one more step. `boom` fails at once.
fn workflows(worker: &mut Worker) {
    worker.register("order", |ctx: WorkflowContext, input: Value| async move {
        let _: u32 = ctx.run("reserve", async { Ok(1) }).await?;
        let _: u32 = ctx.run("charge", async { Ok(2) }).await?;
        let approval: Value = ctx.wait_for_signal("approve").await?;
        let _: u32 = ctx.run("ship", async { Ok(3) }).await?;
        Ok(json!({"input": input, "approval": approval}))
    });
    worker.register("boom", |ctx: WorkflowContext, (): ()| async move {
        let (): () = ctx
            .run("charge", async { anyhow::bail!("the card was declined") })
            .await?;
        Ok(())
    });
}

async fn get(http: &reqwest::Client, url: &str) -> (StatusCode, String) {
    let answer = http.get(url).send().await.expect("GET");
    let status = answer.status();
    if status.is_success() {
        let kind = answer.headers()[CONTENT_TYPE]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert!(kind.starts_with("text/html"), "{url} answered {kind}");
    }
    (status, answer.text().await.expect("body"))
}

/// Posts a form as the dashboard's own page would (same origin); answers the redirect target.
async fn post(http: &reqwest::Client, base: &str, path: &str, form: &[(&str, &str)]) -> String {
    let answer = http
        .post(format!("{base}{path}"))
        .header("origin", base)
        .header("sec-fetch-site", "same-origin")
        .form(form)
        .send()
        .await
        .expect("POST");
    assert_eq!(answer.status(), StatusCode::SEE_OTHER, "{path}");
    answer.headers()[LOCATION]
        .to_str()
        .expect("ascii")
        .to_owned()
}

async fn status_of(client: &Client, id: RunId) -> RunStatus {
    client.run(id).await.expect("run").status
}

/// A server with a worker of `order` and `boom`, three orders waiting for approval (idempotency
/// keys `order-0` to `order-2`) and one failed `boom`.
struct Shop {
    /// Kept so that the server runs as long as the test.
    _server: kagzi_server::Server,
    base: String,
    client: Client,
    stop: tokio_util::sync::CancellationToken,
    orders: Vec<RunId>,
    failed: RunId,
}

impl Shop {
    async fn open(db: &TestDb) -> Self {
        let server = db.start_server().await;
        let base = support::url(&server);
        let client = Client::connect(&base).await.expect("client");
        let mut worker = Worker::builder(&base, "shop")
            .build()
            .await
            .expect("worker");
        workflows(&mut worker);
        let (stop, _worker) = support::spawn_worker(worker);
        let mut orders = Vec::new();
        for n in 0..3 {
            let id = client
                .workflow("order", "shop", json!({"n": n}))
                .idempotency_key(format!("order-{n}"))
                .await
                .expect("start");
            orders.push(id);
        }
        let failed = client.workflow("boom", "shop", ()).await.expect("start");
        for id in &orders {
            eventually(
                "the order waits for approval",
                Duration::from_secs(10),
                || async { status_of(&client, *id).await == RunStatus::Waiting },
            )
            .await;
        }
        eventually("boom fails", Duration::from_secs(10), || async {
            status_of(&client, failed).await == RunStatus::Failed
        })
        .await;
        Self {
            _server: server,
            base,
            client,
            stop,
            orders,
            failed,
        }
    }
}

async fn the_dashboard_shows_runs_and_acts_on_them(db: TestDb) {
    let shop = Shop::open(&db).await;
    let (base, client, orders, failed) = (&shop.base, &shop.client, &shop.orders, shop.failed);
    let http = browser_like();

    let root = http.get(format!("{base}/")).send().await.expect("GET /");
    assert!(root.status().is_redirection());
    assert_eq!(root.headers()[LOCATION], "/ui");

    // The runs page: every run, counts per status, filters.
    let (status, page) = get(&http, &format!("{base}/ui")).await;
    assert_eq!(status, StatusCode::OK);
    for id in orders.iter().chain([&failed]) {
        assert!(
            page.contains(&format!("data-run=\"{id}\"")),
            "{id} is listed"
        );
    }
    assert!(
        page.contains(r#"data-status="waiting">waiting <span class="count">3</span>"#),
        "{page}"
    );
    assert!(page.contains(r#"data-status="failed">failed <span class="count">1</span>"#));
    assert!(
        page.contains("data-refresh"),
        "waiting runs keep the page fresh"
    );
    let (_, page) = get(&http, &format!("{base}/ui?status=failed&workflow=")).await;
    assert_eq!(page.matches("data-run=").count(), 1);
    assert!(page.contains(&failed.to_string()));
    let (_, page) = get(&http, &format!("{base}/ui?workflow=order&since=1h")).await;
    assert_eq!(page.matches("data-run=").count(), 3);
    let (_, page) = get(&http, &format!("{base}/ui?q=order-1")).await;
    assert_eq!(
        page.matches("data-run=").count(),
        1,
        "the idempotency key finds one run"
    );
    assert!(page.contains(&orders[1].to_string()));
    let (_, page) = get(&http, &format!("{base}/ui?workflow=order&limit=2")).await;
    assert_eq!(page.matches("data-run=").count(), 2);
    assert!(page.contains("Older →"));
    let found = http
        .get(format!("{base}/ui?q={}", orders[0]))
        .send()
        .await
        .expect("search");
    assert_eq!(
        found.headers()[LOCATION],
        format!("/ui/runs/{}", orders[0]).as_str()
    );
    let (status, page) = get(&http, &format!("{base}/ui?status=done")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page.contains("unknown run status"), "{page}");

    // A run's page: its timeline has a bar per journal entry and one for the wait.
    let order = orders[0];
    let (status, page) = get(&http, &format!("{base}/ui/runs/{order}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        page.matches("<rect").count(),
        3,
        "reserve, charge and the wait"
    );
    assert!(page.contains("waiting for signal:approve"));
    assert!(
        page.contains(r#"value="approve""#),
        "the signal form names the awaited signal"
    );

    // A form from another site changes nothing.
    let forged = http
        .post(format!("{base}/ui/runs/{order}/cancel"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .expect("POST");
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert_eq!(status_of(client, order).await, RunStatus::Waiting);

    // A payload that is not JSON is refused and said so; the run still waits.
    let path = format!("/ui/runs/{order}/signal");
    let back = post(
        &http,
        base,
        &path,
        &[("name", "approve"), ("payload", "{oops")],
    )
    .await;
    assert!(back.contains("problem=the+payload+is+not+JSON"), "{back}");
    assert_eq!(status_of(client, order).await, RunStatus::Waiting);

    // The signal form completes the run.
    let back = post(
        &http,
        base,
        &path,
        &[("name", "approve"), ("payload", r#"{"by": "ops"}"#)],
    )
    .await;
    assert!(
        back.starts_with(&format!("/ui/runs/{order}?notice=")),
        "{back}"
    );
    eventually("the order completes", Duration::from_secs(10), || async {
        status_of(client, order).await == RunStatus::Completed
    })
    .await;
    let (_, page) = get(&http, &format!("{base}/ui/runs/{order}")).await;
    assert_eq!(
        page.matches("<rect").count(),
        4,
        "reserve, charge, signal:approve, ship"
    );
    assert!(page.contains("received as"));
    assert!(
        page.contains("&quot;by&quot;: &quot;ops&quot;"),
        "the output is shown"
    );
    assert!(
        !page.contains("data-refresh"),
        "an ended run stops refreshing"
    );

    // Cancel, retry, fork and delete from their buttons.
    let cancelled = orders[1];
    post(&http, base, &format!("/ui/runs/{cancelled}/cancel"), &[]).await;
    assert_eq!(status_of(client, cancelled).await, RunStatus::Cancelled);
    let again = post(&http, base, &format!("/ui/runs/{cancelled}/cancel"), &[]).await;
    assert!(
        again.contains("problem="),
        "a second cancel is refused: {again}"
    );
    post(&http, base, &format!("/ui/runs/{cancelled}/retry"), &[]).await;
    eventually(
        "the retried order waits again",
        Duration::from_secs(10),
        || async { status_of(client, cancelled).await == RunStatus::Waiting },
    )
    .await;
    let forked = post(
        &http,
        base,
        &format!("/ui/runs/{order}/fork"),
        &[
            ("from_step", "signal:approve"),
            ("queue", ""),
            ("input", ""),
        ],
    )
    .await;
    let fork_id: RunId = forked
        .trim_start_matches("/ui/runs/")
        .split('?')
        .next()
        .and_then(|id| id.parse().ok())
        .expect("the new run's page");
    eventually(
        "the fork waits for its own approval",
        Duration::from_secs(10),
        || async { status_of(client, fork_id).await == RunStatus::Waiting },
    )
    .await;
    assert_eq!(
        client.run(fork_id).await.expect("run").forked_from,
        Some(order)
    );
    let gone = post(&http, base, &format!("/ui/runs/{failed}/delete"), &[]).await;
    assert!(gone.starts_with("/ui?notice="), "{gone}");
    let (status, page) = get(&http, &format!("{base}/ui/runs/{failed}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(page.contains("not found"), "{page}");

    // Schedules: listed, paused and triggered from the page.
    let schedule = client
        .schedule("order", "shop", "0 0 9 * * *", json!({"n": 9}))
        .name("morning orders")
        .create()
        .await
        .expect("schedule");
    let (_, page) = get(&http, &format!("{base}/ui/schedules")).await;
    assert!(page.contains("morning orders") && page.contains("0 0 9 * * *"));
    let (_, page) = get(&http, &format!("{base}/ui/schedules/morning%20orders")).await;
    assert_eq!(page.matches("<li>").count(), 5, "the next five due times");
    post(&http, base, &format!("/ui/schedules/{schedule}/pause"), &[]).await;
    assert!(
        client
            .schedules()
            .get(schedule)
            .await
            .expect("schedule")
            .paused
    );
    let started = post(
        &http,
        base,
        &format!("/ui/schedules/{schedule}/trigger"),
        &[],
    )
    .await;
    assert!(started.starts_with("/ui/runs/"), "{started}");
    let (_, page) = get(&http, &format!("{base}/ui?schedule={schedule}")).await;
    assert_eq!(page.matches("data-run=").count(), 1);

    // Workers and queues.
    let (_, page) = get(&http, &format!("{base}/ui/workers")).await;
    assert!(
        page.contains("online") && page.contains("order, boom") || page.contains("boom, order"),
        "{page}"
    );
    let (_, page) = get(&http, &format!("{base}/ui/queues")).await;
    assert!(page.contains("shop") && page.contains("order"));

    // The API is unchanged beside it, and unknown paths are still problem documents.
    let missing = http.get(format!("{base}/nope")).send().await.expect("GET");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert!(
        missing.headers()[CONTENT_TYPE]
            .to_str()
            .expect("ascii")
            .starts_with("application/problem+json")
    );
    shop.stop.cancel();
}

async fn with_an_api_key_the_dashboard_asks_for_it_once(db: TestDb) {
    let mut config = support::fast_config();
    config.api_keys = vec!["s3cret".into()];
    let server = db.start_server_with(config).await;
    let base = support::url(&server);
    let http = browser_like();

    let first = http
        .get(format!("{base}/ui?status=failed"))
        .send()
        .await
        .expect("GET");
    assert_eq!(first.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        first.headers()[LOCATION],
        "/ui/login?next=%2Fui%3Fstatus%3Dfailed"
    );
    let (status, form) = get(&http, &format!("{base}/ui/login?next=%2Fui")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(form.contains(r#"type="password""#));

    let wrong = http
        .post(format!("{base}/ui/login"))
        .form(&[("key", "guess"), ("next", "/ui")])
        .send()
        .await
        .expect("POST");
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.headers().get(SET_COOKIE).is_none());

    let right = http
        .post(format!("{base}/ui/login"))
        .form(&[("key", "s3cret"), ("next", "/ui?status=failed")])
        .send()
        .await
        .expect("POST");
    assert_eq!(right.status(), StatusCode::SEE_OTHER);
    assert_eq!(right.headers()[LOCATION], "/ui?status=failed");
    let cookie = right.headers()[SET_COOKIE]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains("s3cret"), "the cookie is not the key");
    let session = cookie.split(';').next().expect("name=value").to_owned();

    let with = |path: &str, cookie: &str| {
        http.get(format!("{base}{path}"))
            .header("cookie", cookie.to_owned())
            .send()
    };
    let status = |answer: reqwest::Response| answer.status();
    assert_eq!(
        status(with("/ui", &session).await.expect("GET")),
        StatusCode::OK
    );
    let forged = format!("{session}0");
    let page = with("/ui", &forged).await.expect("GET");
    assert_eq!(
        page.status(),
        StatusCode::SEE_OTHER,
        "a changed cookie is no session"
    );
    let api = with("/v1/runs", &session).await.expect("GET");
    assert_eq!(
        api.status(),
        StatusCode::UNAUTHORIZED,
        "the API still wants its bearer key"
    );
    let css = with("/ui/assets/kagzi.css", "").await.expect("GET");
    assert_eq!(
        css.status(),
        StatusCode::OK,
        "the login page's stylesheet is open"
    );

    let out = http
        .post(format!("{base}/ui/logout"))
        .header("cookie", &session)
        .send()
        .await
        .expect("POST");
    assert!(
        out.headers()[SET_COOKIE]
            .to_str()
            .expect("ascii")
            .contains("Max-Age=0")
    );
}

async fn a_run_of_a_thousand_steps_renders_as_one_page(db: TestDb) {
    let server = db.start_server().await;
    let base = support::url(&server);
    let client = Client::connect(&base).await.expect("client");
    let mut worker = Worker::builder(&base, "long")
        .build()
        .await
        .expect("worker");
    worker.register("long", |ctx: WorkflowContext, (): ()| async move {
        for i in 0..1000u32 {
            let _: u32 = ctx.run(&format!("step-{i}"), async move { Ok(i) }).await?;
        }
        Ok(())
    });
    let (stop, _worker) = support::spawn_worker(worker);
    let id = client.workflow("long", "long", ()).await.expect("start");
    let (): () = client.result(id).await.expect("completes");
    let http = browser_like();
    let started = std::time::Instant::now();
    let (status, page) = get(&http, &format!("{base}/ui/runs/{id}")).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page.matches("<rect").count(), 1000);
    assert!(page.contains("step-999"));
    assert!(took < Duration::from_secs(2), "the page took {took:?}");
    stop.cancel();
}

/// Headless Chromium driven by chromedriver, both from Debian's packages.
struct Browser {
    driver: std::process::Child,
    client: fantoccini::Client,
    _profile: tempdir::Profile,
}

mod tempdir {
    /// A fresh Chromium profile directory, removed when dropped.
    pub(crate) struct Profile(pub(crate) std::path::PathBuf);

    impl Drop for Profile {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

impl Browser {
    async fn start() -> Self {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(tool).exists(),
                "the browser tests need {tool}: apt-get install -y chromium chromium-driver \
                 (.ci/run installs them)"
            );
        }
        let port = support::free_port();
        let driver = std::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let profile = tempdir::Profile(
            std::env::temp_dir().join(format!("kagzi-chromium-{}", uuid::Uuid::new_v4())),
        );
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-dev-shm-usage", "--window-size=1400,1000",
                    format!("--user-data-dir={}", profile.0.display()),
                ],
            }),
        );
        // Two TLS back ends are built into the tests; chromedriver speaks plain HTTP anyway.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let client = loop {
            match fantoccini::ClientBuilder::rustls()
                .expect("TLS roots")
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("chromedriver gives no session: {e}"),
            }
        };
        Self {
            driver,
            client,
            _profile: profile,
        }
    }

    async fn css(&self, selector: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(fantoccini::Locator::Css(selector))
            .await
            .unwrap_or_else(|e| panic!("no {selector} on the page: {e}"))
    }

    async fn count(&self, selector: &str) -> usize {
        self.client
            .find_all(fantoccini::Locator::Css(selector))
            .await
            .expect("find")
            .len()
    }

    async fn text(&self, selector: &str) -> String {
        self.css(selector).await.text().await.expect("text")
    }

    /// Waits until `selector`'s text is `want`, reading it again as the page refreshes.
    async fn text_becomes(&self, selector: &str, want: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let found = self
                .client
                .find(fantoccini::Locator::Css(selector))
                .await
                .ok();
            let text = match found {
                Some(el) => el.text().await.unwrap_or_default(),
                None => String::new(),
            };
            if text == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{selector} says {text:?}, not {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a screenshot for the README when `KAGZI_UPDATE_SCREENSHOTS` is set.
    async fn screenshot(&self, name: &str) {
        if std::env::var_os("KAGZI_UPDATE_SCREENSHOTS").is_none() {
            return;
        }
        let png = self.client.screenshot().await.expect("screenshot");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
        std::fs::create_dir_all(&dir).expect("docs/screenshots");
        std::fs::write(dir.join(name), png).expect("write the screenshot");
    }

    async fn stop(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

async fn a_person_finds_a_run_reads_its_timeline_and_acts_in_a_browser(db: TestDb) {
    let shop = Shop::open(&db).await;
    let (base, client, orders) = (&shop.base, &shop.client, &shop.orders);
    let browser = Browser::start().await;
    let c = &browser.client;

    // The runs page, filtered by a status tab.
    c.goto(&format!("{base}/")).await.expect("open");
    browser.css("table.runs").await;
    assert_eq!(browser.count("tr[data-run]").await, 4);
    browser.screenshot("runs.png").await;
    browser
        .css(r#"nav.tabs a[data-status="waiting"]"#)
        .await
        .click()
        .await
        .expect("click");
    browser
        .css(r#"nav.tabs a[data-status="waiting"][aria-current="page"]"#)
        .await;
    assert_eq!(browser.count("tr[data-run]").await, 3);

    // The search box finds a run by id and opens it.
    let order = orders[0];
    let search = browser.css("input[name=q]").await;
    search.send_keys(&order.to_string()).await.expect("type");
    browser
        .css("form.filters button[type=submit]")
        .await
        .click()
        .await
        .expect("submit");
    browser.css("div.timeline").await;
    assert_eq!(
        c.current_url().await.expect("url").path(),
        format!("/ui/runs/{order}")
    );
    assert_eq!(
        browser.count("div.timeline svg rect").await,
        3,
        "reserve, charge, the wait"
    );
    browser.screenshot("run.png").await;

    // The signal form completes it; the page follows by itself.
    let payload = browser.css("form.signal textarea[name=payload]").await;
    payload.clear().await.expect("clear");
    payload
        .send_keys(r#"{"by": "browser"}"#)
        .await
        .expect("type");
    browser
        .css("form.signal button[type=submit]")
        .await
        .click()
        .await
        .expect("send");
    browser.css("p.notice").await;
    browser.text_becomes(".run-head .badge", "completed").await;
    assert_eq!(browser.count("div.timeline svg rect").await, 4);

    // Another waiting run is cancelled with its button.
    c.goto(&format!("{base}/ui/runs/{}", orders[1]))
        .await
        .expect("open");
    assert_eq!(browser.text(".run-head .badge").await, "waiting");
    browser
        .css("button[name=cancel]")
        .await
        .click()
        .await
        .expect("cancel");
    browser.text_becomes(".run-head .badge", "cancelled").await;
    assert_eq!(status_of(client, orders[1]).await, RunStatus::Cancelled);

    // A schedule is paused and triggered from its page.
    let schedule = client
        .schedule("order", "shop", "0 0 9 * * *", json!({"n": 9}))
        .name("morning")
        .create()
        .await
        .expect("schedule");
    c.goto(&format!("{base}/ui/schedules")).await.expect("open");
    browser
        .css("a[href='/ui/schedules/morning']")
        .await
        .click()
        .await
        .expect("open");
    browser
        .css(".buttons form[action$='/pause'] button")
        .await
        .click()
        .await
        .expect("pause");
    browser.text_becomes(".run-head .badge", "paused").await;
    assert!(
        client
            .schedules()
            .get(schedule)
            .await
            .expect("schedule")
            .paused
    );
    browser
        .css(".buttons form[action$='/trigger'] button")
        .await
        .click()
        .await
        .expect("trigger");
    browser.css("div.timeline").await;
    let url = c.current_url().await.expect("url");
    let run: RunId = url
        .path()
        .trim_start_matches("/ui/runs/")
        .parse()
        .expect("the triggered run's page");
    assert_eq!(
        client.run(run).await.expect("run").schedule_id,
        Some(schedule)
    );
    browser.stop().await;
    shop.stop.cancel();
}

both_stores!(
    the_dashboard_shows_runs_and_acts_on_them,
    with_an_api_key_the_dashboard_asks_for_it_once,
    a_run_of_a_thousand_steps_renders_as_one_page,
    a_person_finds_a_run_reads_its_timeline_and_acts_in_a_browser,
);
