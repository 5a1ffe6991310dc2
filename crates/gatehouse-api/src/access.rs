//! Just-in-time grants: request one (a review approvers decide), list those in force, revoke.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use gatehouse_core::grants::{GrantError, GrantRequest};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::routes::Caller;
use crate::{ApiError, ApiState};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/access/requests", post(request))
        .route("/api/v1/access/grants", get(list))
        .route("/api/v1/access/grants/{id}", delete(revoke))
        .route("/api/v1/access/definitions", get(definitions))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestBody {
    connection: String,
    grant: String,
    /// Such as `30m`.
    duration: String,
    reason: String,
}

async fn request(
    caller: Caller,
    State(state): State<ApiState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    body: Result<Json<RequestBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be JSON with connection, grant, duration and reason: {}",
            e.body_text()
        ))
    })?;
    if body.reason.len() > 1000 {
        return Err(ApiError::bad_request(
            "the reason is longer than 1000 characters",
        ));
    }
    let duration = humantime::parse_duration(&body.duration).map_err(|e| {
        ApiError::bad_request(format!(
            "duration \"{}\" is not a duration such as 30m or 2h: {e}",
            body.duration
        ))
    })?;
    let connection = state.config.connection(&body.connection).ok_or_else(|| {
        ApiError::not_found(format!(
            "Gatehouse has no connection named \"{}\"; `gatehouse connections list` shows them",
            body.connection
        ))
    })?;
    let definition = state.config.grants.iter().find(|g| g.name == body.grant);
    let review = state
        .reviews
        .request_grant(
            &caller.0,
            GrantRequest {
                client_addr: client.to_string(),
                connection,
                definition,
                name: &body.grant,
                duration,
                reason: &body.reason,
            },
        )
        .await
        .map_err(grant_error)?;
    let message = format!(
        "grant \"{}\" on {} awaits {} approval(s) (review {}); an approver runs `gatehouse reviews approve {}`",
        body.grant, body.connection, review.approvals_needed, review.id, review.id
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "message": message, "review": review })),
    )
        .into_response())
}

async fn list(caller: Caller, State(state): State<ApiState>) -> Json<Value> {
    let grants = state.reviews.grant_book().visible(&caller.0);
    Json(json!({ "grants": grants }))
}

async fn revoke(
    caller: Caller,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let grant = state
        .reviews
        .grant_book()
        .revoke(&id, &caller.0, &state.config.grants)
        .await
        .map_err(grant_error)?;
    state.audit.append_detached(gatehouse_audit::Event::new(
        "grant.revoked",
        Some(&caller.0.principal()),
        json!({ "grant": grant.id, "name": grant.name, "holder": format!("{}/{}", grant.issuer, grant.subject) }),
    ));
    Ok(Json(json!({ "revoked": grant })))
}

async fn definitions(_caller: Caller, State(state): State<ApiState>) -> Json<Value> {
    let list: Vec<Value> = state
        .config
        .grants
        .iter()
        .map(|g| {
            json!({
                "name": g.name,
                "approvers": g.approvers,
                "approvals": g.approvals,
                "max_duration": humantime::format_duration(g.max_duration).to_string(),
                "connections": g.connections,
            })
        })
        .collect();
    Json(json!({ "grants": list }))
}

fn grant_error(e: GrantError) -> ApiError {
    match e {
        GrantError::Store(s) => ApiError::internal(s),
        GrantError::NotFound(_) => ApiError::not_found(e.to_string()),
        _ => ApiError::bad_request(e.to_string()),
    }
}
