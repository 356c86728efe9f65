//! # payme-node
//!
//! The plumbing every payme daemon (bank and wallet) shares, so each daemon's crate holds
//! only what makes it a bank or a wallet:
//!
//! - [`datadir`]: the data directory's file names and the lock that allows one `serve`.
//! - [`keys`]: the keys `init` makes (fresh; a pre-generated pool in test builds).
//! - [`config`]: default data directories and TOML config loading; the nonce settings.
//! - [`net`]: the connection-limited accept loop, per-source counting, the plain refusal
//!   for a frame the codec cannot read.
//! - [`shutdown`]: the SIGINT/SIGTERM future passed into `serve`.
//! - [`logging`]: `tracing` to stderr, filtered by `RUST_LOG`.
//! - [`secret`]: passphrases and passwords from a file, the environment or a prompt.
//! - [`sqlite`]: opening a database durably, numbered migrations, and errors that keep
//!   SQLite's kind (constraint, busy, corrupt, I/O).
//!
//! May touch: the file system (data directory, config, secrets), the process's signals
//! and open-file limit, TCP listeners. Holds no policy of either daemon: limits come in
//! as parameters.

#![forbid(unsafe_code)]

pub mod config;
pub mod datadir;
pub mod keys;
pub mod logging;
pub mod net;
pub mod notify;
pub mod secret;
pub mod shutdown;
pub mod sqlite;
pub mod users;

pub use datadir::DataDir;
