//! Who may use the dashboard: with API keys configured, a login form that trades a key for
//! an HttpOnly, SameSite=Strict session cookie; every form post must come from the
//! dashboard's own pages; every page carries headers that keep it out of other sites' frames.

use axum::Form;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use maud::{Markup, html};
use serde::Deserialize;

use super::layout::{self, Nav};
use crate::api::auth::Keys;
use crate::state::AppState;

/// Whether the dashboard asks for a key: the server has API keys.
pub(crate) fn login_enabled(state: &AppState) -> bool {
    state.config.api_keys().next().is_some()
}

/// The session cookie's name.
const COOKIE: &str = "kagzi_session";
/// How long a login lasts, in seconds.
const LIFETIME_S: i64 = 12 * 60 * 60;
/// The headers on every dashboard answer: nothing from other origins, no framing, no
/// sniffing, no referrer to other sites.
const CSP: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; \
                   form-action 'self'; base-uri 'none'";

/// The middleware in front of every dashboard route.
pub(crate) async fn guard(keys: Keys, req: Request, next: Next) -> Response {
    if req.method() == Method::POST
        && let Err(why) = same_origin(req.headers())
    {
        return refused(StatusCode::FORBIDDEN, why);
    }
    let path = req.uri().path();
    let open = !keys.enabled() || path.starts_with("/ui/assets/") || path == "/ui/login";
    if !open && !has_session(&keys, req.headers()) {
        let back = if req.method() == Method::GET {
            req.uri().path_and_query().map_or("/ui", |p| p.as_str())
        } else {
            "/ui"
        };
        let to = format!("/ui/login?{}", encode(&[("next", back)]));
        return Redirect::to(&to).into_response();
    }
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Refuses a post that a browser says came from another site: by `Sec-Fetch-Site`, or by an
/// `Origin` other than the host it was sent to. A client that sends neither (curl) is no
/// browser a page could have tricked.
fn same_origin(headers: &HeaderMap) -> Result<(), &'static str> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site"))
        && site != "same-origin"
        && site != "none"
    {
        return Err("this form was posted from another site");
    }
    if let Some(origin) = text(header::ORIGIN) {
        let authority = origin.split_once("://").map(|(_, rest)| rest);
        if authority.is_none() || authority != text(header::HOST) {
            return Err("this form was posted from another origin");
        }
    }
    Ok(())
}

fn has_session(keys: &Keys, headers: &HeaderMap) -> bool {
    let now = Utc::now().timestamp();
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .any(|(name, value)| name == COOKIE && keys.session_valid(value, now))
}

/// `pairs` as a URL query.
pub(crate) fn encode(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// Where to go after logging in: a path of this server, never another site.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(next) if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') => {
            next
        }
        _ => "/ui",
    }
}

fn refused(status: StatusCode, why: &str) -> Response {
    let body = html! { section.problem-page { h1 { "Refused" } p { (why) } } };
    (status, layout::page("Refused", Nav::None, false, body)).into_response()
}

/// The login form's fields.
#[derive(Debug, Deserialize)]
pub(crate) struct Login {
    /// The API key.
    #[serde(default)]
    key: String,
    /// The page to go back to.
    #[serde(default)]
    next: Option<String>,
}

/// The query of the login page.
#[derive(Debug, Deserialize)]
pub(crate) struct LoginQuery {
    /// The page to go back to.
    next: Option<String>,
}

fn login_page(next: &str, problem: Option<&str>) -> Markup {
    let body = html! {
        section.login {
            h1 { "Log in" }
            p { "This server needs an API key (" code { "KAGZI_API_KEY" } ")." }
            @if let Some(problem) = problem { p.problem role="alert" { (problem) } }
            form method="post" action="/ui/login" {
                input type="hidden" name="next" value=(next);
                label { "API key" input type="password" name="key" autocomplete="current-password" required autofocus; }
                button type="submit" { "Log in" }
            }
        }
    };
    layout::page("Log in", Nav::None, false, body)
}

/// `GET /ui/login`: the form, or the dashboard when the server has no keys.
pub(crate) async fn form(State(state): State<AppState>, Query(q): Query<LoginQuery>) -> Response {
    if !login_enabled(&state) {
        return Redirect::to("/ui").into_response();
    }
    login_page(safe_next(q.next.as_deref()), None).into_response()
}

/// `POST /ui/login`: a valid key gets the session cookie and goes back where it came from.
pub(crate) async fn login(State(state): State<AppState>, Form(login): Form<Login>) -> Response {
    let keys = Keys::new(state.config.api_keys());
    let next = safe_next(login.next.as_deref());
    let expires = Utc::now().timestamp().saturating_add(LIFETIME_S);
    let Some(token) = keys.session_for(login.key.trim(), expires) else {
        let page = login_page(next, Some("That key is not valid."));
        return (StatusCode::UNAUTHORIZED, page).into_response();
    };
    tracing::info!("dashboard login");
    let cookie =
        format!("{COOKIE}={token}; Path=/; Max-Age={LIFETIME_S}; HttpOnly; SameSite=Strict");
    ([(header::SET_COOKIE, cookie)], Redirect::to(next)).into_response()
}

/// `POST /ui/logout`: forgets the session cookie.
pub(crate) async fn logout() -> Response {
    let cookie = format!("{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/ui/login")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    header::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn posts_from_other_sites_are_refused() {
        assert!(same_origin(&headers(&[])).is_ok(), "curl sends neither");
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin")])).is_ok());
        assert!(same_origin(&headers(&[("sec-fetch-site", "cross-site")])).is_err());
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-site")])).is_err());
        let same = [
            ("host", "localhost:50051"),
            ("origin", "http://localhost:50051"),
        ];
        assert!(same_origin(&headers(&same)).is_ok());
        let other = [
            ("host", "localhost:50051"),
            ("origin", "http://evil.example"),
        ];
        assert!(same_origin(&headers(&other)).is_err());
        assert!(same_origin(&headers(&[("host", "a"), ("origin", "null")])).is_err());
    }

    #[test]
    fn login_goes_back_only_to_this_server() {
        assert_eq!(safe_next(Some("/ui/runs/1?x=y")), "/ui/runs/1?x=y");
        assert_eq!(safe_next(Some("//evil.example")), "/ui");
        assert_eq!(safe_next(Some("https://evil.example")), "/ui");
        assert_eq!(safe_next(Some("/\\evil.example")), "/ui");
        assert_eq!(safe_next(None), "/ui");
    }
}
