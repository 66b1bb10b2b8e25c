use clap::{Parser, Subcommand};

/// svc-overlay: the session and gossip plane of an overlay network.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon.
    Run {
        #[arg(long)]
        config: Option<std::path::PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    println!(
        "svc-overlay {} {:?}",
        env!("CARGO_PKG_VERSION"),
        cli.command
    );
    Ok(())
}
