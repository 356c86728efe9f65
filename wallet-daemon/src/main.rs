//! `payme-wallet`: parses the command line; the daemon and the client commands live in
//! the library.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use payme_node::secret::read_secret;
use pmtp_proto::keyfile;
use pmtp_proto::keys::PublicIdentity;
use pmtp_proto::text::Name;
use pmtp_proto::Amount;
use serde_json::Value;
use std::io::{ErrorKind, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use wallet_daemon::config::{BankConfig, Config};
use wallet_daemon::control::{self, Request};
use wallet_daemon::DataDir;

#[derive(Parser)]
#[command(name = "payme-wallet", version, about = "The payme wallet: holds coins, pays merchants and gets paid")]
struct Cli {
    /// The wallet's data directory (keys, config.toml, coins).
    #[arg(long, global = true, env = "PAYME_WALLET_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Print results as JSON (for scripts).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a wallet: keys under a passphrase, config.toml, the coin database.
    Init {
        /// Your name as merchants and banks see it.
        #[arg(long)]
        name: String,
        /// PMTP listen address for other wallets.
        #[arg(long, default_value = "127.0.0.1:8001")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 2048)]
        rsa_bits: usize,
        /// Read the passphrase from this file (else PAYME_WALLET_PASSPHRASE, else a prompt).
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Configure banks.
    #[command(subcommand)]
    Bank(BankCommand),
    /// Print this wallet's public identity (for a bank account).
    PublicKey,
    /// Wait until the wallet daemon answers (after `serve &`); exits 1 if it does not
    /// within SECS.
    Wait {
        #[arg(long, value_name = "SECS", default_value_t = 30)]
        timeout: u64,
    },
    /// Copy the wallet's database to FILE, also while `serve` runs (one consistent
    /// snapshot). With wallet.key, config.toml and your passphrase it restores the wallet;
    /// the coins in it stay encrypted under the wallet's key.
    Backup {
        /// Where to write the copy (must not exist yet).
        file: PathBuf,
    },
    /// Run the wallet: PMTP listener for merchants, and the control socket.
    Serve {
        #[arg(long, env = "PAYME_WALLET_LISTEN")]
        listen: Option<SocketAddr>,
        /// No PMTP listener (config `pmtp_listener = false`): serve the control socket only,
        /// for a buyer who pays in band over HTTP (`payme-wallet pay URL`).
        #[arg(long, conflicts_with = "listen")]
        no_listen: bool,
        /// Where the wallet window listens (a loopback address:port), or `none` for no
        /// window (config `[ui] listen`; a shop's wallet needs none).
        #[arg(long, env = "PAYME_WALLET_UI", value_name = "ADDR|none")]
        ui: Option<String>,
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Coins held, per bank and denomination.
    Balance,
    /// Withdraw AMOUNT (minor units) from your account.
    Withdraw {
        #[arg(value_parser = parse_amount)]
        amount: u64,
        #[arg(long)]
        bank: Option<String>,
        /// Read the account password from this file (else PAYME_ACCOUNT_PASSWORD, else a prompt).
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Deposit AMOUNT, or everything with --all, into your account.
    Deposit {
        #[arg(value_parser = parse_amount)]
        amount: Option<u64>,
        #[arg(long)]
        all: bool,
        #[arg(long)]
        bank: Option<String>,
    },
    /// Exchange all coins of a bank for fresh ones.
    Exchange {
        #[arg(long)]
        bank: Option<String>,
    },
    /// Your account's balance and ledger at the bank.
    Statement {
        #[arg(long)]
        bank: Option<String>,
        /// Only entries since this Unix time.
        #[arg(long)]
        since: Option<u64>,
    },
    /// Payment requests waiting for your answer.
    Pending {
        /// Wait up to SECS for a request to arrive when none is waiting yet.
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
    },
    /// Pay a pending request.
    Approve { id: u64 },
    /// Decline a pending request.
    Refuse { id: u64 },
    /// Payments made and received, with receipts.
    History,
    /// Merchants whose keys are pinned; `merchants forget NAME` unpins one.
    Merchants {
        #[command(subcommand)]
        action: Option<MerchantsCommand>,
    },
    /// The receipt of payment ID as a token a shop takes back to give the item again
    /// (until the order expires): the item's address with `?receipt=TOKEN`.
    Receipt {
        id: i64,
        /// The item's address: printed with the token appended.
        #[arg(long)]
        url: Option<String>,
    },
    /// Fetch URL as curl would, paying the shop over HTTP 402 if it asks (with your
    /// consent or under your policy): the body goes to FILE, or to stdout.
    Pay {
        url: String,
        /// Write the body here (written by the wallet daemon) instead of stdout.
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
    },
    /// Open the wallet window in your browser ($BROWSER, else xdg-open), logged in by a
    /// one-time link (good for two minutes); the link is printed when no browser starts.
    Ui {
        /// Print the link instead of starting a browser.
        #[arg(long)]
        print: bool,
    },
    /// Merchant side: ask the wallet at --from for --amount and wait for the outcome.
    Collect {
        #[arg(long)]
        from: String,
        #[arg(long, value_parser = parse_amount)]
        amount: u64,
        #[arg(long)]
        description: String,
        /// The order id (32 hex digits); drawn by the wallet when absent.
        #[arg(long)]
        order: Option<String>,
    },
}

#[derive(Subcommand)]
enum BankCommand {
    /// Add a bank to config.toml (restart `serve` to use it).
    Add {
        #[arg(long)]
        id: String,
        #[arg(long)]
        addr: String,
        /// File with the bank's public identity (`payme-bank public-key`).
        #[arg(long)]
        public_key: PathBuf,
        #[arg(long)]
        account: Option<u64>,
        #[arg(long)]
        account_name: Option<String>,
    },
    /// Change a bank's address, key or account in config.toml (restart `serve` to use it).
    Set {
        #[arg(long)]
        id: String,
        #[arg(long)]
        addr: Option<String>,
        /// File with the bank's new public identity.
        #[arg(long)]
        public_key: Option<PathBuf>,
        #[arg(long)]
        account: Option<u64>,
        #[arg(long)]
        account_name: Option<String>,
    },
    /// Remove a bank from config.toml; refused while the wallet holds its coins (deposit
    /// or spend them first), unless --force.
    Remove {
        #[arg(long)]
        id: String,
        /// Remove it even though coins of this bank are held (they stay in the database,
        /// unusable until the bank is added again).
        #[arg(long)]
        force: bool,
    },
    /// The banks in config.toml.
    List,
}

#[derive(Subcommand)]
enum MerchantsCommand {
    /// Unpin a merchant's keys (when it really changed them).
    Forget { name: String },
}

/// An amount on the command line: whole minor units, from 1 to the protocol's maximum
/// ([`Amount::MAX`]), refused here before anything is read or contacted.
fn parse_amount(s: &str) -> Result<u64, String> {
    let max = Amount::MAX.minor_units();
    match s.trim().parse::<u64>() {
        Ok(v) if (1..=max).contains(&v) => Ok(v),
        _ => Err(format!("amounts are whole minor units from 1 to {max}")),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // A bad value (an amount out of range): one line saying which and what is allowed,
        // without the usage block.
        Err(e) if e.kind() == clap::error::ErrorKind::ValueValidation => {
            let text = e.render().to_string();
            let line = text.lines().next().unwrap_or_default();
            let _ = writeln!(std::io::stderr(), "payme-wallet: {}", line.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    payme_node::logging::init_tracing();
    let json = cli.json;
    match run(cli) {
        Ok(code) => code,
        // The reader went away (`payme-wallet history | head -1`): not an error of ours.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // Under --json every answer is JSON, a local failure too (on stdout, as the
            // daemon's refusals are).
            if json {
                let v = serde_json::json!({"ok": false, "code": null, "label": "error", "error": format!("{e:#}")});
                let _ = writeln!(std::io::stdout(), "{v}");
            } else {
                let _ = writeln!(std::io::stderr(), "payme-wallet: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Prints the outcome of a command run here (not by the daemon): `human` for a person,
/// `value` under --json.
fn say(json: bool, human: impl std::fmt::Display, value: Value) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{value}")?;
    } else {
        writeln!(out, "{human}")?;
    }
    Ok(ExitCode::SUCCESS)
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == ErrorKind::BrokenPipe))
}

/// "no bank X" and the banks there are.
fn no_bank(cfg: &Config, id: &str) -> String {
    let ids: Vec<String> = cfg.banks.iter().map(|b| pmtp_proto::text::escape_control(&b.id)).collect();
    format!("no bank {} in config.toml (the banks: {})", pmtp_proto::text::escape_control(id), ids.join(", "))
}

/// Coins of `bank` the wallet holds, and its unfinished operations there (from its
/// database, read-only; the coins themselves stay sealed, so no passphrase is needed).
fn held_of_bank(dir: &DataDir, bank: &str) -> anyhow::Result<(u64, Amount, u64)> {
    let path = dir.database();
    let conn = rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let (count, value) = wallet_daemon::store::held_of_bank(&conn, bank)?;
    Ok((count, value, wallet_daemon::store::unfinished_ops_of_bank(&conn, bank)?))
}

/// A `serve` that has just been started holds the data directory's lock before its
/// control socket exists: wait for the socket (at most 10 s) rather than say the wallet is
/// not running. Returns at once when no daemon holds the lock.
async fn await_starting_daemon(dir: &DataDir, socket: &std::path::Path) {
    for _ in 0..100 {
        if socket.exists() {
            return;
        }
        if dir.holder().is_none() {
            // Nobody serves this directory: the caller reports it.
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn load_config(dir: &DataDir) -> anyhow::Result<Config> {
    if !dir.config().exists() {
        bail!("no wallet in {} (run `payme-wallet init --name NAME` first)", dir.root.display());
    }
    Ok(Config::load(&dir.config())?)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let dir = wallet_daemon::data_dir(
        cli.data_dir.clone().unwrap_or_else(|| payme_node::config::default_data_dir("payme-wallet")),
    );
    let json = cli.json;
    let mut receipt_url: Option<String> = None;
    let mut pending_wait: Option<u64> = None;
    let mut ui_print = false;
    let req = match cli.command {
        Command::Init { name, listen, rsa_bits, passphrase_file } => {
            let public = init(&dir, &name, listen, rsa_bits, passphrase_file)?;
            let human = format!(
                "created wallet {name} in {}\npublic key: {} (fingerprint {})",
                dir.root.display(),
                dir.public().display(),
                public.fingerprint()
            );
            let v = serde_json::json!({"name": name, "data_dir": dir.root.display().to_string(),
                "public_key_file": dir.public().display().to_string(), "fingerprint": public.fingerprint().to_string()});
            return say(json, human, v);
        }
        Command::Bank(BankCommand::Add { id, addr, public_key, account, account_name }) => {
            let text = std::fs::read_to_string(&public_key)
                .with_context(|| format!("cannot read {}", public_key.display()))?;
            let b = BankConfig {
                id,
                addr,
                public_key: text.trim().to_owned(),
                account,
                account_name,
                retired_public_keys: Vec::new(),
            };
            let mut cfg = load_config(&dir)?;
            if cfg.banks.iter().any(|x| x.id == b.id) {
                bail!(
                    "bank {} is already in {}; change it with `payme-wallet bank set --id {0} ...` or remove it with `payme-wallet bank remove --id {0}`",
                    pmtp_proto::text::escape_control(&b.id),
                    dir.config().display()
                );
            }
            cfg.banks.push(b.clone());
            cfg.validate()?;
            keyfile::fs::append_atomic(&dir.config(), Config::bank_section(&b)?.as_bytes())?;
            let human = format!("bank {} added; restart `payme-wallet serve` to use it", b.id);
            return say(json, human, serde_json::json!({"bank": b.id, "added": true}));
        }
        Command::Bank(BankCommand::Set { id, addr, public_key, account, account_name }) => {
            let mut cfg = load_config(&dir)?;
            let Some(b) = cfg.banks.iter_mut().find(|b| b.id == id) else { bail!(no_bank(&cfg, &id)) };
            if let Some(a) = addr {
                b.addr = a;
            }
            if let Some(p) = public_key {
                let text = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?;
                let old = std::mem::replace(&mut b.public_key, text.trim().to_owned());
                // The bank replaced its key: coins under the old one stay good until they expire.
                if old != b.public_key && !b.retired_public_keys.contains(&old) {
                    b.retired_public_keys.push(old);
                }
            }
            if account.is_some() {
                b.account = account;
            }
            if account_name.is_some() {
                b.account_name = account_name;
            }
            let b = b.clone();
            cfg.validate()?;
            payme_node::config::rewrite_entry(&dir.config(), &cfg, "bank", &id, Some(&b))?;
            let human = format!("bank {} changed; restart `payme-wallet serve` to use it", b.id);
            return say(json, human, serde_json::json!({"bank": b.id, "changed": true}));
        }
        Command::Bank(BankCommand::Remove { id, force }) => {
            let mut cfg = load_config(&dir)?;
            if !cfg.banks.iter().any(|b| b.id == id) {
                bail!(no_bank(&cfg, &id));
            }
            let (count, value, unfinished) = held_of_bank(&dir, &id)?;
            if unfinished > 0 {
                bail!(
                    "{unfinished} withdrawals, exchanges or deposits at bank {} are not finished (the bank may have acted on them); start `payme-wallet serve` until they are, then remove it",
                    pmtp_proto::text::escape_control(&id)
                );
            }
            if count > 0 && !force {
                bail!(
                    "this wallet holds {count} coins of bank {} (value {value}); deposit or spend them first (`payme-wallet deposit --all --bank {0}`), or add --force",
                    pmtp_proto::text::escape_control(&id)
                );
            }
            cfg.banks.retain(|b| b.id != id);
            if cfg.merchant.deposit_bank.as_deref() == Some(id.as_str()) {
                bail!(
                    "bank {} is merchant.deposit_bank in config.toml; change that first",
                    pmtp_proto::text::escape_control(&id)
                );
            }
            cfg.validate()?;
            payme_node::config::rewrite_entry(&dir.config(), &cfg, "bank", &id, None::<&BankConfig>)?;
            let human = format!(
                "bank {} removed; restart `payme-wallet serve` to apply it",
                pmtp_proto::text::escape_control(&id)
            );
            return say(json, human, serde_json::json!({"bank": id, "removed": true, "coins_left": count}));
        }
        Command::Bank(BankCommand::List) => {
            let cfg = load_config(&dir)?;
            let human: Vec<String> = cfg
                .banks
                .iter()
                .map(|b| {
                    let account = match (&b.account, &b.account_name) {
                        (Some(a), Some(n)) => format!("account {a} ({})", pmtp_proto::text::escape_control(n)),
                        _ => "no account".into(),
                    };
                    format!(
                        "{}  {}  {account}",
                        pmtp_proto::text::escape_control(&b.id),
                        pmtp_proto::text::escape_control(&b.addr)
                    )
                })
                .collect();
            let human = if human.is_empty() {
                "no banks (add one with `payme-wallet bank add`)".into()
            } else {
                human.join("\n")
            };
            let v: Vec<Value> = cfg
                .banks
                .iter()
                .map(|b| serde_json::json!({"id": b.id, "addr": b.addr, "account": b.account, "account_name": b.account_name}))
                .collect();
            return say(json, human, Value::Array(v));
        }
        Command::Wait { timeout } => {
            let cfg = load_config(&dir)?;
            let socket = cfg.control_socket_path(&dir.root);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout);
            loop {
                match rt.block_on(control::call(&socket, &Request::Identity)) {
                    Ok(Ok(v)) => {
                        let human = format!("the wallet {} is serving", text(&v["name"]));
                        return say(json, human, serde_json::json!({"serving": true, "name": v["name"]}));
                    }
                    Ok(Err((_, _, e))) => bail!("the wallet daemon answered: {e}"),
                    Err(e) if std::time::Instant::now() >= deadline => {
                        bail!("the wallet daemon did not answer within {timeout} s: {e}")
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
                }
            }
        }
        Command::Backup { file } => {
            let size = payme_node::sqlite::backup(&dir.database(), &file)?;
            let human = format!(
                "wallet database copied to {} ({size} bytes); keep wallet.key and config.toml from {} with it",
                file.display(),
                dir.root.display()
            );
            return say(json, human, serde_json::json!({"file": file.display().to_string(), "bytes": size}));
        }
        Command::PublicKey => {
            let text = std::fs::read_to_string(dir.public())
                .with_context(|| format!("no wallet in {}", dir.root.display()))?;
            return say(json, text.trim_end(), serde_json::json!({"public_key": text.trim_end()}));
        }
        Command::Serve { listen, no_listen, ui, passphrase_file } => {
            let mut cfg = load_config(&dir)?;
            if let Some(ui) = ui {
                cfg.ui.listen = ui;
                cfg.validate()?;
            }
            if let Some(l) = listen {
                cfg.listen = l;
                cfg.pmtp_listener = true;
            }
            if no_listen {
                cfg.pmtp_listener = false;
            }
            let pass = read_secret(passphrase_file.as_deref(), "PAYME_WALLET_PASSPHRASE", "Wallet passphrase: ")?;
            serve(dir, cfg, &pass)?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Balance => Request::Balance,
        Command::Withdraw { amount, bank, password_file } => {
            let password = read_secret(password_file.as_deref(), "PAYME_ACCOUNT_PASSWORD", "Account password: ")?;
            Request::Withdraw { bank, amount, password: password.to_string() }
        }
        Command::Deposit { amount, all, bank } => match (amount, all) {
            (Some(a), false) => Request::Deposit { bank, amount: Some(a) },
            (None, true) => Request::Deposit { bank, amount: None },
            _ => bail!("give an AMOUNT or --all"),
        },
        Command::Exchange { bank } => Request::Exchange { bank },
        Command::Statement { bank, since } => Request::Statement { bank, since },
        Command::Pending { wait } => {
            pending_wait = wait;
            Request::Pending
        }
        Command::Approve { id } => Request::Approve { id },
        Command::Refuse { id } => Request::Refuse { id },
        Command::History => Request::History,
        Command::Merchants { action: None } => Request::Merchants,
        Command::Merchants { action: Some(MerchantsCommand::Forget { name }) } => Request::Forget { name },
        Command::Collect { from, amount, description, order } => {
            Request::Collect { from, amount, description, order, item: None }
        }
        Command::Ui { print } => {
            ui_print = print;
            Request::UiLogin
        }
        Command::Receipt { id, url } => {
            receipt_url = url;
            Request::Receipt { id }
        }
        Command::Pay { url, output } => {
            // The daemon writes the file: it needs the path from here, not from its own
            // working directory.
            let output = match output {
                Some(p) if p.as_os_str() == "-" => None,
                Some(p) if p.is_absolute() => Some(p),
                Some(p) => Some(std::env::current_dir().context("the current directory")?.join(p)),
                None => None,
            };
            Request::PayUrl { url, output: output.map(|p| p.display().to_string()) }
        }
    };
    let cfg = load_config(&dir)?;
    let socket = cfg.control_socket_path(&dir.root);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(await_starting_daemon(&dir, &socket));
    let mut answer = rt.block_on(control::call(&socket, &req))?;
    // `pending --wait`: ask again (every 100 ms, for at most SECS) until a request waits.
    if let Some(secs) = pending_wait {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while matches!(&answer, Ok(Value::Array(a)) if a.is_empty()) && std::time::Instant::now() < deadline {
            rt.block_on(async { tokio::time::sleep(std::time::Duration::from_millis(100)).await });
            answer = rt.block_on(control::call(&socket, &req))?;
        }
    }
    let mut out = std::io::stdout().lock();
    match answer {
        Ok(mut v) => {
            if let (Some(url), Some(token)) = (&receipt_url, v["receipt"].as_str()) {
                let sep = if url.contains('?') { '&' } else { '?' };
                v["claim_url"] = Value::String(format!("{url}{sep}receipt={token}"));
            }
            if json {
                writeln!(out, "{v}")?;
            } else if let (Request::UiLogin, Some(url)) = (&req, v["url"].as_str()) {
                if !ui_print && open_in_browser(url) {
                    writeln!(out, "the wallet window is opening in your browser")?;
                } else {
                    writeln!(out, "open this link in your browser (good once, for two minutes):\n{url}")?;
                }
            } else if let (Request::PayUrl { .. }, Some(b64)) = (&req, v["body_base64"].as_str()) {
                // The body, byte for byte, to stdout; what was paid, to stderr.
                use base64::Engine;
                let body = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .context("the wallet daemon's answer holds no readable body")?;
                out.write_all(&body)?;
                print_human(&mut std::io::stderr().lock(), &req, &v)?;
            } else {
                print_human(&mut out, &req, &v)?;
            }
            out.flush()?;
            // A collect that was refused is a failure for scripts.
            if matches!(req, Request::Collect { .. }) && v["outcome"] != "paid" {
                return Ok(ExitCode::from(2));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err((code, label, text)) => {
            if json {
                writeln!(out, "{}", serde_json::json!({"ok": false, "code": code, "label": label, "error": text}))?;
                out.flush()?;
            } else {
                let _ = writeln!(std::io::stderr(), "payme-wallet: {text} ({label})");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Starts the person's browser on `url`: each command of $BROWSER (colon-separated, as
/// the convention goes), then xdg-open. False when none could be started.
fn open_in_browser(url: &str) -> bool {
    let from_env = std::env::var("BROWSER").unwrap_or_default();
    let candidates = from_env.split(':').map(str::trim).filter(|c| !c.is_empty()).chain(["xdg-open"]);
    for c in candidates {
        let started = std::process::Command::new(c)
            .arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if started.is_ok() {
            return true;
        }
    }
    false
}

/// A string field of a result, for a terminal. The daemon escapes what peers wrote; this
/// escapes again (a no-op on escaped text), so a terminal never gets a raw control character.
fn text(v: &Value) -> String {
    pmtp_proto::text::escape_control(v.as_str().unwrap_or(""))
}

/// Prints a result for a person.
fn print_human(out: &mut impl Write, req: &Request, v: &Value) -> std::io::Result<()> {
    match req {
        Request::Balance => {
            writeln!(out, "available: {}", v["total_available"])?;
            if v["recovering"] == true {
                writeln!(out, "recovering: unfinished payments and operations of the last run are being resolved")?;
            }
            if v["quarantined_coins"].as_u64().unwrap_or(0) > 0 {
                writeln!(
                    out,
                    "quarantined {} coins (their rows claim {}): damaged in storage, kept, never spent; see the log",
                    v["quarantined_coins"], v["total_quarantined"]
                )?;
            }
            for b in v["banks"].as_array().into_iter().flatten() {
                writeln!(
                    out,
                    "  bank {}: available {}, pending {}, received {}, quarantined {}",
                    text(&b["bank"]),
                    b["available"],
                    b["pending"],
                    b["received"],
                    b["quarantined"]
                )?;
                for c in b["coins"].as_array().into_iter().flatten() {
                    writeln!(out, "    {} x {}", c["count"], c["value"])?;
                }
            }
        }
        Request::Pending => {
            let list = v.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                writeln!(out, "no payment requests waiting")?;
            }
            for p in list {
                let new = if p["new_merchant"].as_bool() == Some(true) {
                    " (NEW merchant: approving pins its key)"
                } else {
                    ""
                };
                // In band, the shop is its web origin; over PMTP, its wallet's address.
                let from = match p["origin"].as_str() {
                    Some(o) => format!("shop {}", text(&Value::from(o))),
                    None => format!("from {}", text(&p["peer"])),
                };
                writeln!(
                    out,
                    "#{}  {} asks {} for {}{}\n     order {}, {}, key {}",
                    p["id"],
                    text(&p["merchant"]),
                    p["amount"],
                    text(&p["description"]),
                    new,
                    text(&p["order"]),
                    from,
                    text(&p["fingerprint"])
                )?;
            }
        }
        Request::History => {
            for p in v.as_array().into_iter().flatten() {
                let verified = match p["receipt_valid"].as_bool() {
                    Some(true) => "receipt verified",
                    Some(false) => "RECEIPT INVALID",
                    None => "no receipt",
                };
                let order = match p["order"].as_str() {
                    Some(o) => format!(" order {}", text(&Value::from(o))),
                    None => String::new(),
                };
                writeln!(
                    out,
                    "#{} {} {} {} {} \"{}\" [{}; {}{}] {}",
                    p["id"],
                    text(&p["direction"]),
                    p["amount"],
                    text(&p["merchant"]),
                    text(&p["peer"]),
                    text(&p["description"]),
                    text(&p["state"]),
                    verified,
                    order,
                    text(&p["reason"])
                )?;
            }
        }
        Request::Receipt { .. } => {
            writeln!(
                out,
                "order {} ({} for {} from {})",
                text(&v["order"]),
                v["amount"],
                text(&v["description"]),
                text(&v["merchant"])
            )?;
            match v["claim_url"].as_str() {
                Some(u) => writeln!(out, "open this address to get the item again:\n{}", text(&Value::from(u)))?,
                None => writeln!(
                    out,
                    "to get the item again, open its address with ?receipt= and this token appended:\n{}",
                    text(&v["receipt"])
                )?,
            }
        }
        Request::PayUrl { .. } => {
            if v["paid"] == true {
                writeln!(
                    out,
                    "paid {} to {} at {} (order {}, payment #{})",
                    v["amount"],
                    text(&v["merchant"]),
                    text(&v["origin"]),
                    text(&v["order"]),
                    v["payment"]
                )?;
            }
            if let Some(o) = v["output"].as_str() {
                writeln!(out, "{} bytes written to {}", v["bytes"], text(&Value::from(o)))?;
            }
        }
        Request::Collect { .. } => match v["outcome"].as_str() {
            Some("paid") => writeln!(out, "paid: {} (payment #{})", v["amount"], v["payment"])?,
            Some("refused") => writeln!(out, "refused: {} ({})", text(&v["reason"]), text(&v["label"]))?,
            // An outcome this client does not know is shown as it came, never as a refusal.
            _ => writeln!(out, "{}", serde_json::to_string_pretty(v).unwrap_or_default())?,
        },
        Request::Withdraw { .. } => writeln!(
            out,
            "withdrew {} from bank {}; the account holds {}",
            v["amount"],
            text(&v["bank"]),
            v["account_balance"]
        )?,
        Request::Deposit { .. } => writeln!(out, "deposited {} at bank {}", v["amount"], text(&v["bank"]))?,
        Request::Exchange { .. } => {
            writeln!(out, "exchanged {} at bank {} for fresh coins", v["amount"], text(&v["bank"]))?
        }
        Request::Statement { .. } => {
            writeln!(out, "account {} at bank {}: balance {}", v["account"], text(&v["bank"]), v["balance"])?;
            for e in v["entries"].as_array().into_iter().flatten() {
                let sign = if e["credit"] == true { '+' } else { '-' };
                writeln!(
                    out,
                    "  #{} {} {}{} -> {}  {} {}",
                    e["id"],
                    e["time"],
                    sign,
                    e["amount"],
                    e["balance_after"],
                    text(&e["kind"]),
                    text(&e["memo"])
                )?;
            }
            if v["truncated"] == true {
                writeln!(out, "  (more entries: use --since)")?;
            }
        }
        Request::Approve { id } => writeln!(out, "request #{id} approved: paying")?,
        Request::Refuse { id } => writeln!(out, "request #{id} refused")?,
        Request::Merchants => {
            let list = v.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                writeln!(out, "no merchants pinned")?;
            }
            for m in list {
                writeln!(out, "{}  key {}", text(&m["name"]), text(&m["fingerprint"]))?;
            }
        }
        Request::Forget { name } => match v["forgotten"].as_u64() {
            Some(0) | None => writeln!(out, "no merchant {} was pinned", pmtp_proto::text::escape_control(name))?,
            Some(_) => {
                writeln!(out, "forgot {}: its next key is pinned afresh", pmtp_proto::text::escape_control(name))?
            }
        },
        // Requests this command line does not send (the shop's CGI sends them).
        _ => writeln!(out, "{v}")?,
    }
    Ok(())
}

fn init(
    dir: &DataDir,
    name: &str,
    listen: SocketAddr,
    bits: usize,
    passphrase_file: Option<PathBuf>,
) -> anyhow::Result<PublicIdentity> {
    if dir.key().exists() {
        bail!("{} already holds a wallet key; refusing to overwrite it", dir.root.display());
    }
    let pass = read_secret(passphrase_file.as_deref(), "PAYME_WALLET_PASSPHRASE", "New wallet passphrase: ")?;
    if pass.len() < 8 {
        bail!("the passphrase must be at least 8 characters");
    }
    std::fs::create_dir_all(&dir.root)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir.root, std::fs::Permissions::from_mode(0o700))?;
    }
    let mut rng = pmtp_proto::rng::os();
    let identity = payme_node::keys::new_identity(Name::new(name)?, bits)?;
    let sealed = keyfile::seal_identity(&mut rng, &identity, pass.as_bytes(), payme_node::keys::kdf_params())?;
    keyfile::fs::write_private(&dir.key(), &sealed)?;
    let public: PublicIdentity = identity.public();
    keyfile::fs::write_atomic(&dir.public(), format!("{}\n", public.to_text()).as_bytes(), 0o644)?;
    let cfg = Config { listen, ..Config::default() };
    if !dir.config().exists() {
        keyfile::fs::write_atomic(&dir.config(), cfg.commented_toml()?.as_bytes(), 0o600)?;
    }
    wallet_daemon::store::Db::open(&dir.database(), wallet_daemon::store::Vault::new(&identity))?;
    Ok(public)
}

fn serve(dir: DataDir, cfg: Config, passphrase: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    Ok(rt.block_on(wallet_daemon::run_daemon(dir, cfg, passphrase))?)
}
