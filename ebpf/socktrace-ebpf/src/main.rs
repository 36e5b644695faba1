//! socktrace kernel programs. Tracepoints, plus `sock_ops`/`sk_msg` for header injection: this
//! must load on kernels without kprobes, fentry or `bpf_probe_write_user` (see the README's
//! "Kernel hooks" section).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod context;
#[cfg(target_arch = "bpf")]
mod goroutine;
#[cfg(target_arch = "bpf")]
mod http;
#[cfg(target_arch = "bpf")]
mod inject;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod process;
#[cfg(target_arch = "bpf")]
mod sock;
#[cfg(target_arch = "bpf")]
mod syscalls;
#[cfg(target_arch = "bpf")]
mod tls;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach here; there is no unwinding in BPF.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
