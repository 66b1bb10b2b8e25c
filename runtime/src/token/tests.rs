use std::time::{Duration, SystemTime};

use super::mint::{attenuate, mint, write_keypair, Claims, Restriction};
use super::*;

struct Keys {
    dir: std::path::PathBuf,
}

impl Keys {
    fn new(name: &str) -> Keys {
        let dir =
            std::env::temp_dir().join(format!("svc-overlay-token-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Keys { dir }
    }

    /// A fresh key pair: the private key's path and the public key.
    fn pair(&self, name: &str) -> (std::path::PathBuf, String) {
        let path = self.dir.join(name);
        let (public, _) = write_keypair(&path).unwrap();
        (path, public)
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn claims(grants: &[(&str, Action)], expires: Option<SystemTime>) -> Claims {
    Claims {
        class: None,
        role: Role::Client,
        tenant: "acme".into(),
        grants: grants
            .iter()
            .map(|(t, a)| Grant {
                topic: t.to_string(),
                action: *a,
            })
            .collect(),
        expires,
    }
}

fn verifier(keys: &[&str]) -> TokenVerifier {
    TokenVerifier::new(keys.iter().map(|k| load_public_key(k).unwrap()).collect())
}

#[test]
fn a_minted_token_grants_what_it_says_until_it_expires() {
    let k = Keys::new("grants");
    let (key, public) = k.pair("root");
    let now = SystemTime::now();
    let c = claims(
        &[("feed", Action::Publish), ("feed", Action::Subscribe)],
        Some(now + Duration::from_secs(60)),
    );
    let t = mint(&key, &c).unwrap();
    let v = verifier(&[&public]).verify_at(t.as_bytes(), now).unwrap();
    assert_eq!(v.class, "cap:feed:readwrite");
    assert_eq!((v.role, v.tenant.as_str()), (Role::Client, "acme"));
    assert_eq!(v.grants.len(), 2);
    let left = v.valid_for.unwrap();
    assert!(
        left <= Duration::from_secs(60) && left > Duration::from_secs(58),
        "{left:?}"
    );

    let later = now + Duration::from_secs(61);
    let e = verifier(&[&public]).verify_at(t.as_bytes(), later);
    assert_eq!(e, Err(AuthFailure::Expired));
}

#[test]
fn another_key_or_a_tampered_token_is_unauth() {
    let k = Keys::new("unauth");
    let (key, _) = k.pair("root");
    let (_, other) = k.pair("other");
    let t = mint(&key, &claims(&[("feed", Action::Subscribe)], None)).unwrap();
    assert_eq!(
        verifier(&[&other]).verify(t.as_bytes()),
        Err(AuthFailure::Unauth)
    );
    // The key given as the path of its file, as `auth.verify_keys` may.
    let v = verifier(&[k.dir.join("root.pub").to_str().unwrap()]);
    assert!(v.verify(t.as_bytes()).is_ok());
    let mut bad = t.into_bytes();
    let i = bad.len() / 2;
    bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
    assert_eq!(v.verify(&bad), Err(AuthFailure::Unauth));
    assert_eq!(v.verify(b"\xff\xfe"), Err(AuthFailure::Unauth));
}

#[test]
fn attenuation_narrows_without_the_key_and_never_widens() {
    let k = Keys::new("attenuate");
    let (key, public) = k.pair("root");
    let t = mint(
        &key,
        &claims(
            &[
                ("feed", Action::Publish),
                ("feed", Action::Subscribe),
                ("news", Action::Subscribe),
            ],
            None,
        ),
    )
    .unwrap();
    let v = verifier(&[&public]);
    let read_only = attenuate(
        &t,
        &Restriction {
            actions: vec![Action::Subscribe],
            ..Default::default()
        },
    )
    .unwrap();
    let g = v.verify(read_only.as_bytes()).unwrap().grants;
    assert!(g.iter().all(|g| g.action == Action::Subscribe), "{g:?}");
    assert_eq!(g.len(), 2);

    let news = attenuate(
        &read_only,
        &Restriction {
            topics: vec!["news".into()],
            ..Default::default()
        },
    )
    .unwrap();
    let g = v.verify(news.as_bytes()).unwrap().grants;
    assert_eq!(
        g,
        vec![Grant {
            topic: "news".into(),
            action: Action::Subscribe
        }]
    );

    // A topic the token never had: every right fails a check.
    let elsewhere = attenuate(
        &t,
        &Restriction {
            topics: vec!["other".into()],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        v.verify(elsewhere.as_bytes()),
        Err(AuthFailure::InvalidCaveat)
    );

    // A nearer expiry in a block is the session's expiry, and enforced.
    let now = SystemTime::now();
    let soon = attenuate(
        &t,
        &Restriction {
            expires: Some(now + Duration::from_secs(5)),
            ..Default::default()
        },
    )
    .unwrap();
    let left = v
        .verify_at(soon.as_bytes(), now)
        .unwrap()
        .valid_for
        .unwrap();
    assert!(left <= Duration::from_secs(5), "{left:?}");
    let after = now + Duration::from_secs(6);
    assert_eq!(
        v.verify_at(soon.as_bytes(), after),
        Err(AuthFailure::Expired)
    );
}

#[test]
fn any_of_several_keys_verifies_during_a_rotation() {
    let k = Keys::new("rotation");
    let (old, old_pub) = k.pair("old");
    let (new, new_pub) = k.pair("new");
    let both = verifier(&[&old_pub, &new_pub]);
    for key in [old, new] {
        let t = mint(&key, &claims(&[("feed", Action::Subscribe)], None)).unwrap();
        assert!(both.verify(t.as_bytes()).is_ok());
    }
}

#[test]
fn whatever_a_peer_sends_as_a_token_is_refused_without_a_panic() {
    use rand::{Rng, SeedableRng};
    let k = Keys::new("garbage");
    let (key, public) = k.pair("root");
    let good = mint(&key, &claims(&[("feed", Action::Subscribe)], None)).unwrap();
    let v = verifier(&[&public]);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    for _ in 0..300 {
        // A real token with a few bytes changed, truncated, or plain noise.
        let mut t = good.clone().into_bytes();
        for _ in 0..rng.gen_range(1..4) {
            let i = rng.gen_range(0..t.len());
            t[i] = rng.gen();
        }
        let cut = rng.gen_range(0..t.len());
        let noise: Vec<u8> = (0..rng.gen_range(0..600)).map(|_| rng.gen()).collect();
        for bytes in [&t[..], &t[..cut], &noise[..]] {
            if let Ok(v) = v.verify(bytes) {
                // A change that kept the signature valid cannot have widened the token.
                assert!(v.grants.iter().all(|g| g.topic == "feed"), "{v:?}");
            }
        }
    }
}

/// A token granting publish on `n` topics `t0..`.
fn publishing(key: &std::path::Path, n: usize) -> String {
    let topics: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
    let grants: Vec<(&str, Action)> = topics
        .iter()
        .map(|t| (t.as_str(), Action::Publish))
        .collect();
    mint(key, &claims(&grants, None)).unwrap()
}

/// `token` with a block of datalog `code` appended, as any holder may.
fn with_block(token: &str, code: &str) -> String {
    let block = biscuit_auth::BlockBuilder::new().code(code).unwrap();
    UnverifiedBiscuit::from_base64(token)
        .unwrap()
        .append(block)
        .unwrap()
        .to_base64()
        .unwrap()
}

/// `auth.max_rights` bounds what one HELLO may cost: a token granting more rights is
/// refused before its checks run for each, and the same token passes under a higher bound.
#[test]
fn a_token_granting_more_rights_than_auth_max_rights_is_an_invalid_caveat() {
    let k = Keys::new("rights");
    let (key, public) = k.pair("root");
    let now = SystemTime::now();
    let t = publishing(&key, 5);
    let bounds = |max_rights| AuthConfig {
        max_rights,
        ..AuthConfig::default()
    };
    let v = verifier(&[&public]).bounded(&bounds(4));
    assert_eq!(
        v.verify_at(t.as_bytes(), now),
        Err(AuthFailure::InvalidCaveat)
    );
    let v = verifier(&[&public]).bounded(&bounds(5));
    assert_eq!(v.verify_at(t.as_bytes(), now).unwrap().grants.len(), 5);
}

/// The datalog bounds are the config's: a holder may append a block whose rule derives a
/// fact per pair of rights (900 for 30); a budget below that refuses the token, the default
/// (1,000) admits it.
#[test]
fn the_datalog_fact_budget_is_auth_max_datalog_facts() {
    let k = Keys::new("facts");
    let (key, public) = k.pair("root");
    let now = SystemTime::now();
    let t = with_block(
        &publishing(&key, 30),
        "pair($a, $b) <- right($a, $x), right($b, $y);",
    );
    let v = verifier(&[&public]);
    assert_eq!(v.verify_at(t.as_bytes(), now).unwrap().grants.len(), 30);
    let tight = AuthConfig {
        max_datalog_facts: 500,
        ..AuthConfig::default()
    };
    let v = verifier(&[&public]).bounded(&tight);
    assert_eq!(
        v.verify_at(t.as_bytes(), now),
        Err(AuthFailure::InvalidCaveat)
    );
}

/// A block of chained rules takes one round of rule application per link (20 here): a
/// budget of 10 rounds refuses it, the default (100) admits it.
#[test]
fn the_datalog_round_budget_is_auth_max_datalog_iterations() {
    let k = Keys::new("rounds");
    let (key, public) = k.pair("root");
    let now = SystemTime::now();
    let t = mint(&key, &claims(&[("feed", Action::Publish)], None)).unwrap();
    let mut code = String::from("l0($t) <- right($t, $a);");
    for i in 1..20 {
        code.push_str(&format!("l{i}($t) <- l{}($t);", i - 1));
    }
    let t = with_block(&t, &code);
    assert!(verifier(&[&public]).verify_at(t.as_bytes(), now).is_ok());
    let tight = AuthConfig {
        max_datalog_iterations: 10,
        ..AuthConfig::default()
    };
    let v = verifier(&[&public]).bounded(&tight);
    assert_eq!(
        v.verify_at(t.as_bytes(), now),
        Err(AuthFailure::InvalidCaveat)
    );
}
