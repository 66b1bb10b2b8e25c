//! The epidemic broadcast tree (Plumtree) over the sessions of peers that speak it: eager
//! push along the tree, announcements (IHAVE) on the other links, a pull (GRAFT) when an
//! announced message does not arrive in time, a PRUNE on duplicates, and a periodic DIGEST
//! of the store that repairs what a partition or a restart lost. Peers that speak only spec
//! sections 1–6 keep today's eager push with a ttl (`gossip.rs`).

use std::collections::VecDeque;

use super::*;
use crate::oap::{TreeFrame, DIGEST_SETTLE_MS, FEATURE_TREE, MAX_IDS};
use crate::observe::{PullOutcome, PushMode, StoreEviction, TreeOp};
use crate::session::TreeLink;
use crate::store::Stored;

/// Announcers remembered per missing message (who to pull from, in order).
const MAX_ANNOUNCERS: usize = 4;

/// A message announced to this node that has not arrived yet.
#[derive(Debug)]
pub(super) struct Missing {
    announcers: VecDeque<ConnId>,
    pub(super) deadline: Time,
    /// When it was first announced: how late it arrives, by whichever path, is what the
    /// pull delay learns from.
    pub(super) announced: Time,
    /// Pulled once already ahead of its deadline (see `rescue`).
    pub(super) rescued: bool,
}

/// Weight of one arrival in the running estimate of how late announced messages arrive.
const LAG_WEIGHT: u32 = 8;

fn op_of(f: &TreeFrame) -> TreeOp {
    match f {
        TreeFrame::IHave(_) => TreeOp::IHave,
        TreeFrame::Graft(_) => TreeOp::Graft,
        TreeFrame::Prune => TreeOp::Prune,
        TreeFrame::Digest(..) => TreeOp::Digest,
    }
}

impl Overlay {
    /// The features this node offers in HELLO.
    pub(super) fn features(&self) -> Vec<String> {
        if self.cfg.overlay.gossip.tree {
            vec![FEATURE_TREE.to_string()]
        } else {
            Vec::new()
        }
    }

    /// Makes an established peer session a tree link (both sides listed the feature).
    pub(super) fn join_tree(&mut self, now: Time, conn: ConnId) {
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.tree = Some(TreeLink {
                eager: true,
                pruned: false,
                pruned_at: now,
                first_at: None,
                announce: VecDeque::new(),
                // A first digest at once: a link that comes back after a partition or a
                // restart starts its repair immediately.
                next_digest: now,
                digested: false,
            });
        }
        self.update_tree_gauges();
    }

    pub(super) fn is_tree(&self, conn: ConnId) -> bool {
        self.sessions.get(&conn).is_some_and(|s| s.tree.is_some())
    }

    pub(super) fn send_tree(&mut self, conn: ConnId, f: &TreeFrame) {
        let payload = f.to_payload();
        let len = payload.len() as u64;
        let frame = Frame::new(AppProto::TREE, Flags::EVENT, 0, payload);
        self.metrics.tree_frames[Dir::Tx.index()][op_of(f).index()].increment(1);
        if matches!(f, TreeFrame::Digest(..)) {
            self.metrics.reconcile_bytes[Dir::Tx.index()].increment(len);
        }
        self.send_ctrl(conn, &frame);
    }

    /// A TREE frame from `conn`. On a session that did not negotiate the tree it is an
    /// app_proto no one serves here.
    pub(super) fn on_tree(&mut self, now: Time, conn: ConnId, frame: Frame) {
        if !self.is_tree(conn) {
            return self.on_other(conn, frame);
        }
        let parsed = (frame.flags.kind() == Some(FrameKind::Event))
            .then(|| TreeFrame::parse(&frame.payload))
            .flatten();
        let Some(f) = parsed else {
            return self.reject_frame(
                now,
                conn,
                &frame,
                RejectReason::Proto,
                1,
                "TREE frame is not a known EVENT op",
            );
        };
        self.metrics.tree_frames[Dir::Rx.index()][op_of(&f).index()].increment(1);
        self.outcome(Outcome::Delivered, 1);
        match f {
            TreeFrame::IHave(ids) => self.on_ihave(now, conn, ids),
            TreeFrame::Graft(ids) => self.on_graft(now, conn, ids),
            TreeFrame::Prune => self.set_eager(conn, false),
            TreeFrame::Digest(theirs, settle_ms) => {
                self.metrics.reconcile_bytes[Dir::Rx.index()].increment(frame.payload.len() as u64);
                // Compared over the same part of the store the sender summed.
                let settle = Duration::from_millis(settle_ms as u64);
                let ids = self.store.differing(now, settle, &theirs, MAX_IDS);
                if !ids.is_empty() {
                    let f = TreeFrame::IHave(ids);
                    self.metrics.reconcile_bytes[Dir::Tx.index()]
                        .increment(f.to_payload().len() as u64);
                    self.send_tree(conn, &f);
                }
            }
        }
    }

    fn set_eager(&mut self, conn: ConnId, eager: bool) {
        if let Some(t) = self.sessions.get_mut(&conn).and_then(|s| s.tree.as_mut()) {
            t.eager = eager;
        }
        self.update_tree_gauges();
    }

    /// How long an announced message may take before it is pulled: the graft timeout, or
    /// more while announced messages have lately been arriving later than that. A loaded
    /// eager link delivers late, not never, and a pull that crosses its copy is a second copy
    /// on the wire, a PRUNE of a working link, and more load on queues already behind. At
    /// most 1.5 graft timeouts, so a pull and one more from the next announcer still fall
    /// within the store's window (3 graft timeouts and 2 ticks).
    pub(super) fn pull_delay(&self) -> Duration {
        let t = self.cfg.overlay.gossip.graft_timeout;
        (self.arrival_lag * 3 / 2).clamp(t, t * 3 / 2)
    }

    fn on_ihave(&mut self, now: Time, conn: ConnId, ids: Vec<MsgId>) {
        // Deadlines are kept in arrival order, not sorted: as the delay moves, one may wait
        // behind an earlier, later one for at most the difference (half a graft timeout).
        let deadline = now + self.pull_delay();
        let cap = self.cfg.overlay.gossip.announce_queue.saturating_mul(4);
        // Right after a rescue, what is newly announced is pulled at once (see `rescue`).
        let rescuing = self.rescuing(now);
        let mut now_due = Vec::new();
        for id in ids {
            if self.seen.contains(&id, now) {
                continue;
            }
            let room = self.missing.len() < cap;
            match self.missing.get_mut(&id) {
                Some(m) if m.announcers.len() < MAX_ANNOUNCERS && !m.announcers.contains(&conn) => {
                    m.announcers.push_back(conn);
                }
                Some(_) => {}
                // Bounded: past the cap, new announcements wait for the next digest.
                None if room => {
                    self.missing.insert(
                        id,
                        Missing {
                            announcers: VecDeque::from([conn]),
                            deadline,
                            announced: now,
                            rescued: false,
                        },
                    );
                    self.missing_order.push_back((deadline, id));
                    if rescuing {
                        now_due.push(id);
                    }
                }
                None => {}
            }
        }
        if !now_due.is_empty() {
            self.pull_now(now, &now_due);
        }
    }

    fn on_graft(&mut self, now: Time, conn: ConnId, ids: Vec<MsgId>) {
        self.set_eager(conn, true);
        for id in ids {
            let Some(s) = self.store.get(&id) else {
                self.metrics.tree_pulls[PullOutcome::Miss.index()].increment(1);
                continue;
            };
            let (header, tenant, data) = (s.header.clone(), s.tenant_id, s.data.clone());
            // A pull is what the peer has room for: only the hard bound applies. One that
            // finds no room is owed (sent as the queue drains); one that cannot be owed
            // either is asked again after the puller's graft timeout.
            let served = if !self.owing(conn) && self.fits(conn, &header, &data) {
                self.enqueue_message(conn, &header, tenant, &data, false)
                    .is_ok()
            } else {
                self.owe(conn, &header, tenant, &data, now)
            };
            if served {
                self.metrics.tree_pulls[PullOutcome::Served.index()].increment(1);
            }
        }
        // What was still to be announced to `conn` goes now, not at the next tick: a node
        // that pulls because it was cut off pulls these at once too (`rescuing`).
        self.flush_announcements(conn);
    }

    /// A message arrived again from `conn`: its pushes to this node are redundant, if
    /// another link is a parent of this node. Only that direction is pruned. Each direction
    /// of a link is its receiver's to prune and graft: were this node also to stop pushing
    /// to `conn`, a peer that pulled from it (and so asked it to push) would lose that push
    /// to the duplicates its own pushes cause here, pull again, and the tree would never
    /// settle under load. A duplicate that answers this node's own pull of it from `conn`
    /// prunes nothing: it says the pull was slow, not that `conn`'s pushes are redundant.
    ///
    /// A parent is an unpruned link that has lately delivered a message first. When the
    /// first copy came from a link already pruned, the pushes it sent before the PRUNE
    /// landed have beaten `conn`'s: pruning `conn` then would leave no parent (in a first
    /// burst over links that all start eager, every node pruned every peer that way and
    /// the whole run was pulled), so `conn` stays. A pruned link that still delivers first
    /// after its PRUNE had time to land keeps pushing on purpose (an origin's forced pushes)
    /// and is the better parent: this node asks it to push (an empty GRAFT) and prunes
    /// `conn`, rather than take both copies (kept, `conn` alone cost 1.10–1.30 copies).
    pub(super) fn tree_duplicate(&mut self, now: Time, conn: ConnId, id: &MsgId) {
        if self.pulled.get(id) == Some(&conn) {
            self.pulled.remove(id);
            return;
        }
        if !self
            .sessions
            .get(&conn)
            .and_then(|s| s.tree.as_ref())
            .is_some_and(|t| !t.pruned)
        {
            return;
        }
        let recent = self.cfg.overlay.gossip.graft_timeout;
        let lately = |at: Time| now.saturating_since(at) < recent;
        let (mut parent, mut in_flight) = (false, false);
        let mut adopt: Option<(Time, ConnId)> = None;
        for &p in &self.peers {
            let Some(t) = self.sessions.get(&p).and_then(|s| s.tree.as_ref()) else {
                continue;
            };
            let Some(first) = t.first_at.filter(|f| p != conn && lately(*f)) else {
                continue;
            };
            if !t.pruned {
                parent = true;
                break;
            }
            if lately(t.pruned_at) {
                in_flight = true;
            } else if adopt.map_or(true, |(f, _)| first > f) {
                adopt = Some((first, p));
            }
        }
        // No tree link delivered first lately: the first copy came from a client (this
        // node is an origin) or a spec link, and `conn`'s pushes are redundant.
        if let (false, Some((_, p))) = (parent, adopt) {
            if let Some(t) = self.sessions.get_mut(&p).and_then(|s| s.tree.as_mut()) {
                t.pruned = false;
            }
            self.send_tree(p, &TreeFrame::Graft(Vec::new()));
        } else if !parent && in_flight {
            return;
        }
        if let Some(t) = self.sessions.get_mut(&conn).and_then(|s| s.tree.as_mut()) {
            t.pruned = true;
            t.pruned_at = now;
        }
        self.send_tree(conn, &TreeFrame::Prune);
    }

    /// A new message arrived from `conn`: from a peer, the node is being fed (see
    /// `rescue`); over a tree link, that link is a parent while this is recent (see
    /// `tree_duplicate`).
    pub(super) fn tree_first(&mut self, now: Time, conn: ConnId) {
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        if s.role == Some(Role::Peer) {
            self.last_first = now;
        }
        if let Some(t) = s.tree.as_mut() {
            t.first_at = Some(now);
        }
    }

    /// Remembers that `id` was pulled from `conn`, within the bound of announced ids.
    fn note_pull(&mut self, id: MsgId, conn: ConnId) {
        let cap = self.cfg.overlay.gossip.announce_queue.saturating_mul(4);
        while self.pulled_order.len() >= cap.max(1) {
            let Some(old) = self.pulled_order.pop_front() else {
                break;
            };
            self.pulled.remove(&old);
        }
        if self.pulled.insert(id, conn).is_none() {
            self.pulled_order.push_back(id);
        }
    }

    /// A new message: no longer missing; kept in the store for pulls and repair.
    pub(super) fn tree_accept(&mut self, now: Time, m: &Message) {
        if let Some(missing) = self.missing.remove(&m.header.msg_id) {
            let lag = now.saturating_since(missing.announced);
            self.arrival_lag = (self.arrival_lag * (LAG_WEIGHT - 1) + lag) / LAG_WEIGHT;
        }
        // Spec-only peers never pull, so with no tree link among them nothing would ask. A
        // node with no peer link at all (cut off, or its peers not yet redialed) keeps it:
        // the DIGEST of its next link is the only way it reaches anyone.
        if self.tree_links == 0 && !self.peers.is_empty() {
            return;
        }
        let evicted = self.store.insert(
            m.header.msg_id,
            Stored {
                header: m.header.clone(),
                tenant_id: m.tenant_id,
                data: m.data.clone(),
                at: now,
            },
        );
        self.metrics.store_evictions[StoreEviction::Bytes.index()].increment(evicted as u64);
    }

    /// Queues an announcement of `id` to a lazy peer; a full queue drops its oldest.
    pub(super) fn announce(&mut self, conn: ConnId, id: MsgId) {
        let max = self.cfg.overlay.gossip.announce_queue;
        let Some(t) = self.sessions.get_mut(&conn).and_then(|s| s.tree.as_mut()) else {
            return;
        };
        if t.announce.len() >= max {
            t.announce.pop_front();
            self.metrics.announce_dropped.increment(1);
        }
        t.announce.push_back(id);
        if t.announce.len() >= MAX_IDS {
            self.flush_announcements(conn);
        }
    }

    /// Sends the queued announcements while the peer's control queue has room. A peer that
    /// does not read keeps its ids here, bounded by `overlay.gossip.announce_queue` and
    /// counted when dropped, rather than as IHAVEs the full control queue would drop
    /// uncounted by id.
    fn flush_announcements(&mut self, conn: ConnId) {
        let max_ctrl = self.cfg.overlay.peer.egress_queue_frames;
        loop {
            let Some(s) = self.sessions.get_mut(&conn) else {
                return;
            };
            let room = s.egress.ctrl_frames() < max_ctrl;
            let Some(t) = s.tree.as_mut().filter(|t| room && !t.announce.is_empty()) else {
                return;
            };
            let n = t.announce.len().min(MAX_IDS);
            let ids: Vec<MsgId> = t.announce.drain(..n).collect();
            // Counted as sent, not as queued: a queued id may yet be dropped (a full queue,
            // `overlay_announce_dropped_total`).
            self.metrics.tree_pushes[PushMode::Lazy.index()].increment(n as u64);
            self.send_tree(conn, &TreeFrame::IHave(ids));
        }
    }

    /// Tick work: announcements out, pulls for what did not arrive, digests, the store's
    /// age bound.
    pub(super) fn tree_tick(&mut self, now: Time) {
        // The store also keeps what clients are owed, tree or not.
        let aged = self.store.expire(now);
        self.metrics.store_evictions[StoreEviction::Age.index()].increment(aged as u64);
        self.metrics.store_bytes.set(self.store.bytes() as f64);
        self.metrics.owed.set(self.owed_total as f64);
        self.metrics.pull_delay.set(self.pull_delay().as_secs_f64());
        if self.tree_links == 0 && self.missing.is_empty() {
            return;
        }
        let links: Vec<ConnId> = self
            .peers
            .iter()
            .copied()
            .filter(|c| self.is_tree(*c))
            .collect();
        for &c in &links {
            self.flush_announcements(c);
        }
        self.pull_missing(now);
        let every = self.cfg.overlay.gossip.reconcile_interval;
        for c in links {
            let due = self
                .sessions
                .get(&c)
                .and_then(|s| s.tree.as_ref())
                .is_some_and(|t| now >= t.next_digest);
            if due {
                // The first digest of a new link covers the whole store, young entries
                // too: what one side published while the link was down may be seconds old.
                let mut settle_ms = DIGEST_SETTLE_MS;
                if let Some(t) = self.sessions.get_mut(&c).and_then(|s| s.tree.as_mut()) {
                    if !t.digested {
                        settle_ms = 0;
                        t.digested = true;
                    }
                    t.next_digest = now + every;
                }
                let d = self
                    .store
                    .digest(now, Duration::from_millis(settle_ms as u64));
                self.metrics.reconcile_rounds.increment(1);
                self.send_tree(c, &TreeFrame::Digest(d, settle_ms));
            }
        }
    }

    /// GRAFTs for announced messages past their deadline, grouped per announcer; each goes
    /// to the next announcer in line, and the announcer is asked to push to this node.
    pub(super) fn pull_missing(&mut self, now: Time) {
        let mut grafts: BTreeMap<ConnId, Vec<MsgId>> = BTreeMap::new();
        let mut pulled = Vec::new();
        let timeout = self.pull_delay();
        if self.reads_paused() {
            // This node is the one behind: what was announced is most likely in its unread
            // socket buffers already, and a pull would add load where there is too much.
            return;
        }
        while let Some(&(deadline, id)) = self.missing_order.front() {
            if deadline > now {
                break;
            }
            self.missing_order.pop_front();
            let Some(m) = self.missing.get_mut(&id) else {
                continue;
            };
            if m.deadline != deadline {
                continue;
            }
            let next = loop {
                match m.announcers.pop_front() {
                    Some(c) if self.sessions.get(&c).is_some_and(|s| s.tree.is_some()) => {
                        break Some(c)
                    }
                    Some(_) => continue,
                    None => break None,
                }
            };
            match next {
                Some(c) => {
                    // Asked again after another timeout if it still has not come; the
                    // announcer goes to the back of the line.
                    m.announcers.push_back(c);
                    m.deadline = now + timeout;
                    self.missing_order.push_back((m.deadline, id));
                    grafts.entry(c).or_default().push(id);
                    pulled.push((id, c));
                }
                None => {
                    self.missing.remove(&id);
                }
            }
        }
        for (id, c) in pulled {
            self.note_pull(id, c);
        }
        for (c, ids) in grafts {
            self.metrics.tree_pulls[PullOutcome::Requested.index()].increment(ids.len() as u64);
            for part in ids.chunks(MAX_IDS) {
                self.send_tree(c, &TreeFrame::Graft(part.to_vec()));
            }
            // The GRAFT asks `c` to push to this node; whether this node pushes to `c` is
            // for `c` to ask.
            if let Some(t) = self.sessions.get_mut(&c).and_then(|s| s.tree.as_mut()) {
                t.pruned = false;
            }
        }
    }

    pub(super) fn update_tree_gauges(&mut self) {
        let (mut eager, mut lazy) = (0usize, 0usize);
        for s in self.sessions.values() {
            if let Some(t) = s.tree.as_ref().filter(|_| s.is_established()) {
                if t.eager {
                    eager += 1;
                } else {
                    lazy += 1;
                }
            }
        }
        self.tree_links = eager + lazy;
        self.metrics.tree_peers[PushMode::Eager.index()].set(eager as f64);
        self.metrics.tree_peers[PushMode::Lazy.index()].set(lazy as f64);
    }
}
