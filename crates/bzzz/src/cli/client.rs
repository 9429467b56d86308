//! The typed HTTP client of the CLI: request and response types from
//! `bzzz_proto::api`, the API's error message on failure, one reader for
//! Server-Sent Events, and the credential files.

use std::time::Duration;

use anyhow::{Context, bail};
use bzzz_crypto::operator::OperatorPassword;
use serde::Serialize;
use serde::de::DeserializeOwned;

const TIMEOUT: Duration = Duration::from_secs(10);

/// A credential the CLI sends: the operator password (user `admin`, HTTP
/// Basic) or an API key (`Authorization: Bearer`).
#[derive(Debug, Clone)]
pub enum Credential {
    Operator(OperatorPassword),
    ApiKey(bzzz_proto::cluster::WireSecret),
}

impl Credential {
    /// The `Authorization` header value.
    pub fn header(&self) -> zeroize::Zeroizing<String> {
        match self {
            Credential::Operator(p) => basic_auth(p),
            Credential::ApiKey(k) => zeroize::Zeroizing::new(format!("Bearer {}", k.expose())),
        }
    }

    /// Reads the credential the options name: `--api-key-file`, then
    /// `BZZZ_API_KEY` (the key itself), then `--operator-password-file`.
    pub fn from_options(
        api_key_file: Option<&std::path::Path>,
        operator_password_file: Option<&std::path::Path>,
    ) -> anyhow::Result<Option<Self>> {
        if let Some(p) = api_key_file {
            let k = read_first_line(p, "API key")?;
            return Ok(Some(Credential::ApiKey(
                bzzz_proto::cluster::WireSecret::new(k.trim().to_owned()),
            )));
        }
        if let Ok(k) = std::env::var("BZZZ_API_KEY")
            && !k.trim().is_empty()
        {
            return Ok(Some(Credential::ApiKey(
                bzzz_proto::cluster::WireSecret::new(k.trim().to_owned()),
            )));
        }
        operator_password_file
            .map(|p| read_password_file(p, false).map(Credential::Operator))
            .transpose()
    }
}

/// The credential of this process (from the command's options), sent
/// with every request that names none itself.
static GLOBAL: std::sync::OnceLock<Credential> = std::sync::OnceLock::new();

/// Sets the process's credential (once; later calls are ignored).
pub fn set_credential(c: Credential) {
    let _ = GLOBAL.set(c);
}

fn with_auth(req: reqwest::RequestBuilder, auth: Option<&Credential>) -> reqwest::RequestBuilder {
    match auth.or(GLOBAL.get()) {
        Some(c) => req.header(reqwest::header::AUTHORIZATION, c.header().as_str()),
        None => req,
    }
}

/// Checks and normalizes an `--api` URL.
pub fn api_base(url: &str) -> anyhow::Result<String> {
    let u = url.trim().trim_end_matches('/');
    if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() <= "http://".len() {
        bail!("--api {url:?} is not an http:// or https:// URL (example: http://127.0.0.1:8080)");
    }
    Ok(u.to_owned())
}

/// How the CLI trusts a node's TLS certificate (https:// API URLs).
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// `--ca-cert`: the cluster CA (PEM).
    pub ca_cert: Option<std::path::PathBuf>,
    /// `--ca-fingerprint`: the CA's `SHA256:HEX`.
    pub fingerprint: Option<String>,
}

static TRUST: std::sync::OnceLock<Trust> = std::sync::OnceLock::new();

/// Sets how this process trusts TLS certificates (once).
pub fn set_trust(t: Trust) {
    let _ = TRUST.set(t);
}

/// Where the CA trusted for an API address is saved: one PEM per
/// `host_port` under `$XDG_CONFIG_HOME/bzzz/ca` (or `~/.config`).
pub fn saved_ca_path(base: &str) -> Option<std::path::PathBuf> {
    let host = base.split("://").nth(1)?.split('/').next()?;
    let name: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let dir = std::env::var_os("XDG_CONFIG_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".config")))?;
    Some(dir.join("bzzz").join("ca").join(format!("{name}.pem")))
}

/// Saves `pem` as the CA trusted for `base` (mode 0600 directory-wise).
pub fn save_ca(base: &str, pem: &str) -> anyhow::Result<std::path::PathBuf> {
    let p = saved_ca_path(base).context("no HOME or XDG_CONFIG_HOME to save the CA in")?;
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&p)
            .with_context(|| format!("cannot write {}", p.display()))?;
        f.write_all(pem.as_bytes())?;
    }
    Ok(p)
}

/// Fetches the cluster CA from `base` without trusting it yet (no
/// credential is sent), checks that its admin-signed genesis record holds
/// it, and returns its PEM and fingerprint.
async fn fetch_ca_unverified(base: &str) -> anyhow::Result<(String, String)> {
    let c = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .tls_danger_accept_invalid_certs(true)
        .build()
        .context("cannot build an HTTP client")?;
    let v: serde_json::Value = c
        .get(format!("{base}/api/v1/ca"))
        .send()
        .await
        .with_context(|| unreachable(base))?
        .json()
        .await
        .context("the node sent no cluster CA")?;
    let pem = v["pem"]
        .as_str()
        .context("the node sent no cluster CA")?
        .to_owned();
    let genesis: bzzz_proto::cluster::Signed =
        serde_json::from_value(v["genesis"].clone()).context("no genesis record")?;
    let g = bzzz_crypto::records::open_genesis(&genesis, None)
        .map_err(|e| anyhow::anyhow!("the CA's endorsement does not verify: {e}"))?;
    if g.ca_cert.as_deref() != Some(pem.as_str()) {
        bail!("the CA the node sent is not the one its genesis record endorses");
    }
    bzzz_crypto::ca::check_ca_shape(&pem)?;
    let fp = bzzz_crypto::ca::fingerprint(&pem)?;
    Ok((
        pem,
        format!(
            "{fp} (cluster {}, admin key {})",
            g.cluster, g.admin_public_key
        ),
    ))
}

/// The CA to trust for an https:// `base`: `--ca-cert`, the saved one, a
/// CA whose fingerprint matches `--ca-fingerprint` (then saved), or one
/// the user confirms on a terminal (then saved); never silently.
async fn trusted_ca(base: &str) -> anyhow::Result<String> {
    let t = TRUST.get().cloned().unwrap_or_default();
    if let Some(p) = &t.ca_cert {
        return std::fs::read_to_string(p).with_context(|| format!("--ca-cert {}", p.display()));
    }
    if t.fingerprint.is_none()
        && let Some(pem) = saved_ca_path(base).and_then(|p| std::fs::read_to_string(p).ok())
    {
        return Ok(pem);
    }
    let (pem, about) = fetch_ca_unverified(base).await?;
    let fp = bzzz_crypto::ca::fingerprint(&pem)?;
    match &t.fingerprint {
        Some(want) if want.trim().eq_ignore_ascii_case(&fp) => {}
        Some(want) => bail!(
            "the cluster CA at {base} has fingerprint {fp}, not {} (--ca-fingerprint): nothing was sent",
            want.trim()
        ),
        None => {
            use std::io::{IsTerminal as _, Write as _};
            if !std::io::stdin().is_terminal() {
                bail!(
                    "{base} presents a cluster CA this machine does not trust yet: {about}; \
                     check the fingerprint (bzzz init --json printed ca_fingerprint) and pass \
                     --ca-fingerprint {fp}, or --ca-cert FILE"
                );
            }
            eprint!(
                "{base} presents the cluster CA\n  {about}\nCompare the fingerprint with the one `bzzz init` printed. Trust it for this address? [y/N] "
            );
            let _ = std::io::stderr().flush();
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            if !matches!(line.trim(), "y" | "Y" | "yes") {
                bail!("not trusted; nothing was sent");
            }
        }
    }
    if let Ok(p) = save_ca(base, &pem) {
        eprintln!(
            "Trusted the cluster CA {fp} for {base} (saved in {})",
            p.display()
        );
    }
    Ok(pem)
}

/// A client builder for `base`: for https:// it trusts the cluster CA
/// only ([`trusted_ca`]), never the system's roots.
async fn builder_for(base: &str) -> anyhow::Result<reqwest::ClientBuilder> {
    let mut b = reqwest::Client::builder();
    if base.starts_with("https://") {
        let pem = trusted_ca(base).await?;
        let ca = reqwest::Certificate::from_pem(pem.as_bytes())
            .context("the cluster CA does not parse")?;
        b = b.tls_certs_only([ca]);
    }
    Ok(b)
}

/// One HTTP client per process (connection pool shared by every call).
async fn client_for(base: &str) -> anyhow::Result<&'static reqwest::Client> {
    static CLIENT: tokio::sync::OnceCell<reqwest::Client> = tokio::sync::OnceCell::const_new();
    CLIENT
        .get_or_try_init(|| async {
            builder_for(base)
                .await?
                .timeout(TIMEOUT)
                .build()
                .context("cannot build an HTTP client")
        })
        .await
}

fn unreachable(base: &str) -> String {
    format!("cannot reach the BZZZ API at {base} (is a node running there? set --api)")
}

/// The API's `{"error": …}` message, or the start of the body.
fn error_message(text: &str) -> String {
    serde_json::from_str::<bzzz_proto::api::ApiError>(text)
        .map(|e| e.error)
        .unwrap_or_else(|_| text.chars().take(500).collect())
}

/// The response, or an error with the API's message for an error status.
async fn success(resp: reqwest::Response, what: &str) -> anyhow::Result<reqwest::Response> {
    let code = resp.status();
    if code.is_success() {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    bail!("{what} answered {code}: {}", error_message(&body))
}

/// GET a JSON document.
pub async fn get<T: DeserializeOwned>(api: &str, path: &str) -> anyhow::Result<T> {
    let base = api_base(api)?;
    let url = format!("{base}{path}");
    let resp = with_auth(client_for(&base).await?.get(&url), None)
        .send()
        .await
        .with_context(|| unreachable(&base))?;
    success(resp, &url)
        .await?
        .json::<T>()
        .await
        .with_context(|| {
            format!("{url} did not answer with the expected JSON (is it a BZZZ node?)")
        })
}

/// POSTs JSON (with the operator credential if given); on an error status,
/// fails with the API's message.
pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
    api: &str,
    path: &str,
    body: &B,
    auth: Option<&Credential>,
) -> anyhow::Result<T> {
    let base = api_base(api)?;
    let url = format!("{base}{path}");
    let req = with_auth(
        client_for(&base)
            .await?
            .post(&url)
            .json(body)
            .timeout(Duration::from_secs(60)),
        auth,
    );
    let resp = req.send().await.with_context(|| unreachable(&base))?;
    let code = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !code.is_success() {
        bail!("{path}: {code}: {}", error_message(&text));
    }
    serde_json::from_str(&text)
        .with_context(|| format!("{url} did not answer with the expected JSON"))
}

/// Sends a request with an optional body and the operator credential;
/// parses the JSON answer, or fails with the API's message. `Ok(None)` for
/// a 404 when `not_found_ok`.
pub async fn send<T: DeserializeOwned>(
    api: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<reqwest::Body>,
    auth: Option<&Credential>,
    timeout: Duration,
    not_found_ok: bool,
) -> anyhow::Result<Option<T>> {
    let base = api_base(api)?;
    let url = format!("{base}{path}");
    // Bodies are JSON except uploads (PUT).
    let json_body = method != reqwest::Method::PUT;
    let mut req = with_auth(
        client_for(&base)
            .await?
            .request(method, &url)
            .timeout(timeout),
        auth,
    );
    if let Some(b) = body {
        if json_body {
            req = req.header(reqwest::header::CONTENT_TYPE, "application/json");
        }
        req = req.body(b);
    }
    let resp = req.send().await.with_context(|| unreachable(&base))?;
    let code = resp.status();
    if not_found_ok && code == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let text = resp.text().await.unwrap_or_default();
    if !code.is_success() {
        bail!("{path}: {code}: {}", error_message(&text));
    }
    serde_json::from_str(&text)
        .map(Some)
        .with_context(|| format!("{url} did not answer with the expected JSON"))
}

/// One Server-Sent Event: its `event:` name (empty for the default) and
/// its `data:` lines joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

/// Reads a `text/event-stream` (GET with the operator credential): no
/// overall timeout, a read timeout of a minute (the server sends a
/// keep-alive every 10 s).
#[derive(Debug)]
pub struct SseReader {
    resp: reqwest::Response,
    parser: SseParser,
}

impl SseReader {
    pub async fn open(api: &str, path: &str, auth: &Credential) -> anyhow::Result<Self> {
        let base = api_base(api)?;
        let c = builder_for(&base)
            .await?
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .build()
            .context("cannot build an HTTP client")?;
        let resp = c
            .get(format!("{base}{path}"))
            .header(reqwest::header::AUTHORIZATION, auth.header().as_str())
            .send()
            .await
            .with_context(|| unreachable(&base))?;
        Ok(Self {
            resp: success(resp, path).await?,
            parser: SseParser::default(),
        })
    }

    /// The next event; `None` when the stream ends.
    pub async fn next(&mut self) -> anyhow::Result<Option<SseEvent>> {
        loop {
            if let Some(e) = self.parser.next_event() {
                return Ok(Some(e));
            }
            match self.resp.chunk().await.context("the event stream broke")? {
                Some(chunk) => self.parser.push(&chunk)?,
                None => return Ok(None),
            }
        }
    }
}

/// Most bytes of one event (a deploy event is a few hundred).
const MAX_EVENT: usize = 1 << 20;

/// The line protocol of Server-Sent Events (comments and `id:`/`retry:`
/// ignored), bounded.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: String,
    data: Vec<String>,
    ready: std::collections::VecDeque<SseEvent>,
}

impl SseParser {
    pub fn push(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.buf.extend_from_slice(bytes);
        while let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    self.ready.push_back(SseEvent {
                        event: std::mem::take(&mut self.event),
                        data: std::mem::take(&mut self.data).join("\n"),
                    });
                }
                self.event.clear();
            } else if let Some(v) = line.strip_prefix("event:") {
                self.event = v.trim_start().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                self.data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
            }
        }
        let pending: usize = self.buf.len() + self.data.iter().map(String::len).sum::<usize>();
        if pending > MAX_EVENT {
            bail!("an event of the stream is larger than {MAX_EVENT} bytes");
        }
        Ok(())
    }

    pub fn next_event(&mut self) -> Option<SseEvent> {
        self.ready.pop_front()
    }
}

/// Reads an operator password file (first line).
pub fn read_password_file(
    path: &std::path::Path,
    for_setup: bool,
) -> anyhow::Result<OperatorPassword> {
    let line = read_first_line(path, "password")?;
    let p = if for_setup {
        OperatorPassword::new_for_setup(line.to_string())
    } else {
        OperatorPassword::new(line.to_string())
    };
    p.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The first line of a secret file (zeroized on drop).
pub fn read_first_line(
    path: &std::path::Path,
    what: &str,
) -> anyhow::Result<zeroize::Zeroizing<String>> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the {what} file {}", path.display()))?,
    );
    Ok(zeroize::Zeroizing::new(
        text.lines().next().unwrap_or("").to_owned(),
    ))
}

/// `Authorization: Basic` value for the operator.
pub fn basic_auth(p: &OperatorPassword) -> zeroize::Zeroizing<String> {
    use base64::Engine as _;
    zeroize::Zeroizing::new(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("admin:{}", p.expose()))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_urls_are_checked() {
        assert_eq!(
            api_base("http://127.0.0.1:8080/").expect("ok"),
            "http://127.0.0.1:8080"
        );
        assert!(api_base("127.0.0.1:8080").is_err());
        assert!(api_base("ftp://x").is_err());
        assert!(api_base("http://").is_err());
    }

    #[test]
    fn server_sent_events_are_parsed_across_chunks() {
        let mut p = SseParser::default();
        p.push(b": keep-alive\n\ndata: {\"host\":").expect("push");
        assert_eq!(p.next_event(), None);
        p.push(b"\"a\"}\r\n\nevent: done\ndata: x\ndata: y\n\n")
            .expect("push");
        assert_eq!(
            p.next_event(),
            Some(SseEvent {
                event: String::new(),
                data: "{\"host\":\"a\"}".into()
            })
        );
        assert_eq!(
            p.next_event(),
            Some(SseEvent {
                event: "done".into(),
                data: "x\ny".into()
            })
        );
        assert_eq!(p.next_event(), None);
    }

    #[test]
    fn an_endless_event_is_refused() {
        let mut p = SseParser::default();
        let line = vec![b'x'; 64 * 1024];
        let mut refused = false;
        for _ in 0..20 {
            if p.push(&line).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused);
    }
}
