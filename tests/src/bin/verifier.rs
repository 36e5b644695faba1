//! `cargo xtask verifier`: loads every kernel program in every configuration with the
//! verifier's statistics, prints one table (program x configuration: stack bytes / processed
//! instructions) and exits non-zero when a program was rejected or uses more than its budget
//! (384 bytes of stack, half of the 1M-instruction limit). Needs root.
//!
//! `--markdown PATH` also writes the table as Markdown (docs/kernels.md shows it).
//! `--object-hash PATH` checks that the embedded kernel object is the one whose SHA-256 the file
//! holds (the one CI tested: same source, same pinned toolchain); with `--record` it writes it.

use std::{collections::BTreeMap, fmt::Write as _};

use socktrace::capture::budget::{
    self, INSN_BUDGET, INSN_LIMIT, STACK_BUDGET, STACK_LIMIT, Verified,
};

fn kilo(n: u32) -> String {
    if n >= 10_000 {
        format!("{}k", n / 1000)
    } else if n >= 1000 {
        format!("{:.1}k", f64::from(n) / 1000.0)
    } else {
        n.to_string()
    }
}

/// SHA-256 of the embedded kernel object, in hex.
fn object_hash() -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(socktrace::capture::object::EBPF_OBJECT)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut markdown = None;
    let mut hash_file = None;
    let mut record = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--markdown" => markdown = args.next(),
            "--object-hash" => hash_file = args.next(),
            "--record" => record = true,
            other => {
                eprintln!(
                    "verifier: unknown argument {other} (usage: verifier [--markdown PATH] [--object-hash PATH [--record]])"
                );
                std::process::exit(2);
            }
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("verifier: must run as root (it loads BPF programs)");
        std::process::exit(2);
    }

    let configurations = budget::configurations();
    // program -> one result per configuration
    let mut table: BTreeMap<String, Vec<Option<Verified>>> = BTreeMap::new();
    let mut totals = Vec::new();
    for (i, c) in configurations.iter().enumerate() {
        let results = match budget::verify_all(&c.config) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("verifier: configuration {}: {e}", c.name);
                std::process::exit(1);
            }
        };
        totals.push(results.iter().map(|v| v.micros).sum::<u64>());
        for v in results {
            let row = table
                .entry(v.program.clone())
                .or_insert_with(|| vec![None; configurations.len()]);
            row[i] = Some(v);
        }
    }

    let mut failures = Vec::new();
    let mut worst_stack = 0;
    let mut worst_insns = 0;
    let mut md = String::new();
    let _ = write!(md, "| program |");
    for c in &configurations {
        let _ = write!(md, " {} |", c.name);
    }
    let _ = writeln!(md, " worst: stack / insns |");
    let _ = write!(md, "| --- |");
    for _ in &configurations {
        let _ = write!(md, " ---: |");
    }
    let _ = writeln!(md, " ---: |");
    for (program, row) in &table {
        let _ = write!(md, "| `{program}` |");
        let (mut s_max, mut i_max) = (0, 0);
        for (c, cell) in configurations.iter().zip(row) {
            match cell {
                Some(v) if v.rejected.is_none() => {
                    let mark = if v.within_budget() { "" } else { " **!**" };
                    let _ = write!(md, " {} / {}{mark} |", v.stack, kilo(v.insns));
                    s_max = s_max.max(v.stack);
                    i_max = i_max.max(v.insns);
                    if !v.within_budget() {
                        failures.push(format!(
                            "{program} in {}: stack {} B (budget {STACK_BUDGET}; frames {:?}), {} instructions (budget {INSN_BUDGET})",
                            c.name, v.stack, v.frames, v.insns
                        ));
                    }
                }
                Some(v) => {
                    let _ = write!(md, " rejected |");
                    failures.push(format!(
                        "{program} in {}: rejected: {}",
                        c.name,
                        v.rejected.as_deref().unwrap_or("")
                    ));
                }
                None => {
                    let _ = write!(md, " - |");
                }
            }
        }
        worst_stack = worst_stack.max(s_max);
        worst_insns = worst_insns.max(i_max);
        let _ = writeln!(
            md,
            " {}% / {}% |",
            s_max * 100 / STACK_LIMIT,
            u64::from(i_max) * 100 / u64::from(INSN_LIMIT)
        );
    }
    let _ = write!(md, "| all programs, verifier time |");
    for t in &totals {
        let _ = write!(md, " {} ms |", t / 1000);
    }
    let _ = writeln!(
        md,
        " {}% / {}% |",
        worst_stack * 100 / STACK_LIMIT,
        u64::from(worst_insns) * 100 / u64::from(INSN_LIMIT)
    );

    println!(
        "Verifier budget per program and configuration: deepest stack (bytes) / processed instructions."
    );
    println!(
        "Budget: {STACK_BUDGET} of {STACK_LIMIT} stack bytes, {INSN_BUDGET} of {INSN_LIMIT} instructions."
    );
    for c in &configurations {
        println!("  {:<13} {}", c.name, c.flags);
    }
    println!();
    print!("{md}");
    if let Some(path) = markdown
        && let Err(e) = std::fs::write(&path, &md)
    {
        eprintln!("verifier: writing {path}: {e}");
        std::process::exit(1);
    }
    let hash = object_hash();
    println!(
        "\nkernel object: {} bytes, sha256 {hash}",
        socktrace::capture::object::EBPF_OBJECT.len()
    );
    if let Some(path) = hash_file {
        if record {
            if let Err(e) = std::fs::write(&path, format!("{hash}\n")) {
                eprintln!("verifier: writing {path}: {e}");
                std::process::exit(1);
            }
        } else {
            let want = std::fs::read_to_string(&path).unwrap_or_default();
            if want.trim() != hash {
                failures.push(format!(
                    "the kernel object is not the recorded one ({path}: {}): either the kernel programs changed (record the new object with `cargo xtask verifier --record`) or this machine's toolchain differs from ebpf/toolchain.toml",
                    if want.trim().is_empty() { "missing" } else { want.trim() }
                ));
            }
        }
    }
    if failures.is_empty() {
        println!(
            "\nverifier: {} programs x {} configurations within budget (worst: {worst_stack} B stack, {worst_insns} instructions)",
            table.len(),
            configurations.len()
        );
    } else {
        eprintln!("\nverifier: {} over budget or rejected:", failures.len());
        for f in &failures {
            eprintln!("  {f}");
        }
        std::process::exit(1);
    }
}
