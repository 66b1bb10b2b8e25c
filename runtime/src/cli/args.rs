//! The command line's grammar (clap): the subcommands and flags scripts rely on.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Overrides;

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
    /// Validate a config file and print the effective config.
    CheckConfig { file: PathBuf },
    /// Capability tokens: make keys, mint, attenuate and inspect tokens.
    #[command(subcommand)]
    Token(TokenCmd),
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Make a key pair: FILE holds the private key (mode 0600), FILE.pub the public one
    /// (for `auth.verify_keys`).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Mint a token with a private key; prints it (base64) or writes it to --out.
    Mint {
        /// Private key file (from `token keygen`).
        #[arg(long)]
        key: PathBuf,
        /// Session role the token is for: client or peer.
        #[arg(long, default_value = "client")]
        role: String,
        /// Tenant the token is for (the node's `auth.tenant`).
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Topic it may publish to (repeatable; `*` is every topic).
        #[arg(long = "publish")]
        publish: Vec<String>,
        /// Topic it may subscribe to (repeatable; `*` is every topic).
        #[arg(long = "subscribe")]
        subscribe: Vec<String>,
        #[command(flatten)]
        expiry: ExpiryOpts,
        /// Class shown in logs as `cap_id` (default: from the grants, e.g. cap:feed:write).
        #[arg(long)]
        class: Option<String>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Narrow a token by appending a block of checks; needs no key.
    Attenuate {
        #[arg(long)]
        token_file: PathBuf,
        /// Keep only these topics (repeatable).
        #[arg(long = "topic")]
        topics: Vec<String>,
        /// Keep only these actions: publish, subscribe (repeatable).
        #[arg(long = "action")]
        actions: Vec<String>,
        #[command(flatten)]
        expiry: ExpiryOpts,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print a token's blocks; with --verify-key, whether that key signed it.
    Inspect {
        #[arg(long)]
        token_file: PathBuf,
        /// Public key, inline (ed25519/...) or a file (repeatable).
        #[arg(long = "verify-key")]
        verify_keys: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct ExpiryOpts {
    /// Valid for this long from now (humantime: 10m, 24h).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "expires_at")]
    pub ttl: Option<std::time::Duration>,
    /// Valid until this instant (RFC 3339, e.g. 2026-12-31T00:00:00Z).
    #[arg(long, value_parser = humantime::parse_rfc3339_weak)]
    pub expires_at: Option<std::time::SystemTime>,
}

impl ExpiryOpts {
    pub fn at(&self) -> Option<std::time::SystemTime> {
        self.ttl
            .map(|d| std::time::SystemTime::now() + d)
            .or(self.expires_at)
    }
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
    /// Peer to keep dialed, `ip:port` or `host:port` (repeatable; replaces overlay.peers).
    #[arg(long = "peer")]
    pub peers: Vec<String>,
    /// Node id in HELLO (overlay.node_id).
    #[arg(long)]
    pub node_id: Option<String>,
}

impl RunOpts {
    pub(super) fn overrides(&self) -> Overrides {
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
    /// Capability token to present in HELLO (from `token mint`).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

impl ConnectOpts {
    /// The token of `--token-file`, as it travels in HELLO.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        self.token_file
            .as_deref()
            .map(crate::token::read_token)
            .transpose()
    }
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
