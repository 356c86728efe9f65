//! A throwaway PostgreSQL server for tests: `initdb` into a temporary directory, the
//! server on 127.0.0.1 at a free port (and a Unix socket in that directory), trust
//! authentication for the `postgres` role, stopped when dropped.
//!
//! PostgreSQL refuses to run as root, and CI runs as root: then the directory is handed
//! to the `postgres` user and every server command runs as that user (`runuser`).
//! Without PostgreSQL installed, [`Postgres::start`] fails the test when `CI=true` and
//! otherwise prints a loud SKIP line and returns `None`.

// A test harness: a server that cannot start is the test's failure, said at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_postgres: bool,
    pub port: u16,
    databases: AtomicUsize,
}

/// The newest `/usr/lib/postgresql/N/bin` holding `initdb` and `pg_ctl`.
pub fn bin_dir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("pg_ctl").exists()).then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

fn running_as_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

impl Postgres {
    /// Starts a server with durable commits (`fsync` on, as in production), or `None`
    /// when PostgreSQL is not installed outside CI (after saying so).
    pub fn start() -> Option<Postgres> {
        Self::start_with(true)
    }

    /// As [`Postgres::start`]; `durable` false turns fsync off (tests that do not measure).
    pub fn start_with(durable: bool) -> Option<Postgres> {
        let Some(bin) = bin_dir() else {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("CI=true but PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): .ci/run installs it");
            }
            eprintln!(
                "\n*** SKIP: PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); \
                 the PostgreSQL tests did NOT run. apt-get install postgresql to run them. ***\n"
            );
            return None;
        };
        let as_postgres = running_as_root();
        let dir = tempfile::Builder::new().prefix("payme-pg").tempdir().expect("temporary directory");
        if as_postgres {
            let ok = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status();
            assert!(ok.map(|s| s.success()).unwrap_or(false), "chown of the PostgreSQL directory to postgres");
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            l.local_addr().expect("port").port()
        };
        let pg = Postgres { dir, bin, as_postgres, port, databases: AtomicUsize::new(0) };
        let data = pg.data();
        let out = pg.run(
            "initdb",
            &["-D", path(&data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions"],
        );
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let mut opts = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c max_connections=300 -c shared_buffers=128MB",
            pg.dir.path().display()
        );
        if !durable {
            opts.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        let log = pg.dir.path().join("server.log");
        // -w -t 60: pg_ctl waits until the server accepts connections, at most 60 s.
        let out = pg.run("pg_ctl", &["-D", path(&data), "-l", path(&log), "-o", &opts, "-w", "-t", "60", "start"]);
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Some(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs a server program, as the postgres user when this process is root.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let exe = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args).stdin(Stdio::null()).current_dir(self.dir.path());
        cmd.output().unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()))
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A new, empty database; its URL.
    pub fn create_db(&self) -> String {
        let name = format!("payme_{}", self.databases.fetch_add(1, Ordering::SeqCst));
        let admin = self.url("postgres");
        let sql = format!("CREATE DATABASE {name}");
        // The client's own runtime may not start on an async worker: a thread of its own.
        bank_daemon::store::pg::in_own_thread(move || {
            let mut c = postgres::Client::connect(&admin, postgres::NoTls).expect("connect to the test server");
            c.batch_execute(&sql).expect("CREATE DATABASE");
        });
        self.url(&name)
    }

    /// Runs one SQL statement on database `url` (a test's look under the hood).
    pub fn execute(&self, url: &str, sql: &str) -> u64 {
        let (url, sql) = (url.to_owned(), sql.to_owned());
        bank_daemon::store::pg::in_own_thread(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("connect to the test server");
            c.execute(sql.as_str(), &[]).expect("statement")
        })
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data();
        // Immediate: a test's server holds nothing worth a clean shutdown; bounded by -t.
        let _ = self.run("pg_ctl", &["-D", path(&data), "-m", "immediate", "-w", "-t", "30", "stop"]);
    }
}

/// `n` nodes of one bank (`bank-a`) on a new database of `pg`: the same bank key and
/// config (`store` = the database), each its own data directory, `node_id` and port. The
/// first made the bank (`init`) and serves the admin commands. `edit` changes the config
/// every node gets.
pub fn bank_nodes(pg: &Postgres, n: usize, edit: impl Fn(String) -> String) -> Vec<crate::bank_harness::TestBank> {
    use crate::bank_harness::{BankDir, TestBank};
    let url = pg.create_db();
    let first = TestBank::start_with("bank-a", |c| {
        edit(c).replace("store = \"\"", &format!("store = \"{url}\"")).replace("node_id = \"\"", "node_id = \"node-0\"")
    });
    let mut all = vec![first];
    for node in 1..n {
        let dir = tempfile::tempdir().unwrap();
        for f in ["bank.key", "bank.pub"] {
            std::fs::copy(all[0].dir.path().join(f), dir.path().join(f)).unwrap();
        }
        let config = std::fs::read_to_string(all[0].dir.path().join("config.toml")).unwrap();
        let config = config.replace("node_id = \"node-0\"", &format!("node_id = \"node-{node}\""));
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        let public = all[0].public.clone();
        let mut b = TestBank { dir: BankDir::Temp(dir), child: None, addr: String::new(), public };
        b.restart();
        all.push(b);
    }
    all
}
