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
    Audit {
        #[arg(long)]
        json: bool,
    },
    /// Print this bank's public identity (give it to wallets).
    PublicKey,
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
        #[arg(long)]
        json: bool,
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
    List {
        #[arg(long)]
        json: bool,
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
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("payme-bank: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Some(store) = cli.store.clone() {
        admin::set_store_flag(store);
    }
    let dir = bank_daemon::data_dir(cli.data_dir.unwrap_or_else(|| payme_node::config::default_data_dir("payme-bank")));
    match cli.command {
        Command::Init { bank_id, public_addr, listen, rsa_bits, passphrase_file } => {
            let pass = read_secret(passphrase_file.as_deref(), "PAYME_BANK_PASSPHRASE", "New bank key passphrase: ")?;
            if pass.len() < 8 {
                anyhow::bail!("the passphrase must be at least 8 characters");
            }
            let opts = InitOptions { bank_id, public_addr, listen, rsa_bits, kdf: payme_node::keys::kdf_params() };
            let public = admin::init(&dir, &pass, &opts)?;
            println!("created bank {} in {}", public.name, dir.root.display());
            println!("public key: {} (fingerprint {})", dir.public().display(), public.fingerprint());
        }
        Command::Account(cmd) => account(&dir, cmd)?,
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
            };
            let mut cfg = Config::load(&dir.config())?;
            cfg.peers.push(peer.clone());
            cfg.validate()?;
            pmtp_proto::keyfile::fs::append_atomic(&dir.config(), Config::peer_section(&peer)?.as_bytes())?;
            println!("peer {} added; restart `payme-bank serve` to use it", peer.id);
        }
        Command::Clearing { passphrase_file, json } => {
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
                            "net": p.net().map(|n| n.to_string()), "agrees": p.agrees(), "error": p.error})
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
            println!(
                "bank database copied to {}; the copy checks: {} serials ({}) in circulation, audit holds",
                file.display(),
                report.circulation.count,
                report.circulation.value
            );
        }
        Command::Audit { json } => {
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
                        "total_balances": report.total_balances.to_string(),
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
        Command::PublicKey => {
            let text =
                std::fs::read_to_string(dir.public()).with_context(|| format!("no bank in {}", dir.root.display()))?;
            print!("{text}");
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

fn account(dir: &DataDir, cmd: AccountCommand) -> anyhow::Result<()> {
    match cmd {
        AccountCommand::Open { name, public_key, password_file } => {
            let pw = read_secret(password_file.as_deref(), "PAYME_ACCOUNT_PASSWORD", "Account password: ")?;
            let id = admin::account_open(dir, &name, &public_key, &pw)?;
            println!("{id}");
        }
        AccountCommand::List { json } => {
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
        AccountCommand::Credit { id, amount, memo } => {
            let b = admin::account_adjust(dir, AccountId(id), amount, true, &memo)?;
            println!("account {id} credited {amount}; balance {b}");
        }
        AccountCommand::Debit { id, amount, memo } => {
            let b = admin::account_adjust(dir, AccountId(id), amount, false, &memo)?;
            println!("account {id} debited {amount}; balance {b}");
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
        let (bank, writer_thread, _lock) =
            admin::open_bank(dir, cfg, passphrase, std::sync::Arc::new(pmtp_client::clock::SystemClock))?;
        tracing::info!(addr = %local, bank = %bank.bank_id, "serving");
        // Tests and scripts read this line to learn the port when listening on port 0.
        println!("payme-bank listening on {local}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        bank_daemon::server::serve(bank, listener, shutdown).await;
        // The last Bank handle is gone once serve returns; the writer drains and stops.
        tokio::task::spawn_blocking(move || writer_thread.join()).await?;
        tracing::info!("stopped");
        Ok(())
    })
}
