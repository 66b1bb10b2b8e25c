//! A sans-IO OAP/1 endpoint that dials a node as a `client` (or `peer`): the HELLO, publishing
//! with or without ACK_REQ, receiving messages, answering PING. The command line's
//! `publish` and `subscribe`, the tests and the simulators all speak through it.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::notice::{RefusalNotice, NOTICE_CORR_ID};

use crate::oap::{
    self, AppProto, Ctrl, Decoder, EncodeError, Flags, Frame, FrameError, FrameKind, GossipHeader,
    Hello, HelloError, HelloOk, Limits, Message, MsgId, Reassembler, Role, StreamLimits,
    StreamReject, DEFAULT_MAX_FRAME, VERSION,
};

#[derive(Clone, Debug, PartialEq)]
pub enum ClientEvent {
    /// The node answered HELLO with 200.
    Established(HelloOk),
    /// The node refused the HELLO (or anything else) with a status code; it will close.
    Refused {
        code: u16,
        error: String,
        retry_after: Option<u64>,
    },
    /// A whole message arrived.
    Message(Message),
    /// The answer to a publish with ACK_REQ: 202, 429 or 503.
    Ack {
        corr_id: u64,
        code: u16,
        error: Option<String>,
    },
    /// A refusal notice: `refused` messages sent since the last notice of this reason were
    /// refused without an answer of their own (docs/OAP1.md, "Additions").
    Notice {
        code: u16,
        error: String,
        refused: u64,
        retry_after: u64,
    },
    /// The node is draining.
    Goaway,
    /// The node broke the protocol; the connection is useless now.
    Broken(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    New,
    AwaitAnswer,
    Established,
    Done,
}

pub struct Client {
    hello: Hello,
    cap: Bytes,
    decoder: Decoder,
    reasm: Reassembler,
    state: State,
    hello_corr: u64,
    next_stream: u64,
    chunk: usize,
    max_frame: u32,
    out: BytesMut,
    events: VecDeque<ClientEvent>,
}

impl Client {
    /// A client named `node`, subscribed to `topics` (empty: every topic).
    pub fn new(node: &str, role: Role, topics: Vec<String>, cap: Option<Bytes>) -> Client {
        Client {
            hello: Hello {
                versions: vec![VERSION],
                node: node.to_string(),
                role,
                max_frame: DEFAULT_MAX_FRAME,
                topics,
                pq: None,
                comp: false,
                features: Vec::new(),
            },
            cap: cap.unwrap_or_default(),
            decoder: Decoder::new(Limits::default()),
            reasm: Reassembler::new(StreamLimits::default()),
            state: State::New,
            hello_corr: 1,
            next_stream: 1,
            chunk: 64 << 10,
            max_frame: DEFAULT_MAX_FRAME,
            out: BytesMut::new(),
            events: VecDeque::new(),
        }
    }

    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Queues the HELLO; call once, first.
    pub fn start(&mut self) {
        if self.state != State::New {
            return;
        }
        let mut f = Frame::new(
            AppProto::HELLO,
            Flags::REQ | Flags::START,
            self.hello_corr,
            self.hello.to_json().into(),
        );
        f.cap = self.cap.clone();
        // A HELLO is a few hundred bytes: far below any max_frame.
        let _ = f.encode(u32::MAX, &mut self.out);
        self.state = State::AwaitAnswer;
    }

    /// Bytes to write to the node, if any.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }

    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Queues one message; returns its stream id (the `corr_id` its ack will carry).
    pub fn publish(
        &mut self,
        msg_id: MsgId,
        topic: &str,
        ttl: u8,
        data: &Bytes,
        ack: bool,
    ) -> Result<u64, EncodeError> {
        let header = GossipHeader::new(msg_id, ttl, topic)?;
        let corr = self.next_stream;
        self.next_stream += 1;
        let chunks = oap::split(&header, data, self.chunk)?;
        let n = chunks.len();
        for (i, c) in chunks.iter().enumerate() {
            let extra = if ack && i + 1 == n {
                Flags::ACK_REQ
            } else {
                Flags::empty()
            };
            c.to_frame(corr, extra)
                .encode(self.max_frame, &mut self.out)?;
        }
        Ok(corr)
    }

    /// Queues GOAWAY (we are leaving).
    pub fn goaway(&mut self) {
        let _ = Ctrl::goaway().encode(u32::MAX, &mut self.out);
    }

    /// Bytes read from the node.
    pub fn handle_bytes(&mut self, buf: &mut BytesMut) {
        while self.state != State::Done {
            match self.decoder.decode(buf) {
                Ok(Some(f)) => self.on_frame(f),
                Ok(None) => return,
                Err(e) => return self.broken(e),
            }
        }
        buf.clear();
    }

    fn broken(&mut self, e: FrameError) {
        self.state = State::Done;
        self.events.push_back(ClientEvent::Broken(e.to_string()));
    }

    fn on_frame(&mut self, f: Frame) {
        let kind = f.flags.kind();
        match (self.state, f.proto(), kind) {
            (State::AwaitAnswer, AppProto::Hello, Some(FrameKind::Resp)) => {
                if f.code == 200 {
                    match serde_json::from_slice::<HelloOk>(&f.payload) {
                        Ok(ok) => {
                            self.chunk = (ok.chunk as usize).clamp(512, 64 << 10);
                            self.max_frame = ok.max_frame.min(DEFAULT_MAX_FRAME);
                            self.state = State::Established;
                            self.events.push_back(ClientEvent::Established(ok));
                        }
                        Err(e) => {
                            self.state = State::Done;
                            self.events
                                .push_back(ClientEvent::Broken(format!("bad HELLO answer: {e}")));
                        }
                    }
                } else {
                    self.refused(&f);
                }
            }
            (_, AppProto::Hello, Some(FrameKind::Resp)) if f.code != 200 => self.refused(&f),
            (State::Established, AppProto::Gossip, Some(FrameKind::Resp))
                if f.corr_id == NOTICE_CORR_ID =>
            {
                // A notice we cannot read tells us nothing we could act on.
                if let Ok(n) = serde_json::from_slice::<RefusalNotice>(&f.payload) {
                    self.events.push_back(ClientEvent::Notice {
                        code: f.code,
                        error: n.error,
                        refused: n.refused,
                        retry_after: n.retry_after,
                    });
                }
            }
            // 400 and 413 on gossip are rejects of a frame: the node closes after them.
            (_, AppProto::Gossip, Some(FrameKind::Resp)) if matches!(f.code, 400 | 413) => {
                self.refused(&f)
            }
            (State::Established, AppProto::Gossip, Some(FrameKind::Resp)) => {
                let error = serde_json::from_slice::<HelloError>(&f.payload)
                    .ok()
                    .map(|e| e.error);
                self.events.push_back(ClientEvent::Ack {
                    corr_id: f.corr_id,
                    code: f.code,
                    error,
                });
            }
            (State::Established, AppProto::Gossip, _) => match self.reasm.push(f) {
                Ok(Some(m)) => self.events.push_back(ClientEvent::Message(m)),
                Ok(None) => {}
                Err(StreamReject { error, .. }) => {
                    self.state = State::Done;
                    self.events
                        .push_back(ClientEvent::Broken(error.to_string()));
                }
            },
            (_, AppProto::Ctrl, Some(FrameKind::Event)) => match Ctrl::parse(&f.payload) {
                Some(Ctrl::Ping(n)) => {
                    let _ = Ctrl::Pong(n)
                        .to_frame(f.corr_id)
                        .encode(u32::MAX, &mut self.out);
                }
                Some(Ctrl::Goaway) => self.events.push_back(ClientEvent::Goaway),
                _ => {}
            },
            (_, _, Some(FrameKind::Resp)) if f.code >= 400 => self.refused(&f),
            _ => {}
        }
    }

    fn refused(&mut self, f: &Frame) {
        let body = serde_json::from_slice::<HelloError>(&f.payload).ok();
        self.state = State::Done;
        self.events.push_back(ClientEvent::Refused {
            code: f.code,
            error: body.as_ref().map(|b| b.error.clone()).unwrap_or_default(),
            retry_after: body.and_then(|b| b.retry_after),
        });
    }
}
