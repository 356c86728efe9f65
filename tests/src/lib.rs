//! Harnesses for the end-to-end tests: start the real `payme-bank` and `payme-wallet`
//! binaries on loopback addresses with port 0, in temporary directories, and stop them.

pub mod bank_harness;
pub mod browser_harness;
pub mod fake_shop;
pub mod inband;
pub mod load;
pub mod pg;
pub mod replay;
pub mod wallet_harness;
pub mod web_harness;
