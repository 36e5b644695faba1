//! Load for the benchmark and the soak run: nginx answering a small response, driven by `wrk`,
//! and readings of a process's CPU time and memory. Results are compared as ratios of runs made
//! side by side on this machine, never against absolute times.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A child stopped on drop: SIGTERM first (nginx's master then stops its workers; SIGKILL would
/// orphan them), SIGKILL if it is still there after 5 s.
pub struct Stopped(pub Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// nginx with one worker on 127.0.0.1, answering every request with 200 and a 17-byte body
/// (404 under `/missing`); its files live in a directory of its own, removed on drop.
pub struct Nginx {
    pub port: u16,
    child: Option<Stopped>,
    dir: PathBuf,
    tls: bool,
}

/// A certificate and its key, as PEM files.
pub struct Cert<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
}

/// A self-signed certificate for 127.0.0.1 (`cert.pem`, `key.pem`) made with `openssl` in a
/// directory of its own, removed on drop.
pub struct TestCert {
    dir: PathBuf,
}

impl TestCert {
    pub fn make() -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!(
            "socktrace-tls-{}-{}",
            std::process::id(),
            crate::harness::free_port()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let cert = Self { dir };
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args([
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            .arg("-keyout")
            .arg(cert.key())
            .arg("-out")
            .arg(cert.cert())
            .output()
            .map_err(|e| format!("running openssl (is it installed?): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "openssl req: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(cert)
    }
    pub fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
    /// nginx serving HTTPS with this certificate.
    pub fn nginx(&self) -> Result<Nginx, String> {
        Nginx::start_with(
            crate::harness::free_port(),
            Some(Cert {
                cert: &self.cert(),
                key: &self.key(),
            }),
        )
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Nginx {
    pub fn start(port: u16) -> Result<Self, String> {
        Self::start_with(port, None)
    }

    /// With `tls`, HTTPS (OpenSSL through nginx's shared libssl) with that certificate.
    pub fn start_with(port: u16, tls: Option<Cert<'_>>) -> Result<Self, String> {
        Self::launch(port, tls, None)
    }

    /// For `connections` open connections at once (more than the default 4096): the worker's
    /// connection and open-file limits raised, and keep-alive connections kept for the whole
    /// run (no request limit, a 300 s idle timeout).
    pub fn start_for_connections(port: u16, connections: u32) -> Result<Self, String> {
        Self::launch(port, None, Some(connections))
    }

    fn launch(port: u16, tls: Option<Cert<'_>>, connections: Option<u32>) -> Result<Self, String> {
        let listen = match &tls {
            None => format!("listen 127.0.0.1:{port};"),
            Some(c) => format!(
                "listen 127.0.0.1:{port} ssl;\n    ssl_certificate {};\n    ssl_certificate_key {};",
                c.cert.display(),
                c.key.display()
            ),
        };
        let dir =
            std::env::temp_dir().join(format!("socktrace-nginx-{}-{port}", std::process::id()));
        std::fs::create_dir_all(dir.join("logs")).map_err(|e| format!("{}: {e}", dir.display()))?;
        let (limits, events, keepalive) = match connections {
            None => (String::new(), 4096, ""),
            Some(c) => (
                format!("worker_rlimit_nofile {};\n", c + 2048),
                c + 1024,
                "  keepalive_requests 100000000;\n  keepalive_timeout 300s;\n",
            ),
        };
        let conf = format!(
            "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log stderr error;\n{limits}\
             events {{ worker_connections {events}; }}\n\
             http {{\n{keepalive}  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               server {{\n    {listen}\n    location / {{ return 200 \"hello from nginx\\n\"; }}\n    location /missing {{ return 404 \"missing\\n\"; }}\n  }}\n}}\n",
            d = dir.display()
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).map_err(|e| format!("{}: {e}", path.display()))?;
        let child = Command::new("/usr/sbin/nginx")
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting /usr/sbin/nginx (is nginx installed?): {e}"))?;
        let nginx = Self {
            port,
            child: Some(Stopped(child)),
            dir,
            tls: tls.is_some(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(format!("nginx did not listen on {port}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(nginx)
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        drop(self.child.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What one `wrk --latency` run measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Wrk {
    pub rps: f64,
    pub requests: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Socket errors and non-2xx answers.
    pub errors: u64,
}

fn latency_us(v: &str) -> Option<f64> {
    let v = v.trim();
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic())?);
    let num: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => num,
        "ms" => num * 1e3,
        "s" => num * 1e6,
        _ => return None,
    })
}

/// Parses `wrk --latency` output.
pub fn parse_wrk(out: &str) -> Result<Wrk, String> {
    let line = |prefix: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::trim))
    };
    let rps = line("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .ok_or("no Requests/sec in wrk output")?;
    let p50_us = line("50%")
        .and_then(latency_us)
        .ok_or("no 50% latency in wrk output")?;
    let p99_us = line("99%")
        .and_then(latency_us)
        .ok_or("no 99% latency in wrk output")?;
    // "  123456 requests in 10.00s, 17.66MB read"
    let requests = out
        .lines()
        .find_map(|l| {
            let (n, rest) = l.trim().split_once(' ')?;
            rest.starts_with("requests in").then(|| n.parse().ok())?
        })
        .ok_or("no request count in wrk output")?;
    // "  Socket errors: connect 0, read 0, write 0, timeout 0" and "  Non-2xx or 3xx responses: 5"
    let mut errors = 0;
    if let Some(s) = line("Socket errors:") {
        errors += s
            .split(',')
            .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    if let Some(n) = line("Non-2xx or 3xx responses:").and_then(|v| v.parse::<u64>().ok()) {
        errors += n;
    }
    Ok(Wrk {
        rps,
        requests,
        p50_us,
        p99_us,
        errors,
    })
}

/// Runs `wrk --latency` with `connections` connections on one thread against `url`, with
/// extra `-H` headers.
pub fn wrk(url: &str, seconds: u64, connections: u32, headers: &[&str]) -> Result<Wrk, String> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t1",
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd
        .arg(url)
        .output()
        .map_err(|e| format!("running wrk (is it installed?): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "wrk failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

/// The command name and utime + stime (clock ticks) of a `/proc/.../stat` file.
fn stat_ticks(path: &str) -> Option<(String, u64)> {
    let s = std::fs::read_to_string(path).ok()?;
    let (open, close) = (s.find('(')?, s.rfind(')')?);
    let f: Vec<&str> = s[close + 1..].split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((s[open + 1..close].to_owned(), ticks))
}

/// utime + stime of a process, in clock ticks (0 once it is gone).
pub fn cpu_ticks(pid: u32) -> u64 {
    stat_ticks(&format!("/proc/{pid}/stat")).map_or(0, |(_, t)| t)
}

/// utime + stime of each live thread of a process, in clock ticks, with the thread's name
/// (`comm`: at most 15 bytes of what the thread was named). Threads that already exited are
/// not listed; their time is only in [`cpu_ticks`].
pub fn thread_ticks(pid: u32) -> Vec<(String, u64)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .filter_map(|e| stat_ticks(&format!("{}/stat", e.ok()?.path().display())))
        .collect()
}

/// Open file descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Run time statistics of one loaded eBPF program (`kernel.bpf_stats_enabled`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgStats {
    pub id: u32,
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// Parses `bpftool prog show` output: each program's first line is
/// `ID: TYPE  name NAME  tag ...  [run_time_ns N run_cnt N]`.
pub fn parse_prog_stats(out: &str) -> Vec<ProgStats> {
    out.lines()
        .filter_map(|l| {
            let (id, rest) = l.split_once(':')?;
            let id = id.trim().parse().ok()?;
            let words: Vec<&str> = rest.split_whitespace().collect();
            let after = |key: &str| {
                let i = words.iter().position(|w| *w == key)?;
                words.get(i + 1).copied()
            };
            Some(ProgStats {
                id,
                name: after("name")?.to_owned(),
                run_time_ns: after("run_time_ns")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                run_cnt: after("run_cnt").and_then(|v| v.parse().ok()).unwrap_or(0),
            })
        })
        .collect()
}

/// Every loaded program's run time statistics now.
pub fn prog_stats() -> Vec<ProgStats> {
    let out = Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    parse_prog_stats(&out)
}

/// Turns the kernel's per-program run time statistics on (they cost a clock read per run)
/// until dropped, restoring what was set before.
pub struct BpfStats {
    before: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub fn enable() -> std::io::Result<Self> {
        let before = std::fs::read_to_string(BPF_STATS)?.trim().to_owned();
        std::fs::write(BPF_STATS, "1")?;
        Ok(Self { before })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, &self.before);
    }
}

/// What each program (by name) ran between two readings: (runs, nanoseconds), busiest first.
pub fn prog_delta(before: &[ProgStats], after: &[ProgStats]) -> Vec<(String, u64, u64)> {
    let mut by_name: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for a in after {
        let b = before.iter().find(|b| b.id == a.id);
        let runs = a.run_cnt - b.map_or(0, |b| b.run_cnt.min(a.run_cnt));
        let ns = a.run_time_ns - b.map_or(0, |b| b.run_time_ns.min(a.run_time_ns));
        if runs > 0 {
            let e = by_name.entry(a.name.clone()).or_default();
            e.0 += runs;
            e.1 += ns;
        }
    }
    let mut v: Vec<(String, u64, u64)> = by_name.into_iter().map(|(n, (r, t))| (n, r, t)).collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.2));
    v
}

/// The median of `v` (the upper one for an even count); 0 for none.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The directory of reports (`target/<name>` in the workspace).
pub fn report_dir(name: &str) -> PathBuf {
    crate::harness::workspace().join("target").join(name)
}

/// Writes `text` to `dir/report.md` and prints it.
pub fn write_report(dir: &Path, text: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("report.md"), text)?;
    println!("{text}");
    eprintln!("report written to {}", dir.join("report.md").display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let out = "Running 2s test @ http://127.0.0.1:1/\n  Latency Distribution\n     50%  120.00us\n\
                   \x20    75%  200.00us\n     99%    1.50ms\n  90246 requests in 2.00s, 12.1MB read\n\
                   \x20 Socket errors: connect 0, read 3, write 0, timeout 2\n\
                   \x20 Non-2xx or 3xx responses: 4\nRequests/sec:  45123.45\nTransfer/sec: 5MB\n";
        let w = parse_wrk(out).unwrap();
        assert!((w.rps - 45123.45).abs() < 1e-6);
        assert!((w.p50_us - 120.0).abs() < 1e-6);
        assert!((w.p99_us - 1500.0).abs() < 1e-6);
        assert_eq!(w.requests, 90246);
        assert_eq!(w.errors, 9);
        assert!(parse_wrk("Requests/sec: 1\n").is_err());
    }

    #[test]
    fn parses_program_statistics_and_their_difference() {
        let out = "785: tracepoint  name sys_exit_read  tag 92d4b670b25a1111  gpl run_time_ns 5000 run_cnt 10\n\
                   \tloaded_at 2026-12-07T01:26:50+0000  uid 0\n\
                   786: tracepoint  name sock_send_length  tag ac668c071af81c4f  gpl\n";
        let before = parse_prog_stats(out);
        assert_eq!(
            before,
            vec![
                ProgStats {
                    id: 785,
                    name: "sys_exit_read".into(),
                    run_time_ns: 5000,
                    run_cnt: 10
                },
                ProgStats {
                    id: 786,
                    name: "sock_send_length".into(),
                    run_time_ns: 0,
                    run_cnt: 0
                },
            ]
        );
        let mut after = before.clone();
        after[0].run_time_ns = 9000;
        after[0].run_cnt = 14;
        after[1].run_time_ns = 300;
        after[1].run_cnt = 3;
        assert_eq!(
            prog_delta(&before, &after),
            vec![
                ("sys_exit_read".to_owned(), 4, 4000),
                ("sock_send_length".to_owned(), 3, 300)
            ]
        );
    }
}
