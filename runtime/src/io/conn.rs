//! Per-connection tasks: a reader that moves socket bytes to the driver under a credit,
//! and a writer that writes what the driver hands it, head and body without copying.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use overlay_core::sync::QueueAccount;
use overlay_core::{ConnId, Transmit};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::io::credit::CreditPool;
use crate::io::messages::{Ingress, WriterReport};

use crate::bounds::WRITE_BATCH;

pub(crate) async fn reader<R: AsyncRead + Unpin>(
    conn: ConnId,
    mut rd: R,
    tx: mpsc::Sender<Ingress>,
    queue: Arc<QueueAccount>,
    credit: CreditPool,
    read_chunk: usize,
) {
    let send = |msg: Ingress| {
        let (tx, queue) = (tx.clone(), queue.clone());
        async move {
            // A reserved slot first: the account's depth is then exactly what waits in the
            // channel, and the offer cannot be refused (credit bounds what is outstanding).
            let Ok(slot) = tx.reserve().await else {
                return false;
            };
            queue.offer();
            slot.send(msg);
            true
        }
    };
    let mut buf = BytesMut::new();
    loop {
        let permit = credit.acquire().await;
        // Consecutive reads fill one allocation until little of it is left. Relayed payloads
        // are slices of these chunks (zero copy), so a fresh allocation per small read would
        // let each queued small message pin a whole `read_chunk`.
        if buf.capacity() - buf.len() < (read_chunk / 16).max(512) {
            buf.reserve(read_chunk);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => {
                send(Ingress::Eof { conn, error: None }).await;
                return;
            }
            Ok(_) => {
                let chunk = buf.split();
                let msg = Ingress::Data {
                    conn,
                    chunk,
                    credit: permit,
                };
                if !send(msg).await {
                    return;
                }
            }
            Err(e) => {
                let error = Some(e.to_string());
                send(Ingress::Eof { conn, error }).await;
                return;
            }
        }
    }
}

pub(crate) async fn writer<W: AsyncWrite + Unpin>(
    conn: ConnId,
    mut wr: W,
    mut rx: mpsc::Receiver<Transmit>,
    report: mpsc::Sender<WriterReport>,
) {
    let mut segs: VecDeque<Bytes> = VecDeque::new();
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    // The driver drops the sender when it forgets the connection: then we stop.
    while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        let mut written = 0;
        let mut close = false;
        for t in batch.drain(..) {
            if t.close {
                // Nothing follows a close.
                close = true;
                break;
            }
            written += 1;
            for b in [t.head, t.body] {
                if !b.is_empty() {
                    segs.push_back(b);
                }
            }
        }
        let res = async {
            write_all_vectored(&mut wr, &mut segs).await?;
            wr.flush().await
        }
        .await;
        if let Err(e) = res {
            let _ = report
                .send(WriterReport::Done {
                    conn,
                    error: Some(e.to_string()),
                })
                .await;
            return;
        }
        if written > 0
            && report
                .send(WriterReport::Written { conn, n: written })
                .await
                .is_err()
        {
            return;
        }
        if close {
            let _ = wr.shutdown().await;
            let _ = report.send(WriterReport::Done { conn, error: None }).await;
            return;
        }
    }
}

/// Writes every segment, many per syscall, advancing through them without copying.
pub(crate) async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    segs: &mut VecDeque<Bytes>,
) -> io::Result<()> {
    const MAX_IOV: usize = 64;
    while !segs.is_empty() {
        let n = {
            let slices: Vec<IoSlice<'_>> =
                segs.iter().take(MAX_IOV).map(|b| IoSlice::new(b)).collect();
            w.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        advance(segs, n);
    }
    Ok(())
}

fn advance(segs: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let Some(front) = segs.front_mut() else {
            return;
        };
        if n >= front.len() {
            n -= front.len();
            segs.pop_front();
        } else {
            front.advance(n);
            n = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that accepts at most `step` bytes per write, to exercise partial writes.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            std::task::Poll::Ready(Ok(n))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn vectored_writes_survive_partial_writes() {
        let mut segs: VecDeque<Bytes> = ["head-one", "body", "", "x", "head-two-long"]
            .iter()
            .map(|s| Bytes::from_static(s.as_bytes()))
            .collect();
        let mut w = Trickle {
            out: Vec::new(),
            step: 3,
        };
        write_all_vectored(&mut w, &mut segs).await.unwrap();
        assert_eq!(w.out, b"head-onebodyxhead-two-long");
        assert!(segs.is_empty());
    }

    #[tokio::test]
    async fn writer_reports_written_then_done_on_close() {
        let (tx, rx) = mpsc::channel(8);
        let (rtx, mut rrx) = mpsc::channel(8);
        let t = |head: &'static [u8], close| Transmit {
            conn: ConnId(1),
            head: Bytes::from_static(head),
            body: Bytes::from_static(b"!"),
            close,
        };
        tx.send(t(b"a", false)).await.unwrap();
        tx.send(t(b"b", false)).await.unwrap();
        tx.send(Transmit {
            head: Bytes::new(),
            body: Bytes::new(),
            ..t(b"", true)
        })
        .await
        .unwrap();
        let (client, mut server) = tokio::io::duplex(64);
        let task = tokio::spawn(writer(ConnId(1), client, rx, rtx));
        match rrx.recv().await.unwrap() {
            WriterReport::Written { n, .. } => assert_eq!(n, 2),
            WriterReport::Done { .. } => panic!("done before written"),
        }
        assert!(matches!(
            rrx.recv().await.unwrap(),
            WriterReport::Done { error: None, .. }
        ));
        task.await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"a!b!");
    }

    #[tokio::test]
    async fn small_reads_share_one_allocation() {
        let (tx, mut rx) = mpsc::channel(100);
        let queue = Arc::new(QueueAccount::new(100));
        let (mut client, server) = tokio::io::duplex(64);
        let task = tokio::spawn(reader(
            ConnId(1),
            server,
            tx,
            queue,
            CreditPool::new(8),
            64 << 10,
        ));
        let mut chunks = Vec::new();
        for i in 0..3u8 {
            client.write_all(&[i; 10]).await.unwrap();
            match rx.recv().await.unwrap() {
                Ingress::Data { chunk, credit, .. } => chunks.push((chunk, credit)),
                Ingress::Eof { .. } => panic!("eof"),
            }
        }
        // Each chunk starts where the previous ended: one 64 KiB buffer, not three.
        for w in chunks.windows(2) {
            assert_eq!(w[1].0.as_ptr(), w[0].0.as_ptr().wrapping_add(w[0].0.len()));
        }
        task.abort();
    }

    #[tokio::test]
    async fn reader_holds_at_most_its_credit() {
        let (tx, mut rx) = mpsc::channel(100);
        // The credit the driver gives each connection: `overlay.peer.read_credit_chunks`.
        let mut cfg = overlay_core::Config::default();
        cfg.overlay.peer.read_credit_chunks = 2;
        let bounds = crate::bounds::Bounds::from_config(&cfg);
        let credit = CreditPool::new(bounds.read_credit);
        let queue = Arc::new(QueueAccount::new(100));
        let (mut client, server) = tokio::io::duplex(16);
        let task = tokio::spawn(reader(
            ConnId(1),
            server,
            tx,
            queue.clone(),
            credit.clone(),
            4096,
        ));
        let mut held = Vec::new();
        for i in 0..3u8 {
            client.write_all(&[i; 8]).await.unwrap();
            if i < 2 {
                held.push(rx.recv().await.unwrap());
            }
        }
        // Two chunks outstanding: the reader waits for credit and sends nothing more.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(rx.try_recv().is_err());
        assert_eq!(credit.available(), 0);
        assert_eq!(queue.depth(), 2, "the ingress account sees both chunks");
        held.clear();
        assert!(matches!(rx.recv().await.unwrap(), Ingress::Data { .. }));
        drop(client);
        task.abort();
    }
}
