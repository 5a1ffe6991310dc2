//! One-shot commands on a PostgreSQL connection ([`CommandRunner`]): connect with the gateway's
//! credential, send one simple Query, collect the results as text, disconnect. Used by
//! `gatehouse exec`, the REST exec endpoint and MCP tools.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use gatehouse_core::classify::Classification;
use gatehouse_core::config::ConnectionConfig;
use gatehouse_core::exec::{CommandRunner, ExecResult, RunError, StatementResult};
use tokio::io::AsyncWriteExt;

use gatehouse_core::masking::SessionMasking;

use crate::mask::{ColumnPlan, MaskError, PgMasking};
use crate::upstream::{self, UpstreamError};
use crate::wire::{self, Reader};

/// Largest single server message accepted for a one-shot result.
const MAX_FRAME: usize = 64 << 20;
/// Most result bytes kept per command; past it rows are counted, not kept.
const MAX_RESULT_BYTES: usize = 16 << 20;

/// Runs one-shot commands on PostgreSQL connections.
pub struct PgRunner {
    pub connect_timeout: Duration,
    /// Deadline for the whole command once connected.
    pub statement_timeout: Duration,
}

impl CommandRunner for PgRunner {
    fn classify(&self, text: &str) -> Classification {
        gatehouse_pgsql::classify(text)
    }

    fn run<'a>(
        &'a self,
        connection: Arc<ConnectionConfig>,
        text: &'a str,
        max_rows: usize,
        masking: Option<Arc<SessionMasking>>,
    ) -> Pin<Box<dyn Future<Output = Result<ExecResult, RunError>> + Send + 'a>> {
        Box::pin(async move {
            let params = [("application_name".to_string(), "gatehouse exec".to_string())];
            let upstream = upstream::connect(connection.clone(), &params, self.connect_timeout)
                .await
                .map_err(|e| connect_error(&connection.name, e))?;
            let mut stream = upstream.stream;
            let masking =
                match masking {
                    None => None,
                    Some(rules) => {
                        Some(PgMasking::resolve(rules, &mut stream).await.map_err(|e| {
                            RunError {
                                code: Some("58000".into()),
                                message: format!("Gatehouse cannot set up masking: {e}"),
                            }
                        })?)
                    }
                };
            if let Some(m) = &masking
                && !m.relations.is_empty()
                && let Err(reason) = gatehouse_pgsql::masking::check(text, &m.relations)
            {
                return Err(RunError {
                    code: Some("42501".into()),
                    message: format!("Gatehouse refused this statement: {reason}"),
                });
            }
            let run = query(&mut stream, text, max_rows, masking.as_ref());
            let result = match tokio::time::timeout(self.statement_timeout, run).await {
                Ok(r) => r,
                Err(_) => {
                    let _ = upstream::send_cancel(&upstream.cancel).await;
                    Err(RunError {
                        code: Some("57014".into()),
                        message: format!(
                            "the command ran longer than {:?} and was canceled",
                            self.statement_timeout
                        ),
                    })
                }
            };
            let mut out = BytesMut::new();
            out.extend_from_slice(&[b'X', 0, 0, 0, 4]);
            let _ = stream.write_all(&out).await;
            let _ = stream.shutdown().await;
            result
        })
    }
}

fn connect_error(name: &str, e: UpstreamError) -> RunError {
    RunError {
        code: Some("08006".into()),
        message: format!("Gatehouse could not open connection \"{name}\": {e}"),
    }
}

/// Sends `text` as a simple Query and collects every result until ReadyForQuery.
pub(crate) async fn query(
    stream: &mut crate::stream::PgStream,
    text: &str,
    max_rows: usize,
    masking: Option<&PgMasking>,
) -> Result<ExecResult, RunError> {
    let protocol = |m: String| RunError {
        code: Some("08P01".into()),
        message: format!("the server's answer could not be read: {m}"),
    };
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::query(text, &mut out).map_err(|e| RunError {
        code: Some("22021".into()),
        message: e.to_string(),
    })?;
    stream
        .write_all(&out)
        .await
        .map_err(|e| protocol(e.to_string()))?;
    stream.flush().await.map_err(|e| protocol(e.to_string()))?;

    let mut results = Vec::new();
    let mut current = StatementResult::default();
    let mut error: Option<RunError> = None;
    let mut kept_bytes = 0usize;
    let mut plan: Option<Vec<ColumnPlan>> = None;
    let mut counts = masking.map(|m| m.new_counts()).unwrap_or_default();
    loop {
        let frame = upstream::read_frame_limited(stream, MAX_FRAME)
            .await
            .map_err(|e| protocol(e.to_string()))?;
        let frame = match masking {
            None => frame,
            Some(m) => mask_frame(m, frame, &mut plan, &mut counts).map_err(|e| RunError {
                code: Some("58000".into()),
                message: format!("Gatehouse could not mask the result ({e}); nothing was returned"),
            })?,
        };
        let body = &frame[5..];
        match frame[0] {
            b'T' => {
                current = StatementResult {
                    columns: row_description(body).map_err(|e| protocol(e.to_string()))?,
                    ..Default::default()
                };
            }
            b'D' => {
                current.row_count += 1;
                if current.rows.len() < max_rows && kept_bytes < MAX_RESULT_BYTES {
                    kept_bytes += body.len();
                    current
                        .rows
                        .push(data_row(body).map_err(|e| protocol(e.to_string()))?);
                } else {
                    current.truncated = true;
                }
            }
            b'C' => {
                let tag = Reader::new(body, "CommandComplete")
                    .cstr()
                    .map_err(|e| protocol(e.to_string()))?
                    .to_string();
                if current.columns.is_empty() {
                    current.row_count = wire::command_complete_rows(body).unwrap_or(0);
                }
                current.command = Some(tag);
                results.push(std::mem::take(&mut current));
            }
            b'I' => results.push(std::mem::take(&mut current)),
            b'E' => {
                error.get_or_insert(RunError {
                    code: wire::error_field(body, b'C').map(str::to_string),
                    message: wire::error_field(body, b'M')
                        .unwrap_or("(no message)")
                        .to_string(),
                });
            }
            b'Z' => break,
            // Notices, parameter changes, notifications: not part of the result.
            _ => {}
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok(ExecResult {
            results,
            masked: masking
                .map(|m| named_counts(&m.rule_names(), &counts))
                .unwrap_or_default(),
        }),
    }
}

/// Pairs rule names with their non-zero counts.
pub(crate) fn named_counts(names: &[String], counts: &[u64]) -> Vec<(String, u64)> {
    names
        .iter()
        .zip(counts)
        .filter(|(_, n)| **n > 0)
        .map(|(name, n)| (name.clone(), *n))
        .collect()
}

/// Masks one server message of a one-shot result, keeping the current column plan.
fn mask_frame(
    m: &PgMasking,
    frame: BytesMut,
    plan: &mut Option<Vec<ColumnPlan>>,
    counts: &mut [u64],
) -> Result<BytesMut, MaskError> {
    let replaced = match frame[0] {
        b'T' => {
            *plan = Some(m.plan(&frame[5..])?);
            None
        }
        b'D' => m.data_row(&frame, plan.as_deref(), counts)?,
        b'E' | b'N' => m.fields(&frame, counts)?,
        b'd' => m.copy_data(&frame, counts)?,
        b'H' => {
            crate::mask::check_copy_out(&frame)?;
            None
        }
        _ => None,
    };
    Ok(replaced.unwrap_or(frame))
}

fn row_description(body: &[u8]) -> Result<Vec<String>, wire::WireError> {
    let mut r = Reader::new(body, "RowDescription");
    let n = r.i16()?.max(0) as usize;
    let mut columns = Vec::with_capacity(n.min(1600));
    for _ in 0..n {
        columns.push(r.cstr()?.to_string());
        r.bytes(18)?; // table oid, attnum, type oid, size, modifier, format
    }
    Ok(columns)
}

fn data_row(body: &[u8]) -> Result<Vec<Option<String>>, wire::WireError> {
    let mut r = Reader::new(body, "DataRow");
    let n = r.i16()?.max(0) as usize;
    let mut values = Vec::with_capacity(n.min(1600));
    for _ in 0..n {
        let len = r.i32()?;
        if len < 0 {
            values.push(None);
        } else {
            let bytes = r.bytes(len as usize)?;
            values.push(Some(String::from_utf8_lossy(bytes).into_owned()));
        }
    }
    Ok(values)
}
