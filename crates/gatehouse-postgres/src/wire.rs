//! PostgreSQL protocol 3.0 messages: the few the gateway must read or write itself.
//!
//! Everything else is relayed as opaque frames. Parsers here take a message body (without the
//! tag and length) and never panic: every length is checked against the bytes present, and
//! every string must be NUL-terminated UTF-8.

use bytes::{BufMut, BytesMut};

/// Protocol 3.0 as sent in a StartupMessage.
pub const PROTOCOL_3_0: i32 = 196_608;
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;

/// PostgreSQL's own cap on a startup packet (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET: usize = 10_000;
/// PostgreSQL's cap on messages that carry no payload to speak of (`PQ_SMALL_MESSAGE_LIMIT`).
pub const SMALL_MESSAGE_LIMIT: usize = 10_000;
/// The largest message the backend may send (`PQ_LARGE_MESSAGE_LIMIT`).
pub const LARGE_MESSAGE_LIMIT: usize = 0x3fff_fffe;
/// A password message carries a token; OIDC tokens are a few KiB, never this much.
pub const MAX_PASSWORD_MESSAGE: usize = 32 * 1024;

/// Why a message could not be understood. Shown to the client with SQLSTATE 08P01.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("invalid message length {0}")]
    BadLength(i64),
    #[error("message of {len} bytes exceeds the limit of {limit} for this message type")]
    TooLarge { len: usize, limit: usize },
    #[error("malformed {0} message")]
    Malformed(&'static str),
    #[error("{0} contains text that is not valid UTF-8; Gatehouse accepts UTF-8 only")]
    NotUtf8(&'static str),
    #[error("unexpected message type '{0}'")]
    UnexpectedType(char),
}

/// Checks the length word of a startup-phase packet (which includes itself) and returns the
/// body length. Done before anything is allocated.
pub fn startup_body_len(len: i32) -> Result<usize, WireError> {
    if len < 8 || len as usize > MAX_STARTUP_PACKET {
        return Err(WireError::BadLength(len as i64));
    }
    Ok(len as usize - 4)
}

/// Checks a regular message's length word (which includes itself) against `limit` and returns
/// the body length.
pub fn message_body_len(len: i32, limit: usize) -> Result<usize, WireError> {
    if len < 4 {
        return Err(WireError::BadLength(len as i64));
    }
    let len = len as usize;
    if len > limit {
        return Err(WireError::TooLarge { len, limit });
    }
    Ok(len - 4)
}

/// A cursor over a message body.
pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }

    fn malformed(&self) -> WireError {
        WireError::Malformed(self.what)
    }

    pub fn i16(&mut self) -> Result<i16, WireError> {
        let (head, rest) = self.buf.split_first_chunk::<2>().ok_or(self.malformed())?;
        self.buf = rest;
        Ok(i16::from_be_bytes(*head))
    }

    pub fn i32(&mut self) -> Result<i32, WireError> {
        let (head, rest) = self.buf.split_first_chunk::<4>().ok_or(self.malformed())?;
        self.buf = rest;
        Ok(i32::from_be_bytes(*head))
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.buf.len() {
            return Err(self.malformed());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// A NUL-terminated string, which must be UTF-8.
    pub fn cstr(&mut self) -> Result<&'a str, WireError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(self.malformed())?;
        let s = std::str::from_utf8(&self.buf[..end]).map_err(|_| WireError::NotUtf8(self.what))?;
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    /// Requires that nothing is left over.
    pub fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.malformed())
        }
    }
}

/// The first packet of a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    Ssl,
    GssEnc,
    Cancel { pid: i32, key: Vec<u8> },
    Startup(Startup),
}

/// A StartupMessage: requested protocol and parameters.
#[derive(Debug, PartialEq, Eq)]
pub struct Startup {
    pub protocol: i32,
    pub params: Vec<(String, String)>,
}

impl Startup {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a startup-phase packet body (after the length word).
pub fn parse_startup_packet(body: &[u8]) -> Result<StartupPacket, WireError> {
    let mut r = Reader::new(body, "startup");
    let code = r.i32()?;
    match code {
        SSL_REQUEST_CODE => {
            r.finish()?;
            Ok(StartupPacket::Ssl)
        }
        GSSENC_REQUEST_CODE => {
            r.finish()?;
            Ok(StartupPacket::GssEnc)
        }
        CANCEL_REQUEST_CODE => {
            let pid = r.i32()?;
            // Protocol 3.2 allows keys of 4 to 256 bytes.
            let key = r.bytes(body.len() - 8)?;
            if !(4..=256).contains(&key.len()) {
                return Err(WireError::Malformed("cancel request"));
            }
            Ok(StartupPacket::Cancel {
                pid,
                key: key.to_vec(),
            })
        }
        protocol => {
            let mut params = Vec::new();
            loop {
                let key = r.cstr()?;
                if key.is_empty() {
                    break;
                }
                let value = r.cstr()?;
                params.push((key.to_string(), value.to_string()));
            }
            r.finish()?;
            Ok(StartupPacket::Startup(Startup { protocol, params }))
        }
    }
}

// ---- messages the gateway writes -------------------------------------------------------------

/// Starts a message with `tag` and a placeholder length; [`end`] fills the length in.
fn begin(out: &mut BytesMut, tag: u8) -> usize {
    out.put_u8(tag);
    let at = out.len();
    out.put_i32(0);
    at
}

fn end(out: &mut BytesMut, at: usize) {
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(out: &mut BytesMut, s: &str) {
    // A NUL inside would end the field early on the client; drop it.
    out.extend(s.bytes().filter(|&b| b != 0));
    out.put_u8(0);
}

/// ErrorResponse or NoticeResponse severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
    Notice,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Notice => "NOTICE",
        }
    }
}

/// An error the gateway itself reports, with its SQLSTATE and an actionable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub hint: Option<String>,
}

impl GatewayError {
    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        GatewayError {
            severity: Severity::Fatal,
            code,
            message: message.into(),
            hint: None,
        }
    }

    /// A NoticeResponse: information the client shows but that fails nothing.
    pub fn notice(code: &'static str, message: impl Into<String>) -> Self {
        GatewayError {
            severity: Severity::Notice,
            code,
            message: message.into(),
            hint: None,
        }
    }

    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        GatewayError {
            severity: Severity::Error,
            code,
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Appends this error as an ErrorResponse ('E'), or a NoticeResponse for notices.
    pub fn encode(&self, out: &mut BytesMut) {
        let tag = if self.severity == Severity::Notice {
            b'N'
        } else {
            b'E'
        };
        let at = begin(out, tag);
        for (field, value) in [
            (b'S', self.severity.as_str()),
            (b'V', self.severity.as_str()),
            (b'C', self.code),
        ] {
            out.put_u8(field);
            put_cstr(out, value);
        }
        out.put_u8(b'M');
        put_cstr(out, &self.message);
        if let Some(hint) = &self.hint {
            out.put_u8(b'H');
            put_cstr(out, hint);
        }
        out.put_u8(0);
        end(out, at);
    }
}

pub fn authentication_cleartext(out: &mut BytesMut) {
    let at = begin(out, b'R');
    out.put_i32(3);
    end(out, at);
}

pub fn authentication_ok(out: &mut BytesMut) {
    let at = begin(out, b'R');
    out.put_i32(0);
    end(out, at);
}

pub fn backend_key_data(out: &mut BytesMut, pid: i32, key: &[u8; 4]) {
    let at = begin(out, b'K');
    out.put_i32(pid);
    out.put_slice(key);
    end(out, at);
}

pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    let at = begin(out, b'Z');
    out.put_u8(status);
    end(out, at);
}

/// NegotiateProtocolVersion: the newest minor version we speak, and options we ignored.
pub fn negotiate_protocol_version(out: &mut BytesMut, minor: i32, unsupported: &[&str]) {
    let at = begin(out, b'v');
    out.put_i32(minor);
    out.put_i32(unsupported.len() as i32);
    for option in unsupported {
        put_cstr(out, option);
    }
    end(out, at);
}

/// An Execute of a portal that cannot exist. The backend answers it with SQLSTATE 34000 and,
/// exactly as for any failed statement, aborts the transaction and skips to the next Sync.
/// The relay uses it in place of a refused message so that the server's transaction state
/// stays what PostgreSQL semantics say it must be.
pub fn execute_missing_portal(out: &mut BytesMut, portal: &str) {
    let at = begin(out, b'E');
    put_cstr(out, portal);
    out.put_i32(0);
    end(out, at);
}

/// Appends a Describe of portal `portal`.
pub fn describe_portal(out: &mut BytesMut, portal: &str) {
    out.put_u8(b'D');
    out.put_i32((4 + 1 + portal.len() + 1) as i32);
    out.put_u8(b'P');
    out.put_slice(portal.as_bytes());
    out.put_u8(0);
}

pub fn sync(out: &mut BytesMut) {
    let at = begin(out, b'S');
    end(out, at);
}

// ---- messages the gateway reads from clients ---------------------------------------------------

/// Parse: statement name, SQL text (parameter types are not needed).
pub fn parse_parse(body: &[u8]) -> Result<(&str, &str), WireError> {
    let mut r = Reader::new(body, "Parse");
    let name = r.cstr()?;
    let query = r.cstr()?;
    let n = r.i16()?;
    if n < 0 {
        return Err(WireError::Malformed("Parse"));
    }
    r.bytes(n as usize * 4)?;
    r.finish()?;
    Ok((name, query))
}

/// A Bind message's portal, statement and parameter values (format code per value).
pub struct Bind<'a> {
    pub portal: &'a str,
    pub statement: &'a str,
    pub params: Vec<Option<&'a [u8]>>,
    pub formats: Vec<i16>,
}

impl Bind<'_> {
    /// Whether parameter `i` is sent in binary.
    pub fn is_binary(&self, i: usize) -> bool {
        match self.formats.len() {
            0 => false,
            1 => self.formats[0] == 1,
            _ => self.formats.get(i) == Some(&1),
        }
    }
}

pub fn parse_bind(body: &[u8]) -> Result<Bind<'_>, WireError> {
    let mut r = Reader::new(body, "Bind");
    let portal = r.cstr()?;
    let statement = r.cstr()?;
    let nformats = r.i16()?;
    if nformats < 0 {
        return Err(WireError::Malformed("Bind"));
    }
    let mut formats = Vec::with_capacity(nformats as usize);
    for _ in 0..nformats {
        let f = r.i16()?;
        if f != 0 && f != 1 {
            return Err(WireError::Malformed("Bind"));
        }
        formats.push(f);
    }
    let nparams = r.i16()?;
    if nparams < 0 || (nformats > 1 && nformats != nparams) {
        return Err(WireError::Malformed("Bind"));
    }
    let mut params = Vec::with_capacity(nparams as usize);
    for _ in 0..nparams {
        let len = r.i32()?;
        params.push(match len {
            -1 => None,
            n if n < 0 => return Err(WireError::Malformed("Bind")),
            n => Some(r.bytes(n as usize)?),
        });
    }
    let nresults = r.i16()?;
    if nresults < 0 {
        return Err(WireError::Malformed("Bind"));
    }
    for _ in 0..nresults {
        let f = r.i16()?;
        if f != 0 && f != 1 {
            return Err(WireError::Malformed("Bind"));
        }
    }
    r.finish()?;
    Ok(Bind {
        portal,
        statement,
        params,
        formats,
    })
}

/// Execute: portal name and row limit.
pub fn parse_execute(body: &[u8]) -> Result<&str, WireError> {
    let mut r = Reader::new(body, "Execute");
    let portal = r.cstr()?;
    r.i32()?;
    r.finish()?;
    Ok(portal)
}

/// Close or Describe: the kind ('S' statement or 'P' portal) and name.
pub fn parse_target<'a>(body: &'a [u8], what: &'static str) -> Result<(u8, &'a str), WireError> {
    let mut r = Reader::new(body, what);
    let kind = r.bytes(1)?[0];
    if kind != b'S' && kind != b'P' {
        return Err(WireError::Malformed(what));
    }
    let name = r.cstr()?;
    r.finish()?;
    Ok((kind, name))
}

/// Query: the SQL text.
pub fn parse_query(body: &[u8]) -> Result<&str, WireError> {
    let mut r = Reader::new(body, "Query");
    let q = r.cstr()?;
    r.finish()?;
    Ok(q)
}

// ---- messages the gateway reads from servers -----------------------------------------------------

/// The row count in a CommandComplete tag ("SELECT 5", "INSERT 0 3", "COPY 10"), if it has one.
pub fn command_complete_rows(body: &[u8]) -> Option<i64> {
    let tag = body.strip_suffix(&[0]).unwrap_or(body);
    let tag = std::str::from_utf8(tag).ok()?;
    let mut words = tag.split(' ');
    let verb = words.next()?;
    match verb {
        "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "COPY" | "FETCH" | "MOVE" => {
            tag.rsplit(' ').next()?.parse().ok()
        }
        _ => None,
    }
}

/// The value of one field of an ErrorResponse/NoticeResponse body.
pub fn error_field(body: &[u8], field: u8) -> Option<&str> {
    let mut rest = body;
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            return None;
        }
        let end = tail.iter().position(|&b| b == 0)?;
        if code == field {
            return std::str::from_utf8(&tail[..end]).ok();
        }
        rest = &tail[end + 1..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_lengths_are_bounded_before_allocation() {
        for bad in [0, 4, 7, -1, i32::MIN, i32::MAX, 10_001] {
            assert!(startup_body_len(bad).is_err(), "{bad}");
        }
        assert_eq!(startup_body_len(8), Ok(4));
        assert_eq!(startup_body_len(10_000), Ok(9_996));
    }

    #[test]
    fn message_lengths_are_bounded() {
        assert!(message_body_len(3, 100).is_err());
        assert!(message_body_len(-5, 100).is_err());
        assert!(message_body_len(101, 100).is_err());
        assert_eq!(message_body_len(4, 100), Ok(0));
    }

    #[test]
    fn startup_packets_parse() {
        let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
        body.extend(b"user\0bob\0database\0appdb\0\0");
        let StartupPacket::Startup(s) = parse_startup_packet(&body).unwrap() else {
            panic!()
        };
        assert_eq!(s.param("database"), Some("appdb"));
        assert_eq!(
            parse_startup_packet(&SSL_REQUEST_CODE.to_be_bytes()).unwrap(),
            StartupPacket::Ssl
        );
    }

    #[test]
    fn malformed_startup_packets_are_rejected() {
        let mut unterminated = PROTOCOL_3_0.to_be_bytes().to_vec();
        unterminated.extend(b"user\0bob");
        assert!(parse_startup_packet(&unterminated).is_err());
        let mut bad_utf8 = PROTOCOL_3_0.to_be_bytes().to_vec();
        bad_utf8.extend(b"user\0\xff\xfe\0\0");
        assert!(matches!(
            parse_startup_packet(&bad_utf8),
            Err(WireError::NotUtf8(_))
        ));
        let mut trailing = PROTOCOL_3_0.to_be_bytes().to_vec();
        trailing.extend(b"\0junk");
        assert!(parse_startup_packet(&trailing).is_err());
        let mut ssl_extra = SSL_REQUEST_CODE.to_be_bytes().to_vec();
        ssl_extra.push(0);
        assert!(parse_startup_packet(&ssl_extra).is_err());
        let mut cancel_short = CANCEL_REQUEST_CODE.to_be_bytes().to_vec();
        cancel_short.extend(1i32.to_be_bytes());
        cancel_short.extend([1, 2]);
        assert!(parse_startup_packet(&cancel_short).is_err());
    }

    #[test]
    fn bind_rejects_inconsistent_counts_and_lengths() {
        // portal "", statement "s", 2 format codes but 1 parameter.
        let mut b = b"\0s\0".to_vec();
        b.extend(2i16.to_be_bytes());
        b.extend([0, 0, 0, 1]);
        b.extend(1i16.to_be_bytes());
        b.extend(1i32.to_be_bytes());
        b.push(b'x');
        b.extend(0i16.to_be_bytes());
        assert!(parse_bind(&b).is_err());

        // parameter length -2
        let mut b = b"\0s\0".to_vec();
        b.extend(0i16.to_be_bytes());
        b.extend(1i16.to_be_bytes());
        b.extend((-2i32).to_be_bytes());
        b.extend(0i16.to_be_bytes());
        assert!(parse_bind(&b).is_err());

        // parameter length beyond the message
        let mut b = b"\0s\0".to_vec();
        b.extend(0i16.to_be_bytes());
        b.extend(1i16.to_be_bytes());
        b.extend(1000i32.to_be_bytes());
        b.extend(b"abc");
        assert!(parse_bind(&b).is_err());
    }

    #[test]
    fn bind_parses_values_and_formats() {
        let mut b = b"p1\0s1\0".to_vec();
        b.extend(1i16.to_be_bytes());
        b.extend(1i16.to_be_bytes());
        b.extend(2i16.to_be_bytes());
        b.extend(2i32.to_be_bytes());
        b.extend(b"hi");
        b.extend((-1i32).to_be_bytes());
        b.extend(0i16.to_be_bytes());
        let bind = parse_bind(&b).unwrap();
        assert_eq!(bind.portal, "p1");
        assert_eq!(bind.statement, "s1");
        assert_eq!(bind.params, vec![Some(&b"hi"[..]), None]);
        assert!(bind.is_binary(1));
    }

    #[test]
    fn command_complete_tags_give_row_counts() {
        assert_eq!(command_complete_rows(b"SELECT 5\0"), Some(5));
        assert_eq!(command_complete_rows(b"INSERT 0 3\0"), Some(3));
        assert_eq!(command_complete_rows(b"COPY 10\0"), Some(10));
        assert_eq!(command_complete_rows(b"CREATE TABLE\0"), None);
        assert_eq!(command_complete_rows(b"\xff\0"), None);
    }

    #[test]
    fn errors_encode_and_fields_read_back() {
        let mut out = BytesMut::new();
        GatewayError::error("42501", "no\0pe")
            .with_hint("ask")
            .encode(&mut out);
        assert_eq!(out[0], b'E');
        let len = i32::from_be_bytes(out[1..5].try_into().unwrap()) as usize;
        assert_eq!(len + 1, out.len());
        let body = &out[5..];
        assert_eq!(error_field(body, b'C'), Some("42501"));
        assert_eq!(error_field(body, b'M'), Some("nope"));
        assert_eq!(error_field(body, b'H'), Some("ask"));
        assert_eq!(error_field(body, b'D'), None);
    }
}
