//! `gatehouse sessions replay`: a real psql session (a masked query, a statement held for
//! review that expires) read back from the audit log as a timeline, through the API (admin or
//! auditor only) and offline; and the audit log read through the API.

mod common;

use common::{Gateway, GatewayOptions};

const POLICY: &str = r#"
@id("agents-read")
permit(principal in Gatehouse::Group::"agents",
       action in [Gatehouse::Action::"connect", Gatehouse::Action::"read",
                  Gatehouse::Action::"session"],
       resource);

@id("writes-need-dba")
@approvers("dba")
@timeout("1s")
permit(principal in Gatehouse::Group::"agents", action == Gatehouse::Action::"write", resource)
when { context.approved };
"#;

const MASKING: &str = r#"
[[masking.rules]]
name = "emails"
detector = "email"
strategy = "redact"
"#;

#[test]
fn a_session_replays_from_the_audit_log_for_auditors_only() {
    common::cluster().psql_direct(
        "app",
        common::APP_PASSWORD,
        "appdb",
        "DROP TABLE IF EXISTS replay_people; CREATE TABLE replay_people (id int, email text);
         INSERT INTO replay_people SELECT i, 'person' || i || '@replay.example' FROM generate_series(1, 5) i",
    );
    let gw = Gateway::start_with(GatewayOptions {
        policies: vec![("replay.cedar".into(), POLICY.into())],
        extra_sections: MASKING.into(),
        ..Default::default()
    });
    let agent = gw.token("replayed", &["agents"]);
    let (_, out, err) = gw.psql(
        &agent,
        "appdb",
        &[
            "-c",
            "select id, email from replay_people order by id",
            "-c",
            "insert into replay_people values (6, 'x')",
        ],
        None,
    );
    assert!(out.contains("(5 rows)"), "{out}{err}");
    assert!(
        err.contains("rv_"),
        "the held insert names its review: {err}"
    );

    let sessions = gw.cli_json(&["sessions", "list"]);
    let id = sessions["sessions"][0]["id"].as_str().unwrap().to_string();
    let replay = gw.wait_for("the session's end in the audit log", || {
        let out = gw.cli(&["sessions", "replay", &id]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (out.status.success() && text.contains("closed:")).then_some(text)
    });
    for expected in [
        "opened by gatehouse/replayed on appdb",
        "#1 allow [agents-read]  select id, email from replay_people order by id",
        "#1 ok · 5 rows",
        "masked emails=5",
        "… 2 more rows not kept",
        "held for review rv_",
        "expired: no decision before the timeout",
        "#2 denied",
    ] {
        assert!(replay.contains(expected), "{expected:?} missing:\n{replay}");
    }
    let audit_log = std::fs::read_to_string(gw.dir.path().join("data/audit/audit.log")).unwrap();
    assert!(
        !audit_log.contains("@replay.example"),
        "an unmasked value reached the audit log"
    );

    // The same as JSON, for tools: the excerpt holds the masked first rows.
    let json = gw.cli_json(&["sessions", "replay", &id]);
    let outcome = json["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "statement.outcome" && e["data"]["seq"] == 1)
        .unwrap();
    let excerpt = &outcome["data"]["excerpt"];
    assert_eq!(excerpt["columns"], serde_json::json!(["id", "email"]));
    assert_eq!(excerpt["rows"].as_array().unwrap().len(), 3);
    assert_eq!(excerpt["rows_left_out"], 2);
    assert!(json["events"][0]["offset_us"] == 0);

    // Offline, on the data directory.
    let data = gw.dir.path().join("data");
    let offline = gw.cli(&[
        "sessions",
        "replay",
        &id,
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(offline.status.success());
    assert_eq!(String::from_utf8_lossy(&offline.stdout), replay);

    // Auditors read audit data; agents do not.
    let auditor = gw.token("reader", &["auditor"]);
    assert!(
        gw.cli_as(&auditor, &["sessions", "replay", &id])
            .status
            .success()
    );
    let verified = gw.cli_as(&auditor, &["audit", "verify", "--url", &gw.url()]);
    assert!(
        String::from_utf8_lossy(&verified.stdout).contains("audit log OK"),
        "{verified:?}"
    );
    for args in [
        vec!["sessions", "replay", id.as_str()],
        vec!["sessions", "list"],
    ] {
        let refused = gw.cli_as(&agent, &args);
        assert!(!refused.status.success());
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("\"auditor\""),
            "{refused:?}"
        );
    }
    let refused = gw.cli_as(&agent, &["audit", "verify", "--url", &gw.url()]);
    assert!(!refused.status.success());

    // Records page by sequence number.
    let client = api_get(&gw, &auditor, "/api/v1/audit/records?since=2&limit=3");
    let records = client["records"].as_array().unwrap();
    assert_eq!(records.len(), 3);
    assert_eq!(records[0]["seq"], 2);
    assert_eq!(client["next"], 5);

    // An unknown session is a clear error.
    let missing = gw.cli(&["sessions", "replay", "s_nope"]);
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no records of session"),
        "{missing:?}"
    );
}

/// A GET through the API with `token`.
fn api_get(gw: &Gateway, token: &str, path: &str) -> serde_json::Value {
    let out = std::process::Command::new("curl")
        .args(["-sf", "-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("{}{path}", gw.url()))
        .output()
        .expect("curl is installed (apt-get install -y curl)");
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}
