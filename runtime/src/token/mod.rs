//! Capability tokens: biscuits (public-key signed, attenuable by whoever holds one).
//!
//! We chose biscuit-auth over HMAC macaroons: a node holds only public keys (a stolen node
//! config cannot mint), a holder attenuates by appending a block without any key, and
//! several verification keys at once make rotation a config change. The token's authority
//! block (signed by the minting key) says what it grants:
//!
//! ```text
//! cap_id("cap:feed:write"); role("client"); tenant("acme");
//! right("feed", "publish"); right("feed", "subscribe");
//! expires(2026-12-02T01:00:00Z); check if time($t), $t <= 2026-12-02T01:00:00Z;
//! ```
//!
//! Blocks appended later can only add checks (topics, actions, a nearer expiry). Verifying
//! probes each right of the authority block with `operation(action, topic)`: a right
//! survives if every check of every block passes for it. What survives is the capability
//! handed to the core, which decides HELLOs and writes with it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use biscuit_auth::builder::{date, fact, string};
use biscuit_auth::error::{Logic, Token as TokenError};
use biscuit_auth::{AuthorizerBuilder, AuthorizerLimits, Biscuit, PublicKey, UnverifiedBiscuit};
use bytes::Bytes;
use overlay_core::cap::{Action, CapVerifier, Grant, Verified};
use overlay_core::config::{AuthConfig, Config};
use overlay_core::oap::Role;
use overlay_core::observe::AuthFailure;

pub mod mint;

/// Datalog time budget of one evaluation: only a backstop. The work is bounded by
/// `auth.max_datalog_facts` and `auth.max_datalog_iterations` (and the token by
/// `auth.max_token_bytes`), which do not depend on how busy the machine is; this is set far
/// above what a token within those bounds takes, so that a loaded host does not refuse good
/// tokens (a wall-clock limit would).
const MAX_EVAL_TIME: Duration = Duration::from_secs(1);

/// A public key given inline (`ed25519/<hex>`) or the path of a file holding one.
pub fn load_public_key(entry: &str) -> anyhow::Result<PublicKey> {
    let entry = entry.trim();
    let text = if entry.starts_with("ed25519/") || entry.starts_with("secp256r1/") {
        entry.to_string()
    } else {
        std::fs::read_to_string(entry).with_context(|| format!("reading key file {entry}"))?
    };
    text.trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("{entry}: not a public key ({e})"))
}

/// The `root_key_id` a token minted with `key` carries: the first four bytes of the public
/// key. It is a hint, not a trust decision (the signature still is checked), so that a node
/// with several keys checks the one signature that can succeed instead of trying each.
pub fn key_id(key: &PublicKey) -> u32 {
    let b = key.to_bytes();
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// A token file's contents: the base64 text, as it travels in HELLO's `cap` bytes.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading token file {}", path.display()))?;
    Ok(text.trim().to_string())
}

/// What the core needs from `auth.*`: the verifier, and the token this node dials with.
pub fn auth_for(cfg: &Config) -> anyhow::Result<(Option<Arc<dyn CapVerifier>>, Bytes)> {
    let keys = cfg
        .auth
        .verify_keys
        .iter()
        .map(|k| load_public_key(k).context("auth.verify_keys"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let verifier =
        (!keys.is_empty()).then(|| Arc::new(TokenVerifier::new(keys).bounded(&cfg.auth)) as _);
    let credential = match cfg.auth.token_file.as_str() {
        "" => Bytes::new(),
        path => Bytes::from(read_token(Path::new(path)).context("auth.token_file")?),
    };
    Ok((verifier, credential))
}

/// Verifies tokens against a set of public keys; any one of them may have minted it.
pub struct TokenVerifier {
    keys: Vec<PublicKey>,
    /// Rights a token may grant (`auth.max_rights`): each costs one evaluation per HELLO,
    /// so a token with more is refused (`invalid_caveat`) rather than evaluated.
    max_rights: usize,
    limits: AuthorizerLimits,
}

impl TokenVerifier {
    /// A verifier with the default bounds of `auth.*`.
    pub fn new(keys: Vec<PublicKey>) -> TokenVerifier {
        TokenVerifier {
            keys,
            max_rights: 0,
            limits: AuthorizerLimits::default(),
        }
        .bounded(&AuthConfig::default())
    }

    /// The same keys, with the token bounds of `auth`.
    pub fn bounded(mut self, auth: &AuthConfig) -> TokenVerifier {
        self.max_rights = auth.max_rights;
        self.limits = AuthorizerLimits {
            max_facts: auth.max_datalog_facts,
            max_iterations: auth.max_datalog_iterations,
            max_time: MAX_EVAL_TIME,
        };
        self
    }

    fn verify_at(&self, token: &[u8], now: SystemTime) -> Result<Verified, AuthFailure> {
        let text = std::str::from_utf8(token).map_err(|_| AuthFailure::Unauth)?;
        let unverified = UnverifiedBiscuit::from_base64(text).map_err(|_| AuthFailure::Unauth)?;
        let hint = unverified.root_key_id();
        // A token that names a key no one here has costs no signature check at all.
        let biscuit = self
            .keys
            .iter()
            .filter(|k| hint.map_or(true, |id| key_id(k) == id))
            .find_map(|k| unverified.clone().verify(*k).ok())
            .ok_or(AuthFailure::Unauth)?;
        let mut world = authorizer(&biscuit, now, None, &self.limits)
            .map_err(|_| AuthFailure::InvalidCaveat)?;
        // `query` trusts the authority block only: what the minting key said.
        let one = |w: &mut biscuit_auth::Authorizer, rule: &str| -> Result<String, AuthFailure> {
            let mut v: Vec<(String,)> = w.query(rule).map_err(|_| AuthFailure::InvalidCaveat)?;
            match v.len() {
                1 => Ok(v.remove(0).0),
                _ => Err(AuthFailure::InvalidCaveat),
            }
        };
        let class = one(&mut world, "data($c) <- cap_id($c)")?;
        let role = match one(&mut world, "data($r) <- role($r)")?.as_str() {
            "peer" => Role::Peer,
            "client" => Role::Client,
            _ => return Err(AuthFailure::InvalidCaveat),
        };
        let tenant = one(&mut world, "data($t) <- tenant($t)")?;
        let rights: Vec<(String, String)> = world
            .query("data($t, $a) <- right($t, $a)")
            .map_err(|_| AuthFailure::InvalidCaveat)?;
        if rights.len() > self.max_rights {
            return Err(AuthFailure::InvalidCaveat);
        }
        // Every block may name an expiry; the nearest one is the session's.
        let expiries: Vec<(SystemTime,)> = world
            .query_all("data($d) <- expires($d)")
            .map_err(|_| AuthFailure::InvalidCaveat)?;
        let expires = expiries.into_iter().map(|(d,)| d).min();

        let mut grants = Vec::new();
        let mut expired = false;
        let probes: Vec<Option<(String, Action)>> = if rights.is_empty() {
            // A peer token may grant nothing but its role: its checks still apply.
            vec![None]
        } else {
            rights
                .into_iter()
                .filter_map(|(t, a)| Action::parse(&a).map(|a| Some((t, a))))
                .collect()
        };
        let mut base_ok = false;
        for probe in probes {
            match check(&biscuit, now, probe.as_ref(), &self.limits) {
                Ok(()) => match probe {
                    Some((topic, action)) => grants.push(Grant { topic, action }),
                    None => base_ok = true,
                },
                Err(time_failed) => expired |= time_failed,
            }
        }
        if grants.is_empty() && !base_ok {
            return Err(if expired {
                AuthFailure::Expired
            } else {
                AuthFailure::InvalidCaveat
            });
        }
        let valid_for = match expires {
            Some(e) => Some(e.duration_since(now).map_err(|_| AuthFailure::Expired)?),
            None => None,
        };
        Ok(Verified {
            class,
            role,
            tenant,
            grants,
            valid_for,
        })
    }
}

impl CapVerifier for TokenVerifier {
    fn verify(&self, token: &[u8]) -> Result<Verified, AuthFailure> {
        self.verify_at(token, SystemTime::now())
    }
}

fn authorizer(
    b: &Biscuit,
    now: SystemTime,
    op: Option<&(String, Action)>,
    limits: &AuthorizerLimits,
) -> Result<biscuit_auth::Authorizer, TokenError> {
    let mut a = AuthorizerBuilder::new()
        .set_limits(limits.clone())
        .fact(fact("time", &[date(&now)]))?;
    if let Some((topic, action)) = op {
        a = a.fact(fact("operation", &[string(action.as_str()), string(topic)]))?;
    }
    a.policy("allow if true")?.build(b)
}

/// Runs every check of every block for one operation; `Err(true)` when a check that reads
/// the time is among those that failed (the token, or one of its blocks, has expired).
fn check(
    b: &Biscuit,
    now: SystemTime,
    op: Option<&(String, Action)>,
    limits: &AuthorizerLimits,
) -> Result<(), bool> {
    let mut a = authorizer(b, now, op, limits).map_err(|_| false)?;
    match a.authorize() {
        Ok(_) => Ok(()),
        Err(TokenError::FailedLogic(
            Logic::Unauthorized { checks, .. } | Logic::NoMatchingPolicy { checks },
        )) => Err(checks.iter().any(|c| failed_rule(c).contains("time("))),
        Err(_) => Err(false),
    }
}

fn failed_rule(c: &biscuit_auth::error::FailedCheck) -> &str {
    match c {
        biscuit_auth::error::FailedCheck::Block(b) => &b.rule,
        biscuit_auth::error::FailedCheck::Authorizer(a) => &a.rule,
    }
}

#[cfg(test)]
mod tests;
