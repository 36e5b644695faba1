//! Builds the kernel programs (`ebpf/socktrace-ebpf`) for the BPF target with the pinned
//! toolchain (`ebpf/toolchain.toml`: a dated nightly and bpf-linker built against one LLVM), so
//! that the agent binary embeds them. `AYA_BUILD_SKIP=1` skips this (for `cargo check`/`clippy`/
//! unit tests of user space): an empty object is embedded instead and the agent refuses to start
//! with a clear message.
//!
//! Not `aya_build::build_ebpf`: it sets the compiler flags itself, and the object must not
//! depend on where the checkout is. Source paths are remapped, so a fresh clone anywhere gets a
//! byte-identical object (`cargo xtask verifier` checks it against `ebpf/object.sha256`).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

#[path = "../ebpf/toolchain.rs"]
mod toolchain;

const PACKAGE: &str = "socktrace-ebpf";
const BIN: &str = "socktrace";

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Differences between the installed toolchain and the pinned one.
fn check_toolchain(pinned: &toolchain::Pinned) -> Vec<String> {
    let mut wrong = Vec::new();
    if !pinned.nightly_installed() {
        wrong.push(format!(
            "Rust toolchain {} is not installed",
            pinned.nightly
        ));
    }
    match toolchain::linker_version(Path::new("bpf-linker")) {
        Some(v) if v == pinned.bpf_linker => {}
        Some(v) => wrong.push(format!(
            "bpf-linker {v} is installed, not {}",
            pinned.bpf_linker
        )),
        None => wrong.push("bpf-linker is not installed".to_owned()),
    }
    let package = format!("libllvm{}", pinned.llvm);
    match toolchain::debian_version(&package) {
        Some(v) if v == pinned.llvm_debian => {}
        Some(v) => wrong.push(format!(
            "{package} {v} is installed, not {}",
            pinned.llvm_debian
        )),
        None => wrong.push(format!("{package} is not installed (Debian)")),
    }
    wrong
}

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir
        .parent()
        .context("agent/ lives in the workspace")?
        .to_path_buf();
    let ebpf = root.join("ebpf");
    for watched in ["socktrace-ebpf", "socktrace-common", "toolchain.toml"] {
        println!("cargo:rerun-if-changed={}", ebpf.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    println!("cargo:rerun-if-env-changed=SOCKTRACE_UNPINNED_TOOLCHAIN");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let object = out_dir.join(BIN);
    let flag =
        |name: &str| std::env::var(name).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if flag("AYA_BUILD_SKIP") {
        if !object.exists() {
            std::fs::write(&object, [])?;
        }
        return Ok(());
    }

    let pinned =
        toolchain::Pinned::load(&ebpf.join("toolchain.toml")).map_err(anyhow::Error::msg)?;
    let wrong = check_toolchain(&pinned);
    if !wrong.is_empty() {
        let what = wrong.join("; ");
        if !flag("SOCKTRACE_UNPINNED_TOOLCHAIN") {
            bail!(
                "the kernel programs are built with a pinned toolchain (ebpf/toolchain.toml), and {what}. Run `cargo xtask setup`, which installs exactly it, or set SOCKTRACE_UNPINNED_TOOLCHAIN=1 to build with what is installed (the object will differ from the one CI tested)."
            );
        }
        println!(
            "cargo:warning=building the kernel programs with an unpinned toolchain: {what}; the object will differ from the one CI tested"
        );
    }

    let sysroot = output(Command::new("rustup").args([
        "run",
        &pinned.nightly,
        "rustc",
        "--print",
        "sysroot",
    ]))
    .context("asking the pinned nightly for its sysroot")?;
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH")?;
    let target = match std::env::var("CARGO_CFG_TARGET_ENDIAN")?.as_str() {
        "big" => "bpfeb-unknown-none",
        _ => "bpfel-unknown-none",
    };
    let remap = |from: &Path, to: &str| format!("--remap-path-prefix={}={to}", from.display());
    let flags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".to_owned(),
        // BTF, which the kernel needs for `bpf_loop` callbacks and uses in its messages.
        "-Clink-arg=--btf".to_owned(),
        remap(&root, "/socktrace"),
        remap(
            &Path::new(&sysroot).join("lib/rustlib/src/rust"),
            "/rustc-src",
        ),
        remap(&cargo_home.join("registry/src"), "/cargo-registry"),
    ];
    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = Command::new("rustup");
    cmd.current_dir(&root)
        .args([
            "run",
            &pinned.nightly,
            "cargo",
            "build",
            "--package",
            PACKAGE,
        ])
        .args(["--bins", "--release", "--target", target])
        .args(["-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"));
    // The outer build's compiler and flags are not the kernel build's.
    for key in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(key);
    }
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        for line in String::from_utf8_lossy(&out.stderr).lines() {
            println!("cargo:warning={line}");
        }
        bail!("building the kernel programs failed: {cmd:?}");
    }
    let built = target_dir.join(target).join("release").join(BIN);
    std::fs::copy(&built, &object)
        .with_context(|| format!("copying {} to {}", built.display(), object.display()))?;
    Ok(())
}
