//! `/v1/queues`: what waits, runs and sleeps on each queue, per workflow.

use axum::extract::State;
use chrono::Utc;
use kagzi_proto::QueueList;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::Result;
use super::extract::Json;
use crate::state::AppState;

/// The routes of this resource.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

/// List queues.
///
/// For each queue and workflow with runs that have not ended, or with online workers: the
/// runs due now (the backlog), those due later, running and suspended, when the oldest due
/// run came due (its wait: `now` minus `oldest_due_at`), and the online workers that could
/// take them. The cost grows with the runs in flight, not with the runs that ended.
#[utoipa::path(
    get,
    path = "/v1/queues",
    tag = "workers",
    operation_id = "list_queues",
    responses((status = 200, description = "Each queue and workflow.", body = QueueList)),
)]
pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<QueueList>> {
    let now = Utc::now();
    let queues = state.store.queue_stats(now).await?;
    Ok(Json(QueueList { now, queues }))
}
