use which::which;

/// Rebuild the BPF object when bpf-linker changes: it is the tool that produces it.
fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
