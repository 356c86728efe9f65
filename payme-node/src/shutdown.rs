//! The shutdown future a daemon passes into `serve`.

use std::future::Future;

/// Installs the SIGINT and SIGTERM handlers now (before the daemon says it is ready, so
/// a signal sent right after that line is never missed) and returns the future that
/// completes on either. SIGHUP (a closed terminal, `systemctl reload`, a log rotator) is
/// caught too and never stops the daemon: it is logged, and settings still take a
/// restart, which the log line says. When it completes, a service manager is told the
/// daemon is stopping.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    Ok(async move {
        loop {
            tokio::select! {
                _ = int.recv() => break,
                _ = term.recv() => break,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP ignored: the daemon keeps running; restart it to apply a changed config.toml");
                }
            }
        }
        crate::notify::stopping();
    })
}
