//! Reviews: statements held for approval. Requesters see their own, approvers those they may
//! decide, administrators all.

use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use gatehouse_core::reviews::{Reviews, VoteError};
use gatehouse_core::store::ReviewState;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::routes::Caller;
use crate::{ApiError, ApiState};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/reviews", get(list_reviews))
        .route("/api/v1/reviews/{id}", get(show_review))
        .route("/api/v1/reviews/{id}/{verb}", post(decide))
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
    limit: Option<i64>,
}

async fn list_reviews(
    caller: Caller,
    State(state): State<ApiState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let wanted = match q.state.as_deref() {
        None | Some("all") => None,
        Some(s) => Some(ReviewState::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "state \"{s}\" is not one of pending, approved, denied, expired, abandoned, executed, all"
            ))
        })?),
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    state
        .reviews
        .expire_overdue()
        .await
        .map_err(ApiError::internal)?;
    let reviews: Vec<_> = state
        .store
        .list_reviews(wanted, limit)
        .await
        .map_err(ApiError::internal)?
        .into_iter()
        .filter(|r| Reviews::may_see(r, &caller.0))
        .collect();
    Ok(Json(json!({ "reviews": reviews })))
}

async fn show_review(
    caller: Caller,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state
        .reviews
        .expire_overdue()
        .await
        .map_err(ApiError::internal)?;
    let review = state
        .store
        .get_review(&id)
        .await
        .map_err(ApiError::internal)?
        .filter(|r| Reviews::may_see(r, &caller.0))
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(json!({ "review": review })))
}

#[derive(Deserialize, Default)]
struct VoteBody {
    reason: Option<String>,
}

/// `POST /api/v1/reviews/{id}/approve` and `/deny`.
async fn decide(
    caller: Caller,
    State(state): State<ApiState>,
    Path((id, verb)): Path<(String, String)>,
    body: Option<Json<VoteBody>>,
) -> Result<Json<Value>, ApiError> {
    let approve = match verb.as_str() {
        "approve" => true,
        "deny" => false,
        _ => {
            return Err(ApiError::not_found(
                "no such action on a review; use /approve or /deny",
            ));
        }
    };
    vote(
        caller,
        state,
        id,
        approve,
        body.map(|b| b.0).unwrap_or_default(),
    )
    .await
}

async fn vote(
    caller: Caller,
    state: ApiState,
    id: String,
    approve: bool,
    body: VoteBody,
) -> Result<Json<Value>, ApiError> {
    if body.reason.as_ref().is_some_and(|r| r.len() > 1000) {
        return Err(ApiError::bad_request(
            "the reason is longer than 1000 characters",
        ));
    }
    let review = state
        .reviews
        .vote(&id, &caller.0, approve, body.reason.as_deref())
        .await
        .map_err(|e| match e {
            VoteError::NotFound(_) => not_found(&id),
            VoteError::OwnRequest | VoteError::NotApprover(_) => ApiError::forbidden(e.to_string()),
            VoteError::NotPending { .. } | VoteError::AlreadyVoted => {
                ApiError::new(axum::http::StatusCode::CONFLICT, "conflict", e.to_string())
            }
            VoteError::Store(e) => ApiError::internal(e),
        })?;
    Ok(Json(json!({ "review": review })))
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "no review \"{id}\" that you may see; `gatehouse reviews list` shows yours"
    ))
}
