//! New messages: rate, dedupe, writes-fail-first, fanout and admission to egress queues.

use super::*;

/// Tree peers a message that starts at this node is pushed to whole, at the least.
const ORIGIN_PUSHES: usize = 2;

impl Overlay {
    pub(super) fn on_gossip(&mut self, now: Time, conn: ConnId, frame: Frame) {
        if frame.flags.kind() == Some(FrameKind::Resp) {
            self.outcome(Outcome::Delivered, 1);
            self.events.push_back(Event::Ack {
                conn,
                corr_id: frame.corr_id,
                code: frame.code,
                body: frame.payload,
            });
            return;
        }
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        let app_proto = frame.app_proto;
        let tenant = frame.tenant_id;
        let (before, before_frames) = (s.reasm.buffered_bytes(), s.reasm.partial_frames());
        let pushed = s.reasm.push_at(frame, now);
        // Running totals, not sums over sessions per chunk: those sums are CPU a peer could
        // multiply by opening sessions.
        self.partial_bytes = self.partial_bytes - before + s.reasm.buffered_bytes();
        self.partial_frames = self.partial_frames - before_frames + s.reasm.partial_frames();
        match pushed {
            Ok(None) => {
                let held = s.reasm.partial_frames();
                let over_session = held as usize > self.cfg.overlay.peer.inflight_frames;
                let over_node = !over_session
                    && self.partial_bytes + self.incomplete_bytes
                        > self.cfg.overlay.gossip.max_partial_bytes_total;
                if over_session || over_node {
                    // Either bound is the sender's to respect: more frames held than a
                    // session may have in flight, or more partial bytes than the whole node
                    // holds for everyone (so many sessions cannot add up to unbounded memory).
                    let (reason, why) = if over_session {
                        (
                            RejectReason::Proto,
                            "more partial frames than overlay.peer.inflight_frames",
                        )
                    } else {
                        (
                            RejectReason::Oversize,
                            "partial streams over overlay.gossip.max_partial_bytes_total",
                        )
                    };
                    let held = self.clear_partials(conn);
                    let f = Frame {
                        app_proto,
                        tenant_id: tenant,
                        ..Frame::default()
                    };
                    self.reject_frame(now, conn, &f, reason, held, why);
                }
            }
            Ok(Some(m)) => {
                self.on_message(now, conn, m);
            }
            Err(rej) => {
                let f = Frame {
                    app_proto,
                    corr_id: rej.corr_id,
                    ..Frame::default()
                };
                let reason = rej.error.reason();
                let detail = rej.error.to_string();
                self.reject_frame(now, conn, &f, reason, rej.frames as u64, &detail);
            }
        }
    }

    pub(super) fn on_message(&mut self, now: Time, conn: ConnId, mut m: Message) {
        let frames = m.frames as u64;
        if !self.write_allowed(now, conn, &m) {
            return;
        }
        if m.ack_req && !self.ctrl_room(conn) {
            // Its answer could not be queued: refused whole and told in a notice, so the
            // writer never waits on an answer that was dropped.
            let retry = self.cfg.readiness.retry_after;
            return self.refuse_message(
                now,
                conn,
                &m,
                RejectReason::Busy,
                retry,
                "control queue full: no room for the answer",
            );
        }
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        // Clients are rate limited; peer links are flow controlled by their read credit
        // and TCP instead: a relayed copy dropped by a limit would be lost untold.
        if s.role == Some(Role::Client) && !s.rate.try_take(now) {
            let retry = s.rate.retry_after_secs();
            return self.refuse_message(
                now,
                conn,
                &m,
                RejectReason::Ratelimit,
                retry,
                "overlay.peer.max_rps exceeded",
            );
        }
        if self.seen.contains(&m.header.msg_id, now) {
            self.outcome(Outcome::Duplicate, frames);
            self.tree_duplicate(now, conn, &m.header.msg_id);
            if m.ack_req {
                self.ack(conn, m.corr_id, 202, None);
            }
            return;
        }
        if self.store_pressed(now, conn, &m) {
            if m.ack_req {
                self.record_write(now, true);
            }
            let retry = self.cfg.readiness.retry_after;
            return self.refuse_message(
                now,
                conn,
                &m,
                RejectReason::Busy,
                retry,
                "the message store would let go of messages peers may still pull",
            );
        }
        self.plan(Some(conn), &m.header);
        if m.ack_req {
            // Writes fail first: the writer hears 503 before relayed traffic is shed, but
            // only when a session this message would go to is under pressure: one slow
            // consumer must not refuse writes that would never reach it.
            let busy = self.plan_pressured();
            self.record_write(now, busy);
            if busy {
                let retry = self.cfg.readiness.retry_after;
                return self.refuse_message(
                    now,
                    conn,
                    &m,
                    RejectReason::Busy,
                    retry,
                    "a destination's egress is over its high watermark",
                );
            }
        }
        self.seen.insert_new(m.header.msg_id, now);
        self.count(Count::Accepted, 1);
        if m.frames == 1 {
            // A one-frame message is a slice of the read buffer. Kept in a queue it would
            // pin that whole allocation (say, a 1 MiB PING read in the same write) while the
            // bounds count only its own bytes; one exact copy, shared by every destination,
            // makes what the bounds count what the node holds. Reassembled messages are
            // exact already.
            m.data = Bytes::copy_from_slice(&m.data);
        }
        self.tree_accept(now, &m);
        self.tree_first(now, conn);
        let (relayed, delivered, refusal) = self.deliver_plan(&m, now);
        match (relayed, delivered, refusal) {
            (true, _, _) => self.outcome(Outcome::Relayed, frames),
            (false, true, _) | (false, false, None) => self.outcome(Outcome::Delivered, frames),
            (false, false, Some(Refusal::Full)) => self.rx_dropped(RxDrop::Full, frames),
            (false, false, Some(Refusal::Shed)) => self.rx_dropped(RxDrop::Shed, frames),
        }
        if m.ack_req {
            self.ack(conn, m.corr_id, 202, None);
        }
        if self.local_delivery {
            self.events.push_back(Event::Message {
                from: Some(conn),
                message: m,
            });
        }
    }

    /// Whether a new message from a client would push out of the store one young enough
    /// that a tree peer it was announced to may still pull it. The store is what lazy links
    /// and repair are served from: a writer faster than it can hold for one pull round is
    /// refused where it writes (503) instead of its messages being lost further on.
    fn store_pressed(&self, now: Time, conn: ConnId, m: &Message) -> bool {
        let client = self
            .sessions
            .get(&conn)
            .is_some_and(|s| s.role == Some(Role::Client));
        if self.tree_links == 0 || !client {
            return false;
        }
        let g = &self.cfg.overlay.gossip;
        let floor = g.graft_timeout * 3 + TICK * 2;
        let bytes = m.data.len() + m.header.topic.len();
        self.store.would_evict_younger(now, bytes, floor)
    }

    /// Refuses a whole message without ending the session: its frames are counted under
    /// `reason`; a writer that asked for an ack hears the reason's status, and one that did
    /// not (or whose control queue has no room) hears it in a refusal notice.
    pub(super) fn refuse_message(
        &mut self,
        now: Time,
        conn: ConnId,
        m: &Message,
        reason: RejectReason,
        retry_after: u64,
        why: &str,
    ) {
        let frames = m.frames as u64;
        self.count_rejected(reason, frames);
        self.events.push_back(Event::Rejected {
            conn,
            reason,
            corr_id: m.corr_id,
            app_proto: AppProto::GOSSIP,
            frames,
            detail: why.to_string(),
        });
        if m.ack_req && self.ctrl_room(conn) {
            self.ack(
                conn,
                m.corr_id,
                reason.status(),
                Some((reason.as_str(), retry_after)),
            );
        } else {
            self.note_refusal(now, conn, reason, retry_after);
        }
    }

    /// Decides where a new message goes: the clients whose topics match, and the relay
    /// sample (drawn now, so that writes-fail-first looks at exactly the sessions that would
    /// receive it). Kept in buffers reused across messages: no allocation per message.
    pub(super) fn plan(&mut self, from: Option<ConnId>, header: &GossipHeader) {
        let mut clients = std::mem::take(&mut self.plan_clients);
        clients.clear();
        clients.extend(self.clients.iter().copied().filter(|c| {
            Some(*c) != from && self.sessions.get(c).is_some_and(|s| s.wants(&header.topic))
        }));
        self.plan_clients = clients;
        let (mut eager, mut lazy) = (
            std::mem::take(&mut self.plan_eager),
            std::mem::take(&mut self.plan_lazy),
        );
        eager.clear();
        lazy.clear();
        let mut candidates = std::mem::take(&mut self.fanout_buf);
        candidates.clear();
        let mut k = 0;
        if header.ttl > 0 {
            for &p in &self.peers {
                if Some(p) == from {
                    continue;
                }
                match self.sessions.get(&p).and_then(|s| s.tree.as_ref()) {
                    Some(t) if t.eager => eager.push(p),
                    Some(_) => lazy.push(p),
                    None => candidates.push(p),
                }
            }
            k = self.cfg.overlay.gossip.relay_fanout.min(candidates.len());
            // Partial Fisher-Yates: the first k are a uniform sample.
            for i in 0..k {
                let j = self.rng.gen_range(i..candidates.len());
                candidates.swap(i, j);
            }
        }
        candidates.truncate(k);
        // A message that starts here goes whole to at least two tree peers: announced only,
        // it would wait a graft timeout for its first pull, and be lost if this node went
        // down before then.
        let origin = from.map_or(true, |c| self.clients.contains(&c));
        while origin && eager.len() < ORIGIN_PUSHES && !lazy.is_empty() {
            eager.push(lazy.remove(0));
        }
        self.fanout_buf = candidates;
        self.plan_eager = eager;
        self.plan_lazy = lazy;
    }

    /// Whether a session the planned message would go to is over its high watermark:
    /// a write is refused only for the pressure it would itself run into.
    pub(super) fn plan_pressured(&self) -> bool {
        // Eager tree peers count too: one backed up means the mesh beyond it is not keeping
        // up (a node with a slow subscriber stops reading from its peers), and the writer
        // must hear it here rather than have the message wait in stores that may evict it.
        self.plan_clients
            .iter()
            .chain(self.fanout_buf.iter())
            .chain(self.plan_eager.iter())
            .any(|c| self.sessions.get(c).is_some_and(|s| s.over_watermark))
    }

    /// Admits the planned message to each destination's queue.
    pub(super) fn deliver_plan(&mut self, m: &Message, now: Time) -> (bool, bool, Option<Refusal>) {
        let mut refusal = None;
        let mut delivered = false;
        let clients = std::mem::take(&mut self.plan_clients);
        for &c in &clients {
            // A client already owed earlier messages gets this one after them; one whose
            // queue has no room is owed it rather than dropped from.
            let owing = self.owing(c);
            if (owing || !self.fits(c, &m.header, &m.data))
                && self.owe(c, &m.header, m.tenant_id, &m.data, now)
            {
                delivered = true;
                continue;
            }
            match self.enqueue_message(c, &m.header, m.tenant_id, &m.data, false) {
                Ok(()) => delivered = true,
                Err(r) => {
                    refusal.get_or_insert(r);
                }
            }
        }
        self.plan_clients = clients;
        let mut relayed = false;
        if m.header.ttl > 0 {
            let peers = std::mem::take(&mut self.fanout_buf);
            self.metrics.fanout.set(peers.len() as f64);
            let header = m.header.with_ttl(m.header.ttl - 1);
            for &p in &peers {
                match self.enqueue_message(p, &header, m.tenant_id, &m.data, true) {
                    Ok(()) => relayed = true,
                    Err(r) => {
                        refusal.get_or_insert(r);
                    }
                }
            }
            self.fanout_buf = peers;
            // Tree links: the payload whole to eager peers; one over its watermark is owed
            // it (sent from the store as its queue drains), or told the id if even that
            // is full (it pulls when it has room); the id to lazy ones. The ttl is not
            // spent on tree links: reachability does not depend on which copy arrived first.
            let id = m.header.msg_id;
            let wm = self.cfg.readiness.queue_high_watermark;
            let (lim_f, lim_b) = (
                self.cfg.overlay.peer.egress_queue_frames,
                self.cfg.overlay.peer.egress_queue_bytes,
            );
            let eager = std::mem::take(&mut self.plan_eager);
            for &p in &eager {
                let room = self
                    .sessions
                    .get(&p)
                    .is_some_and(|s| s.egress.fill(lim_f, lim_b) < wm);
                let pushed = if room && !self.owing(p) && self.fits(p, &m.header, &m.data) {
                    self.enqueue_message(p, &m.header, m.tenant_id, &m.data, true)
                        .is_ok()
                } else {
                    self.owe(p, &m.header, m.tenant_id, &m.data, now)
                };
                if pushed {
                    self.metrics.tree_pushes[crate::observe::PushMode::Eager.index()].increment(1);
                } else {
                    self.announce(p, id);
                }
                relayed = true;
            }
            self.plan_eager = eager;
            let lazy = std::mem::take(&mut self.plan_lazy);
            for &p in &lazy {
                self.announce(p, id);
                relayed = true;
            }
            self.plan_lazy = lazy;
        }
        (relayed, delivered, refusal)
    }

    /// Whether `dest`'s queue has room for the whole message under its hard bounds. For
    /// sends that have somewhere else to go when it does not (an eager push becomes an
    /// announcement; a refused pull is asked again), so that nothing is counted as dropped
    /// that was not.
    pub(super) fn fits(&self, dest: ConnId, header: &GossipHeader, data: &Bytes) -> bool {
        let peer = &self.cfg.overlay.peer;
        self.sessions.get(&dest).is_some_and(|s| {
            oap::Chunks::new(header, data, s.chunk).is_ok_and(|c| {
                s.egress.gossip_frames() + c.frames() <= peer.egress_queue_frames
                    && s.egress.gossip_bytes() + c.wire_len() <= peer.egress_queue_bytes
            })
        })
    }

    pub(super) fn enqueue_message(
        &mut self,
        dest: ConnId,
        header: &GossipHeader,
        tenant_id: u128,
        data: &Bytes,
        relay: bool,
    ) -> Result<(), Refusal> {
        let peer = &self.cfg.overlay.peer;
        let (max_frames, max_bytes) = (peer.egress_queue_frames, peer.egress_queue_bytes);
        let wm = self.cfg.readiness.queue_high_watermark;
        let Some(s) = self.sessions.get_mut(&dest) else {
            return Err(Refusal::Full);
        };
        let Ok(chunks) = oap::Chunks::new(header, data, s.chunk) else {
            return Err(Refusal::Full);
        };
        let (n, bytes) = (chunks.frames(), chunks.wire_len());
        let refusal = if s.egress.gossip_frames() + n > max_frames
            || s.egress.gossip_bytes() + bytes > max_bytes
        {
            Some(Refusal::Full)
        } else if relay && s.egress.fill(max_frames, max_bytes) >= wm {
            Some(Refusal::Shed)
        } else {
            None
        };
        if let Some(r) = refusal {
            let reason = match r {
                Refusal::Full => DropReason::Full,
                Refusal::Shed => DropReason::Shed,
            };
            self.metrics.backpressure[s.bucket().index()].increment(1);
            self.egress_drop(reason, n as u64);
            return Err(r);
        }
        let corr_id = s.next_stream_id();
        let scratch = &mut self.scratch;
        let frames = chunks.map(|c| {
            let head_len = HEADER_LEN + c.head.as_ref().map_or(0, GossipHeader::len);
            let h = Header {
                len: (HEADER_LEN + c.payload_len()) as u32,
                ver: VERSION,
                flags: Flags::EVENT | c.flags,
                code: 0,
                app_proto: AppProto::GOSSIP,
                tenant_id,
                cap_len: 0,
                corr_id,
            };
            if scratch.capacity() < head_len {
                scratch.reserve(head_len.max(16 << 10));
            }
            oap::put_header(&h, scratch);
            if let Some(gh) = &c.head {
                gh.put(scratch);
            }
            OutFrame {
                head: scratch.split().freeze(),
                chunk: Some(c.payload_len()),
                body: c.data,
                class: FrameClass::Gossip,
            }
        });
        s.egress.push_message(frames);
        self.queued.insert(dest);
        self.drr.activate(dest, &mut s.drr);
        self.recheck_watermark(dest);
        Ok(())
    }

    /// Keeps the count of sessions over the high watermark (what makes writes fail first)
    /// in step with a session's queue after it changed.
    pub(super) fn recheck_watermark(&mut self, id: ConnId) {
        let peer = &self.cfg.overlay.peer;
        let wm = self.cfg.readiness.queue_high_watermark;
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        // A session that is owed messages stays under pressure until they are sent: its
        // node keeps its other peer reads paused so that the debt stops growing.
        let over = s.phase != Phase::Closing
            && (!s.owed.is_empty()
                || s.egress
                    .fill(peer.egress_queue_frames, peer.egress_queue_bytes)
                    >= wm);
        if over != s.over_watermark {
            s.over_watermark = over;
            let pressure = match s.role {
                Some(Role::Client) => Some(&mut self.client_pressure),
                Some(Role::Peer) => Some(&mut self.peer_pressure),
                None => None,
            };
            if let Some(p) = pressure {
                if over {
                    *p += 1;
                } else {
                    if !s.demoted {
                        *p -= 1;
                    }
                    s.demoted = false;
                    s.pressured_ticks = 0;
                }
            }
            if over {
                self.over_watermark += 1;
            } else {
                self.over_watermark -= 1;
            }
        }
    }
}
