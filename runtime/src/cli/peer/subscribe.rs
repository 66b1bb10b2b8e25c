//! `subscribe`: messages from a node on some topics, each handed to the caller (the
//! command line prints it as a JSON line).

use std::time::Duration;

use bytes::Bytes;

use overlay_core::client::ClientEvent;
use overlay_core::oap::Message;
use serde::Serialize;

use super::Conn;

/// One received message as `subscribe` prints it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MessageLine {
    pub topic: String,
    pub msg_id: String,
    pub ttl: u8,
    pub bytes: usize,
    pub data: String,
    /// `utf8` when the data is valid UTF-8, else `hex`.
    pub encoding: &'static str,
}

impl MessageLine {
    pub fn new(m: &Message) -> MessageLine {
        let (data, encoding) = match std::str::from_utf8(&m.data) {
            Ok(s) => (s.to_string(), "utf8"),
            Err(_) => (hex(&m.data), "hex"),
        };
        MessageLine {
            topic: m.header.topic_str().to_string(),
            msg_id: hex(&m.header.msg_id),
            ttl: m.header.ttl,
            bytes: m.data.len(),
            data,
            encoding,
        }
    }
}

pub fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

/// Receives messages on `topics` (all, if empty) and hands each to `out` until `count`
/// have arrived (forever if `None`) or the node closes; waits up to `connect_timeout` for
/// the node to listen.
pub async fn subscribe(
    to: &str,
    topics: Vec<String>,
    count: Option<u64>,
    connect_timeout: Duration,
    token: Option<Bytes>,
    mut out: impl FnMut(&Message),
) -> anyhow::Result<u64> {
    let mut conn = Conn::open(to, topics, connect_timeout, token).await?;
    tracing::info!(event = "subscribed", to, "subscribed");
    let mut got = 0u64;
    loop {
        if count.is_some_and(|c| got >= c) {
            break;
        }
        if let Err(e) = conn.read().await {
            if conn.client.is_done() || e.to_string().contains("closed") {
                break;
            }
            return Err(e);
        }
        conn.flush().await?;
        while let Some(ev) = conn.client.poll_event() {
            match ev {
                ClientEvent::Message(m) if count.map_or(true, |c| got < c) => {
                    out(&m);
                    got += 1;
                }
                ClientEvent::Goaway => {
                    tracing::info!(event = "goaway", "the node is draining");
                }
                ClientEvent::Broken(e) => anyhow::bail!("protocol error: {e}"),
                _ => {}
            }
        }
    }
    conn.close().await;
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn message_lines_use_utf8_or_hex() {
        let header = overlay_core::oap::GossipHeader::new([0xab; 16], 2, "feed").unwrap();
        let mut m = Message {
            corr_id: 1,
            tenant_id: 0,
            header,
            data: Bytes::from_static(b"hello"),
            ack_req: false,
            frames: 1,
        };
        let l = MessageLine::new(&m);
        assert_eq!(l.data, "hello");
        assert_eq!(l.encoding, "utf8");
        assert_eq!(l.msg_id, "ab".repeat(16));
        m.data = Bytes::from_static(&[0xff, 0x00]);
        let l = MessageLine::new(&m);
        assert_eq!((l.data.as_str(), l.encoding, l.bytes), ("ff00", "hex", 2));
    }
}
