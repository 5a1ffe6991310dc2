//! Reading the audit log through the API: verification, records for a SIEM, and session
//! replays. Audit data shows what everyone did, so it needs the `admin` or `auditor` group.

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use gatehouse_audit::verify::ExportedCheckpoint;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ApiState;
use crate::error::ApiError;
use crate::routes::Caller;

pub(crate) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/v1/audit/verify", get(verify).post(verify_from))
        .route("/api/v1/audit/records", get(records))
        .route("/api/v1/sessions/{id}/replay", get(replay))
}

/// Runs blocking file work off the runtime's workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(ApiError::internal)?
}

async fn verify(caller: Caller, State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    run_verify(caller, state, None).await
}

/// Verifies against a checkpoint exported earlier (`gatehouse audit checkpoint export`) and
/// kept off the gateway host, which also catches truncation and rewriting after it.
async fn verify_from(
    caller: Caller,
    State(state): State<ApiState>,
    Json(anchor): Json<ExportedCheckpoint>,
) -> Result<Json<Value>, ApiError> {
    run_verify(caller, state, Some(anchor)).await
}

async fn run_verify(
    caller: Caller,
    state: ApiState,
    anchor: Option<ExportedCheckpoint>,
) -> Result<Json<Value>, ApiError> {
    caller.require_auditor()?;
    let audit = state.audit.clone();
    let v = blocking(move || {
        let public = std::fs::read_to_string(audit.dir().join(gatehouse_audit::PUBLIC_KEY_FILE))
            .map_err(ApiError::internal)?;
        let reader = audit.reader().map_err(ApiError::internal)?;
        gatehouse_audit::verify_records(reader, &public, anchor.as_ref())
            .map_err(ApiError::internal)
    })
    .await?;
    Ok(Json(serde_json::to_value(v).map_err(ApiError::internal)?))
}

#[derive(Deserialize)]
struct RecordsQuery {
    /// The first sequence number wanted.
    since: Option<u64>,
    limit: Option<usize>,
}

/// Records from `since` on, at most `limit` (default 1,000, at most 10,000); `next` is where
/// the following page starts. Sequence numbers are stable, so a consumer can de-duplicate.
async fn records(
    caller: Caller,
    State(state): State<ApiState>,
    Query(q): Query<RecordsQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require_auditor()?;
    let since = q.since.unwrap_or(0);
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let audit = state.audit.clone();
    let records = blocking(move || {
        let mut reader = audit.reader().map_err(ApiError::internal)?;
        let mut out = Vec::new();
        while let Some((_, record)) = reader.next_record().map_err(ApiError::internal)? {
            if record.seq >= since {
                out.push(record);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    })
    .await?;
    let next = records.last().map(|r| r.seq + 1).unwrap_or(since);
    Ok(Json(json!({ "records": records, "next": next })))
}

async fn replay(
    caller: Caller,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_auditor()?;
    let audit = state.audit.clone();
    let wanted = id.clone();
    let timeline = blocking(move || {
        let reader = audit.reader().map_err(ApiError::internal)?;
        gatehouse_audit::replay::timeline_from(reader, &wanted).map_err(ApiError::internal)
    })
    .await?
    .ok_or_else(|| {
        ApiError::not_found(format!(
            "the audit log has no records of session \"{id}\"; `gatehouse sessions list` shows sessions"
        ))
    })?;
    Ok(Json(
        serde_json::to_value(timeline).map_err(ApiError::internal)?,
    ))
}
