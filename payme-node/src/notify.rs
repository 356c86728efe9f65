//! Telling a service manager how the daemon is doing: systemd's `sd_notify` protocol
//! (`Type=notify` units). systemd names a datagram socket in `NOTIFY_SOCKET`; the daemon
//! sends `READY=1` once it answers requests and `STOPPING=1` when it begins to stop.
//! Without `NOTIFY_SOCKET` (a terminal, a test, another supervisor) nothing is sent.

use std::io;

/// The variable systemd sets for a `Type=notify` service.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Listening, and the database opened and checked: requests are answered from now on.
pub fn ready() {
    send("READY=1\n");
}

/// Stopping: in-flight requests finish, no new ones are taken.
pub fn stopping() {
    send("STOPPING=1\n");
}

fn send(state: &str) {
    if let Err(e) = try_send(state) {
        tracing::warn!(error = %e, "could not notify the service manager");
    }
}

/// Sends `state` to the socket `NOTIFY_SOCKET` names: a path, or `@name` for an abstract
/// socket. Ok when the variable is unset.
pub fn try_send(state: &str) -> io::Result<()> {
    let Some(target) = std::env::var_os(NOTIFY_SOCKET) else { return Ok(()) };
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    let bytes = target.as_encoded_bytes();
    let sent = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?
        }
        None => socket.send_to(state.as_bytes(), &target)?,
    };
    if sent != state.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short write to NOTIFY_SOCKET"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ready_reaches_the_socket_that_notify_socket_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        listener.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        // The only test in this crate that sets the variable, and it is read in this call.
        std::env::set_var(super::NOTIFY_SOCKET, &path);
        super::try_send("READY=1\n").unwrap();
        std::env::remove_var(super::NOTIFY_SOCKET);
        let mut buf = [0; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
        super::try_send("READY=1\n").unwrap();
        listener.set_nonblocking(true).unwrap();
        assert!(listener.recv(&mut buf).is_err(), "nothing is sent without NOTIFY_SOCKET");
    }
}
