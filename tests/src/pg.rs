//! A real PostgreSQL server for tests: a fresh cluster in a temporary directory, run as the
//! `postgres` user on 127.0.0.1 with a free port, stopped and removed on drop.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::harness::{ChildGuard, free_port};

fn bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server must be installed (Debian package postgresql; cargo xtask test installs it)")
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|p| p.join("postgres").exists())
        .collect();
    dirs.sort();
    dirs.pop().expect("no /usr/lib/postgresql/*/bin/postgres")
}

/// Runs a command as the `postgres` user (the server refuses to run as root).
fn as_postgres(program: &std::path::Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
        .arg(program);
    cmd
}

/// Makes `path` the `postgres` user's.
fn give_to_postgres(path: &Path) {
    let status = Command::new("chown")
        .args(["postgres:postgres"])
        .arg(path)
        .status()
        .expect("chown");
    assert!(status.success(), "chown postgres {}", path.display());
}

pub struct PgServer {
    pub port: u16,
    dir: PathBuf,
    guard: Option<ChildGuard>,
}

impl PgServer {
    /// Creates a cluster (trust authentication) and starts it; creates database `db`.
    pub fn start(db: &str) -> Self {
        Self::start_with(db, None)
    }

    /// As [`PgServer::start`]; with `tls` (certificate and key PEM files), `ssl=on` with them.
    pub fn start_with(db: &str, tls: Option<(&Path, &Path)>) -> Self {
        let bin = bin_dir();
        let dir = std::env::temp_dir().join(format!(
            "socktrace-pg-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("pg dir");
        give_to_postgres(&dir);
        let data = dir.join("data");
        let out = as_postgres(&bin.join("initdb"))
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let mut ssl = Vec::new();
        if let Some((cert, key)) = tls {
            // The server insists on a key readable by its own user only.
            for (from, name) in [(cert, "server.crt"), (key, "server.key")] {
                let to = dir.join(name);
                std::fs::copy(from, &to).expect("copy certificate");
                give_to_postgres(&to);
                std::fs::set_permissions(
                    &to,
                    <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
                )
                .expect("chmod");
            }
            ssl = vec![
                "-c".to_owned(),
                "ssl=on".to_owned(),
                "-c".to_owned(),
                format!("ssl_cert_file={}", dir.join("server.crt").display()),
                "-c".to_owned(),
                format!("ssl_key_file={}", dir.join("server.key").display()),
            ];
        }
        let child = as_postgres(&bin.join("postgres"))
            .args(&ssl)
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.display()))
            .args(["-c", "fsync=off", "-c", "max_connections=50"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres");
        let server = Self {
            port,
            dir,
            guard: Some(ChildGuard::new("postgres", child)),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new(bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "postgres did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = server.psql("postgres", &["-c", &format!("CREATE DATABASE {db}")]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        server
    }

    /// Runs `psql` (as a client process, over TCP) against database `db`.
    pub fn psql(&self, db: &str, args: &[&str]) -> Output {
        Command::new("psql")
            .args(["-X", "-q", "-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(self.port.to_string())
            .args(["-d", db])
            .args(args)
            .output()
            .expect("psql must be installed")
    }

    /// Runs `pgbench` (the server's own benchmark client) with these arguments.
    pub fn pgbench(&self, db: &str, args: &[&str]) -> Output {
        Command::new(bin_dir().join("pgbench"))
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(self.port.to_string())
            .args(args)
            .arg(db)
            .output()
            .expect("pgbench")
    }

    /// Connection string for client libraries.
    pub fn url(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}",
            self.port
        )
    }

    /// Pid of the postmaster (backends are its children).
    pub fn pid(&self) -> u32 {
        self.guard.as_ref().map_or(0, ChildGuard::pid)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(mut g) = self.guard.take() {
            // SIGINT: fast shutdown (backends are told to exit), then reap.
            // SAFETY: signalling our own child.
            unsafe { libc::kill(g.pid() as i32, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = g.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
