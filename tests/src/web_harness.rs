//! Real web servers running payme-cgi on loopback: lighttpd (mod_cgi) when installed, and
//! Python's CGI server; plus a minimal HTTP/1.0 client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, Read, Write};
use std::net::{IpAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn cgi_bin() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_payme-cgi") {
        Some(p) => p.into(),
        None => crate::bank_harness::workspace_binary("payme-cgi", "merchant-cgi"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Lighttpd,
    Python,
}

/// A web server serving `/cgi-bin/payme-cgi` on 127.0.0.1.
pub struct WebServer {
    pub kind: Kind,
    pub addr: String,
    child: Option<Child>,
    _root: tempfile::TempDir,
}

pub fn lighttpd_installed() -> bool {
    Command::new("lighttpd")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_listening(addr: &str) {
    // Bounded: 200 tries, 10 s.
    for _ in 0..200 {
        if TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("web server at {addr} did not start");
}

impl WebServer {
    /// Starts a server of `kind` running `cgi` with `PAYME_CGI_CONFIG=config`.
    pub fn start(kind: Kind, cgi: &Path, config: &Path) -> WebServer {
        let root = tempfile::tempdir().unwrap();
        let cgi_dir = root.path().join("cgi-bin");
        std::fs::create_dir_all(&cgi_dir).unwrap();
        std::fs::create_dir_all(root.path().join("www")).unwrap();
        std::fs::copy(cgi, cgi_dir.join("payme-cgi")).unwrap();
        let (child, addr) = match kind {
            Kind::Python => {
                // As root, the forking CGI path would setuid(nobody) before running the
                // script, which then cannot reach the merchant wallet's 0600 socket; the
                // subprocess path runs it as this user, like a suexec'd deployment.
                let script = "import http.server as h\n\
                              h.CGIHTTPRequestHandler.have_fork = False\n\
                              h.test(HandlerClass=h.CGIHTTPRequestHandler, port=0, bind='127.0.0.1')\n";
                let mut child = Command::new("python3")
                    .args(["-u", "-c", script])
                    .current_dir(root.path())
                    .env("PAYME_CGI_CONFIG", config)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("python3 runs");
                let mut line = String::new();
                std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
                // "Serving HTTP on 127.0.0.1 port 41235 (http://127.0.0.1:41235/) ..."
                let port = line.split_whitespace().skip_while(|w| *w != "port").nth(1).expect("python prints its port");
                (child, format!("127.0.0.1:{port}"))
            }
            Kind::Lighttpd => {
                let port = free_port();
                let conf = root.path().join("lighttpd.conf");
                let r = root.path().display();
                std::fs::write(
                    &conf,
                    format!(
                        r#"server.modules = ("mod_alias", "mod_setenv", "mod_cgi")
server.document-root = "{r}/www"
server.bind = "127.0.0.1"
server.port = {port}
server.errorlog = "{r}/error.log"
alias.url = ("/cgi-bin/" => "{r}/cgi-bin/")
$HTTP["url"] =~ "^/cgi-bin/" {{ cgi.assign = ("" => "") }}
setenv.add-environment = ("PAYME_CGI_CONFIG" => "{config}")
"#,
                        config = config.display()
                    ),
                )
                .unwrap();
                let child = Command::new("lighttpd")
                    .arg("-D")
                    .arg("-f")
                    .arg(&conf)
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("lighttpd runs");
                (child, format!("127.0.0.1:{port}"))
            }
        };
        wait_listening(&addr);
        WebServer { kind, addr, child: Some(child), _root: root }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            for _ in 0..100 {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The payment status a buyer sees: the HTTP status, or under Python's CGI server
    /// (which always answers 200 before running the script) the CGI `Status` header.
    pub fn status_of(&self, r: &HttpResponse) -> u16 {
        match (self.kind, r.header("Status")) {
            (Kind::Python, Some(s)) => s.split_whitespace().next().and_then(|c| c.parse().ok()).unwrap_or(0),
            _ => r.status,
        }
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.0 request as a browser sends it (read to the end, at most 90 s), from
/// `bind` when given.
pub fn http(addr: &str, method: &str, path: &str, form: Option<&str>, bind: Option<IpAddr>) -> HttpResponse {
    let mut s = match bind {
        Some(ip) => connect_from(ip, addr),
        None => TcpStream::connect(addr).unwrap(),
    };
    s.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
    let body = form.unwrap_or("");
    // A browser's request: the shop answers an item page with 200 (a program gets 402).
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\nAccept: text/html\r\n");
    if form.is_some() {
        req.push_str(&format!("Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse_response(&raw)
}

/// An HTTP response read to the end (the connection closed after it).
pub fn parse_response(raw: &[u8]) -> HttpResponse {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a header block");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect();
    HttpResponse { status, headers, body: raw[split + 4..].to_vec() }
}

/// Connects from a chosen local address (so REMOTE_ADDR is that address).
fn connect_from(ip: IpAddr, addr: &str) -> TcpStream {
    // std has no bind-before-connect; a tiny tokio runtime does it without unsafe.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let addr = addr.to_owned();
    let s = rt.block_on(async move { pmtp_client::connect(&addr, Some(ip)).await.unwrap() });
    let std = s.into_std().unwrap();
    std.set_nonblocking(false).unwrap();
    std
}
