//! The audit log: one append-only file of records, each carrying a sequence number and the
//! hash of the record before it, so that changing, deleting, inserting, reordering or
//! truncating records breaks the chain; and periodic checkpoints signed with an Ed25519 key
//! kept in the data directory, so that rewriting the chain from some point on (recomputing
//! every hash) is caught by the signature over an earlier state.
//!
//! - [`record`]: the line encoding (the hash covers the bytes as written) and the chain;
//! - [`log`]: the writer (group commit, fsync, recovery of a torn tail);
//! - `direct`: the writer's durable writes past the page cache (`O_DIRECT | O_DSYNC`);
//! - `zero_fill`: written zeros kept ahead of the records, so durable writes need no allocation;
//! - `inbox`: the hand-off from callers to the writer, waking it only for what cannot wait;
//! - [`read`]: reading the records back, for every reader alike;
//! - [`verify`]: the verifier, which works offline on a copy of the file;
//! - [`replay`]: one session's records as a timeline.

mod direct;
mod inbox;
pub mod log;
pub mod read;
pub mod record;
pub mod replay;
pub mod verify;
mod zero_fill;

pub use log::{AuditLog, Durability, Pending, WriteMethod};
pub use read::{LogLine, LogReader, ReadError};
pub use record::{Event, Record};
pub use verify::{ExportedCheckpoint, Verification, last_checkpoint, verify_file, verify_records};

/// The file name of the log inside the audit directory.
pub const LOG_FILE: &str = "audit.log";
/// The signing key (PKCS#8, mode 0600) and its public half.
pub const KEY_FILE: &str = "signing.key";
pub const PUBLIC_KEY_FILE: &str = "signing.pub";
