//! A throwaway PostgreSQL server for the replica's tests: `initdb` into a temporary directory,
//! `pg_ctl start` on a free loopback port with its socket in that directory, and `pg_ctl stop
//! -m immediate` plus removal when dropped. No test is skipped when PostgreSQL is missing: it
//! fails, saying what to install (`.ci/run` installs it).
//!
//! PostgreSQL refuses to run as root; as root, the server runs as the `postgres` user
//! (`runuser`), which owns the temporary directory.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A running throwaway server.
pub struct TestPg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
    as_postgres: bool,
}

/// The directory holding `initdb` and `pg_ctl`: the PATH's, else Debian's newest.
fn binaries() -> PathBuf {
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                return dir;
            }
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    found.sort();
    found.pop().expect(
        "PostgreSQL's server programs (initdb, pg_ctl) are needed by these tests and were not \
         found on the PATH or under /usr/lib/postgresql: apt-get install postgresql",
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl TestPg {
    /// Starts a new server with a `postgres` superuser that needs no password (trust, on
    /// loopback only).
    pub fn start() -> TestPg {
        let dir = tempfile::tempdir().unwrap();
        let as_postgres = running_as_root();
        if as_postgres {
            // The server's user must own its directory and reach it.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
            run("chown", &["-R", "postgres:postgres", &dir.path().display().to_string()], false);
        }
        let bin = binaries();
        let pg = TestPg { dir, bin, port: free_port(), as_postgres };
        pg.pg(
            "initdb",
            &[
                "-D",
                &pg.data().display().to_string(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        pg.start_server();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg(&self, program: &str, args: &[&str]) {
        let path = self.bin.join(program).display().to_string();
        let mut all = vec![path.as_str()];
        all.extend_from_slice(args);
        run(all[0], &all[1..], self.as_postgres);
    }

    /// Starts the server (again, after `stop`), on the same port.
    pub fn start_server(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=50",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.pg(
            "pg_ctl",
            &["-D", &self.data().display().to_string(), "-o", &options, "-l", &log, "-w", "start"],
        );
    }

    /// Stops the server at once (as a crash would).
    pub fn stop_server(&self) {
        self.pg(
            "pg_ctl",
            &["-D", &self.data().display().to_string(), "-m", "immediate", "-w", "stop"],
        );
    }

    /// The connection string of `database`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a database and answers its connection string.
    pub async fn create_database(&self, name: &str) -> String {
        let (client, connection) =
            tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls).await.unwrap();
        let task = tokio::spawn(connection);
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        drop(client);
        let _ = task.await;
        self.url(name)
    }

    /// The server's log, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestPg {
    fn drop(&mut self) {
        let path = self.bin.join("pg_ctl").display().to_string();
        let data = self.data().display().to_string();
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--", &path]);
            command
        } else {
            Command::new(&path)
        };
        let _ = command.args(["-D", &data, "-m", "immediate", "-w", "stop"]).output();
    }
}

fn running_as_root() -> bool {
    // The effective user is root when /proc/self/status says Uid 0 (no libc call needed).
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find(|line| line.starts_with("Uid:")).map(|line| {
                line.split_whitespace().nth(2).is_some_and(|effective| effective == "0")
            })
        })
        .unwrap_or(false)
}

fn run(program: &str, args: &[&str], as_postgres: bool) {
    let mut command = if as_postgres {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", program]);
        command
    } else {
        Command::new(program)
    };
    let output = command.args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Waits until `replicator` has copied every durable record of `engine` (60 s at most).
pub async fn wait_caught_up(
    engine: &ledger_engine::Engine,
    replicator: &ledger_server::replica::replicator::Replicator,
) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let durable: Vec<u64> = engine.stats().iter().map(|s| s.durable_lsn).collect();
        let replicated: Vec<u64> = replicator
            .shards
            .iter()
            .map(|s| s.lsn.load(std::sync::atomic::Ordering::Relaxed))
            .collect();
        if durable == replicated {
            return;
        }
        let states: Vec<_> = replicator.shards.iter().map(|s| s.state()).collect();
        assert!(
            tokio::time::Instant::now() < deadline,
            "not caught up: durable {durable:?}, replicated {replicated:?}, {states:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
