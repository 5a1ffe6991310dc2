//! `gatehouse audit`: verify the audit log, export it for a SIEM, export a checkpoint to keep
//! off the gateway host. Works offline on the data directory.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use gatehouse_audit::verify::ExportedCheckpoint;

use crate::cli::{AuditCommand, AuditTarget, CheckpointCommand, Format};

/// The audit directory inside a data directory.
pub const AUDIT_DIR: &str = "audit";

pub fn run(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::Verify {
            target,
            from_checkpoint,
            format,
        } => {
            let dir = audit_dir(&target)?;
            let public = std::fs::read_to_string(dir.join(gatehouse_audit::PUBLIC_KEY_FILE))
                .with_context(|| format!("no audit log in {} (no signing.pub)", dir.display()))?;
            let anchor: Option<ExportedCheckpoint> = match from_checkpoint {
                None => None,
                Some(path) => Some(
                    serde_json::from_str(&std::fs::read_to_string(&path).with_context(|| {
                        format!("cannot read the checkpoint {}", path.display())
                    })?)
                    .context("the checkpoint file is not an exported checkpoint")?,
                ),
            };
            let log = dir.join(gatehouse_audit::LOG_FILE);
            let v = gatehouse_audit::verify_file(&log, &public, anchor.as_ref())
                .with_context(|| format!("cannot read {}", log.display()))?;
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
        AuditCommand::Export { target, since } => {
            let dir = audit_dir(&target)?;
            let file = std::fs::File::open(dir.join(gatehouse_audit::LOG_FILE))
                .with_context(|| format!("no audit log in {}", dir.display()))?;
            let mut out = std::io::stdout().lock();
            for line in std::io::BufReader::new(file).lines() {
                let line = line?;
                let record: gatehouse_audit::Record = serde_json::from_str(&line).context(
                    "the audit log holds a damaged record; run `gatehouse audit verify`",
                )?;
                if since.is_none_or(|s| record.seq >= s) {
                    use std::io::Write;
                    writeln!(out, "{line}")?;
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
