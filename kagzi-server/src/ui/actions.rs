//! The dashboard's buttons and forms: each calls the API's own handler and goes back to the
//! page it came from with what happened (`?notice=`) or why not (`?problem=`).

use axum::Form;
use axum::extract::{Path, State};
use axum::response::Redirect;
use kagzi_proto::ForkRun;
use serde::Deserialize;
use serde_json::Value;

use super::error::Result;
use super::run_page::run_id;
use super::session::encode;
use crate::api;
use crate::api::error::ApiError;
use crate::api::extract::{AnyJson, Json, Path as ApiPath};
use crate::state::AppState;

/// Back to `page`, saying `outcome`.
fn back<T>(page: &str, outcome: std::result::Result<T, ApiError>, done: &str) -> Redirect {
    let query = match outcome {
        Ok(_) => encode(&[("notice", done)]),
        Err(e) => encode(&[("problem", &e.to_problem().detail)]),
    };
    Redirect::to(&format!("{page}?{query}"))
}

fn run_page(id: uuid::Uuid) -> String {
    format!("/ui/runs/{id}")
}

/// `POST /ui/runs/{id}/cancel`.
pub(crate) async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Redirect> {
    let id = run_id(&id)?;
    let outcome = api::runs::cancel(State(state), ApiPath(id)).await;
    Ok(back(&run_page(id), outcome, "Run cancelled."))
}

/// The signal form's fields.
#[derive(Debug, Deserialize)]
pub(crate) struct SignalForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    payload: String,
}

/// A form's JSON text: empty is `None`, anything else must parse.
fn json_field(what: &str, text: &str) -> std::result::Result<Option<Value>, ApiError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| ApiError::InvalidBody(format!("{what} is not JSON: {e}")))
}

/// `POST /ui/runs/{id}/signal`.
pub(crate) async fn signal(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Form(form): Form<SignalForm>,
) -> Result<Redirect> {
    let id = run_id(&id)?;
    let name = form.name.trim().to_owned();
    let outcome = match json_field("the payload", &form.payload) {
        Ok(payload) => {
            let payload = payload.unwrap_or(Value::Null);
            api::runs::signal(State(state), ApiPath((id, name.clone())), AnyJson(payload)).await
        }
        Err(e) => Err(e),
    };
    Ok(back(
        &run_page(id),
        outcome,
        &format!("Signal {name:?} sent."),
    ))
}

/// `POST /ui/runs/{id}/retry`.
pub(crate) async fn retry(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Redirect> {
    let id = run_id(&id)?;
    let outcome = api::repair::retry(State(state), ApiPath(id)).await;
    Ok(back(
        &run_page(id),
        outcome,
        "Run retried: it is pending again.",
    ))
}

/// The fork form's fields.
#[derive(Debug, Deserialize)]
pub(crate) struct ForkForm {
    #[serde(default)]
    from_step: String,
    #[serde(default)]
    queue: String,
    #[serde(default)]
    input: String,
}

/// `POST /ui/runs/{id}/fork`: on success, the new run's page.
pub(crate) async fn fork(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Form(form): Form<ForkForm>,
) -> Result<Redirect> {
    let id = run_id(&id)?;
    let nonempty = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
    let outcome = match json_field("the input", &form.input) {
        Ok(input) => {
            let body = ForkRun {
                from_step: nonempty(&form.from_step),
                input,
                queue: nonempty(&form.queue),
            };
            api::repair::fork(State(state), ApiPath(id), Json(body)).await
        }
        Err(e) => Err(e),
    };
    Ok(match outcome {
        Ok((_, Json(new))) => back(&run_page(new.id.0), Ok(()), &format!("Forked from {id}.")),
        Err(e) => back(&run_page(id), Err::<(), _>(e), ""),
    })
}

/// `POST /ui/runs/{id}/delete`: on success, the runs page.
pub(crate) async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Redirect> {
    let id = run_id(&id)?;
    Ok(match api::repair::remove(State(state), ApiPath(id)).await {
        Ok(_) => back("/ui", Ok(()), &format!("Run {id} deleted.")),
        Err(e) => back(&run_page(id), Err::<(), _>(e), ""),
    })
}

fn schedule_page(id: &str) -> String {
    format!("/ui/schedules/{}", super::format::path_segment(id))
}

/// `POST /ui/schedules/{id}/pause`.
pub(crate) async fn pause(State(state): State<AppState>, Path(id): Path<String>) -> Redirect {
    let outcome = api::schedules::pause(State(state), ApiPath(id.clone())).await;
    back(&schedule_page(&id), outcome, "Schedule paused.")
}

/// `POST /ui/schedules/{id}/resume`.
pub(crate) async fn resume(State(state): State<AppState>, Path(id): Path<String>) -> Redirect {
    let outcome = api::schedules::resume(State(state), ApiPath(id.clone())).await;
    back(&schedule_page(&id), outcome, "Schedule resumed.")
}

/// `POST /ui/schedules/{id}/trigger`.
pub(crate) async fn trigger(State(state): State<AppState>, Path(id): Path<String>) -> Redirect {
    match api::schedules::trigger(State(state), ApiPath(id.clone())).await {
        Ok((_, Json(run))) => back(
            &run_page(run.id.0),
            Ok(()),
            "Schedule triggered: this run started now.",
        ),
        Err(e) => back(&schedule_page(&id), Err::<(), _>(e), ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_json_is_optional_and_checked() {
        assert_eq!(json_field("x", "  ").ok(), Some(None));
        assert_eq!(
            json_field("x", r#"{"a": 1}"#).ok(),
            Some(Some(serde_json::json!({"a": 1})))
        );
        let err = json_field("the payload", "{oops").expect_err("not JSON");
        assert!(
            err.to_string().starts_with("the payload is not JSON"),
            "{err}"
        );
    }

    #[test]
    fn schedule_names_are_escaped_in_links() {
        assert_eq!(
            schedule_page("nightly report"),
            "/ui/schedules/nightly%20report"
        );
    }
}
