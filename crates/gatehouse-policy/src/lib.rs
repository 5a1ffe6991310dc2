//! Gatehouse's policy engine: Cedar policies decide, for every command, allow, deny or review.
//!
//! - Policies are `*.cedar` files validated against the schema this crate ships
//!   ([`SCHEMA`]). An invalid file never replaces a valid policy set.
//! - Each statement maps to one action (`read`, `write`, `ddl`, `admin`, `session`,
//!   `transaction`, `exec`); opening a session is `connect`.
//! - **Review** is expressed in Cedar itself: when a request is denied as it stands but would be
//!   allowed with `context.approved == true`, it needs a human approval. The permit policies
//!   that would allow it name the approvers with `@approvers("group1,group2")` and the number
//!   of approvals with `@approvals("2")`.
//! - With no policy file configured, only members of group `admin` may do anything: the
//!   gateway fails closed.

mod entities;
pub mod load;
mod memo;
mod scope;

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use cedar_policy::{
    Authorizer as CedarAuthorizer, Decision as CedarDecision, PolicyId, PolicySet, Request, Schema,
};
use gatehouse_core::classify::{Classification, Statement};
use gatehouse_core::config::ConnectionConfig;
use gatehouse_core::identity::Identity;
use gatehouse_core::pipeline::{
    Authorizer, CommandStart, Decision, Denial, ReviewNeeded, SessionHandle, Verdict,
};

pub use load::{LoadError, PolicySource};

/// The Cedar schema every policy is validated against.
pub const SCHEMA: &str = include_str!("gatehouse.cedarschema");

/// The policy used when none is configured: administrators only.
pub const DEFAULT_POLICY: &str = "@id(\"gatehouse.default-admin-only\")\npermit(principal in Gatehouse::Group::\"admin\", action, resource);\n";

/// The id given to a denial that no forbid policy decided: nothing permitted it.
pub const NO_PERMIT: &str = "gatehouse.no-permit";

/// A loaded, validated policy set.
pub struct Policies {
    pub set: PolicySet,
    pub schema: Arc<Schema>,
    /// Where the policies came from, for messages.
    pub source: PolicySource,
    /// Each policy with what its scope says, to narrow evaluation.
    index: Vec<scope::Indexed>,
}

impl Policies {
    pub fn new(set: PolicySet, schema: Arc<Schema>, source: PolicySource) -> Self {
        let index = scope::index(&set);
        Policies {
            set,
            schema,
            source,
            index,
        }
    }
}

/// What one session can precompute: its entities and, per action, the policies that can
/// apply to it. Built from one policy set; rebuilt when the policies are reloaded.
pub struct SessionCache {
    policies: Arc<Policies>,
    entities: cedar_policy::Entities,
    principal_uid: cedar_policy::EntityUid,
    resource_uid: cedar_policy::EntityUid,
    /// The session's client address, parsed once, keyed by the address it was parsed from.
    client_ip: std::sync::OnceLock<(IpAddr, cedar_policy::RestrictedExpression)>,
    principal: String,
    groups: Vec<String>,
    subsets: [std::sync::OnceLock<scope::Subset>; scope::ACTIONS.len()],
    /// Evaluations of statements this session has seen (see [`memo`]).
    memo: memo::DecisionMemo,
}

impl SessionCache {
    fn client_ip(&self, ip: IpAddr) -> Option<&cedar_policy::RestrictedExpression> {
        let (cached, expr) = self.client_ip.get_or_init(|| (ip, entities::client_ip(ip)));
        (*cached == ip).then_some(expr)
    }

    fn subset(&self, action: &str) -> Option<&scope::Subset> {
        let i = scope::ACTIONS.iter().position(|a| *a == action)?;
        Some(self.subsets[i].get_or_init(|| {
            scope::subset(&self.policies.index, action, &self.principal, &self.groups)
        }))
    }
}

/// The outcome of one evaluation, with the policies that determined it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub verdict: Verdict,
    /// The action evaluated last (the one that decided a multi-statement command).
    pub action: String,
    pub policies: Vec<String>,
}

/// The policy engine; cheap to share, and reloadable while the gateway runs.
pub struct PolicyEngine {
    current: ArcSwap<Policies>,
    authorizer: CedarAuthorizer,
}

/// Everything a decision needs besides the policies.
pub struct RequestFacts<'a> {
    pub identity: &'a Identity,
    pub connection: &'a ConnectionConfig,
    pub client_ip: IpAddr,
    pub protocol: &'a str,
    pub grants: &'a [String],
}

impl PolicyEngine {
    pub fn new(policies: Policies) -> Self {
        PolicyEngine {
            current: ArcSwap::from_pointee(policies),
            authorizer: CedarAuthorizer::new(),
        }
    }

    /// Replaces the policies (already validated).
    pub fn replace(&self, policies: Policies) {
        self.current.store(Arc::new(policies));
    }

    pub fn current(&self) -> Arc<Policies> {
        self.current.load_full()
    }

    /// Precomputes what a session's decisions need.
    pub fn session_cache(
        &self,
        identity: &Identity,
        connection: &ConnectionConfig,
    ) -> SessionCache {
        SessionCache {
            policies: self.current.load_full(),
            entities: entities::build(identity, connection),
            principal_uid: entities::principal_uid(identity),
            resource_uid: entities::connection_uid(connection),
            client_ip: std::sync::OnceLock::new(),
            principal: identity.principal(),
            groups: identity.groups.clone(),
            subsets: Default::default(),
            memo: memo::DecisionMemo::default(),
        }
    }

    /// `true` when `cache` was built from the policies in force.
    pub fn is_current(&self, cache: &SessionCache) -> bool {
        Arc::ptr_eq(&self.current.load(), &cache.policies)
    }

    /// May this principal open a session on this connection?
    pub fn decide_connect(&self, facts: &RequestFacts<'_>) -> Evaluation {
        let cache = self.session_cache(facts.identity, facts.connection);
        let context = entities::session_context(facts);
        self.decide_one(&cache, facts, "connect", context, None)
    }

    /// Decides a classified command: every statement must be allowed; any denial denies the
    /// whole command, and any review makes it a review.
    pub fn decide(&self, facts: &RequestFacts<'_>, classification: &Classification) -> Evaluation {
        let cache = self.session_cache(facts.identity, facts.connection);
        self.decide_cached(&cache, facts, classification)
    }

    /// [`Self::decide`] with a session's precomputed state.
    pub fn decide_cached(
        &self,
        cache: &SessionCache,
        facts: &RequestFacts<'_>,
        classification: &Classification,
    ) -> Evaluation {
        let statements = match classification {
            Classification::Refused { reason } => {
                return Evaluation {
                    verdict: Verdict::Deny(Denial {
                        policy: "gatehouse.classifier".into(),
                        reason: reason.clone(),
                    }),
                    action: "unknown".into(),
                    policies: vec!["gatehouse.classifier".into()],
                };
            }
            Classification::Statements { statements } => statements,
        };
        let mut review: Option<Evaluation> = None;
        let mut last = Evaluation {
            verdict: Verdict::Allow,
            action: "read".into(),
            policies: Vec::new(),
        };
        for statement in statements {
            let action = statement.kind.action();
            let clock = entities::UtcClock::now();
            let input = memo::DecisionInput {
                action,
                command: &statement.command,
                relations: &statement.relations,
                functions: &statement.functions,
                grants: facts.grants,
                client_ip: facts.client_ip,
                protocol: facts.protocol,
                hour_utc: clock.hour,
                weekday_utc: clock.weekday,
            };
            let e = match cache.memo.get(&input) {
                Some(e) => e,
                None => {
                    let e = self.decide_one(
                        cache,
                        facts,
                        action,
                        entities::statement_context(
                            facts,
                            cache.client_ip(facts.client_ip),
                            statement,
                            false,
                            clock,
                        ),
                        Some((statement, clock)),
                    );
                    cache.memo.put(&input, &e);
                    e
                }
            };
            match &e.verdict {
                Verdict::Deny(_) => return e,
                Verdict::Review(_) => {
                    if review.is_none() {
                        review = Some(e);
                    }
                }
                Verdict::Allow => last = e,
            }
        }
        review.unwrap_or(last)
    }

    fn decide_one(
        &self,
        cache: &SessionCache,
        facts: &RequestFacts<'_>,
        action: &str,
        context: Result<cedar_policy::Context, String>,
        statement: Option<(&Statement, entities::UtcClock)>,
    ) -> Evaluation {
        let context = match context {
            Ok(context) => context,
            Err(e) => return internal_denial(action, &e),
        };
        let policies = &cache.policies;
        let Some(subset) = cache.subset(action) else {
            return internal_denial(action, "unknown action");
        };
        let entities = &cache.entities;
        let principal = &cache.principal_uid;
        let resource = &cache.resource_uid;
        let action_uid = entities::action_uid(action);
        let evaluate = |context: cedar_policy::Context| {
            Request::new(
                principal.clone(),
                action_uid.clone(),
                resource.clone(),
                context,
                None,
            )
            .map(|request| {
                self.authorizer
                    .is_authorized(&request, &subset.set, entities)
            })
            .map_err(|e| e.to_string())
        };
        let response = match evaluate(context) {
            Ok(r) => r,
            Err(e) => return internal_denial(action, &e),
        };
        let reasons = policy_names(&policies.set, response.diagnostics().reason());
        if response.diagnostics().errors().next().is_some() {
            tracing::warn!(action, errors = ?response.diagnostics().errors().map(|e| e.to_string()).collect::<Vec<_>>(), "policy evaluation errors");
        }
        if response.decision() == CedarDecision::Allow {
            return Evaluation {
                verdict: Verdict::Allow,
                action: action.into(),
                policies: reasons,
            };
        }
        // Denied as it stands. Would an approval change that?
        if let Some((statement, clock)) = statement.filter(|_| subset.may_review) {
            let approved = entities::statement_context(
                facts,
                cache.client_ip(facts.client_ip),
                statement,
                true,
                clock,
            );
            if let Ok(approved) = approved
                && let Ok(r) = evaluate(approved)
                && r.decision() == CedarDecision::Allow
            {
                let permitting: Vec<PolicyId> = r.diagnostics().reason().cloned().collect();
                return Evaluation {
                    verdict: Verdict::Review(review_of(&policies.set, &permitting)),
                    action: action.into(),
                    policies: policy_names(&policies.set, permitting.iter()),
                };
            }
        }
        let (policy, reason) = match reasons.first() {
            Some(p) => (p.clone(), format!("{action} is forbidden by policy {p}")),
            None => (
                NO_PERMIT.to_string(),
                format!(
                    "no policy permits {action} on connection \"{}\" for {}",
                    facts.connection.name,
                    facts.identity.principal()
                ),
            ),
        };
        Evaluation {
            verdict: Verdict::Deny(Denial {
                policy: policy.clone(),
                reason,
            }),
            action: action.into(),
            policies: if reasons.is_empty() {
                vec![policy]
            } else {
                reasons
            },
        }
    }
}

fn internal_denial(action: &str, error: &str) -> Evaluation {
    tracing::error!(action, error, "policy request could not be built");
    Evaluation {
        verdict: Verdict::Deny(Denial {
            policy: "gatehouse.policy-error".into(),
            reason: "the policy engine could not evaluate this request".into(),
        }),
        action: action.into(),
        policies: vec!["gatehouse.policy-error".into()],
    }
}

/// A policy's annotation. Cedar's `Policy::annotation` parses the key with its grammar on
/// every call (a fresh lexer, with a regex DFA cache); decisions look annotations up for every
/// statement, so they scan the policy's few annotations instead.
fn annotation<'p>(policy: &'p cedar_policy::Policy, key: &str) -> Option<&'p str> {
    policy
        .annotations()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Policy ids as people wrote them (`@id("...")`), falling back to Cedar's own.
fn policy_names<'a>(set: &PolicySet, ids: impl Iterator<Item = &'a PolicyId>) -> Vec<String> {
    let mut names: Vec<String> = ids
        .map(|id| {
            set.policy(id)
                .and_then(|p| annotation(p, "id").map(str::to_string))
                .unwrap_or_else(|| id.to_string())
        })
        .collect();
    names.sort();
    names
}

/// Approvers and approvals from the annotations of the policies that would permit.
fn review_of(set: &PolicySet, permitting: &[PolicyId]) -> ReviewNeeded {
    let mut approvers = Vec::new();
    let mut approvals = 1u32;
    let mut timeout: Option<std::time::Duration> = None;
    let mut policy = String::new();
    for id in permitting {
        let Some(p) = set.policy(id) else { continue };
        if policy.is_empty() {
            policy = annotation(p, "id")
                .map(str::to_string)
                .unwrap_or_else(|| id.to_string());
        }
        if let Some(groups) = annotation(p, "approvers") {
            approvers.extend(
                groups
                    .split(',')
                    .map(|g| g.trim().to_string())
                    .filter(|g| !g.is_empty()),
            );
        }
        if let Some(n) = annotation(p, "approvals").and_then(|n| n.trim().parse::<u32>().ok()) {
            approvals = approvals.max(n);
        }
        if let Some(t) =
            annotation(p, "timeout").and_then(|t| humantime::parse_duration(t.trim()).ok())
        {
            // Several policies: the shortest wait wins.
            timeout = Some(timeout.map_or(t, |old| old.min(t)));
        }
    }
    approvers.sort();
    approvers.dedup();
    ReviewNeeded {
        policy,
        approvers,
        approvals,
        timeout,
    }
}

/// Adapts the engine to the pipeline's [`Authorizer`] seam.
pub struct PolicyAuthorizer {
    pub engine: Arc<PolicyEngine>,
    /// Just-in-time grants in force, read at every decision (`context.grants`).
    pub grants: Arc<gatehouse_core::grants::GrantBook>,
}

impl Authorizer for PolicyAuthorizer {
    fn authorize(&self, session: &SessionHandle, command: &CommandStart) -> Decision {
        let Some(classification) = &command.classification else {
            return Decision::deny("gatehouse.classifier", "the command was not classified");
        };
        let grants = self
            .grants
            .active(session.identity(), &session.connection().name);
        let facts = RequestFacts {
            identity: session.identity(),
            connection: session.connection(),
            client_ip: session.client_addr().ip(),
            protocol: session.protocol(),
            grants: &grants,
        };
        let evaluation = match session
            .authorizer_state()
            .and_then(|s| s.downcast_ref::<ArcSwap<SessionCache>>())
        {
            Some(slot) => {
                let mut cache = slot.load_full();
                if !self.engine.is_current(&cache) {
                    cache = Arc::new(self.engine.session_cache(facts.identity, facts.connection));
                    slot.store(cache.clone());
                }
                self.engine.decide_cached(&cache, &facts, classification)
            }
            None => self.engine.decide(&facts, classification),
        };
        Decision {
            verdict: evaluation.verdict,
            policies: evaluation.policies,
        }
    }

    fn session_state(
        &self,
        identity: &Identity,
        connection: &ConnectionConfig,
    ) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        let cache = self.engine.session_cache(identity, connection);
        Some(Arc::new(ArcSwap::from_pointee(cache)))
    }

    fn authorize_connect(
        &self,
        identity: &Identity,
        connection: &ConnectionConfig,
        client: std::net::SocketAddr,
        protocol: &str,
    ) -> Verdict {
        self.outside_session(identity, connection, client, protocol, |facts| {
            self.engine.decide_connect(facts).verdict
        })
    }

    fn authorize_outside_session(
        &self,
        identity: &Identity,
        connection: &ConnectionConfig,
        client: std::net::SocketAddr,
        protocol: &str,
        classification: &Classification,
    ) -> Decision {
        let evaluation = self.outside_session(identity, connection, client, protocol, |facts| {
            self.engine.decide(facts, classification)
        });
        Decision {
            verdict: evaluation.verdict,
            policies: evaluation.policies,
        }
    }
}

impl PolicyAuthorizer {
    /// Runs `decide` on the facts of a request made outside a session: the caller's grants on
    /// the connection as they stand now.
    fn outside_session<T>(
        &self,
        identity: &Identity,
        connection: &ConnectionConfig,
        client: std::net::SocketAddr,
        protocol: &str,
        decide: impl FnOnce(&RequestFacts<'_>) -> T,
    ) -> T {
        let grants = self.grants.active(identity, &connection.name);
        decide(&RequestFacts {
            identity,
            connection,
            client_ip: client.ip(),
            protocol,
            grants: &grants,
        })
    }
}
