//! The first rows of each result, taken from the messages as they go to the client (after
//! masking), for the command's `statement.outcome` audit record.

use gatehouse_core::pipeline::ResultExcerpt;

use crate::wire::{Reader, WireError};

/// Collects the excerpt of the command being answered; [`ExcerptBuilder::take`] hands it over
/// when the command completes.
pub(crate) struct ExcerptBuilder {
    max_rows: usize,
    current: Option<ResultExcerpt>,
    /// Which columns of the current result are in binary format.
    binary: Vec<bool>,
    /// A later result of the same command (a multi-statement Query) has begun: its rows are
    /// only counted.
    later_result: bool,
}

impl ExcerptBuilder {
    /// `None` when excerpts are off (`max_rows` 0).
    pub(crate) fn new(max_rows: usize) -> Option<ExcerptBuilder> {
        (max_rows > 0).then(|| ExcerptBuilder {
            max_rows,
            current: None,
            binary: Vec::new(),
            later_result: false,
        })
    }

    /// A RowDescription: the columns of the rows that follow. A description before any row
    /// replaces the one before it (a client's Describe, then the gateway's own); one after rows
    /// starts a later result.
    pub(crate) fn describe(&mut self, body: &[u8]) -> Result<(), WireError> {
        if let Some(current) = &self.current
            && (!current.rows.is_empty() || current.rows_left_out > 0)
        {
            self.later_result = true;
            return Ok(());
        }
        let mut r = Reader::new(body, "RowDescription");
        let n = r.i16()?.max(0) as usize;
        let mut excerpt = ResultExcerpt::default();
        self.binary.clear();
        for _ in 0..n {
            let name = r.cstr()?;
            // Table OID, attribute number, type OID, size, modifier.
            r.bytes(4 + 2 + 4 + 2 + 4)?;
            self.binary.push(r.i16()? == 1);
            excerpt.columns.push(ResultExcerpt::cut(name).0);
        }
        self.current = Some(excerpt);
        Ok(())
    }

    /// A DataRow as sent to the client.
    pub(crate) fn row(&mut self, frame: &[u8]) -> Result<(), WireError> {
        let Some(current) = &mut self.current else {
            return Ok(());
        };
        if self.later_result || current.rows.len() >= self.max_rows {
            current.rows_left_out += 1;
            return Ok(());
        }
        let mut r = Reader::new(frame.get(5..).unwrap_or_default(), "DataRow");
        let n = r.i16()?.max(0) as usize;
        let mut row = Vec::with_capacity(n);
        for i in 0..n {
            let len = r.i32()?;
            if len < 0 {
                row.push(None);
                continue;
            }
            let value = r.bytes(len as usize)?;
            row.push(Some(if self.binary.get(i).copied().unwrap_or(false) {
                format!("<binary, {len} bytes>")
            } else {
                current.keep(&String::from_utf8_lossy(value))
            }));
        }
        current.rows.push(row);
        Ok(())
    }

    /// The excerpt of the command that just completed, if it returned a result.
    pub(crate) fn take(&mut self) -> Option<ResultExcerpt> {
        self.later_result = false;
        self.current.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    fn row_description(names: &[(&str, i16)]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_i16(names.len() as i16);
        for (name, format) in names {
            b.put_slice(name.as_bytes());
            b.put_u8(0);
            b.put_slice(&[0; 16]);
            b.put_i16(*format);
        }
        b
    }

    fn data_row(values: &[Option<&[u8]>]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u8(b'D');
        b.put_i32(0);
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                None => b.put_i32(-1),
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v);
                }
            }
        }
        b
    }

    #[test]
    fn keeps_the_first_rows_and_counts_the_rest() {
        let mut ex = ExcerptBuilder::new(2).unwrap();
        ex.describe(&row_description(&[("id", 0), ("blob", 1)]))
            .unwrap();
        let long = "x".repeat(100);
        ex.row(&data_row(&[Some(b"1"), Some(&[0, 1, 2])])).unwrap();
        ex.row(&data_row(&[Some(long.as_bytes()), None])).unwrap();
        ex.row(&data_row(&[Some(b"3"), None])).unwrap();
        // A second result of the same Query only counts.
        ex.describe(&row_description(&[("other", 0)])).unwrap();
        ex.row(&data_row(&[Some(b"4")])).unwrap();
        let e = ex.take().unwrap();
        assert_eq!(e.columns, ["id", "blob"]);
        assert_eq!(
            e.rows[0],
            [Some("1".into()), Some("<binary, 3 bytes>".into())]
        );
        assert_eq!(e.rows[1][0].as_deref().unwrap().len(), 64 + "…".len());
        assert_eq!((e.rows_left_out, e.values_cut), (2, 1));
        assert!(ex.take().is_none());
    }

    #[test]
    fn a_malformed_row_is_an_error_not_a_panic() {
        let mut ex = ExcerptBuilder::new(3).unwrap();
        ex.describe(&row_description(&[("a", 0)])).unwrap();
        let mut bad = data_row(&[Some(b"abc")]);
        bad.truncate(bad.len() - 1);
        assert!(ex.row(&bad).is_err());
        assert!(ex.describe(&[0, 1]).is_err());
    }
}
