//! Per-session egress queues, the global egress permits, and the deficit round robin that
//! decides which session's frames go next.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::observe::FrameClass;

/// One frame ready for the wire: `head` is the header (and, on a message's first frame,
/// the gossip header); `body` is the rest, usually a slice of a received buffer.
#[derive(Clone, Debug)]
pub struct OutFrame {
    pub head: Bytes,
    pub body: Bytes,
    pub class: FrameClass,
    /// Payload bytes that are gossip chunk data (for `overlay_chunk_bytes`).
    pub chunk: Option<usize>,
}

impl OutFrame {
    pub fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why an egress queue refused a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The queue would pass its frame or byte bound.
    Full,
    /// Over the high watermark: relayed traffic is let go before the queue fills.
    Shed,
}

/// A session's outgoing frames. Control frames (HELLO answers, PING/PONG, GOAWAY, RESPs) have
/// their own queue and always go first, so they are never stuck behind gossip.
#[derive(Debug, Default)]
pub struct EgressQueue {
    ctrl: VecDeque<OutFrame>,
    gossip: VecDeque<OutFrame>,
    gossip_bytes: usize,
    /// Close the connection once everything before this mark is written.
    close_after: bool,
    close_taken: bool,
}

impl EgressQueue {
    pub fn gossip_frames(&self) -> usize {
        self.gossip.len()
    }
    pub fn gossip_bytes(&self) -> usize {
        self.gossip_bytes
    }
    pub fn ctrl_frames(&self) -> usize {
        self.ctrl.len()
    }
    pub fn frames(&self) -> usize {
        self.ctrl.len() + self.gossip.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ctrl.is_empty() && self.gossip.is_empty()
    }
    pub fn close_pending(&self) -> bool {
        self.close_after
    }
    pub fn mark_close(&mut self) {
        if !self.close_taken {
            self.close_after = true;
        }
    }
    /// Hands the close out once; later marks are ignored.
    pub fn take_close(&mut self) -> bool {
        let was = self.close_after;
        self.close_after = false;
        self.close_taken |= was;
        was
    }

    /// Fill against the bounds: the larger of frames and bytes, 0.0 to 1.0. A queue over a
    /// bound (the bounds shrank under it on a reload) is full, not "2.7 full".
    pub fn fill(&self, max_frames: usize, max_bytes: usize) -> f64 {
        let f = self.gossip.len() as f64 / max_frames.max(1) as f64;
        let b = self.gossip_bytes as f64 / max_bytes.max(1) as f64;
        f.max(b).min(1.0)
    }

    pub fn push_ctrl(&mut self, f: OutFrame) {
        self.ctrl.push_back(f);
    }

    /// Admits all frames of one message or none of them (a peer never gets half a stream).
    pub fn push_message(&mut self, frames: impl IntoIterator<Item = OutFrame>) {
        for f in frames {
            self.gossip_bytes += f.len();
            self.gossip.push_back(f);
        }
    }

    pub fn pop_ctrl(&mut self) -> Option<OutFrame> {
        self.ctrl.pop_front()
    }

    pub fn front_gossip_len(&self) -> Option<usize> {
        self.gossip.front().map(OutFrame::len)
    }

    pub fn pop_gossip(&mut self) -> Option<OutFrame> {
        let f = self.gossip.pop_front()?;
        self.gossip_bytes -= f.len();
        Some(f)
    }

    /// Empties the queue; returns the frames dropped (ctrl, gossip).
    pub fn clear(&mut self) -> (usize, usize) {
        let n = (self.ctrl.len(), self.gossip.len());
        self.ctrl.clear();
        self.gossip.clear();
        self.gossip_bytes = 0;
        n
    }
}

/// Global egress permits: a frame handed to a writer holds one until the runtime reports it
/// written. Control frames may use the reserve that gossip cannot touch.
#[derive(Clone, Debug)]
pub struct Permits {
    capacity: usize,
    in_use: usize,
}

impl Permits {
    pub fn new(capacity: usize) -> Permits {
        Permits {
            capacity: capacity.max(1),
            in_use: 0,
        }
    }
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    pub fn in_use(&self) -> usize {
        self.in_use
    }
    pub fn available(&self) -> usize {
        self.capacity.saturating_sub(self.in_use)
    }
    fn reserve(&self) -> usize {
        (self.capacity / 8).max(1).min(self.capacity - 1)
    }
    pub fn can_gossip(&self) -> bool {
        self.in_use + self.reserve() < self.capacity
    }
    pub fn can_ctrl(&self) -> bool {
        self.in_use < self.capacity
    }
    pub fn acquire(&mut self) {
        debug_assert!(self.in_use < self.capacity);
        self.in_use += 1;
    }
    /// The most permits one session may hold while `others` other sessions hold some:
    /// never more than its send window, and always room left for one more session, so a
    /// session that stops reading (whatever it asks for: gossip, PONGs, acks) cannot take
    /// the permits every other session needs.
    pub fn share(&self, window: usize, others: usize) -> usize {
        (self.capacity / others.saturating_add(2)).clamp(1, window.max(1))
    }
    pub fn release(&mut self, n: usize) {
        debug_assert!(n <= self.in_use);
        self.in_use -= n.min(self.in_use);
    }
    pub fn set_capacity(&mut self, capacity: usize) {
        // Shrinking below what is in use is allowed: nothing new is handed out until
        // enough is released, and then the new capacity holds.
        self.capacity = capacity.max(1);
    }
}

/// Deficit round robin over sessions with gossip queued, by bytes: each turn a session earns
/// `quantum` bytes of credit and may send frames while its credit covers them, up to
/// `burst` frames; credit carries to the next round, so a session of large frames gets the
/// same byte share as one of small frames.
#[derive(Debug)]
pub struct Drr<K> {
    active: VecDeque<K>,
    quantum: usize,
    burst: usize,
}

/// A session's state in the round robin.
#[derive(Debug, Default, Clone)]
pub struct DrrSlot {
    pub deficit: usize,
    pub turn_frames: usize,
    pub in_turn: bool,
    pub queued: bool,
}

impl<K: Copy + PartialEq> Drr<K> {
    pub fn new(quantum: usize, burst: usize) -> Drr<K> {
        Drr {
            active: VecDeque::new(),
            quantum: quantum.max(1),
            burst: burst.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.active.len()
    }

    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// Puts a session with gossip to send into the round (no-op if it is there).
    pub fn activate(&mut self, k: K, slot: &mut DrrSlot) {
        if !slot.queued {
            slot.queued = true;
            self.active.push_back(k);
        }
    }

    pub fn front(&self) -> Option<K> {
        self.active.front().copied()
    }

    /// Takes the front session out of the round (empty queue or closed send window); its
    /// credit is kept only while it still has frames waiting.
    pub fn deactivate_front(&mut self, slot: Option<&mut DrrSlot>, keep_credit: bool) {
        self.active.pop_front();
        if let Some(s) = slot {
            s.queued = false;
            s.in_turn = false;
            if !keep_credit {
                s.deficit = 0;
            }
        }
    }

    /// Whether the front session may send a frame of `len` bytes now; starts its turn if
    /// needed, and rotates it to the back when its turn is spent (returns false then).
    pub fn admit_front(&mut self, slot: &mut DrrSlot, len: usize) -> bool {
        if !slot.in_turn {
            slot.in_turn = true;
            slot.turn_frames = 0;
            slot.deficit = slot.deficit.saturating_add(self.quantum);
        }
        if len <= slot.deficit && slot.turn_frames < self.burst {
            slot.deficit -= len;
            slot.turn_frames += 1;
            true
        } else {
            slot.in_turn = false;
            if let Some(k) = self.active.pop_front() {
                self.active.push_back(k);
            }
            false
        }
    }

    pub fn remove(&mut self, k: K) {
        self.active.retain(|x| *x != k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize) -> OutFrame {
        OutFrame {
            head: Bytes::from(vec![0; len]),
            body: Bytes::new(),
            class: FrameClass::Gossip,
            chunk: None,
        }
    }

    /// Drives the round robin over two queues until both are empty; returns the order served.
    fn serve(queues: &mut [EgressQueue; 2], quantum: usize, burst: usize) -> Vec<usize> {
        let mut slots = [DrrSlot::default(), DrrSlot::default()];
        let mut drr = Drr::new(quantum, burst);
        for (k, s) in slots.iter_mut().enumerate() {
            drr.activate(k, s);
        }
        let mut order = vec![];
        while let Some(k) = drr.front() {
            let Some(len) = queues[k].front_gossip_len() else {
                drr.deactivate_front(Some(&mut slots[k]), false);
                continue;
            };
            if drr.admit_front(&mut slots[k], len) {
                queues[k].pop_gossip();
                order.push(k);
            }
        }
        order
    }

    #[test]
    fn drr_shares_bytes_not_frames() {
        // Session 0 sends 1000-byte frames, session 1 sends 100-byte frames.
        let mut q = [EgressQueue::default(), EgressQueue::default()];
        q[0].push_message((0..10).map(|_| frame(1000)));
        q[1].push_message((0..100).map(|_| frame(100)));
        let order = serve(&mut q, 1000, 100);
        // While both are busy, each gets about 1000 bytes per round.
        let first_20 = &order[..22];
        let big = first_20.iter().filter(|k| **k == 0).count();
        let small = first_20.iter().filter(|k| **k == 1).count();
        assert_eq!((big, small), (2, 20), "{order:?}");
        assert_eq!(order.len(), 110);
    }

    #[test]
    fn burst_caps_frames_per_turn() {
        let mut q = [EgressQueue::default(), EgressQueue::default()];
        q[0].push_message((0..6).map(|_| frame(10)));
        q[1].push_message((0..6).map(|_| frame(10)));
        let order = serve(&mut q, 10_000, 2);
        assert_eq!(&order[..6], &[0, 0, 1, 1, 0, 0]);
    }

    #[test]
    fn a_frame_larger_than_the_quantum_still_goes_out() {
        let mut q = [EgressQueue::default(), EgressQueue::default()];
        q[0].push_message(vec![frame(5000)]);
        assert_eq!(serve(&mut q, 1000, 8), vec![0]);
    }

    #[test]
    fn permits_keep_a_reserve_for_control() {
        let mut p = Permits::new(16);
        while p.can_gossip() {
            p.acquire();
        }
        assert_eq!(p.in_use(), 14, "gossip stops short of the reserve");
        assert!(p.can_ctrl());
        p.acquire();
        p.acquire();
        assert!(!p.can_ctrl());
        p.release(16);
        assert_eq!(p.available(), 16);
        p.acquire();
        p.acquire();
        p.set_capacity(1);
        assert_eq!(p.capacity(), 1, "a shrink takes effect");
        assert_eq!(p.available(), 0);
        assert!(!p.can_ctrl(), "nothing handed out over the new capacity");
        p.release(1);
        assert!(!p.can_ctrl());
        p.release(1);
        assert!(p.can_ctrl(), "usable again once enough is released");
    }

    #[test]
    fn a_share_leaves_room_for_another_session() {
        let p = Permits::new(8);
        assert_eq!(p.share(16, 0), 4, "alone: half");
        assert_eq!(p.share(16, 1), 2);
        assert_eq!(p.share(16, 100), 1, "never zero");
        assert_eq!(
            Permits::new(4096).share(16, 10),
            16,
            "the send window caps it"
        );
    }

    #[test]
    fn queue_fill_counts_frames_and_bytes() {
        let mut q = EgressQueue::default();
        q.push_message(vec![frame(100), frame(100)]);
        assert_eq!(q.fill(4, 10_000), 0.5);
        assert_eq!(q.fill(100, 400), 0.5);
        assert_eq!(q.fill(1, 10), 1.0, "over a shrunk bound is full");
        q.mark_close();
        assert!(q.take_close());
        q.mark_close();
        assert!(!q.take_close(), "a close is handed out once");
        assert_eq!(q.clear(), (0, 2));
    }
}
