//! A real Redis server for tests: `redis-server` on 127.0.0.1 with a free port, no persistence,
//! in a temporary directory, stopped and removed on drop; and its real client, `redis-cli`.

use std::{
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::harness::{ChildGuard, free_port};

pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    guard: Option<ChildGuard>,
}

impl RedisServer {
    pub fn start() -> Self {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("socktrace-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--protected-mode", "no", "--dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (Debian package redis-server; cargo xtask test installs it)");
        let server = Self {
            port,
            dir,
            guard: Some(ChildGuard::new("redis-server", child)),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = server.cli(&["PING"]);
            if out.status.success() && out.stdout.starts_with(b"PONG") {
                break;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// Runs `redis-cli` (one connection) with these arguments against the server.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli must be installed (Debian package redis-tools)")
    }

    pub fn pid(&self) -> u32 {
        self.guard.as_ref().map_or(0, ChildGuard::pid)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        drop(self.guard.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
