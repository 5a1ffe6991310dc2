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

/// Scans of `table` PostgreSQL has counted (`pg_stat_user_tables.seq_scan`). A backend
/// reports its counts when its transaction ends idle or when it exits, so callers poll.
fn seq_scans(table: &str) -> i64 {
    common::cluster()
        .psql_direct(
            "app",
            common::APP_PASSWORD,
            "appdb",
            &format!("SELECT seq_scan FROM pg_stat_user_tables WHERE relname = '{table}'"),
        )
        .trim()
        .parse()
        .unwrap()
}

/// `[audit] overlap_reads`: a statement that changes nothing reaches the server while its intent
/// record is being synced, and its result reaches the client only once the record is on disk.
/// Reads and writes work as usual and every statement's intent precedes its outcome; when the
/// log cannot be written, the read still runs on the server (that is the overlap) but the
/// client gets none of its rows, only the session's end with 58000.
#[tokio::test]
async fn overlapped_reads_never_deliver_a_result_without_its_record() {
    common::cluster().psql_direct(
        "app",
        common::APP_PASSWORD,
        "appdb",
        "DROP TABLE IF EXISTS overlap_probe, overlap_withheld; \
         CREATE TABLE overlap_probe (id int, note text); \
         INSERT INTO overlap_probe VALUES (1, 'withheld'); \
         CREATE TABLE overlap_withheld AS SELECT * FROM overlap_probe",
    );
    let gw = Gateway::start_with(GatewayOptions {
        extra_sections: "[audit]\noverlap_reads = true\n".into(),
        ..Default::default()
    });
    let token = gw.token("overlapping", &["agents"]);
    let client = common::connect(&gw, "appdb", &token).await;

    // Simple and extended protocol reads, pipelined reads, and a write (which still waits for
    // its record before it is forwarded).
    let rows = client
        .simple_query("select note from overlap_probe where id = 1")
        .await
        .unwrap();
    assert!(rows.iter().any(|m| matches!(m,
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("withheld"))));
    let (a, b) = tokio::join!(
        client.query_one("select note from overlap_probe where id = $1", &[&1i32]),
        client.query("select id from overlap_probe order by id", &[]),
    );
    assert_eq!(a.unwrap().get::<_, String>(0), "withheld");
    assert_eq!(b.unwrap().len(), 1);
    client
        .execute("insert into overlap_probe values (2, 'two')", &[])
        .await
        .unwrap();
    let count: i64 = client
        .query_one("select count(*) from overlap_probe", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 2);

    // Every statement's intent is in the log, before its outcome.
    let records = gw.audit_records();
    let position = |kind: &str, seq: i64| {
        records
            .iter()
            .position(|r| r["kind"] == kind && r["data"]["seq"] == seq)
    };
    for seq in 1..=5 {
        let intent = position("statement.intent", seq)
            .unwrap_or_else(|| panic!("no intent for statement {seq}: {records:?}"));
        if let Some(outcome) = position("statement.outcome", seq) {
            assert!(intent < outcome, "statement {seq}'s outcome came first");
        }
    }

    // The log fails: the read is forwarded at once and runs (on a table nothing else reads),
    // but its rows never reach the client.
    let scans_before = seq_scans("overlap_withheld");
    std::fs::write(gw.dir.path().join(common::AUDIT_FAULT_FILE), "").unwrap();
    let err = client
        .simple_query("select note from overlap_withheld where id = 1")
        .await
        .expect_err("no result reaches the client without its audit record");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("an error from the gateway, not {err:?}\n{}", gw.log()));
    assert_eq!(db.code().code(), "58000", "{err}");
    assert!(db.message().contains("did not send its result"), "{err}");
    assert!(client.is_closed() || client.simple_query("select 1").await.is_err());
    gw.wait_for("the withheld read's scan to be counted", || {
        (seq_scans("overlap_withheld") > scans_before).then_some(())
    });
}
