//! `/v1/workflows`: what the server knows of a workflow's code in flight — whether a
//! `ctx.patched` branch can be retired.

use axum::extract::State;
use kagzi_proto::PatchUsage;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::Result;
use super::extract::{Json, Path};
use super::runs::check_name;
use crate::state::AppState;

/// The routes of this resource.
pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(patch))
}

/// Check whether a patch can be retired.
///
/// Whether runs of the workflow that have not ended may still take the old branch of
/// `ctx.patched(patch)`: those that answered `false`, and those created before the patch
/// first answered `true` that have not reached it. When both are 0 (`safe_to_remove`), the
/// old branch and the `patched` call can be deleted from the code.
#[utoipa::path(
    get,
    path = "/v1/workflows/{workflow}/patches/{patch}",
    tag = "runs",
    operation_id = "patch_usage",
    params(
        ("workflow" = String, Path, description = "The workflow's name."),
        ("patch" = String, Path, description = "The patch id given to `ctx.patched`."),
    ),
    responses((status = 200, description = "Who still needs the old branch.", body = PatchUsage)),
)]
async fn patch(
    State(state): State<AppState>,
    Path((workflow, patch)): Path<(String, String)>,
) -> Result<Json<PatchUsage>> {
    check_name("workflow", &workflow)?;
    check_name("patch", &patch)?;
    Ok(Json(state.store.patch_usage(&workflow, &patch).await?))
}
