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
    Pending,
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
    match run(cli) {
        Ok(code) => code,
        // The reader went away (`payme-wallet history | head -1`): not an error of ours.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "payme-wallet: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == ErrorKind::BrokenPipe))
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
    let mut ui_print = false;
    let req = match cli.command {
        Command::Init { name, listen, rsa_bits, passphrase_file } => {
            init(&dir, &name, listen, rsa_bits, passphrase_file)?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Bank(BankCommand::Add { id, addr, public_key, account, account_name }) => {
            let text = std::fs::read_to_string(&public_key)
                .with_context(|| format!("cannot read {}", public_key.display()))?;
            let b = BankConfig { id, addr, public_key: text.trim().to_owned(), account, account_name };
            let mut cfg = load_config(&dir)?;
            cfg.banks.push(b.clone());
            cfg.validate()?;
            keyfile::fs::append_atomic(&dir.config(), Config::bank_section(&b)?.as_bytes())?;
            writeln!(std::io::stdout().lock(), "bank {} added; restart `payme-wallet serve` to use it", b.id)?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Backup { file } => {
            let size = payme_node::sqlite::backup(&dir.database(), &file)?;
            writeln!(
                std::io::stdout().lock(),
                "wallet database copied to {} ({size} bytes); keep wallet.key and config.toml from {} with it",
                file.display(),
                dir.root.display()
            )?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::PublicKey => {
            write!(
                std::io::stdout().lock(),
                "{}",
                std::fs::read_to_string(dir.public())
                    .with_context(|| format!("no wallet in {}", dir.root.display()))?
            )?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Serve { listen, no_listen, passphrase_file } => {
            let mut cfg = load_config(&dir)?;
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
        Command::Pending => Request::Pending,
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
    let answer = rt.block_on(control::call(&socket, &req))?;
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
        _ => writeln!(out, "{}", serde_json::to_string_pretty(v).unwrap_or_default())?,
    }
    Ok(())
}

fn init(
    dir: &DataDir,
    name: &str,
    listen: SocketAddr,
    bits: usize,
    passphrase_file: Option<PathBuf>,
) -> anyhow::Result<()> {
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
    let mut out = std::io::stdout().lock();
    writeln!(out, "created wallet {name} in {}", dir.root.display())?;
    writeln!(out, "public key: {} (fingerprint {})", dir.public().display(), public.fingerprint())?;
    Ok(())
}

fn serve(dir: DataDir, cfg: Config, passphrase: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    Ok(rt.block_on(wallet_daemon::run_daemon(dir, cfg, passphrase))?)
}
