//! Handles to a running node: the `Node` itself (which waits for the end) and the cloneable
//! `NodeControl` (commands), both talking to the driver over its command channel.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use overlay_core::oap::MsgId;
use overlay_core::{Config, Probe, PublishError};
use tokio::sync::{mpsc, oneshot};

use super::Node;
use crate::admin::ready::ReadySnapshot;
use crate::driver::{Command, NodeStats, ShutdownReport};
use crate::io::tls::{MaterialError, TlsContext};
use crate::telemetry::bus::Subscription;

/// A cloneable handle for commands, usable while another task waits on the `Node`.
#[derive(Clone)]
pub struct NodeControl {
    /// The plain listener's address, or the TLS listener's when there is no plain one.
    pub(super) overlay_addr: SocketAddr,
    pub(super) tls_addr: Option<SocketAddr>,
    pub(super) tls: Arc<TlsContext>,
    pub(super) node_id: String,
    pub(super) cmd: mpsc::Sender<Command>,
}

impl std::ops::Deref for Node {
    type Target = NodeControl;
    fn deref(&self) -> &NodeControl {
        &self.ctl
    }
}

impl Node {
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }
    pub fn control(&self) -> NodeControl {
        self.ctl.clone()
    }
    /// This node's recorder, for embedders that scrape without HTTP.
    pub fn prometheus(&self) -> &PrometheusHandle {
        &self.prometheus
    }
    pub fn ready(&self) -> ReadySnapshot {
        (*self.ready.load()).clone()
    }

    /// Events from now on; lag is counted in `bus_lagged_total`.
    pub fn subscribe(&self) -> Subscription {
        Subscription::new(self.bus.subscribe(), self.metrics.bus_lagged.clone())
    }

    /// Drains, shuts down and waits for the end.
    pub async fn shutdown(self) -> anyhow::Result<ShutdownReport> {
        self.begin_shutdown().await;
        self.wait().await
    }

    /// Waits for the node to stop (after a drain was begun).
    pub async fn wait(self) -> anyhow::Result<ShutdownReport> {
        let Node { done, ctl, .. } = self;
        // Keep the command channel open while waiting: closing it would itself drain.
        let r = done.await;
        drop(ctl);
        r.map_err(|e| anyhow::anyhow!("driver failed: {e}"))
    }
}

impl NodeControl {
    pub fn overlay_addr(&self) -> SocketAddr {
        self.overlay_addr
    }
    pub fn node_id(&self) -> &str {
        &self.node_id
    }
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Rereads the TLS files of `cfg` (SIGHUP). New handshakes use them; established
    /// sessions keep going. On an error the old files stay in use. `Ok(false)`: no TLS is
    /// configured, nothing to reload.
    pub fn reload_tls(&self, cfg: &Config) -> Result<bool, MaterialError> {
        self.tls.reload(cfg)
    }

    async fn ask<T>(&self, f: impl FnOnce(oneshot::Sender<T>) -> Command) -> anyhow::Result<T> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(f(tx))
            .await
            .map_err(|_| anyhow::anyhow!("node has stopped"))?;
        rx.await.map_err(|_| anyhow::anyhow!("node has stopped"))
    }

    /// Publishes a message from this node.
    pub async fn publish(
        &self,
        topic: &str,
        data: Bytes,
        ttl: Option<u8>,
    ) -> anyhow::Result<Result<MsgId, PublishError>> {
        let topic = topic.to_string();
        self.ask(|reply| Command::Publish {
            topic,
            data,
            ttl,
            reply,
        })
        .await
    }

    /// Applies a new config; returns the keys that need a restart to take effect.
    pub async fn reconfigure(&self, mut cfg: Config) -> anyhow::Result<Vec<&'static str>> {
        cfg.validate()?;
        // An empty node id was filled in at start; an unchanged file must not read as a
        // change of id.
        crate::config::fill_node_id(&mut cfg, self.overlay_addr);
        if cfg.overlay.node_id == format!("node-{}", self.overlay_addr) {
            cfg.overlay.node_id = self.node_id.clone();
        }
        // Keys and the token file are read here, so a rotation is a reload and a file that
        // cannot be read fails the reload rather than the node.
        let (verifier, credential) = crate::token::auth_for(&cfg)?;
        self.ask(|reply| Command::Reconfigure {
            cfg: Box::new(cfg),
            verifier,
            credential,
            reply,
        })
        .await
    }

    pub async fn stats(&self) -> anyhow::Result<NodeStats> {
        self.ask(Command::Stats).await
    }

    /// Reports whether the running config is the one the operator last asked for: a
    /// reload that failed leaves `cfg_loaded` false until one succeeds.
    pub async fn config_loaded(&self, ok: bool) {
        let _ = self.cmd.send(Command::Probe(Probe::CfgLoaded, ok)).await;
    }

    /// Starts draining (idempotent): readiness goes down, peers hear GOAWAY.
    pub async fn begin_shutdown(&self) {
        let _ = self.cmd.send(Command::Drain).await;
    }
}
