//! `cargo xtask bench`: the agent's cost on a real server, as ratios against a baseline measured
//! side by side (alternating rounds on the same machine), never as absolute times: the machine
//! is shared and noisy, so only same-run comparisons mean anything.
//!
//! Workload: nginx (one worker) answering a small keep-alive response to wrk on loopback. That
//! is the worst case for a socket tracer - almost no work per request besides the I/O it traces.
//! The agent traces nginx (`--exe nginx`) and exports every span over OTLP/HTTP to a local sink.
//!
//! The same rounds are then run over HTTPS (a second nginx with a certificate made here, wrk over
//! TLS): the agent reads the plaintext at OpenSSL with uprobes, which cost more than the socket
//! hooks, so the HTTPS ratio is reported beside the cleartext one.
//!
//! Usage: `bench [--rounds N] [--seconds S]`; writes `target/bench/report.md`. Needs root.

use std::time::Duration;

use clap::Parser;
use socktrace_tests::{
    harness::{Agent, final_counters, free_port, proc_status_kib},
    load::{
        BpfStats, Nginx, TestCert, cpu_ticks, median, prog_delta, prog_stats, report_dir,
        write_report, wrk,
    },
    otlp_receiver::{OtlpReceiver, Protocol},
};

#[derive(Parser)]
struct Args {
    /// Alternating baseline/agent rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds of load per round.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

struct AgentRun {
    rps: f64,
    p99_us: f64,
    cpu_ticks: u64,
    peak_rss_kib: u64,
    requests: u64,
    exported: u64,
    /// What the agent reported for verifying and attaching its programs.
    load_s: f64,
}

fn run_with_agent(nginx: &Nginx, sink: &str, seconds: u64) -> Result<AgentRun, String> {
    let mut agent = Agent::start(&[
        "--exe",
        "nginx",
        "--otlp-protocol",
        "http/protobuf",
        "--otlp-endpoint",
        sink,
    ]);
    let pid = agent.pid();
    let load_s = agent
        .stderr()
        .split("attached in ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or("no load time in the agent's summary line")?;
    let cpu0 = cpu_ticks(pid);
    let run = wrk(&nginx.url(), seconds, 16, &[])?;
    // Let the pipeline drain what the kernel buffered during the run before reading its cost.
    std::thread::sleep(Duration::from_millis(500));
    let cpu = cpu_ticks(pid).saturating_sub(cpu0);
    let rss = proc_status_kib(pid, "VmHWM");
    agent.stop();
    let exported = final_counters(&agent.stderr(), "export")
        .get("exported")
        .copied()
        .unwrap_or(0);
    Ok(AgentRun {
        rps: run.rps,
        p99_us: run.p99_us,
        cpu_ticks: cpu,
        peak_rss_kib: rss,
        requests: run.requests,
        exported,
        load_s,
    })
}

/// One more agent round with the kernel's per-program statistics on (they add a clock read to
/// every run, so this round's throughput is not used): where the kernel time goes, per request.
fn profile(nginx: &Nginx, sink: &str, seconds: u64) -> Result<String, String> {
    let _stats = BpfStats::enable().map_err(|e| format!("kernel.bpf_stats_enabled: {e}"))?;
    let mut agent = Agent::start(&[
        "--exe",
        "nginx",
        "--otlp-protocol",
        "http/protobuf",
        "--otlp-endpoint",
        sink,
    ]);
    let before = prog_stats();
    let run = wrk(&nginx.url(), seconds, 16, &[])?;
    let after = prog_stats();
    agent.stop();
    let records = final_counters(&agent.stderr(), "pipeline")
        .get("records")
        .copied()
        .unwrap_or(0);
    let per_req = |v: u64| v as f64 / run.requests.max(1) as f64;
    let mut table = String::from(
        "| kernel program | runs per request | ns per run | ns per request |\n|---|---|---|---|\n",
    );
    let mut total = 0.0;
    for (name, runs, ns) in prog_delta(&before, &after) {
        total += per_req(ns);
        table.push_str(&format!(
            "| `{name}` | {:.2} | {:.0} | {:.0} |\n",
            per_req(runs),
            ns as f64 / runs as f64,
            per_req(ns)
        ));
    }
    table.push_str(&format!("| **all** | | | **{total:.0}** |\n"));
    Ok(format!(
        "## Where the kernel time goes\n\nOne more round of {seconds} s with \
         `kernel.bpf_stats_enabled=1` ({} requests at {:.0} req/s; not used for the ratios above, \
         the statistics cost a clock read per run). Both sides (nginx and wrk) run on this host, \
         so a request is traced twice: once in each process. Ring-buffer records per request: \
         {:.2}.\n\n{table}",
        run.requests,
        run.rps,
        per_req(records)
    ))
}

/// What alternating rounds measured: the baseline's throughput and p99 per round, and the
/// agent runs.
struct Rounds {
    base_rps: Vec<f64>,
    base_p99: Vec<f64>,
    runs: Vec<AgentRun>,
}

/// Alternating baseline and agent rounds against `nginx`.
fn rounds_against(
    nginx: &Nginx,
    sink: &str,
    rounds: usize,
    seconds: u64,
) -> Result<Rounds, String> {
    // Warm-up, not counted.
    wrk(&nginx.url(), 2, 16, &[])?;
    let (mut base_rps, mut base_p99, mut runs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let base = wrk(&nginx.url(), seconds, 16, &[])?;
        base_rps.push(base.rps);
        base_p99.push(base.p99_us);
        let run = run_with_agent(nginx, sink, seconds)?;
        eprintln!(
            "bench: {} round {}: baseline {:.0} req/s p99 {:.0}us | agent {:.0} req/s p99 {:.0}us",
            nginx.url(),
            round + 1,
            base.rps,
            base.p99_us,
            run.rps,
            run.p99_us
        );
        runs.push(run);
    }
    Ok(Rounds {
        base_rps,
        base_p99,
        runs,
    })
}

fn main() -> Result<(), String> {
    let Args { rounds, seconds } = Args::parse();
    let (rounds, seconds) = (rounds.max(1), seconds.max(1));
    let nginx = Nginx::start(free_port())?;
    // Accepts everything, counts nothing: the benchmark measures the agent, not a receiver.
    let sink = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
    sink.forget_bodies();

    let Rounds {
        base_rps,
        base_p99,
        runs,
    } = rounds_against(&nginx, &sink.endpoint(), rounds, seconds)?;
    let ticks = 100.0; // USER_HZ on Linux
    let agent_rps = median(runs.iter().map(|r| r.rps).collect());
    let agent_p99 = median(runs.iter().map(|r| r.p99_us).collect());
    let cpu_per_k = median(
        runs.iter()
            .map(|r| r.cpu_ticks as f64 / ticks * 1e3 / (r.requests as f64 / 1e3).max(1.0))
            .collect(),
    );
    let rss = runs.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0);
    let load_median = median(runs.iter().map(|r| r.load_s).collect());
    let load_max = runs.iter().map(|r| r.load_s).fold(0.0, f64::max);
    let exported: u64 = runs.iter().map(|r| r.exported).sum();
    let requests: u64 = runs.iter().map(|r| r.requests).sum();
    let (b_rps, b_p99) = (median(base_rps), median(base_p99));
    let report = format!(
        "# socktrace benchmark\n\n\
         nginx (1 worker, keep-alive, 17-byte response) driven by wrk -t1 -c16 for {seconds}s, \
         {rounds} alternating rounds; medians.\n\n\
         | measure | baseline | with socktrace | ratio |\n|---|---|---|---|\n\
         | throughput (req/s) | {b_rps:.0} | {agent_rps:.0} | {:.3} |\n\
         | p99 latency (us) | {b_p99:.0} | {agent_p99:.0} | {:.3} |\n\n\
         agent CPU: {cpu_per_k:.1} ms per 1000 requests traced; agent peak RSS: {:.1} MiB; \
         spans exported: {exported} for {requests} requests.\n\n\
         Start-up (every kernel program verified and attached, default configuration with \
         `--exe nginx`): median {load_median:.2} s, worst {load_max:.2} s (budget 2 s: {}).\n",
        agent_rps / b_rps,
        agent_p99 / b_p99,
        rss as f64 / 1024.0,
        if load_max <= 2.0 { "within" } else { "OVER" },
    );
    let cert = TestCert::make()?;
    let https = cert.nginx()?;
    let Rounds {
        base_rps: tb_rps,
        base_p99: tb_p99,
        runs: truns,
    } = rounds_against(&https, &sink.endpoint(), rounds, seconds)?;
    let t_rps = median(truns.iter().map(|r| r.rps).collect());
    let t_p99 = median(truns.iter().map(|r| r.p99_us).collect());
    let (tb_rps, tb_p99) = (median(tb_rps), median(tb_p99));
    let t_exported: u64 = truns.iter().map(|r| r.exported).sum();
    let t_requests: u64 = truns.iter().map(|r| r.requests).sum();
    let tls = format!(
        "## HTTPS\n\nThe same rounds against nginx over TLS (OpenSSL, the agent reading the \
         plaintext with uprobes on `libssl`; wrk maps the same library, so its calls hit the \
         probes too and are dropped there as untraced).\n\n\
         | measure | baseline | with socktrace | ratio |\n|---|---|---|---|\n\
         | throughput (req/s) | {tb_rps:.0} | {t_rps:.0} | {:.3} |\n\
         | p99 latency (us) | {tb_p99:.0} | {t_p99:.0} | {:.3} |\n\n\
         spans exported: {t_exported} for {t_requests} requests. Throughput ratio over HTTPS \
         against the ratio over cleartext: {:.3}.\n",
        t_rps / tb_rps,
        t_p99 / tb_p99,
        (t_rps / tb_rps) / (agent_rps / b_rps),
    );
    let profile = profile(&nginx, &sink.endpoint(), seconds)?;
    write_report(&report_dir("bench"), &format!("{report}\n{tls}\n{profile}"))
        .map_err(|e| e.to_string())
}
