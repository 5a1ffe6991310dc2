//! Verifies a log file offline: the chain (sequence, previous hash, own hash), every
//! checkpoint's signature over the state it covers, and optionally that an exported checkpoint
//! kept elsewhere is still part of the log (which catches truncation and rewriting of
//! everything after the last checkpoint kept in the file).

use std::path::Path;

use ring::signature::{ED25519, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::log::checkpoint_message;
use crate::read::LogReader;
use crate::record::{GENESIS, Record, line_hash};

/// A checkpoint as exported, to be kept off the gateway host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedCheckpoint {
    pub covers_seq: u64,
    pub covers_hash: String,
    pub signature: String,
    pub public_key: String,
}

/// The result of a verification.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verification {
    pub records: u64,
    pub checkpoints: u64,
    /// The last sequence number covered by a valid signature.
    pub signed_through: u64,
    /// The first problem found, with the line (1-based) it is on.
    pub problem: Option<Problem>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Problem {
    pub line: u64,
    pub message: String,
    /// The problem is only a last record cut off: what a crash leaves (the next start cuts
    /// it), and also what a reader of a busy live file meets while a record is being written.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub torn_tail: bool,
}

/// Verifies `path` against `public_key` (hex, the log's `signing.pub`), and `anchor` when
/// given.
pub fn verify_file(
    path: &Path,
    public_key: &str,
    anchor: Option<&ExportedCheckpoint>,
) -> std::io::Result<Verification> {
    verify_records(LogReader::open(path)?, public_key, anchor)
}

/// [`verify_file`] on the records `reader` gives (a running gateway verifies its own log
/// through [`crate::AuditLog::reader`]).
pub fn verify_records<R: std::io::Read>(
    mut reader: LogReader<R>,
    public_key: &str,
    anchor: Option<&ExportedCheckpoint>,
) -> std::io::Result<Verification> {
    let key_bytes = hex::decode(public_key.trim()).unwrap_or_default();
    let key = UnparsedPublicKey::new(&ED25519, key_bytes);
    let mut v = Verification {
        records: 0,
        checkpoints: 0,
        signed_through: 0,
        problem: None,
    };
    let mut hashes: Vec<String> = Vec::new();
    let mut prev = GENESIS.to_string();
    let mut line_no = 0u64;
    let fail = |v: &mut Verification, line: u64, message: String| {
        v.problem = Some(Problem {
            line,
            message,
            torn_tail: false,
        });
    };
    while let Some(line) = reader.next_line()? {
        line_no = line.number;
        if !line.complete {
            match reader.rest_is_zero()? {
                None => {
                    v.problem = Some(Problem {
                        line: line_no,
                        message: "the last record is cut off (torn write)".into(),
                        torn_tail: true,
                    });
                }
                Some(at) => fail(
                    &mut v,
                    line_no,
                    format!(
                        "record {} is cut off by a zero byte, and data follows at byte {at} (the log was damaged)",
                        hashes.len() + 1
                    ),
                ),
            }
            return Ok(v);
        }
        let record: Record = match serde_json::from_slice(line.bytes) {
            Ok(r) => r,
            Err(e) => {
                fail(&mut v, line_no, format!("not a valid record: {e}"));
                return Ok(v);
            }
        };
        let expected_seq = hashes.len() as u64 + 1;
        if record.seq != expected_seq {
            fail(
                &mut v,
                line_no,
                format!(
                    "sequence {} where {expected_seq} was expected (a record was deleted, inserted or moved)",
                    record.seq
                ),
            );
            return Ok(v);
        }
        if record.prev != prev {
            fail(
                &mut v,
                line_no,
                format!(
                    "record {} does not follow the record before it (chain broken)",
                    record.seq
                ),
            );
            return Ok(v);
        }
        if line_hash(line.bytes)
            .is_none_or(|(computed, claimed)| computed != claimed || claimed != record.hash)
        {
            fail(
                &mut v,
                line_no,
                format!(
                    "record {} was changed (its hash does not match its content)",
                    record.seq
                ),
            );
            return Ok(v);
        }
        if record.kind == "audit.checkpoint" {
            let d = &record.data;
            let covers_seq = d["covers_seq"].as_u64().unwrap_or(0);
            let covers_hash = d["covers_hash"].as_str().unwrap_or_default();
            let actual = covers_seq
                .checked_sub(1)
                .and_then(|i| hashes.get(i as usize))
                .map(String::as_str)
                .unwrap_or(GENESIS);
            let signature =
                hex::decode(d["signature"].as_str().unwrap_or_default()).unwrap_or_default();
            if actual != covers_hash
                || key
                    .verify(
                        checkpoint_message(covers_seq, covers_hash).as_bytes(),
                        &signature,
                    )
                    .is_err()
            {
                fail(
                    &mut v,
                    line_no,
                    format!(
                        "checkpoint {} does not carry a valid signature over the log before it (the log was rewritten)",
                        record.seq
                    ),
                );
                return Ok(v);
            }
            v.checkpoints += 1;
            v.signed_through = covers_seq;
        }
        prev = record.hash.clone();
        hashes.push(record.hash);
        v.records += 1;
    }
    // After the records only the zeros of the preallocated region may follow: a zero byte
    // written into the middle of the log must not hide the records after it.
    if let Some(at) = reader.rest_is_zero()? {
        fail(
            &mut v,
            line_no + 1,
            format!(
                "the records end at byte {} but data follows at byte {at} (the log was damaged, or a crash left unsynced data there, which the gateway moves aside when it starts)",
                reader.position()
            ),
        );
        return Ok(v);
    }
    if let Some(a) = anchor {
        let sig = hex::decode(&a.signature).unwrap_or_default();
        if key
            .verify(
                checkpoint_message(a.covers_seq, &a.covers_hash).as_bytes(),
                &sig,
            )
            .is_err()
            || !a.public_key.eq_ignore_ascii_case(public_key.trim())
        {
            fail(
                &mut v,
                0,
                "the exported checkpoint is not signed by this log's key".into(),
            );
        } else {
            match a
                .covers_seq
                .checked_sub(1)
                .and_then(|i| hashes.get(i as usize))
            {
                None => fail(
                    &mut v,
                    line_no,
                    format!(
                        "the log ends before record {} that the exported checkpoint covers (it was truncated)",
                        a.covers_seq
                    ),
                ),
                Some(h) if *h != a.covers_hash => fail(
                    &mut v,
                    a.covers_seq,
                    format!(
                        "record {} differs from the exported checkpoint (the log was rewritten)",
                        a.covers_seq
                    ),
                ),
                Some(_) => v.signed_through = v.signed_through.max(a.covers_seq),
            }
        }
    }
    Ok(v)
}

/// The last checkpoint in the log, for export.
pub fn last_checkpoint(path: &Path) -> std::io::Result<Option<ExportedCheckpoint>> {
    let mut reader = LogReader::open(path)?;
    let mut last = None;
    while let Some(line) = reader.next_line()? {
        let Ok(record) = serde_json::from_slice::<Record>(line.bytes) else {
            continue;
        };
        if record.kind == "audit.checkpoint" {
            last = serde_json::from_value(record.data).ok();
        }
    }
    Ok(last)
}
