//! `svc-overlay demo`: a small mesh in one process on 127.0.0.1 ephemeral ports, each node
//! with its own recorder and admin plane, and a publisher generating traffic.

use std::time::Duration;

use bytes::Bytes;
use overlay_core::Config;

use crate::cli::signals::{Sig, Signals};
use crate::io::net::TokioNet;
use crate::node::{Node, NodeOptions};

const TOPIC: &str = "demo";
const PUBLISH_EVERY: Duration = Duration::from_millis(250);

/// Node `i` dials node `i - 1` and node `(i - 1) / 2`: a connected mesh with a few
/// redundant paths, so relays and dedupe both show in the metrics.
pub fn peers_of(i: usize) -> Vec<usize> {
    if i == 0 {
        return Vec::new();
    }
    let mut p = vec![i - 1, (i - 1) / 2];
    p.dedup();
    p
}

/// Where the demo's nodes listen: node `i` on `base + i`, or an ephemeral port for 0.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ports {
    pub listen_base: u16,
    pub admin_base: u16,
}

impl Ports {
    /// Every node's ports fit below 65536.
    pub fn check(&self, nodes: usize) -> Result<(), String> {
        for (flag, base) in [
            ("--listen-base", self.listen_base),
            ("--admin-base", self.admin_base),
        ] {
            if base != 0 && base as usize + nodes > usize::from(u16::MAX) + 1 {
                return Err(format!(
                    "{flag} {base}: {nodes} nodes do not fit below 65536"
                ));
            }
        }
        Ok(())
    }

    fn addr(base: u16, i: usize) -> String {
        let port = if base == 0 { 0 } else { base as usize + i };
        format!("127.0.0.1:{port}")
    }
}

pub async fn run(nodes: usize, base: Config, ports: Ports) -> anyhow::Result<()> {
    let mut signals = Signals::install()?;
    let mut mesh: Vec<Node> = Vec::with_capacity(nodes);
    for i in 0..nodes {
        let mut cfg = base.clone();
        cfg.overlay.listen = Ports::addr(ports.listen_base, i);
        cfg.admin.listen = Ports::addr(ports.admin_base, i);
        cfg.overlay.node_id = format!("demo-{i}");
        cfg.overlay.peers = peers_of(i)
            .into_iter()
            .map(|p| mesh[p].overlay_addr().to_string())
            .collect();
        let node = Node::start(TokioNet, cfg, NodeOptions::default()).await?;
        println!(
            "node {i} {}: overlay {} admin http://{}/metrics",
            node.node_id(),
            node.overlay_addr(),
            node.admin_addr().map(|a| a.to_string()).unwrap_or_default()
        );
        mesh.push(node);
    }
    println!("publishing on topic {TOPIC:?} every {PUBLISH_EVERY:?}; Ctrl-C to stop");
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let from = &mesh[(n as usize) % mesh.len()];
                let data = Bytes::from(format!("demo message #{n} from {}", from.node_id()));
                if let Ok(Err(e)) = from.publish(TOPIC, data, None).await {
                    tracing::warn!(event = "publish", reason = "refused", error = %e);
                }
                n += 1;
            }
            sig = signals.next() => {
                if let Sig::Stop(_) = sig {
                    break;
                }
            }
        }
    }
    for node in &mesh {
        node.begin_shutdown().await;
    }
    for node in mesh {
        node.wait().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_is_connected() {
        assert!(peers_of(0).is_empty());
        assert_eq!(peers_of(1), vec![0]);
        assert_eq!(peers_of(2), vec![1, 0]);
        for i in 1..50 {
            assert!(peers_of(i).iter().all(|p| *p < i));
        }
    }
}
