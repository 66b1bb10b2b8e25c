//! Making tokens: key pairs, minting with a private key, attenuating without one, and
//! printing what a token says (`svc-overlay token ...`).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::SystemTime;

use anyhow::Context;
use biscuit_auth::builder::{date, string, Term};
use biscuit_auth::{Biscuit, BlockBuilder, KeyPair, PrivateKey, UnverifiedBiscuit};
use overlay_core::cap::{Action, Grant};
use overlay_core::oap::Role;

use super::load_public_key;

/// What a minted token grants.
#[derive(Clone, Debug)]
pub struct Claims {
    /// `cap_id` in logs; derived from the grants when not given.
    pub class: Option<String>,
    pub role: Role,
    pub tenant: String,
    pub grants: Vec<Grant>,
    pub expires: Option<SystemTime>,
}

impl Claims {
    /// `cap:<topics>:<read|write|readwrite>`: a class that says what the token is for.
    pub fn class(&self) -> String {
        if let Some(c) = &self.class {
            return c.clone();
        }
        let topics: BTreeSet<&str> = self.grants.iter().map(|g| g.topic.as_str()).collect();
        let has = |a| self.grants.iter().any(|g| g.action == a);
        let what = match (has(Action::Publish), has(Action::Subscribe)) {
            (true, true) => "readwrite",
            (true, false) => "write",
            (false, true) => "read",
            (false, false) => self.role.as_str(),
        };
        let topics = topics.into_iter().collect::<Vec<_>>().join(",");
        match topics.is_empty() {
            true => format!("cap:{what}"),
            false => format!("cap:{topics}:{what}"),
        }
    }
}

/// A new key pair: the private key (`ed25519-private/<hex>`) and the public one
/// (`ed25519/<hex>`), as the files `token keygen` writes hold them.
pub fn keygen() -> (String, String) {
    let kp = KeyPair::new();
    (kp.private().to_prefixed_string(), kp.public().to_string())
}

/// Writes a key pair to `path` (private, mode 0600) and `path.pub`.
pub fn write_keypair(path: &Path) -> anyhow::Result<(String, std::path::PathBuf)> {
    let (private, public) = keygen();
    write_private(path, &private)?;
    let pub_path = path.with_extension("pub");
    std::fs::write(&pub_path, format!("{public}\n"))
        .with_context(|| format!("writing {}", pub_path.display()))?;
    Ok((public, pub_path))
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    o.mode(0o600);
    let mut f = o.open(path).with_context(|| {
        format!(
            "creating {} (an existing key is never overwritten)",
            path.display()
        )
    })?;
    f.write_all(format!("{text}\n").as_bytes())?;
    Ok(())
}

/// Mints a token with the private key in `key_file`; returns its base64 text.
pub fn mint(key_file: &Path, claims: &Claims) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(key_file)
        .with_context(|| format!("reading {}", key_file.display()))?;
    let private: PrivateKey = text
        .trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("{}: not a private key ({e})", key_file.display()))?;
    let kp = KeyPair::from(&private);
    let mut b = Biscuit::builder()
        .root_key_id(super::key_id(&kp.public()))
        .fact(biscuit_auth::builder::fact(
            "cap_id",
            &[string(&claims.class())],
        ))?
        .fact(biscuit_auth::builder::fact(
            "role",
            &[string(claims.role.as_str())],
        ))?
        .fact(biscuit_auth::builder::fact(
            "tenant",
            &[string(&claims.tenant)],
        ))?;
    for g in &claims.grants {
        b = b.fact(biscuit_auth::builder::fact(
            "right",
            &[string(&g.topic), string(g.action.as_str())],
        ))?;
    }
    if let Some(e) = claims.expires {
        b = b.code_with_params(EXPIRY, params(&[("at", date(&e))]), HashMap::new())?;
    }
    Ok(b.build(&kp)?.to_base64()?)
}

/// Both the fact the verifier reads the session's expiry from and the check that enforces
/// it: the fact alone would be a claim, the check alone invisible to the session.
const EXPIRY: &str = "expires({at}); check if time($t), $t <= {at};";

fn params(p: &[(&str, Term)]) -> HashMap<String, Term> {
    p.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// What an appended block restricts. Empty lists restrict nothing.
#[derive(Clone, Debug, Default)]
pub struct Restriction {
    pub topics: Vec<String>,
    pub actions: Vec<Action>,
    pub expires: Option<SystemTime>,
}

/// Appends a block of checks to a token; no key is needed, and no block can widen it.
pub fn attenuate(token: &str, r: &Restriction) -> anyhow::Result<String> {
    let t = UnverifiedBiscuit::from_base64(token).context("not a token")?;
    let set = |v: Vec<String>| Term::Set(v.iter().map(|s| string(s)).collect());
    let mut block = BlockBuilder::new();
    if !r.topics.is_empty() {
        block = block.code_with_params(
            "check if operation($a, $t), {topics}.contains($t);",
            params(&[("topics", set(r.topics.clone()))]),
            HashMap::new(),
        )?;
    }
    if !r.actions.is_empty() {
        let actions = r.actions.iter().map(|a| a.as_str().to_string()).collect();
        block = block.code_with_params(
            "check if operation($a, $t), {actions}.contains($a);",
            params(&[("actions", set(actions))]),
            HashMap::new(),
        )?;
    }
    if let Some(e) = r.expires {
        block = block.code_with_params(EXPIRY, params(&[("at", date(&e))]), HashMap::new())?;
    }
    Ok(t.append(block)?.to_base64()?)
}

/// A token's blocks as datalog, and, given verification keys, which one signed it.
pub fn inspect(token: &str, verify_keys: &[String]) -> anyhow::Result<String> {
    let t = UnverifiedBiscuit::from_base64(token).context("not a token")?;
    let mut out = String::new();
    for i in 0..t.block_count() {
        let src = t.print_block_source(i)?;
        let name = if i == 0 {
            "authority".to_string()
        } else {
            format!("block {i}")
        };
        out.push_str(&format!("{name}:\n"));
        for line in src.lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    for k in verify_keys {
        let key = load_public_key(k)?;
        let ok = Biscuit::from_base64(token, key).is_ok();
        out.push_str(&format!(
            "signature: {} by {key}\n",
            if ok { "valid" } else { "not" }
        ));
    }
    Ok(out)
}
