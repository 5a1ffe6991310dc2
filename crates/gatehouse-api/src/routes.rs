use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::routing::{delete, get};
use axum::{Json, Router};
use gatehouse_core::identity::{ADMIN_GROUP, AUDITOR_GROUP, Identity};
use gatehouse_core::time::now_micros;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{ApiError, ApiState};

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/identity/issuers", get(list_issuers))
        .route("/api/v1/connections", get(list_connections))
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{selector}", delete(revoke_tokens))
        .route("/api/v1/sessions", get(list_sessions))
        .route("/api/v1/sessions/{id}", get(show_session))
        .merge(crate::reviews::routes())
        .merge(crate::exec::routes())
        .merge(crate::access::routes())
        .merge(crate::audit::routes())
        .fallback(|| async {
            ApiError::not_found("no such API endpoint; the API lives under /api/v1")
        })
}

/// The caller, from `Authorization: Bearer <token>`.
pub(crate) struct Caller(pub(crate) Identity);

impl Caller {
    fn require_admin(&self) -> Result<(), ApiError> {
        if self.0.in_group(ADMIN_GROUP) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this needs membership of group \"{ADMIN_GROUP}\"; {} is not a member",
                self.0.principal()
            )))
        }
    }

    /// Audit data (sessions, statements, the audit log) is for administrators and auditors.
    pub(crate) fn require_auditor(&self) -> Result<(), ApiError> {
        if self.0.in_group(ADMIN_GROUP) || self.0.in_group(AUDITOR_GROUP) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "audit data needs membership of group \"{ADMIN_GROUP}\" or \"{AUDITOR_GROUP}\"; {} is a member of neither",
                self.0.principal()
            )))
        }
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::unauthenticated(
                    "missing Authorization header; send `Authorization: Bearer <token>` (the CLI reads GATEHOUSE_TOKEN)",
                )
            })?;
        let token = header.strip_prefix("Bearer ").ok_or_else(|| {
            ApiError::unauthenticated("the Authorization header must be `Bearer <token>`")
        })?;
        let client = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip())
            .ok_or_else(|| ApiError::internal("the peer address is unknown"))?;
        state
            .auth
            .authenticate(token.trim(), client)
            .await
            .map(Caller)
            .map_err(|e| ApiError::unauthenticated(e.to_string()))
    }
}

async fn whoami(caller: Caller) -> Json<Identity> {
    Json(caller.0)
}

/// The OIDC issuers the gateway trusts, for `gatehouse login`. Public on purpose: it holds
/// only what any IdP's discovery document already publishes, and a client needs it before it
/// has a token.
async fn list_issuers(State(state): State<ApiState>) -> Json<Value> {
    let issuers: Vec<Value> = state
        .config
        .identity
        .oidc
        .iter()
        .map(|o| {
            json!({
                "name": o.name,
                "issuer": o.issuer,
                "client_id": o.client_id,
                "audience": o.audience,
                "kind": match o.kind {
                    gatehouse_core::config::OidcSubjectKind::Human => "human",
                    gatehouse_core::config::OidcSubjectKind::Workload => "workload",
                },
            })
        })
        .collect();
    Json(json!({ "issuers": issuers }))
}

async fn list_connections(_caller: Caller, State(state): State<ApiState>) -> Json<Value> {
    let connections: Vec<Value> = state
        .config
        .connections
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "kind": format!("{:?}", c.kind).to_lowercase(),
                "tags": c.tags,
            })
        })
        .collect();
    Json(json!({ "connections": connections }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    name: String,
    #[serde(default)]
    groups: Vec<String>,
    /// A duration such as "30d" or "12h".
    ttl: Option<String>,
    /// Source networks (CIDR or single addresses) the token may be used from.
    #[serde(default)]
    allowed_networks: Vec<String>,
}

async fn create_token(
    caller: Caller,
    State(state): State<ApiState>,
    body: Result<Json<CreateToken>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let Json(req) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if !valid_name(&req.name) {
        return Err(ApiError::bad_request(
            "name must be 1-63 characters of a-z, 0-9, '.', '_' or '-'",
        ));
    }
    if let Some(bad) = req.groups.iter().find(|g| !valid_name(g)) {
        return Err(ApiError::bad_request(format!(
            "group \"{bad}\" must be 1-63 characters of a-z, 0-9, '.', '_' or '-'"
        )));
    }
    let ttl: Option<Duration> = req
        .ttl
        .as_deref()
        .map(|t| {
            humantime::parse_duration(t).map_err(|e| {
                ApiError::bad_request(format!(
                    "ttl \"{t}\" is not a duration such as 30d or 12h: {e}"
                ))
            })
        })
        .transpose()?;
    let networks = req
        .allowed_networks
        .iter()
        .map(|n| gatehouse_core::auth::parse_network(n).map_err(ApiError::bad_request))
        .collect::<Result<Vec<_>, _>>()?;
    // Kept before the token exists: a token the audit log does not know is never issued.
    state
        .audit
        .append(gatehouse_audit::Event::new(
            "token.created",
            Some(&caller.0.principal()),
            json!({ "account": req.name, "groups": req.groups, "ttl": req.ttl,
                    "allowed_networks": req.allowed_networks }),
        ))
        .await
        .map_err(ApiError::internal)?;
    let issued = state
        .auth
        .issue(&req.name, req.groups, ttl, networks, &caller.0.principal())
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(account = %issued.row.account, id = %issued.row.id, by = %caller.0.principal(), "token created");
    let mut value = serde_json::to_value(&issued.row).map_err(ApiError::internal)?;
    value["token"] = Value::String(issued.value);
    Ok(Json(value))
}

async fn list_tokens(
    caller: Caller,
    State(state): State<ApiState>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    let tokens = state
        .store
        .list_tokens()
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({ "tokens": tokens })))
}

async fn revoke_tokens(
    caller: Caller,
    State(state): State<ApiState>,
    Path(selector): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin()?;
    state
        .audit
        .append(gatehouse_audit::Event::new(
            "token.revoked",
            Some(&caller.0.principal()),
            json!({ "selector": selector }),
        ))
        .await
        .map_err(ApiError::internal)?;
    let n = state
        .store
        .revoke_tokens(&selector, now_micros())
        .await
        .map_err(ApiError::internal)?;
    if n == 0 {
        return Err(ApiError::not_found(format!(
            "no live token has id or account \"{selector}\"; `gatehouse token list` shows them"
        )));
    }
    tracing::info!(selector = %selector, count = n, by = %caller.0.principal(), "tokens revoked");
    Ok(Json(json!({ "revoked": n })))
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<i64>,
}

async fn list_sessions(
    caller: Caller,
    State(state): State<ApiState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require_auditor()?;
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let sessions = state
        .store
        .list_sessions(limit)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({ "sessions": sessions })))
}

async fn show_session(
    caller: Caller,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_auditor()?;
    let session = state
        .store
        .get_session(&id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no session \"{id}\"; `gatehouse sessions list` shows them"
            ))
        })?;
    let statements = state
        .store
        .list_statements(&id)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(
        json!({ "session": session, "statements": statements }),
    ))
}

fn valid_name(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}
