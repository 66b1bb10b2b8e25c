//! A minimal HTTP/1.1 client for the admin plane, over the simulated network: one GET per
//! connection (`Connection: close`), the response read to the end and parsed by hand.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context as _};
use svc_overlay::net::Net;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::net::SimNet;

/// Largest response accepted: a scrape of one node is a few tens of KiB.
const MAX_RESPONSE: usize = 4 << 20;

#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// Header names lowercased; a repeated header keeps its last value.
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// `GET path` from `addr` (`host:port`).
pub async fn get(net: &SimNet, addr: &str, path: &str) -> anyhow::Result<Response> {
    let mut s = net
        .connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let host = addr.split(':').next().unwrap_or(addr);
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: sim\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    s.flush().await?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
        if raw.len() > MAX_RESPONSE {
            bail!("response from {addr}{path} exceeds {MAX_RESPONSE} bytes");
        }
        // With a Content-Length the response may end before the server closes.
        if let Some(r) = parse(&raw, false)? {
            return Ok(r);
        }
    }
    parse(&raw, true)?.ok_or_else(|| anyhow!("truncated response from {addr}{path}"))
}

/// A whole response, `None` while more bytes are needed; `eof`: the server has closed, so
/// a body without a length ends here.
pub fn parse(raw: &[u8], eof: bool) -> anyhow::Result<Option<Response>> {
    let Some(head_end) = find(raw, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&raw[..head_end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1.x status line: {status_line:?}");
    }
    let status: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let mut headers = BTreeMap::new();
    for l in lines {
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| anyhow!("bad header line {l:?}"))?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
    }
    let rest = &raw[head_end + 4..];
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        match dechunk(rest)? {
            Some(b) => b,
            None => return Ok(None),
        }
    } else if let Some(len) = headers.get("content-length") {
        let len: usize = len.parse().context("bad content-length")?;
        if rest.len() < len {
            return Ok(None);
        }
        rest[..len].to_vec()
    } else if eof {
        rest.to_vec()
    } else {
        return Ok(None);
    };
    Ok(Some(Response {
        status,
        headers,
        body: String::from_utf8(body).context("body is not UTF-8")?,
    }))
}

fn dechunk(mut b: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = find(b, b"\r\n") else {
            return Ok(None);
        };
        let size_line = std::str::from_utf8(&b[..eol])?;
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size_line:?}"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(Some(out));
        }
        if b.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_and_chunked() {
        let r = parse(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\nRetry-After: 5\r\n\r\n{}",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.headers["retry-after"], "5");
        assert_eq!(r.body, "{}");
        assert!(
            parse(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab", true)
                .unwrap()
                .is_none()
        );
        let r = parse(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            false,
        )
            .unwrap()
            .unwrap();
        assert_eq!(r.body, "abcde");
        let r = parse(b"HTTP/1.1 200 OK\r\n\r\nto the end", true)
            .unwrap()
            .unwrap();
        assert_eq!(r.body, "to the end");
    }
}
