//! End to end, as root: the real agent traces a real `redis-server` (started per test) and real
//! clients - `redis-cli` (one command per connection) and the Python `redis` client
//! (pipelines) - and the spans are checked as they arrive over OTLP. Both ends run on this
//! host, so every command gives a CLIENT span and a SERVER span, the server's a child of the
//! client's.

use std::process::Command;

use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use socktrace_tests::{
    harness::{Agent, assert_not_exported, exact, python, require_root},
    otlp_receiver::{OtlpReceiver, Protocol, ReceivedSpan},
    redis::RedisServer,
};

fn setup() -> (OtlpReceiver, RedisServer, Agent) {
    require_root();
    let receiver = OtlpReceiver::start_blocking(Protocol::Grpc);
    let redis = RedisServer::start();
    let endpoint = receiver.endpoint();
    let port = redis.port.to_string();
    let agent = Agent::start(&[
        "--otlp-endpoint",
        endpoint.as_str(),
        "--otlp-protocol",
        "grpc",
        "--protocols",
        "redis",
        "--port",
        port.as_str(),
    ]);
    (receiver, redis, agent)
}

/// The attributes every Redis span of these tests shares, and the pairing of both ends.
fn check_pairs(client: &[ReceivedSpan], server: &[ReceivedSpan], port: u16) {
    for (c, s) in client.iter().zip(server) {
        assert_eq!(c.name(), s.name(), "{c}\n{s}");
        assert_eq!(s.parent_span_id(), Some(c.span_id()), "{c}\n{s}");
        assert_eq!(s.trace_id(), c.trace_id());
        for span in [c, s] {
            assert_eq!(span.attr_str("db.system.name").as_deref(), Some("redis"));
            assert_eq!(
                span.attr_str("db.operation.name").as_deref(),
                Some(span.name())
            );
            assert_eq!(
                span.attr_str("server.address").as_deref(),
                Some("127.0.0.1")
            );
            assert_eq!(span.attr_int("server.port"), Some(i64::from(port)));
            assert_eq!(
                span.attr_str("db.query.text"),
                None,
                "values never leave: {span}"
            );
            assert!(span.attr_bool("socktrace.partial").is_none(), "{span}");
        }
    }
}

#[test]
fn redis_cli_commands_errors_and_databases() {
    let (receiver, redis, _agent) = setup();
    let run = |args: &[&str], expect: &str| {
        let out = redis.cli(args);
        assert!(out.status.success(), "{args:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            expect,
            "{args:?}"
        );
    };
    run(&["SET", "k1", "sekrit-value-1"], "OK");
    run(&["GET", "k1"], "sekrit-value-1");
    run(&["LPUSH", "list1", "sekrit-value-2"], "1");
    run(
        &["GET", "list1"],
        "WRONGTYPE Operation against a key holding the wrong kind of value",
    );
    run(&["DEL", "k1", "list1", "nothing"], "2");
    // -n 2: redis-cli selects database 2 on its connection first.
    run(&["-n", "2", "MSET", "a", "1", "b", "sekrit-value-3"], "OK");
    let (s, c) = exact(&receiver, 7, 7);
    check_pairs(&c, &s, redis.port);
    let names: Vec<&str> = c.iter().map(ReceivedSpan::name).collect();
    assert_eq!(
        names,
        ["SET", "GET", "LPUSH", "GET", "DEL", "SELECT", "MSET"]
    );
    // (arguments, keys among them, database) per command.
    let shape: Vec<_> = c
        .iter()
        .map(|s| {
            (
                s.attr_int("socktrace.redis.args_count"),
                s.attr_int("socktrace.redis.key_count"),
                s.attr_str("db.namespace"),
            )
        })
        .collect();
    let db = |n: &str| Some(n.to_owned());
    assert_eq!(
        shape,
        [
            (Some(2), Some(1), db("0")),
            (Some(1), Some(1), db("0")),
            (Some(2), Some(1), db("0")),
            (Some(1), Some(1), db("0")),
            (Some(3), Some(3), db("0")),
            // SELECT runs in the database it leaves; the next command in the one it chose.
            (Some(1), Some(0), db("0")),
            (Some(4), Some(2), db("2")),
        ]
    );
    for spans in [&c, &s] {
        let err = &spans[3];
        assert_eq!(err.status_code(), StatusCode::Error, "{err}");
        assert_eq!(
            err.status_message(),
            "WRONGTYPE Operation against a key holding the wrong kind of value"
        );
        assert_eq!(
            err.attr_str("db.response.status_code").as_deref(),
            Some("WRONGTYPE")
        );
        assert_eq!(err.attr_str("error.type").as_deref(), Some("WRONGTYPE"));
        for ok in spans
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 3)
            .map(|(_, s)| s)
        {
            assert_eq!(ok.status_code(), StatusCode::Unset, "{ok}");
            assert_eq!(ok.attr_str("error.type"), None, "{ok}");
        }
    }
    assert!(
        c.iter()
            .all(|s| s.resource_str("service.name") == Some("redis-cli"))
    );
    assert_not_exported(&receiver.spans(), &["sekrit"]);
}

#[test]
fn a_pipeline_gives_one_span_per_command_each_with_its_own_reply() {
    let (receiver, redis, _agent) = setup();
    // One connection: the client's greeting (pinned redis 8.2.0: HELLO, and CLIENT commands
    // that this Redis 7.0 refuses), then 6 commands written at once, an error in the middle.
    let script = format!(
        "import redis\n\
         r = redis.Redis(host='127.0.0.1', port={})\n\
         p = r.pipeline(transaction=False)\n\
         p.set('a', 'sekrit-1'); p.incr('n'); p.lpush('a', 'sekrit-2'); p.get('a'); p.hset('h', 'f', 'sekrit-3'); p.delete('a', 'h', 'n')\n\
         print(p.execute(raise_on_error=False))\n",
        redis.port
    );
    let out = Command::new(python())
        .args(["-c", &script])
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "[True, 1, server:ResponseError, b'sekrit-1', 1, 3]"
    );
    let (s, c) = exact(&receiver, 10, 10);
    check_pairs(&c, &s, redis.port);
    let names: Vec<&str> = c.iter().map(ReceivedSpan::name).collect();
    assert_eq!(
        names,
        [
            "HELLO",
            "CLIENT MAINT_NOTIFICATIONS",
            "CLIENT SETINFO",
            "CLIENT SETINFO",
            "SET",
            "INCRBY",
            "LPUSH",
            "GET",
            "HSET",
            "DEL"
        ]
    );
    // Each reply on its own command: the error on LPUSH only, and on the refused greetings.
    let errors: Vec<Option<String>> = c.iter().map(|s| s.attr_str("error.type")).collect();
    let e = |t: &str| Some(t.to_owned());
    assert_eq!(
        errors,
        [
            None,
            e("ERR"),
            e("ERR"),
            e("ERR"),
            None,
            None,
            e("WRONGTYPE"),
            None,
            None,
            None
        ]
    );
    let keys: Vec<Option<i64>> = c[4..]
        .iter()
        .map(|s| s.attr_int("socktrace.redis.key_count"))
        .collect();
    assert_eq!(keys, [Some(1), Some(1), Some(1), Some(1), Some(1), Some(3)]);
    // Pipelined: the six commands left in one write, so they start together.
    assert!(
        c[4..]
            .iter()
            .all(|s| s.span.start_time_unix_nano == c[4].span.start_time_unix_nano)
    );
    assert_not_exported(&receiver.spans(), &["sekrit"]);
}
