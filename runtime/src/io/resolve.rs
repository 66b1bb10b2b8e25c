//! Peers by name: what the configured peer entries stand for now. An entry whose host is an
//! IP address (`ip:port`, `tls://[id@]ip:port`) is reached at that address; one with a host
//! name is looked up at start and every `overlay.peer_resolve_interval` by its resolver
//! task, and stands for every address of its last good answer. The driver gives the core
//! each entry's addresses; the core keeps each dialed with its own backoff.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use overlay_core::PeerAddr;
use tokio::sync::mpsc;

use crate::io::messages::Control;
use crate::io::net::Net;

/// What a (validated) peer entry connects to: its `host:port`, without `tls://` and id.
pub(crate) fn host_port(peer: &str) -> &str {
    PeerAddr::parse(peer).map_or(peer, |p| p.host_port)
}

/// Whether a (validated) peer entry names its host rather than giving its address.
pub(crate) fn is_name(peer: &str) -> bool {
    host_port(peer).parse::<SocketAddr>().is_err()
}

/// Each configured entry with the dial addresses it stands for. A name nobody has answered
/// yet stands for none; a failed lookup changes nothing, so a name keeps its last good
/// answer through a DNS outage.
#[derive(Debug, Default)]
pub(crate) struct PeerTargets {
    /// In configuration order: an address two entries stand for is the first one's.
    entries: Vec<(String, BTreeSet<String>)>,
}

impl PeerTargets {
    pub(crate) fn new(peers: &[String]) -> PeerTargets {
        let mut t = PeerTargets::default();
        t.configure(peers);
        t
    }

    /// The configured entries are now `peers` (start, reload). A name still configured keeps
    /// its answer, so a reload does not stop dialing until the next lookup.
    pub(crate) fn configure(&mut self, peers: &[String]) {
        let mut old: BTreeMap<String, BTreeSet<String>> =
            std::mem::take(&mut self.entries).into_iter().collect();
        for p in peers {
            if self.entries.iter().any(|(e, _)| e == p) {
                continue;
            }
            let addrs = old.remove(p).unwrap_or_else(|| {
                if is_name(p) {
                    BTreeSet::new()
                } else {
                    BTreeSet::from([host_port(p).to_string()])
                }
            });
            self.entries.push((p.clone(), addrs));
        }
    }

    /// A lookup of `name` answered `addrs`. Whether that changed what `name` stands for; an
    /// answer for a name no longer configured (a lookup that raced a reload) changes nothing.
    pub(crate) fn answer(&mut self, name: &str, addrs: &[SocketAddr]) -> bool {
        match self.entries.iter_mut().find(|(e, _)| e == name) {
            Some((_, set)) if is_name(name) => {
                let new: BTreeSet<String> = addrs.iter().map(SocketAddr::to_string).collect();
                let changed = *set != new;
                *set = new;
                changed
            }
            _ => false,
        }
    }

    /// The configured entries that are names, each needing a resolver.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .map(|(e, _)| e.as_str())
            .filter(|e| is_name(e))
    }

    pub(crate) fn is_configured_name(&self, name: &str) -> bool {
        is_name(name) && self.entries.iter().any(|(e, _)| e == name)
    }

    /// Every entry with the addresses to keep dialed for it: each address once, for the
    /// first entry that stands for it.
    pub(crate) fn entries(&self) -> Vec<(String, Vec<String>)> {
        let mut taken = BTreeSet::new();
        self.entries
            .iter()
            .map(|(e, set)| {
                let addrs = set.iter().filter(|a| taken.insert(*a)).cloned().collect();
                (e.clone(), addrs)
            })
            .collect()
    }
}

/// Looks the host of peer entry `name` up now and then every `every`, telling the driver each outcome. A lookup
/// slower than `timeout` or with no address fails like an error: the driver keeps the last
/// good answer either way. `failures` counts failed lookups in a row, for the log.
pub(crate) async fn resolve_loop<N: Net>(
    net: N,
    name: String,
    ctl: mpsc::Sender<Control<N::Stream>>,
    every: Duration,
    timeout: Duration,
) {
    let mut failures = 0u32;
    loop {
        let answer = match tokio::time::timeout(timeout, net.resolve(host_port(&name))).await {
            Ok(Ok(addrs)) if !addrs.is_empty() => Ok(addrs),
            Ok(Ok(_)) => Err("no address".to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("lookup timed out".to_string()),
        };
        failures = match answer {
            Ok(_) => 0,
            Err(_) => failures.saturating_add(1),
        };
        let msg = Control::Resolved {
            name: name.clone(),
            answer,
            failures,
        };
        if ctl.send(msg).await.is_err() {
            return;
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn addrs(t: &PeerTargets) -> BTreeSet<String> {
        t.entries().into_iter().flat_map(|(_, a)| a).collect()
    }

    #[test]
    fn addresses_stand_for_themselves_and_names_for_their_answer() {
        let mut t = PeerTargets::new(&peers(&["10.0.0.1:9444", "seed.example:9444"]));
        assert_eq!(t.names().collect::<Vec<_>>(), ["seed.example:9444"]);
        assert_eq!(addrs(&t), BTreeSet::from(["10.0.0.1:9444".to_string()]));
        let a = [addr("10.0.0.7:9444"), addr("10.0.0.1:9444")];
        assert!(t.answer("seed.example:9444", &a));
        let e = t.entries();
        assert_eq!(e[0].1, ["10.0.0.1:9444"]);
        assert_eq!(
            e[1].1,
            ["10.0.0.7:9444"],
            "an address named twice is dialed once"
        );
        assert!(
            !t.answer("seed.example:9444", &a),
            "the same answer is no change"
        );
        assert!(t.answer("seed.example:9444", &[addr("10.0.0.8:9444")]));
        assert!(
            !addrs(&t).contains("10.0.0.7:9444"),
            "an address that left the answer is dropped"
        );
        assert!(
            addrs(&t).contains("10.0.0.1:9444"),
            "still configured as an address itself"
        );
    }

    #[test]
    fn tls_entries_connect_to_their_host_and_port() {
        let t = PeerTargets::new(&peers(&[
            "tls://n2@10.0.0.2:9445",
            "tls://seed.example:9445",
        ]));
        assert_eq!(t.names().collect::<Vec<_>>(), ["tls://seed.example:9445"]);
        assert_eq!(host_port("tls://seed.example:9445"), "seed.example:9445");
        assert_eq!(t.entries()[0].1, ["10.0.0.2:9445"]);
    }

    #[test]
    fn a_reload_keeps_the_answers_of_names_still_configured() {
        let mut t = PeerTargets::new(&peers(&["a.example:1", "b.example:1"]));
        t.answer("a.example:1", &[addr("10.0.0.1:1")]);
        t.answer("b.example:1", &[addr("10.0.0.2:1")]);
        t.configure(&peers(&["a.example:1", "10.0.0.3:1"]));
        let want: BTreeSet<String> = ["10.0.0.1:1", "10.0.0.3:1"].map(String::from).into();
        assert_eq!(addrs(&t), want);
        assert!(
            !t.answer("b.example:1", &[addr("10.0.0.2:1")]),
            "no longer configured"
        );
        assert!(!addrs(&t).contains("10.0.0.2:1"));
        assert!(!t.is_configured_name("b.example:1"));
        assert!(
            !t.is_configured_name("10.0.0.3:1"),
            "an address is not a name"
        );
    }
}
