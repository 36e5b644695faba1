//! `cargo xtask soak`: what socktrace does under stress, measured on real programs with the real
//! agent, and written as the README's reliability table. Not part of `cargo xtask test`: the
//! default run takes about 20 minutes. Needs root, nginx, wrk and curl.
//!
//! Scenarios (each a section of `target/soak/report.md`; a broken promise fails the run):
//! - `outage`: the OTLP collector is down for minutes under steady traffic. Memory must stay
//!   flat once the bounded queue is full, every span must be exported or counted as dropped,
//!   and export must resume by itself when the collector is back.
//! - `overload`: nginx under wrk while the agent does not read its ring buffer at all (SIGSTOP),
//!   against untraced rounds and rounds with the agent reading: the traced program must not wait
//!   for the agent, the loss must be counted and exported, and the agent must trace exactly
//!   again once the load falls.
//! - `churn`: thousands of short connections and processes per second for minutes: the agent's
//!   memory, file descriptors and connection table must stay bounded, and nothing may remain
//!   loaded in the kernel after it exits.
//! - `kill`: the agent is SIGKILLed again and again while a client checks every answer of a
//!   traced server byte for byte (injection on): no answer may differ, no program may stay
//!   attached, and a restarted agent must trace a connection opened before it.
//!
//! A span or count that does not match fails the run with the scenario's message; timings are
//! reported as ratios of runs made side by side, never checked against absolute times.

use std::{
    collections::HashSet,
    io::{BufRead, BufReader},
    panic::AssertUnwindSafe,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use socktrace_tests::{
    harness::{
        Agent, ChildGuard, PyServer, all_final_counters, curl, free_port, loaded_programs, metric,
        peer, proc_status_kib, signal, wait_line, wait_until_stable,
    },
    load::{Nginx, Wrk, fd_count, median, report_dir, write_report, wrk},
    otlp_receiver::{OtlpReceiver, Protocol},
};

#[derive(Parser)]
struct Args {
    /// How long the collector stays down in `outage`.
    #[arg(long, default_value_t = 600)]
    outage_seconds: u64,
    /// Requests per second served during the outage.
    #[arg(long, default_value_t = 10)]
    outage_rate: u64,
    /// How long `churn` runs.
    #[arg(long, default_value_t = 180)]
    churn_seconds: u64,
    /// Seconds of load per `overload` round.
    #[arg(long, default_value_t = 8)]
    overload_seconds: u64,
    /// Rounds of `overload` (untraced, agent reading, agent stopped).
    #[arg(long, default_value_t = 3)]
    overload_rounds: usize,
    /// SIGKILLs in `kill`.
    #[arg(long, default_value_t = 5)]
    kills: usize,
    /// Only these scenarios (default: all): outage, overload, churn, kill.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Hold an exclusive `flock` on this file during each scenario (so that agents started by
    /// other runs on this machine, which would trace each other's traffic, wait).
    #[arg(long)]
    lock: Option<PathBuf>,
    /// A markdown table of fuzzing results (written by `cargo xtask soak`) to include.
    #[arg(long)]
    fuzz_table: Option<PathBuf>,
}

/// The rows of the reliability table, and the promises found broken.
#[derive(Default)]
struct Report {
    rows: Vec<[String; 3]>,
    broken: Vec<String>,
}

impl Report {
    /// A measured figure and whether the promise it backs was kept.
    fn row(&mut self, scenario: &str, measure: &str, result: String, kept: bool) {
        let verdict = if kept {
            result
        } else {
            self.broken.push(format!("{scenario}: {measure}: {result}"));
            format!("**BROKEN**: {result}")
        };
        self.rows
            .push([scenario.to_owned(), measure.to_owned(), verdict]);
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Polls `cond` every 200 ms for up to `limit`; whether it came true.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    cond()
}

/// Waits until the receiver's accepted span count stops moving for `quiet`.
fn settle(receiver: &OtlpReceiver, quiet: Duration) -> usize {
    let mut last = receiver.accepted_span_count();
    let mut since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    while since.elapsed() < quiet && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = receiver.accepted_span_count();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    last
}

/// How fast memory grew from the first to the last of `(seconds, KiB)` samples.
fn per_minute(samples: impl IntoIterator<Item = (u64, u64)>) -> String {
    let samples: Vec<(u64, u64)> = samples.into_iter().collect();
    match (samples.first(), samples.last()) {
        (Some(a), Some(b)) if b.0 > a.0 => format!(
            "{:+.2} MiB/min",
            (b.1 as f64 - a.1 as f64) / 1024.0 / ((b.0 - a.0) as f64 / 60.0)
        ),
        _ => "-".to_owned(),
    }
}

fn counter(counters: &std::collections::HashMap<String, u64>, name: &str) -> u64 {
    counters.get(name).copied().unwrap_or(0)
}

/// The collector goes away for `secs` while `rate` requests per second are served.
fn outage(r: &mut Report, secs: u64, rate: u64) {
    const S: &str = "collector outage";
    let protocol = Protocol::HttpProtobuf;
    let receiver = OtlpReceiver::start_blocking(protocol);
    let addr = receiver.addr();
    let server = PyServer::start(&[("OTEL_SERVICE_NAME", "soak-server")]);
    let health = format!("127.0.0.1:{}", free_port());
    let mut agent = Agent::start(&[
        "--otlp-endpoint",
        &receiver.endpoint(),
        "--port",
        &server.port.to_string(),
        "--health-listen",
        &health,
    ]);
    let pid = agent.pid();
    curl(&[&server.url("/item/0")]);
    assert!(
        wait_for(Duration::from_secs(30), || receiver.accepted_span_count()
            == 2),
        "the first request's spans did not arrive"
    );
    drop(receiver);

    // Steady traffic: one curl per second with `rate` requests on one connection.
    let started = Instant::now();
    let mut served = 1u64;
    let mut samples = Vec::new(); // (seconds, RSS KiB, dropped so far)
    let mut next_sample = started;
    while started.elapsed() < Duration::from_secs(secs) {
        let tick = Instant::now();
        let urls: Vec<String> = (served..served + rate)
            .map(|i| server.url(&format!("/item/{i}")))
            .collect();
        curl(
            &std::iter::once("-o")
                .chain(std::iter::once("/dev/null"))
                .chain(urls.iter().map(String::as_str))
                .collect::<Vec<_>>(),
        );
        served += rate;
        if tick >= next_sample {
            let dropped = metric(&health, "socktrace_export_dropped_queue_full_total").unwrap_or(0);
            samples.push((
                started.elapsed().as_secs(),
                proc_status_kib(pid, "VmRSS"),
                dropped,
            ));
            eprintln!("soak: outage {:?}: {:?}", started.elapsed(), samples.last());
            next_sample += Duration::from_secs(30);
        }
        std::thread::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed()));
    }
    let during = served - 1;

    // The collector comes back on the same port; the queue drains by itself.
    let receiver = OtlpReceiver::start_blocking_on(protocol, addr);
    let back = Instant::now();
    let drained = wait_for(Duration::from_secs(120), || {
        metric(&health, "socktrace_export_pending") == Some(0)
    });
    let drain_s = back.elapsed().as_secs_f64();
    // And what comes after is exported as usual.
    let after: Vec<String> = (served..served + 10)
        .map(|i| server.url(&format!("/item/{i}")))
        .collect();
    curl(&after.iter().map(String::as_str).collect::<Vec<_>>());
    served += 10;
    let after_paths: HashSet<String> = (served - 10..served)
        .map(|i| format!("/item/{i}"))
        .collect();
    let resumed = wait_for(Duration::from_secs(60), || {
        receiver
            .spans()
            .iter()
            .filter(|s| {
                s.attr_str("url.path")
                    .is_some_and(|p| after_paths.contains(&p))
            })
            .count()
            == 10
    });
    let arrived = settle(&receiver, Duration::from_secs(3));
    let rss_end = proc_status_kib(pid, "VmRSS");
    agent.stop();
    let counters = all_final_counters(&agent.stderr());
    let c = |n: &str| counter(&counters, &format!("export.{n}"));
    let spans = receiver.spans();
    let unique: HashSet<String> = spans.iter().map(|s| s.span_id()).collect();

    let minutes = secs as f64 / 60.0;
    r.row(
        S,
        &format!("collector down {minutes:.0} min, {rate} req/s: requests served"),
        format!(
            "{during} requests, {} spans made (queued + dropped)",
            c("queued") + c("dropped_queue_full")
        ),
        c("queued") + c("dropped_queue_full") == 2 * served,
    );
    // Memory: flat once the queue is full (the first sample that saw drops).
    let full = samples
        .iter()
        .position(|s| s.2 > 0)
        .unwrap_or(samples.len() - 1);
    let at_full = samples[full].1;
    let max_after = samples[full..].iter().map(|s| s.1).max().unwrap_or(at_full);
    let first = samples[0].1;
    r.row(
        S,
        "agent RSS: at the start / when the queue filled / highest after / after recovery",
        format!(
            "{} / {} ({} s) / {} ({}) / {}",
            mib(first),
            mib(at_full),
            samples[full].0,
            mib(max_after),
            per_minute(samples[full..].iter().map(|s| (s.0, s.1))),
            mib(rss_end)
        ),
        max_after <= at_full + 8 * 1024,
    );
    r.row(
        S,
        "every span exported or counted as dropped (queue bound 4096)",
        format!(
            "{} queued and {} exported, {} dropped when the queue was full; {} failed",
            c("queued"),
            c("exported"),
            c("dropped_queue_full"),
            c("failed")
        ),
        c("exported") == c("queued") && c("failed") == 0,
    );
    r.row(
        S,
        "what the collector received after the outage (unique span ids)",
        format!(
            "{arrived} spans, {} unique; the agent counted {} exported",
            unique.len(),
            c("exported") - 2
        ),
        arrived == unique.len() && arrived as u64 == c("exported") - 2,
    );
    r.row(
        S,
        "export resumes by itself: queue drained, then new requests exported",
        format!(
            "queue drained {} in {drain_s:.1} s; the 10 requests after: {}",
            if drained { "to 0" } else { "NOT" },
            if resumed { "all exported" } else { "MISSING" }
        ),
        drained && resumed,
    );
}

/// The agent's final kernel counters, as `name=value` text.
fn kernel_counters(stderr: &str) -> String {
    let counters = all_final_counters(stderr);
    let mut v: Vec<String> = counters
        .iter()
        .filter(|(k, v)| k.starts_with("kernel.") && **v > 0)
        .map(|(k, v)| format!("{}={v}", &k["kernel.".len()..]))
        .collect();
    v.sort();
    v.join(", ")
}

/// nginx at full speed untraced, traced, and traced while the agent reads nothing.
fn overload(r: &mut Report, secs: u64, rounds: usize) {
    const S: &str = "overload";
    let nginx = Nginx::start(free_port()).unwrap_or_else(|e| panic!("{e}"));
    let receiver = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
    receiver.forget_bodies();
    let port = nginx.port.to_string();
    let start_agent = |health: &str| {
        Agent::start(&[
            "--otlp-endpoint",
            &receiver.endpoint(),
            "--port",
            &port,
            "--ringbuf-size",
            "65536",
            "--health-listen",
            health,
        ])
    };
    wrk(&nginx.url(), 2, 16, &[]).unwrap_or_else(|e| panic!("{e}"));
    let (mut base, mut reading, mut stopped) = (Vec::<Wrk>::new(), Vec::new(), Vec::new());
    let (mut ringbuf_full, mut exported_full, mut recovered) = (0u64, true, true);
    let mut kernel = String::new();
    for round in 0..rounds {
        base.push(wrk(&nginx.url(), secs, 16, &[]).unwrap_or_else(|e| panic!("{e}")));
        let health = format!("127.0.0.1:{}", free_port());
        let mut agent = start_agent(&health);
        reading.push(wrk(&nginx.url(), secs, 16, &[]).unwrap_or_else(|e| panic!("{e}")));
        signal(agent.pid(), libc::SIGSTOP);
        stopped.push(wrk(&nginx.url(), secs, 16, &[]).unwrap_or_else(|e| panic!("{e}")));
        signal(agent.pid(), libc::SIGCONT);
        wait_until_stable(&health, "socktrace_kernel_ringbuf_full_total");
        wait_until_stable(&health, "socktrace_pipeline_spans_total");
        // The loss is exported as a metric, not only logged.
        let full = metric(&health, "socktrace_kernel_ringbuf_full_total").unwrap_or(0);
        exported_full &= full > 0;
        ringbuf_full += full;
        // Once the load falls, one request is traced exactly: a server and a client span.
        let before = settle(&receiver, Duration::from_secs(2));
        curl(&["-o", "/dev/null", &nginx.url()]);
        std::thread::sleep(Duration::from_secs(2));
        let after = settle(&receiver, Duration::from_secs(2));
        recovered &= after == before + 2;
        agent.stop();
        kernel = kernel_counters(&agent.stderr());
        eprintln!(
            "soak: overload round {}: untraced {:.0} req/s, reading {:.0}, stopped {:.0}; recovery +{}",
            round + 1,
            base[round].rps,
            reading[round].rps,
            stopped[round].rps,
            after - before
        );
    }
    let med = |v: &[Wrk], f: fn(&Wrk) -> f64| median(v.iter().map(f).collect());
    let (b_rps, r_rps, s_rps) = (
        med(&base, |w| w.rps),
        med(&reading, |w| w.rps),
        med(&stopped, |w| w.rps),
    );
    let (b_p99, r_p99, s_p99) = (
        med(&base, |w| w.p99_us),
        med(&reading, |w| w.p99_us),
        med(&stopped, |w| w.p99_us),
    );
    let errors: u64 = [&base, &reading, &stopped]
        .iter()
        .flat_map(|v| v.iter().map(|w| w.errors))
        .sum();
    r.row(
        S,
        &format!(
            "nginx under wrk -c16, {rounds} rounds of {secs} s; median req/s untraced / agent reading / agent stopped (ring full)"
        ),
        format!(
            "{b_rps:.0} / {r_rps:.0} ({:.2}x) / {s_rps:.0} ({:.2}x)",
            r_rps / b_rps,
            s_rps / b_rps
        ),
        errors == 0,
    );
    // A full ring costs the traced program nothing more than tracing does: the programs never
    // wait for the agent (the small margin allows for this machine's noise).
    r.row(
        S,
        "median p99 latency untraced / agent reading / ring full",
        format!(
            "{b_p99:.0} us / {r_p99:.0} us ({:.2}x) / {s_p99:.0} us ({:.2}x)",
            r_p99 / b_p99,
            s_p99 / b_p99
        ),
        s_p99 <= r_p99 * 1.25 && errors == 0,
    );
    r.row(
        S,
        "loss counted and exported (`socktrace_kernel_ringbuf_full_total`); last round's kernel counters",
        format!("{ringbuf_full} records lost in all; {kernel}"),
        exported_full,
    );
    r.row(
        S,
        "after the load falls, one request gives exactly its 2 spans",
        if recovered {
            "every round".to_owned()
        } else {
            "NOT in every round".to_owned()
        },
        recovered,
    );
}

/// Short connections and processes as fast as this machine makes them, for `secs`.
fn churn(r: &mut Report, secs: u64) {
    const S: &str = "churn";
    let programs_before = loaded_programs().len();
    let maps_before = bpftool_lines(&["map", "show"]);
    let nginx = Nginx::start(free_port()).unwrap_or_else(|e| panic!("{e}"));
    let receiver = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
    receiver.forget_bodies();
    let health = format!("127.0.0.1:{}", free_port());
    let mut agent = Agent::start(&[
        "--otlp-endpoint",
        &receiver.endpoint(),
        "--port",
        &nginx.port.to_string(),
        "--health-listen",
        &health,
    ]);
    let pid = agent.pid();
    let programs_running = loaded_programs().len();
    let stop = Arc::new(AtomicBool::new(false));
    let (execs, curls) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // Processes: `true` as fast as one thread can start it, and a curl (a traced short-lived
    // client) every 50 ms.
    let spawner = {
        let (stop, execs) = (stop.clone(), execs.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = Command::new("/bin/true").status();
                execs.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let curler = {
        let (stop, curls, url) = (stop.clone(), curls.clone(), nginx.url());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                curl(&["-o", "/dev/null", &url]);
                curls.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    // Connections: wrk with `Connection: close`, a new connection per request.
    let started = Instant::now();
    let mut samples = Vec::new(); // (seconds, RSS KiB, fds, live connections)
    let mut conns = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        let w = wrk(&nginx.url(), 10, 32, &["Connection: close"]).unwrap_or_else(|e| panic!("{e}"));
        conns += w.requests;
        samples.push((
            started.elapsed().as_secs(),
            proc_status_kib(pid, "VmRSS"),
            fd_count(pid),
            metric(&health, "socktrace_conns_live").unwrap_or(0),
        ));
        eprintln!("soak: churn {:?}: {:?}", started.elapsed(), samples.last());
    }
    stop.store(true, Ordering::Relaxed);
    let _ = spawner.join();
    let _ = curler.join();
    let elapsed = started.elapsed().as_secs_f64();
    wait_until_stable(&health, "socktrace_pipeline_spans_total");
    let arrived = settle(&receiver, Duration::from_secs(3));
    let live_after = metric(&health, "socktrace_conns_live").unwrap_or(u64::MAX);
    agent.stop();
    drop(nginx);
    let counters = all_final_counters(&agent.stderr());
    let c = |n: &str| counter(&counters, n);
    let left = wait_for(Duration::from_secs(10), || {
        loaded_programs().len() == programs_before
    });
    let maps_after = bpftool_lines(&["map", "show"]);

    let (execs, curls) = (execs.load(Ordering::Relaxed), curls.load(Ordering::Relaxed));
    r.row(
        S,
        &format!("{:.0} s of short connections and processes", elapsed),
        format!(
            "{:.0} connections/s, {:.0} processes/s ({curls} of them curl to the traced server)",
            conns as f64 / elapsed,
            (execs + curls) as f64 / elapsed
        ),
        true,
    );
    // Bounded: after the first 30 s nothing grows by more than noise.
    let warm = samples
        .iter()
        .position(|s| s.0 >= 30)
        .unwrap_or(samples.len() - 1);
    let rss_warm = samples[warm].1;
    let rss_max = samples[warm..]
        .iter()
        .map(|s| s.1)
        .max()
        .unwrap_or(rss_warm);
    let rss_last = samples.last().map_or(0, |s| s.1);
    let fds: Vec<usize> = samples.iter().map(|s| s.2).collect();
    let live_max = samples.iter().map(|s| s.3).max().unwrap_or(0);
    r.row(
        S,
        "agent RSS after 30 s / highest after / at the end",
        format!(
            "{} / {} / {} ({})",
            mib(rss_warm),
            mib(rss_max),
            mib(rss_last),
            per_minute(samples[warm..].iter().map(|s| (s.0, s.1)))
        ),
        rss_max <= rss_warm + 16 * 1024,
    );
    r.row(
        S,
        "agent file descriptors (min / max); live connections (max / after the load)",
        format!(
            "{} / {}; {live_max} / {live_after}",
            fds.iter().min().unwrap_or(&0),
            fds.iter().max().unwrap_or(&0)
        ),
        // One more descriptor now and then is a connection being served (`/metrics`, export);
        // a leak grows. A few connections whose close went unseen stay until the idle timeout.
        fds.iter().max().unwrap_or(&0) - fds.iter().min().unwrap_or(&0) <= 2 && live_after <= 8,
    );
    r.row(
        S,
        "spans: made / exported / dropped (queue) / received",
        format!(
            "{} / {} / {} / {arrived}; connections evicted {}, unresolved {}",
            c("export.queued"),
            c("export.exported"),
            c("export.dropped_queue_full"),
            c("conns.evicted"),
            c("conns.unresolved")
        ),
        c("export.exported") == arrived as u64 && c("export.exported") == c("export.queued"),
    );
    r.row(
        S,
        "after exit: eBPF programs and maps left in the kernel",
        format!(
            "programs before / while running / after: {programs_before} / {programs_running} / {}; maps before / after: {maps_before} / {maps_after}",
            loaded_programs().len()
        ),
        left && maps_after <= maps_before && programs_running > programs_before,
    );
}

fn bpftool_lines(args: &[&str]) -> usize {
    let out = Command::new("bpftool")
        .args(args)
        .output()
        .expect("bpftool must be installed");
    // Each object's first line starts with "<id>: ".
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(id, _)| id.parse::<u32>().is_ok())
        })
        .count()
}

/// SIGKILL after SIGKILL while a client checks every answer, then a restart that must trace a
/// connection opened before it.
fn kill(r: &mut Report, kills: usize) {
    const S: &str = "SIGKILL and restart";
    let programs_before = loaded_programs().len();
    let receiver = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
    let server = PyServer::start(&[("OTEL_SERVICE_NAME", "soak-server")]);
    let port = server.port.to_string();
    let mut child = Command::new("python3")
        .arg(peer("echo_client.py"))
        .args([&port, "3600"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut client = ChildGuard::new("echo_client.py", child);
    let kept: i64 = wait_line(&mut out, "KEPT ", Duration::from_secs(20))
        .parse()
        .expect("port of the kept connection");
    let (mut detached, mut attached) = (0, true);
    for _ in 0..kills {
        let mut agent = Agent::start(&["--otlp-endpoint", &receiver.endpoint(), "--port", &port]);
        std::thread::sleep(Duration::from_secs(3));
        attached &= loaded_programs().len() > programs_before;
        signal(agent.pid(), libc::SIGKILL);
        agent.stop();
        if wait_for(Duration::from_secs(10), || {
            loaded_programs().len() == programs_before
        }) {
            detached += 1;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    r.row(
        S,
        &format!("agent SIGKILLed {kills} times under traffic (injection on)"),
        format!("{detached} of {kills} times every program was gone within 10 s"),
        detached == kills && attached,
    );

    // A restarted agent traces the connection the client opened before any agent ran.
    receiver.clear();
    let health = format!("127.0.0.1:{}", free_port());
    let mut agent = Agent::start(&[
        "--otlp-endpoint",
        &receiver.endpoint(),
        "--port",
        &port,
        "--health-listen",
        &health,
    ]);
    std::thread::sleep(Duration::from_secs(5));
    wait_until_stable(&health, "socktrace_pipeline_spans_total");
    agent.stop();
    let counters = all_final_counters(&agent.stderr());
    let spans = receiver.spans();
    // Server spans of the connection opened before any agent ran.
    let on_kept = spans
        .iter()
        .filter(|s| s.attr_int("client.port") == Some(kept))
        .filter(|s| s.attr_int("http.response.status_code") == Some(200))
        .count();
    let conns: HashSet<i64> = spans
        .iter()
        .filter_map(|s| s.attr_int("client.port"))
        .collect();
    r.row(
        S,
        "restarted agent: spans of the client's requests, on connections opened before it",
        format!(
            "{on_kept} spans on the connection opened before, of {} spans on {} connections; the agent counted {} connections found open (`conns.found_open`)",
            spans.len(),
            conns.len(),
            counter(&counters, "conns.found_open"),
        ),
        on_kept > 0 && counter(&counters, "conns.found_open") > 0,
    );

    // Closing its stdin ends the client; it then prints its summary.
    drop(client.child.stdin.take());
    let lines: Vec<String> = out.lines().map_while(Result::ok).collect();
    drop(client);
    let summary = lines
        .iter()
        .find_map(|l| l.strip_prefix("REQUESTS "))
        .unwrap_or("none");
    let errors: Vec<&String> = lines.iter().filter(|l| l.starts_with("ERROR")).collect();
    r.row(
        S,
        "client answers checked byte for byte during all of it",
        format!("requests {summary}"),
        summary.ends_with(" ERRORS 0") && errors.is_empty(),
    );
    for e in errors.iter().take(5) {
        eprintln!("soak: {e}");
    }
}

/// An exclusive `flock` on `path`, released when the file is closed.
fn hold_lock(path: &std::path::Path) -> std::fs::File {
    use std::os::fd::AsRawFd as _;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock {}", path.display());
    file
}

fn main() {
    let args = Args::parse();
    socktrace_tests::harness::require_root();
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    let mut report = Report::default();
    type Scenario<'a> = (&'a str, Box<dyn Fn(&mut Report) + 'a>);
    let scenarios: Vec<Scenario> = vec![
        ("kill", Box::new(|r: &mut Report| kill(r, args.kills))),
        (
            "overload",
            Box::new(|r: &mut Report| overload(r, args.overload_seconds, args.overload_rounds)),
        ),
        (
            "churn",
            Box::new(|r: &mut Report| churn(r, args.churn_seconds)),
        ),
        (
            "outage",
            Box::new(|r: &mut Report| outage(r, args.outage_seconds, args.outage_rate)),
        ),
    ];
    let started = Instant::now();
    for (name, run) in &scenarios {
        if !wanted(name) {
            continue;
        }
        let _lock = args.lock.as_deref().map(hold_lock);
        eprintln!("soak: {name}");
        let t = Instant::now();
        if let Err(e) = std::panic::catch_unwind(AssertUnwindSafe(|| run(&mut report))) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            report.row(name, "scenario ran to its end", msg, false);
        }
        eprintln!("soak: {name} took {:.0} s", t.elapsed().as_secs_f64());
    }
    let mut text = format!(
        "# socktrace soak run\n\n`cargo xtask soak` on this machine ({} CPUs), {:.0} minutes. \
         Each row is a figure measured on real programs with the real agent; a promise not kept \
         is marked BROKEN and fails the run.\n\n| scenario | measured | result |\n|---|---|---|\n",
        std::thread::available_parallelism().map_or(0, usize::from),
        started.elapsed().as_secs_f64() / 60.0
    );
    for [s, m, v] in &report.rows {
        text.push_str(&format!("| {s} | {m} | {v} |\n"));
    }
    if let Some(fuzz) = &args.fuzz_table {
        match std::fs::read_to_string(fuzz) {
            Ok(t) => text.push_str(&format!("\n{t}")),
            Err(e) => report
                .broken
                .push(format!("fuzz table {}: {e}", fuzz.display())),
        }
    }
    write_report(&report_dir("soak"), &text).expect("writing the report");
    if !report.broken.is_empty() {
        eprintln!("soak: promises broken:\n  {}", report.broken.join("\n  "));
        std::process::exit(1);
    }
}
