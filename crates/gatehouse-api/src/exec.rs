//! `POST /api/v1/connections/{name}/exec`: one command through the whole pipeline, for scripts
//! (`gatehouse exec`) and tools.
//!
//! Answers: 200 with the results; 202 with a review when policy needs an approval (run it
//! later with `{"review": "<id>"}`); 403 when denied; 422 when the target ran the command and
//! failed (its SQLSTATE in `error.sqlstate`).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use gatehouse_core::exec::{ExecError, ExecOutcome, ExecRequest};
use gatehouse_core::reviews::TakeError;
use serde::Deserialize;
use serde_json::json;

use crate::routes::Caller;
use crate::{ApiError, ApiState};

/// Largest command accepted.
const MAX_COMMAND_BYTES: usize = 1 << 20;

pub fn routes() -> Router<ApiState> {
    Router::new().route("/api/v1/connections/{name}/exec", post(exec))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecBody {
    sql: Option<String>,
    review: Option<String>,
    max_rows: Option<usize>,
}

async fn exec(
    caller: Caller,
    State(state): State<ApiState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    body: Result<Json<ExecBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be JSON such as {{\"sql\": \"select 1\"}}: {}",
            e.body_text()
        ))
    })?;
    if body
        .sql
        .as_ref()
        .is_some_and(|s| s.len() > MAX_COMMAND_BYTES)
    {
        return Err(ApiError::bad_request("the command is larger than 1 MiB"));
    }
    let connection = state.config.connection(&name).ok_or_else(|| {
        ApiError::not_found(ExecError::UnknownConnection(name.clone()).to_string())
    })?;
    let runner = state
        .runners
        .get(&connection.kind)
        .cloned()
        .ok_or_else(|| {
            ApiError::bad_request(ExecError::UnsupportedKind(name.clone()).to_string())
        })?;
    let outcome = state
        .pipeline
        .exec(
            runner.as_ref(),
            ExecRequest {
                identity: &caller.0,
                client_addr: client,
                connection: &name,
                text: body.sql.as_deref(),
                review: body.review.as_deref(),
                max_rows: body.max_rows.unwrap_or(1000),
                application: "gatehouse exec".into(),
            },
        )
        .await
        .map_err(exec_error)?;
    Ok(match outcome {
        ExecOutcome::Done(result) => {
            (StatusCode::OK, Json(json!({ "status": "ok", "results": result.results })))
                .into_response()
        }
        ExecOutcome::Held(review) => (
            StatusCode::ACCEPTED,
            Json(json!({
                "status": "review",
                "message": format!(
                    "the command needs {} approval(s) (policy {}); an approver runs `gatehouse reviews approve {}`, then run it with `gatehouse exec {} --review {}`",
                    review.approvals_needed, review.policy, review.id, name, review.id
                ),
                "review": review,
            })),
        )
            .into_response(),
        ExecOutcome::Denied(d) => ApiError::forbidden(format!(
            "Gatehouse denied this command: {} (policy {})",
            d.reason, d.policy
        ))
        .into_response(),
        ExecOutcome::Failed(e) => {
            let message = match &e.code {
                Some(code) => format!("{} (SQLSTATE {code})", e.message),
                None => e.message.clone(),
            };
            let body = json!({ "error": {
                "code": "command_failed",
                "message": message,
                "sqlstate": e.code,
            }});
            (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
        }
    })
}

fn exec_error(e: ExecError) -> ApiError {
    match e {
        ExecError::UnknownConnection(_) => ApiError::not_found(e.to_string()),
        ExecError::Review(TakeError::Store(s)) => ApiError::internal(s),
        ExecError::Review(TakeError::NotYours(_)) => ApiError::not_found(e.to_string()),
        ExecError::Review(TakeError::OtherCommand) => ApiError::bad_request(e.to_string()),
        ExecError::Review(_) => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
        ExecError::Recording | ExecError::Store(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        ),
        ExecError::UnsupportedKind(_) | ExecError::NoCommand => {
            ApiError::bad_request(e.to_string())
        }
    }
}
