//! Real web servers running payme-cgi on loopback: lighttpd (mod_cgi) when installed,
//! Debian's Apache (mod_cgid, configured as docs/DEPLOY.md says) when installed and run as
//! root, and Python's CGI server; plus a minimal HTTP/1.0 client.

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
    /// Debian's apache2 with mod_cgid, its own configuration (/etc/apache2) copied and
    /// changed only as docs/DEPLOY.md's Apache section says, run as root: Apache then runs
    /// CGI programs as `www-data`, so the merchant's wallet must run as `www-data` too.
    Apache,
}

/// The user Debian's Apache runs CGI programs as (`APACHE_RUN_USER` in its envvars).
pub const APACHE_USER: &str = "www-data";

/// Debian's Apache binary (in /usr/sbin, which a user's PATH may lack).
const APACHE2: &str = "/usr/sbin/apache2";

impl Kind {
    /// The system user payme-cgi runs as under this server, when not the test's own: the
    /// merchant's wallet must run as that user (its control socket admits only its user).
    pub fn cgi_user(self) -> Option<&'static str> {
        match self {
            Kind::Apache => Some(APACHE_USER),
            Kind::Lighttpd | Kind::Python => None,
        }
    }
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

/// Debian's apache2 with its configuration and tools (a2enmod, a2enconf).
pub fn apache_installed() -> bool {
    let runs = Command::new(APACHE2)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let tools = ["/usr/sbin/a2enmod", "/usr/sbin/a2enconf", "/etc/apache2/apache2.conf"];
    runs && tools.iter().all(|p| Path::new(p).exists())
}

/// Whether this process runs as root (Apache switches to its `User` only from root).
pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.trim_ascii() == b"0").unwrap_or(false)
}

/// Whether a test can run `kind` here. When it cannot, says so loudly and returns false
/// (the test skips), except on CI (`CI` set), where .ci/run installs the servers and runs
/// as root: there a missing part is a failure.
pub fn server_available(kind: Kind) -> bool {
    let missing = match kind {
        Kind::Python => None,
        Kind::Lighttpd if !lighttpd_installed() => Some("lighttpd is not installed (apt-get install lighttpd)"),
        Kind::Lighttpd => None,
        Kind::Apache if !apache_installed() => {
            Some("Debian's apache2 is not installed (apt-get install --no-install-recommends apache2)")
        }
        Kind::Apache if !is_root() => {
            Some("the Apache tests run Apache and the merchant's wallet as www-data: run them as root")
        }
        Kind::Apache => None,
    };
    match missing {
        None => true,
        Some(why) => {
            assert!(std::env::var_os("CI").is_none(), "on CI: {why}");
            eprintln!("\n==== SKIPPED ({kind:?}): {why} ====\n");
            false
        }
    }
}

/// A directory for the shop's catalog and item files, readable by every user (payme-cgi may
/// run as the web server's user); removed when dropped.
pub fn shop_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// The Apache configuration block in docs/DEPLOY.md's "Apache (mod_cgid)" section, as an
/// operator copies it.
pub fn deploy_md_apache_block() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/DEPLOY.md");
    let doc = std::fs::read_to_string(&path).unwrap();
    let section = &doc[doc.find("\n## Apache").expect("DEPLOY.md has an Apache section")..];
    let start = section.find("```apache\n").expect("the Apache section has an ```apache block") + 10;
    let len = section[start..].find("```").expect("the block ends");
    section[start..start + len].to_owned()
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sets up Debian's Apache in `root` as docs/DEPLOY.md's Apache section says, with
/// `/usr/lib/cgi-bin` at `cgi_dir` and `/etc/payme/cgi.toml` at `config`, listening on
/// 127.0.0.1:`port`; returns the command that runs it in the foreground.
fn apache_command(root: &Path, cgi_dir: &Path, config: &Path, port: u16) -> Command {
    use std::os::unix::fs::PermissionsExt;
    // Debian's own configuration: apache2.conf (Timeout 300, User www-data through
    // envvars), its modules (mpm_event, alias, env, authz_core, mime, ...) and
    // conf-enabled/serve-cgi-bin.conf (ScriptAlias /cgi-bin/ /usr/lib/cgi-bin/).
    let etc = root.join("apache2");
    run_ok(Command::new("cp").arg("-a").arg("/etc/apache2").arg(&etc));
    let main = std::fs::read_to_string(etc.join("apache2.conf")).unwrap();
    assert!(main.lines().any(|l| l.trim() == "Timeout 300"), "Debian's apache2.conf has Timeout 300");
    // Only for the test: its own port on loopback instead of port 80, no default site.
    std::fs::write(etc.join("ports.conf"), format!("Listen 127.0.0.1:{port}\nServerName 127.0.0.1\n")).unwrap();
    let _ = std::fs::remove_file(etc.join("sites-enabled/000-default.conf"));
    // DEPLOY.md's block, word for word, as /etc/apache2/conf-available/payme.conf; the
    // system paths moved into the test's directory (in serve-cgi-bin.conf too).
    let at_test_paths = |text: &str| {
        text.replace("/usr/lib/cgi-bin", cgi_dir.to_str().unwrap())
            .replace("/etc/payme/cgi.toml", config.to_str().unwrap())
    };
    std::fs::write(etc.join("conf-available/payme.conf"), at_test_paths(&deploy_md_apache_block())).unwrap();
    let serve = etc.join("conf-available/serve-cgi-bin.conf");
    std::fs::write(&serve, at_test_paths(&std::fs::read_to_string(&serve).unwrap())).unwrap();
    // DEPLOY.md's commands: a2enmod cgid, a2enconf payme (on the copy).
    let state = root.join("state");
    for (tool, what) in [("a2enmod", "cgid"), ("a2enconf", "payme")] {
        run_ok(
            Command::new(Path::new("/usr/sbin").join(tool))
                .args(["-q", what])
                .env("APACHE_CONFDIR", &etc)
                .env("APACHE_STATE_DIRECTORY", &state),
        );
    }
    // www-data reaches the copied program (the directories above it searchable).
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The directories Debian's apache2ctl makes: run/socks (mod_cgid's socket) and lock
    // owned by www-data.
    for d in ["run/socks", "lock", "log"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    run_ok(Command::new("chown").arg(format!("{APACHE_USER}:")).arg(root.join("run/socks")).arg(root.join("lock")));
    // Debian's envvars, at the test's directories.
    let mut c = Command::new(APACHE2);
    c.arg("-d").arg(&etc).arg("-f").arg(etc.join("apache2.conf")).arg("-DFOREGROUND");
    c.env("APACHE_CONFDIR", &etc)
        .env("APACHE_RUN_USER", APACHE_USER)
        .env("APACHE_RUN_GROUP", APACHE_USER)
        .env("APACHE_PID_FILE", root.join("run/apache2.pid"))
        .env("APACHE_RUN_DIR", root.join("run"))
        .env("APACHE_LOCK_DIR", root.join("lock"))
        .env("APACHE_LOG_DIR", root.join("log"))
        .env("LANG", "C");
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits (bounded: 200 tries, 10 s) until `addr` accepts connections; fails at once, with
/// `log`'s text, if the server exits.
fn wait_listening(addr: &str, child: &mut Child, log: &Path) {
    // Apache's error log proper is log/error.log beside its stderr's.
    let logs = || {
        let apache = log.with_file_name("log").join("error.log");
        std::fs::read_to_string(log).unwrap_or_default() + &std::fs::read_to_string(apache).unwrap_or_default()
    };
    for _ in 0..200 {
        if TcpStream::connect(addr).is_ok() {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("web server for {addr} exited ({status}): {}", logs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("web server at {addr} did not start: {}", logs());
}

impl WebServer {
    /// Starts a server of `kind` running `cgi` with `PAYME_CGI_CONFIG=config`.
    pub fn start(kind: Kind, cgi: &Path, config: &Path) -> WebServer {
        let root = tempfile::tempdir().unwrap();
        let cgi_dir = root.path().join("cgi-bin");
        std::fs::create_dir_all(&cgi_dir).unwrap();
        std::fs::create_dir_all(root.path().join("www")).unwrap();
        std::fs::copy(cgi, cgi_dir.join("payme-cgi")).unwrap();
        let log = root.path().join("error.log");
        let (mut child, addr) = match kind {
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
            Kind::Apache => {
                let port = free_port();
                // Apache's own error log is log/error.log; its start-up errors go to stderr.
                let stderr = std::fs::File::create(&log).unwrap();
                let child = apache_command(root.path(), &cgi_dir, config, port)
                    .stdout(Stdio::null())
                    .stderr(stderr)
                    .spawn()
                    .expect("apache2 runs");
                (child, format!("127.0.0.1:{port}"))
            }
        };
        wait_listening(&addr, &mut child, &log);
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

/// The item [`paper_shop`] sells: text, so a browser shows it.
pub const PAPER: &str = "The PayMe paper, paid for.";

/// A shop (payme-cgi under lighttpd) selling `paper` for 37 minor units from `merchant`'s
/// wallet, its "Pay with payme" links leading to `wallet_ui`, with `extra` settings.
pub fn paper_shop(
    merchant: &crate::wallet_harness::TestWallet,
    wallet_ui: &str,
    extra: &str,
) -> (tempfile::TempDir, WebServer) {
    let dir = shop_dir();
    let cfg = dir.path().join("cgi.toml");
    std::fs::write(
        &cfg,
        format!(
            "control_socket = \"{sock}\"\nshop_name = \"Bob's <Books>\"\ntimeout_secs = 60\nwallet_ui = \"{wallet_ui}\"\n{extra}\n\n\
             [[item]]\nid = \"paper\"\nprice = 37\ndescription = \"The PayMe paper\"\n\
             content_type = \"text/plain; charset=utf-8\"\nbody = \"{PAPER}\"\n",
            sock = merchant.dir.path().join("control.sock").display(),
        ),
    )
    .unwrap();
    let web = WebServer::start(Kind::Lighttpd, &cgi_bin(), &cfg);
    (dir, web)
}

/// One HTTP/1.0 request as a browser sends it (read to the end, at most 90 s), from
/// `bind` when given.
pub fn http(addr: &str, method: &str, path: &str, form: Option<&str>, bind: Option<IpAddr>) -> HttpResponse {
    let s = match bind {
        Some(ip) => connect_from(ip, addr),
        None => TcpStream::connect(addr).unwrap(),
    };
    // A browser's request: the shop answers an item page with 200 (a program gets 402).
    let head = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\nAccept: text/html\r\n");
    exchange(s, head, form)
}

/// One HTTP/1.1 request with exactly the headers given, Host included (for servers that
/// check them), read to the end.
pub fn http_exact(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], form: Option<&str>) -> HttpResponse {
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    exchange(TcpStream::connect(addr).unwrap(), head, form)
}

/// Sends the request `head` (its header lines) with `form` as its body, and reads the
/// answer to the end (at most 90 s).
fn exchange(mut s: TcpStream, mut req: String, form: Option<&str>) -> HttpResponse {
    s.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
    let body = form.unwrap_or("");
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
    let mut r = HttpResponse { status, headers, body: raw[split + 4..].to_vec() };
    if r.header("Transfer-Encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        r.body = dechunk(&r.body);
    }
    r
}

/// A chunked body (RFC 9112, 7.1; an HTTP/1.1 answer without Content-Length, as Apache
/// sends a CGI's output), decoded; it must end with its last chunk.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n").expect("a chunk size line");
        let line = String::from_utf8_lossy(&raw[..eol]).into_owned();
        let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).expect("a hex chunk size");
        raw = &raw[eol + 2..];
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&raw[..size]);
        assert_eq!(&raw[size..size + 2], b"\r\n", "a chunk ends with CRLF");
        raw = &raw[size + 2..];
    }
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
