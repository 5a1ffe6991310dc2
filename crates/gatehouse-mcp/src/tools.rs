//! The tools. Each answers with structured JSON a model can act on; refusals are tool errors
//! (`isError`) that say why and what to do, never protocol failures.

use std::sync::Arc;
use std::time::Duration;

use gatehouse_core::classify::{Classification, Statement, StatementKind};
use gatehouse_core::config::{ConnectionConfig, MaskTarget};
use gatehouse_core::exec::{ExecOutcome, ExecRequest};
use gatehouse_core::grants::GrantRequest;
use gatehouse_core::identity::Identity;
use gatehouse_core::masking::glob_matches;
use gatehouse_core::pipeline::Verdict;
use gatehouse_core::reviews::Reviews;
use rmcp::RoleServer;
use rmcp::handler::server::common::Extension;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::CallToolResult;
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, ServerHandler, tool, tool_handler, tool_router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::McpState;
use crate::auth::ClientAddr;

/// The catalog query behind `describe`.
const DESCRIBE_SQL: &str = "SELECT table_schema, table_name, column_name, data_type \
     FROM information_schema.columns \
     WHERE table_schema NOT IN ('pg_catalog', 'information_schema') \
     ORDER BY table_schema, table_name, ordinal_position";

/// Most rows a `query` returns, whatever it asks for.
const MAX_QUERY_ROWS: usize = 1000;

#[derive(Clone)]
pub struct GatehouseTools {
    state: McpState,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionArgs {
    /// The connection's name, as `list_connections` shows it.
    pub connection: String,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryArgs {
    /// The connection's name.
    pub connection: String,
    /// One SQL statement. Omit it when running an approved review.
    pub sql: Option<String>,
    /// Most rows to return (default 100, at most 1000).
    pub max_rows: Option<usize>,
    /// Run the statement of this approved review (from an earlier `query` that needed review).
    pub review_id: Option<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessArgs {
    pub connection: String,
    /// The grant's name, as configured by the administrators.
    pub grant: String,
    /// How long, such as "30m".
    pub duration: String,
    /// What the access is for; approvers read it.
    pub reason: String,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewArgs {
    pub review_id: String,
}

type ToolResult = Result<CallToolResult, ErrorData>;

fn caller(parts: &http::request::Parts) -> Result<(Identity, std::net::SocketAddr), ErrorData> {
    let identity = parts.extensions.get::<Identity>().cloned().ok_or_else(|| {
        ErrorData::invalid_request("the request carries no verified identity", None)
    })?;
    let client = parts
        .extensions
        .get::<ClientAddr>()
        .map(|c| c.0)
        .unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    Ok((identity, client))
}

/// A plain `SELECT` of every column of `schema.table`, as the classifier would describe it.
fn read_of(schema: &str, table: &str) -> Classification {
    Classification::Statements {
        statements: vec![Statement {
            command: "SELECT".into(),
            kind: StatementKind::Read,
            relations: vec![format!("{schema}.{table}")],
            functions: Vec::new(),
            prepares: None,
            executes: None,
        }],
    }
}

fn refused(status: &str, message: String) -> ToolResult {
    Ok(CallToolResult::structured_error(
        json!({ "status": status, "message": message }),
    ))
}

#[tool_router]
impl GatehouseTools {
    pub fn new(state: McpState) -> Self {
        GatehouseTools { state }
    }

    #[tool(description = "List the database connections you may use, with their kind and tags.")]
    async fn list_connections(
        &self,
        Extension(parts): Extension<http::request::Parts>,
        context: RequestContext<RoleServer>,
    ) -> ToolResult {
        let (identity, client) = caller(&parts)?;
        self.record_call(
            "list_connections",
            &identity,
            &context,
            serde_json::json!({}),
        );
        let connections: Vec<Value> = self
            .state
            .config
            .connections
            .iter()
            .filter(|c| {
                self.state
                    .pipeline
                    .authorize_connect(&identity, c, client, "mcp")
                    == Verdict::Allow
            })
            .map(|c| json!({ "name": c.name, "kind": "postgres", "tags": c.tags }))
            .collect();
        Ok(CallToolResult::structured(
            json!({ "connections": connections }),
        ))
    }

    #[tool(
        description = "Describe a connection: the tables you may read (access: allowed, or needs_approval), their columns, with masked columns marked (their values come back masked)."
    )]
    async fn describe(
        &self,
        Extension(parts): Extension<http::request::Parts>,
        context: RequestContext<RoleServer>,
        Parameters(args): Parameters<ConnectionArgs>,
    ) -> ToolResult {
        let (identity, client) = caller(&parts)?;
        self.record_call(
            "describe",
            &identity,
            &context,
            serde_json::json!({ "connection": args.connection }),
        );
        let Some(connection) = self.connection_for(&identity, client, &args.connection) else {
            return refused(
                "denied",
                format!(
                    "you may not use a connection named \"{}\"; call list_connections",
                    args.connection
                ),
            );
        };
        let Some(runner) = self.state.runners.get(&connection.kind).cloned() else {
            return refused("error", "this connection's kind cannot be described".into());
        };
        let result = match runner
            .run(connection.clone(), DESCRIBE_SQL, 20_000, None)
            .await
        {
            Ok(r) => r,
            Err(e) => return refused("error", e.message),
        };
        let masking = self.state.pipeline.masking_for(&identity, &connection.name);
        let is_masked = |schema: &str, table: &str, column: &str| {
            masking.as_ref().is_some_and(|m| {
                m.column_rules.iter().any(|r| match &r.target {
                    MaskTarget::Column {
                        schema: s,
                        table: t,
                        column: c,
                    } => s == schema && t == table && c == &column.to_lowercase(),
                    MaskTarget::ColumnPattern(p) => glob_matches(p, &column.to_lowercase()),
                    MaskTarget::Detector(_) => false,
                })
            })
        };
        // Only tables the caller may read show, each with whether reading it needs approval:
        // policy decides a plain read of each as it would decide the caller's own query.
        let access = |schema: &str, table: &str| {
            let read = read_of(schema, table);
            match self
                .state
                .pipeline
                .authorize_outside_session(&identity, &connection, client, "mcp", &read)
                .verdict
            {
                Verdict::Allow => Some("allowed"),
                Verdict::Review(_) => Some("needs_approval"),
                Verdict::Deny(_) => None,
            }
        };
        let mut tables: Vec<Value> = Vec::new();
        let mut hidden = 0usize;
        let mut current_hidden: Option<(String, String)> = None;
        for row in result.results.iter().flat_map(|r| r.rows.iter()) {
            let [Some(schema), Some(table), Some(column), Some(kind)] = row.as_slice() else {
                continue;
            };
            if current_hidden
                .as_ref()
                .is_some_and(|(s, t)| s == schema && t == table)
            {
                continue;
            }
            let entry =
                json!({ "name": column, "type": kind, "masked": is_masked(schema, table, column) });
            match tables.last_mut() {
                Some(t) if t["schema"] == schema.as_str() && t["table"] == table.as_str() => {
                    if let Some(cols) = t["columns"].as_array_mut() {
                        cols.push(entry);
                    }
                }
                _ => match access(schema, table) {
                    Some(access) => {
                        current_hidden = None;
                        tables.push(json!({ "schema": schema, "table": table, "access": access, "columns": [entry] }));
                    }
                    None => {
                        hidden += 1;
                        current_hidden = Some((schema.clone(), table.clone()));
                    }
                },
            }
        }
        let detectors: Vec<&str> = masking
            .as_ref()
            .map(|m| m.values.rules().iter().map(|r| r.detector.name()).collect())
            .unwrap_or_default();
        Ok(CallToolResult::structured(json!({
            "connection": connection.name,
            "tables": tables,
            "tables_not_readable": hidden,
            "masked_value_kinds": detectors,
        })))
    }

    #[tool(
        description = "Run one SQL statement through Gatehouse (policy, approvals, masking, recording) and get its rows as JSON. If it needs human approval, the result says so with a review_id: call review_status, and once approved call query again with that review_id."
    )]
    async fn query(
        &self,
        Extension(parts): Extension<http::request::Parts>,
        context: RequestContext<RoleServer>,
        Parameters(args): Parameters<QueryArgs>,
    ) -> ToolResult {
        let (identity, client) = caller(&parts)?;
        if args.sql.is_none() && args.review_id.is_none() {
            return Err(ErrorData::invalid_params(
                "give `sql`, or `review_id` of an approved review",
                None,
            ));
        }
        let Some(connection) = self.state.config.connection(&args.connection).cloned() else {
            return refused(
                "error",
                format!(
                    "there is no connection named \"{}\"; call list_connections",
                    args.connection
                ),
            );
        };
        let Some(runner) = self.state.runners.get(&connection.kind).cloned() else {
            return refused("error", "this connection's kind cannot run queries".into());
        };
        // The client's own name and version from its handshake, else its HTTP user agent.
        let client_name = context
            .peer
            .peer_info()
            .map(|info| format!("{}/{}", info.client_info.name, info.client_info.version))
            .or_else(|| {
                parts
                    .headers
                    .get("user-agent")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            });
        let application = match client_name {
            Some(name) => format!(
                "mcp:{}",
                name.chars()
                    .filter(|c| !c.is_control())
                    .take(80)
                    .collect::<String>()
            ),
            None => "mcp".to_string(),
        };
        let outcome = self
            .state
            .pipeline
            .exec(
                runner.as_ref(),
                ExecRequest {
                    identity: &identity,
                    client_addr: client,
                    connection: &connection.name,
                    text: args.sql.as_deref(),
                    review: args.review_id.as_deref(),
                    max_rows: args.max_rows.unwrap_or(100).min(MAX_QUERY_ROWS),
                    application,
                },
            )
            .await;
        match outcome {
            Err(e) => refused("error", e.to_string()),
            Ok(ExecOutcome::Done(result)) => Ok(CallToolResult::structured(
                json!({ "status": "ok", "results": result.results }),
            )),
            Ok(ExecOutcome::Held(review)) => Ok(CallToolResult::structured(json!({
                "status": "review_required",
                "review_id": review.id,
                "approvals_needed": review.approvals_needed,
                "approver_groups": review.approvers,
                "expires_at": gatehouse_core::time::format_rfc3339(review.expires_at),
                "message": format!(
                    "This statement needs approval (policy {}). Nothing was run. Ask a person in {} to approve review {}; call review_status to check; once it is approved, call query with review_id \"{}\" (and no sql) to run it.",
                    review.policy,
                    if review.approvers.is_empty() { "group admin".to_string() } else { review.approvers.join(" or ") },
                    review.id,
                    review.id
                ),
            }))),
            Ok(ExecOutcome::Denied(d)) => refused(
                "denied",
                format!(
                    "Gatehouse denied this statement: {} (policy {})",
                    d.reason, d.policy
                ),
            ),
            Ok(ExecOutcome::Failed(e)) => Ok(CallToolResult::structured_error(json!({
                "status": "error",
                "sqlstate": e.code,
                "message": e.message,
            }))),
        }
    }

    #[tool(
        description = "Ask for just-in-time access: a named grant on a connection for a while (such as 30m). A person approves it; then your statements are judged with it until it expires."
    )]
    async fn request_access(
        &self,
        Extension(parts): Extension<http::request::Parts>,
        context: RequestContext<RoleServer>,
        Parameters(args): Parameters<AccessArgs>,
    ) -> ToolResult {
        let (identity, client) = caller(&parts)?;
        self.record_call("request_access", &identity, &context, serde_json::json!({ "connection": args.connection, "grant": args.grant, "duration": args.duration, "reason": args.reason }));
        let Some(connection) = self.state.config.connection(&args.connection) else {
            return refused(
                "error",
                format!("there is no connection named \"{}\"", args.connection),
            );
        };
        let Ok(duration) = humantime::parse_duration(&args.duration) else {
            return Err(ErrorData::invalid_params(
                format!(
                    "duration \"{}\" is not a duration such as 30m",
                    args.duration
                ),
                None,
            ));
        };
        let definition = self
            .state
            .config
            .grants
            .iter()
            .find(|g| g.name == args.grant);
        match self
            .state
            .reviews
            .request_grant(
                &identity,
                GrantRequest {
                    client_addr: client.to_string(),
                    connection,
                    definition,
                    name: &args.grant,
                    duration: duration.min(Duration::from_secs(30 * 86400)),
                    reason: &args.reason,
                },
            )
            .await
        {
            Ok(review) => Ok(CallToolResult::structured(json!({
                "status": "review_required",
                "review_id": review.id,
                "message": format!("Access requested. A person must approve review {}; call review_status to follow it.", review.id),
            }))),
            Err(e) => refused("error", e.to_string()),
        }
    }

    #[tool(
        description = "The state of a review (pending, approved, denied, expired, abandoned, executed), with the votes so far."
    )]
    async fn review_status(
        &self,
        Extension(parts): Extension<http::request::Parts>,
        context: RequestContext<RoleServer>,
        Parameters(args): Parameters<ReviewArgs>,
    ) -> ToolResult {
        let (identity, _) = caller(&parts)?;
        self.record_call(
            "review_status",
            &identity,
            &context,
            serde_json::json!({ "review_id": args.review_id }),
        );
        let _ = self.state.reviews.expire_overdue().await;
        let review = match self.state.pipeline_store_review(&args.review_id).await {
            Ok(Some(r)) if Reviews::may_see(&r, &identity) => r,
            Ok(_) => {
                return refused(
                    "error",
                    format!("no review \"{}\" that you may see", args.review_id),
                );
            }
            Err(e) => return refused("error", e),
        };
        let approvals = review.votes.iter().filter(|v| v.approve).count();
        Ok(CallToolResult::structured(json!({
            "review_id": review.id,
            "kind": review.kind,
            "state": review.state,
            "approvals": approvals,
            "approvals_needed": review.approvals_needed,
            "reason": review.reason,
            "expires_at": gatehouse_core::time::format_rfc3339(review.expires_at),
            "next": match review.state {
                gatehouse_core::store::ReviewState::Approved if review.kind == "exec" =>
                    format!("approved: call query with review_id \"{}\"", review.id),
                gatehouse_core::store::ReviewState::Pending => "still waiting for approvers".to_string(),
                _ => "nothing more to do with this review".to_string(),
            },
        })))
    }
}

#[tool_handler]
impl ServerHandler for GatehouseTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("gatehouse", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Gatehouse gives you governed access to databases. Call list_connections, then \
                 describe a connection, then query it with one SQL statement at a time. Results \
                 may be masked. A statement that needs human approval returns a review_id: call \
                 review_status, and query again with that review_id once it is approved.",
            )
    }
}

impl GatehouseTools {
    /// Keeps a tool call that runs no statement (statements are recorded by the pipeline) in
    /// the audit log, with the client and the arguments.
    fn record_call(
        &self,
        tool: &str,
        identity: &Identity,
        context: &RequestContext<RoleServer>,
        arguments: Value,
    ) {
        let client = context
            .peer
            .peer_info()
            .map(|i| format!("{}/{}", i.client_info.name, i.client_info.version));
        self.state
            .audit
            .append_detached(gatehouse_audit::Event::new(
                "mcp.tool_call",
                Some(&identity.principal()),
                json!({ "tool": tool, "client": client, "arguments": arguments }),
            ));
    }

    /// The connection, if `identity` may connect to it.
    fn connection_for(
        &self,
        identity: &Identity,
        client: std::net::SocketAddr,
        name: &str,
    ) -> Option<Arc<ConnectionConfig>> {
        let c = self.state.pipeline.connection(name)?;
        (self
            .state
            .pipeline
            .authorize_connect(identity, &c, client, "mcp")
            == Verdict::Allow)
            .then_some(c)
    }
}
