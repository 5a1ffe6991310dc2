//! One session's records, in order, with their time from the session's start: what a replay
//! shows. Reads the log (or a copy of it) from the start; it does not check the chain, which
//! is `verify`'s job.

use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::read::{LogReader, ReadError};
use crate::record::Record;

/// A session as the audit log tells it.
#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    pub session: String,
    /// When the session opened (microseconds since the epoch), if its opening is in the log.
    pub opened_at: Option<i64>,
    pub events: Vec<TimelineEvent>,
}

/// One record of the session (or of a review of one of its statements).
#[derive(Debug, Clone, Serialize)]
pub struct TimelineEvent {
    /// Microseconds since the session opened (or since its first record).
    pub offset_us: i64,
    pub seq: u64,
    pub at: i64,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    pub data: Value,
}

/// The records of session `id` in the log at `path`: those that name it, and those about the
/// reviews of its statements (votes, their results, expiry). `None` when the log has none.
pub fn session_timeline(path: &Path, id: &str) -> Result<Option<Timeline>, ReadError> {
    timeline_from(LogReader::open(path)?, id)
}

/// [`session_timeline`] from the records `reader` gives (a running gateway reads its own log
/// through [`crate::AuditLog::reader`]).
pub fn timeline_from<R: std::io::Read>(
    mut reader: LogReader<R>,
    id: &str,
) -> Result<Option<Timeline>, ReadError> {
    let mut reviews: Vec<String> = Vec::new();
    let mut events = Vec::new();
    while let Some(line) = reader.next_line()? {
        if !line.complete {
            // A record being written as we read; recovery cuts it after a crash.
            break;
        }
        let damaged = ReadError::Damaged(line.number);
        let Ok(text) = std::str::from_utf8(line.bytes) else {
            return Err(damaged);
        };
        // Most records are about other sessions: a substring test before parsing skips them.
        if !text.contains(id) && !reviews.iter().any(|r| text.contains(r.as_str())) {
            continue;
        }
        let record: Record = serde_json::from_str(text).map_err(|_| damaged)?;
        let data = &record.data;
        let ours = data["session"].as_str() == Some(id)
            || data["review"]
                .as_str()
                .is_some_and(|r| reviews.iter().any(|known| known == r));
        if !ours {
            continue;
        }
        if record.kind == "review.created"
            && let Some(review) = data["review"].as_str()
        {
            reviews.push(review.to_string());
        }
        events.push(record);
    }
    let Some(first) = events.first() else {
        return Ok(None);
    };
    let opened_at = events
        .iter()
        .find(|r| r.kind == "session.opened")
        .map(|r| r.at);
    let origin = opened_at.unwrap_or(first.at);
    Ok(Some(Timeline {
        session: id.to_string(),
        opened_at,
        events: events
            .into_iter()
            .map(|r| TimelineEvent {
                offset_us: r.at - origin,
                seq: r.seq,
                at: r.at,
                kind: r.kind,
                actor: r.actor,
                data: r.data,
            })
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Event, GENESIS, encode_line};
    use serde_json::json;

    #[test]
    fn picks_the_session_and_its_reviews() {
        let events = [
            Event::new("session.opened", Some("a"), json!({"session": "s_1"})),
            Event::new("session.opened", Some("b"), json!({"session": "s_2"})),
            Event::new(
                "review.created",
                Some("a"),
                json!({"session": "s_1", "review": "rv_9"}),
            ),
            Event::new("review.voted", Some("boss"), json!({"review": "rv_9"})),
            Event::new("review.voted", Some("boss"), json!({"review": "rv_8"})),
            // Names the session only inside text: not one of its records.
            Event::new(
                "statement.intent",
                Some("b"),
                json!({"session": "s_2", "text": "select 's_1'"}),
            ),
            Event::new("session.closed", Some("a"), json!({"session": "s_1"})),
        ];
        let mut prev = GENESIS.to_string();
        let mut text = Vec::new();
        for (i, e) in events.into_iter().enumerate() {
            prev = encode_line(i as u64 + 1, 1000 + i as i64 * 10, &e, &prev, &mut text);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        // As a running gateway leaves it: the preallocated region after the records.
        text.resize(text.len() + 4096, 0);
        std::fs::write(&path, text).unwrap();
        let t = session_timeline(&path, "s_1").unwrap().unwrap();
        let kinds: Vec<_> = t.events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "session.opened",
                "review.created",
                "review.voted",
                "session.closed"
            ]
        );
        assert_eq!(t.events.last().unwrap().offset_us, 60);
        assert!(session_timeline(&path, "s_404").unwrap().is_none());
    }
}
