//! The configured peers, handed to the core: one resolver per peer given by name, and after
//! every change (start, reload, an answer that changed) each entry's current addresses
//! given to the core (`Overlay::set_peer_addrs`), which decides when each is dialed and
//! stops redialing an address that left its answer (its open session stays).

use std::net::SocketAddr;

use overlay_core::observe::ResolveOutcome;

use super::Driver;
use crate::io::messages::AfterPanic;
use crate::io::net::Net;
use crate::io::resolve::resolve_loop;
use crate::telemetry::bus::BusKind;

impl<N: Net> Driver<N> {
    /// Brings the resolvers and the core's dial set in line with `targets`. Nothing new
    /// starts once the node drains.
    pub(crate) fn sync_peers(&mut self) {
        if self.overlay.is_draining() {
            return;
        }
        let targets = &self.targets;
        self.resolvers.retain(|name, task| {
            let keep = targets.is_configured_name(name);
            if !keep {
                task.abort();
            }
            keep
        });
        let names: Vec<String> = self.targets.names().map(String::from).collect();
        for name in names {
            if !self.resolvers.contains_key(&name) {
                self.spawn_resolver(name);
            }
        }
        let now = self.now();
        let entries = self.targets.entries();
        self.overlay
            .retain_peers(|p| entries.iter().any(|(e, _)| e == p));
        // Connects the core no longer wants would be dropped when they came back; stop them
        // now instead.
        self.dials.retain(|(peer, addr), task| {
            let keep = entries
                .iter()
                .any(|(e, addrs)| **e == **peer && addrs.contains(addr));
            if !keep {
                task.abort();
            }
            keep
        });
        for (entry, addrs) in entries {
            self.overlay.set_peer_addrs(now, &entry, addrs);
        }
        self.drain_outputs(now);
    }

    pub(super) fn spawn_resolver(&mut self, name: String) {
        if self.resolvers.contains_key(&name) || self.overlay.is_draining() {
            return;
        }
        let fut = resolve_loop(
            self.net.clone(),
            name.clone(),
            self.ctl_tx.clone(),
            self.cfg.overlay.peer_resolve_interval,
            self.bounds.connect_timeout,
        );
        let task = self.spawn_supervised(AfterPanic::Resolve(name.clone()), "resolver", fut);
        self.resolvers.insert(name, task);
    }

    /// Stops every resolver, so that the next `sync_peers` starts them anew (a reload that
    /// changed `overlay.peer_resolve_interval`, or the drain); the answers they had stay.
    pub(super) fn restart_resolvers(&mut self) {
        for task in std::mem::take(&mut self.resolvers).into_values() {
            task.abort();
        }
    }

    pub(super) fn on_resolved(
        &mut self,
        name: String,
        answer: Result<Vec<SocketAddr>, String>,
        failures: u32,
    ) {
        match answer {
            Ok(mut addrs) => {
                self.overlay.metrics().peer_resolve(ResolveOutcome::Ok);
                if self.targets.answer(&name, &addrs) {
                    addrs.sort();
                    addrs.dedup();
                    self.publish(None, BusKind::Resolved { name, addrs });
                    self.sync_peers();
                }
            }
            Err(error) => {
                self.overlay.metrics().peer_resolve(ResolveOutcome::Error);
                self.publish(
                    None,
                    BusKind::ResolveFailed {
                        name,
                        error,
                        failures,
                    },
                );
            }
        }
    }
}
