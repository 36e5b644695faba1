//! `cargo xtask bench`: the agent's cost on real servers, as ratios against a baseline measured
//! side by side (alternating rounds on the same machine), never as absolute times: the machine
//! is shared and noisy, so only same-run comparisons mean anything. Every ratio is printed as
//! the median over the rounds with its spread (each agent round against the baseline round
//! just before it).
//!
//! Scenarios, one table each in the report:
//! - nginx (one worker) answering a small keep-alive response to wrk on loopback. That is the
//!   worst case for a socket tracer - almost no work per request besides the I/O it traces. The
//!   agent traces nginx (`--exe nginx`) and exports every span over OTLP/HTTP to a local sink
//!   that counts the spans it receives.
//! - The same over HTTPS (a second nginx with a certificate made here, wrk over TLS): the agent
//!   reads the plaintext at OpenSSL with uprobes, which cost more than the socket hooks.
//! - A Go `net/http` server over Go's own `crypto/tls` (`tests/peers/go/tlspeer`, built here
//!   with Debian's Go), driven by wrk over HTTPS: the uprobes on `crypto/tls` and on the Go
//!   runtime (goroutine following), the case of most services written in Go.
//! - A Flask JSON service (`tests/peers/bench_flask.py`) untraced, traced by the agent
//!   (`--pid`), and instrumented with the OpenTelemetry Python SDK instead (no agent), in
//!   alternating rounds: our throughput loss against the SDK's.
//! - nginx holding 10,000 open keep-alive connections with 1,000 requests/s spread over them
//!   (the paced generator of `socktrace_tests::paced`): the agent's peak RSS, a span per request.
//! - nginx at a fixed 20,000 requests/s: events the kernel could not queue (`ringbuf_full`) and
//!   spans received against requests sent.
//! - One more nginx round with the kernel's per-program run time statistics on: where the kernel
//!   time goes, per program.
//!
//! For every traced run the agent's cost per request is reported: CPU by stage (per-thread
//! utime + stime: the capture thread, the export threads, the rest), ring-buffer records,
//! capture-loop wake-ups and bytes, and spans received by the sink.
//!
//! Usage: `bench [--rounds N] [--seconds S]`; writes `target/bench/report.md` and a line per
//! round and scenario to stderr. Needs root.

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use clap::Parser;
use socktrace_tests::{
    harness::{
        Agent, all_final_counters, free_port, go_peer, peer, proc_status_kib, python, wait_line,
    },
    load::{
        BpfStats, Nginx, Stopped, TestCert, Wrk, cpu_ticks, median, prog_delta, prog_stats,
        report_dir, thread_ticks, write_report, wrk,
    },
    otlp_receiver::{OtlpReceiver, Protocol},
    paced::{Paced, paced, raise_nofile},
};

#[derive(Parser)]
struct Args {
    /// Alternating baseline/agent rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds of load per round.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Only these scenarios (comma-separated: nginx, https, go, flask, paced, profile; default
    /// all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

/// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ on Linux).
const TICKS_PER_S: f64 = 100.0;

/// The agent's thread names as the kernel keeps them (`comm`, at most 15 bytes): the capture
/// thread (ring-buffer reading, parsing, span building, linking, metrics) and the export
/// runtime's threads (OTLP encoding and sending).
const CAPTURE_THREAD: &str = "socktrace-captu";
const EXPORT_THREAD: &str = "socktrace-expor";

/// CPU of the agent's capture thread and export threads, and of the whole process, in ticks.
#[derive(Clone, Copy, Default)]
struct Cpu {
    capture: u64,
    export: u64,
    total: u64,
}

impl Cpu {
    fn read(pid: u32) -> Self {
        let mut cpu = Self {
            total: cpu_ticks(pid),
            ..Self::default()
        };
        for (name, ticks) in thread_ticks(pid) {
            if name.starts_with(CAPTURE_THREAD) {
                cpu.capture += ticks;
            } else if name.starts_with(EXPORT_THREAD) {
                cpu.export += ticks;
            }
        }
        cpu
    }

    fn since(self, before: Self) -> Self {
        Self {
            capture: self.capture.saturating_sub(before.capture),
            export: self.export.saturating_sub(before.export),
            total: self.total.saturating_sub(before.total),
        }
    }
}

/// What the agent cost during one traced load run, and what it delivered.
#[derive(Clone, Copy, Default)]
struct AgentCost {
    cpu: Cpu,
    peak_rss_kib: u64,
    /// Final counters: ring-buffer records, their bytes, capture-loop wake-ups, events the
    /// kernel dropped because the ring buffer was full.
    records: u64,
    record_bytes: u64,
    wakeups: u64,
    ringbuf_full: u64,
    /// Spans the sink received from this agent.
    received: u64,
    /// What the agent reported for verifying and attaching its programs.
    load_s: f64,
}

/// Starts the agent on `target` (`--exe nginx`, `--pid N`) exporting over OTLP/HTTP to `sink`.
fn start_agent(target: &[&str], sink: &OtlpReceiver) -> Agent {
    let endpoint = sink.endpoint();
    let mut args = vec![
        "--otlp-protocol",
        "http/protobuf",
        "--otlp-endpoint",
        &endpoint,
    ];
    args.extend_from_slice(target);
    Agent::start(&args)
}

/// Runs `load` with the agent tracing `target`, and reads the agent's cost around it.
fn traced<T>(
    target: &[&str],
    sink: &OtlpReceiver,
    load: impl FnOnce() -> Result<T, String>,
) -> Result<(T, AgentCost), String> {
    let mut agent = start_agent(target, sink);
    let pid = agent.pid();
    let load_s = agent
        .stderr()
        .split("attached in ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or("no load time in the agent's summary line")?;
    let spans0 = sink.accepted_span_count();
    let cpu0 = Cpu::read(pid);
    let out = load()?;
    // Let the pipeline drain what the kernel buffered during the run before reading its cost.
    std::thread::sleep(Duration::from_millis(500));
    let cpu = Cpu::read(pid).since(cpu0);
    let peak_rss_kib = proc_status_kib(pid, "VmHWM");
    agent.stop();
    let counters = all_final_counters(&agent.stderr());
    let counter = |name: &str| counters.get(name).copied().unwrap_or(0);
    Ok((
        out,
        AgentCost {
            cpu,
            peak_rss_kib,
            records: counter("pipeline.records"),
            record_bytes: counter("pipeline.record_bytes"),
            wakeups: counter("pipeline.wakeups"),
            ringbuf_full: counter("kernel.ringbuf_full"),
            received: (sink.accepted_span_count() - spans0) as u64,
            load_s,
        },
    ))
}

/// `median (min-max)` of per-round values.
fn spread(v: &[f64], digits: usize) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!(
        "{:.digits$} ({min:.digits$}-{max:.digits$})",
        median(v.to_vec())
    )
}

/// The agent's cost per request over traced runs (`requests` sent in each): one row per
/// measure, median and spread over the runs.
fn cost_table(runs: &[(AgentCost, u64)]) -> String {
    let per_request = |f: &dyn Fn(&AgentCost) -> f64| -> Vec<f64> {
        runs.iter()
            .map(|(c, n)| f(c) / (*n).max(1) as f64)
            .collect()
    };
    let us = |ticks: u64| ticks as f64 / TICKS_PER_S * 1e6;
    let rows: [(&str, Vec<f64>, usize); 8] = [
        (
            "agent CPU, all threads (us)",
            per_request(&|c| us(c.cpu.total)),
            2,
        ),
        (
            "- capture thread: ring buffer, parsing, spans, linking, metrics (us)",
            per_request(&|c| us(c.cpu.capture)),
            2,
        ),
        (
            "- export threads: OTLP encoding and sending (us)",
            per_request(&|c| us(c.cpu.export)),
            2,
        ),
        (
            "- rest (us)",
            per_request(&|c| us(c.cpu.total.saturating_sub(c.cpu.capture + c.cpu.export))),
            2,
        ),
        ("ring-buffer records", per_request(&|c| c.records as f64), 2),
        (
            "capture-loop wake-ups",
            per_request(&|c| c.wakeups as f64),
            3,
        ),
        (
            "ring-buffer bytes",
            per_request(&|c| c.record_bytes as f64),
            0,
        ),
        (
            "spans received by the sink",
            per_request(&|c| c.received as f64),
            3,
        ),
    ];
    let mut table = String::from("| per request sent | median (min-max over runs) |\n|---|---|\n");
    for (name, values, digits) in rows {
        table.push_str(&format!("| {name} | {} |\n", spread(&values, digits)));
    }
    let rss = runs.iter().map(|(c, _)| c.peak_rss_kib).max().unwrap_or(0);
    let load: Vec<f64> = runs.iter().map(|(c, _)| c.load_s).collect();
    let lost: u64 = runs.iter().map(|(c, _)| c.ringbuf_full).sum();
    let (received, sent) = runs
        .iter()
        .fold((0, 0), |(r, s), (c, n)| (r + c.received, s + n));
    let worst = load.iter().copied().fold(0.0, f64::max);
    table.push_str(&format!(
        "\nagent peak RSS {:.1} MiB; start-up (programs verified and attached) {} s \
         ({} the 2 s budget); spans received {received} for {sent} requests; events lost to a \
         full ring buffer (`kernel.ringbuf_full`): {lost}.\n",
        rss as f64 / 1024.0,
        spread(&load, 2),
        if worst <= 2.0 { "within" } else { "OVER" },
    ));
    table
}

/// One alternating round against nginx: the baseline, then the agent.
struct Round {
    base: Wrk,
    agent: Wrk,
    cost: AgentCost,
}

/// Alternating baseline and agent rounds of wrk against `nginx`.
/// Alternating rounds of wrk against `url`, untraced then traced (`--exe exe`).
fn rounds_against(
    url: &str,
    exe: &str,
    sink: &OtlpReceiver,
    rounds: usize,
    seconds: u64,
) -> Result<Vec<Round>, String> {
    // Warm-up, not counted.
    wrk(url, 2, 16, &[])?;
    let mut out = Vec::new();
    for round in 0..rounds {
        let base = wrk(url, seconds, 16, &[])?;
        let (agent, cost) = traced(&["--exe", exe], sink, || wrk(url, seconds, 16, &[]))?;
        eprintln!(
            "bench: {url} round {}: baseline {:.0} req/s p99 {:.0}us | agent {:.0} req/s p99 {:.0}us",
            round + 1,
            base.rps,
            base.p99_us,
            agent.rps,
            agent.p99_us
        );
        out.push(Round { base, agent, cost });
    }
    Ok(out)
}

/// The wrk scenario's tables: throughput and p99 against the baseline, and the agent's cost.
fn wrk_report(title: &str, intro: &str, rounds: &[Round]) -> (String, f64) {
    let col = |f: &dyn Fn(&Round) -> f64| -> Vec<f64> { rounds.iter().map(f).collect() };
    let rps = col(&|r| r.agent.rps / r.base.rps);
    let p99 = col(&|r| r.agent.p99_us / r.base.p99_us);
    let costs: Vec<(AgentCost, u64)> = rounds.iter().map(|r| (r.cost, r.agent.requests)).collect();
    let text = format!(
        "## {title}\n\n{intro}\n\n\
         | measure | baseline | with socktrace | ratio, median (min-max over rounds) |\n\
         |---|---|---|---|\n\
         | throughput (req/s) | {:.0} | {:.0} | {} |\n\
         | p99 latency (us) | {:.0} | {:.0} | {} |\n\n{}",
        median(col(&|r| r.base.rps)),
        median(col(&|r| r.agent.rps)),
        spread(&rps, 3),
        median(col(&|r| r.base.p99_us)),
        median(col(&|r| r.agent.p99_us)),
        spread(&p99, 3),
        cost_table(&costs),
    );
    (text, median(rps))
}

/// The Flask service (`tests/peers/bench_flask.py`), instrumented with the OpenTelemetry SDK
/// exporting to `otlp` when given; stopped with SIGTERM on drop (the SDK then flushes).
fn flask(otlp: Option<&str>) -> Result<(Stopped, u16), String> {
    let mut cmd = Command::new(python());
    cmd.arg(peer("bench_flask.py"))
        .args(otlp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting bench_flask.py: {e}"))?;
    let mut out = std::io::BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let child = Stopped(child);
    let port = wait_line(&mut out, "PORT ", Duration::from_secs(30))
        .parse()
        .map_err(|e| format!("bench_flask.py port: {e}"))?;
    Ok((child, port))
}

/// One round on the Flask service: untraced, traced by the agent, instrumented with the SDK.
struct FlaskRound {
    base: Wrk,
    agent: Wrk,
    cost: AgentCost,
    sdk: Wrk,
    /// Spans the SDK process flushed, and the requests it was sent (its warm-up included).
    sdk_spans: (u64, u64),
}

/// Alternating rounds on the Flask service: untraced, traced by the agent, instrumented with
/// the SDK (a fresh process for each, so the SDK's spans are flushed and counted per round).
fn flask_scenario(sink: &OtlpReceiver, rounds: usize, seconds: u64) -> Result<String, String> {
    let url = |port: u16| format!("http://127.0.0.1:{port}/");
    let mut all = Vec::new();
    for round in 0..rounds {
        let (app, port) = flask(None)?;
        wrk(&url(port), 1, 16, &[])?;
        let base = wrk(&url(port), seconds, 16, &[])?;
        let pid = app.0.id().to_string();
        let (agent, cost) = traced(&["--pid", &pid], sink, || wrk(&url(port), seconds, 16, &[]))?;
        drop(app);
        let spans0 = sink.accepted_span_count();
        let (app, port) = flask(Some(&sink.traces_endpoint()))?;
        let warm = wrk(&url(port), 1, 16, &[])?;
        let sdk = wrk(&url(port), seconds, 16, &[])?;
        drop(app);
        let sdk_spans = (
            (sink.accepted_span_count() - spans0) as u64,
            warm.requests + sdk.requests,
        );
        eprintln!(
            "bench: flask round {}: baseline {:.0} req/s | agent {:.0} req/s | OpenTelemetry SDK {:.0} req/s",
            round + 1,
            base.rps,
            agent.rps,
            sdk.rps
        );
        all.push(FlaskRound {
            base,
            agent,
            cost,
            sdk,
            sdk_spans,
        });
    }
    let col = |f: &dyn Fn(&FlaskRound) -> f64| -> Vec<f64> { all.iter().map(f).collect() };
    let ours = |r: &FlaskRound| r.agent.rps / r.base.rps;
    let theirs = |r: &FlaskRound| r.sdk.rps / r.base.rps;
    let costs: Vec<(AgentCost, u64)> = all.iter().map(|r| (r.cost, r.agent.requests)).collect();
    let (sdk_spans, sdk_sent) = all
        .iter()
        .fold((0, 0), |(s, n), r| (s + r.sdk_spans.0, n + r.sdk_spans.1));
    Ok(format!(
        "## Flask JSON service\n\n\
         A Flask app answering a 56-byte JSON document (`tests/peers/bench_flask.py`, werkzeug's \
         threaded server, which closes the connection after each response) under wrk -t1 -c16, \
         {rounds} rounds of {seconds} s, each round untraced, then traced by socktrace (`--pid`), \
         then instrumented with the OpenTelemetry Python SDK instead (WSGI middleware, \
         BatchSpanProcessor, OTLP/HTTP to the same sink). Loss = 1 - throughput ratio.\n\n\
         | measure | untraced | socktrace | OpenTelemetry SDK |\n|---|---|---|---|\n\
         | throughput (req/s), median | {:.0} | {:.0} | {:.0} |\n\
         | throughput ratio, median (min-max over rounds) | 1 | {} | {} |\n\n\
         Our loss / the SDK's loss, median (min-max over rounds): {} (goal <= 0.1). \
         Spans the SDK delivered: {sdk_spans} for {sdk_sent} requests.\n\n{}",
        median(col(&|r| r.base.rps)),
        median(col(&|r| r.agent.rps)),
        median(col(&|r| r.sdk.rps)),
        spread(&col(&ours), 3),
        spread(&col(&theirs), 3),
        spread(&col(&|r| (1.0 - ours(r)) / (1.0 - theirs(r))), 3),
        cost_table(&costs),
    ))
}

/// nginx for `connections` connections, driven at `rate` requests/s for `seconds` by the paced
/// generator, traced by the agent.
fn paced_run(
    sink: &OtlpReceiver,
    connections: usize,
    rate: u64,
    seconds: u64,
    threads: usize,
) -> Result<(Paced, AgentCost), String> {
    raise_nofile(connections as u64 + 1024).map_err(|e| format!("RLIMIT_NOFILE: {e}"))?;
    let nginx = Nginx::start_for_connections(free_port(), connections as u32)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], nginx.port));
    let (run, cost) = traced(&["--exe", "nginx"], sink, || {
        paced(
            addr,
            connections,
            rate,
            Duration::from_secs(seconds),
            threads,
        )
    })?;
    eprintln!(
        "bench: paced {connections} connections at {rate} req/s for {seconds}s: sent {} answered {} \
         errors {} ({:.0} req/s); spans received {}, ringbuf_full {}, agent peak RSS {:.1} MiB",
        run.sent,
        run.ok,
        run.errors,
        run.rps(),
        cost.received,
        cost.ringbuf_full,
        cost.peak_rss_kib as f64 / 1024.0
    );
    Ok((run, cost))
}

/// The paced scenarios: 10,000 open connections at 1,000 req/s (memory), and 20,000 req/s
/// (events lost).
fn paced_scenarios(sink: &OtlpReceiver) -> Result<String, String> {
    let describe = |title: &str, what: &str, run: &Paced, cost: AgentCost| {
        format!(
            "## {title}\n\n{what} Sent {} requests in {:.1} s ({:.0} answered per second, {} \
             errors).\n\n{}",
            run.sent,
            run.seconds,
            run.rps(),
            run.errors,
            cost_table(&[(cost, run.sent)]),
        )
    };
    let (wide, wide_cost) = paced_run(sink, 10_000, 1_000, 15, 2)?;
    let (fast, fast_cost) = paced_run(sink, 64, 20_000, 10, 4)?;
    Ok(format!(
        "{}\n{}",
        describe(
            "10,000 open connections at 1,000 req/s",
            "nginx (1 worker) with 10,000 keep-alive connections open, opened after the agent \
             started, and 1,000 requests/s spread over them round-robin for 15 s (the paced \
             generator of `tests/src/paced.rs`, 2 threads). Goal: peak RSS <= 50 MiB, a span per \
             request.",
            &wide,
            wide_cost
        ),
        describe(
            "20,000 req/s",
            "nginx (1 worker) at a fixed 20,000 requests/s over 64 keep-alive connections for \
             10 s (paced generator, 4 threads, one request in flight each). Goal: no event lost \
             (`ringbuf_full` 0), a span per request.",
            &fast,
            fast_cost
        ),
    ))
}

/// One more agent round with the kernel's per-program statistics on (they add a clock read to
/// every run, so this round's throughput is not used): where the kernel time goes, per request.
fn profile(nginx: &Nginx, sink: &OtlpReceiver, seconds: u64) -> Result<String, String> {
    let _stats = BpfStats::enable().map_err(|e| format!("kernel.bpf_stats_enabled: {e}"))?;
    let mut agent = start_agent(&["--exe", "nginx"], sink);
    let before = prog_stats();
    let run = wrk(&nginx.url(), seconds, 16, &[])?;
    let after = prog_stats();
    agent.stop();
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
         so a request is traced twice: once in each process.\n\n{table}",
        run.requests, run.rps,
    ))
}

fn main() -> Result<(), String> {
    let Args {
        rounds,
        seconds,
        only,
    } = Args::parse();
    let (rounds, seconds) = (rounds.max(1), seconds.max(1));
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let started = std::time::Instant::now();
    let nginx = Nginx::start(free_port())?;
    // Accepts everything and counts the spans it decodes, without keeping them.
    let sink = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
    sink.forget_bodies();
    let mut sections = Vec::new();
    let mut done = |name: &str, text: String| {
        eprintln!(
            "bench: scenario {name} done ({:.0} s so far)",
            started.elapsed().as_secs_f64()
        );
        sections.push(text);
    };

    let mut plain_ratio = None;
    if wanted("nginx") {
        let rounds = rounds_against(&nginx.url(), "nginx", &sink, rounds, seconds)?;
        let (text, ratio) = wrk_report(
            "nginx `return 200`",
            &format!(
                "nginx (1 worker, keep-alive, 17-byte response) driven by wrk -t1 -c16 for \
                 {seconds} s per round, the agent tracing nginx (`--exe nginx`)."
            ),
            &rounds,
        );
        plain_ratio = Some(ratio);
        done("nginx", text);
    }
    if wanted("https") {
        let cert = TestCert::make()?;
        let https = cert.nginx()?;
        let rounds = rounds_against(&https.url(), "nginx", &sink, rounds, seconds)?;
        let (mut text, ratio) = wrk_report(
            "HTTPS",
            "The same rounds against nginx over TLS (OpenSSL, the agent reading the plaintext \
             with uprobes on `libssl`; wrk maps the same library, so its calls hit the probes \
             too and are dropped there as untraced).",
            &rounds,
        );
        if let Some(plain) = plain_ratio {
            text.push_str(&format!(
                "\nThroughput ratio over HTTPS against the ratio over cleartext: {:.3}.\n",
                ratio / plain
            ));
        }
        done("HTTPS", text);
    }
    if wanted("go") {
        let cert = TestCert::make()?;
        let mut server = Command::new(go_peer("tlspeer", false))
            .arg("server")
            .arg("0")
            .arg(cert.cert())
            .arg(cert.key())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("tlspeer: {e}"))?;
        let mut out = std::io::BufReader::new(server.stdout.take().ok_or("no stdout")?);
        let server = Stopped(server);
        let port = wait_line(&mut out, "PORT ", Duration::from_secs(30));
        let url = format!("https://127.0.0.1:{port}/");
        let rounds = rounds_against(&url, "tlspeer", &sink, rounds, seconds)?;
        drop(server);
        let (text, _) = wrk_report(
            "Go over crypto/tls",
            "A Go `net/http` server on Go's own `crypto/tls` (`tests/peers/go/tlspeer`, Debian's \
             Go 1.19), driven by wrk over HTTPS as above: the agent reads the plaintext at \
             `(*Conn).Read`'s copy of it and `(*Conn).Write`'s record writes (probes on `call` \
             instructions, which the kernel emulates) and follows the goroutines (probes on \
             `runtime.newproc1`, the call that queues the goroutine it made, and `(*FD).Write`).",
            &rounds,
        );
        done("Go", text);
    }
    if wanted("flask") {
        done("Flask", flask_scenario(&sink, rounds, seconds)?);
    }
    if wanted("paced") {
        done("paced", paced_scenarios(&sink)?);
    }
    if wanted("profile") {
        done("kernel profile", profile(&nginx, &sink, seconds)?);
    }
    write_report(
        &report_dir("bench"),
        &format!(
            "# socktrace benchmark\n\n{rounds} alternating rounds of {seconds} s where there are \
             rounds; {:.0} s in all. Ratios are medians over the rounds with their min-max, each \
             traced round against the untraced round just before it.\n\n{}",
            started.elapsed().as_secs_f64(),
            sections.join("\n")
        ),
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_the_median_and_the_range() {
        assert_eq!(spread(&[0.5, 0.42, 0.45], 2), "0.45 (0.42-0.50)");
        assert_eq!(spread(&[3.0], 0), "3 (3-3)");
    }
}
