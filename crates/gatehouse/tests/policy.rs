//! Statement-level policy through the gateway, against a real PostgreSQL: the classification
//! and policy cases of shared/security/adversarial-sql.md (numbered as there), the read-only
//! oracle, the fail-closed default, hot reload and the policy CLI.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{APP_PASSWORD, Gateway, GatewayOptions, cluster, driver_config, raw};
use gatehouse_core::classify::StatementKind;
use tokio_postgres::{Client, NoTls};

fn example_policies() -> Vec<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/policies");
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect()
}

/// The example policies; statements held for review time out at once, as nobody approves here
/// (approvals are tested in reviews.rs).
fn with_examples() -> Gateway {
    Gateway::start_with(GatewayOptions {
        policies: example_policies(),
        extra_sections: "[reviews]\ntimeout = \"100ms\"\n".into(),
        ..Default::default()
    })
}

/// Creates `table` (id int) with `rows` rows directly on the server, as the connection's role.
fn table(name: &str, rows: i32) {
    cluster().psql_direct(
        "app",
        APP_PASSWORD,
        "appdb",
        &format!("drop table if exists {name}; create table {name} (id int); insert into {name} select generate_series(1, {rows})"),
    );
}

fn count(name: &str) -> i64 {
    cluster()
        .psql_direct(
            "app",
            APP_PASSWORD,
            "appdb",
            &format!("select count(*) from {name}"),
        )
        .parse()
        .unwrap()
}

/// Runs `sql` as a simple query and returns the SQLSTATE and message of its error.
async fn refused(client: &Client, sql: &str) -> (String, String) {
    let err = client
        .simple_query(sql)
        .await
        .err()
        .unwrap_or_else(|| panic!("{sql} must be refused"));
    let db = err.as_db_error().unwrap_or_else(|| panic!("{sql}: {err}"));
    (db.code().code().to_string(), db.message().to_string())
}

async fn denied_by(client: &Client, sql: &str, policy: &str) {
    let (code, message) = refused(client, sql).await;
    assert_eq!(code, "42501", "{sql}: {message}");
    assert!(
        message.contains(policy),
        "{sql}: expected policy {policy} in: {message}"
    );
}

#[tokio::test]
async fn without_policy_files_only_admins_get_in() {
    let gw = Gateway::start_with(GatewayOptions {
        no_policy: true,
        ..Default::default()
    });
    let agent = gw.token("agent", &["agents"]);
    let err = driver_config(&gw, "appdb", &agent)
        .connect(NoTls)
        .await
        .err()
        .expect("refused");
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "42501");
    assert!(
        db.message().contains("gatehouse.no-permit"),
        "{}",
        db.message()
    );
    assert!(db.message().contains("gatehouse/agent"), "{}", db.message());

    let admin = common::connect(&gw, "appdb", &gw.admin_token).await;
    admin.simple_query("select 1").await.unwrap();
}

#[tokio::test]
async fn example_policies_allow_deny_and_ask_for_review() {
    table("pol_orders", 3);
    let gw = with_examples();
    let agent = gw.token("agent", &["agents"]);
    let dba = gw.token("dba", &["dba"]);
    let dev = common::connect(&gw, "appdb", &agent).await;
    let prod = common::connect(&gw, "proddb", &agent).await;

    // Reads anywhere; writes outside prod.
    prod.simple_query("select * from pol_orders").await.unwrap();
    dev.simple_query("update pol_orders set id = id where id = 1")
        .await
        .unwrap();

    // A write in prod needs a dba's approval: held, not decided in time, nothing runs.
    let (code, message) = refused(&prod, "delete from pol_orders").await;
    assert_eq!(code, "42501");
    assert!(message.contains("approval"), "{message}");
    assert!(message.contains("dba"), "{message}");
    assert!(
        message.contains("prod-writes-need-dba-approval"),
        "{message}"
    );
    assert_eq!(count("pol_orders"), 3);

    // DDL: no permit for agents; forbidden in prod even for dbas.
    denied_by(&dev, "create table pol_x (a int)", "gatehouse.no-permit").await;
    let dba_prod = common::connect(&gw, "proddb", &dba).await;
    denied_by(&dba_prod, "drop table pol_orders", "no-ddl-in-prod").await;
    assert_eq!(count("pol_orders"), 3);

    // The session stays usable after every refusal.
    prod.simple_query("select 1").await.unwrap();

    // Every decision is recorded, denials as such.
    let sessions = gw.wait_for("statements recorded", || {
        let list = gw.cli_json(&["sessions", "list"]);
        let s = list["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| {
                s["connection"] == "proddb"
                    && s["principal"] == "gatehouse/agent"
                    && s["statement_count"].as_i64() >= Some(3)
            })?
            .clone();
        Some(s)
    });
    let shown = gw.cli_json(&["sessions", "show", sessions["id"].as_str().unwrap()]);
    let outcomes: Vec<&str> = shown["statements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(&outcomes[..3], &["ok", "denied", "ok"], "{shown}");
    let st = &shown["statements"];
    assert_eq!(st[0]["decision"], "allow");
    assert_eq!(st[0]["policies"], serde_json::json!(["agents-read"]));
    assert_eq!(st[1]["decision"], "review");
    assert_eq!(
        st[1]["policies"][0],
        serde_json::json!("prod-writes-need-dba-approval")
    );
    assert!(
        st[1]["policies"][1]
            .as_str()
            .unwrap()
            .starts_with("review:rv_"),
        "{st}"
    );
}

#[tokio::test]
async fn adversarial_sql_cases_are_classified_by_the_parser_not_the_text() {
    table("adv_orders", 5);
    let gw = with_examples();
    let agent = gw.token("agent", &["agents"]);
    let prod = common::connect(&gw, "proddb", &agent).await;

    // Writes hidden from a keyword matcher: each needs the prod approval, and none runs.
    for sql in [
        "SELECT 1; DELETE FROM adv_orders;",          // 1 stacked
        "/* SELECT */ DELETE FROM adv_orders",        // 2 comment before verb
        "SELECT 1 --x\n; DELETE FROM adv_orders",     // 3 line comment
        r"SELECT E'\''; DELETE FROM adv_orders; --'", // 5 escape string
        r"SELECT 'a\'; DELETE FROM adv_orders; --'",  // 6 standard strings
        "DeLeTe FROM \"adv_orders\"",                 // 9 case and quoting
        "WITH d AS (DELETE FROM adv_orders RETURNING *) SELECT count(*) FROM d", // 13 CTE
        "EXPLAIN ANALYZE DELETE FROM adv_orders",     // 14
        "SELECT * INTO adv_stash FROM adv_orders",    // 15
        "PREPARE p AS DELETE FROM adv_orders",        // 27
        "SELECT * FROM adv_orders FOR UPDATE",
    ] {
        let (code, message) = refused(&prod, sql).await;
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(message.contains("approval"), "{sql}: {message}");
    }
    assert_eq!(count("adv_orders"), 5, "a refused write reached the server");

    // Code and admin: no permit for exec, and admin is forbidden.
    for (sql, policy) in [
        ("SELECT purge_old_orders()", "gatehouse.no-permit"), // 17
        ("CALL archive_orders()", "gatehouse.no-permit"),     // 26
        (
            "DO $$BEGIN EXECUTE 'DEL'||'ETE FROM adv_orders'; END$$",
            "gatehouse.no-permit",
        ), // 25
        ("EXECUTE p", "gatehouse.no-permit"),                 // 27
        (
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity",
            "no-admin",
        ), // 18
        ("SELECT pg_reload_conf()", "no-admin"),
        ("SELECT pg_read_file('/etc/passwd')", "no-admin"), // 19
        ("SELECT pg_ls_dir('.')", "no-admin"),
        ("COPY (SELECT 1) TO PROGRAM 'true'", "no-admin"), // 21
        ("COPY adv_orders TO '/tmp/adv.csv'", "no-admin"), // 22
        ("COPY adv_orders FROM '/tmp/adv.csv'", "no-admin"),
        ("ALTER SYSTEM SET log_statement = 'none'", "no-admin"), // 42
        ("LOAD 'plpgsql'", "no-admin"),
        ("CREATE EXTENSION dblink", "no-admin"),
    ] {
        denied_by(&prod, sql, policy).await;
    }

    // Changes to what the gateway relies on are refused whatever the policy.
    for sql in [
        "SET search_path = secret, public", // 11
        "SET ROLE postgres",                // 36
        "SET SESSION AUTHORIZATION postgres",
        "SELECT set_config('role', 'postgres', false)",
        "SET default_transaction_read_only = off", // 39
        "selec 1",                                 // 78: unparseable
    ] {
        denied_by(&prod, sql, "gatehouse.classifier").await;
    }
    let who = prod.simple_query("select current_user").await.unwrap();
    assert!(format!("{who:?}").contains("app"));
    assert_eq!(count("adv_orders"), 5);
}

#[tokio::test]
async fn extended_protocol_is_classified_at_parse_and_enforced_at_execute() {
    table("ext_orders", 4);
    let gw = with_examples();
    let agent = gw.token("agent", &["agents"]);
    let prod = common::connect(&gw, "proddb", &agent).await;

    // 28: Parse of a DELETE is allowed through; its Execute is not.
    let stmt = prod
        .prepare("DELETE FROM ext_orders WHERE id = $1")
        .await
        .unwrap();
    let err = prod.execute(&stmt, &[&1i32]).await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42501");
    assert_eq!(count("ext_orders"), 4);
    // Reads through the same session still work, prepared and binary.
    let n: i64 = prod
        .query_one("select count(*) from ext_orders where id > $1", &[&0i32])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 4);

    // 32: two commands in one Parse are refused before the server sees them.
    let err = prod
        .prepare("SELECT 1; DELETE FROM ext_orders")
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42601");
    // An unparseable Parse never reaches the server.
    let err = prod.prepare("DELETE FROM").await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42501");
}

/// Case 27: SQL-level EXECUTE is judged as what its PREPARE held.
#[tokio::test]
async fn sql_level_execute_is_judged_as_its_prepared_statement() {
    table("prep_t", 2);
    let gw = with_examples();
    let agent = gw.token("agent", &["agents"]);
    let dev = common::connect(&gw, "appdb", &agent).await;
    // A prepared read runs as a read, a prepared write outside prod as a write.
    dev.batch_execute("PREPARE r AS SELECT count(*) FROM prep_t")
        .await
        .unwrap();
    dev.batch_execute("EXECUTE r").await.unwrap();
    dev.batch_execute("PREPARE w AS INSERT INTO prep_t VALUES (3)")
        .await
        .unwrap();
    dev.batch_execute("EXECUTE w").await.unwrap();
    assert_eq!(count("prep_t"), 3);
    // In prod the prepared write needs review at PREPARE, and an EXECUTE of a name never
    // prepared through the gateway is code execution, which agents may not do.
    let prod = common::connect(&gw, "proddb", &agent).await;
    let (_, message) = refused(&prod, "PREPARE d AS DELETE FROM prep_t").await;
    assert!(message.contains("approval"), "{message}");
    denied_by(&prod, "EXECUTE d", "gatehouse.no-permit").await;
    // The same name prepared as a read in one statement, then executed: a read.
    prod.batch_execute("PREPARE d2 AS SELECT 1; EXECUTE d2")
        .await
        .unwrap();
    assert_eq!(count("prep_t"), 3);
}

/// Case 31: in one pipeline, a refused statement in the middle aborts the implicit transaction
/// exactly as a failed statement would: the write before it is rolled back, the one after it
/// never runs, and one ReadyForQuery ends the batch.
#[tokio::test]
async fn a_refused_statement_in_a_pipeline_keeps_postgres_semantics() {
    table("pipe_t", 0);
    let gw = with_examples();
    let agent = gw.token("agent", &["agents"]);
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.pg_port))
        .await
        .unwrap();
    use tokio::io::AsyncWriteExt;
    s.write_all(&raw::startup(
        raw::PROTOCOL_3_0,
        &[("user", "a"), ("database", "appdb")],
    ))
    .await
    .unwrap();
    raw::read_msg(&mut s).await.unwrap();
    s.write_all(&raw::password(&agent)).await.unwrap();
    raw::until_ready(&mut s).await;

    let pbe = |sql: &str| {
        let mut p = b"\0".to_vec();
        p.extend(sql.as_bytes());
        p.extend([0, 0, 0]);
        let mut m = raw::msg(b'P', &p);
        m.extend(raw::msg(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]));
        m.extend(raw::msg(b'E', &[0, 0, 0, 0, 0]));
        m
    };
    let mut batch = pbe("insert into pipe_t values (1)");
    batch.extend(pbe("create table pipe_denied (a int)"));
    batch.extend(pbe("insert into pipe_t values (2)"));
    batch.extend(raw::msg(b'S', b""));
    s.write_all(&batch).await.unwrap();
    let msgs = raw::until_ready(&mut s).await;
    let tags: String = msgs.iter().map(|(t, _)| *t as char).collect();
    // The refused statement's Parse and Bind pass (enforcement is at Execute); its Execute
    // fails, and the server skips everything up to Sync.
    assert_eq!(tags, "12C12EZ", "{msgs:?}");
    assert_eq!(raw::first_error(&msgs).as_deref(), Some("42501"));
    assert_eq!(msgs.iter().filter(|(t, _)| *t == b'Z').count(), 1);
    assert_eq!(
        count("pipe_t"),
        0,
        "the implicit transaction must roll back"
    );
    let exists = cluster().psql_direct(
        "app",
        APP_PASSWORD,
        "appdb",
        "select count(*) from pg_class where relname = 'pipe_denied'",
    );
    assert_eq!(exists, "0");

    // The session goes on normally.
    let msgs = raw::simple(&mut s, "select 'after'").await;
    assert_eq!(raw::first_column(&msgs), vec!["after"]);
}

/// The read-only oracle: whatever PostgreSQL refuses inside a READ ONLY transaction (SQLSTATE
/// 25006) must not be classified as a read.
#[tokio::test]
async fn the_classifier_agrees_with_postgres_read_only_mode() {
    table("oracle_t", 2);
    let (direct, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(cluster().port)
        .user("app")
        .password(APP_PASSWORD)
        .dbname("appdb")
        .connect(NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    direct
        .batch_execute("create sequence if not exists oracle_seq")
        .await
        .unwrap();
    let statements = [
        "select * from oracle_t",
        "select count(*) from oracle_t",
        "insert into oracle_t values (3)",
        "update oracle_t set id = 1",
        "delete from oracle_t",
        "with d as (delete from oracle_t returning *) select * from d",
        "select * into oracle_stash from oracle_t",
        "select * from oracle_t for update",
        "select * from oracle_t for share",
        "select nextval('oracle_seq')",
        "select setval('oracle_seq', 5)",
        "create table oracle_new (a int)",
        "drop table oracle_t",
        "truncate oracle_t",
        "create index on oracle_t (id)",
        "alter table oracle_t add column b int",
        "explain analyze delete from oracle_t",
        "explain select * from oracle_t",
        "copy oracle_t to stdout",
        "lock table oracle_t",
        "notify oracle_chan",
        "create temp table oracle_tmp as select 1",
        "select pg_advisory_lock(1)",
        "merge into oracle_t t using (select 1 as id) s on t.id = s.id when matched then delete",
        "insert into oracle_t select * from oracle_t",
        "comment on table oracle_t is 'x'",
        "create view oracle_v as select 1",
        "grant select on oracle_t to public",
        "show search_path",
        "select current_user",
        "values (1)",
    ];
    for sql in statements {
        direct.batch_execute("begin read only").await.unwrap();
        let result = direct.batch_execute(sql).await;
        direct.batch_execute("rollback").await.unwrap();
        let postgres_says_write =
            matches!(&result, Err(e) if e.code().map(|c| c.code()) == Some("25006"));
        let classified = gatehouse_pgsql::classify(sql);
        let kinds: Vec<StatementKind> = classified.statements().iter().map(|s| s.kind).collect();
        if postgres_says_write {
            assert!(
                kinds.iter().all(|k| *k != StatementKind::Read) && !kinds.is_empty(),
                "PostgreSQL refuses `{sql}` in a read-only transaction, but it was classified {kinds:?}"
            );
        }
    }
}

#[tokio::test]
async fn policies_reload_on_change_and_a_bad_file_keeps_the_old_ones() {
    table("reload_t", 1);
    let read_only = "@id(\"r\") permit(principal, action in [Gatehouse::Action::\"connect\", Gatehouse::Action::\"read\"], resource);";
    let gw = Gateway::start_with(GatewayOptions {
        policies: vec![("p.cedar".into(), read_only.into())],
        ..Default::default()
    });
    let agent = gw.token("agent", &[]);
    let c = common::connect(&gw, "appdb", &agent).await;
    denied_by(&c, "insert into reload_t values (2)", "gatehouse.no-permit").await;

    let policy_file = gw.dir.path().join("policies/p.cedar");
    std::fs::write(&policy_file, format!("{read_only}\n@id(\"w\") permit(principal, action == Gatehouse::Action::\"write\", resource);")).unwrap();
    let mut allowed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if c.simple_query("insert into reload_t values (2)")
            .await
            .is_ok()
        {
            allowed = true;
            break;
        }
    }
    assert!(allowed, "the new policy was not picked up:\n{}", gw.log());

    // An invalid file is refused; the policies in force stay.
    std::fs::write(&policy_file, "permit(principal, action, resource) when { ;").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(gw.log().contains("policy reload failed"), "{}", gw.log());
    c.simple_query("insert into reload_t values (3)")
        .await
        .unwrap();
    denied_by(&c, "create table reload_x (a int)", "gatehouse.no-permit").await;
}

#[tokio::test]
async fn sighup_reloads_policies_at_once() {
    table("hup_t", 1);
    let read_only = "@id(\"r\") permit(principal, action in [Gatehouse::Action::\"connect\", Gatehouse::Action::\"read\"], resource);";
    let gw = Gateway::start_with(GatewayOptions {
        policies: vec![("p.cedar".into(), read_only.into())],
        policy_reload_interval: Some("1h".into()),
        ..Default::default()
    });
    let agent = gw.token("agent", &[]);
    let c = common::connect(&gw, "appdb", &agent).await;
    std::fs::write(
        gw.dir.path().join("policies/p.cedar"),
        format!("{read_only}\n@id(\"w\") permit(principal, action == Gatehouse::Action::\"write\", resource);"),
    )
    .unwrap();
    // Without a signal nothing changes for an hour.
    tokio::time::sleep(Duration::from_millis(300)).await;
    denied_by(&c, "insert into hup_t values (2)", "gatehouse.no-permit").await;
    gw.signal("HUP");
    let mut allowed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if c.simple_query("insert into hup_t values (2)").await.is_ok() {
            allowed = true;
            break;
        }
    }
    assert!(allowed, "SIGHUP did not reload the policies:\n{}", gw.log());
}

#[test]
fn policy_check_and_explain() {
    let gw = with_examples();
    let config = gw.dir.path().join("gatehouse.toml");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(args)
            .output()
            .unwrap()
    };

    let out = run(&["policy", "check", "--config", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));

    let explain = |as_whom: &str, connection: &str, sql: &str| -> serde_json::Value {
        let out = run(&[
            "policy",
            "explain",
            "--config",
            config.to_str().unwrap(),
            "--as",
            as_whom,
            "--connection",
            connection,
            "--format",
            "json",
            sql,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let v = explain("group:agents", "proddb", "delete from orders where id = 1");
    assert_eq!(v["decision"], "review");
    assert_eq!(v["detail"]["approvers"], serde_json::json!(["dba"]));
    assert_eq!(v["classification"]["statements"][0]["kind"], "write");
    assert_eq!(
        v["classification"]["statements"][0]["relations"],
        serde_json::json!(["public.orders"])
    );
    assert_eq!(
        explain("group:agents", "proddb", "select * from orders")["decision"],
        "allow"
    );
    let v = explain("group:dba", "proddb", "drop table orders");
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["policies"], serde_json::json!(["no-ddl-in-prod"]));
    assert_eq!(explain("ci-bot", "appdb", "select 1")["decision"], "deny");

    let table = run(&[
        "policy",
        "explain",
        "--config",
        config.to_str().unwrap(),
        "--as",
        "group:agents",
        "--connection",
        "appdb",
        "select 1; drop table t",
    ]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("decision        deny"), "{text}");
    assert!(text.contains("DROP (ddl)"), "{text}");

    // A broken policy file fails the check with the file's name.
    std::fs::write(
        gw.dir.path().join("policies/zz-broken.cedar"),
        "forbid(principal, action, resource) when { context.nope };",
    )
    .unwrap();
    let out = run(&["policy", "check", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    let out = run(&["check", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
}
