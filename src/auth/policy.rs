//! The authorization policy: which certificate identities are admins of which
//! tenants, and which may resolve which tokens. Anything not granted is denied.
//!
//! ```toml
//! [[admin]]
//! identity = "spiffe://example.org/ops/admin"   # a URI SAN
//! tenants = ["acme", "globex"]                  # or ["*"] for every tenant
//!
//! [[resolver]]
//! identity = "dns:agent.acme.internal"          # a DNS SAN
//! tenants = ["acme"]
//! tokens = ["openai-*"]                         # token-id patterns; * matches any run
//! bindings_only = true                          # and only tokens a binding names it for
//! ```
//!
//! `[[key_admin]] identity = "..."` grants key rotation and retirement
//! (the KeyAdmin service); being an admin of every tenant does not.
//!
//! A top-level `bindings_only = true` turns that mode on for every resolver:
//! then knowing a token id grants nothing without a binding naming the caller.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, RwLock},
};

use serde::Deserialize;

use super::PeerIdentity;
use crate::{
    error::{Error, Result},
    model::{TenantId, TokenName, is_identity},
};

/// The policy file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    bindings_only: bool,
    #[serde(default)]
    admin: Vec<AdminEntry>,
    #[serde(default)]
    resolver: Vec<ResolverEntry>,
    #[serde(default)]
    key_admin: Vec<KeyAdminEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyAdminEntry {
    identity: String,
}

/// Written out rather than derived, so that no field added later can reach
/// a log by accident; the identity is a certificate name, not a secret.
impl std::fmt::Debug for KeyAdminEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAdminEntry")
            .field("identity", &self.identity)
            .finish()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminEntry {
    identity: String,
    tenants: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolverEntry {
    identity: String,
    tenants: Vec<String>,
    tokens: Vec<String>,
    #[serde(default)]
    bindings_only: bool,
}

/// The tenants an admin identity may administer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManagedTenants {
    /// Every tenant (`tenants = ["*"]`).
    All,
    /// Exactly these, in order.
    Only(Vec<TenantId>),
}

/// Which tenants a grant covers.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Tenants {
    All,
    Only(Vec<TenantId>),
}

impl Tenants {
    fn parse(list: &[String], identity: &str) -> Result<Self> {
        if list.is_empty() {
            return Err(policy_error(format!(
                "{identity}: tenants must not be empty"
            )));
        }
        if list.iter().any(|t| t == "*") {
            return Ok(Self::All);
        }
        list.iter()
            .map(|t| {
                TenantId::new(t, "tenants").map_err(|_| {
                    policy_error(format!("{identity}: tenant {t:?} is not a valid tenant id"))
                })
            })
            .collect::<Result<_>>()
            .map(Self::Only)
    }

    fn covers(&self, tenant: &TenantId) -> bool {
        match self {
            Self::All => true,
            Self::Only(list) => list.contains(tenant),
        }
    }
}

#[derive(Clone, Debug)]
struct ResolverGrant {
    tenants: Tenants,
    token_patterns: Vec<String>,
    bindings_only: bool,
}

/// A parsed, validated policy.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    admins: HashMap<String, Tenants>,
    resolvers: HashMap<String, ResolverGrant>,
    key_admins: std::collections::HashSet<String>,
}

/// An authorized caller: the policy identity that granted the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The identity as the policy names it (`spiffe://...` or `dns:...`).
    pub identity: String,
    /// For resolvers: a binding must also name this identity.
    pub require_binding: bool,
}

impl Policy {
    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| policy_error(format!("reading {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| policy_error(format!("{}: {e}", path.display())))
    }

    /// Parses policy TOML.
    pub fn parse(text: &str) -> Result<Self> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| policy_error(e.to_string()))?;
        let mut policy = Self::default();
        for entry in file.admin {
            check_identity(&entry.identity)?;
            let tenants = Tenants::parse(&entry.tenants, &entry.identity)?;
            if policy
                .admins
                .insert(entry.identity.clone(), tenants)
                .is_some()
            {
                return Err(policy_error(format!(
                    "{}: listed twice under [[admin]]",
                    entry.identity
                )));
            }
        }
        for entry in file.resolver {
            check_identity(&entry.identity)?;
            let tenants = Tenants::parse(&entry.tenants, &entry.identity)?;
            if entry.tokens.is_empty() {
                return Err(policy_error(format!(
                    "{}: tokens must not be empty",
                    entry.identity
                )));
            }
            if let Some(bad) = entry.tokens.iter().find(|p| !is_valid_pattern(p)) {
                return Err(policy_error(format!(
                    "{}: token pattern {bad:?} may hold only a-z, 0-9, - and *",
                    entry.identity
                )));
            }
            let grant = ResolverGrant {
                tenants,
                token_patterns: entry.tokens,
                bindings_only: entry.bindings_only || file.bindings_only,
            };
            if policy
                .resolvers
                .insert(entry.identity.clone(), grant)
                .is_some()
            {
                return Err(policy_error(format!(
                    "{}: listed twice under [[resolver]]",
                    entry.identity
                )));
            }
        }
        for entry in file.key_admin {
            check_identity(&entry.identity)?;
            if !policy.key_admins.insert(entry.identity.clone()) {
                return Err(policy_error(format!(
                    "{}: listed twice under [[key_admin]]",
                    entry.identity
                )));
            }
        }
        Ok(policy)
    }

    /// Allows `peer` to rotate and retire keys (the key-admin role), or denies.
    pub fn authorize_key_admin(&self, peer: &PeerIdentity) -> Result<Caller> {
        let granted = self.key_admins.contains(peer.as_str());
        Caller::of(peer, granted, false)
    }

    /// Allows `peer` to administer `tenant`, or denies.
    pub fn authorize_admin(&self, peer: &PeerIdentity, tenant: &TenantId) -> Result<Caller> {
        let granted = self
            .admins
            .get(peer.as_str())
            .is_some_and(|t| t.covers(tenant));
        Caller::of(peer, granted, false)
    }

    /// Allows `peer` if it administers any tenant at all (to ask which), or
    /// denies.
    pub fn authorize_admin_of_any(&self, peer: &PeerIdentity) -> Result<Caller> {
        let granted = self.admins.contains_key(peer.as_str());
        Caller::of(peer, granted, false)
    }

    /// The tenants `peer` may administer; `None` if it is no admin.
    pub fn managed_tenants(&self, peer: &PeerIdentity) -> Option<ManagedTenants> {
        self.admins.get(peer.as_str()).map(|tenants| match tenants {
            Tenants::All => ManagedTenants::All,
            Tenants::Only(list) => {
                let mut list = list.clone();
                list.sort();
                list.dedup();
                ManagedTenants::Only(list)
            }
        })
    }

    /// Allows `peer` to administer every tenant (for tenant-wide reads such as
    /// the whole audit trail), or denies.
    pub fn authorize_admin_of_all(&self, peer: &PeerIdentity) -> Result<Caller> {
        let granted = self.admins.get(peer.as_str()) == Some(&Tenants::All);
        Caller::of(peer, granted, false)
    }

    /// Allows `peer` to resolve `name`, or denies.
    pub fn authorize_resolve(&self, peer: &PeerIdentity, name: &TokenName) -> Result<Caller> {
        let grant = self.resolvers.get(peer.as_str());
        let granted = grant.is_some_and(|grant| {
            grant.tenants.covers(&name.tenant)
                && grant
                    .token_patterns
                    .iter()
                    .any(|p| glob_match(p, name.token_id.as_str()))
        });
        Caller::of(peer, granted, grant.is_some_and(|g| g.bindings_only))
    }
}

impl Policy {
    /// Allows `peer` to watch `tenant`: it may resolve some tokens of it
    /// (which ones is decided per event), or denies.
    pub fn authorize_resolve_in(&self, peer: &PeerIdentity, tenant: &TenantId) -> Result<Caller> {
        let grant = self.resolvers.get(peer.as_str());
        let granted = grant
            .is_some_and(|grant| grant.tenants.covers(tenant) && !grant.token_patterns.is_empty());
        Caller::of(peer, granted, grant.is_some_and(|g| g.bindings_only))
    }
}

impl Caller {
    /// `peer` as the caller, if `granted`; else a refusal.
    fn of(peer: &PeerIdentity, granted: bool, require_binding: bool) -> Result<Self> {
        if !granted {
            return Err(Error::PermissionDenied);
        }
        Ok(Self {
            identity: peer.as_str().to_owned(),
            require_binding,
        })
    }
}

/// The live policy, shared by both listeners; replaceable as a whole.
#[derive(Debug)]
pub struct PolicyHandle(RwLock<Arc<Policy>>);

impl PolicyHandle {
    /// Wraps a loaded policy.
    pub fn new(policy: Policy) -> Self {
        Self(RwLock::new(Arc::new(policy)))
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<Policy> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Swaps in a new policy; requests already authorized are unaffected.
    pub fn replace(&self, policy: Policy) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
    }
}

fn check_identity(identity: &str) -> Result<()> {
    if is_identity(identity) {
        Ok(())
    } else {
        Err(policy_error(format!(
            "identity {identity:?} must be a URI SAN (e.g. spiffe://domain/path) or dns:NAME"
        )))
    }
}

fn is_valid_pattern(pattern: &str) -> bool {
    !pattern.is_empty()
        && pattern
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'*'))
}

/// Matches `text` against `pattern`, where `*` matches any run of characters.
fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            backtrack = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((star, matched)) = backtrack {
            pi = star + 1;
            ti = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

fn policy_error(message: String) -> Error {
    Error::policy(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uri: &str) -> PeerIdentity {
        PeerIdentity::uri(uri)
    }

    fn name(tenant: &str, token: &str) -> TokenName {
        TokenName::parse(&format!("tenants/{tenant}/tokens/{token}"), "name").expect("name")
    }

    const POLICY: &str = r#"
        [[admin]]
        identity = "spiffe://t/admin"
        tenants = ["acme"]

        [[resolver]]
        identity = "spiffe://t/agent"
        tenants = ["acme"]
        tokens = ["openai-*"]

        [[resolver]]
        identity = "dns:bot.internal"
        tenants = ["*"]
        tokens = ["*"]
    "#;

    #[test]
    fn grants_and_default_deny() {
        let policy = Policy::parse(POLICY).expect("policy");
        let acme = TenantId::new("acme", "t").expect("id");
        let globex = TenantId::new("globex", "t").expect("id");
        assert!(
            policy
                .authorize_admin(&peer("spiffe://t/admin"), &acme)
                .is_ok()
        );
        assert!(
            policy
                .authorize_admin(&peer("spiffe://t/admin"), &globex)
                .is_err()
        );
        assert!(
            policy
                .authorize_admin(&peer("spiffe://t/agent"), &acme)
                .is_err()
        );

        let agent = peer("spiffe://t/agent");
        assert!(
            policy
                .authorize_resolve(&agent, &name("acme", "openai-prod"))
                .is_ok()
        );
        assert!(
            policy
                .authorize_resolve(&agent, &name("acme", "anthropic"))
                .is_err()
        );
        assert!(
            policy
                .authorize_resolve(&agent, &name("globex", "openai-prod"))
                .is_err()
        );
        assert!(
            policy
                .authorize_resolve(&peer("spiffe://t/admin"), &name("acme", "openai-x"))
                .is_err()
        );
    }

    #[test]
    fn dns_identities_count_only_when_the_policy_names_them() {
        let policy = Policy::parse(POLICY).expect("policy");
        let bot = PeerIdentity::dns("bot.internal");
        let caller = policy
            .authorize_resolve(&bot, &name("globex", "x"))
            .expect("allowed");
        assert_eq!(caller.identity, "dns:bot.internal");
        let other = PeerIdentity::dns("admin");
        assert!(
            policy
                .authorize_resolve(&other, &name("globex", "x"))
                .is_err()
        );
    }

    #[test]
    fn glob() {
        assert!(glob_match("*", ""));
        assert!(glob_match("openai-*", "openai-prod"));
        assert!(glob_match("*-prod", "openai-prod"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(!glob_match("openai", "openai-prod"));
    }

    #[test]
    fn invalid_policies_are_refused_with_a_reason() {
        for (text, expect) in [
            (
                "[[admin]]\nidentity = \"admin\"\ntenants = [\"*\"]",
                "must be a URI SAN",
            ),
            (
                "[[admin]]\nidentity = \"spiffe://x\"\ntenants = []",
                "tenants must not be empty",
            ),
            (
                "[[admin]]\nidentity = \"spiffe://x\"\ntenants = [\"Bad\"]",
                "not a valid tenant id",
            ),
            (
                "[[resolver]]\nidentity = \"spiffe://x\"\ntenants = [\"*\"]\ntokens = [\"a/b\"]",
                "token pattern",
            ),
            ("[[admins]]\nidentity = \"spiffe://x\"", "unknown field"),
        ] {
            let err = Policy::parse(text).expect_err(text).to_string();
            assert!(err.contains(expect), "{err}");
        }
    }
}
