//! A Zipkin-compatible receiver for tests: `tests/peers/zipkin_receiver.py`, which answers
//! `POST /api/v2/spans` as a Zipkin server does (202 Accepted) and refuses (400, 415) every body
//! that is not a JSON list of spans valid against the Zipkin v2 span schema
//! (`tests/data/zipkin/spans-v2.schema.json`, checked with Python's `jsonschema`). What it
//! received is read here from its stdout, one JSON record per request.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::harness::{ChildGuard, peer, python, wait_line, workspace};

/// One request the receiver answered.
#[derive(Clone, Debug)]
pub struct ZipkinRequest {
    /// The status it answered with: 202, 400, 415, or a scripted one.
    pub status: u16,
    /// The reply was scripted (`--replies`): the body was not looked at.
    pub scripted: bool,
    pub content_type: String,
    pub user_agent: String,
    /// The spans of an accepted body.
    pub spans: Vec<ZipkinSpan>,
    /// Why a body was refused.
    pub errors: Vec<String>,
}

/// One received Zipkin span (schema-valid), with accessors for what tests look at.
#[derive(Clone, Debug)]
pub struct ZipkinSpan(pub Value);

impl ZipkinSpan {
    fn str(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(Value::as_str)
    }
    pub fn name(&self) -> &str {
        self.str("name").unwrap_or_default()
    }
    pub fn kind(&self) -> &str {
        self.str("kind").unwrap_or_default()
    }
    pub fn trace_id(&self) -> &str {
        self.str("traceId").unwrap_or_default()
    }
    pub fn id(&self) -> &str {
        self.str("id").unwrap_or_default()
    }
    pub fn parent_id(&self) -> Option<&str> {
        self.str("parentId")
    }
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.0.get("tags")?.get(key)?.as_str()
    }
    /// `localEndpoint` or `remoteEndpoint` (`Value::Null` when absent).
    pub fn endpoint(&self, which: &str) -> &Value {
        self.0.get(which).unwrap_or(&Value::Null)
    }
    pub fn service_name(&self) -> Option<&str> {
        self.endpoint("localEndpoint")
            .get("serviceName")
            .and_then(Value::as_str)
    }
    /// `timestamp` (µs).
    pub fn timestamp(&self) -> u64 {
        self.0.get("timestamp").and_then(Value::as_u64).unwrap_or(0)
    }
    /// `duration` (µs).
    pub fn duration(&self) -> u64 {
        self.0.get("duration").and_then(Value::as_u64).unwrap_or(0)
    }
}

impl std::fmt::Display for ZipkinSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The receiver process, killed on drop.
pub struct ZipkinReceiver {
    _guard: ChildGuard,
    port: u16,
    requests: Arc<Mutex<Vec<ZipkinRequest>>>,
}

impl ZipkinReceiver {
    /// Starts the receiver on a free port of 127.0.0.1.
    pub fn start() -> Self {
        Self::start_with_replies(&[])
    }

    /// Starts it answering its first requests with `replies` (e.g. 503) instead.
    pub fn start_with_replies(replies: &[u16]) -> Self {
        let schema = workspace().join("tests/data/zipkin/spans-v2.schema.json");
        let replies: Vec<String> = replies.iter().map(u16::to_string).collect();
        let mut child = Command::new(python())
            .arg(peer("zipkin_receiver.py"))
            .arg(&schema)
            .args(["--replies", &replies.join(",")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting zipkin_receiver.py");
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        let guard = ChildGuard::new("zipkin_receiver.py", child);
        let port = wait_line(&mut out, "PORT ", Duration::from_secs(20))
            .parse()
            .expect("port number");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let into = requests.clone();
        std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { break };
                let record: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("receiver printed {line:?}: {e}"));
                let text = |k: &str| record[k].as_str().unwrap_or_default().to_owned();
                let request = ZipkinRequest {
                    status: record["status"].as_u64().expect("status") as u16,
                    scripted: record["scripted"].as_bool().unwrap_or(false),
                    content_type: text("content_type"),
                    user_agent: text("user_agent"),
                    spans: record["spans"]
                        .as_array()
                        .map(|a| a.iter().cloned().map(ZipkinSpan).collect())
                        .unwrap_or_default(),
                    errors: record["errors"]
                        .as_array()
                        .map(|a| a.iter().map(|e| e.to_string()).collect())
                        .unwrap_or_default(),
                };
                into.lock().expect("lock").push(request);
            }
        });
        Self {
            _guard: guard,
            port,
            requests,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL spans are POSTed to.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/api/v2/spans", self.port)
    }

    /// Every request so far, in order. The receiver records a request before it answers, but a
    /// thread here reads those records: a request just answered may not be in yet (see
    /// [`Self::wait_requests`]).
    pub fn requests(&self) -> Vec<ZipkinRequest> {
        self.requests.lock().expect("lock").clone()
    }

    /// Every request, once at least `n` have been read (or after `timeout`, whatever came).
    pub fn wait_requests(&self, n: usize, timeout: Duration) -> Vec<ZipkinRequest> {
        let deadline = Instant::now() + timeout;
        loop {
            let requests = self.requests();
            if requests.len() >= n || Instant::now() > deadline {
                return requests;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The spans of every accepted request, in order.
    pub fn spans(&self) -> Vec<ZipkinSpan> {
        self.requests()
            .into_iter()
            .filter(|r| r.status == 202)
            .flat_map(|r| r.spans)
            .collect()
    }

    /// Panics if any body was refused as invalid (not a scripted failure).
    pub fn assert_all_valid(&self) {
        let refused: Vec<ZipkinRequest> = self
            .requests()
            .into_iter()
            .filter(|r| !r.scripted && r.status != 202)
            .collect();
        assert!(refused.is_empty(), "refused Zipkin bodies: {refused:#?}");
    }

    /// Waits until the accepted spans satisfy `done`; returns them.
    pub fn wait_for(
        &self,
        done: impl Fn(&[ZipkinSpan]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<ZipkinSpan>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return Ok(spans);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "timed out after {timeout:?}; requests so far: {:#?}",
                    self.requests()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
