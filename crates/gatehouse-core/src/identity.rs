//! Who is acting. Every protocol adapter obtains an [`Identity`] the same way, from a token, and
//! everything downstream (policy, recording) sees only this type.

use serde::Serialize;

use crate::time::Micros;

/// What kind of principal an identity is; policy may treat them differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityKind {
    /// A person, typically through the company IdP.
    Human,
    /// A gateway-issued service account, one per automation class.
    Service,
    /// A workload with a platform-issued token (CI job, cloud workload).
    Workload,
}

impl IdentityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::Human => "human",
            IdentityKind::Service => "service",
            IdentityKind::Workload => "workload",
        }
    }
}

/// The verified caller of one session or request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// Stable key of the principal within its issuer (service-account name, or OIDC `sub`).
    pub subject: String,
    /// Who issued the credential: `gatehouse` for service accounts, otherwise the OIDC issuer.
    pub issuer: String,
    /// A name to show people.
    pub display_name: String,
    pub kind: IdentityKind,
    pub groups: Vec<String>,
    /// The id of the token that proved this identity, so one token can be revoked.
    pub token_id: String,
    #[serde(with = "crate::time::rfc3339::option")]
    pub expires_at: Option<Micros>,
}

/// The issuer name of gateway-issued service-account tokens.
pub const GATEHOUSE_ISSUER: &str = "gatehouse";

/// The group whose members administer the gateway.
pub const ADMIN_GROUP: &str = "admin";

/// The group whose members may read audit data (sessions, statements, the audit log, replays)
/// without administering anything.
pub const AUDITOR_GROUP: &str = "auditor";

impl Identity {
    /// `true` when the identity is a member of `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// A principal key unique across issuers, such as `gatehouse/ci-bot`.
    pub fn principal(&self) -> String {
        format!("{}/{}", self.issuer, self.subject)
    }
}
