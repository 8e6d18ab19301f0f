//! `/v1/sprites/{name}/policy/{network,privileges,resources}`: not served
//! yet (network policy is a later issue). Each answers 501 naming what is
//! missing, so an SDK call fails at once with a clear message.

use axum::extract::{Path, State};

use super::AppState;
use crate::ControlError;

#[utoipa::path(
    method(get, post, delete),
    path = "/v1/sprites/{name}/policy/{kind}",
    tag = "policy",
    params(("name" = String, Path, description = "Sprite name"), ("kind" = String, Path, description = "network, privileges or resources")),
    responses((status = 501, description = "Not implemented yet", body = crate::error::ErrorBody), (status = "4XX", description = "Bad input, unknown sprite, conflict: {error, message}", body = crate::error::ErrorBody), (status = "5XX", description = "The host failed: {error, message}", body = crate::error::ErrorBody))
)]
pub(super) async fn not_yet(
    State(state): State<AppState>,
    Path((name, kind)): Path<(String, String)>,
) -> Result<(), ControlError> {
    state.sprites.get(&name)?;
    match kind.as_str() {
        "network" | "privileges" | "resources" => Err(ControlError::NotImplemented(format!(
            "{kind} policies are not implemented by this wisp yet; sprite `{name}` has none"
        ))),
        other => Err(ControlError::NotFound(format!(
            "no policy `{other}`: Sprites has network, privileges and resources"
        ))),
    }
}
