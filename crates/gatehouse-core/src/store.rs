//! The gateway's persistent state: tokens, sessions and statements.
//!
//! Embedded SQLite by default. Queries are plain runtime SQL in one module, so the same store
//! can later run on PostgreSQL for several replicas without touching callers. Writes on the
//! data path do not come here directly: they go through the [`crate::recorder`], which
//! batches them.

use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::time::Micros;
use crate::tokens::TokenHash;

/// Why the store failed. The message is safe to show: it never contains row data.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("store holds malformed data in {0}")]
    Corrupt(&'static str),
}

/// Rows per multi-row statement INSERT: 12 parameters each, well under SQLite's limit of
/// 32,766 parameters per statement.
const STATEMENT_ROWS_PER_INSERT: usize = 500;

/// Ordered schema changes. Append only: a released migration is never edited.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
    CREATE TABLE service_tokens (
        id          TEXT PRIMARY KEY,
        account     TEXT NOT NULL,
        groups      TEXT NOT NULL,
        token_hash  BLOB NOT NULL UNIQUE,
        hint        TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        created_by  TEXT NOT NULL,
        expires_at  INTEGER,
        revoked_at  INTEGER
    );
    CREATE INDEX service_tokens_account ON service_tokens(account);
    CREATE TABLE sessions (
        id                TEXT PRIMARY KEY,
        protocol          TEXT NOT NULL,
        connection        TEXT NOT NULL,
        principal         TEXT NOT NULL,
        display_name      TEXT NOT NULL,
        identity_kind     TEXT NOT NULL,
        groups            TEXT NOT NULL,
        token_id          TEXT NOT NULL,
        client_addr       TEXT NOT NULL,
        application_name  TEXT,
        started_at        INTEGER NOT NULL,
        ended_at          INTEGER,
        end_reason        TEXT
    );
    CREATE INDEX sessions_started_at ON sessions(started_at);
    CREATE TABLE statements (
        session_id   TEXT NOT NULL,
        seq          INTEGER NOT NULL,
        started_at   INTEGER NOT NULL,
        duration_us  INTEGER,
        text         TEXT NOT NULL,
        params       TEXT,
        rows         INTEGER,
        outcome      TEXT NOT NULL,
        sqlstate     TEXT,
        PRIMARY KEY (session_id, seq)
    );
    "#,
    ),
    (
        2,
        r#"
    ALTER TABLE statements ADD COLUMN decision TEXT;
    ALTER TABLE statements ADD COLUMN policies TEXT;
    "#,
    ),
    (
        3,
        r#"
    ALTER TABLE service_tokens ADD COLUMN allowed_networks TEXT;
    "#,
    ),
    (
        4,
        r#"
    CREATE TABLE reviews (
        id                TEXT PRIMARY KEY,
        kind              TEXT NOT NULL,
        state             TEXT NOT NULL,
        session_id        TEXT,
        connection        TEXT NOT NULL,
        requester         TEXT NOT NULL,
        requester_name    TEXT NOT NULL,
        requester_groups  TEXT NOT NULL,
        client_addr       TEXT,
        text              TEXT NOT NULL,
        params            TEXT,
        text_hash         TEXT NOT NULL,
        params_hash       TEXT NOT NULL,
        classification    TEXT,
        policy            TEXT NOT NULL,
        approvers         TEXT NOT NULL,
        approvals_needed  INTEGER NOT NULL,
        created_at        INTEGER NOT NULL,
        expires_at        INTEGER NOT NULL,
        decided_at        INTEGER,
        reason            TEXT
    );
    CREATE INDEX reviews_state ON reviews(state, created_at);
    CREATE INDEX reviews_session ON reviews(session_id);
    CREATE TABLE review_votes (
        review_id   TEXT NOT NULL,
        voter       TEXT NOT NULL,
        voter_name  TEXT NOT NULL,
        approve     INTEGER NOT NULL,
        reason      TEXT,
        at          INTEGER NOT NULL,
        PRIMARY KEY (review_id, voter)
    );
    "#,
    ),
    (
        5,
        r#"
    CREATE TABLE grants (
        id          TEXT PRIMARY KEY,
        review_id   TEXT NOT NULL,
        issuer      TEXT NOT NULL,
        subject     TEXT NOT NULL,
        connection  TEXT NOT NULL,
        name        TEXT NOT NULL,
        reason      TEXT,
        granted_at  INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL,
        revoked_at  INTEGER,
        revoked_by  TEXT
    );
    CREATE INDEX grants_expires ON grants(expires_at);
    "#,
    ),
    (
        6,
        r#"
    ALTER TABLE statements ADD COLUMN masked TEXT;
    "#,
    ),
];

mod grants;
mod reviews;
pub use grants::GrantRow;
pub use reviews::{NewVote, ReviewRow, ReviewState, VoteRow};

/// Columns read for a token; named, never `*`, so a schema change cannot shift them. Macros,
/// so queries stay `&'static str` (sqlx refuses SQL built at run time).
macro_rules! token_columns {
    () => {
        "id, account, groups, token_hash, hint, created_at, created_by, expires_at, revoked_at, allowed_networks"
    };
}
macro_rules! session_columns {
    () => {
        "s.id, s.protocol, s.connection, s.principal, s.display_name, s.identity_kind, s.groups, \
         s.token_id, s.client_addr, s.application_name, s.started_at, s.ended_at, s.end_reason, \
         (SELECT COUNT(*) FROM statements t WHERE t.session_id = s.id) AS statement_count"
    };
}

/// A service-account token as stored (never the token itself).
#[derive(Debug, Clone, Serialize)]
pub struct TokenRow {
    pub id: String,
    pub account: String,
    pub groups: Vec<String>,
    #[serde(skip)]
    pub token_hash: TokenHash,
    pub hint: String,
    #[serde(with = "crate::time::rfc3339")]
    pub created_at: Micros,
    pub created_by: String,
    #[serde(with = "crate::time::rfc3339::option")]
    pub expires_at: Option<Micros>,
    #[serde(with = "crate::time::rfc3339::option")]
    pub revoked_at: Option<Micros>,
    /// Source networks (CIDR) the token may be used from; empty means anywhere.
    pub allowed_networks: Vec<String>,
}

/// One client session through the gateway.
#[derive(Debug, Clone, Serialize)]
pub struct SessionRow {
    pub id: String,
    pub protocol: String,
    pub connection: String,
    pub principal: String,
    pub display_name: String,
    pub identity_kind: String,
    pub groups: Vec<String>,
    pub token_id: String,
    pub client_addr: String,
    pub application_name: Option<String>,
    #[serde(with = "crate::time::rfc3339")]
    pub started_at: Micros,
    #[serde(with = "crate::time::rfc3339::option")]
    pub ended_at: Option<Micros>,
    pub end_reason: Option<String>,
    /// Filled in by listings; ignored on insert.
    pub statement_count: i64,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Error,
    Denied,
    /// The session ended before the server answered.
    Unknown,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Denied => "denied",
            Outcome::Unknown => "unknown",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "ok" => Outcome::Ok,
            "error" => Outcome::Error,
            "denied" => Outcome::Denied,
            "unknown" => Outcome::Unknown,
            _ => return Err(StoreError::Corrupt("statements.outcome")),
        })
    }
}

/// One recorded statement.
#[derive(Debug, Clone, Serialize)]
pub struct StatementRow {
    pub session_id: String,
    pub seq: i64,
    #[serde(with = "crate::time::rfc3339")]
    pub started_at: Micros,
    pub duration_us: Option<i64>,
    pub text: String,
    pub params: Option<Vec<Option<String>>>,
    pub rows: Option<i64>,
    pub outcome: Outcome,
    pub sqlstate: Option<String>,
    /// `allow`, `deny` or `review`.
    pub decision: Option<String>,
    /// The policies that determined the decision.
    pub policies: Vec<String>,
    /// Values masked in the result, per masking rule.
    #[serde(serialize_with = "masked_as_map")]
    pub masked: Vec<(String, u64)>,
}

fn masked_as_map<S: serde::Serializer>(v: &[(String, u64)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(v.len()))?;
    for (k, n) in v {
        map.serialize_entry(k, n)?;
    }
    map.end()
}

/// Something the data path wants kept; written in batches by the recorder.
#[derive(Debug, Clone)]
pub enum Record {
    SessionOpened(Box<SessionRow>),
    Statement(Box<StatementRow>),
    SessionClosed {
        id: String,
        ended_at: Micros,
        reason: String,
    },
}

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) the store at `url` and brings its schema up to date.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        // Migrate on a connection of its own, before the pool exists, so that no pooled
        // connection ever holds statements prepared against an older schema.
        let migrator = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        Store {
            pool: migrator.clone(),
        }
        .migrate()
        .await?;
        migrator.close().await;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        Ok(Store { pool })
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
        )
        .execute(&self.pool)
        .await?;
        for (version, sql) in MIGRATIONS {
            let mut tx = self.pool.begin().await?;
            let applied: Option<i64> =
                sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = $1")
                    .bind(version)
                    .fetch_optional(&mut *tx)
                    .await?;
            if applied.is_none() {
                sqlx::raw_sql(*sql).execute(&mut *tx).await?;
                sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
                    .bind(version)
                    .bind(crate::time::now_micros())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        }
        Ok(())
    }

    // ---- tokens ----------------------------------------------------------------------------

    pub async fn insert_token(&self, t: &TokenRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO service_tokens (id, account, groups, token_hash, hint, created_at, created_by, expires_at, revoked_at, allowed_networks)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&t.id)
        .bind(&t.account)
        .bind(to_json(&t.groups))
        .bind(&t.token_hash.0[..])
        .bind(&t.hint)
        .bind(t.created_at)
        .bind(&t.created_by)
        .bind(t.expires_at)
        .bind(t.revoked_at)
        .bind(to_json(&t.allowed_networks))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn find_token(&self, hash: &TokenHash) -> Result<Option<TokenRow>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            " FROM service_tokens WHERE token_hash = $1"
        ))
        .bind(&hash.0[..])
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| token_from_row(&r)).transpose()
    }

    pub async fn get_token(&self, id: &str) -> Result<Option<TokenRow>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            " FROM service_tokens WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| token_from_row(&r)).transpose()
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            token_columns!(),
            " FROM service_tokens ORDER BY created_at"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(token_from_row)
        .collect()
    }

    /// Revokes the token with id `selector`, or every live token of the account so named.
    /// Returns how many tokens were revoked.
    pub async fn revoke_tokens(&self, selector: &str, at: Micros) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE service_tokens SET revoked_at = $1
             WHERE revoked_at IS NULL AND (id = $2 OR account = $2)",
        )
        .bind(at)
        .bind(selector)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    // ---- sessions and statements -----------------------------------------------------------

    /// Writes a batch of records in one transaction: one disk sync for many statements.
    pub async fn write_batch(&self, records: &[Record]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // Statements, the bulk of every batch, go in as multi-row INSERTs: each statement sent
        // to SQLite is a round trip to sqlx's SQLite thread, and one per row cost more CPU
        // than the relay itself under load. No constraint ties them to the session rows.
        let mut statements: Vec<&StatementRow> = Vec::new();
        for record in records {
            match record {
                Record::SessionOpened(s) => {
                    sqlx::query(
                        "INSERT INTO sessions (id, protocol, connection, principal, display_name, identity_kind, groups,
                                               token_id, client_addr, application_name, started_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    )
                    .bind(&s.id)
                    .bind(&s.protocol)
                    .bind(&s.connection)
                    .bind(&s.principal)
                    .bind(&s.display_name)
                    .bind(&s.identity_kind)
                    .bind(to_json(&s.groups))
                    .bind(&s.token_id)
                    .bind(&s.client_addr)
                    .bind(&s.application_name)
                    .bind(s.started_at)
                    .execute(&mut *tx)
                    .await?;
                }
                Record::Statement(st) => statements.push(st),
                Record::SessionClosed {
                    id,
                    ended_at,
                    reason,
                } => {
                    sqlx::query("UPDATE sessions SET ended_at = $1, end_reason = $2 WHERE id = $3")
                        .bind(ended_at)
                        .bind(reason)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        for chunk in statements.chunks(STATEMENT_ROWS_PER_INSERT) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO statements (session_id, seq, started_at, duration_us, text, params, rows, outcome, sqlstate, decision, policies, masked) ",
            );
            insert.push_values(chunk, |mut row, st| {
                row.push_bind(&st.session_id)
                    .push_bind(st.seq)
                    .push_bind(st.started_at)
                    .push_bind(st.duration_us)
                    .push_bind(&st.text)
                    .push_bind(st.params.as_ref().map(to_json))
                    .push_bind(st.rows)
                    .push_bind(st.outcome.as_str())
                    .push_bind(&st.sqlstate)
                    .push_bind(&st.decision)
                    .push_bind(to_json(&st.policies))
                    .push_bind((!st.masked.is_empty()).then(|| {
                        let map: std::collections::BTreeMap<&str, u64> =
                            st.masked.iter().map(|(k, n)| (k.as_str(), *n)).collect();
                        to_json(&map)
                    }));
            });
            insert.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The newest sessions first.
    pub async fn list_sessions(&self, limit: i64) -> Result<Vec<SessionRow>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions s ORDER BY s.started_at DESC LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(session_from_row)
        .collect()
    }

    pub async fn get_session(&self, id: &str) -> Result<Option<SessionRow>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions s WHERE s.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| session_from_row(&r)).transpose()
    }

    pub async fn list_statements(&self, session_id: &str) -> Result<Vec<StatementRow>, StoreError> {
        sqlx::query("SELECT session_id, seq, started_at, duration_us, text, params, rows, outcome, sqlstate, decision, policies, masked
             FROM statements WHERE session_id = $1 ORDER BY seq")
            .bind(session_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                let params: Option<String> = r.try_get("params")?;
                let policies: Option<String> = r.try_get("policies")?;
                let masked: Option<String> = r.try_get("masked")?;
                Ok(StatementRow {
                    session_id: r.try_get("session_id")?,
                    seq: r.try_get("seq")?,
                    started_at: r.try_get("started_at")?,
                    duration_us: r.try_get("duration_us")?,
                    text: r.try_get("text")?,
                    params: params
                        .map(|p| serde_json::from_str(&p))
                        .transpose()
                        .map_err(|_| StoreError::Corrupt("statements.params"))?,
                    rows: r.try_get("rows")?,
                    outcome: Outcome::parse(&r.try_get::<String, _>("outcome")?)?,
                    sqlstate: r.try_get("sqlstate")?,
                    decision: r.try_get("decision")?,
                    policies: policies
                        .map(|p| serde_json::from_str(&p))
                        .transpose()
                        .map_err(|_| StoreError::Corrupt("statements.policies"))?
                        .unwrap_or_default(),
                    masked: masked
                        .map(|m| {
                            serde_json::from_str::<std::collections::BTreeMap<String, u64>>(&m)
                        })
                        .transpose()
                        .map_err(|_| StoreError::Corrupt("statements.masked"))?
                        .map(|m| m.into_iter().collect())
                        .unwrap_or_default(),
                })
            })
            .collect()
    }
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

fn groups_from(
    r: &sqlx::sqlite::SqliteRow,
    table: &'static str,
) -> Result<Vec<String>, StoreError> {
    let text: String = r.try_get("groups")?;
    serde_json::from_str(&text).map_err(|_| StoreError::Corrupt(table))
}

fn token_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<TokenRow, StoreError> {
    let hash: Vec<u8> = r.try_get("token_hash")?;
    Ok(TokenRow {
        id: r.try_get("id")?,
        account: r.try_get("account")?,
        groups: groups_from(r, "service_tokens.groups")?,
        token_hash: TokenHash(
            hash.try_into()
                .map_err(|_| StoreError::Corrupt("service_tokens.token_hash"))?,
        ),
        hint: r.try_get("hint")?,
        created_at: r.try_get("created_at")?,
        created_by: r.try_get("created_by")?,
        expires_at: r.try_get("expires_at")?,
        revoked_at: r.try_get("revoked_at")?,
        allowed_networks: r
            .try_get::<Option<String>, _>("allowed_networks")?
            .map(|n| serde_json::from_str(&n))
            .transpose()
            .map_err(|_| StoreError::Corrupt("service_tokens.allowed_networks"))?
            .unwrap_or_default(),
    })
}

fn session_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<SessionRow, StoreError> {
    Ok(SessionRow {
        id: r.try_get("id")?,
        protocol: r.try_get("protocol")?,
        connection: r.try_get("connection")?,
        principal: r.try_get("principal")?,
        display_name: r.try_get("display_name")?,
        identity_kind: r.try_get("identity_kind")?,
        groups: groups_from(r, "sessions.groups")?,
        token_id: r.try_get("token_id")?,
        client_addr: r.try_get("client_addr")?,
        application_name: r.try_get("application_name")?,
        started_at: r.try_get("started_at")?,
        ended_at: r.try_get("ended_at")?,
        end_reason: r.try_get("end_reason")?,
        statement_count: r.try_get("statement_count")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_larger_than_one_insert_keeps_every_statement_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("t.db").display()))
            .await
            .unwrap();
        let session = SessionRow {
            id: "s1".into(),
            protocol: "postgres".into(),
            connection: "appdb".into(),
            principal: "gatehouse/a".into(),
            display_name: "a".into(),
            identity_kind: "service_account".into(),
            groups: vec!["agents".into()],
            token_id: "t".into(),
            client_addr: "127.0.0.1:1".into(),
            application_name: None,
            started_at: 1,
            ended_at: None,
            end_reason: None,
            statement_count: 0,
        };
        let mut batch = vec![Record::SessionOpened(Box::new(session))];
        let n = STATEMENT_ROWS_PER_INSERT * 2 + 7;
        for seq in 1..=n as i64 {
            batch.push(Record::Statement(Box::new(StatementRow {
                session_id: "s1".into(),
                seq,
                started_at: seq,
                duration_us: Some(3),
                text: format!("select {seq}"),
                params: (seq == 2).then(|| vec![Some("x".into()), None]),
                rows: Some(1),
                outcome: Outcome::Ok,
                sqlstate: None,
                decision: Some("allow".into()),
                policies: vec!["p".into()],
                masked: if seq == 3 {
                    vec![("emails".into(), 2)]
                } else {
                    vec![]
                },
            })));
        }
        batch.push(Record::SessionClosed {
            id: "s1".into(),
            ended_at: 9,
            reason: "client_closed".into(),
        });
        store.write_batch(&batch).await.unwrap();
        let rows = store.list_statements("s1").await.unwrap();
        assert_eq!(rows.len(), n);
        assert!(rows.iter().enumerate().all(|(i, r)| r.seq == i as i64 + 1));
        assert_eq!(rows[1].params, Some(vec![Some("x".into()), None]));
        assert_eq!(rows[2].masked, vec![("emails".to_string(), 2)]);
        let s = store.get_session("s1").await.unwrap().unwrap();
        assert_eq!(
            (s.statement_count, s.end_reason.as_deref()),
            (n as i64, Some("client_closed"))
        );
    }
}
