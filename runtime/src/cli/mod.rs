//! The command line (DESIGN.md section 7: the contract scripts rely on).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

pub mod daemon;
pub mod demo;
pub mod peer;
pub mod signals;

use crate::config::{self, Overrides};
use crate::telemetry::logging::{self, Sink};
use daemon::RunArgs;
use peer::{MessageLine, PublishArgs};

const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("OVERLAY_BUILD_GIT"),
    " ",
    env!("OVERLAY_BUILD_PROFILE"),
    ")"
);

/// svc-overlay: the session and gossip plane of an overlay network (OAP/1).
///
/// Without a subcommand, runs the daemon with the built-in defaults (plus any
/// SVC_OVERLAY_* environment).
#[derive(Parser, Debug)]
#[command(name = "svc-overlay", version = VERSION, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the daemon. Sources, highest first: flags, SVC_OVERLAY_* environment
    /// (`__` nests: SVC_OVERLAY_OVERLAY__MAX_CONNS=10), the TOML file, defaults.
    Run(RunOpts),
    /// Publish messages to a node as an OAP/1 client.
    Publish(PublishOpts),
    /// Receive messages from a node; one JSON line per message on stdout.
    Subscribe(SubscribeOpts),
    /// Run a local mesh of nodes with traffic and print their admin URLs.
    Demo {
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
        nodes: u16,
        /// TOML config every node starts from (+ SVC_OVERLAY_* environment); each node's
        /// listen addresses and node id are the demo's.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Node i listens for OAP/1 on 127.0.0.1:(PORT + i); 0: ephemeral ports.
        #[arg(long, default_value_t = 0)]
        listen_base: u16,
        /// Node i serves its admin plane on 127.0.0.1:(PORT + i), so a Prometheus or a
        /// dashboard can be pointed at fixed URLs; 0: ephemeral ports.
        #[arg(long, default_value_t = 0)]
        admin_base: u16,
    },
    /// Validate a config file and print the effective config (secrets redacted).
    CheckConfig { file: PathBuf },
}

#[derive(Args, Debug, Default)]
pub struct RunOpts {
    /// TOML config file; SIGHUP reloads it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// OAP/1 listen address (overlay.listen).
    #[arg(long)]
    pub listen: Option<String>,
    /// Admin plane address (admin.listen).
    #[arg(long)]
    pub admin: Option<String>,
    /// Peer to keep dialed (repeatable; replaces overlay.peers).
    #[arg(long = "peer")]
    pub peers: Vec<String>,
    /// Node id in HELLO (overlay.node_id).
    #[arg(long)]
    pub node_id: Option<String>,
}

impl RunOpts {
    fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            admin: self.admin.clone(),
            peers: self.peers.clone(),
            node_id: self.node_id.clone(),
        }
    }
}

#[derive(Args, Debug)]
pub struct PublishOpts {
    /// Node address (host:port).
    #[arg(long)]
    pub to: String,
    #[arg(long)]
    pub topic: String,
    #[arg(long, default_value_t = 1)]
    pub count: u64,
    /// Size of generated data when DATA is not given.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Messages per second (default: as fast as the acks, or the connection, allow).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Send without asking for acks: refusals are still heard in the node's refusal
    /// notices, but nothing is confirmed.
    #[arg(long)]
    pub no_ack: bool,
    /// Messages awaiting their ack at most (acked flow control).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub window: u64,
    /// TOML config file (ttl from overlay.gossip.default_ttl, notice wait from
    /// overlay.peer.notice_interval); SVC_OVERLAY_* environment applies too.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub connect: ConnectOpts,
    /// Message data (UTF-8); overrides --size.
    pub data: Option<String>,
}

#[derive(Args, Debug)]
pub struct ConnectOpts {
    /// Keep retrying to reach the node this long (humantime: 500ms, 10s).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: std::time::Duration,
}

#[derive(Args, Debug)]
pub struct SubscribeOpts {
    #[arg(long)]
    pub to: String,
    /// Topic filter (repeatable; none means every topic).
    #[arg(long = "topic")]
    pub topics: Vec<String>,
    /// Exit after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    #[command(flatten)]
    pub connect: ConnectOpts,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Cmd::Run(RunOpts::default())) {
        Cmd::Run(o) => run(o),
        Cmd::CheckConfig { file } => check_config(&file),
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
    runtime()?.block_on(peer::subscribe(&o.to, o.topics, o.count, within, |m| {
        if let Ok(line) = serde_json::to_string(&MessageLine::new(m)) {
            println!("{line}");
        }
    }))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_the_contract() {
        let c = Cli::try_parse_from([
            "svc-overlay",
            "run",
            "--config",
            "f.toml",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--peer",
            "a:1",
            "--peer",
            "b:2",
            "--node-id",
            "n1",
        ])
        .unwrap();
        let Some(Cmd::Run(r)) = c.command else {
            panic!()
        };
        assert_eq!(r.peers, vec!["a:1", "b:2"]);
        assert_eq!(r.node_id.as_deref(), Some("n1"));

        let c = Cli::try_parse_from([
            "svc-overlay",
            "publish",
            "--to",
            "x:1",
            "--topic",
            "t",
            "--count",
            "5",
            "--size",
            "10",
            "--rate",
            "2.5",
            "--no-ack",
            "--connect-timeout",
            "250ms",
            "hello",
        ])
        .unwrap();
        let Some(Cmd::Publish(p)) = c.command else {
            panic!()
        };
        assert_eq!(
            (p.count, p.size, p.rate, p.no_ack),
            (5, 10, Some(2.5), true)
        );
        assert_eq!(
            p.connect.connect_timeout,
            std::time::Duration::from_millis(250)
        );
        assert_eq!(p.window, 256);
        assert_eq!(p.data.as_deref(), Some("hello"));

        let c = Cli::try_parse_from([
            "svc-overlay",
            "subscribe",
            "--to",
            "x:1",
            "--topic",
            "a",
            "--topic",
            "b",
            "--count",
            "3",
        ])
        .unwrap();
        assert!(matches!(c.command, Some(Cmd::Subscribe(ref s)) if s.topics.len() == 2));
        assert!(Cli::try_parse_from(["svc-overlay", "demo", "--nodes", "4"]).is_ok());
        assert!(Cli::try_parse_from([
            "svc-overlay",
            "demo",
            "--config",
            "d.toml",
            "--listen-base",
            "7000",
            "--admin-base",
            "7100"
        ])
        .is_ok());
        assert!(Cli::try_parse_from(["svc-overlay", "check-config", "f.toml"]).is_ok());
        assert!(Cli::try_parse_from(["svc-overlay"])
            .unwrap()
            .command
            .is_none());
    }
}
