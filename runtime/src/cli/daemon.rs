//! `svc-overlay run`: one node on tokio TCP, with signals, config reload and the
//! `listening` announcement that scripts and tests wait for.

use std::path::PathBuf;

use overlay_core::Config;

use crate::cli::signals::{Sig, Signals};
use crate::config::{self, Overrides};
use crate::io::net::TokioNet;
use crate::node::{Node, NodeControl, NodeOptions};
use crate::telemetry::logging::Logging;

/// Lifts the soft `RLIMIT_NOFILE` to the hard limit: the common soft default of 1024 is
/// what `overlay.max_conns` defaults to, so without this a connection flood would exhaust
/// descriptors (and `fd_headroom`) long before the node's own bound applies.
fn raise_fd_limit(cfg: &Config) {
    let want = cfg.overlay.max_conns as u64 + cfg.admin.max_conns as u64 + cfg.readiness.fd_reserve;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) if soft < want => tracing::warn!(
            event = "fd_limit",
            soft,
            want,
            "RLIMIT_NOFILE is below overlay.max_conns + admin.max_conns + readiness.fd_reserve; \
             fd_headroom will fail before max_conns is reached"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(event = "fd_limit", error = %e, "could not raise RLIMIT_NOFILE"),
    }
}

pub struct RunArgs {
    pub config: Option<PathBuf>,
    pub overrides: Overrides,
}

/// Runs the daemon until SIGTERM/SIGINT has drained it. `cfg` is already loaded and
/// validated from `args`.
pub async fn run(args: RunArgs, cfg: Config, logging: &Logging) -> anyhow::Result<()> {
    let mut signals = Signals::install()?;
    raise_fd_limit(&cfg);
    let opts = NodeOptions {
        log_policy: Some(logging.policy.clone()),
        announce: true,
        heap_trim: true,
        ..NodeOptions::default()
    };
    let node = Node::start(TokioNet, cfg.clone(), opts).await?;
    let ctl = node.control();
    let mut current = cfg;
    let mut stopping = false;
    let wait = node.wait();
    tokio::pin!(wait);
    loop {
        tokio::select! {
            r = &mut wait => {
                r?;
                return Ok(());
            }
            sig = signals.next() => match sig {
                Sig::Reload => {
                    let ok = reload(&ctl, &args, &mut current, logging).await;
                    ctl.config_loaded(ok).await;
                }
                Sig::Stop(name) if !stopping => {
                    stopping = true;
                    tracing::info!(event = "signal", signal = name, "stopping");
                    ctl.begin_shutdown().await;
                }
                Sig::Stop(name) => {
                    // The drain deadline already bounds the wait; say so rather than
                    // cutting the drain short.
                    tracing::info!(event = "signal", signal = name,
                        "already draining; exit follows within shutdown.drain_deadline");
                }
            },
        }
    }
}

/// SIGHUP: reload the layered config. Live keys go to the node; keys that need a restart
/// are named; an invalid file leaves everything as it was and returns false, which
/// readiness reports (`cfg_loaded`) until a reload succeeds.
async fn reload(
    ctl: &NodeControl,
    args: &RunArgs,
    current: &mut Config,
    logging: &Logging,
) -> bool {
    let new = match config::load(args.config.as_deref(), &args.overrides) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(event = "config_reload", reason = "invalid", error = %e,
                "config reload failed; keeping the running config");
            return false;
        }
    };
    // Files change under unchanged paths (rotation): reread them on every SIGHUP.
    reload_tls(ctl, &new);
    let changes = config::diff(current, &new);
    // Key and token files may have changed under the same names: a rotation is a reload.
    let files = !new.auth.verify_keys.is_empty() || !new.auth.token_file.is_empty();
    if changes.is_empty() && !files {
        tracing::info!(event = "config_reload", changes = 0u64, "config unchanged");
        return true;
    }
    let mut restart = match ctl.reconfigure(new.clone()).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(event = "config_reload", reason = "rejected", error = %e,
                "config reload failed; keeping the running config");
            return false;
        }
    };
    restart.extend(runtime_restart_keys(current, &new));
    if let Err(e) = logging.reconfigure(&new.log) {
        tracing::warn!(event = "config_reload", reason = "log.level", error = %e,
            "log level not changed");
    }
    let diff: Vec<String> = changes.iter().map(ToString::to_string).collect();
    tracing::info!(
        event = "config_reload",
        changes = diff.len() as u64,
        diff = %diff.join("; "),
        "config reloaded"
    );
    if !restart.is_empty() {
        tracing::warn!(
            event = "config_restart_required",
            keys = %restart.join(","),
            "these keys keep their old values until a restart"
        );
    }
    *current = new;
    true
}

/// New certificates and keys for new handshakes; established sessions are not touched.
/// A file that cannot be used keeps the old ones, and the line says which file and why.
fn reload_tls(ctl: &NodeControl, cfg: &Config) {
    match ctl.reload_tls(cfg) {
        Ok(true) => tracing::info!(event = "tls_reload", "TLS certificates and keys reloaded"),
        Ok(false) => {}
        Err(e) => tracing::error!(event = "tls_reload", reason = "invalid", key = e.key,
            file = %e.file, error = %e.why, "TLS files not reloaded; keeping the ones in use"),
    }
}

/// Keys whose bounds the runtime sized once at start (the bus channel, the admin
/// plane's limits): a reload cannot resize them, so an operator must hear that
/// the new value waits for a restart.
fn runtime_restart_keys(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if old.log.bus_capacity != new.log.bus_capacity {
        keys.push("log.bus_capacity");
    }
    let (o, n) = (&old.admin, &new.admin);
    if o.max_conns != n.max_conns {
        keys.push("admin.max_conns");
    }
    if o.header_timeout != n.header_timeout {
        keys.push("admin.header_timeout");
    }
    if o.write_timeout != n.write_timeout {
        keys.push("admin.write_timeout");
    }
    if o.max_pipelined != n.max_pipelined {
        keys.push("admin.max_pipelined");
    }
    if o.max_header_bytes != n.max_header_bytes {
        keys.push("admin.max_header_bytes");
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_sized_at_start_need_a_restart() {
        let old = Config::default();
        let mut new = old.clone();
        assert!(runtime_restart_keys(&old, &new).is_empty());
        new.log.bus_capacity = 64;
        new.admin.max_conns = 8;
        new.admin.max_pipelined = 4;
        new.overlay.peer.read_credit_chunks = 2; // live: new connections get it
        assert_eq!(
            runtime_restart_keys(&old, &new),
            vec!["log.bus_capacity", "admin.max_conns", "admin.max_pipelined"]
        );
    }
}
