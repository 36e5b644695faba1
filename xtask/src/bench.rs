//! `cargo xtask bench`: the agent's cost on a real server, as ratios against a baseline measured
//! side by side (alternating rounds on the same machine), never as absolute times: the machine
//! is shared and noisy, so only same-run comparisons mean anything.
//!
//! Workload: nginx (one worker) answering a small keep-alive response to wrk on loopback. That
//! is the worst case for a socket tracer - almost no work per request besides the I/O it traces.
//! The agent traces nginx (`--exe nginx`) and exports every span over OTLP/HTTP to a local sink.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Stops a child on drop: SIGTERM first (nginx's master then stops its workers; SIGKILL would
/// orphan them), SIGKILL if it is still there after 5 s.
struct Guard(Child);
impl Drop for Guard {
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

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Throughput (req/s) and p99 latency (µs) from `wrk --latency` output.
fn parse_wrk(out: &str) -> anyhow::Result<(f64, f64)> {
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .context("no Requests/sec in wrk output")?;
    let p99 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(str::trim)
        .and_then(|v| {
            let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic())?);
            let num: f64 = num.parse().ok()?;
            Some(match unit {
                "us" => num,
                "ms" => num * 1e3,
                "s" => num * 1e6,
                _ => return None,
            })
        })
        .context("no 99% latency in wrk output")?;
    Ok((rps, p99))
}

fn wrk(port: u16, seconds: u64) -> anyhow::Result<(f64, f64)> {
    let out = Command::new("wrk")
        .args(["-t1", "-c16", &format!("-d{seconds}s"), "--latency"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .context("running wrk")?;
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s[s.rfind(')')? + 1..].to_owned();
            let f: Vec<&str> = after.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

/// Peak resident set (VmHWM) in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn start_nginx(dir: &Path, port: u16) -> anyhow::Result<Guard> {
    std::fs::create_dir_all(dir.join("logs"))?;
    let conf = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log stderr error;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           server {{\n    listen 127.0.0.1:{port};\n    location / {{ return 200 \"hello from nginx\\n\"; }}\n  }}\n}}\n",
        d = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let child = Command::new("/usr/sbin/nginx")
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .context("starting nginx")?;
    let guard = Guard(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nginx did not listen on {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(guard)
}

struct AgentRun {
    rps: f64,
    p99_us: f64,
    cpu_ticks: u64,
    peak_rss_kib: u64,
    requests: f64,
    exported: u64,
    /// What the agent reported for verifying and attaching its programs.
    load_s: f64,
}

fn run_with_agent(bin: &Path, port: u16, sink: u16, seconds: u64) -> anyhow::Result<AgentRun> {
    let mut child = Command::new(bin)
        .args([
            "--exe",
            "nginx",
            "--stats-interval",
            "0",
            "--otlp-protocol",
            "http/protobuf",
        ])
        .arg("--otlp-endpoint")
        .arg(format!("http://127.0.0.1:{sink}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the agent")?;
    let pid = child.id();
    let mut err = BufReader::new(child.stderr.take().context("stderr")?);
    let guard = Guard(child);
    let mut line = String::new();
    loop {
        line.clear();
        if err.read_line(&mut line)? == 0 {
            bail!("agent exited before attaching");
        }
        if line.contains("tracepoints attached") {
            break;
        }
    }
    let load_s = line
        .split("attached in ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no load time in the agent's summary line")?;
    let cpu0 = cpu_ticks(pid);
    let (rps, p99_us) = wrk(port, seconds)?;
    // Let the pipeline drain what the kernel buffered during the run before reading its cost.
    std::thread::sleep(Duration::from_millis(500));
    let cpu = cpu_ticks(pid).saturating_sub(cpu0);
    let rss = peak_rss_kib(pid);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut err, &mut rest);
    drop(guard);
    let exported = rest
        .split_whitespace()
        .find_map(|w| w.strip_prefix("exported="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(AgentRun {
        rps,
        p99_us,
        cpu_ticks: cpu,
        peak_rss_kib: rss,
        requests: rps * seconds as f64,
        exported,
        load_s,
    })
}

pub fn bench(root: &Path, bin: &Path, rounds: usize, seconds: u64) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("socktrace-bench-{}", std::process::id()));
    let port = free_port()?;
    let _nginx = start_nginx(&dir, port)?;
    let mut sink = Command::new("python3")
        .arg(root.join("tests/peers/otlp_sink.py"))
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the OTLP sink")?;
    let mut sink_out = BufReader::new(sink.stdout.take().context("stdout")?);
    let _sink = Guard(sink);
    let mut line = String::new();
    sink_out.read_line(&mut line)?;
    let sink_port: u16 = line
        .trim()
        .strip_prefix("PORT ")
        .context("sink port")?
        .parse()?;

    // Warm-up, not counted.
    wrk(port, 2)?;
    let (mut base_rps, mut base_p99, mut runs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (rps, p99) = wrk(port, seconds)?;
        base_rps.push(rps);
        base_p99.push(p99);
        let run = run_with_agent(bin, port, sink_port, seconds)?;
        eprintln!(
            "bench: round {}: baseline {rps:.0} req/s p99 {p99:.0}us | agent {:.0} req/s p99 {:.0}us",
            round + 1,
            run.rps,
            run.p99_us
        );
        runs.push(run);
    }
    let ticks = 100.0; // USER_HZ on Linux
    let agent_rps = median(runs.iter().map(|r| r.rps).collect());
    let agent_p99 = median(runs.iter().map(|r| r.p99_us).collect());
    let cpu_per_k = median(
        runs.iter()
            .map(|r| r.cpu_ticks as f64 / ticks * 1e3 / (r.requests / 1e3).max(1.0))
            .collect(),
    );
    let rss = runs.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0);
    let load_median = median(runs.iter().map(|r| r.load_s).collect());
    let load_max = runs.iter().map(|r| r.load_s).fold(0.0, f64::max);
    let exported: u64 = runs.iter().map(|r| r.exported).sum();
    let requests: f64 = runs.iter().map(|r| r.requests).sum();
    let (b_rps, b_p99) = (median(base_rps), median(base_p99));
    let report = format!(
        "# socktrace benchmark\n\n\
         nginx (1 worker, keep-alive, 17-byte response) driven by wrk -t1 -c16 for {seconds}s, \
         {rounds} alternating rounds; medians.\n\n\
         | measure | baseline | with socktrace | ratio |\n|---|---|---|---|\n\
         | throughput (req/s) | {b_rps:.0} | {agent_rps:.0} | {:.3} |\n\
         | p99 latency (us) | {b_p99:.0} | {agent_p99:.0} | {:.3} |\n\n\
         agent CPU: {cpu_per_k:.1} ms per 1000 requests traced; agent peak RSS: {:.1} MiB; \
         spans exported: {exported} for about {requests:.0} requests.\n\n\
         Start-up (every kernel program verified and attached, default configuration with \
         `--exe nginx`): median {load_median:.2} s, worst {load_max:.2} s (budget 2 s: {}).\n",
        agent_rps / b_rps,
        agent_p99 / b_p99,
        rss as f64 / 1024.0,
        if load_max <= 2.0 { "within" } else { "OVER" },
    );
    let out = root.join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("report.md"), &report)?;
    println!("{report}");
    eprintln!("bench: report written to target/bench/report.md");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let out = "Running 2s test\n  Latency Distribution\n     50%  120.00us\n     99%    1.50ms\n\
                   Requests/sec:  45123.45\nTransfer/sec: 5MB\n";
        let (rps, p99) = parse_wrk(out).unwrap();
        assert!((rps - 45123.45).abs() < 1e-6);
        assert!((p99 - 1500.0).abs() < 1e-6);
    }
}
