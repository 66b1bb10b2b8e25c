//! `cargo bench -p svc-overlay --bench token`: what a HELLO's token verification costs the
//! driver loop (docs/OPERATIONS.md "Tokens"), for a minted token, an attenuated one (two
//! blocks), and the attenuated one against two verification keys (rotation). Ratios are to
//! the first case, measured in the same run.

use std::time::{Duration, Instant, SystemTime};

use overlay_core::cap::{Action, CapVerifier, Grant};
use overlay_core::oap::Role;
use svc_overlay::token::mint::{attenuate, mint, write_keypair, Claims, Restriction};
use svc_overlay::token::{load_public_key, TokenVerifier};

const ROUNDS: u32 = 500;

fn main() {
    let dir = std::env::temp_dir().join(format!("svc-overlay-token-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let root = dir.join("root");
    let (public, _) = write_keypair(&root).expect("root key");
    let (other, _) = write_keypair(&dir.join("other")).expect("other key");
    let claims = Claims {
        class: None,
        role: Role::Client,
        tenant: "acme".into(),
        grants: [Action::Publish, Action::Subscribe]
            .into_iter()
            .map(|action| Grant {
                topic: "feed".into(),
                action,
            })
            .collect(),
        expires: Some(SystemTime::now() + Duration::from_secs(600)),
    };
    let one = mint(&root, &claims).expect("mint");
    let narrowed = Restriction {
        actions: vec![Action::Subscribe],
        ..Default::default()
    };
    let two = attenuate(&one, &narrowed).expect("attenuate");
    let verifier = |keys: &[&str]| {
        TokenVerifier::new(
            keys.iter()
                .map(|k| load_public_key(k).expect("key"))
                .collect(),
        )
    };
    let cases = [
        ("1 key, 1 block", verifier(&[&public]), &one),
        ("1 key, 2 blocks", verifier(&[&public]), &two),
        ("2 keys, 2 blocks", verifier(&[&other, &public]), &two),
    ];
    let mut baseline = None;
    for (name, v, token) in cases {
        let t0 = Instant::now();
        for _ in 0..ROUNDS {
            v.verify(token.as_bytes()).expect("a good token verifies");
        }
        let each = t0.elapsed() / ROUNDS;
        let base = *baseline.get_or_insert(each);
        println!(
            "{name:>16}: {each:>10.2?} per verify ({:.2}x of 1 key, 1 block), token {} B",
            each.as_secs_f64() / base.as_secs_f64(),
            token.len()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
