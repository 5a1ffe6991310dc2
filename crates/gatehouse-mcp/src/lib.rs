//! Gatehouse as the MCP server AI agents use (Streamable HTTP at `/mcp`). Every tool call goes
//! through the same pipeline as a psql session: the caller's bearer token (a Gatehouse or
//! OIDC token) identifies it, statements are authorized per policy, held for approval when
//! policy says so (the tool returns the review id instead of waiting), run with the gateway's
//! own credential, masked, and recorded. The agent never holds a database credential.

mod auth;
mod tools;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use gatehouse_core::auth::Authenticator;
use gatehouse_core::config::{Config, ConnectionKind};
use gatehouse_core::exec::CommandRunner;
use gatehouse_core::pipeline::Pipeline;
use gatehouse_core::reviews::Reviews;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

pub use tools::GatehouseTools;

/// What the tools share.
#[derive(Clone)]
pub struct McpState {
    pub config: Arc<Config>,
    pub pipeline: Arc<Pipeline>,
    pub reviews: Arc<Reviews>,
    pub auth: Authenticator,
    pub runners: Arc<HashMap<ConnectionKind, Arc<dyn CommandRunner>>>,
    /// Tool calls that run no statement are kept here.
    pub audit: gatehouse_audit::AuditLog,
}

impl McpState {
    async fn pipeline_store_review(
        &self,
        id: &str,
    ) -> Result<Option<gatehouse_core::store::ReviewRow>, String> {
        self.reviews.get(id).await.map_err(|e| e.to_string())
    }
}

/// The largest request body accepted at `/mcp`.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// The `/mcp` routes: bearer-token authentication in front of the MCP Streamable HTTP service.
pub fn router(state: McpState) -> Router {
    // The gateway may be reached under any host name its operator gives it; the bearer token,
    // not the Host header, is what guards it.
    let config = StreamableHttpServerConfig::default()
        .disable_allowed_hosts()
        .with_json_response(true)
        .with_max_request_body_bytes(MAX_REQUEST_BYTES);
    let tools_state = state.clone();
    let service = StreamableHttpService::new(
        move || Ok(GatehouseTools::new(tools_state.clone())),
        LocalSessionManager::default().into(),
        config,
    );
    Router::new()
        .nest_service("/mcp", service)
        .layer(axum::middleware::from_fn_with_state(
            state,
            auth::require_token,
        ))
}
