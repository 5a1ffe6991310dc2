//! One client connection, read top to bottom as the protocol happens: negotiate TLS and the
//! startup packet, authenticate the Gatehouse token, open the upstream session, then relay.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use gatehouse_core::identity::Identity;
use gatehouse_core::pipeline::{SessionStart, Verdict};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::PgContext;
use crate::relay::{self, RelayLimits};
use crate::stream::PgStream;
use crate::upstream;
use crate::wire::{self, GatewayError, Startup, StartupPacket};

/// ALPN protocol name for PostgreSQL over TLS (required for direct TLS, PostgreSQL 17+).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Startup parameters relayed to the server. Everything else is refused: `options` can set any
/// server setting (`-c role=...`), and `replication` opens a replication session.
const RELAYED_PARAMETERS: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "intervalstyle",
    "timezone",
    "extra_float_digits",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "bytea_output",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
];

/// Holds a connection's places under the global and per-source handshake caps until its
/// handshake ends.
struct HandshakeGuard<'a> {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _slot: crate::SourceSlot<'a>,
}

/// How the handshake ended without a session. The error, if any, was already sent.
#[derive(Debug)]
enum Stop {
    /// Close without a word (as PostgreSQL does for bad startup packets it cannot answer).
    Silent(&'static str),
    /// The client was told why; log this.
    Told(GatewayError),
}

impl From<std::io::Error> for Stop {
    fn from(_: std::io::Error) -> Self {
        Stop::Silent("client i/o error")
    }
}

/// What the startup phase produced.
enum Opening {
    Cancel { pid: i32, key: Vec<u8> },
    Login(Login),
}

struct Login {
    stream: PgStream,
    startup: Startup,
    password: String,
}

/// Serves one accepted connection to its end.
pub async fn handle(tcp: TcpStream, addr: SocketAddr, ctx: Arc<PgContext>) {
    let span = tracing::info_span!("pg", client = %addr, session = tracing::field::Empty);
    async move {
        let per_source = ctx
            .pipeline
            .config()
            .server
            .max_pending_handshakes_per_source;
        let slot = ctx.handshakes_per_source.acquire(addr.ip(), per_source);
        let permit = ctx.handshakes.clone().try_acquire_owned().ok();
        let (Some(slot), Some(permit)) = (slot, permit) else {
            let mut out = BytesMut::new();
            GatewayError::fatal(
                "53300",
                "too many connections are still authenticating; retry shortly",
            )
            .encode(&mut out);
            let mut tcp = tcp;
            let _ = tcp.write_all(&out).await;
            tracing::warn!("refused: handshake limit reached");
            return;
        };
        let permit = HandshakeGuard {
            _permit: permit,
            _slot: slot,
        };
        let _ = tcp.set_nodelay(true);
        let deadline = ctx.pipeline.config().server.handshake_timeout;
        let opening = match tokio::time::timeout(deadline, open(tcp, addr, &ctx)).await {
            Err(_) => {
                tracing::info!(timeout = ?deadline, "closed: handshake not finished in time");
                return;
            }
            Ok(Err(Stop::Silent(why))) => {
                tracing::info!(why, "closed during startup");
                return;
            }
            Ok(Err(Stop::Told(e))) => {
                tracing::info!(code = e.code, message = %e.message, "refused during startup");
                return;
            }
            Ok(Ok(o)) => o,
        };
        match opening {
            Opening::Cancel { pid, key } => {
                drop(permit);
                cancel(pid, &key, &ctx).await;
            }
            Opening::Login(login) => {
                let Login {
                    mut stream,
                    startup,
                    password,
                } = login;
                let identity = match ctx.pipeline.authenticate(&password, addr.ip()).await {
                    Ok(i) => i,
                    Err(e) => {
                        let _ =
                            tell(&mut stream, GatewayError::fatal("28P01", e.to_string())).await;
                        tracing::warn!(reason = %e, "authentication failed");
                        return;
                    }
                };
                let result = start_session(stream, addr, startup, identity, &ctx, permit).await;
                if let Err(Stop::Told(e)) = result {
                    tracing::info!(code = e.code, message = %e.message, "session refused");
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// TLS negotiation and the startup packet, up to the client's password.
async fn open(tcp: TcpStream, addr: SocketAddr, ctx: &PgContext) -> Result<Opening, Stop> {
    let mut first = [0u8; 1];
    let n = tcp.peek(&mut first).await?;
    if n == 0 {
        return Err(Stop::Silent("closed before startup"));
    }
    let mut stream = if first[0] == 0x16 {
        // Direct TLS (PostgreSQL 17): a ClientHello, not a length word. ALPN is mandatory.
        let tls = accept_tls(tcp, ctx).await?;
        if tls.get_ref().1.alpn_protocol() != Some(ALPN_POSTGRESQL) {
            return Err(Stop::Silent("direct TLS without ALPN \"postgresql\""));
        }
        PgStream::ServerTls(Box::new(tls))
    } else {
        PgStream::Plain(tcp)
    };

    loop {
        let packet = read_startup_packet(&mut stream).await?;
        match packet {
            StartupPacket::Ssl => {
                let PgStream::Plain(mut tcp) = stream else {
                    return Err(Stop::Silent("SSLRequest inside TLS"));
                };
                tcp.write_all(b"S").await?;
                stream = PgStream::ServerTls(Box::new(accept_tls(tcp, ctx).await?));
            }
            StartupPacket::GssEnc => {
                if stream.is_tls() {
                    return Err(Stop::Silent("GSSENCRequest inside TLS"));
                }
                stream.write_all(b"N").await?;
            }
            StartupPacket::Cancel { pid, key } => return Ok(Opening::Cancel { pid, key }),
            StartupPacket::Startup(startup) => {
                return login(stream, addr, startup, ctx).await.map(Opening::Login);
            }
        }
    }
}

async fn accept_tls(
    tcp: TcpStream,
    ctx: &PgContext,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, Stop> {
    tokio_rustls::TlsAcceptor::from(ctx.tls.clone())
        .accept(tcp)
        .await
        .map_err(|_| Stop::Silent("TLS handshake failed"))
}

async fn read_startup_packet(stream: &mut PgStream) -> Result<StartupPacket, Stop> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let body_len = match wire::startup_body_len(i32::from_be_bytes(len)) {
        Ok(n) => n,
        Err(e) => return Err(tell(stream, GatewayError::fatal("08P01", e.to_string())).await),
    };
    let mut body = vec![0u8; body_len];
    stream.read_exact(&mut body).await?;
    match wire::parse_startup_packet(&body) {
        Ok(p) => Ok(p),
        Err(e) => Err(tell(
            stream,
            GatewayError::fatal("08P01", format!("invalid startup packet: {e}")),
        )
        .await),
    }
}

/// Checks the protocol version and transport, then asks for and reads the token.
async fn login(
    mut stream: PgStream,
    addr: SocketAddr,
    startup: Startup,
    ctx: &PgContext,
) -> Result<Login, Stop> {
    let (major, minor) = (startup.protocol >> 16, startup.protocol & 0xffff);
    if major != 3 {
        let e = GatewayError::fatal(
            "0A000",
            format!("unsupported frontend protocol {major}.{minor}: Gatehouse speaks 3.0"),
        );
        return Err(tell(&mut stream, e).await);
    }
    let mut out = BytesMut::new();
    let unsupported: Vec<&str> = startup
        .params
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| k.starts_with("_pq_."))
        .collect();
    if minor > 0 || !unsupported.is_empty() {
        wire::negotiate_protocol_version(&mut out, 0, &unsupported);
    }
    let server = &ctx.pipeline.config().server;
    if !stream.is_tls() && !addr.ip().is_loopback() && !server.allow_plaintext {
        let e = GatewayError::fatal(
            "28000",
            "Gatehouse requires TLS for connections from other hosts, because the token is sent as a password",
        )
        .with_hint("connect with sslmode=require (or verify-full with the gateway's CA)");
        return Err(tell(&mut stream, e).await);
    }
    wire::authentication_cleartext(&mut out);
    stream.write_all(&out).await?;
    stream.flush().await?;

    let mut header = [0u8; 5];
    stream.read_exact(&mut header).await?;
    if header[0] != b'p' {
        let e = GatewayError::fatal("08P01", "expected a password message");
        return Err(tell(&mut stream, e).await);
    }
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let body_len = match wire::message_body_len(len, wire::MAX_PASSWORD_MESSAGE) {
        Ok(n) => n,
        Err(e) => return Err(tell(&mut stream, GatewayError::fatal("08P01", e.to_string())).await),
    };
    let mut body = vec![0u8; body_len];
    stream.read_exact(&mut body).await?;
    let mut r = wire::Reader::new(&body, "password");
    let password = match r.cstr().and_then(|p| r.finish().map(|_| p)) {
        Ok(p) => p.to_string(),
        Err(e) => return Err(tell(&mut stream, GatewayError::fatal("08P01", e.to_string())).await),
    };
    Ok(Login {
        stream,
        startup,
        password,
    })
}

/// Everything after a valid token: pick the connection, reach the server, relay.
async fn start_session(
    mut stream: PgStream,
    addr: SocketAddr,
    startup: Startup,
    identity: Identity,
    ctx: &PgContext,
    handshake_permit: HandshakeGuard<'_>,
) -> Result<(), Stop> {
    let mut relayed = Vec::new();
    for (key, value) in &startup.params {
        let lower = key.to_ascii_lowercase();
        if lower == "user" || lower == "database" || lower.starts_with("_pq_.") {
            continue;
        }
        if RELAYED_PARAMETERS.contains(&lower.as_str()) {
            relayed.push((key.clone(), value.clone()));
            continue;
        }
        let message = match lower.as_str() {
            "replication" => "replication connections are not allowed through Gatehouse".to_string(),
            "options" => "the startup parameter \"options\" is not allowed through Gatehouse; use SET in the session where policy allows it".to_string(),
            _ => format!("the startup parameter \"{key}\" is not allowed through Gatehouse"),
        };
        return Err(tell(&mut stream, GatewayError::fatal("0A000", message)).await);
    }

    let name = startup
        .param("database")
        .or(startup.param("user"))
        .unwrap_or_default();
    let Some(connection) = ctx.pipeline.connection(name) else {
        let e = GatewayError::fatal(
            "3D000",
            format!("Gatehouse has no connection named \"{name}\""),
        )
        .with_hint(
            "use the connection name as the database name; `gatehouse connections list` shows them",
        );
        return Err(tell(&mut stream, e).await);
    };

    match ctx
        .pipeline
        .authorize_connect(&identity, &connection, addr, "postgres")
    {
        Verdict::Allow => {}
        Verdict::Deny(d) => {
            let e = GatewayError::fatal(
                "42501",
                format!(
                    "Gatehouse denied {} access to connection \"{}\": {} (policy {})",
                    identity.principal(),
                    connection.name,
                    d.reason,
                    d.policy
                ),
            );
            return Err(tell(&mut stream, e).await);
        }
        Verdict::Review(r) => {
            let e = GatewayError::fatal(
                "42501",
                format!(
                    "connecting to \"{}\" needs approval (policy {}), which this version of Gatehouse cannot hold yet",
                    connection.name, r.policy
                ),
            );
            return Err(tell(&mut stream, e).await);
        }
    }

    let timeout = ctx.pipeline.config().server.upstream_connect_timeout;
    let upstream = match upstream::connect(connection.clone(), &relayed, timeout).await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(connection = %connection.name, error = %e, "upstream connection failed");
            let e = GatewayError::fatal(
                "08006",
                format!(
                    "Gatehouse could not open connection \"{}\": {e}",
                    connection.name
                ),
            );
            return Err(tell(&mut stream, e).await);
        }
    };

    // Masking is set up before the client sees the session: a failure ends it (fail closed).
    let mut upstream = upstream;
    let masking = match ctx.pipeline.masking_for(&identity, &connection.name) {
        None => None,
        Some(rules) => match crate::mask::PgMasking::resolve(rules, &mut upstream.stream).await {
            Ok(m) => Some(Arc::new(m)),
            Err(e) => {
                tracing::error!(error = %e, "cannot set up masking");
                let e = GatewayError::fatal(
                    "58000",
                    format!("Gatehouse cannot set up masking for this session: {e}"),
                );
                return Err(tell(&mut stream, e).await);
            }
        },
    };

    let session = match ctx
        .pipeline
        .open_session(SessionStart {
            protocol: "postgres",
            identity,
            connection: connection.clone(),
            client_addr: addr,
            application_name: startup.param("application_name").map(str::to_string),
        })
        .await
    {
        Ok(s) => s,
        Err(e) => return Err(tell(&mut stream, GatewayError::fatal("58000", e.to_string())).await),
    };
    tracing::Span::current().record("session", session.id());
    tracing::info!(
        identity = %session.identity().principal(),
        connection = %connection.name,
        "session opened"
    );

    let interrupt = Arc::new(crate::cancel::Interrupt::default());
    let cancel_key = ctx
        .cancels
        .register(upstream.cancel.clone(), interrupt.clone());
    let mut out = BytesMut::new();
    wire::authentication_ok(&mut out);
    out.extend_from_slice(&upstream.startup_frames);
    wire::backend_key_data(&mut out, cancel_key.pid, &cancel_key.key);
    wire::ready_for_query(&mut out, upstream.status);
    stream.write_all(&out).await?;
    stream.flush().await?;
    drop(handshake_permit);

    let limits = RelayLimits {
        max_message_bytes: ctx.pipeline.config().server.max_message_bytes,
        credential_recheck: ctx.pipeline.config().server.credential_recheck_interval,
        idle_in_transaction: ctx.pipeline.config().server.idle_in_transaction_timeout,
        result_excerpt_rows: ctx.pipeline.config().audit.result_excerpt_rows,
    };
    let cancel_target = upstream.cancel.clone();
    let end = relay::relay(
        stream,
        upstream.stream,
        session.clone(),
        limits,
        interrupt,
        masking,
    )
    .await;
    let reason = end.reason;
    // The server notices a closed socket only when it next writes: a statement the client
    // abandoned would run on (holding its locks) unless it is cancelled.
    if end.in_flight && reason != relay::EndReason::ServerClosed {
        match upstream::send_cancel(&cancel_target).await {
            Ok(()) => tracing::info!("cancelled the statement the client abandoned"),
            Err(e) => tracing::warn!(error = %e, "could not cancel the abandoned statement"),
        }
    }
    drop(cancel_key);
    tracing::info!(reason = %reason.as_record(), "session ended");
    session.close(&reason.as_record()).await;
    Ok(())
}

/// Sends a fatal error and returns the matching stop.
async fn tell(stream: &mut PgStream, e: GatewayError) -> Stop {
    let mut out = BytesMut::new();
    e.encode(&mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.flush().await;
    Stop::Told(e)
}

async fn cancel(pid: i32, key: &[u8], ctx: &PgContext) {
    // PostgreSQL never answers a cancel request; neither does the gateway, whatever the key.
    match ctx.cancels.lookup(pid, key) {
        Some((target, interrupt)) => {
            // A statement held for approval is only on the gateway: end its wait, and do not
            // cancel whatever the session runs next on the server.
            if interrupt.cancel_hold() {
                tracing::info!("cancel request ended a wait for approval");
                return;
            }
            if let Err(e) = upstream::send_cancel(&target).await {
                tracing::warn!(error = %e, "forwarding a cancel request failed");
            } else {
                tracing::info!("cancel request forwarded");
            }
        }
        None => tracing::info!("cancel request with an unknown key ignored"),
    }
}
