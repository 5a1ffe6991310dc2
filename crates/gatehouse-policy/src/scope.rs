//! Narrowing the policy set to the policies that can apply to one principal and action.
//!
//! Cedar evaluates every policy of the set it is given. Most policies cannot apply to a given
//! request by their scope alone (`action == ...`, `principal in Group::"..."`), and leaving
//! them out changes no decision: a policy whose scope does not match neither permits nor
//! forbids. The engine therefore evaluates a per-session, per-action subset, computed once.

use cedar_policy::{ActionConstraint, EntityUid, Policy, PolicySet, PrincipalConstraint};

/// Every action of the schema, in a fixed order (the index of a session's subsets).
pub const ACTIONS: [&str; 8] = [
    "connect",
    "read",
    "write",
    "ddl",
    "admin",
    "session",
    "transaction",
    "exec",
];

/// Who a policy's scope can apply to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PrincipalScope {
    Any,
    /// `principal in Gatehouse::Group::"g"`.
    Group(String),
    /// `principal == Gatehouse::Principal::"p"` (or `in` it).
    Principal(String),
    /// Any other form: kept, to be safe.
    Other,
}

/// A policy with what its scope says.
#[derive(Debug, Clone)]
pub struct Indexed {
    policy: Policy,
    /// `None`: any action.
    actions: Option<Vec<String>>,
    principal: PrincipalScope,
    /// Whether the policy reads `context.approved` (so a second, approved evaluation matters).
    mentions_approved: bool,
}

fn id_of(uid: &EntityUid, type_name: &str) -> Option<String> {
    (uid.type_name().to_string() == type_name).then(|| uid.id().unescaped().to_string())
}

/// Indexes every policy of `set` by its scope.
pub fn index(set: &PolicySet) -> Vec<Indexed> {
    set.policies()
        .map(|p| {
            let principal = match p.principal_constraint() {
                PrincipalConstraint::Any => PrincipalScope::Any,
                PrincipalConstraint::In(uid) => id_of(&uid, "Gatehouse::Group")
                    .map(PrincipalScope::Group)
                    .or_else(|| id_of(&uid, "Gatehouse::Principal").map(PrincipalScope::Principal))
                    .unwrap_or(PrincipalScope::Other),
                PrincipalConstraint::Eq(uid) => id_of(&uid, "Gatehouse::Principal")
                    .map(PrincipalScope::Principal)
                    .unwrap_or(PrincipalScope::Other),
                _ => PrincipalScope::Other,
            };
            let actions = match p.action_constraint() {
                ActionConstraint::Any => None,
                ActionConstraint::Eq(uid) => Some(vec![uid.id().unescaped().to_string()]),
                ActionConstraint::In(uids) => Some(
                    uids.iter()
                        .map(|u| u.id().unescaped().to_string())
                        .collect(),
                ),
            };
            Indexed {
                mentions_approved: p.to_string().contains("approved"),
                policy: p.clone(),
                actions,
                principal,
            }
        })
        .collect()
}

/// The policies that can apply to one principal and action.
pub struct Subset {
    pub set: PolicySet,
    /// Whether any of them reads `context.approved`.
    pub may_review: bool,
}

/// Selects the policies whose scope can match `principal` (a `issuer/subject` key), a member of
/// `groups`, doing `action`.
pub fn subset(index: &[Indexed], action: &str, principal: &str, groups: &[String]) -> Subset {
    let mut set = PolicySet::new();
    let mut may_review = false;
    for p in index {
        let action_applies = p
            .actions
            .as_ref()
            .is_none_or(|a| a.iter().any(|x| x == action));
        let principal_applies = match &p.principal {
            PrincipalScope::Any | PrincipalScope::Other => true,
            PrincipalScope::Group(g) => groups.iter().any(|m| m == g),
            PrincipalScope::Principal(id) => id == principal,
        };
        if action_applies && principal_applies {
            // Ids are unique in the source set, so adding cannot fail.
            let _ = set.add(p.policy.clone());
            may_review |= p.mentions_approved;
        }
    }
    Subset { set, may_review }
}
