//! `gatehouse audit`: verify the audit log, export it for a SIEM, export a checkpoint to keep
//! off the gateway host. Works offline on the data directory.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use gatehouse_audit::verify::ExportedCheckpoint;

use crate::cli::{AuditCommand, AuditTarget, CheckpointCommand, ExportFormat, Format};

/// The audit directory inside a data directory.
pub const AUDIT_DIR: &str = "audit";

pub fn run(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::Verify {
            target,
            from_checkpoint,
            url,
            format,
        } => {
            let anchor: Option<ExportedCheckpoint> = match from_checkpoint {
                None => None,
                Some(path) => Some(
                    serde_json::from_str(&std::fs::read_to_string(&path).with_context(|| {
                        format!("cannot read the checkpoint {}", path.display())
                    })?)
                    .context("the checkpoint file is not an exported checkpoint")?,
                ),
            };
            let v = match url {
                Some(url) => remote_verify(url, format, anchor.as_ref())?,
                None => {
                    let dir = audit_dir(&target)?;
                    let public =
                        std::fs::read_to_string(dir.join(gatehouse_audit::PUBLIC_KEY_FILE))
                            .with_context(|| {
                                format!("no audit log in {} (no signing.pub)", dir.display())
                            })?;
                    let log = dir.join(gatehouse_audit::LOG_FILE);
                    let verify = || {
                        gatehouse_audit::verify_file(&log, &public, anchor.as_ref())
                            .with_context(|| format!("cannot read {}", log.display()))
                    };
                    let v = verify()?;
                    if v.problem.as_ref().is_some_and(|p| p.torn_tail) {
                        // A running gateway may have been writing that record just then;
                        // what a crash tore stays torn.
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        verify()?
                    } else {
                        v
                    }
                }
            };
            if format == Format::Json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                match &v.problem {
                    None => println!(
                        "audit log OK: {} records, {} signed checkpoints, signed through record {}",
                        v.records, v.checkpoints, v.signed_through
                    ),
                    Some(p) => println!(
                        "audit log DAMAGED at line {}: {} ({} records verified before it)",
                        p.line, p.message, v.records
                    ),
                }
            }
            Ok(if v.problem.is_none() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        AuditCommand::Export {
            target,
            since,
            format: ExportFormat::Jsonl,
        } => {
            let since = since.as_deref().map(parse_since).transpose()?;
            let dir = audit_dir(&target)?;
            let mut reader = gatehouse_audit::LogReader::open(&dir.join(gatehouse_audit::LOG_FILE))
                .with_context(|| format!("no audit log in {}", dir.display()))?;
            let mut out = std::io::stdout().lock();
            while let Some((line, record)) = reader.next_record()? {
                let wanted = match since {
                    None => true,
                    Some(Since::Seq(s)) => record.seq >= s,
                    Some(Since::Time(t)) => record.at >= t,
                };
                if wanted {
                    use std::io::Write;
                    out.write_all(line.bytes)?;
                    out.write_all(b"\n")?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Checkpoint(CheckpointCommand::Export { target }) => {
            let dir = audit_dir(&target)?;
            match gatehouse_audit::last_checkpoint(&dir.join(gatehouse_audit::LOG_FILE))? {
                Some(c) => {
                    println!("{}", serde_json::to_string_pretty(&c)?);
                    Ok(ExitCode::SUCCESS)
                }
                None => anyhow::bail!(
                    "the audit log has no checkpoint yet (one is signed every 1,000 records and when the log goes quiet)"
                ),
            }
        }
    }
}

/// Where an export starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Since {
    Seq(u64),
    /// Microseconds since the epoch.
    Time(i64),
}

/// `--since`: a sequence number, an RFC 3339 time, or a duration before now.
fn parse_since(s: &str) -> anyhow::Result<Since> {
    if let Ok(seq) = s.parse::<u64>() {
        return Ok(Since::Seq(seq));
    }
    let micros = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0)
    };
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(Since::Time(micros(t)));
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(Since::Time(micros(
            std::time::SystemTime::now()
                .checked_sub(d)
                .unwrap_or(std::time::UNIX_EPOCH),
        )));
    }
    anyhow::bail!(
        "--since {s:?} is not a sequence number (1000), a time (2026-11-26T08:00:00Z) or a duration (1h)"
    )
}

/// Asks the gateway to verify its own log. Useful from an auditor's machine; a checkpoint
/// kept off the gateway host is what catches a rewritten log there.
fn remote_verify(
    url: String,
    format: Format,
    anchor: Option<&ExportedCheckpoint>,
) -> anyhow::Result<gatehouse_audit::Verification> {
    let api = crate::cli::ApiArgs {
        url,
        token: std::env::var("GATEHOUSE_TOKEN").ok(),
        format,
    };
    let client = crate::client::ApiClient::new(&api)?;
    let v = match anchor {
        None => client.get("/api/v1/audit/verify")?,
        Some(a) => client.post("/api/v1/audit/verify", &serde_json::to_value(a)?)?,
    };
    serde_json::from_value(v).context("the gateway's answer is not a verification")
}

fn audit_dir(target: &AuditTarget) -> anyhow::Result<PathBuf> {
    let data_dir = match &target.data_dir {
        Some(d) => d.clone(),
        None => {
            crate::commands::load_config(&target.config)?
                .server
                .data_dir
        }
    };
    Ok(data_dir.join(AUDIT_DIR))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_sequence_a_time_or_a_duration() {
        assert_eq!(parse_since("1000").unwrap(), Since::Seq(1000));
        assert_eq!(
            parse_since("2026-11-26T00:00:00Z").unwrap(),
            Since::Time(1_795_651_200_000_000)
        );
        let Since::Time(t) = parse_since("1h").unwrap() else {
            panic!("a duration is a time")
        };
        let hour_ago = gatehouse_core::time::now_micros() - 3_600_000_000;
        assert!((t - hour_ago).abs() < 5_000_000);
        assert!(parse_since("yesterday-ish").is_err());
    }
}
