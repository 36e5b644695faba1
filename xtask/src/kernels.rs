//! `cargo xtask kernels`: boot the release agent on other kernels under qemu and smoke-test it.
//!
//! Approach, per kernel:
//! - Kernel images come from Debian packages, fetched with `apt-get download` and unpacked with
//!   `dpkg-deb -x` into `target/kernels/<version>/` (never installed on the host: that would run
//!   initramfs and boot-loader hooks). The matrix is the newest bookworm `6.1.0-N-amd64`, the
//!   newest `6.12.x` that apt offers (bookworm-security or bookworm-backports), and this
//!   machine's own kernel when `/boot/vmlinuz-$(uname -r)` is readable.
//! - A small initramfs (cpio newc, written here) holds a static busybox, the kernel's own
//!   modules that virtio-9p needs and are not built in (their dependency closure, read from each
//!   module's `.modinfo` `depends=`, decompressed and listed in load order for `insmod`), the
//!   guest's `/init` (`xtask/kernels/init.sh`) and the smoke test (`xtask/kernels/smoke.sh`).
//! - qemu (TCG: no hardware virtualisation here) shares the host's root file system read-only
//!   over virtio-9p. `/init` mounts it at `/host` with fresh proc/sys/dev/cgroup2 and tmpfs on
//!   `/tmp` and `/run`, and runs the smoke test chrooted into it, so the guest uses the host's
//!   own python3, curl and agent binary on the guest kernel.
//! - The smoke test starts `python3 -m http.server` on loopback, then the agent with its default
//!   configuration (spans to stdout, traceparent injection on), waits for its start-up summary,
//!   makes two requests with curl, stops the agent with SIGINT and counts the spans: exactly two
//!   SERVER `GET /` and two curl CLIENT spans with status 200 (and, informational, how many
//!   SERVER spans are children of curl's: injection at work). Then the guest runs the
//!   `verifier` binary of `cargo xtask verifier`: every program's budget on that kernel (below
//!   the minimum kernel, whether the programs themselves would load). It prints the agent's stderr and one `SMOKE key=value ...`
//!   line on the serial console and powers the guest off.
//! - Here the serial console is captured to `target/kernels/<version>/serial.log` with a
//!   deadline per kernel, the `SMOKE` line and the agent's `degraded:`/`warning:` lines are
//!   parsed, and one table is printed and written to `target/kernels/report.md`. Any failed
//!   kernel makes the task fail, after the whole table is out.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{apt_missing, output_ok, run};

/// The guest's PID 1 (busybox sh).
const INIT: &str = include_str!("../kernels/init.sh");
/// The smoke test, run chrooted into the host's root file system.
const SMOKE: &str = include_str!("../kernels/smoke.sh");
/// Host packages: qemu, a static busybox for the initramfs, xz for compressed modules.
const APT_KERNELS: &[&str] = &["qemu-system-x86", "busybox-static", "xz-utils"];
/// Modules the guest needs for the 9p root; each is loaded with its dependencies unless built in.
const GUEST_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];
/// Wall-clock limit for one guest, boot to power-off (TCG is slow).
const GUEST_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Seconds the guest waits for the agent's start-up summary.
const LOAD_TIMEOUT_S: u32 = 600;

/// One kernel of the matrix, ready to boot.
struct Kernel {
    /// `uname -r` of the kernel.
    version: String,
    /// Where it came from (package name or "this machine").
    origin: String,
    vmlinuz: PathBuf,
    /// `lib/modules/<version>` of the kernel, if there is one.
    modules: Option<PathBuf>,
}

/// One row of the report.
struct Row {
    kernel: String,
    loaded: String,
    degraded: String,
    load_time: String,
    smoke: String,
    passed: bool,
    /// Not tested for a reason that is no failure (this machine's kernel image is not readable).
    skipped: bool,
}

/// Runs the matrix; `publish` receives the table (docs/kernels.md keeps the last one).
pub fn kernels(
    root: &Path,
    bin: &Path,
    publish: impl FnOnce(&str) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let out = root.join("target/kernels");
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let bin = fs::canonicalize(bin).with_context(|| format!("resolving {}", bin.display()))?;
    let mut apt = Apt::default();
    apt.install(APT_KERNELS)?;
    let verifier = build_verifier(root);

    // The matrix in report order; `Err` rows are kernels that cannot be booted, and why.
    let mut plan: Vec<Result<Kernel, Row>> = Vec::new();
    for (label, pattern) in [
        ("Debian 6.1", r"^linux-image-6\.1\.0-[0-9]+-amd64$"),
        (
            "Debian 6.12",
            r"^linux-image-6\.12\.[0-9]+\+(deb12|bpo)-amd64$",
        ),
    ] {
        plan.push(match apt.newest(pattern)? {
            Some(package) => fetch_kernel(&mut apt, &out, &package)
                .map_err(|e| Row::missing(label, &format!("FAIL: {package}: {e:#}"), false)),
            None => Err(Row::missing(
                label,
                &format!("FAIL: no package matching {pattern} in the apt sources"),
                false,
            )),
        });
    }
    let host = output_ok(Command::new("uname").arg("-r"))
        .map(|s| s.trim().to_owned())
        .context("uname -r")?;
    let host_image = PathBuf::from(format!("/boot/vmlinuz-{host}"));
    plan.push(if File::open(&host_image).is_ok() {
        let modules = PathBuf::from(format!("/lib/modules/{host}"));
        Ok(Kernel {
            version: host.clone(),
            origin: "this machine".to_owned(),
            vmlinuz: host_image,
            modules: modules.is_dir().then_some(modules),
        })
    } else {
        // Not a failure: the verifier task covers the host kernel on the host itself.
        Err(Row::missing(
            &format!("{host} (this machine)"),
            &format!(
                "not booted: {} is not readable; host kernel: see `cargo xtask verifier`",
                host_image.display()
            ),
            true,
        ))
    });

    let mut rows = Vec::new();
    let mut origins = Vec::new();
    for entry in plan {
        let kernel = match entry {
            Ok(kernel) => kernel,
            Err(row) => {
                rows.push(row);
                continue;
            }
        };
        eprintln!(
            "xtask: booting {} ({}) under qemu (TCG: minutes)",
            kernel.version, kernel.origin
        );
        let row = boot(&out, &kernel, &bin, verifier.as_deref())
            .unwrap_or_else(|e| Row::missing(&kernel.version, &format!("FAIL: {e:#}"), false));
        eprintln!("xtask: {}: {}", kernel.version, row.smoke);
        origins.push(format!("- `{}`: {}", kernel.version, kernel.origin));
        rows.push(row);
    }

    let table = render(&rows);
    println!("{table}");
    publish(&table)?;
    let report = out.join("report.md");
    fs::write(
        &report,
        format!(
            "# socktrace kernel matrix\n\nSmoke test of `{}` under qemu (`cargo xtask kernels`).\n\n\
             {table}\nKernels:\n{}\n",
            bin.display(),
            origins.join("\n")
        ),
    )
    .with_context(|| format!("writing {}", report.display()))?;
    eprintln!(
        "xtask: wrote {} ({:.0} s)",
        report.display(),
        started.elapsed().as_secs_f64()
    );
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| !r.passed && !r.skipped)
        .map(|r| r.kernel.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("smoke test failed on: {}", failed.join(", "));
    }
    Ok(())
}

/// apt, with at most one `apt-get update` per run.
#[derive(Default)]
struct Apt {
    updated: bool,
}

impl Apt {
    fn update(&mut self) -> anyhow::Result<()> {
        if !self.updated {
            run(Command::new("apt-get").args(["update", "-qq"]))?;
            self.updated = true;
        }
        Ok(())
    }

    /// Installs the packages that `dpkg-query` does not report installed.
    fn install(&mut self, packages: &[&str]) -> anyhow::Result<()> {
        let missing = apt_missing(packages);
        if missing.is_empty() {
            return Ok(());
        }
        self.update()?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    }

    /// The package matching `pattern` (by name) with the highest version in its name, updating
    /// the package lists once if none matches.
    fn newest(&mut self, pattern: &str) -> anyhow::Result<Option<String>> {
        loop {
            let found =
                output_ok(Command::new("apt-cache").args(["search", "--names-only", pattern]))
                    .context("apt-cache search")?;
            let newest = found
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .max_by_key(|name| version_key(name))
                .map(str::to_owned);
            if newest.is_some() || self.updated {
                return Ok(newest);
            }
            self.update()?;
        }
    }
}

/// The numbers in a package name, in order, for comparing versions (`6.1.0-57` > `6.1.0-9`).
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Downloads and unpacks a kernel package into `out/<version>/`, once.
fn fetch_kernel(apt: &mut Apt, out: &Path, package: &str) -> anyhow::Result<Kernel> {
    let version = package
        .strip_prefix("linux-image-")
        .context("kernel package name")?
        .to_owned();
    let dir = out.join(&version);
    let vmlinuz = dir.join(format!("boot/vmlinuz-{version}"));
    if !vmlinuz.exists() {
        let debs = out.join("debs");
        fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
        let deb = find_deb(&debs, package)?;
        let deb = match deb {
            Some(deb) => deb,
            None => {
                let download = || {
                    run(Command::new("apt-get")
                        .args(["download", "-qq", "-o", "APT::Sandbox::User=root", package])
                        .current_dir(&debs))
                };
                if download().is_err() {
                    // Stale package lists name a file the mirror no longer has.
                    apt.update()?;
                    download()?;
                }
                find_deb(&debs, package)?
                    .with_context(|| format!("apt-get download {package} left no .deb"))?
            }
        };
        let tmp = out.join(format!("{version}.partial"));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
        }
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        fs::rename(&tmp, &dir).with_context(|| format!("renaming to {}", dir.display()))?;
    }
    if !vmlinuz.exists() {
        bail!("{package} has no {}", vmlinuz.display());
    }
    let modules = dir.join(format!("lib/modules/{version}"));
    Ok(Kernel {
        version,
        origin: package.to_owned(),
        vmlinuz,
        modules: modules.is_dir().then_some(modules),
    })
}

fn find_deb(dir: &Path, package: &str) -> anyhow::Result<Option<PathBuf>> {
    let prefix = format!("{package}_");
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// The `verifier` binary of `cargo xtask verifier`, which each guest runs after the agent for
/// every program's budget on its kernel. Optional: without it the report has the agent's
/// results only.
fn build_verifier(root: &Path) -> Option<PathBuf> {
    match crate::build_runner(root, "verifier") {
        Ok(bin) => Some(bin),
        Err(e) => {
            eprintln!("xtask: warning: no verifier diagnosis in the guests: {e:#}");
            None
        }
    }
}

/// Boots one kernel with the smoke test and reads its result.
fn boot(out: &Path, kernel: &Kernel, bin: &Path, verifier: Option<&Path>) -> anyhow::Result<Row> {
    let dir = out.join(&kernel.version);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let initrd = dir.join("initramfs.cpio");
    write_initramfs(&initrd, kernel, bin, verifier)?;
    let serial = dir.join("serial.log");
    let qemu_err = dir.join("qemu.stderr");
    let log = File::create(&serial).with_context(|| format!("creating {}", serial.display()))?;
    let err =
        File::create(&qemu_err).with_context(|| format!("creating {}", qemu_err.display()))?;
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-cpu", "max", "-m", "2G", "-smp", "2"])
        .args(["-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet loglevel=3"])
        .args([
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err);
    eprintln!("xtask: $ {cmd:?} > {}", serial.display());
    let started = Instant::now();
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let mut timed_out = false;
    loop {
        if child.try_wait().context("waiting for qemu")?.is_some() {
            break;
        }
        if started.elapsed() > GUEST_TIMEOUT {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let text = fs::read(&serial).with_context(|| format!("reading {}", serial.display()))?;
    let text = String::from_utf8_lossy(&text).replace('\r', "");
    let mut row = parse(&kernel.version, &text);
    let table: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once("SMOKE-VERIFIER-TABLE: ").map(|(_, s)| s))
        .collect();
    if !table.is_empty() {
        let path = dir.join("verifier.md");
        fs::write(&path, table.join("\n") + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        // Relative to the workspace: the table also goes into docs/kernels.md.
        row.loaded.push_str(&format!(
            " (verifier table: target/kernels/{}/verifier.md)",
            kernel.version
        ));
    }
    if row.smoke.is_empty() {
        let why = if timed_out {
            format!("timed out after {} s", GUEST_TIMEOUT.as_secs())
        } else {
            "guest stopped without a result".to_owned()
        };
        let qemu = fs::read_to_string(&qemu_err).unwrap_or_default();
        eprintln!("xtask: {}: {why}; last serial lines:", kernel.version);
        for line in text
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            eprintln!("  | {line}");
        }
        for line in qemu.lines().take(20) {
            eprintln!("  qemu: {line}");
        }
        row.smoke = format!("FAIL: {why} (see {})", serial.display());
    } else {
        eprintln!(
            "xtask: {} booted and tested in {elapsed:.0} s; serial log {}",
            kernel.version,
            serial.display()
        );
    }
    Ok(row)
}

/// Reads the guest's `SMOKE` line and the agent's stderr from the serial log.
fn parse(version: &str, serial: &str) -> Row {
    let stderr: Vec<String> = serial
        .lines()
        .filter_map(|l| l.split_once("SMOKE-STDERR: ").map(|(_, s)| strip_ansi(s)))
        .collect();
    let degraded: Vec<String> = stderr
        .iter()
        .filter_map(|l| {
            l.strip_prefix("socktrace: degraded: ")
                .or_else(|| l.strip_prefix("socktrace: warning: "))
        })
        .map(str::to_owned)
        .collect();
    let fields: Option<BTreeMap<&str, &str>> = serial
        .lines()
        .find_map(|l| l.split_once("SMOKE kernel=").map(|(_, s)| s))
        .map(|rest| {
            let mut map: BTreeMap<&str, &str> = rest
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .collect();
            if let Some(kernel) = rest.split_whitespace().next() {
                map.insert("kernel", kernel);
            }
            map
        });
    let Some(fields) = fields else {
        return Row {
            kernel: version.to_owned(),
            loaded: "?".to_owned(),
            degraded: "?".to_owned(),
            load_time: "?".to_owned(),
            smoke: String::new(),
            passed: false,
            skipped: false,
        };
    };
    let get = |k: &str| fields.get(k).copied().unwrap_or("?");
    // What the verifier binary said about the programs themselves.
    let verifier: Vec<&str> = serial
        .lines()
        .filter_map(|l| l.split_once("SMOKE-VERIFIER: ").map(|(_, s)| s))
        .collect();
    let verifier_note = match get("verifier") {
        "pass" | "fail" => format!("verifier: {}", verifier_summary(&verifier)),
        _ => "verifier: not run".to_owned(),
    };
    // A kernel below the supported minimum: the agent must refuse it, naming what is missing.
    let unsupported = get("loaded") != "yes"
        && stderr
            .iter()
            .any(|l| l.contains("the kernel has no tracepoint sock:sock_"));
    let loaded = if get("loaded") == "yes" {
        format!("yes; {verifier_note}")
    } else {
        // The agent's error names the missing tracepoint or the program the verifier rejected.
        let why = stderr
            .iter()
            .find(|l| l.contains("rror") || l.contains("reject") || l.contains("has no"))
            .or(stderr.first())
            .map_or_else(
                || match fields.get("reason") {
                    Some(reason) => format!("the guest failed before the agent: {reason}"),
                    None => "the agent printed nothing".to_owned(),
                },
                String::clone,
            );
        let why = why.as_str();
        let why = why.strip_prefix("socktrace: ").unwrap_or(why);
        let agent = if why.contains("reject") || why.contains("verif") {
            format!("rejected: {}", clip(why, 200))
        } else {
            format!("no: {}", clip(why, 200))
        };
        format!("{agent}; {verifier_note}")
    };
    // Below the minimum kernel, what must hold is a clear refusal; what the verifier says there
    // is information (which programs would load if the missing tracepoints were made up for).
    let passed = get("result") == "pass" || unsupported;
    let smoke = if unsupported {
        "unsupported, as expected: the agent refuses at start and names the missing tracepoint"
            .to_owned()
    } else {
        format!(
            "{} ({} SERVER, {} CLIENT spans of 2 requests; {} SERVER spans children of curl's)",
            if passed { "pass" } else { "FAIL" },
            get("server_spans"),
            get("client_spans"),
            get("linked")
        )
    };
    let passed = passed && (unsupported || get("verifier") != "fail");
    Row {
        kernel: get("kernel").to_owned(),
        loaded,
        degraded: match (degraded.is_empty(), get("loaded")) {
            (false, _) => degraded.join("; "),
            (true, "yes") => "none".to_owned(),
            // The agent stopped before it could say what is off.
            (true, _) => "-".to_owned(),
        },
        load_time: match get("load_s") {
            "-" | "?" => "-".to_owned(),
            s => format!("{s} s"),
        },
        smoke,
        passed,
        skipped: false,
    }
}

/// One sentence from the `verifier` binary's output: everything within budget, or which
/// programs were rejected (or over budget) in how many configurations, and the verifier's
/// reasons (the log line before its statistics, and the instruction it stopped at).
fn verifier_summary(lines: &[&str]) -> String {
    if let Some(ok) = lines.iter().find(|l| l.contains("within budget")) {
        return ok.trim().trim_start_matches("verifier: ").to_owned();
    }
    let mut programs = BTreeSet::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = 0;
    for line in lines.iter().filter(|l| l.starts_with("  ")) {
        let line = line.trim();
        let Some((program, _)) = line.split_once(" in ") else {
            continue;
        };
        failures += 1;
        programs.insert(program.to_owned());
        let reason = match line.split_once(": rejected: ") {
            Some((_, log)) => {
                let log: Vec<&str> = log.split(" | ").map(str::trim).collect();
                match log.iter().position(|s| s.starts_with("verification time")) {
                    Some(i) if i >= 2 => {
                        // "642: (85) call bpf_ringbuf_output#130" -> "call bpf_ringbuf_output#130"
                        let at = log[i - 2].split_once(") ").map_or(log[i - 2], |(_, s)| s);
                        format!("{} (at `{at}`)", log[i - 1])
                    }
                    _ => clip(log.last().copied().unwrap_or(""), 120),
                }
            }
            None => "over budget".to_owned(),
        };
        *reasons.entry(reason).or_default() += 1;
    }
    if failures == 0 {
        return "failed without naming a program (see the serial log)".to_owned();
    }
    let reasons: Vec<String> = reasons
        .into_iter()
        .map(|(reason, n)| format!("{n}x {reason}"))
        .collect();
    format!(
        "{failures} loads (program x configuration) rejected or over budget, {} programs: {}; {}",
        programs.len(),
        programs.into_iter().collect::<Vec<_>>().join(", "),
        reasons.join("; ")
    )
}

/// A log line without its terminal colour codes (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

impl Row {
    /// A kernel that was not tested, and why.
    fn missing(kernel: &str, why: &str, skipped: bool) -> Row {
        Row {
            kernel: kernel.to_owned(),
            loaded: "-".to_owned(),
            degraded: "-".to_owned(),
            load_time: "-".to_owned(),
            smoke: why.to_owned(),
            passed: false,
            skipped,
        }
    }
}

fn render(rows: &[Row]) -> String {
    let cell = |s: &str| s.replace('|', "\\|");
    let mut table = String::from(
        "| kernel | programs loaded | degraded features | load time | smoke result |\n\
         |---|---|---|---|---|\n",
    );
    for r in rows {
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            cell(&r.kernel),
            cell(&r.loaded),
            cell(&r.degraded),
            cell(&r.load_time),
            cell(&r.smoke)
        ));
    }
    table
}

/// Writes the guest's initramfs: busybox, `/init`, the smoke test and its settings, and the
/// modules the 9p root needs in load order (`/modules.order`).
fn write_initramfs(
    path: &Path,
    kernel: &Kernel,
    bin: &Path,
    verifier: Option<&Path>,
) -> anyhow::Result<()> {
    let mut cpio = Cpio::default();
    for dir in ["bin", "dev", "proc", "sys", "host", "lib", "lib/modules"] {
        cpio.dir(dir);
    }
    // The kernel opens /dev/console for init before anything is mounted.
    cpio.node("dev/console", 0o020600, 5, 1);
    let busybox = fs::read("/bin/busybox").context("reading /bin/busybox (busybox-static)")?;
    cpio.file("bin/busybox", 0o755, &busybox);
    cpio.file("init", 0o755, INIT.as_bytes());
    cpio.file("smoke.sh", 0o755, SMOKE.as_bytes());
    let env = format!(
        "SOCKTRACE_BIN='{}'\nSOCKTRACE_LOAD_TIMEOUT={LOAD_TIMEOUT_S}\nSOCKTRACE_VERIFIER='{}'\n",
        bin.display(),
        verifier
            .map(Path::display)
            .map(|d| d.to_string())
            .unwrap_or_default()
    );
    cpio.file("smoke.env", 0o644, env.as_bytes());
    let mut order = String::new();
    for (name, bytes) in guest_modules(kernel)? {
        let file = format!("{name}.ko");
        cpio.file(&format!("lib/modules/{file}"), 0o644, &bytes);
        order.push_str(&file);
        order.push('\n');
    }
    cpio.file("modules.order", 0o644, order.as_bytes());
    let bytes = cpio.finish();
    fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// The modules of [`GUEST_MODULES`] that the kernel does not build in, with their dependencies,
/// dependencies first, each decompressed.
fn guest_modules(kernel: &Kernel) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let Some(dir) = &kernel.modules else {
        // No modules at all: everything must be built in, or the 9p mount fails visibly.
        return Ok(Vec::new());
    };
    let builtin_list = dir.join("modules.builtin");
    let builtin: BTreeSet<String> = fs::read_to_string(&builtin_list)
        .with_context(|| format!("reading {}", builtin_list.display()))?
        .lines()
        .filter_map(module_name)
        .collect();
    let mut files = BTreeMap::new();
    index_modules(&dir.join("kernel"), &mut files)?;
    let mut loaded = Vec::new();
    let mut seen = BTreeSet::new();
    for name in GUEST_MODULES {
        add_module(name, &builtin, &files, &mut seen, &mut loaded)?;
    }
    Ok(loaded)
}

fn add_module(
    name: &str,
    builtin: &BTreeSet<String>,
    files: &BTreeMap<String, PathBuf>,
    seen: &mut BTreeSet<String>,
    loaded: &mut Vec<(String, Vec<u8>)>,
) -> anyhow::Result<()> {
    let name = name.replace('-', "_");
    if builtin.contains(&name) || !seen.insert(name.clone()) {
        return Ok(());
    }
    let path = files
        .get(&name)
        .with_context(|| format!("module {name} is neither built in nor in lib/modules"))?;
    let bytes = read_module(path)?;
    for dep in modinfo_depends(&bytes) {
        add_module(&dep, builtin, files, seen, loaded)?;
    }
    loaded.push((name, bytes));
    Ok(())
}

/// `9pnet_virtio` from `kernel/net/9p/9pnet_virtio.ko.xz` (module names use `_` for `-`).
fn module_name(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let stem = file.split_once(".ko").map(|(s, _)| s)?;
    Some(stem.replace('-', "_"))
}

fn index_modules(dir: &Path, files: &mut BTreeMap<String, PathBuf>) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            index_modules(&path, files)?;
        } else if let Some(name) = path.to_str().and_then(module_name) {
            files.insert(name, path);
        }
    }
    Ok(())
}

/// A module file's bytes, decompressed (`.ko.xz`, `.ko.zst`, `.ko.gz`) with the Debian tool.
fn read_module(path: &Path) -> anyhow::Result<Vec<u8>> {
    let tool = match path.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        Some("gz") => "gzip",
        _ => return fs::read(path).with_context(|| format!("reading {}", path.display())),
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("starting {tool}"))?;
    if !out.status.success() {
        bail!("{tool} -dc {} failed with {}", path.display(), out.status);
    }
    Ok(out.stdout)
}

/// The `depends=` entry of a module's `.modinfo` section (what `modules.dep` is built from).
fn modinfo_depends(module: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(at) = module.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let value = &module[at + key.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A cpio archive in the kernel's initramfs format ("newc", uncompressed).
#[derive(Default)]
struct Cpio {
    bytes: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    fn node(&mut self, name: &str, mode: u32, major: u32, minor: u32) {
        self.entry(name, mode, (major, minor), &[]);
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100000 | mode, (0, 0), data);
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let nlink = if mode & 0o040000 != 0 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.bytes.extend_from_slice(b"070701");
        for f in fields {
            self.bytes.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_guest_result() {
        let serial = "Booting from ROM..\x1b[2JSMOKE-CURL: 200\r\n\
            SMOKE-STDERR: socktrace 0.1.0: 24 tracepoints attached (programs verified and attached in 4.79 s)\n\
            SMOKE-STDERR: socktrace: degraded: no bpf_loop (fallback programs: a, b)\n\
            SMOKE-STDERR: socktrace: warning: injection off: no cgroup2\n\
            SMOKE-VERIFIER: verifier: 9 programs x 6 configurations within budget (worst: 1)\n\
            SMOKE kernel=6.12.1 loaded=yes load_s=4.79 degraded=2 server_spans=2 client_spans=2 linked=0 verifier=pass result=pass\n";
        let row = parse("fallback", serial);
        assert_eq!(row.kernel, "6.12.1");
        assert_eq!(
            row.loaded,
            "yes; verifier: 9 programs x 6 configurations within budget (worst: 1)"
        );
        assert_eq!(
            row.degraded,
            "no bpf_loop (fallback programs: a, b); injection off: no cgroup2"
        );
        assert_eq!(row.load_time, "4.79 s");
        assert!(row.passed);

        // Below the minimum kernel: refused by name, and every program still loads.
        let serial = "SMOKE-STDERR: socktrace: the kernel has no tracepoint sock:sock_send_length (needed for x)\n\
            SMOKE-VERIFIER: verifier: 9 programs x 6 configurations within budget (worst: 1)\n\
            SMOKE kernel=6.1.0 loaded=no load_s=- degraded=0 server_spans=0 client_spans=0 verifier=pass result=fail\n";
        let row = parse("6.1.0", serial);
        assert_eq!(
            row.loaded,
            "no: the kernel has no tracepoint sock:sock_send_length (needed for x); verifier: 9 programs x 6 configurations within budget (worst: 1)"
        );
        assert_eq!(row.degraded, "-");
        assert!(row.passed, "{}", row.smoke);
        assert!(row.smoke.starts_with("unsupported, as expected"));
        // There, what the verifier says is information, not the verdict.
        let row = parse("6.1.0", &serial.replace("verifier=pass", "verifier=fail"));
        assert!(row.passed);
        // On a supported kernel a rejected program fails the row even when the smoke passed.
        let serial = "SMOKE kernel=6.12.1 loaded=yes load_s=1 degraded=0 server_spans=2 client_spans=2 linked=2 verifier=fail result=pass\n";
        assert!(!parse("6.12.1", serial).passed);
        // Any other reason not to start is a failure.
        let serial = "SMOKE-STDERR: socktrace: the kernel rejected program x\n\
            SMOKE kernel=6.1.0 loaded=no load_s=- degraded=0 server_spans=0 client_spans=0 verifier=pass result=fail\n";
        assert!(!parse("6.1.0", serial).passed);

        let row = parse("6.1.0", "Kernel panic\n");
        assert!(row.smoke.is_empty() && !row.passed);
    }

    #[test]
    fn summarises_the_verifier() {
        let lines = [
            "verifier: 2 over budget or rejected:",
            "  sys_exit_read in default: rejected: Permission denied (os error 13): 492: (bf) r4 = r7 ; frame1: R4_w=1 | 493: (85) call bpf_ringbuf_output#130 | R3 min value is negative, either use unsigned or 'var &= const' | verification time 3353301 usec | stack depth 56",
            "  sys_exit_readv in lean: stack 400 B (budget 384; frames [1]), 10 instructions (budget 500000)",
        ];
        assert_eq!(
            verifier_summary(&lines),
            "2 loads (program x configuration) rejected or over budget, 2 programs: sys_exit_read, \
             sys_exit_readv; 1x R3 min value is negative, either use unsigned or 'var &= const' \
             (at `call bpf_ringbuf_output#130`); 1x over budget"
        );
        assert_eq!(
            verifier_summary(&["verifier: 9 programs x 6 configurations within budget (worst: 1)"]),
            "9 programs x 6 configurations within budget (worst: 1)"
        );
    }

    #[test]
    fn names_and_versions() {
        assert_eq!(
            module_name("kernel/net/9p/9pnet_virtio.ko.xz").as_deref(),
            Some("9pnet_virtio")
        );
        assert_eq!(
            module_name("kernel/a/snd-hda.ko").as_deref(),
            Some("snd_hda")
        );
        assert!(
            version_key("linux-image-6.1.0-57-amd64") > version_key("linux-image-6.1.0-9-amd64")
        );
        assert_eq!(
            modinfo_depends(b"\0license=GPL\0depends=netfs,9pnet\0name=9p\0"),
            ["netfs", "9pnet"]
        );
        assert!(modinfo_depends(b"\0depends=\0").is_empty());
        assert_eq!(strip_ansi("\x1b[32m INFO\x1b[0m x"), " INFO x");
    }

    #[test]
    fn cpio_entries_are_aligned() {
        let mut cpio = Cpio::default();
        cpio.file("init", 0o755, b"#!/bin/sh\n");
        let bytes = cpio.finish();
        assert!(bytes.starts_with(b"070701"));
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
