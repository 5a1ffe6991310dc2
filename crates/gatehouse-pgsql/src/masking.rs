//! Query-side protection of masked columns. Masking rewrites values by their origin (the table
//! and column a result column comes from); any expression over a masked column loses that
//! origin, and a condition, ordering or grouping over it turns the query into an oracle. So a
//! statement that touches a relation with masked columns may use those columns only as plain
//! entries of the top-level SELECT list (where the origin survives and the value is masked);
//! every other use is refused, with the column and the reason.
//!
//! The rule is deliberately conservative: it matches column names across all masked relations
//! the statement mentions, and treats whole-row references, `*` outside the top-level list,
//! COPY, SELECT INTO, CREATE TABLE AS and cursors over masked relations as uses.

use serde_json::Value;

/// A relation with masked columns (names in lower case, as PostgreSQL folds them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedRelation {
    pub schema: String,
    pub table: String,
    pub columns: Vec<String>,
}

/// `Err` with the reason when `sql` uses a masked column in a way masking cannot follow.
pub fn check(sql: &str, masked: &[MaskedRelation]) -> Result<(), String> {
    if masked.is_empty() {
        return Ok(());
    }
    let parsed = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT)
        .map_err(|e| format!("the statement cannot be parsed: {e}"))?;
    for raw in &parsed.protobuf.stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
            return Err("a statement has an empty parse tree".into());
        };
        let mut facts = MaskFacts::default();
        crate::stream::classify_statement_for_masking(node, &mut facts)?;
        check_facts(&facts, masked)?;
    }
    Ok(())
}

/// What the masking check needs to know of one statement, collected by the classifier's walk
/// of its parse tree (one walk serves both).
#[derive(Debug, Default)]
pub(crate) struct MaskFacts {
    /// The statement's node type (`SelectStmt`, `CopyStmt`, ...).
    pub(crate) statement: &'static str,
    /// The statement is a `SELECT ... INTO`.
    pub(crate) select_into: bool,
    /// Every relation it names, anywhere (subqueries, CTEs, COPY, DML targets).
    pub(crate) relations: Vec<RelationRef>,
    /// Every column reference (name parts, `None` for `*`), and whether it is a plain entry
    /// of the statement's own SELECT list.
    pub(crate) column_refs: Vec<(Vec<Option<String>>, bool)>,
}

/// A relation named in a statement, in lower case.
#[derive(Debug)]
pub(crate) struct RelationRef {
    pub(crate) schema: String,
    pub(crate) table: String,
    pub(crate) alias: Option<String>,
}

/// The masking check of one statement from its facts.
pub(crate) fn check_facts(facts: &MaskFacts, masked: &[MaskedRelation]) -> Result<(), String> {
    let mut scope = Scope {
        columns: Vec::new(),
        qualifiers: Vec::new(),
        example: String::new(),
    };
    for r in &facts.relations {
        scope.add(&r.schema, &r.table, r.alias.as_deref(), masked);
    }
    if scope.qualifiers.is_empty() {
        return Ok(());
    }
    match facts.statement {
        "SelectStmt" if !facts.select_into => {}
        "SelectStmt" | "CreateTableAsStmt" | "CopyStmt" | "DeclareCursorStmt" => {
            return Err(not_followed(facts.statement, &scope));
        }
        _ => {}
    }
    facts
        .column_refs
        .iter()
        .try_for_each(|(fields, top_level)| column_ref(fields, *top_level, &scope))
}

/// The same check through a `serde_json::Value` of the whole tree: slower, simpler, and kept
/// as the reference the check on the classifier's walk is tested against.
#[doc(hidden)]
pub fn check_reference(sql: &str, masked: &[MaskedRelation]) -> Result<(), String> {
    if masked.is_empty() {
        return Ok(());
    }
    let parsed = pg_query::parse(sql, pg_query::ParserOptions::DEFAULT)
        .map_err(|e| format!("the statement cannot be parsed: {e}"))?;
    let tree = serde_json::to_value(&parsed.protobuf)
        .map_err(|_| "the statement's parse tree cannot be read".to_string())?;
    for raw in tree["stmts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        check_statement(&raw["stmt"], masked)?;
    }
    Ok(())
}

/// What one statement mentions of the masked relations.
struct Scope {
    /// Masked column names of the relations the statement mentions.
    columns: Vec<String>,
    /// Names and aliases of those relations (whole-row references).
    qualifiers: Vec<String>,
    /// `schema.table` of the first masked relation, for messages.
    example: String,
}

impl Scope {
    /// Takes in a relation the statement names, if it has masked columns.
    fn add(&mut self, schema: &str, table: &str, alias: Option<&str>, masked: &[MaskedRelation]) {
        for m in masked {
            if m.table == table && (schema.is_empty() || m.schema == schema) {
                if self.example.is_empty() {
                    self.example = format!("{}.{}", m.schema, m.table);
                }
                self.columns.extend(m.columns.iter().cloned());
                self.qualifiers.push(table.to_string());
                if let Some(alias) = alias {
                    self.qualifiers.push(alias.to_string());
                }
            }
        }
    }
}

fn not_followed(kind: &str, scope: &Scope) -> String {
    format!(
        "{} reads {} in a way masking cannot follow (copied, stored or read through a cursor); select its masked columns directly instead",
        statement_name(kind),
        scope.example
    )
}

fn check_statement(stmt: &Value, masked: &[MaskedRelation]) -> Result<(), String> {
    let mut scope = Scope {
        columns: Vec::new(),
        qualifiers: Vec::new(),
        example: String::new(),
    };
    collect_relations(stmt, masked, &mut scope);
    if scope.qualifiers.is_empty() {
        return Ok(());
    }
    let Some((kind, body)) = node(stmt) else {
        return Ok(());
    };
    match kind {
        "SelectStmt" if body["into_clause"].is_null() => {
            for (key, value) in body.as_object().into_iter().flatten() {
                if key == "target_list" {
                    for target in value.as_array().map(Vec::as_slice).unwrap_or_default() {
                        match node(target) {
                            Some(("ResTarget", t)) => match node(&t["val"]) {
                                Some(("ColumnRef", c)) => column_ref_value(c, true, &scope)?,
                                _ => walk(&t["val"], &scope)?,
                            },
                            _ => walk(target, &scope)?,
                        }
                    }
                } else {
                    walk(value, &scope)?;
                }
            }
            Ok(())
        }
        "SelectStmt" | "CreateTableAsStmt" | "CopyStmt" | "DeclareCursorStmt" => {
            Err(not_followed(kind, &scope))
        }
        _ => walk(body, &scope),
    }
}

fn statement_name(kind: &str) -> &'static str {
    match kind {
        "SelectStmt" => "SELECT INTO",
        "CreateTableAsStmt" => "CREATE TABLE AS",
        "CopyStmt" => "COPY",
        _ => "DECLARE CURSOR",
    }
}

/// Every use below this point is an expression, condition, ordering, grouping or copy.
fn walk(v: &Value, scope: &Scope) -> Result<(), String> {
    match v {
        Value::Object(map) => {
            if let Some(c) = map.get("ColumnRef") {
                return column_ref_value(c, false, scope);
            }
            for value in map.values() {
                walk(value, scope)?;
            }
            Ok(())
        }
        Value::Array(list) => list.iter().try_for_each(|x| walk(x, scope)),
        _ => Ok(()),
    }
}

fn column_ref_value(c: &Value, top_level: bool, scope: &Scope) -> Result<(), String> {
    let fields: Vec<Option<String>> = c["fields"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|f| match node(f) {
            Some(("String", s)) => s["sval"].as_str().map(|s| s.to_lowercase()),
            _ => None, // AStar
        })
        .collect();
    column_ref(&fields, top_level, scope)
}

/// One column reference (its name parts, `None` for `*`) against the masked columns in scope.
fn column_ref(fields: &[Option<String>], top_level: bool, scope: &Scope) -> Result<(), String> {
    let Some(last) = fields.last() else {
        return Ok(());
    };
    match last {
        None => {
            // `*` or `t.*`: fine as a top-level entry (each column keeps its origin).
            let qualifier = fields.len().checked_sub(2).and_then(|i| fields[i].as_ref());
            let touches = qualifier.is_none_or(|q| scope.qualifiers.contains(q));
            if touches && !top_level {
                return Err(format!(
                    "`*` over {} is used inside an expression; masked columns may only be selected as they are",
                    scope.example
                ));
            }
            Ok(())
        }
        Some(name) => {
            if fields.len() == 1 && scope.qualifiers.contains(name) {
                return Err(format!(
                    "the whole row of {} is referenced (\"{name}\"); it has masked columns, select them one by one",
                    scope.example
                ));
            }
            if scope.columns.contains(name) && !top_level {
                return Err(format!(
                    "column \"{name}\" is masked; it may only be selected as it is, not used in an expression, cast, function, condition, ordering, grouping or copy"
                ));
            }
            Ok(())
        }
    }
}

/// Finds the masked relations a statement mentions (anywhere, including subqueries and CTEs).
fn collect_relations(v: &Value, masked: &[MaskedRelation], scope: &mut Scope) {
    match v {
        Value::Object(map) => {
            // A RangeVar is wrapped (`{"RangeVar": {...}}`) where the field is any node, and
            // bare where the field is typed (COPY's, INSERT's, UPDATE's relation).
            let range_var = map
                .get("RangeVar")
                .or_else(|| map.contains_key("relname").then_some(v));
            if let Some(r) = range_var {
                let schema = r["schemaname"].as_str().unwrap_or_default().to_lowercase();
                let table = r["relname"].as_str().unwrap_or_default().to_lowercase();
                let alias = r["alias"]["aliasname"].as_str().map(str::to_lowercase);
                scope.add(&schema, &table, alias.as_deref(), masked);
            }
            for value in map.values() {
                collect_relations(value, masked, scope);
            }
        }
        Value::Array(list) => list
            .iter()
            .for_each(|x| collect_relations(x, masked, scope)),
        _ => {}
    }
}

/// The `{"Type": body}` inside a `{"node": ...}` wrapper, or a bare one.
fn node(v: &Value) -> Option<(&str, &Value)> {
    let inner = v.get("node").unwrap_or(v);
    let obj = inner.as_object()?;
    let (k, body) = obj.iter().next()?;
    Some((k.as_str(), body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Vec<MaskedRelation> {
        vec![MaskedRelation {
            schema: "app".into(),
            table: "users".into(),
            columns: vec!["ssn".into()],
        }]
    }

    #[test]
    fn one_parse_gives_what_two_did() {
        let m = users();
        for sql in [
            "SELECT ssn FROM users",
            "SELECT ssn::text FROM users",
            "SELECT 1; DELETE FROM users",
            "SELECT id FROM users WHERE ssn LIKE '1%'",
            "not sql at all",
        ] {
            let (classification, checked) = crate::classify_and_check(sql, &m);
            assert_eq!(classification, crate::classify(sql), "{sql}");
            if matches!(
                classification,
                gatehouse_core::classify::Classification::Statements { .. }
            ) {
                assert_eq!(checked, check(sql, &m), "{sql}");
            } else {
                assert_eq!(checked, Ok(()), "{sql}: refused by its classification");
            }
        }
    }

    #[test]
    fn plain_selection_is_allowed_and_every_other_use_refused() {
        let m = users();
        for ok in [
            "SELECT ssn FROM app.users",
            "SELECT ssn AS x, name FROM users",
            "SELECT * FROM users",
            "SELECT u.* FROM app.users u WHERE u.id = 3 ORDER BY name",
            "SELECT name FROM orders WHERE ssn = '1'", // no masked relation mentioned
            "UPDATE users SET name = 'x' WHERE id = 1",
            "INSERT INTO users (id, ssn) VALUES (1, '123')",
        ] {
            assert_eq!(check(ok, &m), Ok(()), "{ok}");
            assert_eq!(check_reference(ok, &m), Ok(()), "{ok}");
        }
        for bad in [
            "SELECT ssn::text FROM users",                     // 48
            "SELECT CAST(ssn AS varchar(20)) FROM users",      // 48
            "SELECT ssn || '' FROM users",                     // 49
            "SELECT concat(ssn) FROM users",                   // 49
            "SELECT substr(ssn,1,3), right(ssn,4) FROM users", // 51
            "SELECT id FROM users WHERE ssn LIKE '1%'",        // 58
            "SELECT id FROM users ORDER BY ssn",
            "SELECT count(*) FROM users GROUP BY ssn",
            "SELECT ssn::int FROM users",                    // 60
            "INSERT INTO notes(body) SELECT ssn FROM users", // 66
            "SELECT * INTO stash FROM users",                // 15
            "CREATE TABLE t AS SELECT * FROM users",
            "COPY users TO STDOUT", // 23
            "COPY (SELECT ssn FROM users) TO STDOUT",
            "DECLARE c CURSOR FOR SELECT ssn FROM users", // 34
            "SELECT row_to_json(u) FROM users u",
            "SELECT u FROM users u",
            "SELECT * FROM (SELECT ssn FROM users) s",
            "SELECT ssn FROM users UNION SELECT 'x'",
            "WITH x AS (SELECT ssn FROM users) SELECT * FROM x",
            "SELECT to_json(u.*) FROM users u",
            "DELETE FROM users WHERE ssn = '123-45-6789'",
            "SELECT ssn FROM users; SELECT lower(ssn) FROM users",
        ] {
            assert!(check(bad, &m).is_err(), "{bad} was allowed");
            assert!(check_reference(bad, &m).is_err(), "{bad} was allowed");
        }
        let reason = check("SELECT upper(ssn) FROM users", &m).unwrap_err();
        assert!(reason.contains("\"ssn\" is masked"), "{reason}");
    }
}
