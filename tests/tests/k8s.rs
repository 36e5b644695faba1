//! End to end, as root: the real agent reads pod metadata from a fake Kubernetes API server
//! (this process, replaying the API-shaped responses in `tests/data/k8s/`) through
//! `--kubeconfig`, while real programs run in cgroups named like CRI containers. Spans must carry
//! the pod, container and owner attributes of their container, survive an API outage, and pick
//! up pod changes once the API is back.

use std::{
    collections::VecDeque,
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{ChildStdout, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use socktrace_tests::{
    harness::{
        Agent, ChildGuard, PyServer, curl, of_kind, peer, require_root, temp_file, wait_line,
    },
    otlp_receiver::{OtlpReceiver, Protocol, ReceivedSpan},
};

/// Container ids of the recorded pods (`containerd://<id>` in their statuses).
const CHECKOUT_ID: &str = "c7761e58969f7edd498186641b2021e8477e1bcd230de4cf3435242da4a40d14";
const REPORT_ID: &str = "845e91831319e89c4d656bdb80c278ac09a7230d61e5dfd2e1b1fbb436ac8917";
const NODE: &str = "test-node";
const TOKEN: &str = "test-token-0123";
const WAIT: Duration = Duration::from_secs(30);

fn data(name: &str) -> String {
    let path = socktrace_tests::harness::workspace()
        .join("tests/data/k8s")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What the fake API server answers. Each watch request takes the next script from `watches`
/// (its lines are streamed as chunks, then the stream stays open until the server stops); with
/// none left, the watch stays open and silent.
#[derive(Default)]
struct ApiScript {
    pod_list: String,
    watches: VecDeque<String>,
    replicaset: Option<(u16, String)>,
    job: Option<(u16, String)>,
}

struct ApiLog {
    /// Request lines and their Authorization header, in arrival order.
    requests: Vec<(String, Option<String>)>,
    /// Watch scripts fully written to a client.
    watches_sent: usize,
}

/// An HTTP/1.1 server on 127.0.0.1 that answers like the Kubernetes API server for the few
/// requests the agent makes. Stopping it closes every connection, like an API server going away.
struct FakeApi {
    port: u16,
    log: Arc<Mutex<ApiLog>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl FakeApi {
    fn start(port: u16, script: ApiScript) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("binding the fake API");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let script = Arc::new(Mutex::new(script));
        let log = Arc::new(Mutex::new(ApiLog {
            requests: Vec::new(),
            watches_sent: 0,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (script, log, stop) = (script.clone(), log.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut conns = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let (script, log, stop) = (script.clone(), log.clone(), stop.clone());
                            conns.push(std::thread::spawn(move || {
                                serve(conn, &script, &log, &stop);
                            }));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
                drop(listener);
                for c in conns {
                    let _ = c.join();
                }
            })
        };
        Self {
            port,
            log,
            stop,
            accept: Some(accept),
        }
    }

    fn requests(&self) -> Vec<(String, Option<String>)> {
        self.log.lock().unwrap().requests.clone()
    }

    fn watches_sent(&self) -> usize {
        self.log.lock().unwrap().watches_sent
    }

    /// Goes away: the listener closes and open watches are cut.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop();
    }
}

fn respond(conn: &mut TcpStream, status: u16, body: &str) {
    let reason = match status {
        200 => "OK",
        403 => "Forbidden",
        _ => "Not Found",
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn not_found(path: &str) -> String {
    format!(
        r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":"{path} not found","reason":"NotFound","code":404}}"#
    )
}

fn serve(conn: TcpStream, script: &Mutex<ApiScript>, log: &Mutex<ApiLog>, stop: &AtomicBool) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut auth = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("authorization")
        {
            auth = Some(v.trim().to_owned());
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_owned();
    log.lock()
        .unwrap()
        .requests
        .push((request_line.trim().to_owned(), auth));
    let (route, query) = path.split_once('?').unwrap_or((&path, ""));
    // kube-rs asks `watch=true`; the API server takes any true value.
    let is_watch = query
        .split('&')
        .any(|p| p == "watch=1" || p == "watch=true");
    match route {
        "/api/v1/pods" if is_watch => {
            let lines = script.lock().unwrap().watches.pop_front();
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            );
            if let Some(lines) = &lines {
                for line in lines.lines().filter(|l| !l.is_empty()) {
                    let chunk = format!("{line}\n");
                    let _ = write!(conn, "{:x}\r\n{chunk}\r\n", chunk.len());
                    let _ = conn.flush();
                    std::thread::sleep(Duration::from_millis(20));
                }
                log.lock().unwrap().watches_sent += 1;
                if lines.contains("\"type\":\"ERROR\"") {
                    // The API server ends a watch after an ERROR event.
                    let _ = write!(conn, "0\r\n\r\n");
                    return;
                }
            }
            // Hold the watch open until the server goes away (cut, no final chunk).
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = conn.shutdown(Shutdown::Both);
        }
        "/api/v1/pods" => {
            let body = script.lock().unwrap().pod_list.clone();
            respond(&mut conn, 200, &body);
        }
        "/apis/apps/v1/namespaces/shop/replicasets/checkout-6d4cf56db6" => {
            match script.lock().unwrap().replicaset.clone() {
                Some((status, body)) => respond(&mut conn, status, &body),
                None => respond(&mut conn, 404, &not_found(route)),
            }
        }
        "/apis/batch/v1/namespaces/shop/jobs/report-29012345" => {
            match script.lock().unwrap().job.clone() {
                Some((status, body)) => respond(&mut conn, status, &body),
                None => respond(&mut conn, 404, &not_found(route)),
            }
        }
        _ => respond(&mut conn, 404, &not_found(route)),
    }
    // Drain whatever the client still sends before closing.
    let mut sink = [0u8; 256];
    let _ = conn.set_read_timeout(Some(Duration::from_millis(50)));
    let _ = conn.read(&mut sink);
}

fn default_script() -> ApiScript {
    ApiScript {
        pod_list: data("podlist.json"),
        watches: VecDeque::from([data("watch-initial.jsonl")]),
        replicaset: Some((200, data("replicaset-checkout.json"))),
        job: Some((200, data("job-report.json"))),
    }
}

/// A kubeconfig for a plain-HTTP API server on `port` with a bearer token.
fn kubeconfig(port: u16) -> PathBuf {
    temp_file(
        &format!("kubeconfig-{port}"),
        format!(
            "apiVersion: v1
kind: Config
current-context: test
clusters:
- name: fake
  cluster:
    server: http://127.0.0.1:{port}
contexts:
- name: test
  context:
    cluster: fake
    user: agent
    namespace: default
users:
- name: agent
  user:
    token: {TOKEN}
"
        )
        .as_bytes(),
    )
}

/// A cgroup v2 directory named like a containerd CRI container scope; processes started through
/// [`TestCgroup::command`] move themselves into it before exec'ing. Removed on drop.
struct TestCgroup {
    dir: PathBuf,
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup/unified";
const CGROUP_SLICE: &str = "socktrace-k8s-test.slice";

impl TestCgroup {
    fn new(container_id: &str) -> Self {
        let root = Path::new(CGROUP_ROOT);
        assert!(
            root.join("cgroup.procs").exists(),
            "cgroup v2 must be mounted at {CGROUP_ROOT} for this test"
        );
        let dir = root
            .join(CGROUP_SLICE)
            .join(format!("cri-containerd-{container_id}.scope"));
        Self::clean(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        Self { dir }
    }

    /// `program args...`, run inside this cgroup.
    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("echo $$ > \"$0\" && exec \"$@\"")
            .arg(self.dir.join("cgroup.procs"))
            .arg(program)
            .args(args);
        cmd
    }

    /// Moves any process left to the root cgroup and removes the directory.
    fn clean(dir: &Path) {
        if let Ok(pids) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in pids.lines() {
                let _ = std::fs::write(Path::new(CGROUP_ROOT).join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        Self::clean(&self.dir);
        if let Some(slice) = self.dir.parent() {
            let _ = std::fs::remove_dir(slice);
        }
    }
}

/// The Python test server, inside `cgroup`.
fn py_server(cgroup: &TestCgroup, env: &[(&str, &str)]) -> (ChildGuard, u16) {
    let script = peer("http_server.py");
    let mut cmd = cgroup.command("python3", &[script.to_str().unwrap()]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("python3 must be installed");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let guard = ChildGuard::new("http_server.py", child);
    let port = wait_line(&mut out, "PORT ", WAIT).parse().unwrap();
    (guard, port)
}

/// `keepalive_client.py`, inside `cgroup`: one request to `port`, then it waits (alive, so the
/// agent reads its procfs entry) until told to finish.
fn client_in(cgroup: &TestCgroup, port: u16) -> (ChildGuard, BufReader<ChildStdout>) {
    let script = peer("keepalive_client.py");
    let mut child = cgroup
        .command(
            "python3",
            &[script.to_str().unwrap(), &port.to_string(), "0"],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 must be installed");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let guard = ChildGuard::new("keepalive_client.py", child);
    wait_line(&mut out, "READY", WAIT);
    (guard, out)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_stderr(agent: &Agent, text: &str) {
    let deadline = Instant::now() + WAIT;
    while !agent.stderr().contains(text) {
        assert!(
            Instant::now() < deadline,
            "agent never logged {text:?}:\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The query parameters of a request line (`GET /path?a=1&b=2 HTTP/1.1`), empty ones left out.
fn query_params(request_line: &str) -> Vec<String> {
    let target = request_line.split_whitespace().nth(1).unwrap_or("");
    let query = target.split_once('?').map_or("", |(_, q)| q);
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

fn count_lines(haystack: &str, needle: &str) -> usize {
    haystack.lines().filter(|l| l.contains(needle)).count()
}

fn res<'a>(s: &'a ReceivedSpan, k: &str) -> &'a str {
    s.resource_str(k)
        .unwrap_or_else(|| panic!("resource attribute {k} missing on {s}\n{:?}", s.resource))
}

/// The resource of the checkout pod's process, as recorded.
fn assert_checkout(s: &ReceivedSpan, service_name: &str) {
    assert_eq!(res(s, "service.name"), service_name, "{s}");
    assert_eq!(res(s, "service.namespace"), "shop");
    assert_eq!(res(s, "container.id"), CHECKOUT_ID);
    assert_eq!(res(s, "k8s.namespace.name"), "shop");
    assert_eq!(res(s, "k8s.pod.name"), "checkout-6d4cf56db6-x7k2p");
    assert_eq!(
        res(s, "k8s.pod.uid"),
        "510f5f5f-521f-4f0b-8c6e-4f7ebddc971b"
    );
    assert_eq!(res(s, "k8s.container.name"), "app");
    assert_eq!(res(s, "k8s.node.name"), NODE);
    assert_eq!(res(s, "k8s.cluster.name"), "test-cluster");
    assert_eq!(res(s, "k8s.deployment.name"), "checkout");
    assert_eq!(res(s, "k8s.replicaset.name"), "checkout-6d4cf56db6");
    for absent in [
        "k8s.statefulset.name",
        "k8s.daemonset.name",
        "k8s.job.name",
        "k8s.cronjob.name",
    ] {
        assert_eq!(s.resource_str(absent), None, "{absent} on {s}");
    }
}

fn start_agent(receiver: &OtlpReceiver, api_port: u16, server_port: u16, extra: &[&str]) -> Agent {
    let endpoint = receiver.endpoint();
    let kc = kubeconfig(api_port);
    let port = server_port.to_string();
    let mut args = vec![
        "--otlp-endpoint",
        endpoint.as_str(),
        "--otlp-protocol",
        "http/protobuf",
        "--port",
        port.as_str(),
        "--kubeconfig",
        kc.to_str().unwrap(),
        "--k8s-node-name",
        NODE,
    ];
    args.extend_from_slice(extra);
    Agent::start(&args)
}

fn server_spans(receiver: &OtlpReceiver) -> Vec<ReceivedSpan> {
    of_kind(&receiver.spans(), SpanKind::Server)
}

#[test]
fn pod_and_owner_attributes_survive_an_api_outage_and_pick_up_changes() {
    require_root();
    let checkout_cg = TestCgroup::new(CHECKOUT_ID);
    let report_cg = TestCgroup::new(REPORT_ID);
    let mut api = FakeApi::start(0, default_script());
    let api_port = api.port;
    let receiver = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
    let (_server, port) = py_server(&checkout_cg, &[]);
    let mut agent = start_agent(
        &receiver,
        api_port,
        port,
        &["--k8s-cluster-name", "test-cluster"],
    );
    wait_stderr(&agent, "Kubernetes metadata from kubeconfig");
    // The initial watch (report pod ADDED then MODIFIED with its container id, exporter pod
    // DELETED, BOOKMARK) has been streamed; give the agent a moment to apply it.
    wait_until("the initial watch events", || api.watches_sent() >= 1);
    std::thread::sleep(Duration::from_millis(500));

    let requests = api.requests();
    let dump = format!("{requests:#?}");
    assert!(
        requests
            .iter()
            .all(|(_, auth)| auth.as_deref() == Some(&format!("Bearer {TOKEN}"))),
        "every request carries the kubeconfig token: {dump}"
    );
    // (kube-rs writes `?&fieldSelector=...` and pages lists with `&limit=500`.)
    assert!(
        requests[0].0.starts_with("GET /api/v1/pods?")
            && query_params(&requests[0].0)
                .contains(&format!("fieldSelector=spec.nodeName%3D{NODE}"))
            && !requests[0].0.contains("watch="),
        "first a list of this node's pods: {dump}"
    );
    assert!(
        requests.iter().any(|(r, _)| r.contains("watch=true")
            && r.contains(&format!("fieldSelector=spec.nodeName%3D{NODE}"))
            && r.contains("allowWatchBookmarks=true")
            && r.contains("resourceVersion=48211")),
        "then a watch from the list's resourceVersion: {dump}"
    );
    for owner in [
        "GET /apis/apps/v1/namespaces/shop/replicasets/checkout-6d4cf56db6 ",
        "GET /apis/batch/v1/namespaces/shop/jobs/report-29012345 ",
    ] {
        assert_eq!(
            requests
                .iter()
                .filter(|(r, _)| r.starts_with(owner))
                .count(),
            1,
            "{owner} looked up once: {dump}"
        );
    }

    // The server runs in the checkout pod (a Deployment), a client in the report pod (a CronJob's
    // Job, announced by the watch).
    let (mut client, mut client_out) = client_in(&report_cg, port);
    receiver
        .wait_for_blocking(
            |s| {
                !of_kind(s, SpanKind::Server).is_empty() && !of_kind(s, SpanKind::Client).is_empty()
            },
            WAIT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let spans = receiver.spans();
    let server = &of_kind(&spans, SpanKind::Server)[0];
    assert_checkout(server, "checkout");
    let client_span = &of_kind(&spans, SpanKind::Client)[0];
    assert_eq!(
        res(client_span, "service.name"),
        "report",
        "CronJob through its Job: {:?}\n{}",
        client_span.resource,
        agent.stderr()
    );
    assert_eq!(res(client_span, "service.namespace"), "shop");
    assert_eq!(res(client_span, "container.id"), REPORT_ID);
    assert_eq!(res(client_span, "k8s.pod.name"), "report-29012345-q8z6w");
    assert_eq!(
        res(client_span, "k8s.pod.uid"),
        "b9c975af-9919-404f-9588-9a0234a7ea9e"
    );
    assert_eq!(res(client_span, "k8s.container.name"), "report");
    assert_eq!(res(client_span, "k8s.job.name"), "report-29012345");
    assert_eq!(res(client_span, "k8s.cronjob.name"), "report");
    assert_eq!(client_span.resource_str("k8s.deployment.name"), None);
    let _ = writeln!(client.stdin());
    wait_line(&mut client_out, "DONE", WAIT);

    // The API server goes away: spans keep flowing, with the pod data already known.
    api.stop();
    wait_stderr(&agent, "Kubernetes metadata unavailable");
    receiver.clear();
    curl(&[&format!("http://127.0.0.1:{port}/status/201")]);
    wait_until("a span during the outage", || {
        !server_spans(&receiver).is_empty()
    });
    assert_checkout(&server_spans(&receiver)[0], "checkout");

    // It comes back. The agent resumes its watch from the last resource version, finds it
    // expired (410 Gone) and lists again; the next watch reports the checkout pod MODIFIED with a new
    // `app.kubernetes.io/name` label, which becomes the service name.
    let mut script = default_script();
    script.pod_list = data("podlist-after-outage.json");
    script.watches = VecDeque::from([
        data("watch-expired.jsonl"),
        data("watch-after-outage.jsonl"),
    ]);
    let _api = FakeApi::start(api_port, script);
    wait_stderr(&agent, "answers again");
    let deadline = Instant::now() + WAIT;
    loop {
        receiver.clear();
        curl(&[&format!("http://127.0.0.1:{port}/hello")]);
        wait_until("a span after the outage", || {
            !server_spans(&receiver).is_empty()
        });
        let s = server_spans(&receiver).remove(0);
        if s.resource_str("service.name") == Some("storefront") {
            assert_checkout(&s, "storefront");
            break;
        }
        assert_checkout(&s, "checkout");
        assert!(
            Instant::now() < deadline,
            "the MODIFIED label never reached the spans:\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let relists = _api
        .requests()
        .iter()
        .filter(|(r, _)| r.starts_with("GET /api/v1/pods?") && !r.contains("watch="))
        .count();
    let dump = format!("{:#?}", _api.requests());
    assert!(
        _api.requests()[0].0.contains("watch=true")
            && _api.requests()[0].0.contains("resourceVersion="),
        "a broken watch resumes from its resource version: {dump}"
    );
    assert_eq!(relists, 1, "one list, after 410 Gone: {dump}");

    let stderr = agent.stderr();
    assert_eq!(
        count_lines(&stderr, "Kubernetes metadata unavailable"),
        1,
        "one warning for the outage:\n{stderr}"
    );
    assert_eq!(agent.stop(), Some(0), "clean exit:\n{}", agent.stderr());
}

#[test]
fn unreachable_api_spans_are_exported_without_pod_attributes_and_warned_once() {
    require_root();
    let cg = TestCgroup::new(CHECKOUT_ID);
    // A port nothing listens on.
    let dead_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let receiver = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
    let (_server, port) = py_server(&cg, &[]);
    let mut agent = start_agent(&receiver, dead_port, port, &[]);
    wait_stderr(&agent, "Kubernetes metadata unavailable");
    curl(&[&format!("http://127.0.0.1:{port}/hello")]);
    wait_until("a server span", || !server_spans(&receiver).is_empty());
    let s = &server_spans(&receiver)[0];
    assert_eq!(res(s, "container.id"), CHECKOUT_ID);
    assert!(
        !s.resource.keys().any(|k| k.starts_with("k8s.")),
        "no pod attributes without the API: {:?}",
        s.resource
    );
    assert_eq!(s.resource_str("service.namespace"), None);
    assert!(
        res(s, "service.name").starts_with("python"),
        "executable name: {s}"
    );
    // Retries (1 s, 2 s, 4 s apart) stay quiet.
    std::thread::sleep(Duration::from_secs(8));
    let stderr = agent.stderr();
    let warning = stderr
        .lines()
        .find(|l| l.contains("Kubernetes metadata unavailable"))
        .unwrap();
    assert!(
        warning.contains("WARN") && warning.contains(&format!("127.0.0.1:{dead_port}")),
        "the warning names the cause: {warning}"
    );
    assert_eq!(
        count_lines(&stderr, "Kubernetes metadata unavailable"),
        1,
        "{stderr}"
    );
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("Kubernetes"))
            .count(),
        1,
        "{stderr}"
    );
    assert_eq!(agent.stop(), Some(0));
}

#[test]
fn process_otel_service_name_wins_over_pod_metadata() {
    require_root();
    let cg = TestCgroup::new(CHECKOUT_ID);
    let mut script = default_script();
    // RBAC forbids reading ReplicaSets: the Deployment name comes from the pod-template-hash.
    script.replicaset = Some((403, data("status-forbidden.json")));
    let api = FakeApi::start(0, script);
    let receiver = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
    let (_server, port) = py_server(&cg, &[("OTEL_SERVICE_NAME", "own-name")]);
    let _agent = start_agent(
        &receiver,
        api.port,
        port,
        &["--k8s-cluster-name", "test-cluster"],
    );
    wait_until("the initial watch events", || api.watches_sent() >= 1);
    std::thread::sleep(Duration::from_millis(500));
    curl(&[&format!("http://127.0.0.1:{port}/hello")]);
    wait_until("a server span", || !server_spans(&receiver).is_empty());
    assert_checkout(&server_spans(&receiver)[0], "own-name");
}

#[test]
fn namespace_and_service_selectors_keep_only_matching_processes() {
    require_root();
    let cg = TestCgroup::new(CHECKOUT_ID);
    let api = FakeApi::start(0, default_script());
    let receiver = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
    let (_in_pod, pod_port) = py_server(&cg, &[]);
    let on_host = PyServer::start(&[]);
    let host_port = on_host.port;
    let ports = format!("{pod_port},{host_port}");
    let endpoint = receiver.endpoint();
    let kc = kubeconfig(api.port);
    let agent = Agent::start(&[
        "--otlp-endpoint",
        endpoint.as_str(),
        "--port",
        &ports,
        "--kubeconfig",
        kc.to_str().unwrap(),
        "--k8s-node-name",
        NODE,
        "--k8s-namespace",
        "kube-*,sho?",
        "--service-name",
        "check*",
    ]);
    assert!(agent.stderr().contains("resources matching namespaces"));
    wait_until("the initial watch events", || api.watches_sent() >= 1);
    std::thread::sleep(Duration::from_millis(500));
    curl(&[
        &format!("http://127.0.0.1:{host_port}/hello"),
        &format!("http://127.0.0.1:{pod_port}/hello"),
        &format!("http://127.0.0.1:{host_port}/hello"),
    ]);
    wait_until("the pod's server span", || {
        !server_spans(&receiver).is_empty()
    });
    std::thread::sleep(Duration::from_millis(1500));
    let spans = receiver.spans();
    // Only the server in the `shop` pod: not the host server, not curl (no pod).
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(res(&spans[0], "k8s.pod.name"), "checkout-6d4cf56db6-x7k2p");
    assert_eq!(res(&spans[0], "service.name"), "checkout");
}
