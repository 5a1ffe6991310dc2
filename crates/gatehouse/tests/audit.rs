//! The audit log of a running gateway: administrative actions and sessions are recorded,
//! `gatehouse audit verify` passes on the real log and fails on a tampered copy, and an
//! exported checkpoint catches truncation.

mod common;

use std::process::Command;

use common::{Gateway, GatewayOptions};

fn gatehouse(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_audit_log_records_actions_and_detects_tampering() {
    let gw = Gateway::start_with(GatewayOptions {
        extra_sections: "[audit]\ncheckpoint_every = 3\n".into(),
        ..Default::default()
    });
    let token = gw.token("audited", &["agents"]);
    let (ok, _, err) = gw.psql(&token, "appdb", &["-c", "select 1"], None);
    assert!(ok, "{err}");
    gw.cli_ok(&["token", "revoke", "audited"]);
    let data = gw.dir.path().join("data");
    let data_dir = data.to_str().unwrap();

    // The records of what happened, in order, as JSON lines.
    let kinds = gw.wait_for("the session's close to be recorded", || {
        let out = gatehouse(&["audit", "export", "--data-dir", data_dir]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let kinds: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        kinds
            .contains(&"session.closed".to_string())
            .then_some(kinds)
    });
    for expected in [
        "gateway.started",
        "token.created",
        "session.opened",
        "statement.intent",
        "statement.outcome",
        "session.closed",
        "token.revoked",
        "audit.checkpoint",
    ] {
        assert!(
            kinds.iter().any(|k| k == expected),
            "{expected} missing from {kinds:?}"
        );
    }

    // Export for a SIEM from a sequence number or a time.
    let export = |since: &str| -> Vec<u64> {
        let out = gatehouse(&[
            "audit",
            "export",
            "--data-dir",
            data_dir,
            "--since",
            since,
            "--format",
            "jsonl",
        ]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(export("3")[0], 3);
    assert_eq!(export("1h")[0], 1);
    assert!(export("2999-01-01T00:00:00Z").is_empty());

    let out = gatehouse(&["audit", "verify", "--data-dir", data_dir]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("audit log OK"));
    let checkpoint = gatehouse(&["audit", "checkpoint", "export", "--data-dir", data_dir]);
    assert!(
        checkpoint.status.success(),
        "{}",
        String::from_utf8_lossy(&checkpoint.stderr)
    );
    let anchor = gw.dir.path().join("checkpoint.json");
    std::fs::write(&anchor, &checkpoint.stdout).unwrap();

    // A tampered copy: one byte of one record changed.
    let copy = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(copy.path().join("audit")).unwrap();
    for f in ["audit.log", "signing.pub"] {
        std::fs::copy(
            data.join("audit").join(f),
            copy.path().join("audit").join(f),
        )
        .unwrap();
    }
    let log = copy.path().join("audit/audit.log");
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, text.replacen("audited", "innocent", 1)).unwrap();
    let copy_dir = copy.path().to_str().unwrap();
    let out = gatehouse(&["audit", "verify", "--data-dir", copy_dir]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("DAMAGED"),
        "{out:?}"
    );

    // A truncated copy passes on its own but not against the exported checkpoint.
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&log, format!("{}\n", lines[..2].join("\n"))).unwrap();
    assert!(
        gatehouse(&["audit", "verify", "--data-dir", copy_dir])
            .status
            .success()
    );
    let out = gatehouse(&[
        "audit",
        "verify",
        "--data-dir",
        copy_dir,
        "--from-checkpoint",
        anchor.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("truncated"),
        "{out:?}"
    );

    // A gateway that stops cleanly leaves only records, the last one a signed checkpoint (a
    // running one keeps zeros preallocated after them; see docs/audit.md).
    let mut gw = gw;
    gw.stop();
    let bytes = std::fs::read(data.join("audit/audit.log")).unwrap();
    assert!(!bytes.contains(&0) && bytes.ends_with(b"\n"));
    let last = String::from_utf8_lossy(&bytes)
        .lines()
        .last()
        .unwrap()
        .to_string();
    assert!(last.contains("\"kind\":\"audit.checkpoint\""), "{last}");
    let out = gatehouse(&["audit", "verify", "--data-dir", data_dir]);
    assert!(out.status.success(), "{out:?}");
}

/// Fail closed: when the audit log cannot be written (a full or failing disk, injected here),
/// the statement is not run, the session ends with a clear error, and new sessions are refused
/// until the gateway is restarted; the log on disk stays intact.
#[tokio::test]
async fn a_gateway_that_cannot_write_its_audit_log_runs_nothing() {
    common::cluster().psql_direct(
        "app",
        common::APP_PASSWORD,
        "appdb",
        "DROP TABLE IF EXISTS audit_fault; CREATE TABLE audit_fault (id int)",
    );
    let mut gw = Gateway::start();
    let token = gw.token("faulty", &["agents"]);
    let client = common::connect(&gw, "appdb", &token).await;
    client
        .simple_query("insert into audit_fault values (1)")
        .await
        .unwrap();

    let fault = gw.dir.path().join(common::AUDIT_FAULT_FILE);
    std::fs::write(&fault, "").unwrap();
    let err = client
        .simple_query("insert into audit_fault values (2)")
        .await
        .expect_err("no statement runs without its audit record");
    let db = err.as_db_error().expect("an error from the gateway");
    assert_eq!(db.code().code(), "58000", "{err}");
    assert!(db.message().contains("cannot write its audit log"), "{err}");
    assert!(client.is_closed() || client.simple_query("select 1").await.is_err());

    // New sessions are refused too, with a message that says why.
    let (ok, _, stderr) = gw.psql(
        &token,
        "appdb",
        &["-c", "insert into audit_fault values (3)"],
        None,
    );
    assert!(!ok);
    assert!(
        stderr.contains("record") || stderr.contains("audit"),
        "{stderr}"
    );
    let rows = common::cluster().psql_direct(
        "app",
        common::APP_PASSWORD,
        "appdb",
        "SELECT string_agg(id::text, ',' ORDER BY id) FROM audit_fault",
    );
    assert_eq!(
        rows, "1",
        "only the statement recorded before the fault ran"
    );

    // Fixed and restarted: the log verifies and the gateway works again.
    std::fs::remove_file(&fault).unwrap();
    gw.restart();
    let data = gw.dir.path().join("data");
    let out = gatehouse(&["audit", "verify", "--data-dir", data.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (ok, _, err) = gw.psql(
        &token,
        "appdb",
        &["-c", "insert into audit_fault values (4)"],
        None,
    );
    assert!(ok, "{err}");
}
