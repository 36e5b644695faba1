//! End to end, as root: HTTPS between real programs, read by the real agent at OpenSSL with
//! uprobes. The certificate is made by the test; no program has any tracing code.
//!
//! - curl -> nginx (both through Debian's shared libssl; nginx non-blocking, `SSL_read` and
//!   `SSL_write`), two requests on one connection;
//! - Python `urllib` -> Python `http.server` (the `ssl` module: `SSL_read_ex`/`SSL_write_ex`);
//! - curl -> node's `https` server (OpenSSL linked into the node executable, on memory buffers:
//!   attached when the process is found, detached when it exits);
//! - `psql` with `sslmode=require` -> PostgreSQL with `ssl=on` (libpq's and the server's own
//!   socket callbacks under OpenSSL), and the Python driver pg8000 with a TLS context;
//! - grpcio over TLS (BoringSSL inside, no symbols): a span per end for the connection only
//!   (nothing guessed about its calls), counted as unreadable;
//! - `--tls false`: the same HTTPS traffic gives only those connection spans;
//! - a Go HTTPS client -> a Go HTTPS server (`crypto/tls`, built by the test with Debian's Go):
//!   probes at the functions' entries and return instructions, goroutines followed across
//!   threads; a stripped Go server is read through its line table (`.gopclntab`);
//! - grpc-go over TLS, client and server (HTTP/2 plaintext at `crypto/tls`).

use std::{
    io::BufReader,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use socktrace_tests::{
    harness::{
        Agent, ChildGuard, PyServer, curl, exact, final_counters, free_port, go_peer, metric,
        python, require_root, wait_line, wait_metric,
    },
    load::{Nginx, TestCert},
    otlp_receiver::{OtlpReceiver, Protocol, ReceivedSpan},
    pg::PgServer,
};

fn agent_for(receiver: &OtlpReceiver, port: u16, extra: &[&str]) -> Agent {
    Agent::exporting_to(receiver, &port.to_string(), extra)
}

/// `curl` (see [`curl`]) trusting the test's certificate.
fn curl_https(cert: &Path, urls: &[String]) -> String {
    let cert = cert.to_str().expect("UTF-8 path");
    let mut args = vec!["--cacert", cert];
    args.extend(urls.iter().map(String::as_str));
    curl(&args)
}

fn attr(s: &ReceivedSpan, k: &str) -> String {
    s.attr_str(k)
        .unwrap_or_else(|| panic!("{k} missing on {s}"))
}
fn int(s: &ReceivedSpan, k: &str) -> i64 {
    s.attr_int(k)
        .unwrap_or_else(|| panic!("{k} missing on {s}"))
}

/// The server span whose `url.path` is `path`, and the client span whose `url.full` ends with
/// it; the client must be the server's parent, in one trace.
fn pair<'a>(
    servers: &'a [ReceivedSpan],
    clients: &'a [ReceivedSpan],
    path: &str,
) -> (&'a ReceivedSpan, &'a ReceivedSpan) {
    let server = servers
        .iter()
        .find(|s| s.attr_str("url.path").as_deref() == Some(path))
        .unwrap_or_else(|| panic!("no server span for {path}"));
    let client = clients
        .iter()
        .find(|s| s.attr_str("url.full").is_some_and(|u| u.ends_with(path)))
        .unwrap_or_else(|| panic!("no client span for {path}"));
    assert_eq!(client.trace_id(), server.trace_id(), "{client}\n{server}");
    assert_eq!(
        server.parent_span_id(),
        Some(client.span_id()),
        "the client span is the server span's parent:\n{client}\n{server}"
    );
    (server, client)
}

/// Checks the attributes an HTTPS exchange must have, as over cleartext but `https`.
fn check_exchange(server: &ReceivedSpan, client: &ReceivedSpan, port: u16, path: &str, code: i64) {
    assert_eq!(server.name(), format!("GET {path}"));
    assert_eq!(attr(server, "http.request.method"), "GET");
    assert_eq!(attr(server, "url.scheme"), "https");
    assert_eq!(attr(server, "http.route"), path);
    assert_eq!(int(server, "http.response.status_code"), code);
    assert_eq!(int(server, "server.port"), i64::from(port));
    assert_eq!(client.name(), "GET");
    assert_eq!(attr(client, "http.request.method"), "GET");
    assert_eq!(
        attr(client, "url.full"),
        format!("https://127.0.0.1:{port}{path}")
    );
    assert_eq!(int(client, "http.response.status_code"), code);
    assert_eq!(int(client, "server.port"), i64::from(port));
}

#[test]
fn curl_to_nginx_over_https_gives_the_same_spans_as_cleartext() {
    require_root();
    let cert = TestCert::make().unwrap_or_else(|e| panic!("{e}"));
    let nginx = cert.nginx().unwrap_or_else(|e| panic!("{e}"));
    let receiver = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
    let agent = agent_for(&receiver, nginx.port, &[]);
    let startup = agent.wait_stderr("TLS: ");
    assert!(
        startup.contains("libssl.so"),
        "the shared libssl is attached at start: {startup}"
    );
    // Two requests on one kept-alive connection.
    let body = curl_https(
        &cert.cert(),
        &[
            format!("{}hello", nginx.url()),
            format!("{}missing", nginx.url()),
        ],
    );
    assert_eq!(body, "hello from nginx\nmissing\n");
    let (servers, clients) = exact(&receiver, 2, 2);
    let (s, c) = pair(&servers, &clients, "/hello");
    check_exchange(s, c, nginx.port, "/hello", 200);
    assert_eq!(s.resource_str("service.name"), Some("nginx"));
    assert_eq!(c.resource_str("service.name"), Some("curl"));
    let (s, c) = pair(&servers, &clients, "/missing");
    check_exchange(s, c, nginx.port, "/missing", 404);
    assert_eq!(
        c.attr_str("error.type").as_deref(),
        Some("404"),
        "a 404 is a client error"
    );
}

#[test]
fn python_urllib_to_python_https_server() {
    require_root();
    let cert = TestCert::make().unwrap_or_else(|e| panic!("{e}"));
    let (c, k) = (cert.cert(), cert.key());
    let server = PyServer::start_peer_args(
        &python(),
        "http_server.py",
        &["--tls", c.to_str().unwrap(), k.to_str().unwrap()],
        &[("OTEL_SERVICE_NAME", "py-https")],
    );
    let receiver = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
    let _agent = agent_for(&receiver, server.port, &[]);
    let script = "import ssl,sys,urllib.request\n\
                  ctx = ssl.create_default_context(cafile=sys.argv[1])\n\
                  for path in sys.argv[2:]:\n\
                  \x20   try:\n\
                  \x20       r = urllib.request.urlopen(path, context=ctx)\n\
                  \x20       print(r.status, r.read().decode().strip())\n\
                  \x20   except urllib.error.HTTPError as e:\n\
                  \x20       print(e.code)\n";
    let base = format!("https://127.0.0.1:{}", server.port);
    let out = Command::new(python())
        .env("OTEL_SERVICE_NAME", "py-client")
        .args(["-c", script])
        .arg(&c)
        .arg(format!("{base}/hello"))
        .arg(format!("{base}/status/503"))
        .output()
        .expect("python");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200 hello\n503\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (servers, clients) = exact(&receiver, 2, 2);
    let (s, c) = pair(&servers, &clients, "/hello");
    check_exchange(s, c, server.port, "/hello", 200);
    assert_eq!(s.resource_str("service.name"), Some("py-https"));
    assert_eq!(c.resource_str("service.name"), Some("py-client"));
    assert_eq!(
        int(c, "http.response.body.size"),
        6,
        "byte counts come from the plaintext"
    );
    let s = servers
        .iter()
        .find(|s| s.attr_str("url.path").as_deref() == Some("/status/503"))
        .expect("server span for /status/503");
    assert_eq!(s.name(), "GET /status/{id}");
    assert_eq!(int(s, "http.response.status_code"), 503);
    assert_eq!(attr(s, "error.type"), "503");
}

const NODE: &str = "/usr/bin/node";

/// A node HTTPS server (node's own OpenSSL) on `port`, started after `agent`, once the agent has
/// attached to it: it reads each request's body, then answers 404 `missing` to `/missing` and
/// `/two`, 200 `hello from node` to anything else.
fn node_https_server(agent: &Agent, cert: &TestCert, port: u16) -> (ChildGuard, u32) {
    assert!(Path::new(NODE).exists(), "node must be installed (nodejs)");
    let script = "const https = require('https'), fs = require('fs');\n\
                  const [port, cert, key] = process.argv.slice(1);\n\
                  const srv = https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, (req, res) => {\n\
                  \x20 req.resume();\n\
                  \x20 req.on('end', () => {\n\
                  \x20   const ok = req.url !== '/missing' && req.url !== '/two';\n\
                  \x20   res.writeHead(ok ? 200 : 404, { 'Content-Type': 'text/plain' });\n\
                  \x20   res.end(ok ? 'hello from node\\n' : 'missing\\n');\n\
                  \x20 });\n\
                  });\n\
                  srv.listen(Number(port), '127.0.0.1', () => console.log('PORT ' + port));\n";
    let mut cmd = Command::new(NODE);
    cmd.args(["-e", script]);
    let (guard, pid) = tls_server(cmd, "node", cert, port);
    let attached = agent.wait_stderr(&format!("TLS: attached to /proc/{pid}/root"));
    assert!(attached.ends_with(NODE), "{attached}");
    (guard, pid)
}

#[test]
fn node_with_its_own_openssl_is_attached_when_found_and_released_when_it_exits() {
    require_root();
    let cert = TestCert::make().unwrap_or_else(|e| panic!("{e}"));
    let receiver = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
    let port = free_port();
    let agent = agent_for(&receiver, port, &[]);
    // An HTTPS server started after the agent: node's OpenSSL is inside the node executable
    // (memory buffers, not the socket, under the TLS layer), found by the periodic scan.
    let (guard, pid) = node_https_server(&agent, &cert, port);
    let base = format!("https://127.0.0.1:{port}");
    let body = curl_https(
        &cert.cert(),
        &[format!("{base}/hello"), format!("{base}/missing")],
    );
    assert_eq!(body, "hello from node\nmissing\n");
    let (servers, clients) = exact(&receiver, 2, 2);
    let (s, c) = pair(&servers, &clients, "/hello");
    check_exchange(s, c, port, "/hello", 200);
    assert_eq!(s.resource_str("process.executable.name"), Some("node"));
    assert_eq!(int(s, "http.response.body.size"), 16);
    let (s, c) = pair(&servers, &clients, "/missing");
    check_exchange(s, c, port, "/missing", 404);
    drop(guard);
    agent.wait_stderr(&format!("TLS: detached from /proc/{pid}/root"));
}

/// A test certificate, an OTLP receiver, and the agent tracing a node HTTPS server
/// ([`node_https_server`]) on the returned port.
fn behind_a_node_server() -> (TestCert, OtlpReceiver, u16, Agent, (ChildGuard, u32)) {
    require_root();
    let cert = TestCert::make().unwrap_or_else(|e| panic!("{e}"));
    let receiver = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
    let port = free_port();
    let agent = agent_for(&receiver, port, &[]);
    let server = node_https_server(&agent, &cert, port);
    (cert, receiver, port, agent, server)
}

/// Stops the agent and checks that `requests` TLS writes sent without a socket were each tied to
/// one in user space, none dropped, and no connection left unreadable.
fn assert_requests_tied(mut agent: Agent, requests: u64) {
    assert_eq!(agent.stop(), Some(0));
    let conns = final_counters(&agent.stderr(), "conns");
    assert_eq!(conns["tls_bound_by_next_write"], requests, "{conns:?}");
    assert_eq!(conns["tls_unbound_dropped"], 0, "{conns:?}");
    assert_eq!(conns["tls_unreadable"], 0, "{conns:?}");
}

/// node as both client and server, each with the OpenSSL inside the node executable, on memory
/// buffers: every request on a fresh connection. The client's library encrypts a request into
/// memory before any socket call of its session (the kernel sends that plaintext without a
/// socket; user space ties it to the thread's next socket write, `tls_bound_by_next_write`), and
/// both ends free each session at its close, so the next one is allocated at the same address
/// (its socket must not be inherited: `SSL_free` forgets it).
#[test]
fn node_client_to_node_server_on_fresh_connections() {
    let (cert, receiver, port, agent, _server) = behind_a_node_server();
    let client = "const https = require('https'), fs = require('fs');\n\
                  const [ca, port, ...calls] = process.argv.slice(1);\n\
                  (async () => {\n\
                  \x20 for (const call of calls) {\n\
                  \x20   const [method, path] = call.split(' ');\n\
                  \x20   await new Promise((resolve, reject) => {\n\
                  \x20     const req = https.request({ host: '127.0.0.1', port: Number(port), path, method,\n\
                  \x20       ca: fs.readFileSync(ca), agent: false }, res => {\n\
                  \x20       let body = '';\n\
                  \x20       res.on('data', d => body += d);\n\
                  \x20       res.on('end', () => { console.log(res.statusCode + ' ' + body.trim()); resolve(); });\n\
                  \x20     });\n\
                  \x20     req.on('error', reject);\n\
                  \x20     if (method === 'POST') req.write('x'.repeat(100));\n\
                  \x20     req.end();\n\
                  \x20   });\n\
                  \x20 }\n\
                  })();\n";
    let calls = [
        "GET /one",
        "GET /two",
        "POST /three",
        "GET /four",
        "GET /five",
        "GET /six",
    ];
    let out = Command::new(NODE)
        .args(["-e", client])
        .arg(cert.cert())
        .arg(port.to_string())
        .args(calls)
        .output()
        .expect("node client");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200 hello from node\n404 missing\n200 hello from node\n200 hello from node\n\
         200 hello from node\n200 hello from node\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (servers, clients) = exact(&receiver, 6, 6);
    for call in calls {
        let (method, path) = call.split_once(' ').unwrap();
        let code = if path == "/two" { 404 } else { 200 };
        let (s, c) = pair(&servers, &clients, path);
        assert_eq!(s.name(), format!("{method} {path}"));
        assert_eq!(attr(s, "http.request.method"), method);
        assert_eq!(attr(s, "url.scheme"), "https");
        assert_eq!(int(s, "http.response.status_code"), code);
        assert_eq!(attr(c, "http.request.method"), method);
        assert_eq!(
            attr(c, "url.full"),
            format!("https://127.0.0.1:{port}{path}")
        );
        assert_eq!(int(c, "http.response.status_code"), code);
        for span in [s, c] {
            assert_eq!(span.resource_str("process.executable.name"), Some("node"));
        }
    }
    let (s, c) = pair(&servers, &clients, "/three");
    assert_eq!(int(s, "http.request.body.size"), 100);
    assert_eq!(int(c, "http.request.body.size"), 100);
    // Each client request was tied to its socket in user space; nothing waited in vain.
    assert_requests_tied(agent, 6);
}

/// Python's asyncio as a TLS client (OpenSSL on memory buffers through `ssl.SSLObject`): it
/// writes `ChangeCipherSpec` and `Finished` in one socket write and its first request in the
/// next, after the library encrypted it with no socket known; the request is tied to its
/// socket in user space, as node's are.
#[test]
fn a_python_asyncio_client_over_tls_gets_client_spans() {
    let (cert, receiver, port, agent, _server) = behind_a_node_server();
    let script = "import asyncio, ssl, sys\n\
                  async def one(ctx, port, path):\n\
                  \x20   r, w = await asyncio.open_connection('127.0.0.1', port, ssl=ctx)\n\
                  \x20   w.write(f'GET {path} HTTP/1.1\\r\\nHost: 127.0.0.1:{port}\\r\\nConnection: close\\r\\n\\r\\n'.encode())\n\
                  \x20   await w.drain()\n\
                  \x20   data = await r.read()\n\
                  \x20   w.close()\n\
                  \x20   print(data.split(b'\\r\\n')[0].decode())\n\
                  async def main():\n\
                  \x20   ctx = ssl.create_default_context(cafile=sys.argv[1])\n\
                  \x20   for path in sys.argv[3:]:\n\
                  \x20       await one(ctx, int(sys.argv[2]), path)\n\
                  asyncio.run(main())\n";
    let out = Command::new(python())
        .args(["-c", script])
        .arg(cert.cert())
        .arg(port.to_string())
        .args(["/one", "/missing", "/three"])
        .output()
        .expect("python");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "HTTP/1.1 200 OK\nHTTP/1.1 404 Not Found\nHTTP/1.1 200 OK\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (servers, clients) = exact(&receiver, 3, 3);
    for (path, code) in [("/one", 200), ("/missing", 404), ("/three", 200)] {
        let (s, c) = pair(&servers, &clients, path);
        check_exchange(s, c, port, path, code);
        assert_eq!(s.resource_str("process.executable.name"), Some("node"));
        assert!(
            c.resource_str("process.executable.name")
                .is_some_and(|n| n.starts_with("python")),
            "{c}"
        );
    }
    assert_requests_tied(agent, 3);
}

#[test]
fn without_tls_capture_https_gives_only_connection_spans_and_cleartext_still_does() {
    require_root();
    let cert = TestCert::make().unwrap_or_else(|e| panic!("{e}"));
    let nginx = cert.nginx().unwrap_or_else(|e| panic!("{e}"));
    let plain = Nginx::start(free_port()).unwrap_or_else(|e| panic!("{e}"));
    let receiver = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
    let ports = format!("{},{}", nginx.port, plain.port);
    let agent = Agent::exporting_to(&receiver, &ports, &["--tls", "false"]);
    let startup = agent.wait_stderr("TLS: ");
    assert!(startup.contains("TLS: off (--tls false)"), "{startup}");
    curl_https(&cert.cert(), &[format!("{}hello", nginx.url())]);
    // A cleartext request after the HTTPS one: once its spans are in, the HTTPS one's would be.
    curl(&[&format!("{}after", plain.url())]);
    // The HTTPS connection gives one span per end, for the connection, with no request in it.
    let (servers, clients) = exact(&receiver, 2, 2);
    for (spans, kind) in [(&servers, "server"), (&clients, "client")] {
        let (opaque, http): (Vec<&ReceivedSpan>, Vec<&ReceivedSpan>) =
            spans.iter().partition(|s| s.name() == "TLS");
        assert_eq!((opaque.len(), http.len()), (1, 1), "{kind}: {spans:?}");
        check_opaque(opaque[0], nginx.port);
        assert_eq!(http[0].attr_int("server.port"), Some(i64::from(plain.port)));
    }
}

/// A span of a TLS connection whose plaintext was not read: the connection, nothing guessed.
fn check_opaque(span: &ReceivedSpan, server_port: u16) {
    assert_eq!(span.name(), "TLS");
    assert_eq!(attr(span, "tls.protocol.name"), "tls");
    assert_eq!(int(span, "server.port"), i64::from(server_port));
    assert_eq!(attr(span, "network.peer.address"), "127.0.0.1");
    for guessed in [
        "http.request.method",
        "rpc.method",
        "db.system.name",
        "url.path",
    ] {
        assert!(span.attr(guessed).is_none(), "{guessed} on {span}");
    }
}

#[test]
fn postgres_with_sslmode_require_gives_statements_and_sqlstate_as_over_cleartext() {
    require_root();
    let cert = TestCert::make().unwrap_or_else(|e| panic!("{e}"));
    let (c, k) = (cert.cert(), cert.key());
    let pg = PgServer::start_with("shop", Some((&c, &k)));
    let receiver = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
    let _agent = agent_for(&receiver, pg.port, &["--protocols", "postgres"]);
    let psql = |sql: &str| {
        Command::new("psql")
            .env("PGSSLMODE", "require")
            .args(["-X", "-q", "-t", "-A", "-h", "127.0.0.1", "-U", "postgres"])
            .args(["-p", &pg.port.to_string(), "-d", "shop", "-c", sql])
            .output()
            .expect("psql must be installed")
    };
    let out = psql("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "t",
        "the session is encrypted: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        psql("CREATE TABLE users (id int PRIMARY KEY, name text)")
            .status
            .success()
    );
    assert!(
        psql("INSERT INTO users VALUES (1, 'alice-secret-1')")
            .status
            .success()
    );
    assert!(!psql("SELECT 1/0").status.success());
    let (servers, clients) = exact(&receiver, 4, 4);
    let expect = [
        (
            "SELECT pg_stat_ssl",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            None,
        ),
        (
            "CREATE users",
            "CREATE TABLE users (id int PRIMARY KEY, name text)",
            None,
        ),
        ("INSERT users", "INSERT INTO users VALUES (?, ?)", None),
        ("SELECT", "SELECT ?/?", Some("22012")),
    ];
    for (spans, kind) in [(&clients, "client"), (&servers, "server")] {
        for (span, (name, query, sqlstate)) in spans.iter().zip(expect) {
            assert_eq!(span.name(), name, "{kind}: {span}");
            check_statement(span, kind, pg.port, query, sqlstate);
        }
    }
    assert!(
        clients
            .iter()
            .all(|s| s.resource_str("service.name") == Some("psql"))
    );
    assert!(
        !receiver
            .spans()
            .iter()
            .any(|s| format!("{s}").contains("alice-secret-1")),
        "literals never leave the host"
    );
}

/// A PostgreSQL span of database `shop` on `port`: its statement text and SQLSTATE.
fn check_statement(
    span: &ReceivedSpan,
    kind: &str,
    port: u16,
    query: &str,
    sqlstate: Option<&str>,
) {
    assert_eq!(attr(span, "db.system.name"), "postgresql");
    assert_eq!(attr(span, "db.namespace"), "shop");
    assert_eq!(attr(span, "db.query.text"), query, "{kind}: {span}");
    assert_eq!(int(span, "server.port"), i64::from(port));
    assert_eq!(
        span.attr_str("db.response.status_code").as_deref(),
        sqlstate,
        "{kind}: {span}"
    );
}

/// pg8000 (a pure-Python driver: Python's `ssl` module over the system OpenSSL) with a TLS
/// context -> PostgreSQL with `ssl=on`: the extended query protocol, read as plaintext.
#[test]
fn python_driver_over_tls_gives_statements_and_sqlstate() {
    require_root();
    let cert = TestCert::make().unwrap_or_else(|e| panic!("{e}"));
    let (c, k) = (cert.cert(), cert.key());
    let pg = PgServer::start_with("shop", Some((&c, &k)));
    let receiver = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
    let _agent = agent_for(&receiver, pg.port, &["--protocols", "postgres"]);
    let script = "import ssl, sys, pg8000.native\n\
                  ctx = ssl.create_default_context(cafile=sys.argv[2])\n\
                  con = pg8000.native.Connection('postgres', host='127.0.0.1', port=int(sys.argv[1]), database='shop', ssl_context=ctx)\n\
                  print(con.run('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()')[0][0])\n\
                  con.run('CREATE TABLE items (id int PRIMARY KEY, name text)')\n\
                  con.run('INSERT INTO items VALUES (:id, :name)', id=7, name='bob-secret-2')\n\
                  try:\n\
                  \x20   con.run('SELECT 1/0')\n\
                  except pg8000.native.DatabaseError as e:\n\
                  \x20   print(e.args[0]['C'])\n\
                  con.close()\n";
    let out = Command::new(python())
        .args(["-c", script])
        .arg(pg.port.to_string())
        .arg(&c)
        .output()
        .expect("python");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "True\n22012\n",
        "the session is encrypted and the error comes back: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (servers, clients) = exact(&receiver, 4, 4);
    let expect = [
        (
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            None,
        ),
        ("CREATE TABLE items (id int PRIMARY KEY, name text)", None),
        ("INSERT INTO items VALUES ($1, $2)", None),
        ("SELECT ?/?", Some("22012")),
    ];
    for (spans, kind) in [(&clients, "client"), (&servers, "server")] {
        for (span, (query, sqlstate)) in spans.iter().zip(expect) {
            check_statement(span, kind, pg.port, query, sqlstate);
        }
    }
    assert!(
        !receiver
            .spans()
            .iter()
            .any(|s| format!("{s}").contains("bob-secret-2")),
        "parameter values never leave the host"
    );
}

/// grpcio carries BoringSSL inside its Python extension, without symbols: its plaintext cannot
/// be read. What is true is recorded: a span per end for the connection (never one with
/// guessed calls), and both ends counted as unreadable TLS when it closes.
#[test]
fn grpcio_over_tls_is_unreadable_and_counted_not_guessed() {
    require_root();
    let cert = TestCert::make().unwrap_or_else(|e| panic!("{e}"));
    let (c, k) = (cert.cert(), cert.key());
    let server = PyServer::start_peer_args(
        &python(),
        "grpc_server.py",
        &[],
        &[
            ("GRPC_TLS_CERT", c.to_str().unwrap()),
            ("GRPC_TLS_KEY", k.to_str().unwrap()),
        ],
    );
    let receiver = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
    let health = format!("127.0.0.1:{}", free_port());
    let _agent = agent_for(&receiver, server.port, &["--health-listen", &health]);
    let out = Command::new(python())
        .arg(socktrace_tests::harness::peer("grpc_client.py"))
        .arg(server.port.to_string())
        .arg("basic")
        .env("GRPC_TLS_CA", &c)
        .output()
        .expect("grpc_client.py");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && report.lines().count() == 5,
        "the TLS calls work: {report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.starts_with("Unary OK"), "{report}");
    // The client exited: its connection closed at both ends.
    wait_metric(&health, "socktrace_conns_tls_unreadable_total", 2);
    assert_eq!(
        metric(&health, "socktrace_kernel_tls_plaintext_total"),
        Some(0),
        "no plaintext from grpcio's BoringSSL"
    );
    // One span per end for the connection, the client's the parent of the server's.
    let (servers, clients) = exact(&receiver, 1, 1);
    check_opaque(&servers[0], server.port);
    check_opaque(&clients[0], server.port);
    assert_eq!(servers[0].parent_span_id(), Some(clients[0].span_id()));
}

/// `<peer> server` (a Go peer; tlspeer may be stripped) on `port`, once it listens.
fn go_server(cert: &TestCert, port: u16, stripped: bool) -> (ChildGuard, u32) {
    go_server_of("tlspeer", cert, port, stripped)
}

fn go_server_of(peer: &str, cert: &TestCert, port: u16, stripped: bool) -> (ChildGuard, u32) {
    let mut cmd = Command::new(go_peer(peer, stripped));
    cmd.arg("server");
    tls_server(cmd, peer, cert, port)
}

/// `cmd PORT CERT KEY`, once it prints `PORT `; its guard and pid.
fn tls_server(mut cmd: Command, name: &str, cert: &TestCert, port: u16) -> (ChildGuard, u32) {
    let mut child = cmd
        .arg(port.to_string())
        .arg(cert.cert())
        .arg(cert.key())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    let pid = child.id();
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let guard = ChildGuard::new(name, child);
    let _ = wait_line(&mut out, "PORT ", Duration::from_secs(20));
    (guard, pid)
}

#[test]
fn go_client_to_go_server_over_crypto_tls() {
    require_root();
    let cert = TestCert::make().unwrap_or_else(|e| panic!("{e}"));
    let receiver = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
    let port = free_port();
    go_peer("tlspeer", false);
    let agent = agent_for(&receiver, port, &[]);
    // Started after the agent: found by the scan, attached by its own symbols.
    let (server, pid) = go_server(&cert, port, false);
    let attached = agent.wait_stderr(&format!("TLS: attached to /proc/{pid}/root"));
    assert!(attached.ends_with("/target/go/tlspeer"), "{attached}");
    // The client is the same executable: already attached when it starts.
    let base = format!("https://127.0.0.1:{port}");
    let out = Command::new(go_peer("tlspeer", false))
        .arg("client")
        .arg(cert.cert())
        .args([
            format!("{base}/hello"),
            format!("{base}/status/503"),
            format!("{base}/again"),
        ])
        .output()
        .expect("tlspeer client");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "STATUS 200 14\nSTATUS 503 14\nSTATUS 200 14\nDONE\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (servers, clients) = exact(&receiver, 3, 3);
    for path in ["/hello", "/again"] {
        let (s, c) = pair(&servers, &clients, path);
        check_exchange(s, c, port, path, 200);
        assert_eq!(int(s, "http.response.body.size"), 14);
        assert_eq!(int(c, "http.response.body.size"), 14);
    }
    let (s, c) = pair(&servers, &clients, "/status/503");
    assert_eq!(s.name(), "GET /status/{id}");
    assert_eq!(int(s, "http.response.status_code"), 503);
    assert_eq!(attr(s, "url.scheme"), "https");
    assert_eq!(attr(s, "error.type"), "503");
    assert_eq!(int(c, "http.response.status_code"), 503);
    assert_eq!(attr(c, "url.full"), format!("{base}/status/503"));
    for span in servers.iter().chain(&clients) {
        assert_eq!(
            span.resource_str("process.executable.name"),
            Some("tlspeer"),
            "{span}"
        );
    }
    // The server's exit releases its probes.
    drop(server);
    agent.wait_stderr(&format!("TLS: detached from /proc/{pid}/root"));
}

/// A Go client started after the agent, with the periodic scan made rare (an hour): its
/// executable is attached as it starts, because the kernel reports the exec, so its requests
/// (one second after its start) give client spans, each the parent of nginx's server span.
#[test]
fn a_go_client_is_attached_as_it_starts_not_at_the_next_scan() {
    require_root();
    let cert = TestCert::make().unwrap_or_else(|e| panic!("{e}"));
    let nginx = cert.nginx().unwrap_or_else(|e| panic!("{e}"));
    let receiver = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
    let bin = go_peer("tlspeer", false);
    let agent = agent_for(&receiver, nginx.port, &["--tls-scan-interval", "3600"]);
    agent.wait_stderr("TLS: ");
    let base = format!("https://127.0.0.1:{}", nginx.port);
    let out = Command::new(&bin)
        .arg("client")
        .arg(cert.cert())
        .args([format!("{base}/first"), format!("{base}/second")])
        .env("TLSPEER_WAIT_MS", "1000")
        .output()
        .expect("tlspeer client");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "STATUS 200 17\nSTATUS 200 17\nDONE\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let attached = agent.wait_stderr("/target/go/tlspeer");
    assert!(attached.contains("TLS: attached to /proc/"), "{attached}");
    let (servers, clients) = exact(&receiver, 2, 2);
    for path in ["/first", "/second"] {
        let (s, c) = pair(&servers, &clients, path);
        check_exchange(s, c, nginx.port, path, 200);
        assert_eq!(c.resource_str("process.executable.name"), Some("tlspeer"));
    }
}

/// A Go server built without a symbol table (`-ldflags=-s -w`): its `crypto/tls` functions are
/// found in the line table (`.gopclntab`) every Go binary keeps, and read like any other.
#[test]
fn a_stripped_go_server_is_read_through_its_line_table() {
    require_root();
    let cert = TestCert::make().unwrap_or_else(|e| panic!("{e}"));
    let receiver = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
    let port = free_port();
    let health = format!("127.0.0.1:{}", free_port());
    go_peer("tlspeer", true);
    let agent = agent_for(&receiver, port, &["--health-listen", &health]);
    let (_server, pid) = go_server(&cert, port, true);
    let attached = agent.wait_stderr(&format!("TLS: attached to /proc/{pid}/root"));
    assert!(
        attached.ends_with("/target/go/tlspeer-stripped"),
        "{attached}"
    );
    let body = curl_https(&cert.cert(), &[format!("https://127.0.0.1:{port}/hello")]);
    assert_eq!(body, "hello from go\n");
    // Both ends whole: curl's through OpenSSL, the server's through its crypto/tls.
    let (servers, clients) = exact(&receiver, 1, 1);
    check_exchange(&servers[0], &clients[0], port, "/hello", 200);
    assert_eq!(
        servers[0].resource_str("process.executable.name"),
        Some("tlspeer-stripped")
    );
    wait_metric(&health, "socktrace_conns_tls_unreadable_total", 0);
    assert!(
        !agent.stderr().contains("without a symbol table"),
        "{}",
        agent.stderr()
    );
}

/// The grpc-go server over TLS (`tests/peers/go/grpcpeer`) traced by the agent, then its client
/// run as `grpcpeer MODE PORT CA CALLS`, whose output must be `expected`; `check` reads the
/// spans (with the port) while the agent and the server still run.
fn grpcpeer_over_tls(
    mode: &str,
    calls: u32,
    expected: &str,
    check: impl FnOnce(&OtlpReceiver, u16),
) {
    require_root();
    let cert = TestCert::make().unwrap_or_else(|e| panic!("{e}"));
    let receiver = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
    let port = free_port();
    go_peer("grpcpeer", false);
    let agent = agent_for(&receiver, port, &[]);
    let (_server, pid) = go_server_of("grpcpeer", &cert, port, false);
    agent.wait_stderr(&format!("TLS: attached to /proc/{pid}/root"));
    let out = Command::new(go_peer("grpcpeer", false))
        .arg(mode)
        .arg(port.to_string())
        .arg(cert.cert())
        .arg(calls.to_string())
        .output()
        .expect("grpcpeer client");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        expected,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check(&receiver, port);
}

#[test]
fn grpc_go_over_tls_on_both_sides() {
    grpcpeer_over_tls(
        "client",
        3,
        "OK\nOK\nOK\nNotFound\nDONE\n",
        |receiver, port| {
            let (servers, clients) = exact(receiver, 4, 4);
            const METHOD: &str = "grpc.health.v1.Health/Check";
            for spans in [&servers, &clients] {
                let mut codes: Vec<String> = spans
                    .iter()
                    .map(|s| {
                        assert_eq!(s.name(), METHOD, "{s}");
                        assert_eq!(attr(s, "rpc.system.name"), "grpc");
                        assert_eq!(attr(s, "rpc.method"), METHOD);
                        assert_eq!(attr(s, "network.protocol.version"), "2");
                        // grpc-go sends the certificate's name alone as :authority (no port).
                        assert_eq!(attr(s, "server.address"), "127.0.0.1");
                        if s.kind() == SpanKind::Client {
                            assert_eq!(int(s, "network.peer.port"), i64::from(port));
                        } else {
                            assert_eq!(attr(s, "client.address"), "127.0.0.1");
                        }
                        assert_eq!(s.resource_str("process.executable.name"), Some("grpcpeer"));
                        attr(s, "rpc.status_code")
                    })
                    .collect();
                codes.sort();
                assert_eq!(codes, ["NOT_FOUND", "OK", "OK", "OK"]);
            }
            // Each call's client span is its server span's parent (same-host link over TLS).
            for s in &servers {
                let c = clients
                    .iter()
                    .find(|c| Some(c.span_id()) == s.parent_span_id())
                    .unwrap_or_else(|| panic!("no client span is the parent of {s}"));
                assert_eq!(c.trace_id(), s.trace_id());
                assert_eq!(attr(c, "rpc.status_code"), attr(s, "rpc.status_code"));
            }
        },
    );
}

/// HTTP/2 over TLS in writes larger than one record holds (8 KiB): 100 calls started at once on
/// one connection, each with a 200-byte header HPACK cannot shrink, leave grpc-go's client in
/// TLS writes of tens of KiB (and its server in reads as large). The plaintext of one call
/// goes on in further records as a socket's does: every call is a span on both sides, with its
/// method, status and same-host parent.
#[test]
fn grpc_over_tls_in_writes_larger_than_a_record_loses_no_call() {
    grpcpeer_over_tls("concurrent", 100, "OK 100\nDONE\n", |receiver, _| {
        let (servers, clients) = exact(receiver, 100, 100);
        const METHOD: &str = "grpc.health.v1.Health/Check";
        for s in servers.iter().chain(&clients) {
            assert_eq!(s.name(), METHOD, "{s}");
            assert_eq!(attr(s, "rpc.status_code"), "OK", "{s}");
        }
        for s in &servers {
            let parent = clients
                .iter()
                .find(|c| Some(c.span_id()) == s.parent_span_id())
                .unwrap_or_else(|| panic!("no client span is the parent of {s}"));
            assert_eq!(parent.trace_id(), s.trace_id());
        }
    });
}
