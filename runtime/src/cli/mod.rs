//! The command line (docs/OPERATIONS.md, "Running": the contract scripts rely on): `main` and what
//! each subcommand runs. The grammar is in `args`, the daemon in `daemon`, the local mesh
//! in `demo`, the OAP/1 clients in `peer`.

use std::process::ExitCode;

use clap::Parser;

use crate::config::{self, Overrides};
use crate::telemetry::logging::{self, Sink};
use daemon::RunArgs;
use peer::{MessageLine, PublishArgs};

mod args;
pub mod daemon;
pub mod demo;
mod malloc;
pub mod peer;
pub mod signals;
mod token;

pub use args::{Cli, Cmd, ConnectOpts, PublishOpts, RunOpts, SubscribeOpts, TokenCmd};

pub fn main() -> ExitCode {
    malloc::configure();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Cmd::Run(RunOpts::default())) {
        Cmd::Run(o) => run(o),
        Cmd::CheckConfig { file } => check_config(&file),
        Cmd::Token(t) => token::run(t),
        Cmd::Publish(o) => client(client_log(), || publish(o)),
        Cmd::Subscribe(o) => client(client_log(), || subscribe(o)),
        Cmd::Demo {
            nodes,
            config,
            listen_base,
            admin_base,
        } => demo(
            nodes as usize,
            config.as_deref(),
            crate::cli::demo::Ports {
                listen_base,
                admin_base,
            },
        ),
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("svc-overlay")
        .build()
}

/// Logs panics as JSON error lines (a contained task panic is still worth a line).
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(
            event = "panic",
            reason = "panic",
            detail = %logging::truncate(info.to_string())
        );
    }));
}

fn run(o: RunOpts) -> ExitCode {
    let overrides = o.overrides();
    let cfg = match config::load(o.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("svc-overlay: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("svc-overlay: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // OTLP's batch processor spawns onto the runtime at init.
    let _enter = rt.enter();
    let logging = match logging::init(&cfg.log, Sink::Stdout) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("svc-overlay: {e}");
            return ExitCode::from(2);
        }
    };
    log_panics();
    let args = RunArgs {
        config: o.config,
        overrides,
    };
    let r = rt.block_on(daemon::run(args, cfg, &logging));
    logging.shutdown();
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(event = "fatal", error = %format!("{e:#}"), "svc-overlay failed");
            eprintln!("svc-overlay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(file: &std::path::Path) -> ExitCode {
    match config::load(Some(file), &Overrides::default()) {
        Ok(cfg) => {
            print!("{}", config::to_toml(&cfg));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("svc-overlay: {e}");
            ExitCode::from(2)
        }
    }
}

/// Logging of the client commands: defaults, with the level from the environment.
fn client_log() -> overlay_core::config::LogConfig {
    let mut log = overlay_core::config::LogConfig::default();
    if let Ok(level) = std::env::var("SVC_OVERLAY_LOG__LEVEL") {
        log.level = level;
    }
    log
}

/// Client commands log to stderr: their stdout is data.
fn client(
    log: overlay_core::config::LogConfig,
    f: impl FnOnce() -> anyhow::Result<ExitCode>,
) -> ExitCode {
    if let Err(e) = logging::init(&log, Sink::Stderr) {
        eprintln!("svc-overlay: {e}");
        return ExitCode::from(2);
    }
    match f() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("svc-overlay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn publish(o: PublishOpts) -> anyhow::Result<ExitCode> {
    let cfg = match config::load(o.config.as_deref(), &Overrides::default()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("svc-overlay: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let args = PublishArgs {
        count: o.count,
        size: o.size,
        rate: o.rate,
        ack: !o.no_ack,
        data: o.data,
        ttl: cfg.overlay.gossip.default_ttl,
        window: o.window as usize,
        connect_timeout: o.connect.connect_timeout,
        token: o.connect.token()?,
        linger: peer::linger_for(cfg.overlay.peer.notice_interval),
        ..PublishArgs::new(o.to, o.topic)
    };
    let s = runtime()?.block_on(peer::publish(&args))?;
    println!("{}", serde_json::to_string(&s)?);
    // A script must not take a run with refused or unconfirmed messages for a success.
    Ok(if s.all_taken() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn subscribe(o: SubscribeOpts) -> anyhow::Result<ExitCode> {
    let within = o.connect.connect_timeout;
    let token = o.connect.token()?.map(bytes::Bytes::from);
    runtime()?.block_on(peer::subscribe(
        &o.to,
        o.topics,
        o.count,
        within,
        token,
        |m| {
            if let Ok(line) = serde_json::to_string(&MessageLine::new(m)) {
                println!("{line}");
            }
        },
    ))?;
    Ok(ExitCode::SUCCESS)
}

fn demo(nodes: usize, file: Option<&std::path::Path>, ports: crate::cli::demo::Ports) -> ExitCode {
    if let Err(e) = ports.check(nodes) {
        eprintln!("svc-overlay: {e}");
        return ExitCode::from(2);
    }
    let mut base = match config::load(file, &Overrides::default()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("svc-overlay: {e}");
            return ExitCode::from(2);
        }
    };
    // The demo's output is the URL list; node chatter goes to stderr, warnings only
    // unless asked for.
    if std::env::var_os("SVC_OVERLAY_LOG__LEVEL").is_none() {
        base.log.level = "warn".into();
    }
    client(base.log.clone(), || {
        runtime()?.block_on(crate::cli::demo::run(nodes, base.clone(), ports))?;
        Ok(ExitCode::SUCCESS)
    })
}
