//! Masking end to end against a real PostgreSQL: canary values planted in masked columns never
//! reach the client, whatever channel (rows in text and binary, COPY, errors, notices,
//! notifications) or query shape (alias, star, casts, functions, predicates, copies) is tried.

mod common;

use common::raw::{self, msg};
use common::{APP_PASSWORD, Gateway, GatewayOptions, cluster, connect};
use tokio::io::AsyncWriteExt;

const SSN: &str = "512-47-3961";
const EMAIL: &str = "canary.alice@example.org";
const CARD: &str = "4539148803436467";
const PASSWORD: &str = "hunter2-canary-XYZ";
const SALARY: &str = "987654";

const RULES: &str = r#"
[[masking.rules]]
name = "ssn"
column = "public.TABLE.ssn"
strategy = "partial"
keep_last = 4
exempt_groups = ["dba"]

[[masking.rules]]
name = "passwords"
column_pattern = "*password*"

[[masking.rules]]
name = "salary"
column = "TABLE.salary"

[[masking.rules]]
name = "ssn-anywhere"
detector = "us_ssn"
exempt_groups = ["dba"]

[[masking.rules]]
name = "cards"
detector = "payment_card"
strategy = "partial"
keep_last = 4

[[masking.rules]]
name = "emails"
detector = "email"
strategy = "token"
"#;

/// The canaries and simple transforms of them an exfiltration might use.
fn leaks(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for canary in [SSN, EMAIL, CARD, PASSWORD, SALARY] {
        let digits: String = canary.chars().filter(char::is_ascii_digit).collect();
        let reversed: String = canary.chars().rev().collect();
        let hex: String = canary.bytes().map(|b| format!("{b:02x}")).collect();
        for form in [
            canary.to_string(),
            canary.to_uppercase(),
            reversed,
            hex,
            if digits.len() >= 6 {
                digits
            } else {
                canary.to_string()
            },
        ] {
            if text.contains(&form) || text.to_lowercase().contains(&form.to_lowercase()) {
                found.push(form);
            }
        }
    }
    found
}

/// A table of canaries named `table`, and a gateway masking it.
fn setup(table: &str) -> Gateway {
    cluster().psql_direct(
        "app",
        APP_PASSWORD,
        "appdb",
        &format!(
            "DROP TABLE IF EXISTS {table}; \
             CREATE TABLE {table} (id int, name text, ssn text, email text, card text, \
                                   api_password text, salary int, notes jsonb); \
             INSERT INTO {table} VALUES (1, 'alice', '{SSN}', '{EMAIL}', '{CARD}', '{PASSWORD}', {SALARY}, \
                '{{\"contact\": \"{EMAIL}\", \"id\": \"{SSN}\"}}')"
        ),
    );
    Gateway::start_with(GatewayOptions {
        extra_sections: RULES.replace("TABLE", table),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_never_reach_the_client_through_psql() {
    let gw = setup("m_users");
    let agent = gw.token("agent", &["agents"]);
    let dba = gw.token("dba", &["dba"]);

    // 46, 47, 53: baseline, alias, star: masked in place.
    for sql in [
        "SELECT ssn, email, card, api_password, salary, notes FROM m_users",
        "SELECT ssn AS x, api_password AS y FROM m_users",
        "SELECT * FROM m_users",
        "SELECT u.* FROM m_users u WHERE u.id = 1 ORDER BY name",
    ] {
        let (ok, out, err) = gw.psql(&agent, "appdb", &["-A", "-c", sql], None);
        assert!(ok, "{sql}: {err}");
        assert!(
            leaks(&out).is_empty(),
            "{sql} leaked {:?}: {out}",
            leaks(&out)
        );
        assert!(out.contains("****"), "{sql}: {out}");
    }
    let (_, out, _) = gw.psql(
        &agent,
        "appdb",
        &["-A", "-t", "-c", "SELECT ssn, card FROM m_users"],
        None,
    );
    assert_eq!(
        out.trim(),
        "****961|****6467",
        "partial keeps at most a third, digits only"
    );

    // 48, 49, 51, 58, 60, 66, 15, 23, 34 and whole-row tricks: refused, naming the column.
    for sql in [
        "SELECT ssn::text FROM m_users",
        "SELECT CAST(ssn AS varchar(20)) FROM m_users",
        "SELECT ssn || '' FROM m_users",
        "SELECT concat(ssn) FROM m_users",
        "SELECT substr(ssn, 1, 3), right(ssn, 4) FROM m_users",
        "SELECT id FROM m_users WHERE ssn LIKE '5%'",
        "SELECT id FROM m_users WHERE ssn = '512-47-3961'",
        "SELECT ssn::int FROM m_users",
        "SELECT upper(api_password) FROM m_users",
        "SELECT salary + 0 FROM m_users",
        "SELECT row_to_json(u) FROM m_users u",
        "CREATE TABLE m_stash AS SELECT * FROM m_users",
        "SELECT * INTO m_stash2 FROM m_users",
        "COPY m_users TO STDOUT",
        "COPY (SELECT ssn FROM m_users) TO STDOUT (FORMAT binary)",
        "BEGIN; DECLARE c CURSOR FOR SELECT ssn FROM m_users; FETCH ALL FROM c; COMMIT",
    ] {
        let (ok, out, err) = gw.psql(&agent, "appdb", &["-A", "-c", sql], None);
        assert!(!ok, "{sql} was allowed: {out}");
        assert!(
            err.contains("masked") || err.contains("masking"),
            "{sql}: {err}"
        );
        assert!(
            leaks(&out).is_empty() && leaks(&err).is_empty(),
            "{sql} leaked"
        );
    }

    // Detectors cover errors, notices, notifications and COPY of anything else.
    // psql echoes a failing query's own text (client side) unless VERBOSITY is terse.
    let (ok, _, err) = gw.psql(
        &agent,
        "appdb",
        &[
            "-v",
            "VERBOSITY=terse",
            "-c",
            &format!("SELECT '{EMAIL}'::int"),
        ],
        None,
    );
    assert!(!ok);
    assert!(
        err.contains("invalid input syntax") && err.contains("tok_"),
        "{err}"
    );
    assert!(
        leaks(&err).is_empty(),
        "the server's error leaked {:?}: {err}",
        leaks(&err)
    );
    let script = format!(
        "DO $$BEGIN RAISE NOTICE 'value %', '{EMAIL} {CARD}'; END$$;\n\
         COPY (SELECT '{EMAIL}', '{CARD}') TO STDOUT;\n\
         LISTEN leak; NOTIFY leak, '{EMAIL}';\n\
         SELECT 'done';\n"
    );
    let (_, out, err) = gw.psql(&agent, "appdb", &["-A"], Some(&script));
    let all = format!("{out}\n{err}");
    assert!(all.contains("done"), "{all}");
    assert!(all.contains("tok_"), "emails become tokens: {all}");
    assert!(leaks(&all).is_empty(), "leaked {:?}: {all}", leaks(&all));

    // Each statement's record says how many values each rule masked.
    let counted = gw.wait_for("a statement record with masked counts", || {
        let sessions = gw.cli_json(&["sessions", "list"]);
        sessions["sessions"].as_array()?.iter().find_map(|s| {
            let shown = gw.cli_json(&["sessions", "show", s["id"].as_str()?]);
            shown["statements"]
                .as_array()?
                .iter()
                .find(|st| st["text"] == "SELECT * FROM m_users")
                .cloned()
        })
    });
    assert_eq!(counted["masked"]["ssn"], 1, "{counted}");
    assert_eq!(counted["masked"]["passwords"], 1, "{counted}");
    assert_eq!(counted["masked"]["salary"], 1, "{counted}");
    assert_eq!(
        counted["masked"]["emails"], 2,
        "the email column and the one in notes: {counted}"
    );
    assert_eq!(counted["masked"]["cards"], 1, "{counted}");

    // One-shot commands (gatehouse exec, REST, MCP) are masked the same way.
    let out = gw.cli_as(
        &agent,
        &[
            "exec",
            "appdb",
            "-e",
            "SELECT * FROM m_users",
            "--format",
            "json",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("****961") && text.contains("tok_"), "{text}");
    assert!(
        leaks(&text).is_empty(),
        "exec leaked {:?}: {text}",
        leaks(&text)
    );
    let out = gw.cli_as(
        &agent,
        &["exec", "appdb", "-e", "SELECT lower(ssn) FROM m_users"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"ssn\" is masked"));

    // An exempt group sees the SSN (the other rules still apply).
    let (ok, out, err) = gw.psql(
        &dba,
        "appdb",
        &["-A", "-t", "-c", "SELECT ssn, card FROM m_users"],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("{SSN}|****6467"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_results_of_a_driver_are_masked_with_valid_encodings() {
    let gw = setup("m_users_b");
    let agent = gw.token("agent", &["agents"]);
    let client = connect(&gw, "appdb", &agent).await;
    // tokio-postgres asks for binary results and prepares statements (Parse/Describe, then
    // Bind/Execute): every value must still decode.
    let rows = client
        .query(
            "SELECT ssn, email, card, api_password, salary, notes, name FROM m_users_b",
            &[],
        )
        .await
        .unwrap();
    let row = &rows[0];
    let ssn: String = row.get(0);
    let email: String = row.get(1);
    let card: String = row.get(2);
    let password: String = row.get(3);
    let salary: Option<i32> = row.get(4);
    let notes: serde_json::Value = row.get(5);
    let name: String = row.get(6);
    assert_eq!(ssn, "****961");
    assert!(email.starts_with("tok_"), "{email}");
    assert_eq!(card, "****6467");
    assert_eq!(password, "****");
    assert_eq!(salary, None, "a masked number becomes NULL");
    assert_eq!(name, "alice");
    let all = format!("{ssn}{email}{card}{password}{notes}");
    assert!(leaks(&all).is_empty(), "leaked {:?}: {all}", leaks(&all));
    // The same statement twice, and another one in between, keep their own column plans.
    let other = client
        .prepare("SELECT name, ssn FROM m_users_b")
        .await
        .unwrap();
    let again = client.query(&other, &[]).await.unwrap();
    assert_eq!(again[0].get::<_, String>(1), "****961");
    assert_eq!(again[0].get::<_, String>(0), "alice");
    // A refused statement names the column, and stays refused when parsed again (the
    // session remembers what it concluded about a text).
    for _ in 0..2 {
        let err = client
            .query("SELECT lower(ssn) FROM m_users_b", &[])
            .await
            .expect_err("refused");
        assert!(
            err.as_db_error()
                .unwrap()
                .message()
                .contains("\"ssn\" is masked"),
            "{err}"
        );
    }
}

fn cstr(s: &str) -> Vec<u8> {
    let mut b = s.as_bytes().to_vec();
    b.push(0);
    b
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = cstr(name);
    b.extend(cstr(sql));
    b.extend(0i16.to_be_bytes());
    msg(b'P', &b)
}

/// Bind with no parameters; results all in text, or all in binary.
fn bind(portal: &str, statement: &str, binary: bool) -> Vec<u8> {
    let mut b = cstr(portal);
    b.extend(cstr(statement));
    b.extend(0i16.to_be_bytes());
    b.extend(0i16.to_be_bytes());
    if binary {
        b.extend(1i16.to_be_bytes());
        b.extend(1i16.to_be_bytes());
    } else {
        b.extend(0i16.to_be_bytes());
    }
    msg(b'B', &b)
}

fn describe(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    b.extend(cstr(name));
    msg(b'D', &b)
}

fn execute(portal: &str) -> Vec<u8> {
    let mut b = cstr(portal);
    b.extend(0i32.to_be_bytes());
    msg(b'E', &b)
}

/// libpq runs every extended-protocol query as Parse, Bind, Describe of the portal, Execute,
/// Sync. The client's own Describe then gives the masking plan (the gateway adds no Describe
/// of its own); a Describe of the statement, of another portal, or none, still gets the
/// gateway's. Every way, the rows are masked and the client sees only its own answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_after_the_clients_own_describe_are_masked() {
    let gw = setup("m_users_d");
    let agent = gw.token("agent", &["agents"]);
    let mut s = raw::login(&gw, &agent).await;
    let sync = msg(b'S', b"");
    let mut prepare = parse("s1", "SELECT ssn, name FROM m_users_d");
    prepare.extend(&sync);
    s.write_all(&prepare).await.unwrap();
    assert!(raw::first_error(&raw::until_ready(&mut s).await).is_none());

    let cases: Vec<(&str, Vec<Vec<u8>>, usize, usize)> = vec![
        // (what, messages, RowDescriptions the client asked for, rows)
        (
            "libpq: Describe of the portal right before its Execute",
            vec![bind("", "s1", false), describe(b'P', ""), execute("")],
            1,
            1,
        ),
        (
            "two such queries in one batch",
            vec![
                bind("a", "s1", false),
                describe(b'P', "a"),
                execute("a"),
                bind("b", "s1", false),
                describe(b'P', "b"),
                execute("b"),
            ],
            2,
            2,
        ),
        (
            "binary results",
            vec![bind("", "s1", true), describe(b'P', ""), execute("")],
            1,
            1,
        ),
        (
            "Describe of the statement",
            vec![bind("", "s1", false), describe(b'S', "s1"), execute("")],
            1,
            1,
        ),
        (
            "Describe of another portal",
            vec![
                bind("x", "s1", false),
                bind("y", "s1", false),
                describe(b'P', "x"),
                execute("y"),
            ],
            1,
            1,
        ),
        (
            "Describe, then Flush, then Execute",
            vec![
                bind("", "s1", false),
                describe(b'P', ""),
                msg(b'H', b""),
                execute(""),
            ],
            1,
            1,
        ),
        (
            "no Describe",
            vec![bind("", "s1", false), execute("")],
            0,
            1,
        ),
    ];
    for (what, messages, descriptions, rows) in cases {
        let mut batch: Vec<u8> = messages.concat();
        batch.extend(&sync);
        s.write_all(&batch).await.unwrap();
        let answers = raw::until_ready(&mut s).await;
        assert!(raw::first_error(&answers).is_none(), "{what}: {answers:?}");
        let count = |tag: u8| answers.iter().filter(|(t, _)| *t == tag).count();
        assert_eq!(count(b'T'), descriptions, "{what}: {answers:?}");
        assert_eq!(count(b'D'), rows, "{what}");
        assert_eq!(raw::first_column(&answers), vec!["****961"; rows], "{what}");
        let all: String = answers
            .iter()
            .map(|(_, body)| String::from_utf8_lossy(body).into_owned())
            .collect();
        assert!(leaks(&all).is_empty(), "{what} leaked {:?}", leaks(&all));
    }
}
