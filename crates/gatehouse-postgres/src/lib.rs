//! Gatehouse's PostgreSQL adapter.
//!
//! - [`wire`]: the protocol messages the gateway reads or writes itself; [`framer`]: splitting
//!   streams into messages without copying.
//! - [`session`]: one client connection from TLS to relay; [`relay`]: the authorized session,
//!   where every statement meets the core pipeline.
//! - [`oneshot`]: one-shot commands for `gatehouse exec`, the REST API and MCP.
//! - [`upstream`]: the gateway as a client of the real server; [`cancel`]: cancel-key mapping.

pub mod cancel;
mod excerpt;
pub mod framer;
pub mod mask;
pub mod oneshot;
pub mod relay;
pub mod session;
pub mod stream;
pub mod threads;
pub mod tls;
pub mod upstream;
pub mod wire;

use std::sync::Arc;

use gatehouse_core::pipeline::Pipeline;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// What every PostgreSQL session shares.
pub struct PgContext {
    pub pipeline: Arc<Pipeline>,
    pub tls: Arc<rustls::ServerConfig>,
    pub cancels: cancel::CancelRegistry,
    /// Connections still in their handshake; bounded so idle sockets cannot exhaust the gateway.
    pub handshakes: Arc<Semaphore>,
    /// The same, per source address.
    pub handshakes_per_source: PerSource,
}

/// Counts handshakes in progress per source address. Touched twice per connection (at accept
/// and when its handshake ends), never per message.
#[derive(Default)]
pub struct PerSource {
    counts: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// Releases its source's slot when dropped.
pub struct SourceSlot<'a> {
    source: &'a PerSource,
    ip: std::net::IpAddr,
}

impl PerSource {
    /// Takes a slot for `ip`, or `None` when it already has `limit` handshakes in progress.
    pub fn acquire(&self, ip: std::net::IpAddr, limit: usize) -> Option<SourceSlot<'_>> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(SourceSlot { source: self, ip })
    }
}

impl Drop for SourceSlot<'_> {
    fn drop(&mut self) {
        let mut counts = self.source.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

impl PgContext {
    pub fn new(pipeline: Arc<Pipeline>, tls: Arc<rustls::ServerConfig>) -> Self {
        let limit = pipeline.config().server.max_pending_handshakes;
        PgContext {
            pipeline,
            tls,
            cancels: cancel::CancelRegistry::default(),
            handshakes: Arc::new(Semaphore::new(limit)),
            handshakes_per_source: PerSource::default(),
        }
    }
}

/// Accepts connections forever, one task each, so no client can hold up another. Each
/// session runs on one of the [`threads::SessionThreads`] (`[server] session_threads`), or on
/// the caller's runtime when that is 0 or the threads cannot be started.
pub async fn serve(listener: TcpListener, ctx: Arc<PgContext>) {
    let wanted = ctx.pipeline.config().server.session_threads;
    let threads = match wanted {
        0 => None,
        n => match threads::SessionThreads::start(n) {
            Ok(threads) => Some(threads),
            Err(e) => {
                tracing::error!(error = %e, "sessions run on the shared runtime instead");
                None
            }
        },
    };
    loop {
        match listener.accept().await {
            Ok((tcp, addr)) => match &threads {
                Some(threads) => threads.place(tcp, addr, ctx.clone()),
                None => {
                    tokio::spawn(session::handle(tcp, addr, ctx.clone()));
                }
            },
            Err(e) => {
                // Usually EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
