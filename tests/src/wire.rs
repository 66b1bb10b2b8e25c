//! OAP/1 on raw sockets: hand-built frames (so malformed ones can be sent byte for byte),
//! reading the node's answers, and a blocking client around core's sans-IO `Client`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use overlay_core::client::{Client, ClientEvent};
use overlay_core::oap::{Decoder, Frame, Limits, Role};
use serde_json::Value;

pub const REQ: u16 = 0x0001;
pub const RESP: u16 = 0x0002;
pub const EVENT: u16 = 0x0004;
pub const START: u16 = 0x0008;
pub const END: u16 = 0x0010;
pub const ACK_REQ: u16 = 0x0020;
pub const COMP: u16 = 0x0040;

/// A frame as bytes, every field as given (the length is computed unless `len` says
/// otherwise, which only malformed-frame tests want).
#[derive(Clone, Debug)]
pub struct RawFrame {
    pub len: Option<u32>,
    pub ver: u16,
    pub flags: u16,
    pub code: u16,
    pub app_proto: u16,
    pub tenant: u128,
    pub corr_id: u64,
    pub cap: Vec<u8>,
    pub payload: Vec<u8>,
}

impl RawFrame {
    pub fn new(app_proto: u16, flags: u16, corr_id: u64, payload: &[u8]) -> RawFrame {
        RawFrame {
            len: None,
            ver: 1,
            flags,
            code: 0,
            app_proto,
            tenant: 0,
            corr_id,
            cap: Vec::new(),
            payload: payload.to_vec(),
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let len = self
            .len
            .unwrap_or((38 + self.cap.len() + self.payload.len()) as u32);
        let mut b = Vec::with_capacity(38 + self.cap.len() + self.payload.len());
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(&self.ver.to_be_bytes());
        b.extend_from_slice(&self.flags.to_be_bytes());
        b.extend_from_slice(&self.code.to_be_bytes());
        b.extend_from_slice(&self.app_proto.to_be_bytes());
        b.extend_from_slice(&self.tenant.to_be_bytes());
        b.extend_from_slice(&(self.cap.len() as u16).to_be_bytes());
        b.extend_from_slice(&self.corr_id.to_be_bytes());
        b.extend_from_slice(&self.cap);
        b.extend_from_slice(&self.payload);
        b
    }
}

/// The JSON HELLO payload of spec section 2.
pub fn hello_json(node: &str, role: &str, topics: &[&str]) -> Vec<u8> {
    serde_json::json!({
        "versions": [1],
        "node": node,
        "role": role,
        "max_frame": 1_048_576,
        "topics": topics,
    })
    .to_string()
    .into_bytes()
}

/// The gossip payload of a one-frame message: header then data.
pub fn gossip_payload(msg_id: [u8; 16], ttl: u8, topic: &str, data: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(18 + topic.len() + data.len());
    p.extend_from_slice(&msg_id);
    p.push(ttl);
    p.push(topic.len() as u8);
    p.extend_from_slice(topic.as_bytes());
    p.extend_from_slice(data);
    p
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
    s.set_nodelay(true).unwrap();
    s
}

/// One answer frame decoded from `s`, within `timeout`; `None` if the node closed first.
pub fn read_frame(s: &mut TcpStream, timeout: Duration) -> io::Result<Option<Frame>> {
    let mut dec = Decoder::new(Limits::default());
    let mut buf = BytesMut::new();
    let deadline = Instant::now() + timeout;
    loop {
        match dec.decode(&mut buf) {
            Ok(Some(f)) => return Ok(Some(f)),
            Ok(None) => {}
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        s.set_read_timeout(Some(left))?;
        let mut chunk = [0u8; 8192];
        match s.read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// Whether the node closes `s` (EOF or reset) within `timeout`, discarding anything it
/// still sends.
pub fn closes_within(s: &mut TcpStream, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut chunk = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut chunk) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// The JSON payload of a frame.
pub fn json(f: &Frame) -> Value {
    serde_json::from_slice(&f.payload).unwrap_or_else(|e| {
        panic!(
            "payload is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&f.payload)
        )
    })
}

/// A blocking OAP/1 client: core's `Client` over a `TcpStream`.
pub struct OapClient {
    pub stream: TcpStream,
    pub client: Client,
    buf: BytesMut,
    next_id: u64,
}

impl OapClient {
    /// Connects and completes the HELLO; `Err` carries the refusal (code, error).
    pub fn connect(
        addr: SocketAddr,
        name: &str,
        topics: &[&str],
        cap: Option<&[u8]>,
    ) -> Result<OapClient, (u16, String)> {
        let stream = connect(addr);
        let topics = topics.iter().map(|t| t.to_string()).collect();
        let client = Client::new(name, Role::Client, topics, cap.map(Bytes::copy_from_slice));
        let mut c = OapClient {
            stream,
            client,
            buf: BytesMut::new(),
            next_id: 0,
        };
        c.client.start();
        c.flush();
        match c.next_event(Duration::from_secs(10)) {
            Some(ClientEvent::Established(_)) => Ok(c),
            Some(ClientEvent::Refused { code, error, .. }) => Err((code, error)),
            other => panic!("unexpected answer to HELLO: {other:?}"),
        }
    }

    /// Writes whatever the client has queued (HELLO, messages, PONGs).
    pub fn flush(&mut self) {
        while let Some(b) = self.client.poll_transmit() {
            self.stream.write_all(&b).expect("write to the node");
        }
    }

    /// Publishes one message with a fresh id (unique per client name and count); returns
    /// its stream id, which an ack carries.
    pub fn publish(&mut self, topic: &str, data: &[u8], ack: bool) -> u64 {
        self.next_id += 1;
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.next_id.to_be_bytes());
        id[8..].copy_from_slice(&(self.stream.local_addr().unwrap().port() as u64).to_be_bytes());
        let corr = self
            .client
            .publish(id, topic, 3, &Bytes::copy_from_slice(data), ack)
            .expect("encode");
        self.flush();
        corr
    }

    /// The next event, reading as needed, within `timeout`; `None` on timeout or close.
    pub fn next_event(&mut self, timeout: Duration) -> Option<ClientEvent> {
        let deadline = Instant::now() + timeout;
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            if let Some(ev) = self.client.poll_event() {
                return Some(ev);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).ok()?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return self.client.poll_event(),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    self.client.handle_bytes(&mut self.buf);
                    // Answers to PINGs go out at once, so the node never idles us out.
                    self.flush();
                }
                Err(_) => return self.client.poll_event(),
            }
        }
    }

    /// Raw bytes on the established connection (malformed frames after the HELLO).
    pub fn send_raw(&mut self, b: &[u8]) {
        self.stream.write_all(b).expect("write to the node");
    }
}
