//! # payme-bank
//!
//! The bank daemon: mints coins, keeps the serials in circulation, accounts and a ledger,
//! and serves withdraw_coins, deposit_coins, exchange_coins and bank_statement over PMTP.
//!
//! - [`store`]: durable state behind a transaction trait (SQLite by default).
//! - [`writer`]: the single database-writer thread with group commit, read connections,
//!   and the CPU pool for RSA, X25519 and Argon2.
//! - [`handlers`]: one file per message type.
//! - [`server`]: the per-connection loop, deadlines, background rounds, graceful shutdown
//!   (the accept loop and connection limits are `payme_node::net`).
//! - [`admin`]: `init`, accounts, `audit`, `clearing`.
//! - [`clearing`]: deposits of peer banks' coins, through `pmtp_client` to the peer.
//!
//! Shared daemon plumbing (data directory and its lock, config loading, signals, logs,
//! secrets, SQLite opening) is in `payme-node`; the PMTP client is `pmtp-client`.

#![forbid(unsafe_code)]

pub mod acks;
pub mod admin;
pub mod clearing;
pub mod config;
pub mod handlers;
pub mod server;
pub mod store;
pub mod writer;

use handlers::Refuse;
pub use payme_node::DataDir;
use pmtp_client::clock::{Clock, SystemClock};
use pmtp_client::entropy::{Entropy, EntropyRng, OsEntropy};
use pmtp_proto::keys::{Identity, PublicIdentity, Signable, Signed};
use pmtp_proto::text::{BankId, HostPort};
use pmtp_proto::{AccountId, Nonce, NonceChecker, ReasonCode};
use serde::de::DeserializeOwned;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use store::AccountRow;

/// A bank's data directory: `config.toml`, `bank.key`, `bank.pub`, `bank.db`, `serve.lock`.
pub fn data_dir(root: impl Into<PathBuf>) -> DataDir {
    DataDir::new(root, "bank")
}

/// Everything a running bank shares between connections.
pub struct Bank {
    pub config: config::Config,
    pub identity: Identity,
    /// Signing keys this bank has replaced (`payme-bank key rotate`): coins minted under
    /// them are accepted until they expire. New coins and every answer use `identity`.
    pub retired: Vec<pmtp_proto::keys::VerifyingKey>,
    pub bank_id: BankId,
    pub public_addr: HostPort,
    pub nonces: Mutex<NonceChecker>,
    pub writer: writer::Writer,
    pub readers: Arc<writer::Readers>,
    /// Accounts whose password was verified with Argon2 since start, by a keyed digest of
    /// (account, stored hash, password). Lets a right password skip the deliberately slow
    /// Argon2 on later withdrawals; a wrong one still pays it in full and counts toward
    /// back-off. Memory only: the key is random per process.
    password_cache: dashmap::DashMap<AccountId, [u8; 32]>,
    password_cache_key: [u8; 32],
    /// Peer banks, by bank id: whose coins this bank takes in deposits and clears.
    pub peers: std::collections::HashMap<String, clearing::Peer>,
    /// Clearings whose peer deposit is in progress (the resolver leaves them alone).
    pub clearing_in_flight: Mutex<std::collections::HashSet<[u8; 16]>>,
    /// Account names and parsed owner keys, which never change once an account is open:
    /// deposits and statements skip a database read and a key parse.
    owners: dashmap::DashMap<AccountId, (String, Arc<pmtp_proto::keys::PeerKeys>)>,
    /// Signs deposit acknowledgements in batches.
    pub acks: acks::AckSigner,
    /// Serials handed in by exchanges being signed for now ([`handlers::exchange_coins`]):
    /// one coin sent in many concurrent exchanges gets one signature, not one each.
    pub exchanging: dashmap::DashSet<pmtp_proto::Serial>,
    /// Coins issued with their bodies stored unsigned, signed since: written back by the
    /// background round ([`handlers::write_back_signed`]) so a retry reads them.
    pub signed_back: Mutex<Vec<handlers::SignedBack>>,
    /// Where handlers, purges and clearing get the time: the system clock, or one a test
    /// moves ([`Bank::with_clock`]).
    pub clock: Arc<dyn Clock>,
    /// Where serials, nonces and session keys get their randomness: the OS, or a seeded
    /// source a test predicts ([`Bank::with_entropy`]).
    pub entropy: Arc<dyn Entropy>,
}

impl Bank {
    pub fn new(
        config: config::Config,
        identity: Identity,
        writer: writer::Writer,
        readers: writer::Readers,
    ) -> Result<Bank, config::ConfigError> {
        config.validate()?;
        let bank_id = BankId::new(config.bank_id.clone()).map_err(|e| config::ConfigError::Invalid(e.to_string()))?;
        let public_addr =
            HostPort::new(config.public_addr.clone()).map_err(|e| config::ConfigError::Invalid(e.to_string()))?;
        let nonces = config.limits.net.nonce_checker();
        let mut peers = std::collections::HashMap::new();
        for p in &config.peers {
            let public = PublicIdentity::from_text(&p.public_key)
                .map_err(|e| config::ConfigError::Invalid(format!("peer {}: {e}", p.id)))?;
            let client = pmtp_client::BankClient::new(p.addr.clone(), &public)
                .and_then(|c| c.with_retired(&p.retired_public_keys))
                .map_err(|e| config::ConfigError::Invalid(format!("peer {}: {e}", p.id)))?;
            peers.insert(
                p.id.clone(),
                clearing::Peer {
                    client,
                    account: AccountId(p.account),
                    account_name: p.account_name.clone(),
                    local_account: p.local_account.map(AccountId),
                },
            );
        }
        let ack_key = identity
            .signing
            .to_pkcs8_der()
            .and_then(|der| pmtp_proto::keys::SigningKey::from_pkcs8_der(&der))
            .map_err(|e| config::ConfigError::Invalid(format!("bank key: {e}")))?;
        let acks = acks::AckSigner::start(ack_key, config.limits.commit_batch);
        Ok(Bank {
            acks,
            exchanging: dashmap::DashSet::new(),
            signed_back: Mutex::new(Vec::new()),
            owners: dashmap::DashMap::new(),
            peers,
            clearing_in_flight: Mutex::new(std::collections::HashSet::new()),
            config,
            identity,
            retired: Vec::new(),
            bank_id,
            public_addr,
            nonces: Mutex::new(nonces),
            writer,
            readers: Arc::new(readers),
            password_cache: dashmap::DashMap::new(),
            password_cache_key: pmtp_proto::rng::bytes(&mut pmtp_proto::rng::os()),
            clock: Arc::new(SystemClock),
            entropy: Arc::new(OsEntropy),
        })
    }

    /// This bank, reading the time from `clock`, and so do its clients of peer banks.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        for p in self.peers.values_mut() {
            p.client.clock = clock.clone();
        }
        self.clock = clock;
        self
    }

    /// This bank, drawing its randomness from `entropy`, and so do its clients of peer banks.
    pub fn with_entropy(mut self, entropy: Arc<dyn Entropy>) -> Self {
        for p in self.peers.values_mut() {
            p.client.entropy = entropy.clone();
        }
        self.entropy = entropy;
        self
    }

    /// The keys a coin of this bank may be signed with: the current one, then the retired.
    pub fn coin_keys(&self) -> impl Iterator<Item = &pmtp_proto::keys::VerifyingKey> {
        std::iter::once(self.identity.signing.verifying_key()).chain(&self.retired)
    }

    /// A generator over this bank's [`Entropy`].
    pub fn rng(&self) -> EntropyRng<'_> {
        pmtp_client::entropy::rng(&*self.entropy)
    }

    /// Until when a nonce must be remembered durably: after that the window refuses it.
    pub fn nonce_expiry(&self, nonce: &Nonce) -> u64 {
        nonce.timestamp.saturating_add(self.config.limits.net.nonce_window_secs)
    }

    /// The address this bank's reply nonces name.
    pub fn local_ip(&self, peer: IpAddr) -> IpAddr {
        let ip = self.config.listen.ip();
        if ip.is_unspecified() && peer.is_loopback() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            ip
        }
    }

    /// Finds the account, verifies the owner's signature on `req`, then checks the name.
    /// Returns the account as stored (read now, except for the cached name and key).
    pub async fn authenticate<T>(
        self: &Arc<Self>,
        id: &AccountId,
        name: &str,
        req: Arc<Signed<T>>,
        _now: u64,
    ) -> Result<AccountId, Refuse>
    where
        T: Signable + DeserializeOwned + Send + Sync + 'static,
    {
        let id = *id;
        let (owner_name, keys) = match self.owners.get(&id).map(|e| e.value().clone()) {
            Some(cached) => cached,
            None => {
                let account =
                    self.readers.read(move |tx| tx.account(id)).await?.ok_or_else(|| {
                        Refuse::new(ReasonCode::UNKNOWN_ACCOUNT, format!("no account {id} at this bank"))
                    })?;
                let owner: PublicIdentity = bincode::deserialize(&account.owner_identity)
                    .map_err(|_| Refuse::new(ReasonCode::INTERNAL, "stored owner key is damaged"))?;
                let keys =
                    owner.parse().map_err(|_| Refuse::new(ReasonCode::INTERNAL, "stored owner key is damaged"))?;
                let entry = (account.name.clone(), Arc::new(keys));
                self.owners.insert(id, entry.clone());
                entry
            }
        };
        // The signature first, and one refusal for a wrong key and a wrong name: whoever
        // does not hold the owner's key learns nothing about the name on the account.
        let ok = writer::cpu(move || req.verify(&keys.verifying).is_ok()).await?;
        if !ok || owner_name != name {
            return Err(Refuse::new(
                ReasonCode::BAD_SIGNATURE,
                format!("the request is not signed by the owner of account {id} under the name given"),
            ));
        }
        Ok(id)
    }

    /// The account as stored now.
    pub async fn account(self: &Arc<Self>, id: AccountId) -> Result<AccountRow, Refuse> {
        self.readers
            .read(move |tx| tx.account(id))
            .await?
            .ok_or_else(|| Refuse::new(ReasonCode::UNKNOWN_ACCOUNT, format!("no account {id} at this bank")))
    }

    /// Checks the account password, with back-off: after `password_failures_free` wrong
    /// passwords, each further one locks the account for a doubling delay (at most 15
    /// minutes); a right password resets the count (in the withdrawal's transaction).
    pub async fn check_password(
        self: &Arc<Self>,
        account: &AccountRow,
        password: &str,
        now: u64,
    ) -> Result<(), Refuse> {
        if account.locked_until > now {
            return Err(Refuse::new(
                ReasonCode::TOO_MANY_ATTEMPTS,
                format!("too many wrong passwords; try again in {} s", account.locked_until - now),
            ));
        }
        let tag = {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            h.update(self.password_cache_key);
            h.update(account.id.0.to_le_bytes());
            h.update((account.password_hash.len() as u64).to_le_bytes());
            h.update(account.password_hash.as_bytes());
            h.update(password.as_bytes());
            <[u8; 32]>::from(h.finalize())
        };
        if self.password_cache.get(&account.id).is_some_and(|t| *t == tag) {
            return Ok(());
        }
        if handlers::withdraw_coins::verify_password(account.password_hash.clone(), password.to_owned()).await? {
            self.password_cache.insert(account.id, tag);
            return Ok(());
        }
        let (id, free) = (account.id, self.config.limits.password_failures_free);
        let locked = self
            .writer
            .run(move |tx| {
                let failures = tx.account(id)?.map(|a| a.failed_attempts).unwrap_or(0).saturating_add(1);
                let locked_until = if failures > free {
                    let delay = 1u64 << (failures - free).min(10);
                    now + delay.min(900)
                } else {
                    0
                };
                tx.set_login_failures(id, failures, locked_until)?;
                Ok::<u64, store::StoreError>(locked_until)
            })
            .await??;
        tracing::warn!(account = %id, "wrong password");
        let text = if locked > now {
            format!("wrong password; the account is locked for {} s", locked - now)
        } else {
            "wrong password".to_owned()
        };
        Err(Refuse::new(ReasonCode::WRONG_PASSWORD, text))
    }

    /// One purge round: expired serials (counted for the audit) and expired nonces, in
    /// bounded batches, each its own transaction. Returns how many serials were purged.
    pub async fn purge_expired(&self, now: u64) -> Result<u64, Refuse> {
        let batch = self.config.limits.purge_batch;
        let retention = self.config.limits.request_retention_secs;
        let mut total = 0u64;
        // Bounded: at most 1000 batches per round; the next round continues.
        for _ in 0..1000 {
            let (serials, nonces) = self
                .writer
                .run(move |tx| {
                    let purged = tx.expire(now, batch)?;
                    let nonces = tx.purge_nonces(now, batch)?;
                    let old = tx.purge_requests(now.saturating_sub(retention), batch)?;
                    Ok::<_, store::StoreError>((purged.count, nonces.max(old)))
                })
                .await??;
            total += serials;
            if (serials as usize) < batch && (nonces as usize) < batch {
                break;
            }
        }
        if total > 0 {
            tracing::info!(serials = total, "purged expired coins");
        }
        Ok(total)
    }
}
