//! Capabilities: what a session's token lets it do.
//!
//! The token format and its signatures belong to the runtime, which implements
//! [`CapVerifier`] (signed, attenuable biscuit tokens; see docs/OPERATIONS.md "Tokens"). The
//! verifier only establishes what a token grants; the core decides with it: whether the
//! HELLO may open the session (role, tenant, every subscribed topic) and whether each
//! message the session writes may go (topic, action, expiry on the core's own clock).

use std::time::Duration;

use crate::oap::Role;
use crate::observe::AuthFailure;
use crate::time::Time;

/// The topic of a grant that matches every topic.
pub const ANY_TOPIC: &str = "*";

/// What a grant allows on its topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Publish,
    Subscribe,
}

impl Action {
    pub const ALL: [Action; 2] = [Action::Publish, Action::Subscribe];

    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// One right a token grants (after every attenuation of it has been applied).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Grant {
    pub topic: String,
    pub action: Action,
}

/// What a verifier established about a token whose signature it accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The token's class for logs (`cap_id`, e.g. `cap:feed:write`): never the token.
    pub class: String,
    /// The role the token is for; a HELLO with another role is refused.
    pub role: Role,
    /// The tenant the token is for; it must be the node's `auth.tenant`.
    pub tenant: String,
    /// The rights left once every block's checks are applied.
    pub grants: Vec<Grant>,
    /// How long the token stays valid from the moment it was verified; `None`: no expiry.
    pub valid_for: Option<Duration>,
}

/// Checks a token's signature and computes what it grants. Implemented by the runtime (it
/// owns the keys and the wall clock); pure computation, called once per HELLO.
pub trait CapVerifier: Send + Sync {
    /// `Err(Unauth)` for a token that cannot be read or whose signature no verification
    /// key accepts, `Err(Expired)` past its expiry, `Err(InvalidCaveat)` when a check of it
    /// fails for every right it has.
    fn verify(&self, token: &[u8]) -> Result<Verified, AuthFailure>;
}

impl AuthFailure {
    /// What a refusal for this reason says in the log (`detail`).
    pub const fn detail(self) -> &'static str {
        match self {
            AuthFailure::Unauth => "unauth: no verification key accepts the token",
            AuthFailure::Expired => "expired: the token is past its expiry",
            AuthFailure::InvalidCaveat => "invalid_caveat: a check of the token fails",
        }
    }
}

/// What the core holds for an established session that presented a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capability {
    pub class: String,
    pub grants: Vec<Grant>,
    /// On the core's clock: past it, nothing more is authorised.
    pub expires_at: Option<Time>,
}

impl Capability {
    /// Decides a HELLO from what the verifier found: the role and tenant must be the
    /// session's, and each topic a client names must be granted `subscribe`. A client
    /// that names none (every topic, or a publisher that reads nothing) is admitted and
    /// gets only the topics its grants cover (`Session::wants`).
    pub fn admit(
        v: Verified,
        now: Time,
        role: Role,
        tenant: &str,
        topics: &[String],
    ) -> Result<Capability, AuthFailure> {
        if v.role != role || v.tenant != tenant {
            return Err(AuthFailure::InvalidCaveat);
        }
        let cap = Capability {
            class: v.class,
            grants: v.grants,
            expires_at: v.valid_for.map(|d| now + d),
        };
        let subscribed = topics
            .iter()
            .all(|t| cap.allows(Action::Subscribe, t.as_bytes()));
        if role == Role::Client && !subscribed {
            return Err(AuthFailure::InvalidCaveat);
        }
        Ok(cap)
    }

    /// Whether a grant covers `action` on `topic` (expiry aside).
    pub fn allows(&self, action: Action, topic: &[u8]) -> bool {
        self.grants
            .iter()
            .any(|g| g.action == action && (g.topic == ANY_TOPIC || g.topic.as_bytes() == topic))
    }

    /// Decides one write of the session: `Err` names the auth failure to count.
    pub fn authorise(&self, now: Time, action: Action, topic: &[u8]) -> Result<(), AuthFailure> {
        if self.expires_at.is_some_and(|e| now >= e) {
            return Err(AuthFailure::Expired);
        }
        if !self.allows(action, topic) {
            return Err(AuthFailure::InvalidCaveat);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(grants: &[(&str, Action)]) -> Verified {
        Verified {
            class: "cap:feed:read".into(),
            role: Role::Client,
            tenant: "acme".into(),
            grants: grants
                .iter()
                .map(|(t, a)| Grant {
                    topic: t.to_string(),
                    action: *a,
                })
                .collect(),
            valid_for: Some(Duration::from_secs(10)),
        }
    }

    #[test]
    fn a_hello_needs_its_role_tenant_and_every_topic() {
        let t0 = Time::ZERO;
        let feed = vec!["feed".to_string()];
        let v = verified(&[("feed", Action::Subscribe)]);
        assert!(Capability::admit(v.clone(), t0, Role::Client, "acme", &feed).is_ok());
        let wrong = [
            Capability::admit(v.clone(), t0, Role::Peer, "acme", &feed),
            Capability::admit(v.clone(), t0, Role::Client, "other", &feed),
            Capability::admit(v.clone(), t0, Role::Client, "acme", &["news".into()]),
        ];
        for r in wrong {
            assert_eq!(r, Err(AuthFailure::InvalidCaveat));
        }
        // Naming no topic asks for what the grants cover.
        let cap = Capability::admit(v, t0, Role::Client, "acme", &[]).unwrap();
        assert!(cap.allows(Action::Subscribe, b"feed") && !cap.allows(Action::Subscribe, b"x"));
        let any = verified(&[(ANY_TOPIC, Action::Subscribe)]);
        let cap = Capability::admit(any, t0, Role::Client, "acme", &[]).unwrap();
        assert!(cap.allows(Action::Subscribe, b"anything"));
    }

    #[test]
    fn a_write_needs_a_publish_grant_before_expiry() {
        let t0 = Time::ZERO;
        let v = verified(&[("feed", Action::Subscribe), ("news", Action::Publish)]);
        let cap = Capability::admit(v, t0, Role::Client, "acme", &["feed".into()]).unwrap();
        assert_eq!(cap.authorise(t0, Action::Publish, b"news"), Ok(()));
        assert_eq!(
            cap.authorise(t0, Action::Publish, b"feed"),
            Err(AuthFailure::InvalidCaveat)
        );
        let later = t0 + Duration::from_secs(10);
        assert_eq!(
            cap.authorise(later, Action::Publish, b"news"),
            Err(AuthFailure::Expired)
        );
    }
}
