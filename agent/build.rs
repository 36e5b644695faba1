//! Builds the kernel programs (`ebpf/socktrace-ebpf`) for the BPF target with the nightly
//! toolchain and bpf-linker, so that the agent binary embeds them. `AYA_BUILD_SKIP=1` skips this
//! (for `cargo check`/`clippy`/unit tests of user space): an empty object is embedded instead and
//! the agent refuses to start with a clear message.

use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = format!("{manifest_dir}/../ebpf/socktrace-ebpf");
    // The object is also rebuilt when the shared types change.
    println!("cargo:rerun-if-changed={manifest_dir}/../ebpf/socktrace-common/src");
    let object = std::path::Path::new(&std::env::var("OUT_DIR")?).join("socktrace");
    let skip =
        std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip && !object.exists() {
        std::fs::write(&object, [])?;
    }
    aya_build::build_ebpf(
        [Package {
            name: "socktrace-ebpf",
            root_dir: &ebpf_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
