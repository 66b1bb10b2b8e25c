//! A node whose parents have stopped: no peer has delivered anything new for a while, yet
//! its other peers keep announcing messages it lacks. In a first burst the tree can close
//! into a cycle with no way in from the source (two nodes, each the other's only parent,
//! both having pruned every other link on the strength of a copy the other relayed first);
//! a parent can also just be gone. Waiting out the graft timeout then costs every message
//! of that time a pull delay and a tick (in the mesh benchmark, runs whose p99 was 600 ms
//! instead of 80). A parent that is merely slow still delivers, late: its backlog keeps
//! first copies arriving. So silence from every peer while an announcement waits as long
//! is the sign: then everything announced and missing is pulled at once, each message
//! once this way (a pull asks its announcer to push, which gives the node a parent
//! again); later pulls keep the graft timeout.

use super::*;
use crate::oap::MAX_IDS;

impl Overlay {
    /// How long peer silence, with announcements waiting as long, takes to be a rescue.
    pub(super) fn rescue_after(&self) -> Duration {
        self.cfg.overlay.gossip.graft_timeout / 4
    }

    /// Whether a rescue pulled lately: announcements that come now (the rescued node's
    /// GRAFT makes its announcers flush theirs) are pulled at once too.
    pub(super) fn rescuing(&self, now: Time) -> bool {
        self.rescued_at
            .is_some_and(|at| now.saturating_since(at) < self.rescue_after())
    }

    /// When a rescue may next be due: never while nothing announced is missing.
    pub(super) fn rescue_due(&self) -> Option<Time> {
        if self.missing.is_empty() {
            return None;
        }
        Some(self.last_first.max(self.rescue_looked) + self.rescue_after())
    }

    /// Pulls, ahead of their deadlines, the announced messages still missing after a
    /// silence of every peer. Looks at most once per `rescue_after`.
    pub(super) fn rescue(&mut self, now: Time) {
        if self.rescue_due().map_or(true, |due| now < due) {
            return;
        }
        self.rescue_looked = now;
        if self.reads_paused() {
            // This node is behind, not starved: what was announced is in its unread socket
            // buffers (as in `pull_missing`).
            return;
        }
        let after = self.rescue_after();
        let mut waited = false;
        let due: Vec<MsgId> = self
            .missing_order
            .iter()
            .filter_map(|(deadline, id)| {
                let m = self.missing.get(id)?;
                if m.deadline != *deadline || m.rescued {
                    return None;
                }
                waited |= now.saturating_since(m.announced) >= after;
                Some(*id)
            })
            .take(4 * MAX_IDS)
            .collect();
        // One announcement that waited through the silence is the sign; the younger ones
        // are not on their way either. Left to their deadlines, they were a pull delay late
        // (the mesh benchmark's 450 ms tail after a rescue). An announcement alone, after a
        // silence, is not the sign: at a low rate silence is normal, and an IHAVE may come
        // a little ahead of the tree's push.
        if !waited {
            return;
        }
        self.metrics.tree_rescues.increment(1);
        self.rescued_at = Some(now);
        self.pull_now(now, &due);
    }

    /// Pulls `ids` now, each once this way: due now, at the front, in the order given; the
    /// entries they had are left behind and skipped (their deadline no longer matches).
    pub(super) fn pull_now(&mut self, now: Time, ids: &[MsgId]) {
        for id in ids.iter().rev() {
            if let Some(m) = self.missing.get_mut(id) {
                m.rescued = true;
                m.deadline = now;
            }
            self.missing_order.push_front((now, *id));
        }
        self.pull_missing(now);
    }
}
