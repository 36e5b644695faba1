//! Where a uprobe goes in a function, so that the traced program pays as little as possible.
//!
//! A uprobe replaces an instruction with a breakpoint. When it fires, the kernel runs our
//! programs and must then execute the instruction it replaced: a few x86-64 instructions it
//! emulates (push of a register, relative jumps and calls, conditional jumps, `nop`); any other
//! it copies out of line and single-steps, a second trap. On virtual machines the single-step
//! is by far the dearer part (measured here: a probe on `SSL_read`'s first instruction,
//! `sub rsp, 0x18`, took nginx over HTTPS from 133k to 18k requests/s; the same probe on a
//! `push` inside the library, 106k).
//!
//! So the attacher looks for a place the kernel emulates, equivalent to the entry for our
//! programs:
//! - [`entry_site`]: past a function's leading instructions that change nothing our programs
//!   read (`endbr64`, Go's stack-bound check `lea r12, [rsp-N]; cmp r12, [r14+16]`), up to the
//!   first emulated one. The stack pointer is untouched there, so a return probe placed there
//!   still finds the return address on top of the stack, and the argument registers hold the
//!   arguments.
//! - [`wrapped_core`]: OpenSSL's `SSL_read` and `SSL_read_ex` (and the write pair) are thin
//!   wrappers around one internal function taking `(ssl, buf, num, &count)`, the `_ex`
//!   signature; the wrappers begin with `sub rsp`, the internal function with pushes. Probing it
//!   covers both wrappers with one emulated breakpoint.

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

/// Instructions at most skipped before an emulated one.
const MAX_SKIPPED: usize = 3;

/// Bytes of a wrapper decoded when its symbol has no size.
const WRAPPER_BYTES: usize = 256;

/// The kernel emulates this instruction at a uprobe (arch/x86/kernel/uprobes.c: `push` of a
/// register, with no prefix but REX.B; relative `jmp`, `call` and `jcc` without an operand-size
/// prefix; `nop`): no single-step. Matched on the bytes, without any prefix we do not name, to
/// stay on the safe side of the kernel's own checks.
pub fn kernel_emulates(bytes: &[u8]) -> bool {
    matches!(
        bytes,
        // push reg; push r8-r15; nop
        [0x50..=0x57] | [0x41, 0x50..=0x57] | [0x90]
        // jmp rel8; jcc rel8
            | [0xeb, _] | [0x70..=0x7f, _]
        // jmp rel32; call rel32; jcc rel32
            | [0xe9 | 0xe8, _, _, _, _] | [0x0f, 0x80..=0x8f, _, _, _, _]
    )
}

/// Changes nothing a probe at the instruction after it could read: no register but flags and
/// Go's scratch registers (R12, R13: not arguments in either ABI, not callee-saved in Go's),
/// no memory, no stack pointer, no control flow.
fn transparent(i: &Instruction) -> bool {
    match i.mnemonic() {
        Mnemonic::Endbr64 | Mnemonic::Cmp | Mnemonic::Test => true,
        Mnemonic::Lea => matches!(i.op0_register(), Register::R12 | Register::R13),
        _ => false,
    }
}

/// Offset from `address` of the first instruction of the function (its code `code`, loaded at
/// `address`) that the kernel emulates, when only [`transparent`] instructions precede it.
/// None: the entry must be probed as it is (and single-stepped).
pub fn entry_site(code: &[u8], address: u64) -> Option<u64> {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    for _ in 0..=MAX_SKIPPED {
        if !decoder.can_decode() {
            return None;
        }
        let start = decoder.position();
        let i = decoder.decode();
        if i.is_invalid() {
            return None;
        }
        if kernel_emulates(&code[start..start + i.len()]) {
            return Some(i.ip() - address);
        }
        if !transparent(&i) {
            return None;
        }
    }
    None
}

/// Targets of the direct calls in a function's code.
fn call_targets(code: &[u8], address: u64) -> Vec<u64> {
    Decoder::with_ip(64, code, address, DecoderOptions::NONE)
        .into_iter()
        .take_while(|i| !i.is_invalid())
        .filter(|i| i.code() == Code::Call_rel32_64 && i.op0_kind() == OpKind::NearBranch64)
        .map(|i| i.near_branch_target())
        .collect()
}

/// The one function both wrappers call (their code given with their addresses), if there is
/// exactly one. See the module docs.
pub fn wrapped_core(a: (&[u8], u64), b: (&[u8], u64)) -> Option<u64> {
    let in_b = call_targets(b.0, b.1);
    let mut common: Vec<u64> = call_targets(a.0, a.1)
        .into_iter()
        .filter(|t| in_b.contains(t))
        .collect();
    common.dedup();
    match common[..] {
        [core] if core != a.1 && core != b.1 => Some(core),
        _ => None,
    }
}

/// Offsets from `address` of the direct calls to `target` in a function's code.
pub fn calls_to(code: &[u8], address: u64, target: u64) -> Vec<u64> {
    Decoder::with_ip(64, code, address, DecoderOptions::NONE)
        .into_iter()
        .take_while(|i| !i.is_invalid())
        .filter(|i| {
            i.code() == Code::Call_rel32_64
                && i.op0_kind() == OpKind::NearBranch64
                && i.near_branch_target() == target
        })
        .map(|i| i.ip() - address)
        .collect()
}

/// Offsets from `address` of every `RET` in a function's code.
pub fn returns(code: &[u8], address: u64) -> Vec<u64> {
    Decoder::with_ip(64, code, address, DecoderOptions::NONE)
        .into_iter()
        .filter(|i| i.mnemonic() == Mnemonic::Ret)
        .map(|i| i.ip() - address)
        .collect()
}

/// A function of an ELF file: its code, address, and the file offset of its address.
pub struct Function<'d> {
    pub code: &'d [u8],
    pub address: u64,
    pub file_offset: u64,
}

impl<'d> Function<'d> {
    /// The function at `address`, `size` bytes long (0: unknown, a wrapper's worth is read).
    pub fn at<R: object::ReadRef<'d>>(
        elf: &object::File<'d, R>,
        address: u64,
        size: u64,
    ) -> Option<Self> {
        use object::{Object, ObjectSection};
        let section = elf
            .sections()
            .find(|s| s.address() <= address && address < s.address() + s.size())?;
        let (file_start, _) = section.file_range()?;
        let end = section.address() + section.size();
        let size = if size == 0 {
            (WRAPPER_BYTES as u64).min(end - address)
        } else {
            size.min(end - address)
        };
        Some(Self {
            code: section.data_range(address, size).ok()??,
            address,
            file_offset: address - section.address() + file_start,
        })
    }

    /// File offset of the cheapest place equivalent to the entry, and whether the kernel
    /// emulates the instruction there.
    pub fn entry(&self) -> (u64, bool) {
        match entry_site(self.code, self.address) {
            Some(at) => (self.file_offset + at, true),
            None => (self.file_offset, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulated_instructions_are_the_kernels() {
        for yes in [
            &[0x55][..],                     // push rbp
            &[0x41, 0x57],                   // push r15
            &[0x90],                         // nop
            &[0xeb, 0x10],                   // jmp rel8
            &[0x76, 0x10],                   // jbe rel8
            &[0xe8, 1, 2, 3, 4],             // call rel32
            &[0xe9, 1, 2, 3, 4],             // jmp rel32
            &[0x0f, 0x86, 0xc2, 0x03, 0, 0], // jbe rel32
        ] {
            assert!(kernel_emulates(yes), "{yes:x?}");
        }
        for no in [
            &[0x48, 0x83, 0xec, 0x18][..], // sub rsp, 0x18
            &[0xf3, 0x0f, 0x1e, 0xfa],     // endbr64
            &[0x5d],                       // pop rbp
            &[0xc3],                       // ret
            &[0x48, 0x55],                 // push rbp with REX.W: the kernel takes only REX.B
            &[0x66, 0xe8, 1, 2],           // call with an operand-size prefix
            &[0xff, 0xd0],                 // call rax
            &[0x0f, 0x1f, 0x00],           // nopl: not the plain nop
        ] {
            assert!(!kernel_emulates(no), "{no:x?}");
        }
    }

    #[test]
    fn the_entry_moves_past_what_changes_nothing_to_an_emulated_instruction() {
        // Go: cmp rsp, [r14+16] | jbe ... | sub rsp, 0x68
        let go_small = [
            0x49, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0xc2, 0x03, 0x00, 0x00, 0x48, 0x83, 0xec, 0x68,
        ];
        assert_eq!(entry_site(&go_small, 0x5a6e80), Some(4));
        // Go, big frame: lea r12, [rsp-0x68] | cmp r12, [r14+16] | jbe ...
        let go_big = [
            0x4c, 0x8d, 0x64, 0x24, 0x98, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x64, 0x07, 0x00,
            0x00,
        ];
        assert_eq!(entry_site(&go_big, 0x5a59c0), Some(9));
        // CET: endbr64 | push r13
        assert_eq!(
            entry_site(&[0xf3, 0x0f, 0x1e, 0xfa, 0x41, 0x55], 0x1000),
            Some(4)
        );
        // Emulated at once: push r13 | push r12
        assert_eq!(entry_site(&[0x41, 0x55, 0x41, 0x54], 0x1000), Some(0));
        // The stack pointer moves first: the entry stays (a return probe needs it).
        assert_eq!(entry_site(&[0x48, 0x83, 0xec, 0x18, 0x55], 0x1000), None);
        // lea into an argument register changes what the program reads.
        assert_eq!(
            entry_site(&[0x48, 0x8d, 0x7c, 0x24, 0x08, 0x55], 0x1000),
            None
        );
        // Nothing emulated within reach, or nothing at all.
        assert_eq!(entry_site(&[0x85, 0xd2].repeat(4), 0x1000), None);
        assert_eq!(entry_site(&[], 0x1000), None);
        assert_eq!(entry_site(&[0x0f], 0x1000), None);
    }

    #[test]
    fn the_core_is_the_one_function_both_wrappers_call() {
        // At 0x100: sub rsp, 8 | call 0x40 | add rsp, 8 | ret
        let a = [
            0x48, 0x83, 0xec, 0x08, 0xe8, 0x37, 0xff, 0xff, 0xff, 0x48, 0x83, 0xc4, 0x08, 0xc3,
        ];
        // At 0x200: call 0x40 | call 0x300 | ret
        let b = [
            0xe8, 0x3b, 0xfe, 0xff, 0xff, 0xe8, 0xf6, 0x00, 0x00, 0x00, 0xc3,
        ];
        assert_eq!(wrapped_core((&a, 0x100), (&b, 0x200)), Some(0x40));
        // No call in common.
        let c = [0xe8, 0xfb, 0x00, 0x00, 0x00, 0xc3];
        assert_eq!(wrapped_core((&a, 0x100), (&c, 0x200)), None);
        // One wrapper calling the other is no core.
        let d = [0xe8, 0xfb, 0x00, 0x00, 0x00, 0xc3];
        assert_eq!(wrapped_core((&d, 0x100), (&a, 0x200)), None);
    }

    #[test]
    fn finds_the_calls_of_a_function() {
        // At 0x1000: call 0x2000 | test rax, rax | call 0x3000 | call 0x2000 | ret
        let code = [
            0xe8, 0xfb, 0x0f, 0x00, 0x00, // call 0x2000
            0x48, 0x85, 0xc0, // test rax, rax
            0xe8, 0xf3, 0x1f, 0x00, 0x00, // call 0x3000
            0xe8, 0xee, 0x0f, 0x00, 0x00, // call 0x2000
            0xc3,
        ];
        assert_eq!(calls_to(&code, 0x1000, 0x2000), vec![0, 0xd]);
        assert_eq!(calls_to(&code, 0x1000, 0x3000), vec![8]);
        assert_eq!(calls_to(&code, 0x1000, 0x4000), Vec::<u64>::new());
        assert_eq!(returns(&code, 0x1000), vec![0x12]);
    }
}
