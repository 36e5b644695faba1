//! A traced server placed in a CRI-style cgroup (as containerd's systemd driver names it for a
//! Kubernetes pod) gets that cgroup's `container.id`, and its `service.name` from its own
//! environment.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use socktrace_tests::{
    harness::{Agent, PyServer, curl, of_kind, require_root},
    otlp_receiver::{OtlpReceiver, Protocol},
};

/// The cgroup2 hierarchy: `/sys/fs/cgroup` on a unified host, `/sys/fs/cgroup/unified` on a
/// hybrid one (like the project's machine), mounted there if nothing is.
fn cgroup2_root() -> PathBuf {
    let mounts = fs::read_to_string("/proc/self/mounts").expect("reading /proc/self/mounts");
    if let Some(path) = mounts.lines().find_map(|l| {
        let mut f = l.split(' ');
        let (_, path, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(path))
    }) {
        return path;
    }
    let root = PathBuf::from("/sys/fs/cgroup/unified");
    fs::create_dir_all(&root).expect("creating /sys/fs/cgroup/unified");
    let status = Command::new("mount")
        .args(["-t", "cgroup2", "none"])
        .arg(&root)
        .status()
        .expect("running mount");
    assert!(status.success(), "mounting cgroup2 at {}", root.display());
    root
}

/// The pod's cgroup directories, removed (innermost first) on drop after moving any process
/// still inside back to the root, so a failing test leaves no cgroup behind.
struct PodCgroup {
    root: PathBuf,
    /// Outermost first.
    dirs: Vec<PathBuf>,
}

impl PodCgroup {
    fn create(root: &Path, relative: &[&str]) -> Self {
        let mut dirs = Vec::new();
        let mut dir = root.to_path_buf();
        for part in relative {
            dir.push(part);
            if !dir.exists() {
                fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                dirs.push(dir.clone());
            }
        }
        Self {
            root: root.to_path_buf(),
            dirs,
        }
    }

    fn leaf(&self) -> &Path {
        self.dirs.last().expect("at least one cgroup created")
    }

    fn enter(&self, pid: u32) {
        let procs = self.leaf().join("cgroup.procs");
        fs::write(&procs, pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", procs.display()));
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        for dir in self.dirs.iter().rev() {
            if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in procs.lines() {
                    let _ = fs::write(self.root.join("cgroup.procs"), pid);
                }
            }
            let _ = fs::remove_dir(dir);
        }
    }
}

#[test]
fn process_in_a_cri_cgroup_gets_container_id_and_its_own_service_name() {
    require_root();
    let root = cgroup2_root();
    let pod_uid = "7a0d2c4e_5b1f_4e3a_9c8d_0f1e2d3c4b5a";
    let container_id = format!("{:016x}{}", std::process::id(), "5cbd".repeat(12));
    assert_eq!(container_id.len(), 64);
    let scope = format!("cri-containerd-{container_id}.scope");
    let pod_slice = format!("kubepods-besteffort-pod{pod_uid}.slice");
    // Declared before the server so it is dropped after it: the server is killed first, then
    // the directories are emptied and removed.
    let cgroup = PodCgroup::create(
        &root,
        &[
            "kubepods.slice",
            "kubepods-besteffort.slice",
            &pod_slice,
            &scope,
        ],
    );
    let server = PyServer::start(&[("OTEL_SERVICE_NAME", "cart")]);
    cgroup.enter(server.pid());
    let own = fs::read_to_string(format!("/proc/{}/cgroup", server.pid())).expect("cgroup");
    assert!(
        own.contains(&format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/{pod_slice}/{scope}"
        )),
        "the server is in the pod cgroup:\n{own}"
    );

    let receiver = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
    let endpoint = receiver.endpoint();
    let port = server.port.to_string();
    let _agent = Agent::start(&["--otlp-endpoint", &endpoint, "--port", &port]);
    curl(&[&server.url("/cart/items")]);
    receiver
        .wait_for_blocking(
            |s| !of_kind(s, SpanKind::Server).is_empty(),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let spans = receiver.spans();
    let servers = of_kind(&spans, SpanKind::Server);
    let span = &servers[0];
    assert_eq!(
        span.resource_str("container.id"),
        Some(container_id.as_str()),
        "{span}"
    );
    assert_eq!(span.resource_str("service.name"), Some("cart"), "{span}");
    assert_eq!(
        span.resource_int("process.pid"),
        Some(i64::from(server.pid())),
        "{span}"
    );
    // curl stayed in the test's own cgroup: its CLIENT span has the test's container, if any.
    let mine = fs::read_to_string("/proc/self/cgroup").expect("own cgroup");
    let mine = socktrace::resource::process::container_id_from_cgroup(&mine);
    for client in of_kind(&spans, SpanKind::Client) {
        assert_eq!(
            client.resource_str("container.id"),
            mine.as_deref(),
            "{client}"
        );
    }
}

/// A client that lives a few milliseconds in a container: gone before the agent could read its
/// `/proc`, it still gets its container and its own service name, from what the kernel saw at
/// its exec.
#[test]
fn short_lived_client_in_a_cri_cgroup_gets_its_container_id_and_service_name() {
    require_root();
    let root = cgroup2_root();
    let container_id = format!("{:016x}{}", std::process::id(), "a1b2".repeat(12));
    let scope = format!("cri-containerd-{container_id}.scope");
    let cgroup = PodCgroup::create(&root, &["kubepods.slice", "socktrace-short.slice", &scope]);
    let server = PyServer::start(&[("OTEL_SERVICE_NAME", "cart")]);
    let receiver = OtlpReceiver::start_blocking(Protocol::HttpProtobuf);
    let endpoint = receiver.endpoint();
    let port = server.port.to_string();
    let _agent = Agent::start(&["--otlp-endpoint", &endpoint, "--port", &port]);

    let procs = cgroup.leaf().join("cgroup.procs");
    let mut pids = Vec::new();
    for _ in 0..3 {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {} && exec curl -sS -o /dev/null {}",
                procs.display(),
                server.url("/checkout")
            ))
            .env("OTEL_SERVICE_NAME", "checkout-job")
            .env("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=ci")
            .spawn()
            .expect("sh");
        pids.push(i64::from(child.id()));
        assert!(child.wait().expect("curl").success());
    }
    let (_, clients) = socktrace_tests::harness::exact(&receiver, 3, 3);
    let mut seen: Vec<i64> = clients
        .iter()
        .map(|c| c.resource_int("process.pid").expect("process.pid"))
        .collect();
    seen.sort_unstable();
    pids.sort_unstable();
    assert_eq!(seen, pids, "one client span per curl process");
    for c in &clients {
        assert_eq!(c.resource_str("service.name"), Some("checkout-job"), "{c}");
        assert_eq!(c.resource_str("deployment.environment"), Some("ci"), "{c}");
        assert_eq!(
            c.resource_str("container.id"),
            Some(container_id.as_str()),
            "{c}"
        );
        assert_eq!(
            c.resource_str("process.executable.name"),
            Some("curl"),
            "{c}"
        );
    }
}
