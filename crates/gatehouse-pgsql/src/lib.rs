//! Classifies PostgreSQL statements with PostgreSQL's own grammar (libpg_query).
//!
//! [`classify`] is a pure function: SQL text in, [`Classification`] out. It parses the text,
//! then walks *every* node of the parse tree (through the tree's serde representation, so no
//! node type can be skipped by omission), and:
//!
//! - gives each statement the most powerful kind of anything inside it: a DELETE in a CTE makes
//!   a SELECT a write, `pg_read_file()` makes it admin, a user-defined function makes it exec;
//! - collects the relations (resolved to `schema.table`) and functions it touches;
//! - refuses, whatever the policy, what it cannot parse, statement types it does not know, and
//!   changes to what the gateway relies on (SET ROLE, SET SESSION AUTHORIZATION, search_path,
//!   set_config('role', ...)): fail closed.

mod body;
mod functions;
pub mod masking;
mod stream;

use body::Body;

use gatehouse_core::classify::{Classification, Statement, StatementKind};
use serde_json::Value;

/// Settings a client may not change: they change who the session is, how SQL parses, or how
/// relation names resolve, and the gateway's decisions rely on all three.
const PROTECTED_SETTINGS: &[&str] = &[
    "role",
    "session_authorization",
    "search_path",
    "default_transaction_read_only",
    "transaction_read_only",
    "session_replication_role",
    "standard_conforming_strings",
    "client_encoding",
    "backslash_quote",
    "escape_string_warning",
    "session characteristics",
];

/// `VariableSetStmt.kind` values that reset a setting to its default (harmless).
const VAR_RESET: i64 = 5;
const VAR_RESET_ALL: i64 = 6;

/// Classifies SQL text that may hold several statements.
pub fn classify(sql: &str) -> Classification {
    match pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) {
        Ok(parsed) => classify_parsed(&parsed),
        Err(e) => Classification::refused(format!("the statement cannot be parsed: {e}")),
    }
}

/// [`classify`] and [`masking::check`] on one parse and one walk of `sql`: the simple
/// protocol's texts carry their literals and rarely repeat, so nothing is cached for them and
/// each pass over the tree counts. A text that cannot be parsed is refused by its
/// classification.
pub fn classify_and_check(
    sql: &str,
    masked: &[masking::MaskedRelation],
) -> (Classification, Result<(), String>) {
    let parsed = match pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) {
        Ok(parsed) => parsed,
        Err(e) => {
            return (
                Classification::refused(format!("the statement cannot be parsed: {e}")),
                Ok(()),
            );
        }
    };
    if masked.is_empty() {
        return (classify_parsed(&parsed), Ok(()));
    }
    let mut statements = Vec::new();
    let mut checked = Ok(());
    for raw in &parsed.protobuf.stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
            return (
                Classification::refused("a statement has an empty parse tree"),
                Ok(()),
            );
        };
        let mut facts = masking::MaskFacts::default();
        match stream::classify_statement_for_masking(node, &mut facts) {
            Ok(s) => statements.push(s),
            Err(reason) => return (Classification::refused(reason), Ok(())),
        }
        if checked.is_ok() {
            checked = masking::check_facts(&facts, masked);
        }
    }
    (Classification::Statements { statements }, checked)
}

fn classify_parsed(parsed: &pg_query::ParseResult) -> Classification {
    let mut statements = Vec::new();
    for raw in &parsed.protobuf.stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
            return Classification::refused("a statement has an empty parse tree");
        };
        match stream::classify_statement(node) {
            Ok(s) => statements.push(s),
            Err(reason) => return Classification::refused(reason),
        }
    }
    Classification::Statements { statements }
}

/// The same classification through a `serde_json::Value` of the whole tree: slower, simpler,
/// and kept as the reference the streaming walker is tested against.
#[doc(hidden)]
pub fn classify_reference(sql: &str) -> Classification {
    let parsed = match pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) {
        Ok(p) => p,
        Err(e) => return Classification::refused(format!("the statement cannot be parsed: {e}")),
    };
    let tree = match serde_json::to_value(&parsed.protobuf) {
        Ok(t) => t,
        Err(_) => return Classification::refused("the statement's parse tree cannot be read"),
    };
    let mut statements = Vec::new();
    for raw in tree["stmts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let Some((node_type, body)) = single_node(&raw["stmt"]["node"]) else {
            return Classification::refused("a statement has an empty parse tree");
        };
        match classify_statement(node_type, body) {
            Ok(s) => statements.push(s),
            Err(reason) => return Classification::refused(reason),
        }
    }
    Classification::Statements { statements }
}

/// The `{"Type": body}` object of a node.
fn single_node(v: &Value) -> Option<(&str, &Value)> {
    let obj = v.as_object()?;
    let (k, v) = obj.iter().next()?;
    Some((k.as_str(), v))
}

/// What the walk of one statement found.
pub(crate) struct Findings {
    kind: StatementKind,
    relations: Vec<(String, String)>,
    ctes: Vec<String>,
    functions: Vec<String>,
}

impl Findings {
    pub(crate) fn new(kind: StatementKind) -> Self {
        Findings {
            kind,
            relations: Vec::new(),
            ctes: Vec::new(),
            functions: Vec::new(),
        }
    }

    pub(crate) fn escalate(&mut self, kind: StatementKind) {
        self.kind = self.kind.max(kind);
    }

    /// The statement these findings describe, for a top-level node `node_type` with `body`.
    pub(crate) fn into_statement(self, node_type: &str, body: &impl Body) -> Statement {
        let ctes = self.ctes;
        let mut relations: Vec<String> = self
            .relations
            .into_iter()
            .filter(|(schema, name)| !(schema.is_empty() && ctes.contains(name)))
            .map(|(schema, name)| {
                let schema = if schema.is_empty() {
                    "public".to_string()
                } else {
                    schema
                };
                format!("{schema}.{name}")
            })
            .collect();
        relations.sort();
        relations.dedup();
        let mut functions = self.functions;
        functions.sort();
        functions.dedup();
        let name = || body.str_field("name").map(str::to_string);
        Statement {
            command: command_name(node_type, body),
            kind: self.kind,
            relations,
            functions,
            prepares: (node_type == "PrepareStmt").then(name).flatten(),
            executes: (node_type == "ExecuteStmt").then(name).flatten(),
        }
    }
}

fn classify_statement(node_type: &str, body: &Value) -> Result<Statement, String> {
    let base = statement_kind(node_type, body)?.ok_or_else(|| unknown_statement(node_type))?;
    let mut f = Findings::new(base);
    visit(
        node_type,
        body,
        function_of(node_type, body).as_ref(),
        &mut f,
    )?;
    walk(body, &mut f)?;
    Ok(f.into_statement(node_type, body))
}

pub(crate) fn unknown_statement(node_type: &str) -> String {
    format!("Gatehouse does not know statement type {node_type}, so it refuses it")
}

/// A FuncCall's name and its first argument when that is a string constant (Value walker).
fn function_of(node_type: &str, body: &Value) -> Option<(String, Option<String>)> {
    (node_type == "FuncCall").then(|| {
        let first = body["args"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|a| a["node"]["AConst"]["val"]["Sval"]["sval"].as_str())
            .map(str::to_string);
        (qualified_name(&body["funcname"]), first)
    })
}

/// Visits every node below `v`.
///
/// In the serialized tree, values of PostgreSQL's generic `Node *` fields carry their type as a
/// key (`{"SelectStmt": {...}}`); fields of a fixed struct type (a DELETE's `relation`, a
/// SELECT's `into_clause`) do not. Statements are always generic nodes, so nested statements
/// are always seen by name; relations and INTO clauses are recognized by field and shape.
fn walk(v: &Value, f: &mut Findings) -> Result<(), String> {
    match v {
        Value::Object(map) => {
            if map.contains_key("relname") && map.contains_key("relpersistence") {
                visit("RangeVar", v, None, f)?;
            }
            if map.contains_key("funcname") && map.contains_key("func_variadic") {
                visit("FuncCall", v, function_of("FuncCall", v).as_ref(), f)?;
            }
            if map.get("into_clause").is_some_and(|v| !v.is_null()) {
                f.escalate(StatementKind::Write);
            }
            for (key, child) in map {
                // Node types are CamelCase; field names are snake_case.
                if key.starts_with(|c: char| c.is_ascii_uppercase()) {
                    if let Some(kind) = statement_kind(key, child)? {
                        f.escalate(kind);
                    }
                    visit(key, child, function_of(key, child).as_ref(), f)?;
                }
                walk(child, f)?;
            }
        }
        Value::Array(items) => {
            for item in items {
                walk(item, f)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// What one node means for the statement, beyond its statement kind. `function` is a
/// FuncCall's name and its first argument if that is a string constant.
pub(crate) fn visit(
    node_type: &str,
    body: &impl Body,
    function: Option<&(String, Option<String>)>,
    f: &mut Findings,
) -> Result<(), String> {
    match node_type {
        "RangeVar" => {
            let name = body.str_field("relname").unwrap_or_default();
            if !name.is_empty() {
                let schema = body.str_field("schemaname").unwrap_or_default();
                f.relations.push((schema.to_string(), name.to_string()));
            }
        }
        "CommonTableExpr" => {
            if let Some(name) = body.str_field("ctename") {
                f.ctes.push(name.to_string());
            }
        }
        // FOR UPDATE/SHARE takes row locks: PostgreSQL refuses it in a read-only transaction,
        // so it is a write.
        "SelectStmt" if body.has_items("locking_clause") => {
            f.escalate(StatementKind::Write);
        }
        "FuncCall" => {
            if let Some((name, first_arg)) = function {
                let kind = functions::kind_of(name, first_arg.as_deref())?;
                f.escalate(kind);
                f.functions.push(name.clone());
            }
        }
        "VariableSetStmt" => {
            let name = body
                .str_field("name")
                .unwrap_or_default()
                .to_ascii_lowercase();
            let kind = body.int_field("kind").unwrap_or(0);
            let resets = kind == VAR_RESET || kind == VAR_RESET_ALL;
            if !resets && PROTECTED_SETTINGS.contains(&name.as_str()) {
                return Err(format!(
                    "changing \"{name}\" is not allowed through Gatehouse: the gateway's decisions rely on it"
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

/// A dotted name from a list of String nodes (`funcname`, `names`).
fn qualified_name(list: &Value) -> String {
    list.as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|n| n["node"]["String"]["sval"].as_str())
        .collect::<Vec<_>>()
        .join(".")
}

fn command_name(node_type: &str, body: &impl Body) -> String {
    let name = match node_type {
        "SelectStmt" => "SELECT",
        "InsertStmt" => "INSERT",
        "UpdateStmt" => "UPDATE",
        "DeleteStmt" => "DELETE",
        "MergeStmt" => "MERGE",
        "CopyStmt" if body.bool_field("is_from") == Some(true) => "COPY FROM",
        "CopyStmt" => "COPY TO",
        "ExplainStmt" => "EXPLAIN",
        "TransactionStmt" => "TRANSACTION",
        "VariableSetStmt" => "SET",
        "VariableShowStmt" => "SHOW",
        "CreateStmt" => "CREATE TABLE",
        "CreateTableAsStmt" => "CREATE TABLE AS",
        "DropStmt" => "DROP",
        "AlterTableStmt" => "ALTER TABLE",
        "TruncateStmt" => "TRUNCATE",
        "DoStmt" => "DO",
        "CallStmt" => "CALL",
        other => return other.trim_end_matches("Stmt").to_string(),
    };
    name.to_string()
}

/// The kind a statement node has by itself, `Ok(None)` for nodes that are not statements,
/// and an error for statements the gateway refuses outright.
pub(crate) fn statement_kind(
    node_type: &str,
    body: &impl Body,
) -> Result<Option<StatementKind>, String> {
    use StatementKind::*;
    let kind = match node_type {
        "SelectStmt" | "VariableShowStmt" | "FetchStmt" | "ClosePortalStmt" | "ExplainStmt"
        | "DeclareCursorStmt" | "PrepareStmt" => Read,
        "TransactionStmt" | "ConstraintsSetStmt" => Transaction,
        "VariableSetStmt" if body.str_field("name") == Some("TRANSACTION") => Transaction,
        "VariableSetStmt" | "DiscardStmt" | "DeallocateStmt" | "ListenStmt" | "UnlistenStmt" => {
            Session
        }
        "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" | "LockStmt" | "NotifyStmt"
        | "RefreshMatViewStmt" => Write,
        "CopyStmt" => {
            let to_server_file = body.str_field("filename").is_some_and(|f| !f.is_empty());
            if to_server_file || body.bool_field("is_program") == Some(true) {
                Admin
            } else if body.bool_field("is_from") == Some(true) {
                Write
            } else {
                Read
            }
        }
        // SQL-level EXECUTE runs a statement prepared earlier in the session, which this
        // function cannot see: it is treated as code execution.
        "DoStmt" | "CallStmt" | "ExecuteStmt" => Exec,
        "CreateStmt"
        | "AlterTableStmt"
        | "DropStmt"
        | "IndexStmt"
        | "ViewStmt"
        | "CreateSeqStmt"
        | "AlterSeqStmt"
        | "CreateFunctionStmt"
        | "AlterFunctionStmt"
        | "RenameStmt"
        | "CommentStmt"
        | "TruncateStmt"
        | "CreateTableAsStmt"
        | "CreateSchemaStmt"
        | "CreateTrigStmt"
        | "CreateEnumStmt"
        | "CreateDomainStmt"
        | "AlterDomainStmt"
        | "CompositeTypeStmt"
        | "CreateRangeStmt"
        | "AlterEnumStmt"
        | "DefineStmt"
        | "AlterObjectSchemaStmt"
        | "CreatePolicyStmt"
        | "AlterPolicyStmt"
        | "RuleStmt"
        | "CreateStatsStmt"
        | "AlterStatsStmt"
        | "AlterTableMoveAllStmt"
        | "CreateCastStmt"
        | "CreateOpClassStmt"
        | "CreateOpFamilyStmt"
        | "AlterOpFamilyStmt"
        | "CreateConversionStmt"
        | "CreateTransformStmt"
        | "AlterCollationStmt"
        | "AlterTypeStmt"
        | "AlterOperatorStmt"
        | "CreateForeignTableStmt" => Ddl,
        "CreateRoleStmt"
        | "AlterRoleStmt"
        | "AlterRoleSetStmt"
        | "DropRoleStmt"
        | "GrantStmt"
        | "GrantRoleStmt"
        | "AlterDefaultPrivilegesStmt"
        | "AlterSystemStmt"
        | "CreatedbStmt"
        | "AlterDatabaseStmt"
        | "AlterDatabaseSetStmt"
        | "AlterDatabaseRefreshCollStmt"
        | "DropdbStmt"
        | "VacuumStmt"
        | "ClusterStmt"
        | "ReindexStmt"
        | "CheckPointStmt"
        | "LoadStmt"
        | "CreateTableSpaceStmt"
        | "DropTableSpaceStmt"
        | "AlterTableSpaceOptionsStmt"
        | "CreateExtensionStmt"
        | "AlterExtensionStmt"
        | "AlterExtensionContentsStmt"
        | "CreateFdwStmt"
        | "AlterFdwStmt"
        | "CreateForeignServerStmt"
        | "AlterForeignServerStmt"
        | "CreateUserMappingStmt"
        | "AlterUserMappingStmt"
        | "DropUserMappingStmt"
        | "ImportForeignSchemaStmt"
        | "CreatePublicationStmt"
        | "AlterPublicationStmt"
        | "CreateSubscriptionStmt"
        | "AlterSubscriptionStmt"
        | "DropSubscriptionStmt"
        | "CreateEventTrigStmt"
        | "AlterEventTrigStmt"
        | "SecLabelStmt"
        | "DropOwnedStmt"
        | "ReassignOwnedStmt"
        | "CreatePLangStmt"
        | "CreateAmStmt"
        | "AlterOwnerStmt" => Admin,
        // Any other node whose name says it is a statement is one we do not know.
        other if other.ends_with("Stmt") && other != "RawStmt" => {
            return Err(format!(
                "Gatehouse does not know statement type {other}, so it refuses it"
            ));
        }
        _ => return Ok(None),
    };
    Ok(Some(kind))
}
