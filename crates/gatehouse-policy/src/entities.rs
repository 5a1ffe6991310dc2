//! Turns Gatehouse's identity, connection and command into Cedar entities and context.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression,
};
use gatehouse_core::classify::Statement;
use gatehouse_core::config::ConnectionConfig;
use gatehouse_core::identity::Identity;

use crate::RequestFacts;

fn uid(type_name: &str, id: &str) -> EntityUid {
    // The type names are constants of the shipped schema, so parsing cannot fail.
    let t = EntityTypeName::from_str(type_name).unwrap_or_else(|_| unreachable!("valid type name"));
    EntityUid::from_type_name_and_id(t, EntityId::new(id))
}

pub fn principal_uid(identity: &Identity) -> EntityUid {
    uid("Gatehouse::Principal", &identity.principal())
}

pub fn group_uid(group: &str) -> EntityUid {
    uid("Gatehouse::Group", group)
}

pub fn connection_uid(connection: &ConnectionConfig) -> EntityUid {
    uid("Gatehouse::Connection", &connection.name)
}

/// The uids of every action, parsed once: Cedar's name parser is far too slow for the
/// per-statement path.
static ACTION_UIDS: std::sync::LazyLock<Vec<EntityUid>> = std::sync::LazyLock::new(|| {
    crate::scope::ACTIONS
        .iter()
        .map(|a| uid("Gatehouse::Action", a))
        .collect()
});

pub fn action_uid(action: &str) -> EntityUid {
    crate::scope::ACTIONS
        .iter()
        .position(|a| *a == action)
        .map(|i| ACTION_UIDS[i].clone())
        .unwrap_or_else(|| uid("Gatehouse::Action", action))
}

fn string(s: &str) -> RestrictedExpression {
    RestrictedExpression::new_string(s.to_string())
}

/// The principal (with its groups as parents), its groups, and the connection with its tags.
pub fn build(identity: &Identity, connection: &ConnectionConfig) -> Entities {
    let groups: HashSet<EntityUid> = identity.groups.iter().map(|g| group_uid(g)).collect();
    let principal = Entity::new(
        principal_uid(identity),
        HashMap::from([
            ("kind".to_string(), string(identity.kind.as_str())),
            ("issuer".to_string(), string(&identity.issuer)),
            ("subject".to_string(), string(&identity.subject)),
        ]),
        groups.clone(),
    );
    let conn = Entity::new_with_tags(
        connection_uid(connection),
        HashMap::from([
            ("kind".to_string(), string("postgres")),
            ("name".to_string(), string(&connection.name)),
        ]),
        HashSet::new(),
        connection.tags.iter().map(|(k, v)| (k.clone(), string(v))),
    );
    let mut all: Vec<Entity> = groups.into_iter().map(Entity::with_uid).collect();
    all.extend(principal.ok());
    all.extend(conn.ok());
    Entities::from_entities(all, None).unwrap_or_else(|_| Entities::empty())
}

/// The client address as a Cedar value. Parsing one costs more than the rest of a decision's
/// context, so a session parses it once (see `SessionCache`).
pub fn client_ip(ip: std::net::IpAddr) -> RestrictedExpression {
    RestrictedExpression::new_ip(ip.to_string())
}

/// The hour and weekday (UTC) a decision is made at, read once per decision so that its
/// context and its memo key agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcClock {
    pub hour: i64,
    /// 1 (Monday) to 7 (Sunday).
    pub weekday: i64,
}

impl UtcClock {
    pub fn now() -> Self {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let days = secs / 86_400;
        UtcClock {
            hour: ((secs % 86_400) / 3600) as i64,
            // 1970-01-01 was a Thursday (4).
            weekday: ((days + 3) % 7 + 1) as i64,
        }
    }
}

fn common(
    facts: &RequestFacts<'_>,
    ip: Option<&RestrictedExpression>,
    clock: UtcClock,
) -> Vec<(String, RestrictedExpression)> {
    vec![
        ("protocol".into(), string(facts.protocol)),
        (
            "client_ip".into(),
            ip.cloned().unwrap_or_else(|| client_ip(facts.client_ip)),
        ),
        (
            "hour_utc".into(),
            RestrictedExpression::new_long(clock.hour),
        ),
        (
            "weekday_utc".into(),
            RestrictedExpression::new_long(clock.weekday),
        ),
        (
            "grants".into(),
            RestrictedExpression::new_set(facts.grants.iter().map(|g| string(g))),
        ),
    ]
}

/// A context that cannot be built is an error, never an empty context: with attributes
/// missing, Cedar skips every policy that reads them, `forbid` policies included.
pub fn session_context(facts: &RequestFacts<'_>) -> Result<Context, String> {
    Context::from_pairs(common(facts, None, UtcClock::now())).map_err(|e| e.to_string())
}

pub fn statement_context(
    facts: &RequestFacts<'_>,
    ip: Option<&RestrictedExpression>,
    statement: &Statement,
    approved: bool,
    clock: UtcClock,
) -> Result<Context, String> {
    let mut pairs = common(facts, ip, clock);
    pairs.push(("command".into(), string(&statement.command)));
    pairs.push((
        "relations".into(),
        RestrictedExpression::new_set(statement.relations.iter().map(|r| string(r))),
    ));
    pairs.push((
        "functions".into(),
        RestrictedExpression::new_set(statement.functions.iter().map(|f| string(f))),
    ));
    pairs.push(("approved".into(), RestrictedExpression::new_bool(approved)));
    Context::from_pairs(pairs).map_err(|e| e.to_string())
}
