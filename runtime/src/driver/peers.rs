//! Keeping the configured peers dialed: one resolver per peer given by name, and one dialer
//! per address the entries stand for now (`io::resolve::PeerTargets`). A dialer whose
//! address is gone is stopped, or, while its connection is open, retired: the connection is
//! left to end by itself, and the dialer ends with it. Retiring rather than stopping is what
//! keeps an address that flaps out of an answer and back (rotating DNS answers) at one
//! connection: the dialer it comes back to is the one still holding it.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use overlay_core::observe::ResolveOutcome;

use super::Driver;
use crate::io::messages::AfterPanic;
use crate::io::net::Net;
use crate::io::resolve::resolve_loop;
use crate::telemetry::bus::BusKind;

impl<N: Net> Driver<N> {
    /// Brings the resolvers and dialers in line with `targets`: at start, after a reload,
    /// after an answer that changed. Nothing new starts once the node drains.
    pub(crate) fn sync_peers(&mut self) {
        if self.drain.is_some() {
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
        let addrs = self.targets.addrs();
        let open: BTreeSet<&str> = self
            .conns
            .values()
            .filter_map(|c| c.dial.as_deref())
            .collect();
        self.dials.retain(|addr, d| {
            d.retired = !addrs.contains(addr);
            let keep = !d.retired || open.contains(addr.as_str());
            if !keep {
                d.task.abort();
            }
            keep
        });
        for addr in addrs {
            self.spawn_dialer(addr);
        }
    }

    pub(super) fn spawn_resolver(&mut self, name: String) {
        if self.resolvers.contains_key(&name) || self.drain.is_some() {
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
    /// changed `overlay.peer_resolve_interval`); the answers they had stay.
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
