//! OAP/1 clients on simulated hosts, speaking through core's sans-IO `Client` (the same one
//! the command line's `publish` and `subscribe` use), plus raw access for hostile bytes.

use std::collections::VecDeque;

use anyhow::{anyhow, bail, Context as _};
use bytes::{Bytes, BytesMut};
use overlay_core::client::{Client, ClientEvent};
use overlay_core::oap::{HelloOk, MsgId, Role};
use svc_overlay::net::Net;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::net::{SimNet, SimStream};

pub struct OapClient {
    stream: SimStream,
    client: Client,
    buf: BytesMut,
    events: VecDeque<ClientEvent>,
    eof: bool,
}

impl OapClient {
    /// Connects and sends HELLO; does not wait for the answer.
    pub async fn open(
        net: &SimNet,
        addr: &str,
        name: &str,
        role: Role,
        topics: Vec<String>,
    ) -> anyhow::Result<OapClient> {
        let stream = net
            .connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let mut c = OapClient {
            stream,
            client: Client::new(name, role, topics, None),
            buf: BytesMut::new(),
            events: VecDeque::new(),
            eof: false,
        };
        c.client.start();
        c.flush().await?;
        Ok(c)
    }

    /// Connects without sending anything: the first bytes are the caller's.
    pub async fn raw(net: &SimNet, addr: &str, name: &str) -> anyhow::Result<OapClient> {
        let stream = net
            .connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        Ok(OapClient {
            stream,
            client: Client::new(name, Role::Client, Vec::new(), None),
            buf: BytesMut::new(),
            events: VecDeque::new(),
            eof: false,
        })
    }

    /// Connects as a `client` and waits for the HELLO answer to be 200.
    pub async fn connect(
        net: &SimNet,
        addr: &str,
        name: &str,
        topics: Vec<String>,
    ) -> anyhow::Result<(OapClient, HelloOk)> {
        let mut c = OapClient::open(net, addr, name, Role::Client, topics).await?;
        match c.next_event().await? {
            Some(ClientEvent::Established(ok)) => Ok((c, ok)),
            other => bail!("HELLO to {addr} answered {other:?}"),
        }
    }

    /// Writes whatever the client has queued (HELLO, publishes, PONGs).
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        while let Some(b) = self.client.poll_transmit() {
            self.stream.write_all(&b).await?;
        }
        self.stream.flush().await?;
        Ok(())
    }

    /// The next event, reading as needed and answering PINGs; `None` once the node closed.
    pub async fn next_event(&mut self) -> anyhow::Result<Option<ClientEvent>> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(Some(e));
            }
            if self.eof {
                return Ok(None);
            }
            let n = self.stream.read_buf(&mut self.buf).await?;
            if n == 0 {
                self.eof = true;
                continue;
            }
            self.client.handle_bytes(&mut self.buf);
            while let Some(e) = self.client.poll_event() {
                self.events.push_back(e);
            }
            // PONGs go out at once, so a quiet subscriber is not taken for a dead one.
            self.flush().await?;
        }
    }

    /// Queues and writes one message; returns the stream id its ack (if asked) will carry.
    pub async fn publish(
        &mut self,
        msg_id: MsgId,
        topic: &str,
        data: &Bytes,
        ack: bool,
    ) -> anyhow::Result<u64> {
        let corr = self
            .client
            .publish(msg_id, topic, 6, data, ack)
            .map_err(|e| anyhow!("encoding a publish: {e}"))?;
        self.flush().await?;
        Ok(corr)
    }

    /// Publishes with ACK_REQ and waits for the ack: its code and error (202, 429, 503).
    pub async fn publish_acked(
        &mut self,
        msg_id: MsgId,
        topic: &str,
        data: &Bytes,
    ) -> anyhow::Result<(u16, Option<String>)> {
        let corr = self.publish(msg_id, topic, data, true).await?;
        loop {
            match self.next_event().await? {
                Some(ClientEvent::Ack {
                    corr_id,
                    code,
                    error,
                }) if corr_id == corr => return Ok((code, error)),
                Some(ClientEvent::Refused { code, error, .. }) => {
                    bail!("refused while waiting for an ack: {code} {error}")
                }
                Some(_) => {}
                None => bail!("connection closed while waiting for an ack"),
            }
        }
    }

    /// The socket itself, for bytes no well-behaved client would send.
    pub fn stream(&mut self) -> &mut SimStream {
        &mut self.stream
    }
}
