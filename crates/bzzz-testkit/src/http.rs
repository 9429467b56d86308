//! A minimal blocking HTTP/1.1 GET for tests (one request per connection).
//! Good for the node's own API on loopback; not a general client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, bail};

/// GET `path` from `addr` (`IP:PORT`); returns (status, body).
pub fn get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    request(addr, "GET", path, &[], "")
}

/// Any method, extra headers, a body (sent as JSON); returns (status,
/// body). Without an `Authorization` header of its own, the request
/// carries the operator credential of [`crate::act_as_operator`], if any.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let own = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("authorization"));
    match crate::operator() {
        Some((_, pw)) if !own => {
            use base64::Engine as _;
            let v = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("admin:{pw}"))
            );
            let mut all = headers.to_vec();
            all.push(("Authorization", &v));
            raw(addr, method, path, &all, body)
        }
        _ => raw(addr, method, path, headers, body),
    }
}

/// [`request`] exactly as given: no credential added.
pub fn raw(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<(u16, String)> {
    raw_from(None, addr, method, path, headers, body)
}

/// A connection to `addr` from `source` (any port; e.g. `127.0.0.2`, to
/// be another client than `127.0.0.1`), blocking.
pub fn connect_from(source: std::net::IpAddr, addr: &str) -> anyhow::Result<TcpStream> {
    let sa: SocketAddr = addr
        .parse()
        .with_context(|| format!("bad address {addr}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let s = rt.block_on(async {
        let sock = match source {
            std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        sock.bind(SocketAddr::new(source, 0))?;
        let s = tokio::time::timeout(Duration::from_secs(2), sock.connect(sa))
            .await
            .context("connect timed out")??;
        anyhow::Ok(s.into_std()?)
    })?;
    s.set_nonblocking(false)?;
    Ok(s)
}

/// [`raw`] from client address `source` (`None`: the system's choice).
pub fn raw_from(
    source: Option<std::net::IpAddr>,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let mut s = match source {
        Some(ip) => connect_from(ip, addr)?,
        None => {
            let sa: SocketAddr = addr
                .parse()
                .with_context(|| format!("bad address {addr}"))?;
            TcpStream::connect_timeout(&sa, Duration::from_secs(2))?
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut extra = String::new();
    for (k, v) in headers {
        extra.push_str(&format!("{k}: {v}\r\n"));
    }
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status code")?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok((code, dechunk(body)?));
    }
    Ok((code, body.to_owned()))
}

/// The body of a chunked response.
fn dechunk(mut rest: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").context("truncated chunk size")?;
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size:?}"))?;
        if n == 0 {
            return Ok(out);
        }
        anyhow::ensure!(after.len() >= n + 2, "truncated chunk");
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
}

/// GET and parse JSON; non-2xx is an error.
pub fn get_json(addr: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let (code, body) = get(addr, path)?;
    if !(200..300).contains(&code) {
        bail!("GET {path} -> {code}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON: {body}"))
}
