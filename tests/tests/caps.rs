//! The agent with exactly the capabilities the DaemonSet grants (`deploy/base/daemonset.yaml`),
//! and with fewer: it attaches and traces with the four, warns and loses what `/proc` reading
//! gives without two of them, and names the fix when tracefs is unreadable.

use std::{
    io::{BufReader, Read},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use socktrace_tests::harness::{ChildGuard, agent_bin, curl, peer, require_root, wait_line};

/// The test HTTP server as user `nobody`, with `OTEL_SERVICE_NAME=py-caps`: reading its
/// `/proc/PID/environ` takes CAP_SYS_PTRACE (another user) and CAP_DAC_READ_SEARCH (its file).
struct NobodyServer {
    _guard: ChildGuard,
    port: u16,
}

impl NobodyServer {
    fn start() -> Self {
        let mut child = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "/usr/bin/python3",
            ])
            .arg(peer("http_server.py"))
            .env("OTEL_SERVICE_NAME", "py-caps")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("setpriv and /usr/bin/python3 must be installed");
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        let guard = ChildGuard::new("http_server.py as nobody", child);
        let port = wait_line(&mut out, "PORT ", Duration::from_secs(20))
            .parse()
            .expect("port number");
        Self {
            _guard: guard,
            port,
        }
    }
}

/// The agent under `setpriv` (util-linux) with these extra arguments, its output collected.
struct Limited {
    guard: ChildGuard,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

fn pipe(mut r: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let out = Arc::new(Mutex::new(String::new()));
    let into = out.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .expect("lock")
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    out
}

impl Limited {
    fn start(setpriv: &[&str], args: &[&str]) -> Self {
        require_root();
        let mut child = Command::new("setpriv")
            .args(setpriv)
            .arg(agent_bin())
            .args(args)
            .args(["--stats-interval", "0"])
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("setpriv (util-linux) must be installed");
        let stdout = pipe(child.stdout.take().expect("piped"));
        let stderr = pipe(child.stderr.take().expect("piped"));
        Self {
            guard: ChildGuard::new("socktrace", child),
            stdout,
            stderr,
        }
    }
    fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }
    fn stdout(&self) -> String {
        self.stdout.lock().expect("lock").clone()
    }
    /// Waits until the probes are attached; panics with the output if the agent exits first.
    fn attached(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.stderr().contains("tracepoints attached") {
            if let Ok(Some(status)) = self.guard.child.try_wait() {
                panic!("agent exited with {status}:\n{}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "not attached:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    /// Requests `path` until its span is printed; returns the span line.
    fn span_for(&self, server: &NobodyServer, path: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            curl(&[&format!("http://127.0.0.1:{}{path}", server.port)]);
            std::thread::sleep(Duration::from_millis(300));
            if let Some(line) = self
                .stdout()
                .lines()
                .find(|l| l.contains(" SERVER ") && l.contains(&format!("url={path}")))
            {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no span for {path}:\n{}",
                self.stderr()
            );
        }
    }
}

/// The capabilities of the DaemonSet, as the only ones root may hold.
const DAEMONSET: &str = "-all,+bpf,+perfmon,+sys_ptrace,+dac_read_search,+net_admin";

#[test]
fn the_daemonset_capabilities_are_enough() {
    let server = NobodyServer::start();
    let port = server.port.to_string();
    let mut agent = Limited::start(
        &[&format!("--bounding-set={DAEMONSET}")],
        &["--port", &port],
    );
    agent.attached();
    assert!(
        !agent.stderr().contains("warning"),
        "no capability is missing:\n{}",
        agent.stderr()
    );
    // The server runs as another user: its OTEL_SERVICE_NAME is read all the same.
    let span = agent.span_for(&server, "/daemonset");
    assert!(span.contains(" py-caps SERVER "), "{span}");
}

#[test]
fn without_ptrace_and_dac_it_warns_and_names_by_executable() {
    let server = NobodyServer::start();
    let port = server.port.to_string();
    let mut agent = Limited::start(&["--bounding-set=-all,+bpf,+perfmon"], &["--port", &port]);
    agent.attached();
    let stderr = agent.stderr();
    assert!(
        stderr.contains(
            "socktrace: warning: missing CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH: /proc/PID/environ"
        ),
        "{stderr}"
    );
    // Still traced, but the environment (and OTEL_SERVICE_NAME) could not be read, as warned.
    let span = agent.span_for(&server, "/degraded");
    assert!(!span.contains("py-caps"), "{span}");
    assert!(span.contains(" SERVER "), "{span}");
}

#[test]
fn a_user_that_cannot_read_tracefs_is_told_what_to_grant() {
    require_root();
    let o = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all,+bpf,+perfmon",
            "--ambient-caps=-all,+bpf,+perfmon",
        ])
        .arg(agent_bin())
        .output()
        .expect("setpriv (util-linux) must be installed");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(
        err.trim_end(),
        "socktrace: tracefs at /sys/kernel/tracing is not readable by this user: run as uid 0 or grant CAP_DAC_READ_SEARCH"
    );
}
