//! Reading the log back. Every reader (recovery at start, verification, export, replay, the
//! API) goes through [`LogReader`], so they all agree on where the records end.
//!
//! The records are newline-terminated JSON lines. A running gateway keeps the file extended
//! ahead of its last record (see [`crate::log`]: a sync then need not commit a new file size),
//! and that region reads as zero bytes. No record can contain a zero byte (the encoding
//! escapes every control character), so the records end at the end of the file or at the
//! first zero byte, whichever comes first. Anything but zeros after that point is either
//! data a crash left unsynced, which start-up moves aside, or damage, which `verify` reports.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::record::Record;

/// Reads a log's lines in order, as they were written.
pub struct LogReader<R> {
    inner: BufReader<R>,
    line: Vec<u8>,
    number: u64,
    /// The byte offset where the next line starts.
    offset: u64,
    /// The end of the records was reached (end of file or a zero byte).
    ended: bool,
}

/// One line of the log.
#[derive(Debug)]
pub struct LogLine<'a> {
    /// 1-based, as `verify` reports lines.
    pub number: u64,
    /// The byte offset of the line in the file.
    pub offset: u64,
    /// The line without its newline.
    pub bytes: &'a [u8],
    /// `false` for a last line without a newline: a write cut off by a crash, or on a live
    /// log a record being written at this moment.
    pub complete: bool,
}

/// Why the records could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read the audit log: {0}")]
    Io(#[from] std::io::Error),
    #[error("line {0} of the audit log is not a record; run `gatehouse audit verify`")]
    Damaged(u64),
}

impl LogReader<std::fs::File> {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        Ok(LogReader::new(std::fs::File::open(path)?))
    }
}

impl<R: Read> LogReader<R> {
    pub fn new(inner: R) -> Self {
        LogReader {
            inner: BufReader::with_capacity(64 * 1024, inner),
            line: Vec::new(),
            number: 0,
            offset: 0,
            ended: false,
        }
    }

    /// The next line, or `None` at the end of the records.
    pub fn next_line(&mut self) -> std::io::Result<Option<LogLine<'_>>> {
        self.line.clear();
        let mut complete = false;
        while !self.ended {
            let available = self.inner.fill_buf()?;
            if available.is_empty() {
                self.ended = true;
                break;
            }
            match available.iter().position(|b| *b == b'\n' || *b == 0) {
                Some(i) if available[i] == b'\n' => {
                    self.line.extend_from_slice(&available[..i]);
                    self.inner.consume(i + 1);
                    complete = true;
                    break;
                }
                Some(i) => {
                    // The zero byte is not consumed: `rest_is_zero` starts at it.
                    self.line.extend_from_slice(&available[..i]);
                    self.inner.consume(i);
                    self.ended = true;
                }
                None => {
                    let n = available.len();
                    self.line.extend_from_slice(available);
                    self.inner.consume(n);
                }
            }
        }
        if !complete && self.line.is_empty() {
            return Ok(None);
        }
        self.number += 1;
        let offset = self.offset;
        self.offset += self.line.len() as u64 + u64::from(complete);
        Ok(Some(LogLine {
            number: self.number,
            offset,
            bytes: &self.line,
            complete,
        }))
    }

    /// The next complete record. A cut-off last line ends the records (on a live log it is a
    /// record being written; after a crash, recovery cuts it at start); a complete line that
    /// is not a record is damage.
    pub fn next_record(&mut self) -> Result<Option<(LogLine<'_>, Record)>, ReadError> {
        let Some(line) = self.next_line()? else {
            return Ok(None);
        };
        if !line.complete {
            return Ok(None);
        }
        let record =
            serde_json::from_slice(line.bytes).map_err(|_| ReadError::Damaged(line.number))?;
        Ok(Some((line, record)))
    }

    /// The byte offset just past the last line returned.
    pub fn position(&self) -> u64 {
        self.offset
    }

    /// Reads what follows the end of the records: `None` when it is only zero bytes (the
    /// preallocated region), or the offset of the first byte that is not zero. Call once
    /// [`next_line`](Self::next_line) has returned `None`.
    pub fn rest_is_zero(&mut self) -> std::io::Result<Option<u64>> {
        let mut at = self.offset;
        loop {
            let available = self.inner.fill_buf()?;
            if available.is_empty() {
                return Ok(None);
            }
            if let Some(i) = available.iter().position(|b| *b != 0) {
                return Ok(Some(at + i as u64));
            }
            let n = available.len();
            at += n as u64;
            self.inner.consume(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(bytes: &[u8]) -> Vec<(u64, String, bool)> {
        let mut reader = LogReader::new(bytes);
        let mut out = Vec::new();
        while let Some(l) = reader.next_line().unwrap() {
            out.push((
                l.offset,
                String::from_utf8_lossy(l.bytes).into_owned(),
                l.complete,
            ));
        }
        out
    }

    #[test]
    fn records_end_at_the_end_of_the_file_or_the_first_zero_byte() {
        let plain = lines(b"a\nbc\n");
        assert_eq!(plain, [(0, "a".into(), true), (2, "bc".into(), true)]);
        assert_eq!(lines(b"a\nbc\n\0\0\0\0"), plain);
        assert_eq!(
            lines(b"a\nbc\nde\0\0"),
            [
                (0, "a".into(), true),
                (2, "bc".into(), true),
                (5, "de".into(), false)
            ]
        );
        assert_eq!(
            lines(b"a\nbc"),
            [(0, "a".into(), true), (2, "bc".into(), false)]
        );
        assert!(lines(b"").is_empty());
        assert!(lines(b"\0\0a\n").is_empty());
    }

    #[test]
    fn what_follows_the_records_is_checked_for_anything_but_zeros() {
        let mut reader = LogReader::new(&b"a\n\0\0\0\0"[..]);
        while reader.next_line().unwrap().is_some() {}
        assert_eq!(reader.position(), 2);
        assert_eq!(reader.rest_is_zero().unwrap(), None);

        let mut reader = LogReader::new(&b"a\nb\0\0x\n\0"[..]);
        while reader.next_line().unwrap().is_some() {}
        assert_eq!(reader.position(), 3);
        assert_eq!(reader.rest_is_zero().unwrap(), Some(5));
    }

    #[test]
    fn a_long_zero_region_is_not_read_into_memory_as_a_line() {
        let mut bytes = b"a\n".to_vec();
        bytes.resize(8 << 20, 0);
        let mut reader = LogReader::new(&bytes[..]);
        assert!(reader.next_line().unwrap().is_some());
        assert!(reader.next_line().unwrap().is_none());
        assert!(reader.line.capacity() < 1024);
        assert_eq!(reader.rest_is_zero().unwrap(), None);
    }
}
