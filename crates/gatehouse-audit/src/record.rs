//! One record and the chain. A record is one line of JSON: serde_json escapes newlines, NULs,
//! control characters and quotes, so no text inside a record can end it or forge another.
//! Its hash is the SHA-256 of the line as written, up to the hash itself: the details are
//! encoded once, by whoever records them (on their own thread), and the writer only frames
//! and hashes the bytes; the verifier hashes the same bytes, so nothing depends on a
//! re-encoding being identical.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The hash before the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Something that happened, before it is sequenced and chained.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// What happened, such as `token.created`, `review.voted`, `session.opened`.
    pub kind: &'static str,
    /// Who did it (a principal), when anyone did.
    pub actor: Option<String>,
    /// The details, already encoded as a JSON object.
    data: String,
}

impl Event {
    /// An event with details built as a JSON value.
    pub fn new(kind: &'static str, actor: Option<&str>, data: Value) -> Event {
        Event {
            kind,
            actor: actor.map(str::to_string),
            data: data.to_string(),
        }
    }

    /// An event with typed details, encoded once here: the cheap way for the hot path
    /// (statements), which builds no intermediate JSON value.
    pub fn typed<T: Serialize + ?Sized>(
        kind: &'static str,
        actor: Option<&str>,
        data: &T,
    ) -> Event {
        Event {
            kind,
            actor: actor.map(str::to_string),
            // Serializing plain data (strings, numbers, maps with string keys) cannot fail; if
            // a new record type ever could, the record still says what happened, and why its
            // details are missing.
            data: serde_json::to_string(data).unwrap_or_else(|e| {
                tracing::error!(kind, error = %e, "an audit record's details cannot be encoded");
                serde_json::json!({ "unencodable": e.to_string() }).to_string()
            }),
        }
    }

    /// The encoded details.
    pub fn data_json(&self) -> &str {
        &self.data
    }
}

/// A sequenced, chained record as read back from the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    /// Microseconds since the epoch.
    pub at: i64,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    pub data: Value,
    /// The hash of the record before (or [`GENESIS`]).
    pub prev: String,
    /// SHA-256 of the line up to this field (see [`line_hash`]).
    pub hash: String,
}

/// How every line ends: `,"hash":"<64 hex digits>"}`.
const HASH_FIELD: &[u8] = b",\"hash\":\"";
const HASH_SUFFIX_LEN: usize = HASH_FIELD.len() + 64 + 2;

/// Appends the line of `event` as record `seq` after the record with hash `prev` to `out`
/// (with its newline) and returns the record's hash.
pub fn encode_line(seq: u64, at: i64, event: &Event, prev: &str, out: &mut Vec<u8>) -> String {
    use std::io::Write;
    let start = out.len();
    let _ = write!(out, "{{\"seq\":{seq},\"at\":{at},\"kind\":");
    let _ = serde_json::to_writer(&mut *out, event.kind);
    if let Some(actor) = &event.actor {
        out.extend_from_slice(b",\"actor\":");
        let _ = serde_json::to_writer(&mut *out, actor);
    }
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(event.data.as_bytes());
    out.extend_from_slice(b",\"prev\":");
    let _ = serde_json::to_writer(&mut *out, prev);
    let hash = sha256_hex(&[&out[start..], b"}"]);
    out.extend_from_slice(HASH_FIELD);
    out.extend_from_slice(hash.as_bytes());
    out.extend_from_slice(b"\"}\n");
    hash
}

/// The hash a line (without its newline) should carry, and the hash it does carry; `None`
/// when the line does not end in a hash field.
pub fn line_hash(line: &[u8]) -> Option<(String, &str)> {
    let body_len = line.len().checked_sub(HASH_SUFFIX_LEN)?;
    let (body, suffix) = line.split_at(body_len);
    if !suffix.starts_with(HASH_FIELD) || !suffix.ends_with(b"\"}") {
        return None;
    }
    let claimed = std::str::from_utf8(&suffix[HASH_FIELD.len()..HASH_FIELD.len() + 64]).ok()?;
    Some((sha256_hex(&[body, b"}"]), claimed))
}

/// The SHA-256 of `parts` one after the other, in hex. By `ring`, whose SHA-256 is written in
/// assembly for each CPU's vector instructions: the writer hashes every record on its one
/// thread, and on CPUs without SHA extensions that is several times faster than a portable
/// implementation.
fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        context.update(part);
    }
    hex::encode(context.finish())
}

/// Text as it may be recorded: at most `max` bytes; longer text is cut and carries the
/// SHA-256 and length of the whole, so the record stays bounded and still identifies it.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum BoundedText<'a> {
    Whole(&'a str),
    Cut {
        prefix: &'a str,
        bytes: usize,
        sha256: String,
    },
}

impl<'a> BoundedText<'a> {
    pub fn new(text: &'a str, max: usize) -> BoundedText<'a> {
        if text.len() <= max {
            return BoundedText::Whole(text);
        }
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        BoundedText::Cut {
            prefix: &text[..cut],
            bytes: text.len(),
            sha256: sha256_hex(&[text.as_bytes()]),
        }
    }
}

/// [`BoundedText`] as a JSON value, for records built with `json!`.
pub fn bounded_text(text: &str, max: usize) -> Value {
    serde_json::to_value(BoundedText::new(text, max)).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_stays_inside_its_record() {
        let text = "drop table x;\n{\"seq\":99,\"kind\":\"forged\"}\0\u{1b}[2J\",\"hash\":\"";
        let mut out = Vec::new();
        let hash = encode_line(
            1,
            5,
            &Event::typed("statement", Some("a\nb"), text),
            GENESIS,
            &mut out,
        );
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
        let line = &out[..out.len() - 1];
        assert!(!line.contains(&0) && !line.contains(&0x1b));
        let back: Record = serde_json::from_slice(line).unwrap();
        assert_eq!(back.data, Value::String(text.into()));
        assert_eq!(back.actor.as_deref(), Some("a\nb"));
        assert_eq!(back.hash, hash);
        let (computed, claimed) = line_hash(line).unwrap();
        assert_eq!((computed.as_str(), claimed), (hash.as_str(), hash.as_str()));
    }

    #[test]
    fn any_changed_byte_changes_the_hash() {
        let mut out = Vec::new();
        encode_line(
            7,
            9,
            &Event::new("k", None, serde_json::json!({"n": 1})),
            GENESIS,
            &mut out,
        );
        let line = &out[..out.len() - 1];
        for i in 0..line.len() - HASH_SUFFIX_LEN {
            let mut changed = line.to_vec();
            changed[i] ^= 1;
            let (computed, claimed) = line_hash(&changed).unwrap();
            assert_ne!(computed, claimed, "byte {i}");
        }
        assert!(line_hash(b"{\"seq\":1}").is_none());
    }

    #[test]
    fn long_text_is_cut_with_its_hash() {
        let v = bounded_text(&"é".repeat(100), 11);
        assert_eq!(v["bytes"], 200);
        assert_eq!(v["prefix"].as_str().unwrap().len(), 10);
        assert_eq!(v["sha256"].as_str().unwrap().len(), 64);
    }
}
