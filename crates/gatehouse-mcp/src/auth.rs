//! Every request to `/mcp` must carry `Authorization: Bearer <token>` (a Gatehouse or OIDC
//! token); the identity it proves travels to the tools in the request's extensions. A missing
//! or refused token gets HTTP 401 with a JSON-RPC error that says what to do.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{Request, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::McpState;

/// The caller's address, for tools (policy sees it as `context.client_ip`).
#[derive(Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

pub async fn require_token(
    State(state): State<McpState>,
    mut req: Request<Body>,
    next: Next,
) -> Response {
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    let Some(token) = token else {
        return unauthorized(
            "missing bearer token: send `Authorization: Bearer <token>` with a Gatehouse token (gatehouse token create) or an OIDC token (gatehouse login)",
        );
    };
    match state.auth.authenticate(&token, client.ip()).await {
        Ok(identity) => {
            req.extensions_mut().insert(identity);
            req.extensions_mut().insert(ClientAddr(client));
            next.run(req).await
        }
        Err(e) => unauthorized(&e.to_string()),
    }
}

fn unauthorized(message: &str) -> Response {
    let body = json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": { "code": -32001, "message": format!("Gatehouse: {message}") },
    });
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        axum::Json(body),
    )
        .into_response()
}
