//! The audit log survives crashes: the gateway is killed with SIGKILL in the middle of a
//! pgbench run, again and again. After each restart `gatehouse audit verify` passes, a torn
//! last record is cut with an `audit.recovered` record saying so, and every statement that
//! PostgreSQL executed (each inserts a unique marker into a probe table) has its
//! `statement.intent` record: strict durability writes it before the statement is forwarded.

mod common;

use std::collections::HashSet;
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Gateway;

const SCRIPT: &str = "\\set m :client_id * 1000000000000 + random(1, 999999999999)\n\
                      insert into audit_crash_probe (marker) values (:m);\n";

/// The start of a record a crash cut short.
const TORN: &str = "{\"seq\":99999999,\"at\":1,\"kind\":\"statement.in";

fn verify(gw: &Gateway) -> String {
    let data = gw.dir.path().join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["audit", "verify", "--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "audit verify failed after a crash: {text}"
    );
    text
}

/// Every number in the text and parameters of the log's `statement.intent` records.
fn intent_numbers(log: &str) -> HashSet<String> {
    let mut found = HashSet::new();
    for line in log.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        if record["kind"] != "statement.intent" {
            continue;
        }
        let text = record["data"]["text"].as_str().unwrap_or("");
        found.extend(
            text.split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        );
        for p in record["data"]["params"].as_array().into_iter().flatten() {
            if let Some(p) = p.as_str() {
                found.insert(p.to_string());
            }
        }
    }
    found
}

#[test]
fn every_executed_statement_has_an_intent_record_after_kill_9() {
    let cluster = common::cluster();
    cluster.psql_direct(
        "app",
        common::APP_PASSWORD,
        "appdb",
        "DROP TABLE IF EXISTS audit_crash_probe; CREATE TABLE audit_crash_probe (marker bigint)",
    );
    let mut gw = Gateway::start();
    let token = gw.token("crashing", &["agents"]);
    let script = gw.dir.path().join("probe.sql");
    std::fs::write(&script, SCRIPT).unwrap();
    let log_path = gw.dir.path().join("data/audit/audit.log");

    for (round, mode) in ["simple", "extended", "prepared"].into_iter().enumerate() {
        let bench = gw
            .pgbench(&token)
            .args(["-n", "-c", "4", "-T", "60", "-M", mode, "-f"])
            .arg(&script)
            .arg("appdb")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pgbench is installed (apt-get install -y postgresql-contrib or postgresql)");
        std::thread::sleep(Duration::from_millis(1200 + 300 * round as u64));
        gw.kill();
        let mut bench = bench;
        let _ = bench.wait();

        // A crash in the middle of a write leaves part of a record; make sure of one in the
        // second round (the kernel rarely tears a single write on its own).
        let torn = round == 1;
        if torn {
            // Where the records end: the gateway keeps zeros preallocated after them.
            let bytes = std::fs::read(&log_path).unwrap();
            let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&log_path)
                .unwrap();
            f.write_all_at(TORN.as_bytes(), end as u64).unwrap();
        }
        gw.start_again();
        let report = verify(&gw);
        assert!(report.contains("audit log OK"), "{report}");
        let log = std::fs::read_to_string(&log_path).unwrap();
        let log = log.split('\0').next().unwrap();
        if torn {
            let recovered = log
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .find(|r| r["kind"] == "audit.recovered")
                .expect("an audit.recovered record after a torn tail");
            assert!(recovered["data"]["truncated_bytes"].as_u64().unwrap() >= TORN.len() as u64);
        }

        let markers = cluster.psql_direct(
            "app",
            common::APP_PASSWORD,
            "appdb",
            "SELECT marker FROM audit_crash_probe",
        );
        let markers: Vec<&str> = markers.split_whitespace().collect();
        assert!(
            markers.len() > 10 * (round + 1),
            "round {round} ({mode}): pgbench barely ran ({} rows)",
            markers.len()
        );
        let intents = intent_numbers(log);
        let missing: Vec<&&str> = markers.iter().filter(|m| !intents.contains(**m)).collect();
        assert!(
            missing.is_empty(),
            "round {round} ({mode}): {} of {} executed statements have no intent record: {:?}",
            missing.len(),
            markers.len(),
            &missing[..missing.len().min(5)]
        );
    }
}
