//! Build and development tasks. The README's two commands are `cargo xtask run` and
//! `cargo xtask test`; both start with `setup`, which installs what a fresh machine lacks and
//! does nothing on a machine that has it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

mod kernels;
#[path = "../../ebpf/toolchain.rs"]
mod toolchain;

#[derive(Parser)]
#[command(about = "socktrace build and development tasks")]
struct Args {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the pinned eBPF toolchain (`ebpf/toolchain.toml`: a dated nightly with rust-src,
    /// Debian's LLVM of one version, bpf-linker built against it) where anything differs.
    Setup,
    /// Set up, build the release binary, and run it with the given arguments (default: print
    /// spans of every process to the terminal).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run every check: fmt, clippy, unit tests, integration tests (real eBPF, real
    /// programs; needs root), and a short fuzz run of every parser.
    Test {
        /// Seconds per fuzz target (0 skips fuzzing).
        #[arg(long, default_value_t = 20)]
        fuzz_seconds: u64,
    },
    /// Measure the agent's overhead against baselines run side by side: nginx under wrk (HTTP
    /// and HTTPS), a Go HTTPS server, a Flask service (against the OpenTelemetry Python SDK),
    /// 10,000 open connections and 20,000 requests/s (paced), and the kernel programs' cost.
    /// Writes target/bench/report.md. About 6 minutes with the defaults. Needs root.
    Bench {
        /// Alternating baseline/agent rounds.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds of load per round.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Only these scenarios (comma-separated: nginx, https, flask, paced, profile).
        #[arg(long)]
        only: Option<String>,
    },
    /// Load every kernel program in every configuration and print the verifier's budget
    /// (stack bytes, processed instructions); fail when one is rejected or over its margin, or
    /// when the kernel object differs from `ebpf/object.sha256`. Needs root.
    Verifier {
        /// Record the kernel object's hash in `ebpf/object.sha256` and the table in docs/kernels.md
        /// (after a change to the kernel programs or the pinned toolchain).
        #[arg(long)]
        record: bool,
    },
    /// What socktrace does under stress, measured with the real agent on real programs: a long
    /// collector outage, ring-buffer overload (latency against untraced), minutes of connection
    /// and process churn, SIGKILL and restart, and every parser fuzzed for a number of runs.
    /// Writes target/soak/report.md (with `--record`, also the README's reliability table).
    /// About 50 minutes with the defaults on a 2-core machine (fuzzing is most of it); not part of `test`. Needs root.
    Soak {
        /// libFuzzer runs per parser (0 skips fuzzing).
        #[arg(long, default_value_t = 10_000_000)]
        fuzz_runs: u64,
        /// Write the report into the README's reliability table.
        #[arg(long)]
        record: bool,
        /// Passed to the soak runner (`--outage-seconds`, `--churn-seconds`, `--kills`,
        /// `--only outage,overload,churn,kill`, ...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Boot the built agent under qemu on each supported kernel (Debian's 6.1 and 6.12 kernel
    /// packages and this machine's), load every program, run a smoke test (curl against a
    /// python http.server) and check its spans; print one table and write
    /// target/kernels/report.md. Slow (qemu without hardware virtualisation): not part of `test`.
    Kernels,
    /// Fuzz the parsers (cargo-fuzz with libFuzzer) for the given time per target.
    Fuzz {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target (default: all).
        target: Option<String>,
    },
}

/// Real peers the integration tests drive.
const APT_TEST: &[&str] = &[
    "curl",
    "iproute2",
    "bpftool",
    "util-linux",
    "postgresql",
    "postgresql-client",
    "redis-server",
    "redis-tools",
    "mariadb-server",
    "mariadb-client",
    // HTTPS server for the TLS tests (OpenSSL through the shared libssl).
    "nginx",
    // Go 1.19 and grpc-go: the tests build Go peers (crypto/tls, gRPC over TLS) from
    // tests/peers/go.
    "golang-go",
    "golang-google-grpc-dev",
    // lib/pq: the Go service of the goroutine-linking test queries PostgreSQL through
    // database/sql.
    "golang-github-lib-pq-dev",
    // The JDK (javac, java): the thread-pool linking test runs a Java service from its source.
    "openjdk-17-jdk-headless",
    // A real headless browser for the viewer's test (`tests/tests/ui.rs`).
    "chromium",
];
/// Load generator, server, certificate maker and kernel statistics reader for `bench`, and Go
/// for its Go server (built from `tests/peers/go`; its Python peers come from the tests'
/// virtualenv).
const APT_BENCH: &[&str] = &["nginx", "wrk", "openssl", "bpftool", "golang-go"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: $ {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn output_ok(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn apt_missing(packages: &[&str]) -> Vec<String> {
    packages
        .iter()
        .filter(|p| toolchain::debian_version(p).is_none())
        .map(|p| (*p).to_owned())
        .collect()
}

fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    let missing = apt_missing(packages);
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn cargo_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin").join(name)
}

fn pinned(root: &Path) -> anyhow::Result<toolchain::Pinned> {
    toolchain::Pinned::load(&root.join("ebpf/toolchain.toml")).map_err(anyhow::Error::msg)
}

/// Installs exactly the toolchain of `ebpf/toolchain.toml`; does nothing where it is there.
fn setup(root: &Path) -> anyhow::Result<()> {
    let pin = pinned(root)?;
    // Debian's LLVM at the pinned version: bpf-linker links it dynamically, so its point release
    // is part of the code generator.
    let llvm = [
        format!("libllvm{}", pin.llvm),
        format!("llvm-{}", pin.llvm),
        format!("llvm-{}-dev", pin.llvm),
        format!("llvm-{}-tools", pin.llvm),
        format!("llvm-{}-runtime", pin.llvm),
        format!("llvm-{}-linker-tools", pin.llvm),
        format!("libpolly-{}-dev", pin.llvm),
    ];
    let wrong: Vec<&String> = llvm
        .iter()
        .filter(|p| toolchain::debian_version(p).as_deref() != Some(pin.llvm_debian.as_str()))
        .collect();
    if !wrong.is_empty() {
        eprintln!("xtask: installing LLVM {} ({})", pin.llvm, pin.llvm_debian);
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        let status = Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "--allow-downgrades",
            ])
            .args(llvm.iter().map(|p| format!("{p}={}", pin.llvm_debian)))
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?;
        if !status.success() {
            bail!(
                "could not install Debian's LLVM {} at the pinned version {} (ebpf/toolchain.toml): the package archive may no longer carry it. Pin the version it has, rebuild, and record the new object with `cargo xtask verifier --record`.",
                pin.llvm,
                pin.llvm_debian
            );
        }
    }
    apt_install(&["libzstd-dev"])?;

    let have_nightly = pin.nightly_installed();
    let components = output_ok(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        &pin.nightly,
    ]))
    .unwrap_or_default();
    if !have_nightly || !components.lines().any(|l| l.starts_with("rust-src")) {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            &pin.nightly,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))
        .with_context(|| {
            format!(
                "installing the pinned Rust toolchain {} (ebpf/toolchain.toml)",
                pin.nightly
            )
        })?;
    }

    let linker = cargo_bin("bpf-linker");
    if toolchain::linker_version(&linker).as_deref() != Some(pin.bpf_linker.as_str()) {
        // Built against Debian's LLVM: the crate's default feature wants a newer one.
        let path = format!(
            "/usr/lib/llvm-{}/bin:{}",
            pin.llvm,
            std::env::var("PATH").unwrap_or_default()
        );
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--force",
                "--version",
                &pin.bpf_linker,
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{}", pin.llvm))
            .env("PATH", path))?;
    }
    Ok(())
}

/// Replaces what `file` holds between `<!-- NAME -->` and `<!-- /NAME -->`.
fn replace_marked(root: &Path, file: &str, name: &str, content: &str) -> anyhow::Result<()> {
    let doc = root.join(file);
    let text = std::fs::read_to_string(&doc)?;
    let (begin, end) = (format!("<!-- {name} -->"), format!("<!-- /{name} -->"));
    let (Some(a), Some(b)) = (text.find(&begin), text.find(&end)) else {
        bail!("{file} has no {begin} ... {end} section");
    };
    let new = format!("{}{begin}\n{content}{}", &text[..a], &text[b..]);
    std::fs::write(&doc, new)?;
    Ok(())
}

/// Builds the verifier budget binary (`tests/src/bin/verifier.rs`) and returns its path.
/// Builds a runner of the tests crate (`tests/src/bin/NAME.rs`), which shares the integration
/// tests' harness: the agent, real peers, the OTLP receiver.
fn build_runner(root: &Path, name: &str) -> anyhow::Result<PathBuf> {
    run(cargo(root).args(["build", "--release", "-p", "socktrace-tests", "--bin", name]))?;
    Ok(root.join("target/release").join(name))
}

/// Runs the verifier budget (`tests/src/bin/verifier.rs`); with `record`, stores the object
/// hash and writes the table into docs/kernels.md.
fn verifier(root: &Path, record: bool) -> anyhow::Result<()> {
    let bin = build_runner(root, "verifier")?;
    let table = root.join("target/verifier.md");
    let mut cmd = Command::new(bin);
    cmd.arg("--markdown")
        .arg(&table)
        .arg("--object-hash")
        .arg(root.join("ebpf/object.sha256"));
    if record {
        cmd.arg("--record");
    }
    run(&mut cmd)?;
    if record {
        replace_marked(
            root,
            "docs/kernels.md",
            "verifier-table",
            &std::fs::read_to_string(&table)?,
        )?;
        eprintln!("xtask: recorded the object hash and the table in docs/kernels.md");
    }
    Ok(())
}

/// A virtualenv under `target/pyenv` holding the Python packages of `tests/peers/requirements.txt`
/// (real gRPC peers, manifest validators); reinstalled only when the requirements change.
fn python_env(root: &Path) -> anyhow::Result<PathBuf> {
    let venv = root.join("target/pyenv");
    let python = venv.join("bin/python");
    let requirements = root.join("tests/peers/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let stamp = venv.join("installed-requirements.txt");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) && python.exists() {
        return Ok(python);
    }
    if !python.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements))?;
    std::fs::write(&stamp, wanted)?;
    Ok(python)
}

/// The semantic-conventions registry of `tests/peers/semconv-npm.txt` (an npm package), under
/// `target/semconv`, for `tests/tests/semconv.rs`; reinstalled only when the pin changes. Returns
/// the package's directory.
fn semconv_registry(root: &Path) -> anyhow::Result<PathBuf> {
    let pin_file = root.join("tests/peers/semconv-npm.txt");
    let pin = std::fs::read_to_string(&pin_file)
        .with_context(|| format!("reading {}", pin_file.display()))?;
    let package = pin
        .lines()
        .map(str::trim)
        .find(|l| !l.starts_with('#') && !l.is_empty())
        .with_context(|| format!("no package in {}", pin_file.display()))?;
    let name = package
        .rsplit_once('@')
        .map(|(n, _)| n)
        .filter(|n| !n.is_empty())
        .with_context(|| format!("{package:?} is not name@version"))?;
    let prefix = root.join("target/semconv");
    let dir = prefix.join("node_modules").join(name);
    let stamp = prefix.join("installed.txt");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(package) && dir.exists() {
        return Ok(dir);
    }
    if output_ok(Command::new("npm").arg("--version")).is_none() {
        apt_install(&["nodejs", "npm"])?;
    }
    std::fs::create_dir_all(&prefix)?;
    run(Command::new("npm")
        .args([
            "install",
            "--no-save",
            "--no-package-lock",
            "--no-audit",
            "--no-fund",
            "--ignore-scripts",
            "--prefix",
        ])
        .arg(&prefix)
        .arg(package))?;
    std::fs::write(&stamp, package)?;
    Ok(dir)
}

fn cargo(root: &Path) -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(root);
    c
}

fn build_release(root: &Path) -> anyhow::Result<PathBuf> {
    run(cargo(root).args(["build", "--release", "-p", "socktrace"]))?;
    Ok(root.join("target/release/socktrace"))
}

/// The fuzz targets (`cargo fuzz list`), installing cargo-fuzz where it is missing.
fn fuzz_targets(root: &Path) -> anyhow::Result<Vec<String>> {
    if output_ok(Command::new("cargo").args(["+nightly", "fuzz", "--version"])).is_none() {
        run(Command::new("cargo").args(["+nightly", "install", "cargo-fuzz", "--locked"]))?;
    }
    let list = output_ok(cargo(&root.join("fuzz")).args(["+nightly", "fuzz", "list"]))
        .context("listing fuzz targets")?;
    Ok(list
        .lines()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Runs every fuzz target for `runs` executions; a markdown table of what each did. A crash
/// fails the task (cargo-fuzz keeps the input under fuzz/artifacts).
fn fuzz_runs_table(root: &Path, runs: u64) -> anyhow::Result<String> {
    let mut table =
        "| parser (fuzz target) | executions | seconds | result |\n|---|---|---|---|\n".to_owned();
    for target in fuzz_targets(root)? {
        eprintln!("xtask: fuzzing {target} for {runs} runs");
        // Without AddressSanitizer: the parsers are safe Rust (no `unsafe`), so what a run
        // looks for is a panic (debug assertions and overflow checks are on), a timeout or
        // unbounded memory, and without the sanitizer ten million runs take minutes, not hours.
        let out = cargo(&root.join("fuzz"))
            .args([
                "+nightly",
                "fuzz",
                "run",
                "--sanitizer",
                "none",
                &target,
                "--",
            ])
            .arg(format!("-runs={runs}"))
            .env("AYA_BUILD_SKIP", "1")
            .stdout(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("fuzzing {target}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            bail!(
                "fuzz target {target} failed:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        // libFuzzer's last words: "Done 10000000 runs in 57 second(s)".
        let (done, secs) = log
            .lines()
            .find_map(|l| {
                let rest = l.strip_prefix("Done ")?;
                let (n, rest) = rest.split_once(" runs in ")?;
                Some((
                    n.parse::<u64>().ok()?,
                    rest.split_whitespace().next()?.to_owned(),
                ))
            })
            .with_context(|| format!("no run count in {target}'s output"))?;
        table.push_str(&format!(
            "| {target} | {done} | {secs} | no panic, no timeout, no out-of-memory |\n"
        ));
    }
    Ok(table)
}

fn fuzz(root: &Path, seconds: u64, only: Option<&str>) -> anyhow::Result<()> {
    let fuzz_dir = root.join("fuzz");
    for target in fuzz_targets(root)? {
        if only.is_some_and(|o| o != target) {
            continue;
        }
        run(cargo(&fuzz_dir)
            .args(["+nightly", "fuzz", "run", &target, "--"])
            .arg(format!("-max_total_time={seconds}"))
            .env("AYA_BUILD_SKIP", "1"))?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let root = root();
    match args.task {
        Task::Setup => setup(&root),
        Task::Verifier { record } => {
            setup(&root)?;
            verifier(&root, record)
        }
        Task::Run { args } => {
            setup(&root)?;
            let bin = build_release(&root)?;
            let status = Command::new(&bin)
                .args(&args)
                .status()
                .with_context(|| format!("starting {}", bin.display()))?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Task::Test { fuzz_seconds } => {
            setup(&root)?;
            apt_install(APT_TEST)?;
            let python = python_env(&root)?;
            let semconv = semconv_registry(&root)?;
            run(cargo(&root).args(["fmt", "--all", "--check"]))?;
            run(cargo(&root).args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))?;
            let bin = build_release(&root)?;
            // Every kernel program in every configuration within its verifier margin, and the
            // object the one recorded: before anything runs on it.
            verifier(&root, false)?;
            if fuzz_seconds > 0 {
                fuzz(&root, fuzz_seconds, None)?;
            }
            // Last, so that the test runner's summary closes the output.
            run(cargo(&root)
                .args(["test", "--workspace", "--release", "--", "--test-threads=1"])
                .env("SOCKTRACE_BIN", &bin)
                .env("SOCKTRACE_PYTHON", &python)
                .env("SOCKTRACE_SEMCONV", &semconv))?;
            Ok(())
        }
        Task::Bench {
            rounds,
            seconds,
            only,
        } => {
            setup(&root)?;
            apt_install(APT_BENCH)?;
            // The Flask service and the OpenTelemetry Python SDK: the tests' virtualenv.
            let python = python_env(&root)?;
            let bin = build_release(&root)?;
            let mut cmd = Command::new(build_runner(&root, "bench")?);
            cmd.args([
                "--rounds",
                &rounds.to_string(),
                "--seconds",
                &seconds.to_string(),
            ]);
            if let Some(only) = only {
                cmd.args(["--only", &only]);
            }
            run(cmd
                .env("SOCKTRACE_BIN", &bin)
                .env("SOCKTRACE_PYTHON", &python))
        }
        Task::Soak {
            fuzz_runs,
            record,
            args,
        } => {
            setup(&root)?;
            apt_install(APT_TEST)?;
            apt_install(APT_BENCH)?;
            let python = python_env(&root)?;
            let bin = build_release(&root)?;
            let soak = build_runner(&root, "soak")?;
            let mut cmd = Command::new(soak);
            if fuzz_runs > 0 {
                let table = root.join("target/soak/fuzz.md");
                std::fs::create_dir_all(root.join("target/soak"))?;
                std::fs::write(&table, fuzz_runs_table(&root, fuzz_runs)?)?;
                cmd.arg("--fuzz-table").arg(table);
            }
            run(cmd
                .args(&args)
                .env("SOCKTRACE_BIN", &bin)
                .env("SOCKTRACE_PYTHON", &python))?;
            if record {
                let report = std::fs::read_to_string(root.join("target/soak/report.md"))?;
                // The README takes the tables, not the report's title.
                let body = report.split_once("\n\n").map_or(&*report, |(_, rest)| rest);
                replace_marked(
                    &root,
                    "README.md",
                    "reliability-table",
                    &format!("{}\n", body.trim_end()),
                )?;
                eprintln!("xtask: recorded the soak report in the README");
            }
            Ok(())
        }
        Task::Kernels => {
            setup(&root)?;
            let bin = build_release(&root)?;
            kernels::kernels(&root, &bin, |table| {
                replace_marked(&root, "docs/kernels.md", "kernel-table", table)
            })
        }
        Task::Fuzz { seconds, target } => fuzz(&root, seconds, target.as_deref()),
    }
}
