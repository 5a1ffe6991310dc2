//! Masking on the PostgreSQL wire: every server-to-client message that can carry data
//! (DataRow, CopyData, ErrorResponse and NoticeResponse fields, NotificationResponse payloads)
//! passes through here when masking applies to the session. Column rules are mapped to result
//! columns by their origin (table OID and attribute number from RowDescription), resolved
//! through the catalog once per session, so `SELECT *` and aliases are covered; value
//! detectors run on every text value. Anything that cannot be parsed or masked is an error,
//! and the caller ends the session: nothing unmasked is ever forwarded.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use gatehouse_core::config::MaskTarget;
use gatehouse_core::masking::{SessionMasking, glob_matches};
use gatehouse_mask::{Masked, TextOutcome};
use gatehouse_pgsql::masking::MaskedRelation;

use crate::stream::PgStream;
use crate::wire::{Reader, WireError};

/// Masking for one session, with its column rules resolved against the target's catalog.
pub struct PgMasking {
    pub session: Arc<SessionMasking>,
    /// (table OID, attribute number) -> index into `session.column_rules`.
    origins: HashMap<(u32, i16), usize>,
    /// Relations with masked columns, for the query-side check.
    pub relations: Vec<MaskedRelation>,
}

/// Why a message could not be masked. The session ends; nothing is forwarded.
#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    #[error("a result message could not be read for masking: {0}")]
    Wire(#[from] WireError),
    #[error("a text value is not valid UTF-8 and cannot be checked for sensitive data")]
    NotUtf8,
    #[error("binary COPY cannot be masked")]
    BinaryCopy,
    #[error("a row arrived without a description of its columns")]
    NoPlan,
    #[error("the masked columns cannot be resolved: {0}")]
    Catalog(String),
}

/// How a result column is masked.
#[derive(Debug, Clone, Copy)]
pub struct ColumnPlan {
    rule: Option<usize>,
    kind: ValueKind,
    binary: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueKind {
    /// text, varchar, char, name, unknown, xml, citext-like: the binary form is the text.
    Text,
    Json,
    /// jsonb: the binary form is a version byte and the text.
    Jsonb,
    /// Numbers, dates, bytea, ...: no detector runs; a masked column becomes NULL.
    Other,
}

fn kind_of(type_oid: u32) -> ValueKind {
    match type_oid {
        25 | 1043 | 1042 | 19 | 705 | 142 | 18 => ValueKind::Text,
        114 => ValueKind::Json,
        3802 => ValueKind::Jsonb,
        _ => ValueKind::Other,
    }
}

impl PgMasking {
    /// Masking without column rules (nothing to resolve).
    pub fn values_only(session: Arc<SessionMasking>) -> PgMasking {
        PgMasking {
            session,
            origins: HashMap::new(),
            relations: Vec::new(),
        }
    }

    /// Resolves the session's column rules through the catalog, on the session's own
    /// upstream connection before it is handed to the client.
    pub async fn resolve(
        session: Arc<SessionMasking>,
        stream: &mut PgStream,
    ) -> Result<PgMasking, MaskError> {
        if session.column_rules.is_empty() {
            return Ok(Self::values_only(session));
        }
        let sql = catalog_query(&session);
        let result = crate::oneshot::query(stream, &sql, 200_000, None)
            .await
            .map_err(|e| MaskError::Catalog(e.message))?;
        let mut origins = HashMap::new();
        let mut relations: Vec<MaskedRelation> = Vec::new();
        for row in result.results.iter().flat_map(|r| r.rows.iter()) {
            let [
                Some(oid),
                Some(attnum),
                Some(schema),
                Some(table),
                Some(column),
            ] = row.as_slice()
            else {
                continue;
            };
            let (Ok(oid), Ok(attnum)) = (oid.parse::<u32>(), attnum.parse::<i16>()) else {
                continue;
            };
            let Some(rule) = session.column_rules.iter().position(|r| match &r.target {
                MaskTarget::Column {
                    schema: s,
                    table: t,
                    column: c,
                } => s == schema && t == table && c == column,
                MaskTarget::ColumnPattern(p) => glob_matches(p, column),
                MaskTarget::Detector(_) => false,
            }) else {
                continue;
            };
            origins.insert((oid, attnum), rule);
            match relations
                .iter_mut()
                .find(|r| r.schema == *schema && r.table == *table)
            {
                Some(r) => r.columns.push(column.clone()),
                None => relations.push(MaskedRelation {
                    schema: schema.clone(),
                    table: table.clone(),
                    columns: vec![column.clone()],
                }),
            }
        }
        tracing::debug!(columns = origins.len(), "resolved masked columns");
        Ok(PgMasking {
            session,
            origins,
            relations,
        })
    }

    /// The rule names counts are kept for: column rules, then value rules.
    pub fn rule_names(&self) -> Vec<String> {
        self.session
            .column_rules
            .iter()
            .map(|r| r.name.clone())
            .chain(self.session.values.rules().iter().map(|r| r.name.clone()))
            .collect()
    }

    /// A zeroed counter per rule, in [`PgMasking::rule_names`] order.
    pub fn new_counts(&self) -> Vec<u64> {
        vec![0; self.session.column_rules.len() + self.session.values.rules().len()]
    }

    /// Detectors over `text`, counting into the value rules' part of `counts`.
    fn mask_text<'a>(&self, text: &'a str, counts: &mut [u64]) -> std::borrow::Cow<'a, str> {
        let values = counts
            .get_mut(self.session.column_rules.len()..)
            .unwrap_or_default();
        match self.session.values.mask_text(text, values) {
            TextOutcome::Clear(t) => std::borrow::Cow::Borrowed(t),
            TextOutcome::Masked(m) => std::borrow::Cow::Owned(m),
            TextOutcome::Null => std::borrow::Cow::Borrowed(gatehouse_mask::strategy::REDACTED),
        }
    }

    /// `true` when some result columns are masked by name (not only by value).
    pub fn has_column_rules(&self) -> bool {
        !self.origins.is_empty()
    }

    /// The masking plan of a RowDescription's columns.
    pub fn plan(&self, body: &[u8]) -> Result<Vec<ColumnPlan>, MaskError> {
        let mut r = Reader::new(body, "RowDescription");
        let n = r.i16()?.max(0) as usize;
        let mut plan = Vec::with_capacity(n);
        for _ in 0..n {
            r.cstr()?;
            let table = r.i32()? as u32;
            let attnum = r.i16()?;
            let type_oid = r.i32()? as u32;
            r.i16()?;
            r.i32()?;
            let format = r.i16()?;
            plan.push(ColumnPlan {
                rule: self.origins.get(&(table, attnum)).copied(),
                kind: kind_of(type_oid),
                binary: format == 1,
            });
        }
        Ok(plan)
    }

    /// Masks a DataRow frame; `None` when nothing changed (the frame goes out as is).
    pub fn data_row(
        &self,
        frame: &[u8],
        plan: Option<&[ColumnPlan]>,
        counts: &mut [u64],
    ) -> Result<Option<BytesMut>, MaskError> {
        let mut r = Reader::new(&frame[5..], "DataRow");
        let n = r.i16()?.max(0) as usize;
        let mut values: Vec<Option<&[u8]>> = Vec::with_capacity(n);
        for _ in 0..n {
            let len = r.i32()?;
            values.push(if len < 0 {
                None
            } else {
                Some(r.bytes(len as usize)?)
            });
        }
        r.finish()?;
        let mut replaced: Vec<Option<Replacement>> = Vec::new();
        for (i, value) in values.iter().enumerate() {
            let Some(value) = value else {
                continue;
            };
            // Without a RowDescription (which should not happen), treat the column as text.
            let col = plan.and_then(|p| p.get(i)).copied().unwrap_or(ColumnPlan {
                rule: None,
                kind: ValueKind::Text,
                binary: false,
            });
            if let Some(rep) = self.mask_value(value, col, counts)? {
                if replaced.is_empty() {
                    replaced.resize_with(n, || None);
                }
                replaced[i] = Some(rep);
            }
        }
        if replaced.is_empty() {
            return Ok(None);
        }
        let mut out = BytesMut::with_capacity(frame.len());
        let buf = &mut out;
        buf.put_u8(b'D');
        let at = buf.len();
        buf.put_i32(0);
        buf.put_i16(n as i16);
        for (i, value) in values.iter().enumerate() {
            match (replaced.get(i).and_then(|r| r.as_ref()), value) {
                (Some(Replacement::Null), _) | (None, None) => buf.put_i32(-1),
                (Some(Replacement::Bytes(b)), _) => {
                    buf.put_i32(b.len() as i32);
                    buf.put_slice(b);
                }
                (None, Some(v)) => {
                    buf.put_i32(v.len() as i32);
                    buf.put_slice(v);
                }
            }
        }
        let len = (buf.len() - at) as i32;
        buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        Ok(Some(out))
    }

    fn mask_value(
        &self,
        value: &[u8],
        col: ColumnPlan,
        counts: &mut [u64],
    ) -> Result<Option<Replacement>, MaskError> {
        if let Some(rule) = col.rule {
            if let Some(c) = counts.get_mut(rule) {
                *c += 1;
            }
            let rule = &self.session.column_rules[rule];
            if col.kind == ValueKind::Other {
                // A number, date or bytea cannot hold "****": NULL is valid in every type and
                // format.
                return Ok(Some(Replacement::Null));
            }
            let text = text_of(value, col)?;
            return Ok(Some(match rule.strategy.apply(text, &self.session.key) {
                Masked::Null => Replacement::Null,
                Masked::Text(t) => Replacement::Bytes(encode(&t, col)),
            }));
        }
        if col.kind == ValueKind::Other && col.binary {
            return Ok(None);
        }
        if self.session.values.is_empty() {
            return Ok(None);
        }
        let text = match col.kind {
            ValueKind::Other => match std::str::from_utf8(value) {
                Ok(t) => t,
                Err(_) => return Err(MaskError::NotUtf8),
            },
            _ => text_of(value, col)?,
        };
        let values = counts
            .get_mut(self.session.column_rules.len()..)
            .unwrap_or_default();
        Ok(match self.session.values.mask_text(text, values) {
            TextOutcome::Clear(_) => None,
            TextOutcome::Null => Some(Replacement::Null),
            TextOutcome::Masked(t) => Some(Replacement::Bytes(match col.kind {
                ValueKind::Jsonb if col.binary => {
                    let mut v = vec![1u8];
                    v.extend_from_slice(t.as_bytes());
                    v
                }
                _ => t.into_bytes(),
            })),
        })
    }

    /// Masks the text fields of an ErrorResponse or NoticeResponse frame.
    pub fn fields(&self, frame: &[u8], counts: &mut [u64]) -> Result<Option<BytesMut>, MaskError> {
        let body = &frame[5..];
        let mut parts: Vec<(u8, std::borrow::Cow<'_, str>)> = Vec::new();
        let mut changed = false;
        let mut rest = body;
        while let Some((&code, tail)) = rest.split_first() {
            if code == 0 {
                break;
            }
            let end = tail
                .iter()
                .position(|b| *b == 0)
                .ok_or(MaskError::Wire(WireError::Malformed("ErrorResponse")))?;
            let text = std::str::from_utf8(&tail[..end]).map_err(|_| MaskError::NotUtf8)?;
            let masked = match code {
                // Severity, code, position, file, line, routine carry no data.
                b'S' | b'V' | b'C' | b'P' | b'p' | b'F' | b'L' | b'R' => {
                    std::borrow::Cow::Borrowed(text)
                }
                _ => self.mask_text(text, counts),
            };
            changed |= matches!(masked, std::borrow::Cow::Owned(_));
            parts.push((code, masked));
            rest = &tail[end + 1..];
        }
        if !changed {
            return Ok(None);
        }
        let mut out = BytesMut::with_capacity(frame.len());
        out.put_u8(frame[0]);
        out.put_i32(0);
        for (code, text) in parts {
            out.put_u8(code);
            out.put_slice(text.as_bytes());
            out.put_u8(0);
        }
        out.put_u8(0);
        let len = (out.len() - 1) as i32;
        out[1..5].copy_from_slice(&len.to_be_bytes());
        Ok(Some(out))
    }

    /// Masks a NotificationResponse payload.
    pub fn notification(
        &self,
        frame: &[u8],
        counts: &mut [u64],
    ) -> Result<Option<BytesMut>, MaskError> {
        let mut r = Reader::new(&frame[5..], "NotificationResponse");
        let pid = r.i32()?;
        let channel = r.cstr()?;
        let payload = r.cstr()?;
        let masked = self.mask_text(payload, counts);
        if matches!(masked, std::borrow::Cow::Borrowed(_)) {
            return Ok(None);
        }
        let mut out = BytesMut::new();
        out.put_u8(b'A');
        out.put_i32(0);
        out.put_i32(pid);
        out.put_slice(channel.as_bytes());
        out.put_u8(0);
        out.put_slice(masked.as_bytes());
        out.put_u8(0);
        let len = (out.len() - 1) as i32;
        out[1..5].copy_from_slice(&len.to_be_bytes());
        Ok(Some(out))
    }

    /// Masks one CopyData frame of a text-format COPY TO.
    pub fn copy_data(
        &self,
        frame: &[u8],
        counts: &mut [u64],
    ) -> Result<Option<BytesMut>, MaskError> {
        let text = std::str::from_utf8(&frame[5..]).map_err(|_| MaskError::NotUtf8)?;
        let masked = self.mask_text(text, counts);
        if matches!(masked, std::borrow::Cow::Borrowed(_)) {
            return Ok(None);
        }
        let mut out = BytesMut::with_capacity(masked.len() + 5);
        out.put_u8(b'd');
        out.put_i32((masked.len() + 4) as i32);
        out.put_slice(masked.as_bytes());
        Ok(Some(out))
    }
}

enum Replacement {
    Null,
    Bytes(Vec<u8>),
}

fn text_of(value: &[u8], col: ColumnPlan) -> Result<&str, MaskError> {
    let bytes = match col.kind {
        ValueKind::Jsonb if col.binary => value.get(1..).unwrap_or_default(),
        _ => value,
    };
    std::str::from_utf8(bytes).map_err(|_| MaskError::NotUtf8)
}

/// A masked string in the column's type and format: JSON columns get a JSON string.
fn encode(text: &str, col: ColumnPlan) -> Vec<u8> {
    match col.kind {
        ValueKind::Json => {
            format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\"")).into_bytes()
        }
        ValueKind::Jsonb => {
            let json = format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""));
            if col.binary {
                let mut v = vec![1u8];
                v.extend_from_slice(json.as_bytes());
                v
            } else {
                json.into_bytes()
            }
        }
        _ => text.as_bytes().to_vec(),
    }
}

/// The catalog lookup of every column a rule names or matches.
fn catalog_query(session: &SessionMasking) -> String {
    let lit = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let mut conditions: Vec<String> = Vec::new();
    for rule in &session.column_rules {
        match &rule.target {
            MaskTarget::Column {
                schema,
                table,
                column,
            } => conditions.push(format!(
                "(n.nspname = {} AND c.relname = {} AND lower(a.attname) = {})",
                lit(schema),
                lit(table),
                lit(column)
            )),
            MaskTarget::ColumnPattern(p) => {
                let like = p
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_")
                    .replace('*', "%");
                conditions.push(format!("lower(a.attname) LIKE {}", lit(&like)));
            }
            MaskTarget::Detector(_) => {}
        }
    }
    format!(
        "SELECT c.oid::int8::text, a.attnum::text, n.nspname::text, c.relname::text, lower(a.attname::text) \
         FROM pg_catalog.pg_attribute a \
         JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'v', 'm', 'f', 'p') \
         AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND ({})",
        conditions.join(" OR ")
    )
}

/// Fails closed on CopyOutResponse in binary format.
pub fn check_copy_out(frame: &[u8]) -> Result<(), MaskError> {
    match frame.get(5) {
        Some(0) => Ok(()),
        _ => Err(MaskError::BinaryCopy),
    }
}
