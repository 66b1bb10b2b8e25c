//! `svc-overlay token ...`: key pairs, minting, attenuation and inspection of capability
//! tokens (runtime/src/token). Tokens print as base64 text: that is what token files hold
//! and what HELLO carries.

use std::path::Path;
use std::process::ExitCode;

use overlay_core::cap::{Action, Grant};
use overlay_core::oap::Role;

use super::args::TokenCmd;
use crate::token::mint::{self, Claims, Restriction};
use crate::token::read_token;

pub(super) fn run(cmd: TokenCmd) -> ExitCode {
    match run_cmd(cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("svc-overlay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_cmd(cmd: TokenCmd) -> anyhow::Result<()> {
    match cmd {
        TokenCmd::Keygen { out } => {
            let (public, pub_path) = mint::write_keypair(&out)?;
            eprintln!(
                "private key in {}, public key in {}",
                out.display(),
                pub_path.display()
            );
            println!("{public}");
        }
        TokenCmd::Mint {
            key,
            role,
            tenant,
            publish,
            subscribe,
            expiry,
            class,
            out,
        } => {
            let role = match role.as_str() {
                "client" => Role::Client,
                "peer" => Role::Peer,
                other => anyhow::bail!("--role {other}: must be client or peer"),
            };
            let grants = (publish.iter().map(|t| (t, Action::Publish)))
                .chain(subscribe.iter().map(|t| (t, Action::Subscribe)))
                .map(|(t, action)| Grant {
                    topic: t.clone(),
                    action,
                })
                .collect();
            let claims = Claims {
                class,
                role,
                tenant,
                grants,
                expires: expiry.at(),
            };
            emit(&mint::mint(&key, &claims)?, out.as_deref())?;
        }
        TokenCmd::Attenuate {
            token_file,
            topics,
            actions,
            expiry,
            out,
        } => {
            let actions = actions
                .iter()
                .map(|a| {
                    Action::parse(a)
                        .ok_or_else(|| anyhow::anyhow!("--action {a}: publish or subscribe"))
                })
                .collect::<anyhow::Result<_>>()?;
            let r = Restriction {
                topics,
                actions,
                expires: expiry.at(),
            };
            emit(
                &mint::attenuate(&read_token(&token_file)?, &r)?,
                out.as_deref(),
            )?;
        }
        TokenCmd::Inspect {
            token_file,
            verify_keys,
        } => print!(
            "{}",
            mint::inspect(&read_token(&token_file)?, &verify_keys)?
        ),
    }
    Ok(())
}

/// A token to stdout, or to a file only its owner reads (a token is a bearer secret).
fn emit(token: &str, out: Option<&Path>) -> anyhow::Result<()> {
    let Some(path) = out else {
        println!("{token}");
        return Ok(());
    };
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    o.mode(0o600);
    let mut f = o.open(path)?;
    f.write_all(format!("{token}\n").as_bytes())?;
    Ok(())
}
