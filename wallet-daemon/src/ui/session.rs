//! Who may use the wallet window: one-time login links, sessions and their CSRF tokens,
//! and the checks every request passes (its Host, its Origin).
//!
//! A web server on 127.0.0.1 is reachable by every page the person visits, and by any name
//! that resolves to 127.0.0.1 (DNS rebinding). So:
//! - a request naming any Host but the window's own address is refused;
//! - a request whose `Origin` is another origin is refused (no CORS headers are ever sent,
//!   so no other page can read an answer either);
//! - every page but the login link and the stylesheet needs a session: a secret cookie
//!   (HttpOnly, SameSite=Strict) that only `payme-wallet ui`'s one-time link sets;
//! - every form that changes anything carries the session's CSRF token.
//!
//! Cookies are scoped by host and not by port: any other web server on 127.0.0.1 that the
//! browser visits receives this cookie too. The cookie alone changes nothing (each change
//! needs the CSRF token, which only this window's pages hold), and it names this window's
//! port, so two wallets do not share one.
//!
//! Tokens and session ids are never logged. The login link passes through the command line
//! of the browser that `payme-wallet ui` starts; it is good once, for two minutes.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a login link stays good.
pub const LOGIN_TTL: Duration = Duration::from_secs(120);
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Login links not yet used, and sessions, kept at once: the oldest go first.
const MAX_LOGINS: usize = 8;
const MAX_SESSIONS: usize = 16;

/// A logged-in browser.
#[derive(Clone)]
pub struct Session {
    pub id: String,
    pub csrf: String,
    created: Instant,
}

/// The window's address, login links and sessions: shared by the daemon (the control
/// socket hands out login links) and the web server.
#[derive(Default)]
pub struct Access {
    addr: std::sync::OnceLock<SocketAddr>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    logins: Vec<(String, Instant)>,
    sessions: Vec<Session>,
}

/// A random secret: 32 bytes from the OS, hex.
fn secret() -> String {
    hex::encode(pmtp_proto::rng::bytes::<32, _>(&mut pmtp_proto::rng::os()))
}

/// Compares two secrets in time that does not depend on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Access {
    /// Records where the window listens (once, when it is bound).
    pub fn set_addr(&self, addr: SocketAddr) {
        let _ = self.addr.set(addr);
    }

    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr.get().copied()
    }

    /// The window's own origin, `http://127.0.0.1:PORT`.
    pub fn origin(&self) -> Option<String> {
        self.addr().map(|a| format!("http://{a}"))
    }

    /// The session cookie's name: it names the port, so two wallets' windows on one
    /// computer keep apart.
    pub fn cookie_name(&self) -> String {
        format!("payme_session_{}", self.addr().map_or(0, |a| a.port()))
    }

    /// A new one-time login link, or `None` when the window is off.
    pub fn login_link(&self) -> Option<String> {
        let origin = self.origin()?;
        let token = secret();
        let mut s = self.state.lock().ok()?;
        let now = Instant::now();
        s.logins.retain(|(_, t)| now.duration_since(*t) < LOGIN_TTL);
        if s.logins.len() >= MAX_LOGINS {
            s.logins.remove(0);
        }
        s.logins.push((token.clone(), now));
        Some(format!("{origin}/login?token={token}"))
    }

    /// Uses up login token `token`: a new session, or `None` for a token unknown, used
    /// or expired.
    pub fn redeem(&self, token: &str) -> Option<Session> {
        let mut s = self.state.lock().ok()?;
        let now = Instant::now();
        let at = s.logins.iter().position(|(t, _)| same_secret(t, token))?;
        let (_, issued) = s.logins.remove(at);
        if now.duration_since(issued) >= LOGIN_TTL {
            return None;
        }
        s.sessions.retain(|x| now.duration_since(x.created) < SESSION_TTL);
        if s.sessions.len() >= MAX_SESSIONS {
            s.sessions.remove(0);
        }
        let session = Session { id: secret(), csrf: secret(), created: now };
        s.sessions.push(session.clone());
        Some(session)
    }

    /// The live session whose id the request's cookie carries.
    pub fn session(&self, cookie_header: Option<&str>) -> Option<Session> {
        let name = self.cookie_name();
        let id = cookie_header?.split(';').filter_map(|c| c.trim().split_once('=')).find(|(k, _)| *k == name)?.1;
        let s = self.state.lock().ok()?;
        s.sessions.iter().find(|x| same_secret(&x.id, id) && x.created.elapsed() < SESSION_TTL).cloned()
    }

    /// Ends session `id` (log out).
    pub fn end(&self, id: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.sessions.retain(|x| !same_secret(&x.id, id));
        }
    }

    /// Whether `host` (a Host header) names this window: `127.0.0.1:PORT`, `[::1]:PORT`
    /// as bound, or `localhost:PORT`. Any other name is a page that had a name of its own
    /// resolve to this computer (DNS rebinding).
    pub fn is_own_host(&self, host: &str) -> bool {
        let Some(addr) = self.addr() else { return false };
        let host = host.trim().to_ascii_lowercase();
        host == addr.to_string() || host == format!("localhost:{}", addr.port())
    }

    /// Whether `origin` (an Origin header) is this window's.
    pub fn is_own_origin(&self, origin: &str) -> bool {
        let Some(addr) = self.addr() else { return false };
        let o = origin.trim().to_ascii_lowercase();
        o == format!("http://{addr}") || o == format!("http://localhost:{}", addr.port())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> Access {
        let a = Access::default();
        a.set_addr(SocketAddr::from(([127, 0, 0, 1], 8002)));
        a
    }

    #[test]
    fn a_login_link_is_good_once() {
        let a = access();
        let link = a.login_link().unwrap();
        let token = link.rsplit_once("token=").unwrap().1;
        assert!(link.starts_with("http://127.0.0.1:8002/login?token="));
        let s = a.redeem(token).expect("first use");
        assert!(a.redeem(token).is_none(), "second use");
        assert!(a.redeem("").is_none());
        let cookie = format!("other=1; payme_session_8002={}", s.id);
        assert_eq!(a.session(Some(&cookie)).unwrap().csrf, s.csrf);
        assert!(a.session(Some("payme_session_8002=0000")).is_none());
        assert!(a.session(Some(&format!("payme_session_9999={}", s.id))).is_none(), "another window's cookie");
        a.end(&s.id);
        assert!(a.session(Some(&cookie)).is_none(), "ended");
    }

    #[test]
    fn old_login_links_make_room_for_new_ones() {
        let a = access();
        let first = a.login_link().unwrap();
        for _ in 0..MAX_LOGINS {
            a.login_link().unwrap();
        }
        assert!(a.redeem(first.rsplit_once("token=").unwrap().1).is_none());
    }

    #[test]
    fn only_the_windows_own_host_and_origin_pass() {
        let a = access();
        assert!(a.is_own_host("127.0.0.1:8002"));
        assert!(a.is_own_host("localhost:8002"));
        for h in ["evil.example:8002", "127.0.0.1:8003", "127.0.0.1", "localhost", ""] {
            assert!(!a.is_own_host(h), "{h}");
        }
        assert!(a.is_own_origin("http://127.0.0.1:8002"));
        for o in ["null", "http://evil.example:8002", "https://127.0.0.1:8002", "http://127.0.0.1:9"] {
            assert!(!a.is_own_origin(o), "{o}");
        }
        assert!(!Access::default().is_own_host("127.0.0.1:8002"), "a window that is off has no host");
    }
}
