//! `payme-bank`: parses the command line and calls into the library.

use anyhow::Context;
use bank_daemon::admin::{self, InitOptions};
use bank_daemon::config::Config;
use bank_daemon::DataDir;
use clap::{Parser, Subcommand};
use payme_node::secret::read_secret;
use pmtp_proto::{AccountId, Amount};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "payme-bank", version, about = "The payme bank: mints coins and keeps the serials in circulation")]
struct Cli {
    /// The bank's data directory (keys, config.toml, database).
    #[arg(long, global = true, env = "PAYME_BANK_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Print results as JSON (for scripts); errors too.
    #[arg(long, global = true)]
    json: bool,
    /// The bank's store, overriding `store` in config.toml: a postgres:// URL (several
    /// nodes on one database, docs/BANK.md) or an SQLite file (default: DATA_DIR/bank.db).
    #[arg(long, global = true, env = "PAYME_BANK_STORE")]
    store: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a bank: keys under a passphrase, a commented config file, the database.
    Init {
        /// This bank's identifier, written into every coin.
        #[arg(long, default_value = "bank")]
        bank_id: String,
        /// host:port where wallets reach this bank (written into coins).
        #[arg(long, default_value = "127.0.0.1:8000")]
        public_addr: String,
        /// Address `serve` listens on.
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: SocketAddr,
        /// RSA key size: 2048 (default), 3072 or 4096.
        #[arg(long, default_value_t = 2048)]
        rsa_bits: usize,
        /// Read the key passphrase from this file (else PAYME_BANK_PASSPHRASE, else a prompt).
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Account administration.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Check minted - redeemed - expired = circulating, and that ledgers sum to balances.
    Audit,
    /// Print this bank's public identity (give it to wallets).
    PublicKey,
    /// The bank's signing key.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Wait until `serve` accepts connections at its listen address (after `serve &`);
    /// exits 1 if it does not within SECS.
    Wait {
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        timeout: u64,
    },
    /// Copy the bank's database to FILE, also while `serve` runs (SQLite's online backup:
    /// one consistent snapshot), and check the copy (integrity and audit).
    Backup {
        /// Where to write the copy (must not exist yet).
        file: PathBuf,
    },
    /// Peer banks this bank clears with.
    #[command(subcommand)]
    Peer(PeerCommand),
    /// This bank's net position with every peer, from its books and the peers' statements;
    /// exits non-zero when the two sides disagree.
    Clearing {
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Serve PMTP requests until SIGINT or SIGTERM.
    Serve {
        /// Listen address (overrides config.toml).
        #[arg(long, env = "PAYME_BANK_LISTEN")]
        listen: Option<SocketAddr>,
        /// Read the key passphrase from this file (else PAYME_BANK_PASSPHRASE, else a prompt).
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        /// Use this config file instead of DATA_DIR/config.toml.
        #[arg(long, env = "PAYME_BANK_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PeerCommand {
    /// Add a peer bank to config.toml (restart `serve` to use it).
    Add {
        #[arg(long)]
        id: String,
        #[arg(long)]
        addr: String,
        /// File with the peer's public identity (`payme-bank public-key` there).
        #[arg(long)]
        public_key: PathBuf,
        /// This bank's account at the peer, and the name on it.
        #[arg(long)]
        account: u64,
        #[arg(long)]
        account_name: String,
        /// The peer's account at this bank.
        #[arg(long)]
        local_account: Option<u64>,
    },
    /// Change a peer's address, key or accounts in config.toml (restart `serve` to use it).
    Set {
        #[arg(long)]
        id: String,
        #[arg(long)]
        addr: Option<String>,
        /// File with the peer's new public identity.
        #[arg(long)]
        public_key: Option<PathBuf>,
        #[arg(long)]
        account: Option<u64>,
        #[arg(long)]
        account_name: Option<String>,
        #[arg(long)]
        local_account: Option<u64>,
    },
    /// Remove a peer from config.toml; refused while deposits wait for its answer.
    Remove {
        #[arg(long)]
        id: String,
    },
    /// The peers in config.toml.
    List,
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Sign new coins with a fresh key, while coins under the current one stay good until
    /// they expire (run while the bank is stopped; give wallets and peers the new bank.pub).
    Rotate {
        #[arg(long, default_value_t = 2048)]
        rsa_bits: usize,
        /// Read the key passphrase from this file (else PAYME_BANK_PASSPHRASE, else a prompt).
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AccountCommand {
    /// Open an account; prints its id.
    Open {
        #[arg(long)]
        name: String,
        /// The owner's public identity file (from `payme-wallet init`).
        #[arg(long)]
        public_key: PathBuf,
        /// Read the password from this file (else PAYME_ACCOUNT_PASSWORD, else a prompt).
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// List accounts.
    List,
    /// Set an account's password (and lift a lock from wrong passwords); works while
    /// `serve` runs.
    Password {
        id: u64,
        /// Read the new password from this file (else PAYME_ACCOUNT_PASSWORD, else a prompt).
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Record money paid in at the counter.
    Credit {
        id: u64,
        amount: Amount,
        #[arg(long, default_value = "paid in at the counter")]
        memo: String,
    },
    /// Record money paid out at the counter.
    Debit {
        id: u64,
        amount: Amount,
        #[arg(long, default_value = "paid out at the counter")]
        memo: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    payme_node::logging::init_tracing();
    let json = cli.json;
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if json {
                println!("{}", serde_json::json!({"ok": false, "error": format!("{e:#}")}));
            } else {
                eprintln!("payme-bank: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Prints a command's outcome: `human` for a person, `value` under --json.
fn say(json: bool, human: impl std::fmt::Display, value: serde_json::Value) {
    if json {
        println!("{value}");
    } else {
        println!("{human}");
    }
}

/// A sum of money as a JSON number (a string only past u64, which no real total reaches).
fn money(v: impl TryInto<u64> + ToString + Copy) -> serde_json::Value {
    match v.try_into() {
        Ok(n) => serde_json::Value::from(n),
        Err(_) => serde_json::Value::from(v.to_string()),
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Some(store) = cli.store.clone() {
        admin::set_store_flag(store);
    }
    let dir = bank_daemon::data_dir(cli.data_dir.unwrap_or_else(|| payme_node::config::default_data_dir("payme-bank")));
    let json = cli.json;
    match cli.command {
        Command::Init { bank_id, public_addr, listen, rsa_bits, passphrase_file } => {
            let pass = read_secret(passphrase_file.as_deref(), "PAYME_BANK_PASSPHRASE", "New bank key passphrase: ")?;
            if pass.len() < 8 {
                anyhow::bail!("the passphrase must be at least 8 characters");
            }
            let opts = InitOptions { bank_id, public_addr, listen, rsa_bits, kdf: payme_node::keys::kdf_params() };
            let public = admin::init(&dir, &pass, &opts)?;
            let human = format!(
                "created bank {} in {}\npublic key: {} (fingerprint {})",
                public.name,
                dir.root.display(),
                dir.public().display(),
                public.fingerprint()
            );
            let v = serde_json::json!({"bank": public.name.as_str(), "data_dir": dir.root.display().to_string(),
                "public_key_file": dir.public().display().to_string(), "fingerprint": public.fingerprint().to_string()});
            say(json, human, v);
        }
        Command::Account(cmd) => account(&dir, cmd, json)?,
        Command::Peer(PeerCommand::Add { id, addr, public_key, account, account_name, local_account }) => {
            let text = std::fs::read_to_string(&public_key)
                .with_context(|| format!("cannot read {}", public_key.display()))?;
            let peer = bank_daemon::config::PeerBank {
                id,
                addr,
                public_key: text.trim().to_owned(),
                account,
                account_name,
                local_account,
                retired_public_keys: Vec::new(),
            };
            let mut cfg = Config::load(&dir.config())?;
            cfg.peers.push(peer.clone());
            cfg.validate()?;
            pmtp_proto::keyfile::fs::append_atomic(&dir.config(), Config::peer_section(&peer)?.as_bytes())?;
            let human = format!("peer {} added; restart `payme-bank serve` to use it", peer.id);
            say(json, human, serde_json::json!({"peer": peer.id, "added": true}));
        }
        Command::Peer(PeerCommand::Set { id, addr, public_key, account, account_name, local_account }) => {
            let mut cfg = Config::load(&dir.config())?;
            let Some(p) = cfg.peers.iter_mut().find(|p| p.id == id) else { anyhow::bail!(no_peer(&cfg, &id)) };
            if let Some(a) = addr {
                p.addr = a;
            }
            if let Some(f) = public_key {
                let text = std::fs::read_to_string(&f).with_context(|| format!("cannot read {}", f.display()))?;
                let old = std::mem::replace(&mut p.public_key, text.trim().to_owned());
                // The peer replaced its key: coins under the old one stay good until they expire.
                if old != p.public_key && !p.retired_public_keys.contains(&old) {
                    p.retired_public_keys.push(old);
                }
            }
            if let Some(a) = account {
                p.account = a;
            }
            if let Some(n) = account_name {
                p.account_name = n;
            }
            if local_account.is_some() {
                p.local_account = local_account;
            }
            let p = p.clone();
            cfg.validate()?;
            payme_node::config::rewrite_entry(&dir.config(), &cfg, "peer", &id, Some(&p))?;
            let human = format!("peer {} changed; restart `payme-bank serve` to use it", p.id);
            say(json, human, serde_json::json!({"peer": p.id, "changed": true}));
        }
        Command::Peer(PeerCommand::Remove { id }) => {
            // Not while serving: the running bank could take that peer's coins after the
            // check below, and their deposits would then wait for a peer it no longer knows.
            let _lock = match dir.lock() {
                Err(payme_node::datadir::LockError::InUse { .. }) => {
                    anyhow::bail!("stop `payme-bank serve` first: a running bank may be clearing with this peer")
                }
                other => other?,
            };
            let mut cfg = Config::load(&dir.config())?;
            if !cfg.peers.iter().any(|p| p.id == id) {
                anyhow::bail!(no_peer(&cfg, &id));
            }
            let waiting = admin::pending_clearings_with(&dir, &id)?;
            if waiting > 0 {
                anyhow::bail!(
                    "{waiting} deposits still wait for peer {}'s answer; remove it once `payme-bank clearing` shows none pending",
                    pmtp_proto::text::escape_control(&id)
                );
            }
            cfg.peers.retain(|p| p.id != id);
            cfg.validate()?;
            payme_node::config::rewrite_entry(
                &dir.config(),
                &cfg,
                "peer",
                &id,
                None::<&bank_daemon::config::PeerBank>,
            )?;
            let human = format!(
                "peer {} removed; restart `payme-bank serve` to apply it",
                pmtp_proto::text::escape_control(&id)
            );
            say(json, human, serde_json::json!({"peer": id, "removed": true}));
        }
        Command::Peer(PeerCommand::List) => {
            let cfg = Config::load(&dir.config())?;
            let lines: Vec<String> = cfg
                .peers
                .iter()
                .map(|p| {
                    format!(
                        "{}  {}  our account there {} ({})",
                        pmtp_proto::text::escape_control(&p.id),
                        pmtp_proto::text::escape_control(&p.addr),
                        p.account,
                        pmtp_proto::text::escape_control(&p.account_name)
                    )
                })
                .collect();
            let human = if lines.is_empty() { "no peers".to_owned() } else { lines.join("\n") };
            let v: Vec<_> = cfg
                .peers
                .iter()
                .map(|p| {
                    serde_json::json!({"id": p.id, "addr": p.addr, "account": p.account,
                    "account_name": p.account_name, "local_account": p.local_account})
                })
                .collect();
            say(json, human, serde_json::Value::Array(v));
        }
        Command::Clearing { passphrase_file } => {
            let cfg = Config::load(&dir.config())?;
            let pass = read_secret(passphrase_file.as_deref(), "PAYME_BANK_PASSPHRASE", "Bank key passphrase: ")?;
            let positions = admin::clearing(&dir, &cfg, &pass)?;
            let agree = positions.iter().all(|p| p.agrees());
            if json {
                let v: Vec<_> = positions
                    .iter()
                    .map(|p| {
                        serde_json::json!({"peer": p.peer, "cleared_there": p.cleared_there.minor_units(),
                            "balance_there": p.balance_there.map(|b| b.minor_units()),
                            "peer_balance_here": p.peer_balance_here.minor_units(),
                            "net": p.net().map(|n| i64::try_from(n).map(serde_json::Value::from).unwrap_or_else(|_| n.to_string().into())), "agrees": p.agrees(), "error": p.error})
                    })
                    .collect();
                println!("{}", serde_json::json!({"agrees": agree, "peers": v}));
            } else {
                for p in &positions {
                    match (p.balance_there, p.net()) {
                        (Some(there), Some(net)) => println!(
                            "peer {}: our books say we cleared {} there; their statement: {}{}; they hold {} here; net {} {}",
                            p.peer, p.cleared_there, there,
                            if p.agrees() { " (agrees)" } else { " (DISAGREES)" },
                            p.peer_balance_here, net.abs(),
                            if net >= 0 { "owed to us" } else { "owed by us" }
                        ),
                        _ => println!("peer {}: no statement: {}", p.peer, p.error.clone().unwrap_or_default()),
                    }
                }
            }
            if !agree {
                return Ok(ExitCode::from(3));
            }
        }
        Command::Backup { file } => {
            let report = admin::backup(&dir, &file)?;
            let human = format!(
                "bank database copied to {}; the copy checks: {} serials ({}) in circulation, audit holds",
                file.display(),
                report.circulation.count,
                report.circulation.value
            );
            let v = serde_json::json!({"file": file.display().to_string(), "circulating": report.circulation.value.minor_units(),
                "circulating_coins": report.circulation.count, "audit_holds": true});
            say(json, human, v);
        }
        Command::Audit => {
            let report = admin::audit(&dir)?;
            if json {
                let c = &report.counters;
                println!(
                    "{}",
                    serde_json::json!({
                        "holds": report.holds(),
                        "minted": c.minted_value.minor_units(), "minted_coins": c.minted_count,
                        "redeemed": c.redeemed_value.minor_units(), "redeemed_coins": c.redeemed_count,
                        "expired": c.expired_value.minor_units(), "expired_coins": c.expired_count,
                        "circulating": report.circulation.value.minor_units(), "circulating_coins": report.circulation.count,
                        "held_by_clearings": report.held.value.minor_units(), "held_coins": report.held.count,
                        "total_balances": money(report.total_balances),
                        "ledger_mismatches": report.ledger_mismatches.len(),
                    })
                );
            } else {
                print!("{}", report.describe());
            }
            if !report.holds() {
                return Ok(ExitCode::from(3));
            }
        }
        Command::Wait { timeout } => {
            let cfg = Config::load(&dir.config())?;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout);
            loop {
                match std::net::TcpStream::connect_timeout(&cfg.listen, std::time::Duration::from_secs(1)) {
                    Ok(_) => {
                        let human = format!("the bank is serving at {}", cfg.listen);
                        say(json, human, serde_json::json!({"serving": true, "listen": cfg.listen.to_string()}));
                        break;
                    }
                    Err(e) if std::time::Instant::now() >= deadline => {
                        anyhow::bail!("the bank does not answer at {} after {timeout} s: {e}", cfg.listen)
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
                }
            }
        }
        Command::Key(KeyCommand::Rotate { rsa_bits, passphrase_file }) => {
            let pass = read_secret(passphrase_file.as_deref(), "PAYME_BANK_PASSPHRASE", "Bank key passphrase: ")?;
            let (old, new_id, new) = admin::rotate_key(&dir, &pass, rsa_bits, payme_node::keys::kdf_params())?;
            let human = format!(
                "new signing key {} (fingerprint {}) in {}; the old key {} stays valid for its coins until they expire\n\
                 give wallets and peer banks the new {} (payme-wallet bank set --public-key, payme-bank peer set --public-key)",
                new_id,
                new.fingerprint(),
                dir.key().display(),
                old,
                dir.public().display()
            );
            let v = serde_json::json!({"new_key_id": new_id.to_string(), "retired_key_id": old.to_string(),
                "fingerprint": new.fingerprint().to_string(), "public_key_file": dir.public().display().to_string()});
            say(json, human, v);
        }
        Command::PublicKey => {
            let text =
                std::fs::read_to_string(dir.public()).with_context(|| format!("no bank in {}", dir.root.display()))?;
            say(json, text.trim_end(), serde_json::json!({"public_key": text.trim_end()}));
        }
        Command::Serve { listen, passphrase_file, config } => {
            let path = config.unwrap_or_else(|| dir.config());
            let mut cfg = Config::load(&path)?;
            if let Some(l) = listen {
                cfg.listen = l;
            }
            let pass = read_secret(passphrase_file.as_deref(), "PAYME_BANK_PASSPHRASE", "Bank key passphrase: ")?;
            serve(&dir, cfg, &pass)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// "no peer X" and the peers there are.
fn no_peer(cfg: &Config, id: &str) -> String {
    let ids: Vec<String> = cfg.peers.iter().map(|p| pmtp_proto::text::escape_control(&p.id)).collect();
    format!("no peer {} in config.toml (the peers: {})", pmtp_proto::text::escape_control(id), ids.join(", "))
}

fn account(dir: &DataDir, cmd: AccountCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        AccountCommand::Open { name, public_key, password_file } => {
            let pw = read_secret(password_file.as_deref(), "PAYME_ACCOUNT_PASSWORD", "Account password: ")?;
            let id = admin::account_open(dir, &name, &public_key, &pw)?;
            // The bare id, so `id=$(payme-bank account open ...)` works.
            say(json, id, serde_json::json!({"account": id.0, "name": name}));
        }
        AccountCommand::List => {
            let accounts = admin::account_list(dir)?;
            if json {
                let v: Vec<_> = accounts
                    .iter()
                    .map(|a| serde_json::json!({"id": a.id.0, "name": a.name, "balance": a.balance.minor_units()}))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!("{:>8}  {:>14}  name", "id", "balance");
                for a in accounts {
                    println!("{:>8}  {:>14}  {}", a.id, a.balance, pmtp_proto::text::escape_control(&a.name));
                }
            }
        }
        AccountCommand::Password { id, password_file } => {
            let pw = read_secret(password_file.as_deref(), "PAYME_ACCOUNT_PASSWORD", "New account password: ")?;
            admin::account_password(dir, AccountId(id), &pw)?;
            say(json, format!("account {id}: password set"), serde_json::json!({"account": id, "password_set": true}));
        }
        AccountCommand::Credit { id, amount, memo } => {
            let b = admin::account_adjust(dir, AccountId(id), amount, true, &memo)?;
            let v = serde_json::json!({"account": id, "credited": amount, "balance": b.minor_units()});
            say(json, format!("account {id} credited {amount}; balance {b}"), v);
        }
        AccountCommand::Debit { id, amount, memo } => {
            let b = admin::account_adjust(dir, AccountId(id), amount, false, &memo)?;
            let v = serde_json::json!({"account": id, "debited": amount, "balance": b.minor_units()});
            say(json, format!("account {id} debited {amount}; balance {b}"), v);
        }
    }
    Ok(())
}

fn serve(dir: &DataDir, cfg: Config, passphrase: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let shutdown = payme_node::shutdown::shutdown_signal()?;
        let mut cfg = cfg;
        let listen = cfg.listen;
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let local = listener.local_addr()?;
        // A public address with port 0 means "where we actually listen" (tests, ephemeral ports).
        if cfg.public_addr.ends_with(":0") {
            cfg.public_addr = local.to_string();
        }
        let (bank, writer_thread, _lock) = admin::open_bank(
            dir,
            cfg,
            passphrase,
            std::sync::Arc::new(pmtp_client::clock::SystemClock),
            std::sync::Arc::new(pmtp_client::entropy::OsEntropy),
        )?;
        tracing::info!(addr = %local, bank = %bank.bank_id, "serving");
        // Tests and scripts read this line to learn the port when listening on port 0.
        println!("payme-bank listening on {local}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        payme_node::notify::ready();
        bank_daemon::server::serve(bank, listener, shutdown).await;
        // The last Bank handle is gone once serve returns; the writer drains and stops.
        tokio::task::spawn_blocking(move || writer_thread.join()).await?;
        tracing::info!("stopped");
        Ok(())
    })
}
