//! A desktop notification when a payment request starts waiting for the person:
//! freedesktop notifications over the session D-Bus (notify-rust, on zbus).
//!
//! Where there is no session bus (a server, CI), or no notification service on it, nothing
//! is shown and nothing else changes: the request waits on the pending list and in the
//! wallet window as always. The desktop is never waited for: each notification is sent
//! from a thread of its own, at most [`MAX_IN_FLIGHT`] at once (a flood of requests
//! cannot pile up threads behind a bus that does not answer), and a failure is logged at
//! debug level only. What a shop wrote is escaped for the notification's markup.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Notifications being sent at once; more are skipped.
pub const MAX_IN_FLIGHT: usize = 4;

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Whether a session bus is there to try: `DBUS_SESSION_BUS_ADDRESS`, or the user's bus
/// socket in `XDG_RUNTIME_DIR` (where zbus looks without the variable).
fn session_bus_present() -> bool {
    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some_and(|a| !a.is_empty()) {
        return true;
    }
    std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| std::path::Path::new(&d).join("bus").exists())
}

/// Escapes text for the body markup notification servers may read (`<b>`, `<a>`, ...).
fn markup_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Announces a payment request: `merchant` asks `amount` (as the person reads it) for
/// `description`, from `from` (a shop's origin, or its wallet's address).
pub fn request_waiting(merchant: &str, amount: &str, description: &str, from: &str) {
    if !session_bus_present() {
        return;
    }
    if IN_FLIGHT.fetch_add(1, Ordering::SeqCst) >= MAX_IN_FLIGHT {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        tracing::debug!("desktop notification skipped: others are still being sent");
        return;
    }
    let summary = "payme: a payment request".to_owned();
    let body = markup_escape(&format!(
        "{merchant} asks for {amount}: {description}\n{from}\nApprove or refuse in your wallet window (payme-wallet ui)."
    ));
    let sent = std::thread::Builder::new().name("payme-notify".into()).spawn(move || {
        let shown = notify_rust::Notification::new()
            .appname("payme wallet")
            .summary(&summary)
            .body(&body)
            .icon("dialog-question")
            .show();
        if let Err(e) = shown {
            tracing::debug!(error = %e, "no desktop notification (no notification service?)");
        }
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    });
    if sent.is_err() {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shops_text_cannot_carry_markup() {
        assert_eq!(markup_escape("<b>Bob</b> & co"), "&lt;b&gt;Bob&lt;/b&gt; &amp; co");
    }
}
