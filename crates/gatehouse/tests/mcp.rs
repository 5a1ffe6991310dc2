//! The MCP server end to end with the official Python MCP SDK as the client: initialize, list
//! tools, an allowed query (masked), a denied one, bad input, and a statement held for review
//! that the CLI approves and the agent then completes.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{APP_PASSWORD, Gateway, GatewayOptions, cluster};
use serde_json::Value;

const POLICY: &str = r#"
@id("agents-basic")
permit(principal in Gatehouse::Group::"agents",
       action in [Gatehouse::Action::"connect",
                  Gatehouse::Action::"transaction", Gatehouse::Action::"session"],
       resource);

@id("agents-read")
permit(principal in Gatehouse::Group::"agents", action == Gatehouse::Action::"read", resource)
unless { context.relations.contains("public.mcp_vault") };

@id("vault-reads-need-dba")
@approvers("dba")
permit(principal in Gatehouse::Group::"agents", action == Gatehouse::Action::"read", resource)
when { context.approved && context.relations.contains("public.mcp_vault") };

@id("no-payroll")
forbid(principal, action == Gatehouse::Action::"read", resource)
when { context.relations.contains("public.mcp_payroll") };

@id("agent-writes-need-dba")
@approvers("dba")
permit(principal in Gatehouse::Group::"agents", action == Gatehouse::Action::"write", resource)
when { context.approved };
"#;

const SSN: &str = "623-11-4097";

/// The virtualenv `scripts/deps --test` installs the Python MCP SDK into.
fn python() -> std::path::PathBuf {
    let venv = std::env::var_os("GATEHOUSE_MCP_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/gatehouse/mcp-venv")
        });
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "the Python MCP SDK is missing at {}: run scripts/deps --test (it installs PyPI mcp into that virtualenv)",
        venv.display()
    );
    python
}

#[test]
fn the_python_mcp_sdk_uses_every_tool_through_the_pipeline() {
    let python = python();
    cluster().psql_direct(
        "app",
        APP_PASSWORD,
        "appdb",
        &format!(
            "DROP TABLE IF EXISTS mcp_users, mcp_vault, mcp_payroll; \
             CREATE TABLE mcp_users (name text, ssn text); \
             INSERT INTO mcp_users VALUES ('alice', '{SSN}'); \
             CREATE TABLE mcp_vault (secret text); CREATE TABLE mcp_payroll (salary int)"
        ),
    );
    let gw = Gateway::start_with(GatewayOptions {
        policies: vec![("mcp.cedar".into(), POLICY.into())],
        extra_sections: "[[masking.rules]]\nname = \"ssn\"\ncolumn = \"public.mcp_users.ssn\"\n"
            .into(),
        ..Default::default()
    });
    let agent = gw.token("mcp-agent", &["agents"]);
    let dba = gw.token("dba-1", &["dba"]);

    let mut child = Command::new(python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp_client.py"))
        .env("GATEHOUSE_MCP_URL", format!("{}/mcp", gw.url()))
        .env("GATEHOUSE_MCP_TOKEN", &agent)
        .env("GATEHOUSE_MCP_TABLE", "mcp_users")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut events: HashMap<String, Value> = HashMap::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        let event: Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        let name = event["event"].as_str().unwrap_or_default().to_string();
        if name == "review" {
            let id = event["id"].as_str().expect("a review id").to_string();
            let ok = gw.cli_as(&dba, &["reviews", "approve", &id]);
            assert!(
                ok.status.success(),
                "{}",
                String::from_utf8_lossy(&ok.stderr)
            );
        }
        if name == "unauthenticated" {
            events.insert(format!("unauthenticated-{}", events.len()), event.clone());
        }
        events.insert(name, event);
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && events.contains_key("done"),
        "the MCP client failed: {}\nevents: {events:?}\ngateway log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.log()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let result = |name: &str| events[name]["result"].clone();

    // Missing or bad tokens: HTTP 401 and a JSON-RPC error saying what to do.
    let unauth: Vec<&Value> = events
        .iter()
        .filter(|(k, _)| k.starts_with("unauthenticated-"))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(unauth.len(), 2, "{events:?}");
    for e in unauth {
        assert_eq!(e["status"], 401);
        assert!(
            e["body"]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Gatehouse"),
            "{e}"
        );
    }
    assert_eq!(
        events["tools"]["names"],
        serde_json::json!([
            "describe",
            "list_connections",
            "query",
            "request_access",
            "review_status"
        ])
    );
    let connections = result("connections")["structured"]["connections"].to_string();
    assert!(connections.contains("appdb"), "{connections}");
    let describe = result("describe")["structured"].clone();
    let text = describe.to_string();
    assert!(
        text.contains("\"name\":\"ssn\"") && text.contains("\"masked\":true"),
        "{describe}"
    );
    // Only what the caller may read shows, and whether it needs approval first.
    let access = |table: &str| {
        describe["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["schema"] == "public" && t["table"] == table)
            .map(|t| t["access"].as_str().unwrap().to_string())
    };
    assert_eq!(
        access("mcp_users").as_deref(),
        Some("allowed"),
        "{describe}"
    );
    assert_eq!(
        access("mcp_vault").as_deref(),
        Some("needs_approval"),
        "{describe}"
    );
    assert_eq!(access("mcp_payroll"), None, "{describe}");
    assert!(!text.contains("salary"), "{describe}");
    assert!(
        describe["tables_not_readable"].as_u64().unwrap() >= 1,
        "{describe}"
    );

    // Allowed, masked.
    let allowed = result("allowed");
    assert_eq!(allowed["is_error"], false, "{allowed}");
    let rows = allowed["structured"]["results"][0]["rows"].clone();
    assert_eq!(rows, serde_json::json!([["alice", "****"]]), "{allowed}");
    assert!(!allowed.to_string().contains(SSN));
    // Denied by policy, and refused by masking: tool errors the model can read.
    let denied = result("denied");
    assert_eq!(denied["is_error"], true, "{denied}");
    assert!(
        denied["structured"]["message"]
            .as_str()
            .unwrap()
            .contains("gatehouse.no-permit"),
        "{denied}"
    );
    let refused = result("masked_refusal");
    assert_eq!(refused["is_error"], true);
    assert!(refused.to_string().contains("is masked"), "{refused}");
    // Bad input: clear errors, not crashes.
    for bad in ["unknown_tool", "malformed", "oversized"] {
        let r = result(bad);
        assert!(
            r.get("protocol_error").is_some() || r["is_error"] == true,
            "{bad}: {r}"
        );
    }
    // Review: held with an id and a message to act on; approved by a person; completed.
    let held = result("held");
    assert_eq!(held["structured"]["status"], "review_required", "{held}");
    assert!(
        held["structured"]["message"]
            .as_str()
            .unwrap()
            .contains("review_id"),
        "{held}"
    );
    assert_eq!(result("review_status")["structured"]["state"], "approved");
    let completed = result("completed");
    assert_eq!(completed["structured"]["status"], "ok", "{completed}");
    assert_eq!(
        cluster().psql_direct(
            "app",
            APP_PASSWORD,
            "appdb",
            "SELECT count(*) FROM mcp_users WHERE name = 'via-mcp'"
        ),
        "1"
    );

    // Every query call is recorded as a statement of an `exec` session of that identity.
    let sessions = gw.cli_json(&["sessions", "list"]);
    let mcp_sessions = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            s["principal"] == "gatehouse/mcp-agent"
                && s["application_name"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("mcp"))
        })
        .count();
    assert!(mcp_sessions >= 4, "{sessions}");

    // Tool calls that run no statement are in the audit log, with their arguments.
    let data = gw.dir.path().join("data");
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["audit", "export", "--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    let exported = String::from_utf8_lossy(&out.stdout).to_string();
    let calls: Vec<Value> = exported
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["kind"] == "mcp.tool_call")
        .collect();
    assert!(
        calls
            .iter()
            .any(|c| c["data"]["tool"] == "describe"
                && c["data"]["arguments"]["connection"] == "appdb"),
        "{calls:?}"
    );
    assert!(
        calls.iter().all(|c| c["actor"] == "gatehouse/mcp-agent"),
        "{calls:?}"
    );
}
