//! The HTTP client of payments in band (`payme-wallet pay URL`): reqwest over rustls (ring
//! provider, the platform's trusted roots), bounded in every way a shop could grow.
//!
//! - Time: a connect timeout and a timeout per request (answer and body), `[http]` config.
//! - Size: the body is read chunk by chunk and refused past `http.max_body_bytes`, before
//!   buffering more; header values of the protocol are bounded by `pmtp_proto::http::decode`.
//! - Redirects: at most `http.max_redirects`, and never to another origin: a payment header
//!   must only ever reach the origin whose offer it pays (and whose key it is sealed to), and
//!   an offer is paid only for the origin of the URL fetched. A redirect elsewhere is not
//!   followed; the caller sees the 3xx answer.
//!
//! It knows nothing of payments: [`crate::inband`] decides what the answers mean.

use crate::config::Http;
use pmtp_proto::http::Origin;
use std::time::Duration;

/// What a fetch could not do (no answer, or an answer this client would not read).
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error("not a URL this wallet fetches: {0}")]
    Url(String),
    #[error("the HTTP client cannot start: {0}")]
    Client(String),
    #[error("no answer from {url}: {reason}")]
    Network { url: String, reason: String },
    #[error("the answer from {url} is longer than {max} bytes (http.max_body_bytes)")]
    TooLarge { url: String, max: u64 },
}

/// One answer: its status, the protocol's headers, and the body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// The URL that answered (after same-origin redirects).
    pub url: String,
    /// Header values, by name; a header that is not text is absent.
    headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    /// The value of header `name` (case-insensitive), if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Protocol headers copied out of an answer; the others are not kept.
const KEPT: &[&str] = &[
    pmtp_proto::http::PAYMENT_REQUIRED,
    pmtp_proto::http::PAYMENT_RESPONSE,
    crate::inband::PAYMENT_REFUSED,
    "content-type",
    "location",
];

/// A configured client; cheap to share (connections are pooled).
pub struct Fetcher {
    client: reqwest::Client,
    max_body: u64,
}

impl Fetcher {
    pub fn new(cfg: &Http) -> Result<Fetcher, FetchError> {
        // reqwest is built without a default crypto provider (no aws-lc/cmake build): ring,
        // which the workspace already uses. Installed once per process; a second install
        // (another Fetcher) finds it there, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let max_redirects = cfg.max_redirects;
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            let first = attempt.previous().first().map(|u| Origin::of_url(u.as_str()));
            let next = Origin::of_url(attempt.url().as_str());
            match (first, next) {
                _ if attempt.previous().len() > max_redirects => attempt.error("too many redirects"),
                (Some(Ok(a)), Ok(b)) if a == b => attempt.follow(),
                // Another origin: not followed (the payment header must not go there).
                _ => attempt.stop(),
            }
        });
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(cfg.connect_timeout_secs.max(1)))
            .timeout(Duration::from_secs(cfg.timeout_secs.max(1)))
            .redirect(policy)
            .user_agent(concat!("payme-wallet/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetchError::Client(e.to_string()))?;
        Ok(Fetcher { client, max_body: cfg.max_body_bytes })
    }

    /// GETs `url` with `headers`, reading at most `http.max_body_bytes` of body.
    pub async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<Answer, FetchError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| FetchError::Url(format!("{e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(FetchError::Url("only http:// and https:// URLs are fetched".into()));
        }
        let shown = || pmtp_proto::text::escape_control(url);
        let network = |e: reqwest::Error| FetchError::Network { url: shown(), reason: error_text(&e) };
        let mut req = self.client.get(parsed);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let mut resp = req.send().await.map_err(network)?;
        let too_large = || FetchError::TooLarge { url: shown(), max: self.max_body };
        if resp.content_length().is_some_and(|n| n > self.max_body) {
            return Err(too_large());
        }
        let status = resp.status().as_u16();
        let answered = resp.url().to_string();
        let headers = KEPT
            .iter()
            .filter_map(|n| {
                let v = resp.headers().get(*n)?.to_str().ok()?;
                Some(((*n).to_owned(), v.to_owned()))
            })
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(network)? {
            let len = u64::try_from(body.len().saturating_add(chunk.len())).unwrap_or(u64::MAX);
            if len > self.max_body {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer { status, url: answered, headers, body })
    }
}

/// A reqwest error's text, with its causes.
fn error_text(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    pmtp_proto::text::escape_control(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    /// A server answering each connection with the next of `answers` (`{other}` is
    /// replaced by the other server's address); returns its address and the request heads.
    fn server(answers: Vec<String>, other: Option<String>) -> (String, Arc<Mutex<Vec<String>>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        std::thread::spawn(move || {
            for (answer, conn) in answers.into_iter().zip(l.incoming()) {
                let mut conn = conn.unwrap();
                let mut head = String::new();
                let mut r = BufReader::new(conn.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                s.lock().unwrap().push(head);
                let answer = answer.replace("{other}", other.as_deref().unwrap_or(""));
                let _ = conn.write_all(answer.as_bytes());
            }
        });
        (addr, seen)
    }

    fn ok(body: &str) -> String {
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
    }

    fn redirect(to: &str) -> String {
        format!("HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    }

    fn fetcher(max_body: u64) -> Fetcher {
        Fetcher::new(&Http { max_body_bytes: max_body, timeout_secs: 5, ..Http::default() }).unwrap()
    }

    #[tokio::test]
    async fn a_body_longer_than_the_limit_is_refused() {
        // Announced (Content-Length) and unannounced (read until the server closes).
        let unannounced = format!("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{}", "x".repeat(100));
        let (addr, _) = server(vec![ok(&"x".repeat(100)), unannounced, ok(&"x".repeat(100))], None);
        let f = fetcher(99);
        for _ in 0..2 {
            let e = f.get(&format!("http://{addr}/"), &[]).await.unwrap_err();
            assert!(matches!(e, FetchError::TooLarge { max: 99, .. }), "{e}");
        }
        let a = fetcher(100).get(&format!("http://{addr}/"), &[]).await.unwrap();
        assert_eq!(a.body.len(), 100);
    }

    #[tokio::test]
    async fn redirects_stay_within_the_origin_and_payment_headers_never_leave_it() {
        let (elsewhere, elsewhere_seen) = server(vec![ok("elsewhere")], None);
        let answers = vec![redirect("/moved"), ok("here"), redirect("http://{other}/x")];
        let (addr, seen) = server(answers, Some(elsewhere));
        let f = fetcher(1000);
        let a = f.get(&format!("http://{addr}/start"), &[("PAYMENT-SIGNATURE", "v1.secret")]).await.unwrap();
        assert_eq!((a.status, a.body.as_slice()), (200, &b"here"[..]), "same origin: followed");
        assert!(seen.lock().unwrap()[1].to_ascii_lowercase().contains("payment-signature: v1.secret"));
        let a = f.get(&format!("http://{addr}/again"), &[("PAYMENT-SIGNATURE", "v1.secret")]).await.unwrap();
        assert_eq!(a.status, 302, "another origin: not followed");
        assert!(elsewhere_seen.lock().unwrap().is_empty(), "nothing reached the other origin");
    }

    #[tokio::test]
    async fn https_speaks_tls_and_a_server_that_does_not_is_no_answer() {
        // The TLS stack (rustls, ring provider) is set up; plain HTTP is not TLS.
        let (addr, _) = server(vec![ok("plain")], None);
        let e = fetcher(100).get(&format!("https://{addr}/"), &[]).await.unwrap_err();
        assert!(matches!(e, FetchError::Network { .. }), "{e}");
    }

    #[tokio::test]
    async fn only_web_urls_are_fetched() {
        let f = fetcher(10);
        for bad in ["file:///etc/passwd", "ftp://x/", "not a url"] {
            assert!(matches!(f.get(bad, &[]).await, Err(FetchError::Url(_))), "{bad}");
        }
    }
}
