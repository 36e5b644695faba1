//! The local viewer (`--ui`) of the real agent, tracing real traffic, looked at in a real
//! headless browser (Debian's `chromium`): curl calls a Python HTTP server directly (some
//! requests fail with 500) and once through a second service (`chain_service.py`, whose call
//! ends in a 404), both sides traced. The JSON API must count exactly those traces, spans and
//! edges; the rendered page (the DOM after its script ran) must list the same traces, show the
//! chain's waterfall in order with the right nesting, and draw the right edges of the service
//! map. Screenshots of the three views go to `target/artifacts/ui-*.png`.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;
use socktrace_tests::harness::{
    Agent, PyServer, curl, final_counters, free_port, python, require_root, workspace,
};

const OK: usize = 4;
const FAILED: usize = 2;
/// Traces made: the direct calls and the one through svc-a.
const TRACES: usize = OK + FAILED + 1;
/// Two spans per direct call (curl, py-server), four through svc-a.
const SPANS: usize = 2 * (OK + FAILED) + 4;

/// Debian's chromium, or a loud failure: this test never skips.
fn chromium() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("chromium"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "chromium not found in PATH: the viewer test needs a real headless browser \
             (`apt-get install chromium`; `cargo xtask test` installs it)"
        )
    })
}

/// Runs headless chromium on `url` with `args` (a fresh profile each time, 8 s of virtual
/// time for the page's requests and script) and returns its stdout.
fn chromium_run(url: &str, args: &[&str]) -> String {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let profile = std::env::temp_dir().join(format!(
        "socktrace-ui-chromium-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    ));
    let out = Command::new(chromium())
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("starting chromium");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium {args:?} {url} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The DOM after the page's script ran.
fn dom(url: &str) -> String {
    chromium_run(url, &["--dump-dom"])
}

/// A screenshot of `url` in `target/artifacts/`.
fn screenshot(url: &str, name: &str, height: u32) -> PathBuf {
    let dir = workspace().join("target/artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    chromium_run(
        url,
        &[
            &format!("--screenshot={}", path.display()),
            &format!("--window-size=1400,{height}"),
        ],
    );
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "screenshot {} is {size} bytes",
        path.display()
    );
    eprintln!("screenshot: {}", path.display());
    path
}

/// The attributes of every element whose start tag contains `marker`, in document order.
fn elements(dom: &str, marker: &str) -> Vec<HashMap<String, String>> {
    let mut out = Vec::new();
    let mut rest = dom;
    while let Some(at) = rest.find(marker) {
        let start = rest[..at].rfind('<').expect("inside a tag");
        let end = at + rest[at..].find('>').expect("tag closes");
        let tag = &rest[start..end];
        let mut attrs = HashMap::new();
        let mut t = tag;
        while let Some(eq) = t.find("=\"") {
            let name = t[..eq]
                .rsplit(|c: char| c.is_whitespace())
                .next()
                .unwrap_or_default();
            let value_end = t[eq + 2..].find('"').expect("quoted value");
            let value = t[eq + 2..eq + 2 + value_end]
                .replace("&quot;", "\"")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&");
            attrs.insert(name.to_owned(), value);
            t = &t[eq + 2 + value_end + 1..];
        }
        out.push(attrs);
        rest = &rest[end..];
    }
    out
}

fn get_json(url: &str) -> Value {
    serde_json::from_str(&curl(&[url])).unwrap_or_else(|e| panic!("{url}: {e}"))
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

#[test]
fn the_viewer_shows_the_traces_waterfall_and_map_in_a_browser() {
    require_root();
    let browser = chromium();
    eprintln!("browser: {}", browser.display());
    let py = python();
    let server = PyServer::start_peer(&py, "http_server.py", &[("OTEL_SERVICE_NAME", "py-server")]);
    let svc_a = PyServer::start_peer_args(
        &py,
        "chain_service.py",
        &["http", &server.url("")],
        &[("OTEL_SERVICE_NAME", "svc-a")],
    );
    let ui_port = free_port();
    let ui = format!("127.0.0.1:{ui_port}");
    // The viewer's own port is traced too if it were not the agent's: the browser's and
    // curl's requests to it would then be counted as traces below.
    let ports = format!("{},{},{ui_port}", server.port, svc_a.port);
    let mut agent = Agent::start(&["--ui", &ui, "--port", &ports]);
    assert!(
        agent.stderr().contains(&format!("; viewer: http://{ui}/")),
        "the start-up line names the viewer's URL:\n{}",
        agent.stderr()
    );
    let base = format!("http://{ui}");

    for i in 0..OK {
        curl(&[&server.url(&format!("/item/{i}"))]);
    }
    for _ in 0..FAILED {
        curl(&[&server.url("/status/500")]);
    }
    // curl -> svc-a -> py-server, whose 404 svc-a passes back.
    assert_eq!(curl(&[&svc_a.url("/work?i=7")]), "not found\n");

    // The API: exactly the traces and spans made, none more after a pause.
    let traces_url = format!("{base}/api/traces");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = get_json(&traces_url);
        if v["stored"]["spans"] == SPANS && v["stored"]["traces"] == TRACES {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the viewer's store did not reach {TRACES} traces and {SPANS} spans: {v:#}\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let list = get_json(&traces_url);
    assert_eq!(list["stored"]["spans"], SPANS, "{list:#}");
    let traces = list["traces"].as_array().expect("traces");
    assert_eq!(traces.len(), TRACES, "{list:#}");
    assert_eq!(
        list["services"],
        serde_json::json!(["curl", "py-server", "svc-a"]),
        "{list:#}"
    );
    // Each trace: its services, spans and status.
    let mut kinds: BTreeMap<(String, u64, String), usize> = BTreeMap::new();
    for t in traces {
        let services: Vec<&str> = t["services"]
            .as_array()
            .expect("services")
            .iter()
            .map(str_of)
            .collect();
        assert_eq!(t["root_service"], "curl", "{t:#}");
        assert_eq!(t["root_name"], "GET", "{t:#}");
        *kinds
            .entry((
                services.join(">"),
                t["spans"].as_u64().expect("spans"),
                str_of(&t["status"]).to_owned(),
            ))
            .or_default() += 1;
    }
    let expected: BTreeMap<(String, u64, String), usize> = [
        (("curl>py-server".to_owned(), 2, "ok".to_owned()), OK),
        (("curl>py-server".to_owned(), 2, "error".to_owned()), FAILED),
        (
            ("curl>svc-a>py-server".to_owned(), 4, "error".to_owned()),
            1,
        ),
    ]
    .into_iter()
    .collect();
    assert_eq!(kinds, expected, "{list:#}");
    let count = |query: &str| {
        get_json(&format!("{traces_url}?{query}"))["traces"]
            .as_array()
            .map_or(0, Vec::len)
    };
    assert_eq!(count("status=error"), FAILED + 1);
    assert_eq!(count("status=ok"), OK);
    assert_eq!(count("service=svc"), 1);
    assert_eq!(count("service=py-server&status=ok"), OK);
    assert_eq!(count("min_ms=60000"), 0);
    let chain = traces
        .iter()
        .find(|t| t["spans"] == 4)
        .expect("the chain's trace");
    let chain_id = str_of(&chain["trace_id"]).to_owned();

    // The chain's waterfall: four spans, each the child of the one before.
    let w = get_json(&format!("{traces_url}/{chain_id}"));
    let spans = w["spans"].as_array().expect("spans");
    let rows: Vec<(&str, &str, u64)> = spans
        .iter()
        .map(|s| {
            (
                str_of(&s["service"]),
                str_of(&s["kind"]),
                s["depth"].as_u64().expect("depth"),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("curl", "client", 0),
            ("svc-a", "server", 1),
            ("svc-a", "client", 2),
            ("py-server", "server", 3)
        ],
        "{w:#}"
    );
    for pair in spans.windows(2) {
        assert_eq!(pair[1]["parent_span_id"], pair[0]["span_id"], "{w:#}");
        assert!(pair[1]["offset_ns"].as_u64() >= pair[0]["offset_ns"].as_u64());
    }
    let statuses: Vec<&str> = spans.iter().map(|s| str_of(&s["status"])).collect();
    // 404: an error for the clients, not for the servers.
    assert_eq!(statuses, ["error", "unset", "error", "unset"], "{w:#}");

    // The service map: three edges with exact counts.
    let map = get_json(&format!("{base}/api/map"));
    let edges: Vec<(&str, &str, u64, u64)> = map["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| {
            (
                str_of(&e["client"]),
                str_of(&e["server"]),
                e["requests"].as_u64().expect("requests"),
                e["errors"].as_u64().expect("errors"),
            )
        })
        .collect();
    assert_eq!(
        edges,
        [
            ("curl", "py-server", (OK + FAILED) as u64, FAILED as u64),
            ("curl", "svc-a", 1, 1),
            ("svc-a", "py-server", 1, 1),
        ],
        "{map:#}"
    );
    for e in map["edges"].as_array().expect("edges") {
        let (p50, p99) = (e["p50_ms"].as_f64(), e["p99_ms"].as_f64());
        assert!(
            p50 > Some(0.0) && p50 <= p99 && p99 < Some(30_000.0),
            "{e:#}"
        );
    }

    // The page, as a browser renders it: the list.
    let page = dom(&format!("{base}/#/traces"));
    let rows = elements(&page, "class=\"trace-row\"");
    let mut shown: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["data-trace-id"].clone(),
                r["data-services"].clone(),
                r["data-status"].clone(),
            )
        })
        .collect();
    let mut made: Vec<(String, String, String)> = traces
        .iter()
        .map(|t| {
            (
                str_of(&t["trace_id"]).to_owned(),
                t["services"]
                    .as_array()
                    .expect("services")
                    .iter()
                    .map(str_of)
                    .collect::<Vec<_>>()
                    .join(","),
                str_of(&t["status"]).to_owned(),
            )
        })
        .collect();
    shown.sort();
    made.sort();
    assert_eq!(
        shown, made,
        "the list shows exactly the traces made:\n{page}"
    );
    assert!(page.contains(&format!("{TRACES} traces shown")), "{page}");
    // The search, through the page's own URL.
    let errors = dom(&format!("{base}/#/traces?status=error"));
    let rows = elements(&errors, "class=\"trace-row\"");
    assert_eq!(rows.len(), FAILED + 1, "{errors}");
    assert!(rows.iter().all(|r| r["data-status"] == "error"), "{errors}");
    let by_service = dom(&format!("{base}/#/traces?service=svc-a"));
    let rows = elements(&by_service, "class=\"trace-row\"");
    assert_eq!(rows.len(), 1, "{by_service}");
    assert_eq!(rows[0]["data-trace-id"], chain_id);

    // The waterfall of the chain.
    let page = dom(&format!("{base}/#/trace/{chain_id}"));
    let rows = elements(&page, "class=\"span-row\"");
    let drawn: Vec<(&str, &str, &str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["data-service"].as_str(),
                r["data-kind"].as_str(),
                r["data-depth"].as_str(),
                r["data-status"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        drawn,
        [
            ("curl", "client", "0", "error"),
            ("svc-a", "server", "1", "unset"),
            ("svc-a", "client", "2", "error"),
            ("py-server", "server", "3", "unset"),
        ],
        "{page}"
    );
    for pair in rows.windows(2) {
        assert_eq!(pair[1]["data-parent-span-id"], pair[0]["data-span-id"]);
    }
    assert!(
        page.contains("class=\"bar error\""),
        "error spans are marked: {page}"
    );

    // The service map.
    let page = dom(&format!("{base}/#/map"));
    let mut drawn: Vec<(String, String, String, String)> = elements(&page, "class=\"edge\"")
        .iter()
        .map(|e| {
            (
                e["data-client"].clone(),
                e["data-server"].clone(),
                e["data-requests"].clone(),
                e["data-errors"].clone(),
            )
        })
        .collect();
    drawn.sort();
    let want = |c: &str, s: &str, n: usize, f: usize| {
        (c.to_owned(), s.to_owned(), n.to_string(), f.to_string())
    };
    assert_eq!(
        drawn,
        [
            want("curl", "py-server", OK + FAILED, FAILED),
            want("curl", "svc-a", 1, 1),
            want("svc-a", "py-server", 1, 1),
        ],
        "{page}"
    );
    let nodes: Vec<String> = elements(&page, "class=\"node\"")
        .iter()
        .map(|n| n["data-name"].clone())
        .collect();
    assert_eq!(nodes.len(), 3, "{page}");
    assert!(
        page.contains(&format!("{} req · {FAILED} err", OK + FAILED)),
        "the edge's label: {page}"
    );

    for (view, name, height) in [
        ("#/traces", "ui-traces.png", 620),
        (&*format!("#/trace/{chain_id}"), "ui-waterfall.png", 480),
        ("#/map", "ui-map.png", 760),
    ] {
        screenshot(&format!("{base}/{view}"), name, height);
    }

    // Nothing the browser or curl asked the viewer became a trace, and the store's counters
    // say what it holds.
    assert_eq!(get_json(&traces_url)["stored"]["traces"], TRACES);
    assert_eq!(agent.stop(), Some(0));
    let ui_counters = final_counters(&agent.stderr(), "ui");
    assert_eq!(ui_counters["spans_stored"], SPANS as u64, "{ui_counters:?}");
    assert_eq!(ui_counters["spans_evicted"], 0);
    assert_eq!(ui_counters["spans_dropped"], 0);
    assert_eq!(ui_counters["traces"], TRACES as u64);
}
