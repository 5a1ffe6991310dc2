//! What a command does, in protocol-independent terms. Protocol adapters fill this in from
//! their own parsers; policy decides on it.

use serde::Serialize;

/// The kind of a statement, from least to most powerful. A statement that does several
/// things has the most powerful kind among them (a SELECT with a DELETE in a CTE is a write).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StatementKind {
    /// Reads data (SELECT, SHOW, COPY TO STDOUT, FETCH).
    Read,
    /// BEGIN, COMMIT, ROLLBACK, SAVEPOINT.
    Transaction,
    /// Changes a harmless session setting (SET, RESET, DISCARD, LISTEN).
    Session,
    /// Changes data (INSERT, UPDATE, DELETE, MERGE, COPY FROM, SELECT INTO, nextval, LOCK).
    Write,
    /// Runs code the gateway cannot inspect (DO, CALL, user-defined functions).
    Exec,
    /// Changes the schema (CREATE, ALTER, DROP, TRUNCATE, ...).
    Ddl,
    /// Administers the server or reaches outside it (roles, ALTER SYSTEM, file and
    /// large-object functions, COPY to or from a server file or program, extensions).
    Admin,
}

impl StatementKind {
    /// The policy action that governs this kind.
    pub fn action(self) -> &'static str {
        match self {
            StatementKind::Read => "read",
            StatementKind::Transaction => "transaction",
            StatementKind::Session => "session",
            StatementKind::Write => "write",
            StatementKind::Exec => "exec",
            StatementKind::Ddl => "ddl",
            StatementKind::Admin => "admin",
        }
    }
}

/// One statement, classified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Statement {
    /// The statement's command, such as `SELECT` or `CREATE TABLE`.
    pub command: String,
    pub kind: StatementKind,
    /// Relations touched, as `schema.table` (unqualified names resolve to `public`).
    pub relations: Vec<String>,
    /// Functions called, as written (`schema.name` when qualified).
    pub functions: Vec<String>,
    /// The name this statement prepares (SQL-level `PREPARE name AS ...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prepares: Option<String>,
    /// The prepared statement this statement runs (SQL-level `EXECUTE name`). The adapter
    /// replaces it with what `PREPARE name` held, when it saw that.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executes: Option<String>,
}

/// The result of classifying one protocol command (which may hold several statements).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Classification {
    /// Every statement was understood.
    Statements { statements: Vec<Statement> },
    /// The gateway refuses this command whatever the policy: it could not be parsed, is of a
    /// kind the gateway does not know, or changes what the gateway relies on (SET ROLE,
    /// search_path, ...). Fail closed.
    Refused { reason: String },
}

impl Classification {
    pub fn refused(reason: impl Into<String>) -> Self {
        Classification::Refused {
            reason: reason.into(),
        }
    }

    /// The statements, or none when refused.
    pub fn statements(&self) -> &[Statement] {
        match self {
            Classification::Statements { statements } => statements,
            Classification::Refused { .. } => &[],
        }
    }

    /// Whether running this command can change nothing that outlives it: every statement is a
    /// read, and none runs code chosen earlier (FETCH runs a cursor's query, SQL-level EXECUTE
    /// a prepared statement's), whose effects this classification does not show. Such a
    /// command may reach the server while its audit intent is still being synced, as long as
    /// nothing of its result reaches the client first (`[audit] overlap_reads`).
    pub fn changes_nothing(&self) -> bool {
        let statements = self.statements();
        !statements.is_empty()
            && statements.iter().all(|s| {
                s.kind == StatementKind::Read && s.executes.is_none() && s.command != "Fetch"
            })
    }
}
