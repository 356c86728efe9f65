//! The shutdown future a daemon passes into `serve`.

use std::future::Future;

/// Installs the SIGINT and SIGTERM handlers now (before the daemon says it is ready, so
/// a signal sent right after that line is never missed) and returns the future that
/// completes on either.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}
