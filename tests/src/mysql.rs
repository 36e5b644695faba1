//! A real MariaDB server for tests: a fresh data directory (`mariadb-install-db`) in a
//! temporary directory, `mariadbd` run as root on 127.0.0.1 with a free port, a user `app`
//! (password `apppw`, all privileges) and one database created at start-up by an init file;
//! killed and removed on drop. Helpers run the real clients: the `mariadb` CLI, and Python
//! (`mysql-connector-python`, pure-Python mode) for server-side prepared statements.

use std::{
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::harness::{ChildGuard, free_port};

pub const USER: &str = "app";
pub const PASSWORD: &str = "apppw";

pub struct MysqlServer {
    pub port: u16,
    dir: PathBuf,
    guard: Option<ChildGuard>,
}

impl MysqlServer {
    /// Creates a data directory and starts the server with database `db`.
    pub fn start(db: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "socktrace-mysql-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("mysql dir");
        let data = dir.join("data");
        let out = Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .arg(format!("--datadir={}", data.display()))
            .output()
            .expect("mariadb-install-db must be installed (Debian package mariadb-server)");
        assert!(
            out.status.success(),
            "mariadb-install-db: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let init = dir.join("init.sql");
        std::fs::write(
            &init,
            format!(
                "CREATE DATABASE IF NOT EXISTS {db};\n\
                 CREATE USER IF NOT EXISTS '{USER}'@'%' IDENTIFIED BY '{PASSWORD}';\n\
                 CREATE USER IF NOT EXISTS '{USER}'@'localhost' IDENTIFIED BY '{PASSWORD}';\n\
                 GRANT ALL ON *.* TO '{USER}'@'%';\n\
                 GRANT ALL ON *.* TO '{USER}'@'localhost';\n"
            ),
        )
        .expect("init file");
        let port = free_port();
        let child = Command::new("mariadbd")
            .args([
                "--no-defaults",
                "--user=root",
                "--skip-networking=0",
                "--bind-address=127.0.0.1",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=16M",
                "--max-connections=50",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.join("s").display()))
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .arg(format!("--log-error={}", dir.join("err.log").display()))
            .arg(format!("--init-file={}", init.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd");
        let server = Self {
            port,
            dir,
            guard: Some(ChildGuard::new("mariadbd", child)),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        // Ready once the init file ran: the user can log in to the database.
        while !server.cli(db, "SELECT 1").status.success() {
            assert!(
                Instant::now() < deadline,
                "mariadbd did not start: {}",
                std::fs::read_to_string(server.dir.join("err.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }

    /// Runs the `mariadb` CLI (over TCP) against database `db` with `-e sql` (the CLI sends
    /// each `;`-separated statement as its own COM_QUERY and stops at the first error).
    pub fn cli(&self, db: &str, sql: &str) -> Output {
        Command::new("mariadb")
            .args([
                "--no-defaults",
                "-h",
                "127.0.0.1",
                "--protocol=TCP",
                "--skip-ssl",
            ])
            .arg(format!("-P{}", self.port))
            .arg(format!("-u{USER}"))
            .arg(format!("-p{PASSWORD}"))
            .args([db, "-e", sql])
            .output()
            .expect("the mariadb client must be installed")
    }

    /// Runs Python code with `conn`, a `mysql.connector` connection (pure-Python mode, TLS
    /// off) to database `db`, defined; `python` is the interpreter (the test virtualenv's,
    /// `harness::python()`, has the package from `tests/peers/requirements.txt`).
    pub fn python(&self, python: &std::path::Path, db: &str, code: &str) -> Output {
        let prelude = format!(
            "import mysql.connector\n\
             conn = mysql.connector.connect(host='127.0.0.1', port={}, user='{USER}', \
             password='{PASSWORD}', database='{db}', use_pure=True, ssl_disabled=True)\n",
            self.port
        );
        Command::new(python)
            .arg("-c")
            .arg(format!("{prelude}{code}\nconn.close()\n"))
            .output()
            .expect("python")
    }

    /// Pid of the server.
    pub fn pid(&self) -> u32 {
        self.guard.as_ref().map_or(0, ChildGuard::pid)
    }
}

impl Drop for MysqlServer {
    fn drop(&mut self) {
        if let Some(mut g) = self.guard.take() {
            // SIGTERM: normal shutdown, then reap (ChildGuard kills what is left).
            // SAFETY: signalling our own child.
            unsafe { libc::kill(g.pid() as i32, libc::SIGTERM) };
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
