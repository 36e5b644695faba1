//! Build and development tasks. The README's two commands are `cargo xtask run` and
//! `cargo xtask test`; both start with `setup`, which installs what a fresh machine lacks and
//! does nothing on a machine that has it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

mod bench;

#[derive(Parser)]
#[command(about = "socktrace build and development tasks")]
struct Args {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain (LLVM 22, rust-src for nightly, bpf-linker) if missing.
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
    /// Measure the agent's overhead on nginx under wrk, against a baseline run side by side.
    /// Writes target/bench/report.md. Needs root.
    Bench {
        /// Alternating baseline/agent rounds.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds of load per round.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Fuzz the parsers (cargo-fuzz with libFuzzer) for the given time per target.
    Fuzz {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target (default: all).
        target: Option<String>,
    },
}

const APT_BUILD: &[&str] = &["llvm-22-dev", "libpolly-22-dev", "libzstd-dev"];
/// Real peers the integration tests drive.
const APT_TEST: &[&str] = &[
    "curl",
    "iproute2",
    "bpftool",
    "util-linux",
    "postgresql",
    "postgresql-client",
];
/// Load generator and server for `bench`.
const APT_BENCH: &[&str] = &["nginx", "wrk"];
const BPF_LINKER_VERSION: &str = "0.13.0";

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
        .filter(|p| {
            output_ok(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
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

fn setup() -> anyhow::Result<()> {
    apt_install(APT_BUILD)?;

    let nightly = output_ok(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !nightly.lines().any(|l| l.starts_with("nightly")) {
        bail!(
            "no nightly Rust toolchain: the eBPF programs are built with `-Z build-std=core`, which needs nightly (`rustup toolchain install nightly`)"
        );
    }
    let components = output_ok(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .unwrap_or_default();
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    let linker = cargo_bin("bpf-linker");
    let have = output_ok(Command::new(&linker).arg("--version")).unwrap_or_default();
    if !have.contains(BPF_LINKER_VERSION) {
        // Built against Debian's LLVM 22: the crate's default feature wants LLVM 23.
        let path = format!(
            "/usr/lib/llvm-22/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        run(Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("PATH", path))?;
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

fn cargo(root: &Path) -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(root);
    c
}

fn build_release(root: &Path) -> anyhow::Result<PathBuf> {
    run(cargo(root).args(["build", "--release", "-p", "socktrace"]))?;
    Ok(root.join("target/release/socktrace"))
}

fn fuzz(root: &Path, seconds: u64, only: Option<&str>) -> anyhow::Result<()> {
    if output_ok(Command::new("cargo").args(["+nightly", "fuzz", "--version"])).is_none() {
        run(Command::new("cargo").args(["+nightly", "install", "cargo-fuzz", "--locked"]))?;
    }
    let fuzz_dir = root.join("fuzz");
    let list = output_ok(cargo(&fuzz_dir).args(["+nightly", "fuzz", "list"]))
        .context("listing fuzz targets")?;
    for target in list.lines().map(str::trim).filter(|t| !t.is_empty()) {
        if only.is_some_and(|o| o != target) {
            continue;
        }
        run(cargo(&fuzz_dir)
            .args(["+nightly", "fuzz", "run", target, "--"])
            .arg(format!("-max_total_time={seconds}"))
            .env("AYA_BUILD_SKIP", "1"))?;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let root = root();
    match args.task {
        Task::Setup => setup(),
        Task::Run { args } => {
            setup()?;
            let bin = build_release(&root)?;
            let status = Command::new(&bin)
                .args(&args)
                .status()
                .with_context(|| format!("starting {}", bin.display()))?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Task::Test { fuzz_seconds } => {
            setup()?;
            apt_install(APT_TEST)?;
            let python = python_env(&root)?;
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
            if fuzz_seconds > 0 {
                fuzz(&root, fuzz_seconds, None)?;
            }
            // Last, so that the test runner's summary closes the output.
            run(cargo(&root)
                .args(["test", "--workspace", "--release", "--", "--test-threads=1"])
                .env("SOCKTRACE_BIN", &bin)
                .env("SOCKTRACE_PYTHON", &python))?;
            Ok(())
        }
        Task::Bench { rounds, seconds } => {
            setup()?;
            apt_install(APT_BENCH)?;
            let bin = build_release(&root)?;
            bench::bench(&root, &bin, rounds.max(1), seconds.max(1))
        }
        Task::Fuzz { seconds, target } => fuzz(&root, seconds, target.as_deref()),
    }
}
