//! The OpenAPI document: the routes describe themselves (`#[utoipa::path]` on each handler,
//! collected by the resource routers); this module adds what every route shares — the
//! problem+json error answers, the bearer-key security scheme, the info and the tags.
//!
//! The document is served at `GET /openapi.json`, browsable at `/docs`, and committed as
//! `openapi/openapi.json` (a test fails when that file is stale; regenerate it with
//! `cargo run -p kagzi-server -- --print-openapi > openapi/openapi.json`).

use utoipa::OpenApi;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr};

use super::error::{PROBLEM_JSON, Problem};

/// The parts of the document that no route describes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Kagzi",
        description = "The HTTP/JSON API of Kagzi, a durable workflow engine.\n\n\
            Clients start and inspect workflow **runs** under `/v1/runs`. Workers register under \
            `/v1/workers`, long-poll for runs, and report each step's outcome and the run's end \
            on the run, under the lease they got when they claimed it.\n\n\
            Every error is an RFC 9457 `application/problem+json` document (`type`, `title`, \
            `status`, `detail`). When the server has `KAGZI_API_KEY` set, every `/v1` request \
            needs `Authorization: Bearer <key>`; `/healthz`, `/readyz`, `/docs` and \
            `/openapi.json` are always open.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    servers((url = "/", description = "The server that serves this document (by default http://localhost:50051)")),
    tags(
        (name = "runs", description = "Start, read, list, wait for and cancel workflow runs."),
        (name = "workers", description = "The worker protocol: register, heartbeat, poll for runs, deregister."),
        (name = "reports", description = "A worker's reports on a run it holds, fenced by the lease token."),
        (name = "schedules", description = "Cron schedules that start runs of a workflow at their due times."),
        (name = "operations", description = "Liveness and readiness."),
    ),
    components(schemas(Problem)),
)]
struct ApiDoc;

/// The security scheme's name in the document.
const BEARER: &str = "api_key";

/// Completes the document the routers collected into `api`.
pub(crate) fn finish(mut api: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    let base = ApiDoc::openapi();
    api.info = base.info;
    api.tags = base.tags;
    api.servers = base.servers;
    let components = api.components.get_or_insert_with(Default::default);
    if let Some(base) = base.components {
        components.schemas.extend(base.schemas);
    }
    let mut scheme = Http::new(HttpAuthScheme::Bearer);
    scheme.description = Some(
        "One of the keys in the server's `KAGZI_API_KEY` (comma-separated for rotation). \
         Needed on every `/v1` route only when the server has keys set."
            .to_owned(),
    );
    components
        .security_schemes
        .insert(BEARER.to_owned(), SecurityScheme::Http(scheme).into());
    for (name, description, example) in PROBLEMS {
        components
            .responses
            .insert((*name).to_owned(), problem_response(description, example));
    }
    for (path, item) in &mut api.paths.paths {
        for operation in operations(item) {
            add_common_answers(path, operation);
        }
    }
    api
}

/// An example problem: status, slug, title, detail.
type ProblemExample = (u16, &'static str, &'static str, &'static str);

/// Each reusable problem answer: name, description, example.
const PROBLEMS: &[(&str, &str, ProblemExample)] = &[
    (
        "BadRequest",
        "Malformed request: JSON that does not parse, a path or query parameter of the wrong type.",
        (
            400,
            "bad-request",
            "Bad request",
            "Invalid URL: UUID parsing failed: invalid character",
        ),
    ),
    (
        "Unauthorized",
        "No valid API key (only when the server has `KAGZI_API_KEY` set). The answer carries `WWW-Authenticate: Bearer`.",
        (
            401,
            "unauthorized",
            "Unauthorized",
            "this server needs an API key: send `Authorization: Bearer <key>`",
        ),
    ),
    (
        "NotFound",
        "The run or worker named in the path does not exist.",
        (
            404,
            "not-found",
            "Not found",
            "run 0190b5a0-4c2f-7d1e-9a3b-5f6e7d8c9b0a not found",
        ),
    ),
    (
        "PayloadTooLarge",
        "A payload (input, output, step result, error) or the whole body is over the server's limit (`KAGZI_MAX_PAYLOAD_BYTES`, 2 MiB by default). Nothing was written.",
        (
            413,
            "payload-too-large",
            "Payload too large",
            "input is larger than the limit of 2097152 bytes",
        ),
    ),
    (
        "UnsupportedMediaType",
        "The body is not declared as `Content-Type: application/json`.",
        (
            415,
            "unsupported-media-type",
            "Unsupported media type",
            "Expected request with `Content-Type: application/json`",
        ),
    ),
    (
        "UnprocessableEntity",
        "The JSON parses but does not fit the schema: a missing or unknown field, a wrong type, a value out of range.",
        (
            422,
            "invalid-body",
            "Invalid request body",
            "Failed to deserialize the JSON body into the target type: missing field `workflow` at line 1 column 2",
        ),
    ),
    (
        "InternalServerError",
        "The server failed; the detail is in its log, never in the answer.",
        (
            500,
            "internal",
            "Internal server error",
            "the server failed to handle the request; the error is in its log",
        ),
    ),
    (
        "ServiceUnavailable",
        "The server cannot reach its database.",
        (
            503,
            "unavailable",
            "Service unavailable",
            "the server cannot reach its database",
        ),
    ),
];

fn problem_response(
    description: &str,
    (status, slug, title, detail): &ProblemExample,
) -> RefOr<Response> {
    let example = serde_json::json!({
        "type": format!("urn:kagzi:problem:{slug}"),
        "title": title,
        "status": status,
        "detail": detail,
    });
    let content = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("Problem")))
        .example(Some(example))
        .build();
    ResponseBuilder::new()
        .description(description)
        .content(PROBLEM_JSON, content)
        .build()
        .into()
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// Adds the problem answers any operation of its shape can give, keeping the ones the
/// operation documents itself.
fn add_common_answers(path: &str, operation: &mut Operation) {
    let guarded = path.starts_with("/v1/");
    let has_params = operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let has_body = operation.request_body.is_some();
    let mut answers = Vec::new();
    if has_params || has_body {
        answers.push(("400", "BadRequest"));
    }
    if guarded {
        answers.push(("401", "Unauthorized"));
    }
    if path.contains('{') {
        answers.push(("404", "NotFound"));
    }
    if has_body {
        answers.push(("413", "PayloadTooLarge"));
        answers.push(("415", "UnsupportedMediaType"));
        answers.push(("422", "UnprocessableEntity"));
    }
    answers.push(("500", "InternalServerError"));
    if guarded || path == "/readyz" || path == "/metrics" {
        answers.push(("503", "ServiceUnavailable"));
    }
    for (status, name) in answers {
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| Ref::new(format!("#/components/responses/{name}")).into());
    }
    operation.security = Some(if guarded {
        vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]
    } else {
        // Open routes say so: no key is needed.
        Vec::new()
    });
}
