//! Cross-host trace propagation end to end, as root: two "hosts" (network namespaces joined by
//! a veth pair), a client without tracing code on one (`tests/peers/inject_client.py`, which
//! writes exactly the bytes it is given, one `send()` per piece), a raw HTTP/1.1 sink on the
//! other (`tests/peers/inject_sink.py`, which reports every byte it received), and the real
//! agent inserting `traceparent` in the kernel. The sink's bytes are compared in full with what
//! the client wrote plus one header line per injected request, at the place it must be, and the
//! header is matched with the spans that arrive over OTLP.

use std::{
    io::{BufRead, BufReader, Read, Write},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use socktrace_tests::{
    harness::{Agent, ChildGuard, exact, loaded_programs, of_kind, peer, require_root, wait_line},
    otlp_receiver::{OtlpReceiver, Protocol, ReceivedSpan, hex},
};

const WAIT: Duration = Duration::from_secs(30);
/// `traceparent: 00-<32 hex>-<16 hex>-01\r\n`.
const LINE: usize = 70;
const CLIENT_ADDR: &str = "10.77.0.1";
const SERVER_ADDR: &str = "10.77.0.2";

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .expect("running ip (iproute2 must be installed)");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two network namespaces joined by a veth pair: the client "host" (`CLIENT_ADDR`) and the
/// server "host" (`SERVER_ADDR`). Deleted on drop, which also deletes the veth pair.
struct Hosts {
    client: String,
    server: String,
}

impl Hosts {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "{}{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let hosts = Self {
            client: format!("sti{tag}c"),
            server: format!("sti{tag}s"),
        };
        let (vc, vs) = (format!("svc{tag}"), format!("svs{tag}"));
        run(Command::new("ip").args(["netns", "add", &hosts.client]));
        run(Command::new("ip").args(["netns", "add", &hosts.server]));
        run(Command::new("ip").args(["link", "add", &vc, "type", "veth", "peer", "name", &vs]));
        run(Command::new("ip").args(["link", "set", &vc, "netns", &hosts.client]));
        run(Command::new("ip").args(["link", "set", &vs, "netns", &hosts.server]));
        for (ns, dev, addr) in [
            (&hosts.client, &vc, CLIENT_ADDR),
            (&hosts.server, &vs, SERVER_ADDR),
        ] {
            run(Command::new("ip").args([
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                dev,
            ]));
            run(Command::new("ip").args(["-n", ns, "link", "set", dev, "up"]));
            run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]));
        }
        hosts
    }

    /// `python3 tests/peers/<script> args...` inside namespace `ns`. `ip netns exec` execs the
    /// command, so the child's pid is the script's.
    fn python(&self, ns: &str, script: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        // -B: no __pycache__ next to the peers (the relay imports the sink).
        cmd.args(["netns", "exec", ns, "python3", "-B"])
            .arg(peer(script))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        cmd
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The sink on the server host: its port, and the bytes of every connection that ended.
struct Sink {
    guard: ChildGuard,
    port: u16,
    conns: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Sink {
    /// `inject_sink.py` (or a script with the same output, `inject_relay.py`) in `ns`.
    fn start(hosts: &Hosts, ns: &str, script: &str, args: &[&str]) -> Self {
        let mut child = hosts
            .python(ns, script, args)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {script}: {e}"));
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        let guard = ChildGuard::new(script, child);
        let port = wait_line(&mut out, "PORT ", WAIT).parse().expect("port");
        let conns = Arc::new(Mutex::new(Vec::new()));
        let sink = conns.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while out.read_line(&mut line).is_ok_and(|n| n > 0) {
                if let Some(bytes) = line.trim_end().strip_prefix("CONN ") {
                    sink.lock().expect("lock").push(unhex(bytes));
                }
                line.clear();
            }
        });
        Self { guard, port, conns }
    }

    fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// The bytes of the next connection to end (waits for it).
    fn next_conn(&self) -> Vec<u8> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(c) = {
                let mut conns = self.conns.lock().expect("lock");
                (!conns.is_empty()).then(|| conns.remove(0))
            } {
                return c;
            }
            assert!(Instant::now() < deadline, "the sink saw no connection end");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Bytes from the peers' hex.
fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex from the peer"))
        .collect()
}

/// One thing the client does.
enum Step<'a> {
    /// One `send()` of these bytes.
    Send(&'a [u8]),
    /// These bytes through a non-blocking socket: as many `send()` calls as the kernel needs.
    SendNonBlocking(&'a [u8]),
    /// Set `SO_SNDBUF`.
    SendBuffer(usize),
    /// Read this many responses.
    Responses(usize),
}

/// The client on the client host, connected to `port` on the server host once it is told what
/// to do; started before the agent so that the agent can trace it by pid.
struct Client {
    guard: ChildGuard,
    out: BufReader<std::process::ChildStdout>,
}

impl Client {
    fn start(hosts: &Hosts, port: u16) -> Self {
        let mut child = hosts
            .python(
                &hosts.client,
                "inject_client.py",
                &[SERVER_ADDR, &port.to_string()],
            )
            .spawn()
            .expect("starting the client");
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        let guard = ChildGuard::new("inject_client.py", child);
        wait_line(&mut out, "READY", WAIT);
        Self { guard, out }
    }

    fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Runs the steps on one connection and waits until the client has closed it.
    fn run(mut self, steps: &[Step]) {
        let json: Vec<String> = steps
            .iter()
            .map(|s| match s {
                Step::Send(b) => format!("[\"send\", \"{}\"]", hex(b)),
                Step::SendNonBlocking(b) => {
                    format!("[\"send_nonblocking\", \"{}\"]", hex(b))
                }
                Step::SendBuffer(n) => format!("[\"sndbuf\", {n}]"),
                Step::Responses(n) => format!("[\"responses\", {n}]"),
            })
            .collect();
        let stdin = self.guard.stdin();
        writeln!(stdin, "[{}]", json.join(", ")).expect("writing to the client");
        stdin.flush().expect("flushing the client's stdin");
        wait_line(&mut self.out, "DONE", WAIT);
    }
}

/// The OTLP receiver and the agent, tracing these processes only: injection must not touch
/// other programs on the machine while tests run.
fn agent_for(pids: &[u32], extra: &[&str]) -> (OtlpReceiver, Agent) {
    let receiver = OtlpReceiver::start_blocking(Protocol::Grpc);
    let endpoint = receiver.endpoint();
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let pids = pids.join(",");
    let mut args = vec![
        "--otlp-endpoint",
        endpoint.as_str(),
        "--otlp-protocol",
        "grpc",
        "--pid",
        pids.as_str(),
    ];
    args.extend_from_slice(extra);
    let agent = Agent::start(&args);
    (receiver, agent)
}

/// Everything a test needs: hosts, sink, client, OTLP receiver and agent.
struct Setup {
    _hosts: Hosts,
    sink: Sink,
    client: Option<Client>,
    client_pid: u32,
    receiver: OtlpReceiver,
    agent: Agent,
}

impl Setup {
    fn new(extra: &[&str]) -> Self {
        require_root();
        let hosts = Hosts::new();
        let sink = Sink::start(&hosts, &hosts.server, "inject_sink.py", &[SERVER_ADDR]);
        let client = Client::start(&hosts, sink.port);
        let (receiver, agent) = agent_for(&[client.pid(), sink.pid()], extra);
        Self {
            client_pid: client.pid(),
            _hosts: hosts,
            sink,
            client: Some(client),
            receiver,
            agent,
        }
    }

    /// Runs the client's steps and returns what the sink received on that connection.
    fn exchange(&mut self, steps: &[Step]) -> Vec<u8> {
        self.client
            .take()
            .expect("one exchange per setup")
            .run(steps);
        self.sink.next_conn()
    }
}

/// The bytes the client wrote, in order.
fn written(steps: &[Step]) -> Vec<u8> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Send(b) | Step::SendNonBlocking(b) => Some(*b),
            Step::Responses(_) | Step::SendBuffer(_) => None,
        })
        .flatten()
        .copied()
        .collect()
}

/// An injected header: the trace id and parent (span) id it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Injected {
    trace_id: String,
    span_id: String,
    /// The flags say "sampled" (`-01`, not `-00`).
    sampled: bool,
}

fn show(b: &[u8]) -> String {
    if b.len() > 4000 {
        return format!(
            "{} ... ({} bytes) ... {}",
            b[..1500].escape_ascii(),
            b.len(),
            b[b.len() - 1500..].escape_ascii()
        );
    }
    b.escape_ascii().to_string()
}

/// Checks that `received` is exactly `original` with one `traceparent` line inserted at each
/// of the offsets `at` (offsets in `original`, ascending) and nowhere else; returns the ids of
/// those lines in order.
fn injected_at(original: &[u8], received: &[u8], at: &[usize]) -> Vec<Injected> {
    assert_eq!(
        received.len(),
        original.len() + LINE * at.len(),
        "expected {} injected line(s) at {at:?}; received:\n{}",
        at.len(),
        show(received)
    );
    let mut expected = Vec::with_capacity(received.len());
    let mut ids = Vec::new();
    let mut from = 0;
    for (k, &pos) in at.iter().enumerate() {
        expected.extend_from_slice(&original[from..pos]);
        let line = &received[pos + k * LINE..pos + (k + 1) * LINE];
        let text = std::str::from_utf8(line).unwrap_or("");
        let well_formed = text.starts_with("traceparent: 00-")
            && (text.ends_with("-01\r\n") || text.ends_with("-00\r\n"))
            && text.as_bytes()[48] == b'-'
            && text[16..48]
                .bytes()
                .chain(text[49..65].bytes())
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
        assert!(
            well_formed,
            "no traceparent line at offset {pos} (request {k}); received:\n{}",
            show(received)
        );
        ids.push(Injected {
            trace_id: text[16..48].to_owned(),
            span_id: text[49..65].to_owned(),
            sampled: text.ends_with("-01\r\n"),
        });
        assert_ne!(ids[k].trace_id, "0".repeat(32));
        assert_ne!(ids[k].span_id, "0".repeat(16));
        expected.extend_from_slice(line);
        from = pos;
    }
    expected.extend_from_slice(&original[from..]);
    assert!(
        received == expected.as_slice(),
        "the stream differs from the written bytes plus the injected lines.\nexpected:\n{}\nreceived:\n{}",
        show(&expected),
        show(received)
    );
    ids
}

/// Offset just after the request line of the request that starts at `start`.
fn after_request_line(bytes: &[u8], start: usize) -> usize {
    start
        + bytes[start..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a request line")
        + 2
}

fn spans_of(spans: &[ReceivedSpan], pid: u32) -> Vec<ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.resource_int("process.pid") == Some(i64::from(pid)))
        .cloned()
        .collect()
}

/// Every injected header is the client span of its request, and the server span of that
/// request is its child.
fn assert_linked(client: &[ReceivedSpan], server: &[ReceivedSpan], ids: &[(usize, Injected)]) {
    for (i, id) in ids {
        let c = &client[*i];
        assert_eq!(
            (c.trace_id(), c.span_id()),
            (id.trace_id.clone(), id.span_id.clone()),
            "request {i}: the injected header is not the client span {c}"
        );
        let s = &server[*i];
        assert_eq!(s.trace_id(), id.trace_id, "request {i}: server span {s}");
        assert_eq!(
            s.parent_span_id().as_deref(),
            Some(id.span_id.as_str()),
            "request {i}: the server span's parent is not the client span: {s}"
        );
    }
}

const GET_A: &[u8] = b"GET /a HTTP/1.1\r\nHost: sink\r\nUser-Agent: test\r\n\r\n";
const POST_B: &[u8] =
    b"POST /b HTTP/1.1\r\nHost: sink\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world";
/// Already carries trace context: must arrive unchanged.
const GET_TRACED: &[u8] = b"GET /c HTTP/1.1\r\nHost: sink\r\nTRACEPARENT: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\ntracestate: vendor=opaque\r\n\r\n";

#[test]
fn injected_header_is_the_client_span_and_parents_the_server_span() {
    let mut t = Setup::new(&[]);
    assert!(
        t.agent
            .stderr()
            .contains("traceparent injection: on (sock_ops on "),
        "{}",
        t.agent.stderr()
    );
    let steps = [
        Step::Send(GET_A),
        Step::Responses(1),
        Step::Send(POST_B),
        Step::Responses(1),
        Step::Send(GET_TRACED),
        Step::Responses(1),
    ];
    let received = t.exchange(&steps);
    let original = written(&steps);
    let ids = injected_at(
        &original,
        &received,
        &[
            after_request_line(&original, 0),
            after_request_line(&original, GET_A.len()),
        ],
    );
    assert_ne!(ids[0].trace_id, ids[1].trace_id, "two requests, two traces");

    let (server, client) = exact(&t.receiver, 3, 3);
    let client = spans_of(&client, t.client_pid);
    let server = spans_of(&server, t.sink.pid());
    assert_eq!((client.len(), server.len()), (3, 3));
    assert_linked(
        &client,
        &server,
        &[(0, ids[0].clone()), (1, ids[1].clone())],
    );
    // The request that had its own context keeps it, end to end.
    assert_eq!(server[2].trace_id(), "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(
        server[2].parent_span_id().as_deref(),
        Some("b7ad6b7169203331")
    );
    for s in &server {
        assert_eq!(s.attr_int("http.response.status_code"), Some(200), "{s}");
    }
    assert_eq!(t.agent.stop(), Some(0));
    let err = t.agent.stderr();
    assert_eq!(counter(&err, "injected"), 2, "{err}");
    assert_eq!(counter(&err, "inject_skipped_has_traceparent"), 1, "{err}");
}

#[test]
fn no_inject_leaves_every_byte_alone() {
    let mut t = Setup::new(&["--no-inject"]);
    assert!(
        t.agent
            .stderr()
            .contains("traceparent injection: off (--no-inject)"),
        "{}",
        t.agent.stderr()
    );
    let steps = [
        Step::Send(GET_A),
        Step::Responses(1),
        Step::Send(POST_B),
        Step::Responses(1),
    ];
    let received = t.exchange(&steps);
    injected_at(&written(&steps), &received, &[]);
    let (server, client) = exact(&t.receiver, 2, 2);
    // Without injection the two sides are separate traces.
    for (c, s) in client.iter().zip(&server) {
        assert_ne!(c.trace_id(), s.trace_id());
        assert_eq!(s.parent_span_id(), None, "{s}");
    }
}

#[test]
fn pipelined_requests_each_in_its_own_write_are_all_injected() {
    let mut t = Setup::new(&[]);
    let steps = [
        Step::Send(GET_A),
        Step::Send(POST_B),
        Step::Send(GET_A),
        Step::Responses(3),
    ];
    let received = t.exchange(&steps);
    let original = written(&steps);
    let starts = [0, GET_A.len(), GET_A.len() + POST_B.len()];
    let at: Vec<usize> = starts
        .iter()
        .map(|s| after_request_line(&original, *s))
        .collect();
    let ids = injected_at(&original, &received, &at);
    let (server, client) = exact(&t.receiver, 3, 3);
    let ids: Vec<_> = ids.into_iter().enumerate().collect();
    assert_linked(&client, &server, &ids);
}

#[test]
fn pipelined_requests_in_one_write_inject_only_the_first() {
    let mut t = Setup::new(&[]);
    let batch: Vec<u8> = [GET_A, POST_B, GET_A].concat();
    let steps = [
        Step::Send(&batch),
        Step::Responses(3),
        // The framing is followed across the batch: the next write is a request again.
        Step::Send(POST_B),
        Step::Responses(1),
    ];
    let received = t.exchange(&steps);
    let original = written(&steps);
    let ids = injected_at(
        &original,
        &received,
        &[
            after_request_line(&original, 0),
            after_request_line(&original, batch.len()),
        ],
    );
    let (server, client) = exact(&t.receiver, 4, 4);
    assert_linked(
        &client,
        &server,
        &[(0, ids[0].clone()), (3, ids[1].clone())],
    );
    assert_eq!(t.agent.stop(), Some(0));
    let err = t.agent.stderr();
    assert_eq!(counter(&err, "inject_skipped_mid_message"), 2, "{err}");
}

#[test]
fn bodies_in_pieces_and_heads_in_pieces() {
    let mut t = Setup::new(&[]);
    let head = b"PUT /p HTTP/1.1\r\nHost: sink\r\nContent-Length: 30\r\n\r\n";
    let steps = [
        // Head complete in its write, body in three more: injected; the body pieces are not
        // requests even when they look like one.
        Step::Send(head),
        Step::Send(b"GET / HTTP/1.1\r\n"),
        Step::Send(b"\r\n0123456789"),
        Step::Send(b"ab"),
        Step::Responses(1),
        // The next request in its own write: injected.
        Step::Send(GET_A),
        Step::Responses(1),
        // A head written in two pieces cannot be injected, and the connection is left alone
        // from then on: the request after it arrives unchanged too.
        Step::Send(b"GET /split HTTP/1.1\r\nHost: si"),
        Step::Send(b"nk\r\n\r\n"),
        Step::Responses(1),
        Step::Send(GET_A),
        Step::Responses(1),
    ];
    let received = t.exchange(&steps);
    let original = written(&steps);
    let second = head.len() + 30;
    assert_eq!(&original[second..second + GET_A.len()], GET_A);
    injected_at(
        &original,
        &received,
        &[
            after_request_line(&original, 0),
            after_request_line(&original, second),
        ],
    );
    let (server, client) = exact(&t.receiver, 4, 4);
    // The split request and the one after it are traced, not linked.
    for i in [2, 3] {
        assert_ne!(client[i].trace_id(), server[i].trace_id());
    }
    assert_eq!(t.agent.stop(), Some(0));
    let err = t.agent.stderr();
    assert_eq!(counter(&err, "injected"), 2, "{err}");
    assert_eq!(
        counter(&err, "inject_skipped_incomplete_headers"),
        1,
        "{err}"
    );
}

/// A counter from the agent's final stats line.
fn counter(stderr: &str, name: &str) -> u64 {
    let line = stderr
        .lines()
        .rfind(|l| l.contains("final counters"))
        .unwrap_or_else(|| panic!("no final counters:\n{stderr}"));
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no counter {name} in {line}"))
}

#[test]
fn a_write_the_kernel_sends_only_in_part_ends_injection_safely() {
    let mut t = Setup::new(&[]);
    let mib = 1 << 20;
    // A body full of what looks like requests, sent through a small send buffer without
    // blocking: the kernel takes a little at a time and the client writes the rest again. The
    // rest passes under the kernel's earlier verdict, unseen: the connection is left alone
    // from then on, and not one byte may change.
    let body: Vec<u8> = b"GET /inner HTTP/1.1\r\nHost: x\r\n\r\n"
        .iter()
        .copied()
        .cycle()
        .take(mib)
        .collect();
    let post = [
        format!("POST /nb HTTP/1.1\r\nHost: sink\r\nContent-Length: {mib}\r\n\r\n").into_bytes(),
        body,
    ]
    .concat();
    let steps = [
        Step::SendBuffer(4096),
        Step::SendNonBlocking(&post),
        Step::Responses(1),
        Step::SendNonBlocking(GET_A),
        Step::Responses(1),
    ];
    let received = t.exchange(&steps);
    let original = written(&steps);
    let ids = injected_at(&original, &received, &[after_request_line(&original, 0)]);
    let (server, client) = exact(&t.receiver, 2, 2);
    assert_linked(&client, &server, &[(0, ids[0].clone())]);
    assert_eq!(t.agent.stop(), Some(0));
    let err = t.agent.stderr();
    assert_eq!(counter(&err, "inject_partial_send"), 1, "{err}");
    assert_eq!(counter(&err, "injected"), 1, "{err}");
}

#[test]
fn chunked_bodies_are_followed_chunk_by_chunk() {
    let mut t = Setup::new(&[]);
    let head = b"POST /chunks HTTP/1.1\r\nHost: sink\r\nTransfer-Encoding: chunked\r\n\r\n";
    // Head and first chunk in one write, a chunk whose data looks like a request, a chunk in
    // two writes (line and data together, then the rest), the last chunk with an extension.
    let first = [head.as_slice(), b"5\r\nhello\r\n"].concat();
    let steps = [
        Step::Send(&first),
        Step::Send(b"1b\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n\r\n"),
        Step::Send(b"10;ext=1\r\n0123456"),
        Step::Send(b"789abcdef\r\n"),
        Step::Send(b"0\r\n\r\n"),
        Step::Responses(1),
        Step::Send(GET_A),
        Step::Responses(1),
        // Trailers are not followed: this request is injected, what comes after it is not.
        Step::Send(b"POST /t HTTP/1.1\r\nHost: sink\r\nTransfer-Encoding: chunked\r\n\r\n"),
        Step::Send(b"0\r\nX-Trailer: 1\r\n\r\n"),
        Step::Responses(1),
        Step::Send(GET_A),
        Step::Responses(1),
    ];
    let received = t.exchange(&steps);
    let original = written(&steps);
    let get = original
        .windows(GET_A.len())
        .position(|w| w == GET_A)
        .expect("the GET");
    let trailer_post = get + GET_A.len();
    injected_at(
        &original,
        &received,
        &[
            after_request_line(&original, 0),
            after_request_line(&original, get),
            after_request_line(&original, trailer_post),
        ],
    );
    assert_eq!(t.agent.stop(), Some(0));
    let err = t.agent.stderr();
    assert_eq!(counter(&err, "injected"), 3, "{err}");
    assert_eq!(counter(&err, "inject_skipped_unknown_framing"), 1, "{err}");
}

#[test]
fn a_connection_that_does_not_start_with_a_request_is_left_alone() {
    let mut t = Setup::new(&[]);
    let steps = [
        Step::Send(b"PING\r\n\r\n"),
        Step::Responses(1),
        Step::Send(GET_A),
        Step::Responses(1),
    ];
    let received = t.exchange(&steps);
    injected_at(&written(&steps), &received, &[]);
    assert_eq!(t.agent.stop(), Some(0));
    let err = t.agent.stderr();
    assert_eq!(counter(&err, "inject_not_http"), 1, "{err}");
    assert_eq!(counter(&err, "injected"), 0, "{err}");
}

#[test]
fn large_bodies_arrive_intact() {
    let mut t = Setup::new(&[]);
    let mib = 1 << 20;
    let body: Vec<u8> = (0..mib)
        .map(|i| b"abcdefghijklmnopqrstuvwxyz\r\n"[i % 28])
        .collect();
    let one_write = [
        format!("POST /big HTTP/1.1\r\nHost: sink\r\nContent-Length: {mib}\r\n\r\n").into_bytes(),
        body.clone(),
    ]
    .concat();
    // A body that is itself a request, written with its head and then in pieces.
    let mut tricky_body = b"GET / HTTP/1.1\r\nHost: inner\r\n\r\n".to_vec();
    tricky_body.resize(mib, b'G');
    let tricky_head =
        format!("POST /tricky HTTP/1.1\r\nHost: sink\r\nContent-Length: {mib}\r\n\r\n")
            .into_bytes();
    let first_piece = [tricky_head.as_slice(), &tricky_body[..100]].concat();
    let steps = [
        Step::Send(&one_write),
        Step::Responses(1),
        Step::Send(&first_piece),
        Step::Send(&tricky_body[100..300_000]),
        Step::Send(&tricky_body[300_000..]),
        Step::Responses(1),
        Step::Send(GET_A),
        Step::Responses(1),
    ];
    let received = t.exchange(&steps);
    let original = written(&steps);
    let second = one_write.len();
    let third = second + tricky_head.len() + mib;
    let ids = injected_at(
        &original,
        &received,
        &[
            after_request_line(&original, 0),
            after_request_line(&original, second),
            after_request_line(&original, third),
        ],
    );
    let (server, client) = exact(&t.receiver, 3, 3);
    let ids: Vec<_> = ids.into_iter().enumerate().collect();
    assert_linked(&client, &server, &ids);
}

/// client host -> relay (server host) -> sink (server host): the relay calls the sink while it
/// serves each request.
fn chain() -> (Hosts, Sink, Sink, Client) {
    require_root();
    let hosts = Hosts::new();
    let sink = Sink::start(&hosts, &hosts.server, "inject_sink.py", &["127.0.0.1"]);
    let down_port = sink.port.to_string();
    let relay = Sink::start(
        &hosts,
        &hosts.server,
        "inject_relay.py",
        &[SERVER_ADDR, &down_port],
    );
    let client = Client::start(&hosts, relay.port);
    (hosts, sink, relay, client)
}

#[test]
fn a_server_passes_its_callers_trace_to_the_calls_it_makes_while_serving() {
    let (_hosts, sink, relay, client) = chain();
    let (client_pid, relay_pid, sink_pid) = (client.pid(), relay.pid(), sink.pid());
    let (receiver, _agent) = agent_for(&[client_pid, relay_pid, sink_pid], &[]);
    let steps = [
        Step::Send(GET_A),
        Step::Responses(1),
        Step::Send(GET_TRACED),
        Step::Responses(1),
    ];
    client.run(&steps);
    let original = written(&steps);
    let upstream = injected_at(
        &original,
        &relay.next_conn(),
        &[after_request_line(&original, 0)],
    );
    // The relay's two calls to the sink, each injected while it served one request.
    const DOWN: &[u8] = b"GET /down HTTP/1.1\r\nHost: down\r\n\r\n";
    let calls = [DOWN, DOWN].concat();
    let downstream = injected_at(
        &calls,
        &sink.next_conn(),
        &[
            after_request_line(&calls, 0),
            after_request_line(&calls, DOWN.len()),
        ],
    );
    // The kernel continued the trace of the request being served: the injected one, then the
    // one the client sent with its own traceparent.
    assert_eq!(downstream[0].trace_id, upstream[0].trace_id);
    assert_eq!(downstream[1].trace_id, "0af7651916cd43dd8448eb211c80319c");
    assert_ne!(downstream[0].span_id, upstream[0].span_id);

    let (server, client) = exact(&receiver, 4, 4);
    let (relay_in, relay_out) = (spans_of(&server, relay_pid), spans_of(&client, relay_pid));
    let (sink_in, client_out) = (spans_of(&server, sink_pid), spans_of(&client, client_pid));
    assert_eq!(
        (
            relay_in.len(),
            relay_out.len(),
            sink_in.len(),
            client_out.len()
        ),
        (2, 2, 2, 2)
    );
    assert_linked(&client_out, &relay_in, &[(0, upstream[0].clone())]);
    assert_linked(
        &relay_out,
        &sink_in,
        &[(0, downstream[0].clone()), (1, downstream[1].clone())],
    );
    assert_eq!(
        relay_in[1].parent_span_id().as_deref(),
        Some("b7ad6b7169203331")
    );
    // One trace from the client to the sink: each call is a child of the request it serves.
    for i in 0..2 {
        assert_eq!(relay_out[i].trace_id(), relay_in[i].trace_id());
        assert_eq!(
            relay_out[i].parent_span_id(),
            Some(relay_in[i].span_id()),
            "{}",
            relay_out[i]
        );
    }
}

/// Whether a trace id (32 hex digits) is sampled at `ratio` by OpenTelemetry's trace-id ratio
/// rule: its 56 low bits against the rejection threshold (1 - ratio) * 2^56.
fn sampled_at(trace_id: &str, ratio: f64) -> bool {
    let r = u64::from_str_radix(&trace_id[18..], 16).expect("hex trace id");
    r >= ((1.0 - ratio) * (1u64 << 56) as f64).round() as u64
}

/// Carries its own context, flags "not sampled", with a trace id the ratio 0.5 would sample.
const GET_TRACED_00: &[u8] = b"GET /d HTTP/1.1\r\nHost: sink\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00\r\n\r\n";

#[test]
fn injected_flags_carry_the_head_samplers_decision() {
    const ROOTS: usize = 24;
    let (_hosts, sink, relay, client) = chain();
    let pids = [client.pid(), relay.pid(), sink.pid()];
    // The client writes two contexts of its own (two parent ids): socktrace takes it for a
    // process that traces itself, and `link` keeps its spans, linked as any other.
    let (receiver, _agent) = agent_for(
        &pids,
        &[
            "--sampler",
            "parentbased_traceidratio",
            "--sample-ratio",
            "0.5",
            "--instrumented-processes",
            "link",
        ],
    );
    // Requests without context (the client's injected header starts each trace), then one
    // that arrives "not sampled" with an id the ratio keeps, and one "sampled" with an id
    // (0af7...: low bits 0x48eb...) the ratio drops.
    let mut steps = Vec::new();
    for _ in 0..ROOTS {
        steps.extend([Step::Send(GET_A), Step::Responses(1)]);
    }
    steps.extend([Step::Send(GET_TRACED_00), Step::Responses(1)]);
    steps.extend([Step::Send(GET_TRACED), Step::Responses(1)]);
    client.run(&steps);
    let original = written(&steps);
    let at: Vec<usize> = (0..ROOTS)
        .map(|i| after_request_line(&original, i * GET_A.len()))
        .collect();
    let upstream = injected_at(&original, &relay.next_conn(), &at);
    const DOWN: &[u8] = b"GET /down HTTP/1.1\r\nHost: down\r\n\r\n";
    let calls = DOWN.repeat(ROOTS + 2);
    let at: Vec<usize> = (0..ROOTS + 2)
        .map(|i| after_request_line(&calls, i * DOWN.len()))
        .collect();
    let downstream = injected_at(&calls, &sink.next_conn(), &at);

    // A trace this node starts: the ratio rule on its id, in the kernel as in the test.
    for (i, up) in upstream.iter().enumerate() {
        assert_eq!(
            up.sampled,
            sampled_at(&up.trace_id, 0.5),
            "request {i}: {up:?}"
        );
        // The relay continues it and passes the caller's decision on.
        assert_eq!(
            (&downstream[i].trace_id, downstream[i].sampled),
            (&up.trace_id, up.sampled),
            "call {i}"
        );
    }
    let kept = upstream.iter().filter(|u| u.sampled).count();
    assert!(
        kept > 0 && kept < ROOTS,
        "with ratio 0.5, {ROOTS} random traces are neither all kept nor all dropped: {kept}"
    );
    // Incoming flags win over the ratio (parent-based).
    let (d00, d01) = (&downstream[ROOTS], &downstream[ROOTS + 1]);
    assert_eq!(
        (d00.trace_id.as_str(), d00.sampled),
        ("4bf92f3577b34da6a3ce929d0e0e4736", false)
    );
    assert!(sampled_at(&d00.trace_id, 0.5));
    assert_eq!(
        (d01.trace_id.as_str(), d01.sampled),
        ("0af7651916cd43dd8448eb211c80319c", true)
    );
    assert!(!sampled_at(&d01.trace_id, 0.5));

    // What this node exports agrees with what it told the next hop: every span of the sampled
    // traces (client, relay in and out, sink), none of the others.
    let traces = kept + 1;
    let (server, client) = exact(&receiver, 2 * traces, 2 * traces);
    let mut expected: Vec<String> = upstream
        .iter()
        .filter(|u| u.sampled)
        .map(|u| u.trace_id.clone())
        .chain([d01.trace_id.clone()])
        .collect();
    expected.sort();
    for spans in [&server, &client] {
        let mut got: Vec<String> = spans.iter().map(|s| s.trace_id()).collect();
        got.sort();
        got.dedup();
        assert_eq!(got, expected);
    }
}

/// Starts the agent through `WRAPPER sh -c 'PREFIX; exec AGENT ARGS'` and returns its stderr
/// once the probes are attached (then kills it: the wrapper must exec the agent or take its
/// child down with it, as `unshare --kill-child` does).
fn start_line_through(wrapper: &[&str], prefix: &str) -> String {
    require_root();
    let bin = socktrace_tests::harness::agent_bin();
    let script = format!(
        "{prefix}; exec {} --port 1 --stats-interval 0",
        bin.display()
    );
    let mut child = Command::new(wrapper[0])
        .args(&wrapper[1..])
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {wrapper:?}: {e}"));
    let mut err = BufReader::new(child.stderr.take().expect("piped"));
    let _guard = ChildGuard::new("agent", child);
    let mut all = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut line = String::new();
    while !all.contains("tracepoints attached") {
        assert!(Instant::now() < deadline, "not attached:\n{all}");
        line.clear();
        if err.read_line(&mut line).unwrap_or(0) == 0 {
            panic!("the agent exited before attaching:\n{all}");
        }
        all.push_str(&line);
    }
    all
}

#[test]
fn without_net_admin_the_agent_says_so_and_traces_without_injection() {
    // The socket map needs CAP_NET_ADMIN even to exist: the agent must load without it.
    let err = start_line_through(&["setpriv", "--bounding-set=-net_admin,-sys_admin"], "true");
    assert!(
        err.contains(
            "socktrace: warning: missing CAP_NET_ADMIN: traceparent headers are not injected into outgoing HTTP/1 requests (the kernel requires it for sock_ops and sk_msg programs); grant it, or pass --no-inject\n"
        ),
        "{err}"
    );
    assert!(err.contains("; traceparent injection: off; "), "{err}");
}

#[test]
fn without_a_cgroup2_mount_the_agent_mounts_one_of_its_own() {
    // A private mount namespace without any cgroup2 mount (the host's stay as they are), and a
    // pid namespace so that `/proc/1` is the agent's own view too.
    let err = start_line_through(
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
        ],
        "for m in $(awk '$9 == \"cgroup2\" {print $5}' /proc/self/mountinfo); do umount -l $m; done; \
         ! grep -q ' - cgroup2 ' /proc/self/mountinfo",
    );
    assert!(
        err.contains("; traceparent injection: on (sock_ops on a private cgroup2 mount); "),
        "{err}"
    );
}

#[test]
fn killing_the_agent_detaches_the_injection() {
    require_root();
    let count = |name: &str| loaded_programs().iter().filter(|p| *p == name).count();
    let before = (count("inject_sockops"), count("inject_http"));
    let mut agent = Agent::start(&["--port", "1"]);
    assert!(
        agent.stderr().contains("traceparent injection: on"),
        "{}",
        agent.stderr()
    );
    assert_eq!(
        (count("inject_sockops"), count("inject_http")),
        (before.0 + 1, before.1 + 1)
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGKILL) };
    let _ = agent.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    while (count("inject_sockops"), count("inject_http")) != before {
        assert!(
            Instant::now() < deadline,
            "injection programs still loaded after SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Spans by kind, for tests that look at all of them.
#[allow(dead_code)]
fn kinds(spans: &[ReceivedSpan]) -> (Vec<ReceivedSpan>, Vec<ReceivedSpan>) {
    (
        of_kind(spans, SpanKind::Server),
        of_kind(spans, SpanKind::Client),
    )
}

/// A grpcio peer (`tests/peers/grpc_tp_peer.py`) in namespace `ns`, with the test virtualenv's
/// Python (it has grpcio), and its stdout.
fn grpc_peer(ns: &str, args: &[&str]) -> (ChildGuard, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(socktrace_tests::harness::python())
        .arg("-B")
        .arg(peer("grpc_tp_peer.py"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting grpc_tp_peer.py");
    let out = BufReader::new(child.stdout.take().expect("piped"));
    (ChildGuard::new("grpc_tp_peer.py", child), out)
}

/// The metadata value the client of `grpc_tp_peer.py` sends with its `traced` call.
const GRPC_TRACED: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// `00-<32 hex>-<16 hex>-<2 hex>` as an injected header: its trace and parent ids.
fn parse_traceparent(v: &str) -> Injected {
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    assert!(
        parts.len() == 4
            && parts[0] == "00"
            && hex(parts[1], 32)
            && hex(parts[2], 16)
            && hex(parts[3], 2),
        "not a traceparent: {v:?}"
    );
    Injected {
        trace_id: parts[1].to_owned(),
        span_id: parts[2].to_owned(),
        sampled: parts[3] == "01",
    }
}

#[test]
fn grpc_calls_carry_an_injected_traceparent_to_the_other_host() {
    grpc_injection(false);
}

#[test]
fn grpc_go_calls_carry_an_injected_traceparent_to_the_other_host() {
    grpc_injection(true);
}

/// A gRPC client on the client host - grpcio, or grpc-go (`tests/peers/go/grpcpeer`, its own
/// HPACK encoder and write pattern) - calling the grpcio server on the other one, which reports
/// the `traceparent` metadata of every call.
fn grpc_injection(go: bool) {
    require_root();
    let hosts = Hosts::new();
    let (server, mut server_out) = grpc_peer(&hosts.server, &["server", SERVER_ADDR]);
    let port = wait_line(&mut server_out, "PORT ", WAIT);
    let (mut client, mut client_out) = if go {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &hosts.client])
            .arg(socktrace_tests::harness::go_peer("grpcpeer", false))
            .args(["h2client", &format!("{SERVER_ADDR}:{port}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting grpcpeer");
        let out = BufReader::new(child.stdout.take().expect("piped"));
        (ChildGuard::new("grpcpeer", child), out)
    } else {
        grpc_peer(&hosts.client, &["client", SERVER_ADDR, port.as_str()])
    };
    wait_line(&mut client_out, "READY", WAIT);
    let (receiver, mut agent) = agent_for(&[client.pid(), server.pid()], &[]);

    // One channel, one HTTP/2 connection: two calls get a header, the third brings its own
    // (and arrives with exactly that one), and after it the connection is left alone (the
    // client's HPACK encoder may send the name from its dynamic table from then on).
    let hexs = |msgs: &[&[u8]]| {
        msgs.iter()
            .map(|m| m.iter().map(|b| format!("{b:02x}")).collect::<String>())
            .collect::<Vec<_>>()
            .join(",")
    };
    let calls: [(&str, String); 4] = if go {
        [
            ("unary", "Check SERVING".to_owned()),
            ("stream 3", "Watch SERVING,SERVING,SERVING".to_owned()),
            ("traced", "Check SERVING".to_owned()),
            ("unary", "Check SERVING".to_owned()),
        ]
    } else {
        [
            ("unary", format!("Unary {}", hexs(&[b"hello-unary"]))),
            (
                "stream 3",
                format!("ServerStream {}", hexs(&[b"item-0", b"item-1", b"item-2"])),
            ),
            ("traced", format!("Unary {}", hexs(&[b"hello-traced"]))),
            ("unary", format!("Unary {}", hexs(&[b"hello-unary"]))),
        ]
    };
    let mut received = Vec::new();
    for (step, expected) in &calls {
        writeln!(client.stdin(), "{step}").expect("client stdin");
        // The responses are exactly what the server sent.
        assert_eq!(
            &wait_line(&mut client_out, "RESP ", WAIT),
            expected,
            "{step}"
        );
        received.push(wait_line(&mut server_out, "TP ", WAIT));
    }
    writeln!(client.stdin(), "quit").expect("client stdin");
    let values: Vec<&str> = received
        .iter()
        .map(|l| l.split_once(' ').expect("method and values").1)
        .collect();
    // Exactly one traceparent on each of the first two calls, the caller's own on the third,
    // none on the fourth.
    let ids: Vec<Injected> = values[..2].iter().map(|v| parse_traceparent(v)).collect();
    assert_eq!(values[2], GRPC_TRACED, "{received:?}");
    assert_eq!(values[3], "-", "{received:?}");
    assert_ne!(ids[0].trace_id, ids[1].trace_id, "two calls, two traces");

    let (server_spans, client_spans) = exact(&receiver, 4, 4);
    let client_spans = spans_of(&client_spans, client.pid());
    let server_spans = spans_of(&server_spans, server.pid());
    assert_eq!((client_spans.len(), server_spans.len()), (4, 4));
    for (i, id) in ids.iter().enumerate() {
        let c = client_spans
            .iter()
            .find(|s| s.span_id() == id.span_id)
            .unwrap_or_else(|| panic!("call {i}: no client span has the injected id {id:?}"));
        assert_eq!(c.trace_id(), id.trace_id, "call {i}: {c}");
        let s = server_spans
            .iter()
            .find(|s| s.parent_span_id().as_deref() == Some(id.span_id.as_str()))
            .unwrap_or_else(|| panic!("call {i}: no server span is the child of {c}"));
        assert_eq!(s.trace_id(), id.trace_id, "call {i}: {s}");
    }
    // The call with its own context keeps it end to end.
    assert!(
        server_spans
            .iter()
            .any(|s| s.trace_id() == "0af7651916cd43dd8448eb211c80319c"
                && s.parent_span_id().as_deref() == Some("b7ad6b7169203331")),
        "no server span continues the caller's own traceparent"
    );
    drop(client);
    assert_eq!(agent.stop(), Some(0));
    let err = agent.stderr();
    assert_eq!(counter(&err, "injected_http2"), 2, "{err}");
    assert_eq!(counter(&err, "injected"), 2, "{err}");
    assert_eq!(
        counter(&err, "inject_http2_skipped_has_traceparent"),
        2,
        "{err}"
    );
    assert_eq!(counter(&err, "inject_http2_framing_lost"), 0, "{err}");
    drop(server);
}

/// The keys of the injection's socket map (`INJECT_SOCKHASH`) as `bpftool` dumps them: one
/// per client socket still in it. The test's agent is the only one loaded.
fn sockets_in_the_map() -> usize {
    let show = Command::new("bpftool")
        .args(["-j", "map", "show"])
        .output()
        .expect("bpftool must be installed (cargo xtask test installs it)");
    let maps: serde_json::Value = serde_json::from_slice(&show.stdout).expect("bpftool JSON");
    let ids: Vec<u64> = maps
        .as_array()
        .expect("a list of maps")
        .iter()
        .filter(|m| m["name"] == "INJECT_SOCKHASH")
        .filter_map(|m| m["id"].as_u64())
        .collect();
    assert_eq!(ids.len(), 1, "one agent's socket map loaded: {ids:?}");
    let dump = Command::new("bpftool")
        .args(["-j", "map", "dump", "id", &ids[0].to_string()])
        .output()
        .expect("bpftool");
    let entries: serde_json::Value = serde_json::from_slice(&dump.stdout).expect("bpftool JSON");
    entries.as_array().expect("a list of entries").len()
}

/// A client socket the kernel stops following (its first bytes are not an HTTP request) is
/// taken out of the socket map: a socket in it sends through the socket-map path and reads
/// through `tcp_bpf_recvmsg`, whose blocking read fails with EAGAIN when woken without data.
/// One that carries HTTP/1 stays, and still gets its header.
#[test]
fn a_socket_injection_gives_up_on_leaves_the_socket_map() {
    require_root();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listening");
    let port = listener.local_addr().expect("address").port();
    let held: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
    let into = held.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            into.lock().expect("lock").push(conn);
        }
    });
    // Both connections stay open until the client reads a line from stdin.
    let script = "import socket, sys\n\
                  port = int(sys.argv[1])\n\
                  sys.stdin.readline()\n\
                  a = socket.create_connection(('127.0.0.1', port))\n\
                  a.sendall(b'\\x00\\x00\\x00\\x08\\x04\\xd2\\x16\\x2f')\n\
                  b = socket.create_connection(('127.0.0.1', port))\n\
                  b.sendall(b'GET /kept HTTP/1.1\\r\\nHost: sink\\r\\n\\r\\n')\n\
                  print('SENT', flush=True)\n\
                  sys.stdin.readline()\n";
    let mut child = Command::new(socktrace_tests::harness::python())
        .args(["-c", script, &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the client");
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut client = ChildGuard::new("client", child);
    let (_receiver, mut agent) = agent_for(&[client.pid()], &[]);
    writeln!(client.stdin()).expect("starting the client's connections");
    wait_line(&mut out, "SENT", WAIT);
    let deadline = Instant::now() + WAIT;
    while sockets_in_the_map() != 1 {
        assert!(
            Instant::now() < deadline,
            "still {} sockets in the map",
            sockets_in_the_map()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The HTTP connection stays: it may carry more requests.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(sockets_in_the_map(), 1);
    let received = {
        let mut conns = held.lock().expect("lock");
        assert_eq!(conns.len(), 2);
        let mut buf = vec![0u8; 4096];
        let n = conns[1].read(&mut buf).expect("reading the request");
        buf.truncate(n);
        buf
    };
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.starts_with("GET /kept HTTP/1.1\r\ntraceparent: 00-"),
        "{text}"
    );
    writeln!(client.stdin()).expect("ending the client");
    assert_eq!(agent.stop(), Some(0));
    let kernel = socktrace_tests::harness::final_counters(&agent.stderr(), "kernel");
    assert_eq!(kernel["inject_released"], 1, "{kernel:?}");
    assert_eq!(kernel["injected"], 1, "{kernel:?}");
}
