//! Running real programs in tests: the agent binary, peers (Python servers, curl), each owned by
//! a guard that kills it on drop, so a failing test leaves nothing running or attached.

use std::{
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Fails the test loudly unless it runs as root: tests load real eBPF programs.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test loads eBPF programs and must run as root (run `cargo xtask test` as root)"
    );
}

/// Workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate is inside the workspace")
        .to_path_buf()
}

/// The agent binary under test: `$SOCKTRACE_BIN` (set by `cargo xtask test`), else the release
/// build in the workspace target directory.
pub fn agent_bin() -> PathBuf {
    let bin = std::env::var_os("SOCKTRACE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/release/socktrace"));
    assert!(
        bin.exists(),
        "agent binary {} not found: run `cargo xtask test`, or `cargo build --release -p socktrace` first",
        bin.display()
    );
    bin
}

/// The Python interpreter of the test virtualenv (`$SOCKTRACE_PYTHON`, set by `cargo xtask test`,
/// else `target/pyenv`), which has the packages of `tests/peers/requirements.txt` (grpcio, ...).
pub fn python() -> PathBuf {
    let python = std::env::var_os("SOCKTRACE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/pyenv/bin/python"));
    assert!(
        python.exists(),
        "test virtualenv {} not found: run `cargo xtask test` (it creates it from tests/peers/requirements.txt)",
        python.display()
    );
    python
}

/// Path of a peer script in `tests/peers/`.
pub fn peer(name: &str) -> PathBuf {
    workspace().join("tests/peers").join(name)
}

/// The Go test peer `tests/peers/go/<name>`, built once per test process into
/// `target/go/` with Debian's Go (`golang-go`, installed by `cargo xtask test`) in GOPATH mode
/// against Debian's Go libraries (`/usr/share/gocode`: grpc-go from
/// `golang-google-grpc-dev`), so nothing is downloaded; `stripped` builds it without a symbol
/// table (`-ldflags=-s -w`).
pub fn go_peer(name: &str, stripped: bool) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let out = workspace().join("target/go").join(if stripped {
        format!("{name}-stripped")
    } else {
        name.to_owned()
    });
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if built.contains(&out) {
        return out;
    }
    let mut cmd = Command::new("go");
    cmd.arg("build").arg("-buildvcs=false").arg("-o").arg(&out);
    if stripped {
        cmd.arg("-ldflags=-s -w");
    }
    let result = cmd
        .arg(".")
        .current_dir(peer(&format!("go/{name}")))
        .env("GOCACHE", workspace().join("target/go-cache"))
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .output()
        .unwrap_or_else(|e| panic!("running `go build` (is golang-go installed?): {e}"));
    assert!(
        result.status.success(),
        "go build of tests/peers/go/{name} failed:\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    built.push(out.clone());
    out
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct ChildGuard {
    pub child: Child,
    name: String,
}

impl ChildGuard {
    pub fn new(name: &str, child: Child) -> Self {
        Self {
            child,
            name: name.to_owned(),
        }
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    pub fn stdin(&mut self) -> &mut ChildStdin {
        self.child.stdin.as_mut().expect("stdin was piped")
    }
}

/// A TCP port nobody listens on right now (for servers started by a test).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = &self.name;
    }
}

/// Reads lines of a child's stdout until one starts with `prefix`; returns the rest of it.
pub fn wait_line(out: &mut BufReader<ChildStdout>, prefix: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let mut line = String::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {prefix:?}"
        );
        line.clear();
        let n = out.read_line(&mut line).expect("reading child stdout");
        assert!(n > 0, "child closed stdout before printing {prefix:?}");
        if let Some(rest) = line.trim_end().strip_prefix(prefix) {
            return rest.trim().to_owned();
        }
    }
}

/// The Python `http.server`-based test server (`tests/peers/http_server.py`) on 127.0.0.1.
pub struct PyServer {
    pub guard: ChildGuard,
    pub port: u16,
}

impl PyServer {
    /// Starts the server with extra environment variables (e.g. `OTEL_SERVICE_NAME`).
    pub fn start(env: &[(&str, &str)]) -> Self {
        Self::start_peer(Path::new("python3"), "http_server.py", env)
    }

    /// Starts `tests/peers/<script>` with `python`; the script prints `PORT <n>` when it
    /// listens on 127.0.0.1.
    pub fn start_peer(python: &Path, script: &str, env: &[(&str, &str)]) -> Self {
        Self::start_peer_args(python, script, &[], env)
    }

    /// As [`PyServer::start_peer`], with command-line arguments for the script.
    pub fn start_peer_args(
        python: &Path,
        script: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut cmd = Command::new(python);
        cmd.arg(peer(script))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} {script}: {e}", python.display()));
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        let guard = ChildGuard::new(script, child);
        let port = wait_line(&mut out, "PORT ", Duration::from_secs(20))
            .parse()
            .expect("port number");
        Self { guard, port }
    }
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// Runs one `curl` per URL, all at once (overlapping requests), and waits for all; panics if
/// one fails (`--fail`: an HTTP error status too).
pub fn curl_concurrently(urls: &[String]) {
    curl_concurrently_with(urls, &[]);
}

/// [`curl_concurrently`] with more arguments for each curl (`--cacert`, `--http1.1`...).
pub fn curl_concurrently_with(urls: &[String], args: &[&str]) {
    let curls: Vec<ChildGuard> = urls
        .iter()
        .map(|url| {
            let child = Command::new("curl")
                .args(["-sS", "-o", "/dev/null", "--fail", "--max-time", "60"])
                .args(args)
                .arg(url)
                .stdout(Stdio::null())
                .spawn()
                .expect("curl");
            ChildGuard::new("curl", child)
        })
        .collect();
    for mut c in curls {
        assert!(c.child.wait().expect("curl").success(), "a request failed");
    }
}

/// Runs curl to completion and returns its stdout; panics with stderr on failure.
pub fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .output()
        .expect("curl must be installed");
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The agent under test: started with the given flags, stopped with SIGTERM (and killed if it
/// does not exit) on drop. Its stderr is collected for assertions and failure messages.
pub struct Agent {
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
}

fn collect(mut r: impl Read + Send + 'static, into: Arc<Mutex<String>>, echo: bool) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let s = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if echo {
                        eprint!("[agent] {s}");
                    }
                    into.lock().expect("lock").push_str(&s);
                }
            }
        }
    });
}

impl Agent {
    /// Starts the agent and waits until its probes are attached.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// Starts the agent exporting to `receiver` (in its protocol), tracing the ports `ports`
    /// (`--port` syntax: `80,8080`), with `extra` flags.
    pub fn exporting_to(
        receiver: &crate::otlp_receiver::OtlpReceiver,
        ports: &str,
        extra: &[&str],
    ) -> Self {
        use crate::otlp_receiver::Protocol;
        let endpoint = receiver.endpoint();
        let protocol = match receiver.protocol() {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        };
        let mut args = vec![
            "--otlp-endpoint",
            &endpoint,
            "--otlp-protocol",
            protocol,
            "--port",
            ports,
        ];
        args.extend_from_slice(extra);
        Self::start(&args)
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        require_root();
        let mut cmd = Command::new(agent_bin());
        cmd.args(args)
            .args(["--stats-interval", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The agent must not inherit exporter settings or flags (every flag has a
        // `SOCKTRACE_*` variable) from the test environment; the log filter may come through.
        for (k, _) in std::env::vars() {
            if k.starts_with("OTEL_") || (k.starts_with("SOCKTRACE_") && k != "SOCKTRACE_LOG") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("starting the agent");
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout = Arc::new(Mutex::new(String::new()));
        collect(child.stderr.take().expect("piped"), stderr.clone(), true);
        collect(child.stdout.take().expect("piped"), stdout.clone(), false);
        let mut agent = Self {
            child: Some(child),
            stderr,
            stdout,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if agent.stderr().contains("tracepoints attached") {
                break;
            }
            if let Some(status) = agent
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "agent exited with {status} before attaching:\n{}",
                    agent.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "agent did not attach within 60s:\n{}",
                agent.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        agent
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    /// Waits until the agent logs a line containing `needle` (a generous deadline: it is an
    /// event, not a timing), and returns that line.
    pub fn wait_stderr(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let err = self.stderr();
            if let Some(line) = err.lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "agent never logged {needle:?}:\n{err}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().expect("lock").clone()
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                // Let the collector threads drain the pipes.
                std::thread::sleep(Duration::from_millis(100));
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "agent did not exit within 20s of SIGTERM:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Every counter of the agent's `final counters` log line (logged at stop), as
/// `group.name` -> value (`conns.live`, `export.queued`, ...).
pub fn all_final_counters(stderr: &str) -> std::collections::HashMap<String, u64> {
    let line = stderr
        .lines()
        .rfind(|l| l.contains("final counters: "))
        .unwrap_or_else(|| panic!("no final counters:\n{stderr}"));
    let rest = line
        .split_once("final counters: ")
        .map(|(_, r)| r)
        .expect("prefix");
    let mut out = std::collections::HashMap::new();
    for group in rest.split(" | ") {
        if let Some(name) = group.trim().strip_suffix(':')
            && !name.contains(' ')
        {
            // A group with nothing in it (per-service completeness before any span).
            continue;
        }
        let (name, values) = group
            .split_once(": ")
            .unwrap_or_else(|| panic!("bad group {group:?} in {line}"));
        for kv in values.split(' ') {
            let (k, v) = kv
                .split_once('=')
                .unwrap_or_else(|| panic!("bad counter {kv:?} in {line}"));
            out.insert(format!("{}.{k}", name.trim()), v.parse().expect("a number"));
        }
    }
    out
}

/// One group (`kernel`, `conns`, `export`, ...) of the agent's `final counters` log line, as
/// name -> value.
pub fn final_counters(stderr: &str, group: &str) -> std::collections::HashMap<String, u64> {
    let prefix = format!("{group}.");
    let values: std::collections::HashMap<String, u64> = all_final_counters(stderr)
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|name| (name.to_owned(), v)))
        .collect();
    assert!(!values.is_empty(), "no {group} counters:\n{stderr}");
    values
}

/// A `/proc/<pid>/status` value in KiB (`VmRSS`, `VmHWM`).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("process {pid} gone: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Writes `data` to a new temporary file and returns its path.
pub fn temp_file(name: &str, data: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("socktrace-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(data))
        .expect("temp file");
    path
}

/// Spans of one kind, in start order.
pub fn of_kind(
    spans: &[crate::otlp_receiver::ReceivedSpan],
    kind: opentelemetry_proto::tonic::trace::v1::span::SpanKind,
) -> Vec<crate::otlp_receiver::ReceivedSpan> {
    let mut v: Vec<_> = spans.iter().filter(|s| s.kind() == kind).cloned().collect();
    v.sort_by_key(|s| s.span.start_time_unix_nano);
    v
}

/// Waits (up to 30 s) until `server` SERVER spans and `client` CLIENT spans arrived, then waits
/// a little longer and checks that no more arrive: the counts must be exact. Returns both
/// lists in start order.
pub fn exact(
    receiver: &crate::otlp_receiver::OtlpReceiver,
    server: usize,
    client: usize,
) -> (
    Vec<crate::otlp_receiver::ReceivedSpan>,
    Vec<crate::otlp_receiver::ReceivedSpan>,
) {
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    receiver
        .wait_for_blocking(
            |s| {
                of_kind(s, SpanKind::Server).len() >= server
                    && of_kind(s, SpanKind::Client).len() >= client
            },
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_millis(1500));
    let spans = receiver.spans();
    let dump = || spans.iter().map(|s| format!("  {s}\n")).collect::<String>();
    let (s, c) = (
        of_kind(&spans, SpanKind::Server),
        of_kind(&spans, SpanKind::Client),
    );
    assert_eq!(s.len(), server, "server spans:\n{}", dump());
    assert_eq!(c.len(), client, "client spans:\n{}", dump());
    (s, c)
}

/// No name, attribute, status message or resource value of any span contains one of the
/// secrets (ids and timestamps are numbers, not text the agent copied from traffic).
pub fn assert_not_exported(spans: &[crate::otlp_receiver::ReceivedSpan], secrets: &[&str]) {
    for span in spans {
        let mut texts = vec![span.name().to_owned(), span.status_message().to_owned()];
        texts.extend(span.attributes().values().map(|v| format!("{v:?}")));
        texts.extend(span.resource.values().map(|v| format!("{v:?}")));
        for secret in secrets {
            assert!(
                !texts.iter().any(|t| t.contains(secret)),
                "{secret:?} exported in {span}"
            );
        }
    }
}

/// A value of the agent's `/metrics` (served with `--health-listen HEALTH`), if present.
pub fn metric(health: &str, name: &str) -> Option<u64> {
    curl(&[&format!("http://{health}/metrics")])
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// The values of the samples of `name` in a Prometheus text whose labels contain every one of
/// `labels` (`key="value"`).
pub fn prom(text: &str, name: &str, labels: &[&str]) -> Vec<u64> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labelset, value) = rest.strip_prefix('{')?.rsplit_once("} ")?;
            labels
                .iter()
                .all(|want| labelset.split(',').any(|have| have == *want))
                .then(|| value.parse().ok())?
        })
        .collect()
}

/// Polls `/metrics` until `name` has `value` (counts, not timing: the deadline is generous).
pub fn wait_metric(health: &str, name: &str, value: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = metric(health, name);
        if now == Some(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} is {now:?}, expected {value}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until `/metrics` shows `name` unchanged for a second (counts, not timing: the
/// deadline is generous).
pub fn wait_until_stable(health: &str, name: &str) {
    let read = || metric(health, name).unwrap_or_else(|| panic!("no {name} in /metrics"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = read();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let now = read();
        if now == last {
            return;
        }
        assert!(Instant::now() < deadline, "{name} still moving: {now}");
        last = now;
    }
}

/// Sends `sig` to a process the caller started.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: signalling a child process of the caller.
    let rc = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

/// Names of the eBPF programs loaded in the kernel right now (`bpftool prog show`), to check
/// that an agent left nothing behind.
pub fn loaded_programs() -> Vec<String> {
    let out = Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .expect("bpftool must be installed (cargo xtask test installs it)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(" name ").map(|(_, rest)| rest))
        .filter_map(|rest| rest.split_whitespace().next().map(str::to_owned))
        .collect()
}
