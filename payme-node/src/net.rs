//! The listening side every daemon shares: the connection-limited accept loop, the
//! per-source count, and the plain refusal for a frame the codec cannot read.

use futures::SinkExt;
use pmtp_proto::codec::PmtpCodec;
use pmtp_proto::frame::{Frame, FrameError, ProtoError};
use pmtp_proto::ReasonCode;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::codec::Framed;
use tokio_util::task::TaskTracker;

/// Connection limits for [`accept_loop`].
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Connections served at once; more wait in the kernel's backlog.
    pub total: usize,
    /// Connections from one source at once (an IPv4 address, or an IPv6 /64, which one
    /// host can fill) once half of `total` is in use; more are closed at accept, so a few
    /// sources (a flood, slowloris) cannot take every slot from everyone else: exhausting
    /// `total` takes about `total / 2 / per_ip` sources. While more than half is free, one
    /// source may use what is free.
    pub per_ip: usize,
}

/// File descriptors kept back from connections: the database, its WAL, logs, the
/// listener, outbound connections to banks.
const RESERVED_FDS: u64 = 64;

/// How many connections this process can really hold: `wanted`, raised open-file limit
/// permitting (the soft limit is raised to the hard one). Serving more than the file
/// descriptors allow would make `accept` fail for everyone, which is what the limit is
/// there to prevent.
pub fn connection_capacity(wanted: usize) -> usize {
    let fds = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let room = usize::try_from(fds.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX).max(1);
    if room < wanted {
        tracing::warn!(
            wanted,
            room,
            "the open-file limit (ulimit -n) allows fewer connections than max_connections; serving at most {room}"
        );
    }
    wanted.min(room)
}

/// The source a connection counts against: its IPv4 address (also when mapped into
/// IPv6), or the /64 network of an IPv6 address.
pub fn source_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V4(_) => ip,
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => std::net::IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

/// Counts connections per source; a slot is released when its guard drops.
#[derive(Default)]
struct PerIp(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

struct IpSlot(Arc<PerIp>, std::net::IpAddr);

impl PerIp {
    fn take(self: &Arc<Self>, ip: std::net::IpAddr, limit: usize) -> Option<IpSlot> {
        let key = source_key(ip);
        let mut m = self.0.lock().ok()?;
        let n = m.entry(key).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(IpSlot(self.clone(), key))
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Ok(mut m) = (self.0).0.lock() {
            if let Some(n) = m.get_mut(&self.1) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&self.1);
                }
            }
        }
    }
}

/// Accepts connections until `shutdown` completes, serving each with `handle` on
/// `tracker`. A permit is taken before `accept`, so at most `limits.total` are served at
/// once (fewer if the open-file limit cannot hold that many); once half the slots are in
/// use, a source over `limits.per_ip` has its new connection closed at once.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    limits: ConnectionLimits,
    tracker: &TaskTracker,
    shutdown: impl Future<Output = ()>,
    handle: F,
) where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let capacity = connection_capacity(limits.total.max(1));
    let permits = Arc::new(Semaphore::new(capacity));
    let per_ip = Arc::new(PerIp::default());
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // While at least half the slots are free, one source may use them (a merchant's
        // wallet depositing in parallel, many clients behind one NAT); once half are in
        // use, each source is held to its share, so the rest cannot be taken by a few.
        let crowded = permits.available_permits() < capacity / 2;
        let limit = if crowded { limits.per_ip.max(1) } else { capacity };
        let Some(slot) = per_ip.take(peer.ip(), limit) else {
            tracing::debug!(peer = %peer.ip(), "too many connections from one address; closed");
            continue;
        };
        let work = handle(stream);
        tracker.spawn(async move {
            let _permit = permit;
            let _slot = slot;
            work.await;
        });
    }
}

/// Answers a frame the codec refused (bad header, oversize) with a plain refusal, where
/// the header names a message that can be refused, within `deadline`. The caller closes
/// the connection after: the stream is no longer in step.
pub async fn refuse_bad_frame<S>(framed: &mut Framed<S, PmtpCodec>, error: &FrameError, deadline: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(id) = error.refusal_id() else { return };
    let code = ReasonCode::from(&ProtoError::Frame(error.clone()));
    if let Ok(f) = Frame::plain_refusal(id, code, &error.to_string()) {
        let _ = tokio::time::timeout(deadline, framed.send(f)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn ipv6_sources_count_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap_or(IpAddr::from([0u8; 4]));
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap_or(IpAddr::from([0u8; 4]));
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap_or(IpAddr::from([0u8; 4]));
        assert_eq!(source_key(a), source_key(b), "one /64, one source");
        assert_ne!(source_key(a), source_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap_or(IpAddr::from([0u8; 4]));
        assert_eq!(source_key(mapped), IpAddr::from([192, 0, 2, 7]));
        let slots = Arc::new(PerIp::default());
        let held: Vec<_> = (0..4).filter_map(|_| slots.take(a, 4)).collect();
        assert_eq!(held.len(), 4);
        assert!(slots.take(b, 4).is_none(), "another address in the same /64 is over the limit");
        assert!(slots.take(c, 4).is_some());
        drop(held);
        assert!(slots.take(b, 4).is_some(), "slots come back when connections close");
    }
}
