//! `deploy/`: every manifest validates strictly against pinned Kubernetes schemas (alone, and as
//! kustomize builds it when `kubectl` is installed), the DaemonSet keeps its least-privilege
//! shape, and checkov's security scan (manifests and Containerfile) fails nothing - every check
//! it skips is explained in `deploy/README.md`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use socktrace_tests::harness::{python, temp_file, workspace};

/// Kubernetes versions the manifests must be valid for: the oldest with
/// `securityContext.appArmorProfile` and the newest the pinned validator knows well.
const K8S_VERSIONS: &[&str] = &["1.30.0", "1.35.0"];

fn deploy() -> PathBuf {
    workspace().join("deploy")
}

/// A tool installed in the test virtualenv, next to its interpreter.
fn venv_tool(name: &str) -> PathBuf {
    let tool = python()
        .parent()
        .expect("python is in the venv's bin/")
        .join(name);
    assert!(
        tool.exists(),
        "{} missing: add it to tests/peers/requirements.txt and run `cargo xtask test`",
        tool.display()
    );
    tool
}

/// A YAML file as a JSON value (the manifests use nothing JSON cannot hold).
fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The files a kustomization lists under `key` (`resources` or `patches[].path`).
fn listed(kustomization: &Path, key: &str) -> Vec<PathBuf> {
    let dir = kustomization.parent().expect("in a directory");
    let k = yaml(kustomization);
    k[key]
        .as_array()
        .unwrap_or_else(|| panic!("{} has no {key}", kustomization.display()))
        .iter()
        .map(|v| {
            let name = v.as_str().or_else(|| v["path"].as_str()).expect("a path");
            dir.join(name)
        })
        .collect()
}

fn validate(files: &[PathBuf]) {
    let validator = venv_tool("kubernetes-validate");
    for version in K8S_VERSIONS {
        let out = Command::new(&validator)
            .args(["--strict", "--kubernetes-version", version])
            .args(files)
            .output()
            .expect("running kubernetes-validate");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "kubernetes-validate {version}:\n{text}"
        );
        assert!(!text.contains("ERROR"), "{text}");
        let passed = text.matches(" passed for resource ").count();
        assert!(
            passed >= files.len(),
            "{passed} resources passed for {} files:\n{text}",
            files.len()
        );
    }
}

#[test]
fn manifests_validate_against_pinned_kubernetes_schemas() {
    let base = deploy().join("base");
    let resources = listed(&base.join("kustomization.yaml"), "resources");
    // Every manifest in base/ is applied: none forgotten in the kustomization.
    let mut on_disk: Vec<PathBuf> = std::fs::read_dir(&base)
        .expect("deploy/base")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml")
        })
        .collect();
    on_disk.sort();
    let mut sorted = resources.clone();
    sorted.sort();
    assert_eq!(sorted, on_disk, "deploy/base/kustomization.yaml resources");
    assert_eq!(
        listed(&deploy().join("kustomization.yaml"), "resources"),
        vec![deploy().join("base")]
    );

    // The overlay: its patch alone, and the ConfigMap it produces (a strategic merge of `data`).
    let overlay = deploy().join("overlays/example/kustomization.yaml");
    assert_eq!(
        listed(&overlay, "resources"),
        vec![deploy().join("overlays/example/../../base")]
    );
    let patches = listed(&overlay, "patches");
    let mut merged = yaml(&base.join("configmap.yaml"));
    for patch in &patches {
        let patch = yaml(patch);
        if patch["kind"] == merged["kind"]
            && patch["metadata"]["name"] == merged["metadata"]["name"]
        {
            for (k, v) in patch["data"].as_object().expect("data") {
                merged["data"][k.as_str()] = v.clone();
            }
        }
    }
    assert_eq!(
        merged["data"]["OTEL_EXPORTER_OTLP_PROTOCOL"].as_str(),
        Some("grpc"),
        "the overlay changes the exporter"
    );
    let merged = temp_file(
        "overlay-configmap.yaml",
        serde_saphyr::to_string(&merged).expect("yaml").as_bytes(),
    );

    let mut files = resources;
    files.extend(patches);
    files.push(merged);
    validate(&files);

    // What `kubectl apply -k` sends, when kubectl is here to build it.
    if Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        for (name, dir) in [
            ("kustomize-base.yaml", deploy()),
            ("kustomize-overlay.yaml", deploy().join("overlays/example")),
        ] {
            let out = Command::new("kubectl")
                .arg("kustomize")
                .arg(&dir)
                .output()
                .expect("kubectl kustomize");
            assert!(
                out.status.success(),
                "kubectl kustomize {}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            let built = String::from_utf8_lossy(&out.stdout).into_owned();
            assert_eq!(
                built.matches("\nkind: ").count() + usize::from(built.starts_with("kind: ")),
                7,
                "{built}"
            );
            validate(&[temp_file(name, built.as_bytes())]);
        }
    } else {
        eprintln!("kubectl not installed: kustomize builds not validated (files were)");
    }
}

#[test]
fn daemonset_is_least_privilege_and_probes_the_agent_endpoint() {
    let ds = yaml(&deploy().join("base/daemonset.yaml"));
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"].as_bool(), Some(true));
    assert_ne!(pod["hostNetwork"].as_bool(), Some(true));
    assert_eq!(pod["tolerations"][0]["operator"].as_str(), Some("Exists"));
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_ne!(sc["privileged"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    let caps = |k: &str| -> Vec<String> {
        sc["capabilities"][k]
            .as_array()
            .map(|s| {
                s.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(caps("drop"), ["ALL"]);
    assert_eq!(
        caps("add"),
        [
            "BPF",
            "PERFMON",
            "SYS_PTRACE",
            "DAC_READ_SEARCH",
            "NET_ADMIN"
        ],
        "exactly the capabilities the agent's start-up check wants (agent/src/caps.rs)"
    );
    // The node name for the Kubernetes watch, from the downward API.
    let env = c["env"].as_array().expect("env");
    assert!(
        env.iter().any(|e| e["name"] == "NODE_NAME"
            && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName")
    );
    // Host mounts: only tracefs, read-only.
    let mounts = c["volumeMounts"].as_array().expect("mounts");
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0]["mountPath"].as_str(), Some("/sys/kernel/tracing"));
    assert_eq!(mounts[0]["readOnly"].as_bool(), Some(true));
    // Probes hit the endpoints the agent serves, on the port it is told to listen on.
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.contains(&"--health-listen=0.0.0.0:8686"), "{args:?}");
    assert_eq!(c["ports"][0]["containerPort"].as_u64(), Some(8686));
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert!(c["resources"]["limits"]["memory"].as_str().is_some());
    assert!(c["resources"]["requests"]["cpu"].as_str().is_some());
}

/// Runs checkov and returns its JSON report.
fn checkov(args: &[&str], target: &Path) -> serde_json::Value {
    let out = Command::new(venv_tool("checkov"))
        .args(args)
        .arg(target)
        .args(["--output", "json", "--skip-download"])
        .output()
        .expect("running checkov");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "checkov output is not JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success(),
        "checkov failed checks:\n{:#}",
        report["results"]["failed_checks"]
    );
    report
}

#[test]
fn security_scan_fails_nothing_and_every_skip_is_explained() {
    let readme = std::fs::read_to_string(deploy().join("README.md")).expect("deploy/README.md");
    // checkov recognises Dockerfile names only: scan a copy of the Containerfile under one.
    let containerfile =
        std::fs::read(deploy().join("Containerfile")).expect("deploy/Containerfile");
    let dockerfile = temp_file("Containerfile.dockerfile", &containerfile);
    let reports = [
        (
            "kubernetes",
            checkov(&["--framework", "kubernetes", "--directory"], &deploy()),
            8,
        ),
        (
            "dockerfile",
            checkov(&["--framework", "dockerfile", "--file"], &dockerfile),
            1,
        ),
    ];
    for (framework, report, min_resources) in reports {
        assert_eq!(report["check_type"], framework, "{report:#}");
        let summary = &report["summary"];
        assert_eq!(summary["failed"], 0, "{framework}: {summary}");
        assert_eq!(summary["parsing_errors"], 0, "{framework}: {summary}");
        assert!(
            summary["resource_count"].as_u64() >= Some(min_resources),
            "{framework}: scanned too little: {summary}"
        );
        assert!(
            summary["passed"].as_u64() > Some(10),
            "{framework}: {summary}"
        );
        for skipped in report["results"]["skipped_checks"]
            .as_array()
            .expect("skipped_checks")
        {
            let id = skipped["check_id"].as_str().expect("check id");
            assert!(
                readme
                    .lines()
                    .any(|l| l.starts_with(&format!("| `{id}` |"))),
                "{framework}: {id} is skipped but deploy/README.md does not explain it"
            );
            let reason = skipped["check_result"]["suppress_comment"]
                .as_str()
                .unwrap_or_default();
            assert!(reason.len() > 10, "{id} skipped without a reason");
        }
    }
}

/// `--help` text of the agent's flag `flag`, up to the next flag.
fn flag_help(help: &str, flag: &str) -> String {
    let start = help
        .find(&format!("      {flag} "))
        .unwrap_or_else(|| panic!("{flag} not in --help"));
    let rest = &help[start + flag.len() + 6..];
    let end = rest.find("\n      --").unwrap_or(rest.len());
    rest[..end].split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The tail-sampling overlay: valid manifests, the agents export everything to the
/// load-balancing tier, which routes by trace id to the sampling tier's headless Service, whose
/// policy is the agent's `--sampler priority` with its default settings (read from `--help`, so
/// a changed default fails here until the collector follows).
#[test]
fn tail_sampling_overlay_routes_by_trace_and_keeps_the_agents_priority_policy() {
    let dir = deploy().join("overlays/tail-sampling");
    let kustomization = dir.join("kustomization.yaml");
    let resources = listed(&kustomization, "resources");
    assert_eq!(resources[0], dir.join("../../base"));
    let collector = dir.join("collector.yaml");
    assert_eq!(resources[1..], *std::slice::from_ref(&collector));
    let patches = listed(&kustomization, "patches");
    let mut files = patches.clone();
    files.push(collector.clone());
    validate(&files);

    let text = std::fs::read_to_string(&collector).expect("collector.yaml");
    let docs: Vec<Value> = text
        .split("\n---\n")
        .map(|d| serde_saphyr::from_str(d).expect("collector.yaml document"))
        .collect();
    let find = |kind: &str, name: &str| -> &Value {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    let config = |key: &str| -> Value {
        let data = find("ConfigMap", "socktrace-collector")["data"][key]
            .as_str()
            .unwrap_or_else(|| panic!("no {key}"))
            .to_owned();
        serde_saphyr::from_str(&data).unwrap_or_else(|e| panic!("{key}: {e}"))
    };

    // Agents -> load-balancing Service.
    let patch = yaml(&patches[0]);
    assert_eq!(patch["data"]["OTEL_TRACES_SAMPLER"], "always_on");
    assert_eq!(
        patch["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"],
        "http://socktrace-collector-lb.socktrace.svc.cluster.local:4317"
    );
    assert_eq!(patch["data"]["OTEL_EXPORTER_OTLP_PROTOCOL"], "grpc");
    let lb_service = find("Service", "socktrace-collector-lb");
    assert!(
        lb_service["spec"]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .any(|p| p["port"] == 4317)
    );
    // Load-balancing tier -> every sampler replica, by trace id.
    let lb = config("loadbalancer.yaml");
    let exporter = &lb["exporters"]["loadbalancing"];
    assert_eq!(exporter["routing_key"], "traceID");
    assert_eq!(
        exporter["resolver"]["dns"]["hostname"],
        "socktrace-collector-sampler.socktrace.svc.cluster.local"
    );
    assert_eq!(
        find("Service", "socktrace-collector-sampler")["spec"]["clusterIP"],
        "None",
        "headless: the exporter must see every replica"
    );
    assert_eq!(
        lb["service"]["pipelines"]["traces"]["exporters"][0],
        "loadbalancing"
    );

    // The sampling tier's policy, against the agent's defaults.
    let out = Command::new(socktrace_tests::harness::agent_bin())
        .arg("--help")
        .output()
        .expect("socktrace --help");
    let help = String::from_utf8_lossy(&out.stdout);
    let default = |flag: &str| -> String {
        let h = flag_help(&help, flag);
        h.split("[default: ")
            .nth(1)
            .and_then(|r| r.split(']').next())
            .unwrap_or_else(|| panic!("{flag}: no default in {h}"))
            .to_owned()
    };
    let slow = default("--slow-threshold");
    let wait = default("--sample-wait");
    let ratio_help = flag_help(&help, "--sample-ratio");
    let ratio: f64 = ratio_help
        .split("`priority` (default ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no priority default in {ratio_help}"));
    let sampler = config("sampler.yaml");
    let tail = &sampler["processors"]["tail_sampling"];
    assert_eq!(tail["decision_wait"].as_str(), Some(wait.as_str()));
    let policies = tail["policies"].as_array().expect("policies");
    assert_eq!(policies.len(), 3, "{policies:?}");
    let policy = |kind: &str| -> &Value {
        policies
            .iter()
            .find(|p| p["type"] == kind)
            .unwrap_or_else(|| panic!("no {kind} policy"))
    };
    assert_eq!(
        policy("status_code")["status_code"]["status_codes"],
        serde_json::json!(["ERROR"])
    );
    let slow_ms = match slow.strip_suffix("ms") {
        Some(ms) => ms.parse::<u64>().expect("ms"),
        None => slow.trim_end_matches('s').parse::<u64>().expect("s") * 1000,
    };
    assert_eq!(policy("latency")["latency"]["threshold_ms"], slow_ms);
    assert_eq!(
        policy("probabilistic")["probabilistic"]["sampling_percentage"].as_f64(),
        Some(ratio * 100.0)
    );
    assert_eq!(
        sampler["service"]["pipelines"]["traces"]["processors"],
        serde_json::json!(["tail_sampling"])
    );
}
