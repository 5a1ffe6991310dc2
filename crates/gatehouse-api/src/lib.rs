//! Gatehouse's REST API: JSON under `/api/v1`, authenticated with a bearer token.
//!
//! Every error is `{"error": {"code": "...", "message": "..."}}` with a message that says what
//! to do. Administration (tokens) needs the `admin` group; audit data (sessions, the audit log)
//! needs `admin` or `auditor`.

mod access;
mod audit;
mod error;
mod exec;
mod reviews;
mod routes;

use std::sync::Arc;

use axum::Router;
use gatehouse_core::auth::Authenticator;
use gatehouse_core::config::Config;
use gatehouse_core::store::Store;

pub use error::ApiError;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub config: Arc<Config>,
    pub store: Store,
    pub auth: Authenticator,
    pub reviews: Arc<gatehouse_core::reviews::Reviews>,
    pub pipeline: Arc<gatehouse_core::pipeline::Pipeline>,
    /// Administrative actions (tokens, grant revocations) are kept here.
    pub audit: gatehouse_audit::AuditLog,
    /// How one-shot commands run, per connection kind.
    pub runners: Arc<
        std::collections::HashMap<
            gatehouse_core::config::ConnectionKind,
            Arc<dyn gatehouse_core::exec::CommandRunner>,
        >,
    >,
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    routes::router().with_state(state)
}

/// Serves the API, and `extra` routes beside it (such as `/mcp`), on `listener` until the
/// future is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    extra: Router,
) -> std::io::Result<()> {
    // The peer address reaches handlers: a token may be limited to source networks.
    let app = extra
        .merge(router(state))
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app).await
}
