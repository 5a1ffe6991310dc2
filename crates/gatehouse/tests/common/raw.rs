//! Raw protocol helpers for tests that must send what no well-behaved client would.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Gateway;

pub const PROTOCOL_3_0: i32 = 196_608;

/// A startup-phase packet: length word then `body`.
pub fn packet(body: &[u8]) -> Vec<u8> {
    let mut v = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    v.extend(body);
    v
}

pub fn startup(protocol: i32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = protocol.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend(k.as_bytes());
        body.push(0);
        body.extend(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    packet(&body)
}

pub fn default_startup() -> Vec<u8> {
    startup(PROTOCOL_3_0, &[("user", "agent"), ("database", "appdb")])
}

/// A regular message: tag, length word, body.
pub fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend(((body.len() + 4) as i32).to_be_bytes());
    v.extend(body);
    v
}

pub fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    msg(b'Q', &body)
}

pub fn password(token: &str) -> Vec<u8> {
    let mut body = token.as_bytes().to_vec();
    body.push(0);
    msg(b'p', &body)
}

/// Reads one message; `None` at end of stream. Panics if nothing comes within 10 s.
pub async fn read_msg<S: AsyncRead + Unpin>(s: &mut S) -> Option<(u8, Vec<u8>)> {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut header = [0u8; 5];
        if s.read_exact(&mut header).await.is_err() {
            return None;
        }
        let len = i32::from_be_bytes(header[1..5].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).await.ok()?;
        Some((header[0], body))
    })
    .await
    .expect("the gateway neither answered nor closed within 10 s")
}

/// Reads messages up to and including ReadyForQuery.
pub async fn until_ready<S: AsyncRead + Unpin>(s: &mut S) -> Vec<(u8, Vec<u8>)> {
    let mut all = Vec::new();
    loop {
        let m = read_msg(s)
            .await
            .expect("connection closed before ReadyForQuery");
        let done = m.0 == b'Z';
        all.push(m);
        if done {
            return all;
        }
    }
}

/// The value of one field of an ErrorResponse body.
pub fn field(body: &[u8], code: u8) -> String {
    let mut rest = body;
    while let Some((&c, tail)) = rest.split_first() {
        if c == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap();
        if c == code {
            return String::from_utf8_lossy(&tail[..end]).into_owned();
        }
        rest = &tail[end + 1..];
    }
    String::new()
}

/// The SQLSTATE of the first ErrorResponse in `msgs`.
pub fn first_error(msgs: &[(u8, Vec<u8>)]) -> Option<String> {
    msgs.iter()
        .find(|(t, _)| *t == b'E')
        .map(|(_, b)| field(b, b'C'))
}

/// Expects the gateway to close the connection, possibly after one ErrorResponse whose
/// SQLSTATE is returned.
pub async fn expect_closed<S: AsyncRead + Unpin>(s: &mut S) -> Option<String> {
    let mut code = None;
    while let Some((tag, body)) = read_msg(s).await {
        assert_eq!(
            tag, b'E',
            "expected an error then close, got '{}'",
            tag as char
        );
        code = Some(field(&body, b'C'));
    }
    code
}

/// Connects and finishes startup with `token`, over plaintext loopback.
pub async fn login(gw: &Gateway, token: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", gw.pg_port)).await.unwrap();
    login_on(&mut s, token).await;
    s
}

pub async fn login_on<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    token: &str,
) -> Vec<(u8, Vec<u8>)> {
    s.write_all(&default_startup()).await.unwrap();
    let (tag, body) = read_msg(s).await.expect("an authentication request");
    assert_eq!(
        (tag, &body[..]),
        (b'R', &3i32.to_be_bytes()[..]),
        "cleartext password request"
    );
    s.write_all(&password(token)).await.unwrap();
    let msgs = until_ready(s).await;
    assert!(first_error(&msgs).is_none(), "login failed: {msgs:?}");
    msgs
}

/// Runs a simple query and returns every message up to ReadyForQuery.
pub async fn simple<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, sql: &str) -> Vec<(u8, Vec<u8>)> {
    s.write_all(&query(sql)).await.unwrap();
    until_ready(s).await
}

/// The text of the first column of every DataRow.
pub fn first_column(msgs: &[(u8, Vec<u8>)]) -> Vec<String> {
    msgs.iter()
        .filter(|(t, _)| *t == b'D')
        .map(|(_, b)| {
            let len = i32::from_be_bytes(b[2..6].try_into().unwrap()) as usize;
            String::from_utf8_lossy(&b[6..6 + len]).into_owned()
        })
        .collect()
}
