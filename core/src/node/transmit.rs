//! Frames out: control first, then gossip by deficit round robin, within permits.

use super::*;

impl Overlay {
    pub(super) fn send_ctrl(&mut self, conn: ConnId, frame: &Frame) {
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        let mut b = BytesMut::with_capacity(frame.encoded_len());
        // Our own control frames are far below any max_frame.
        if frame.encode(u32::MAX, &mut b).is_err() {
            return;
        }
        if s.egress.ctrl_frames() >= self.cfg.overlay.peer.egress_queue_frames {
            // A peer that asks for answers (acks, PONGs) and never reads them fills only
            // its own bounded queue; the answer is counted as dropped.
            self.egress_drop(DropReason::Full, 1);
            return;
        }
        let class = frame_class(frame.app_proto);
        self.queued.insert(conn);
        s.egress.push_ctrl(OutFrame {
            head: b.freeze(),
            body: Bytes::new(),
            class,
            chunk: None,
        });
        self.mark_ctrl_ready(conn);
    }

    /// Puts a session in the control round robin once (a flag, not a scan of the list).
    pub(super) fn mark_ctrl_ready(&mut self, id: ConnId) {
        if let Some(s) = self.sessions.get_mut(&id) {
            if !s.ctrl_queued {
                s.ctrl_queued = true;
                self.ctrl_ready.push_back(id);
            }
        }
    }

    pub(super) fn ack(&mut self, conn: ConnId, corr_id: u64, code: u16, err: Option<(&str, u64)>) {
        let payload = match err {
            None => Bytes::new(),
            Some((e, retry)) => HelloError {
                error: e.to_string(),
                retry_after: Some(retry),
            }
            .to_json()
            .into(),
        };
        let resp = Frame::resp(AppProto::GOSSIP, corr_id, code, payload);
        self.send_ctrl(conn, &resp);
    }

    pub(super) fn next_ctrl(&mut self, now: Time) -> Option<Transmit> {
        let window = self.cfg.overlay.peer.send_window_frames;
        let mut tries = self.ctrl_ready.len();
        while tries > 0 {
            tries -= 1;
            let id = self.ctrl_ready.pop_front()?;
            let Some(s) = self.sessions.get_mut(&id) else {
                continue;
            };
            s.ctrl_queued = false;
            if s.egress.ctrl_frames() > 0 {
                let share = self
                    .permits
                    .share(window, self.holders - (s.in_flight() > 0) as usize);
                if s.in_flight() >= share {
                    // Over its share: handle_written puts it back in the round once its
                    // writer catches up. Its answers wait in its own bounded queue.
                    continue;
                }
                if !self.permits.can_ctrl() {
                    s.ctrl_queued = true;
                    self.ctrl_ready.push_front(id);
                    return None;
                }
                let f = s.egress.pop_ctrl()?;
                if s.egress.is_empty() {
                    self.queued.remove(&id);
                }
                if s.egress.ctrl_frames() > 0 || s.egress.close_pending() {
                    s.ctrl_queued = true;
                    self.ctrl_ready.push_back(id);
                }
                return Some(self.hand_out(now, id, f));
            }
            if s.egress.close_pending() && s.egress.gossip_frames() == 0 {
                s.egress.take_close();
                return Some(Transmit {
                    conn: id,
                    head: Bytes::new(),
                    body: Bytes::new(),
                    close: true,
                });
            }
        }
        None
    }

    pub(super) fn next_gossip(&mut self, now: Time) -> Option<Transmit> {
        let window = self.cfg.overlay.peer.send_window_frames;
        loop {
            let id = self.drr.front()?;
            let Some(s) = self.sessions.get_mut(&id) else {
                self.drr.deactivate_front(None, false);
                continue;
            };
            let Some(len) = s.egress.front_gossip_len() else {
                self.drr.deactivate_front(Some(&mut s.drr), false);
                continue;
            };
            let share = self
                .permits
                .share(window, self.holders - (s.in_flight() > 0) as usize);
            if s.in_flight() >= share {
                // Re-activated by handle_written when the writer catches up.
                self.drr.deactivate_front(Some(&mut s.drr), true);
                continue;
            }
            if !self.permits.can_gossip() {
                return None;
            }
            if !self.drr.admit_front(&mut s.drr, len) {
                continue;
            }
            let f = s.egress.pop_gossip()?;
            if !s.owed.is_empty() {
                self.repay(id);
            }
            let Some(s) = self.sessions.get_mut(&id) else {
                return Some(self.hand_out(now, id, f));
            };
            if s.egress.is_empty() {
                self.queued.remove(&id);
            }
            let close_next = s.egress.gossip_frames() == 0 && s.egress.close_pending();
            if close_next {
                self.mark_ctrl_ready(id);
            }
            self.recheck_watermark(id);
            return Some(self.hand_out(now, id, f));
        }
    }

    pub(super) fn hand_out(&mut self, now: Time, id: ConnId, f: OutFrame) -> Transmit {
        self.permits.acquire();
        let mut first = false;
        if let Some(s) = self.sessions.get_mut(&id) {
            if s.unwritten.is_empty() {
                // The write timeout runs from here: frames in flight must make progress.
                self.holders += 1;
                s.last_write = now;
                first = true;
            }
            s.unwritten.push_back(Unwritten {
                class: f.class,
                len: f.len(),
                chunk: f.chunk,
            });
        }
        if first {
            self.arm(id);
        }
        Transmit {
            conn: id,
            head: f.head,
            body: f.body,
            close: false,
        }
    }

    /// The writer reported `n` more frames written: only now do they count as transmitted.
    pub(super) fn count_written(&mut self, id: ConnId, n: usize) -> usize {
        let Some(s) = self.sessions.get_mut(&id) else {
            return 0;
        };
        let n = n.min(s.unwritten.len());
        let m = &self.metrics;
        for w in s.unwritten.drain(..n) {
            m.frames_tx[w.class.index()].increment(1);
            m.bytes[Dir::Tx.index()].increment(w.len as u64);
            m.frame_size[Dir::Tx.index()].record(w.len as f64);
            if let Some(c) = w.chunk {
                m.chunk_size[Dir::Tx.index()].record(c as f64);
            }
            s.tx_bytes += w.len as u64;
        }
        if n > 0 && s.unwritten.is_empty() {
            self.holders -= 1;
        }
        self.permits.release(n);
        n
    }
}
