//! The gateway as a PostgreSQL client: connects to the upstream server with the credential only
//! the gateway holds.
//!
//! The authentication exchange uses `postgres-protocol` (the codec under tokio-postgres) for
//! SCRAM-SHA-256 and md5, so the gateway never hand-rolls password cryptography.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use gatehouse_core::config::{ConnectionConfig, UpstreamTls};
use gatehouse_core::secret::{Secret, SecretError};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::stream::PgStream;
use crate::wire::{self, LARGE_MESSAGE_LIMIT};

/// Why the gateway could not open a session on the upstream server. The text is shown to the
/// client and never includes the credential.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("the gateway's credential for this connection is not available ({0})")]
    Secret(#[from] SecretError),
    #[error("cannot connect to the server: {0}")]
    Connect(io::Error),
    #[error("the server did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the server does not accept TLS, which this connection requires")]
    TlsRefused,
    #[error("TLS to the server failed: {0}")]
    Tls(String),
    #[error(
        "the server rejected the gateway's credential for this connection; an administrator must fix it"
    )]
    AuthRejected,
    #[error("the server asked for an authentication method the gateway does not support ({0})")]
    AuthUnsupported(String),
    #[error("the server needs a password but the connection has none configured")]
    PasswordMissing,
    #[error("the server refused the session: {message} (SQLSTATE {code})")]
    Refused { code: String, message: String },
    #[error("the server broke the protocol during startup: {0}")]
    Protocol(String),
}

impl From<io::Error> for UpstreamError {
    fn from(e: io::Error) -> Self {
        UpstreamError::Protocol(e.to_string())
    }
}

/// An authenticated upstream session, ready for queries.
pub struct Upstream {
    pub stream: PgStream,
    /// ParameterStatus and NoticeResponse frames sent during startup, to be relayed verbatim.
    pub startup_frames: BytesMut,
    /// The server's own cancel key: kept by the gateway, never shown to the client.
    pub cancel: CancelTarget,
    /// Transaction status from the first ReadyForQuery.
    pub status: u8,
}

/// Where and how to deliver a cancel request for one backend.
#[derive(Clone)]
pub struct CancelTarget {
    pub connection: Arc<ConnectionConfig>,
    pub pid: i32,
    pub key: Vec<u8>,
}

/// Connects, negotiates TLS as configured, starts up and authenticates.
pub async fn connect(
    connection: Arc<ConnectionConfig>,
    client_params: &[(String, String)],
    timeout: Duration,
) -> Result<Upstream, UpstreamError> {
    let password = connection
        .password
        .as_ref()
        .map(|p| p.resolve())
        .transpose()?;
    tokio::time::timeout(timeout, connect_inner(connection, client_params, password))
        .await
        .map_err(|_| UpstreamError::Timeout(timeout))?
}

async fn connect_inner(
    connection: Arc<ConnectionConfig>,
    client_params: &[(String, String)],
    password: Option<Secret>,
) -> Result<Upstream, UpstreamError> {
    let mut stream = open(&connection).await?;

    let mut buf = BytesMut::new();
    let mut params: Vec<(&str, &str)> = vec![
        ("user", connection.user.as_str()),
        ("database", connection.database.as_str()),
    ];
    params.extend(client_params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    frontend::startup_message(params, &mut buf)?;
    stream.write_all(&buf).await?;
    stream.flush().await?;

    authenticate(&mut stream, &connection.user, password.as_ref()).await?;

    let mut startup_frames = BytesMut::new();
    let mut cancel = None;
    loop {
        let frame = read_frame(&mut stream).await?;
        match frame[0] {
            b'S' | b'N' => startup_frames.extend_from_slice(&frame),
            b'K' => {
                let body = &frame[5..];
                if body.len() < 8 || body.len() > 260 {
                    return Err(UpstreamError::Protocol("bad BackendKeyData".into()));
                }
                let pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                cancel = Some(CancelTarget {
                    connection: connection.clone(),
                    pid,
                    key: body[4..].to_vec(),
                });
            }
            b'Z' => {
                let status = *frame.get(5).unwrap_or(&b'I');
                let cancel = cancel.ok_or_else(|| {
                    UpstreamError::Protocol("no BackendKeyData before ReadyForQuery".into())
                })?;
                return Ok(Upstream {
                    stream,
                    startup_frames,
                    cancel,
                    status,
                });
            }
            b'E' => return Err(refused(&frame[5..])),
            other => {
                return Err(UpstreamError::Protocol(format!(
                    "unexpected message '{}' during startup",
                    other as char
                )));
            }
        }
    }
}

/// Opens TCP and, when configured, TLS (with no plaintext fallback).
pub(crate) async fn open(connection: &ConnectionConfig) -> Result<PgStream, UpstreamError> {
    let tcp = TcpStream::connect((connection.host.as_str(), connection.port))
        .await
        .map_err(UpstreamError::Connect)?;
    tcp.set_nodelay(true).map_err(UpstreamError::Connect)?;
    if connection.tls == UpstreamTls::Disable {
        return Ok(PgStream::Plain(tcp));
    }
    let mut tcp = tcp;
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    tcp.write_all(&buf).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    if answer[0] != b'S' {
        return Err(UpstreamError::TlsRefused);
    }
    let config = crate::tls::upstream_client_config(connection)
        .map_err(|e| UpstreamError::Tls(e.to_string()))?;
    let name = ServerName::try_from(connection.host.clone())
        .map_err(|_| UpstreamError::Tls(format!("invalid host name {}", connection.host)))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| UpstreamError::Tls(e.to_string()))?;
    Ok(PgStream::ClientTls(Box::new(tls)))
}

async fn authenticate(
    stream: &mut PgStream,
    user: &str,
    password: Option<&Secret>,
) -> Result<(), UpstreamError> {
    let mut out = BytesMut::new();
    let mut scram: Option<ScramSha256> = None;
    loop {
        let frame = read_frame(stream).await?;
        if frame[0] == b'E' {
            let code = wire::error_field(&frame[5..], b'C').unwrap_or("");
            // Authentication failures get one fixed message: the server's text can name the
            // upstream role, and the client has no business with the gateway's credential.
            if code == "28P01" || code == "28000" {
                return Err(UpstreamError::AuthRejected);
            }
            return Err(refused(&frame[5..]));
        }
        let mut parse_buf = frame.clone();
        let message = Message::parse(&mut parse_buf)?
            .ok_or_else(|| UpstreamError::Protocol("truncated authentication message".into()))?;
        let need_password = || password.ok_or(UpstreamError::PasswordMissing);
        out.clear();
        match message {
            Message::AuthenticationOk => return Ok(()),
            Message::AuthenticationCleartextPassword => {
                if !stream.is_tls() {
                    return Err(UpstreamError::AuthUnsupported(
                        "cleartext password without TLS".into(),
                    ));
                }
                frontend::password_message(need_password()?.expose().as_bytes(), &mut out)?;
            }
            Message::AuthenticationMd5Password(body) => {
                let hash = md5_hash(
                    user.as_bytes(),
                    need_password()?.expose().as_bytes(),
                    body.salt(),
                );
                frontend::password_message(hash.as_bytes(), &mut out)?;
            }
            Message::AuthenticationSasl(body) => {
                let mut mechanisms = body.mechanisms();
                let mut offered = false;
                while let Some(m) = mechanisms.next()? {
                    offered |= m == sasl::SCRAM_SHA_256;
                }
                if !offered {
                    return Err(UpstreamError::AuthUnsupported(
                        "SASL without SCRAM-SHA-256".into(),
                    ));
                }
                let s = ScramSha256::new(
                    need_password()?.expose().as_bytes(),
                    ChannelBinding::unsupported(),
                );
                frontend::sasl_initial_response(sasl::SCRAM_SHA_256, s.message(), &mut out)?;
                scram = Some(s);
            }
            Message::AuthenticationSaslContinue(body) => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| UpstreamError::Protocol("SASL continue before start".into()))?;
                s.update(body.data())
                    .map_err(|_| UpstreamError::AuthRejected)?;
                frontend::sasl_response(s.message(), &mut out)?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| UpstreamError::Protocol("SASL final before start".into()))?;
                // Verifies the server's signature: a server that does not know the password
                // cannot impersonate the real one.
                s.finish(body.data()).map_err(|_| {
                    UpstreamError::Protocol("server SCRAM signature invalid".into())
                })?;
                continue;
            }
            _ => {
                return Err(UpstreamError::AuthUnsupported(format!(
                    "message '{}'",
                    frame[0] as char
                )));
            }
        }
        stream.write_all(&out).await?;
        stream.flush().await?;
    }
}

/// Reads one whole backend frame (tag, length, body) during startup.
async fn read_frame(stream: &mut PgStream) -> Result<BytesMut, UpstreamError> {
    read_frame_limited(stream, LARGE_MESSAGE_LIMIT).await
}

/// Reads one whole server message of at most `limit` bytes.
pub(crate) async fn read_frame_limited(
    stream: &mut PgStream,
    limit: usize,
) -> Result<BytesMut, UpstreamError> {
    let mut header = [0u8; 5];
    stream.read_exact(&mut header).await?;
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let body_len =
        wire::message_body_len(len, limit).map_err(|e| UpstreamError::Protocol(e.to_string()))?;
    let mut frame = BytesMut::with_capacity(5 + body_len);
    frame.extend_from_slice(&header);
    frame.resize(5 + body_len, 0);
    stream.read_exact(&mut frame[5..]).await?;
    Ok(frame)
}

fn refused(body: &[u8]) -> UpstreamError {
    UpstreamError::Refused {
        code: wire::error_field(body, b'C').unwrap_or("XX000").to_string(),
        message: wire::error_field(body, b'M')
            .unwrap_or("(no message)")
            .to_string(),
    }
}

/// Delivers a cancel request for `target` on a fresh connection, as PostgreSQL expects.
pub async fn send_cancel(target: &CancelTarget) -> Result<(), UpstreamError> {
    let mut stream = open(&target.connection).await?;
    let mut buf = BytesMut::new();
    let len = 12 + target.key.len() as i32;
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&wire::CANCEL_REQUEST_CODE.to_be_bytes());
    buf.extend_from_slice(&target.pid.to_be_bytes());
    buf.extend_from_slice(&target.key);
    stream.write_all(&buf).await?;
    stream.flush().await?;
    // The server closes the connection without answering; wait briefly for that.
    let mut sink = [0u8; 1];
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut sink)).await;
    Ok(())
}
