//! Function addresses from a Go binary's line table (`.gopclntab`), for binaries without a
//! symbol table: `go build -ldflags=-s` (common in release builds, Debian's own `go` included)
//! drops `.symtab`, but the runtime needs the line table for stack traces, so every Go binary
//! keeps it, function names and entry addresses included.
//!
//! Layout (Go 1.18 and later, `runtime/symtab.go`): a header (`pcHeader`: magic `0xfffffff0`
//! for 1.18-1.19, `0xfffffff1` for 1.20 and later; `nfunc`; `textStart`, the address function
//! entries are relative to; offsets of the function name table and of the function table),
//! then `nfunc + 1` pairs `(entryoff, funcoff)` of `u32`, sorted by entry, the last one the end
//! of the text; each `funcoff` leads to a `_func` whose second word is the offset of its name.
//! Older layouts are not read (the register ABI the probes need is Go 1.17+, and 1.17's table
//! has another header): such a binary is reported as without symbols.

/// Where a function's code is, as the ELF file's virtual addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoFunc {
    pub address: u64,
    pub size: u64,
}

const MAGIC_118: u32 = 0xffff_fff0;
const MAGIC_120: u32 = 0xffff_fff1;
/// Bytes of the header up to and including `pclnOffset`, with 8-byte pointers.
const HEADER_LEN: usize = 8 + 8 * 8;

/// A parsed line table (borrowing the section's bytes).
pub struct LineTable<'a> {
    data: &'a [u8],
    nfunc: usize,
    text_start: u64,
    funcnames: usize,
    pcln: usize,
}

fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(d: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(d.get(at..at + 8)?.try_into().ok()?))
}

impl<'a> LineTable<'a> {
    /// The table at the start of `data` (a `.gopclntab` section), if it is one this reads:
    /// Go 1.18+, 8-byte pointers, x86's 1-byte instruction quantum, offsets inside `data`.
    /// `text` (the `.text` section's address) stands in for a `textStart` left for the loader
    /// to relocate (0 in the file).
    pub fn parse(data: &'a [u8], text: u64) -> Option<Self> {
        let magic = u32_at(data, 0)?;
        if !(magic == MAGIC_118 || magic == MAGIC_120) || data.get(4..8)? != [0, 0, 1, 8] {
            return None;
        }
        let word = |i: usize| u64_at(data, 8 + 8 * i);
        let nfunc = usize::try_from(word(0)?).ok()?;
        let text_start = match word(2)? {
            0 => text,
            t => t,
        };
        let funcnames = usize::try_from(word(3)?).ok()?;
        let pcln = usize::try_from(word(7)?).ok()?;
        if data.len() < HEADER_LEN
            || funcnames >= data.len()
            || pcln >= data.len()
            // The function table (nfunc + 1 pairs) must fit.
            || nfunc.checked_mul(8)?.checked_add(8)?.checked_add(pcln)? > data.len()
        {
            return None;
        }
        Some(Self {
            data,
            nfunc,
            text_start,
            funcnames,
            pcln,
        })
    }

    /// The `i`-th function's entry offset and `_func` offset (`i <= nfunc`).
    fn entry(&self, i: usize) -> Option<(u32, u32)> {
        let at = self.pcln + 8 * i;
        Some((u32_at(self.data, at)?, u32_at(self.data, at + 4)?))
    }

    /// The name of the function whose `_func` is at `funcoff` (from the function table).
    fn name(&self, funcoff: u32) -> Option<&'a [u8]> {
        let func = self.pcln.checked_add(funcoff as usize)?;
        let name_off = u32_at(self.data, func + 4)? as usize;
        let start = self.funcnames.checked_add(name_off)?;
        let rest = self.data.get(start..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        Some(&rest[..end])
    }

    /// Every function named in `names`, in the order given (None for those not found).
    /// One pass over the table.
    pub fn find(&self, names: &[&str]) -> Vec<Option<GoFunc>> {
        let mut found = vec![None; names.len()];
        let mut left = names.len();
        for i in 0..self.nfunc {
            let (Some((entry, funcoff)), Some((next, _))) = (self.entry(i), self.entry(i + 1))
            else {
                break;
            };
            let Some(name) = self.name(funcoff) else {
                continue;
            };
            if let Some(k) = names.iter().position(|n| n.as_bytes() == name)
                && found[k].is_none()
                && next > entry
            {
                found[k] = Some(GoFunc {
                    address: self.text_start + u64::from(entry),
                    // Up to the next function: the padding between them is INT3, never RET.
                    size: u64::from(next - entry),
                });
                left -= 1;
                if left == 0 {
                    break;
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table with the given functions (name, entry offset), ending at `end`.
    fn table(magic: u32, text: u64, funcs: &[(&str, u32)], end: u32) -> Vec<u8> {
        let mut names = Vec::new();
        let mut name_offs = Vec::new();
        for (n, _) in funcs {
            name_offs.push(names.len() as u32);
            names.extend_from_slice(n.as_bytes());
            names.push(0);
        }
        let funcnames = HEADER_LEN;
        let pcln = funcnames + names.len();
        // Function table, then one 8-byte `_func` (entryOff, nameOff) per function.
        let funcs_at = 8 * (funcs.len() + 1);
        let mut d = Vec::new();
        d.extend_from_slice(&magic.to_le_bytes());
        d.extend_from_slice(&[0, 0, 1, 8]);
        for w in [
            funcs.len() as u64,
            0,
            text,
            funcnames as u64,
            0,
            0,
            0,
            pcln as u64,
        ] {
            d.extend_from_slice(&w.to_le_bytes());
        }
        d.extend_from_slice(&names);
        for (i, (_, entry)) in funcs.iter().enumerate() {
            d.extend_from_slice(&entry.to_le_bytes());
            d.extend_from_slice(&((funcs_at + 8 * i) as u32).to_le_bytes());
        }
        d.extend_from_slice(&end.to_le_bytes());
        d.extend_from_slice(&0u32.to_le_bytes());
        for ((_, entry), off) in funcs.iter().zip(name_offs) {
            d.extend_from_slice(&entry.to_le_bytes());
            d.extend_from_slice(&off.to_le_bytes());
        }
        d
    }

    #[test]
    fn finds_functions_by_name_with_their_extent() {
        let funcs = [("main.main", 0x0), ("runtime.newproc1", 0x40), ("x", 0x100)];
        for magic in [MAGIC_118, MAGIC_120] {
            let d = table(magic, 0x401000, &funcs, 0x180);
            let t = LineTable::parse(&d, 0).expect("a table");
            assert_eq!(
                t.find(&["x", "nope", "runtime.newproc1"]),
                [
                    Some(GoFunc {
                        address: 0x401100,
                        size: 0x80
                    }),
                    None,
                    Some(GoFunc {
                        address: 0x401040,
                        size: 0xc0
                    }),
                ]
            );
        }
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let d = table(MAGIC_118, 0x401000, &[("f", 0)], 0x10);
        // Go 1.16-1.17's magic, 4-byte pointers, a table cut short, garbage: all refused.
        let mut old = d.clone();
        old[..4].copy_from_slice(&0xffff_fffau32.to_le_bytes());
        let mut small = d.clone();
        small[7] = 4;
        assert!(LineTable::parse(&old, 0).is_none());
        assert!(LineTable::parse(&small, 0).is_none());
        assert!(LineTable::parse(&d[..HEADER_LEN + 4], 0).is_none());
        assert!(LineTable::parse(&[0xff; 3], 0).is_none());
        // A name offset beyond the data is skipped, not a panic.
        let mut bad = d.clone();
        let last = bad.len() - 4;
        bad[last..].copy_from_slice(&u32::MAX.to_le_bytes());
        let t = LineTable::parse(&bad, 0).expect("header intact");
        assert_eq!(t.find(&["f"]), [None]);
    }

    #[test]
    fn reads_the_line_table_of_a_stripped_go_binary() {
        // Debian's `go` command is itself built without a symbol table.
        use object::{Object, ObjectSection};
        let path = std::fs::canonicalize("/usr/bin/go").expect("golang-go is installed by set-up");
        let bytes = std::fs::read(&path).unwrap();
        let elf = object::File::parse(&*bytes).unwrap();
        assert!(
            elf.symbols().next().is_none(),
            "{} has no .symtab",
            path.display()
        );
        let section = elf.section_by_name(".gopclntab").expect(".gopclntab");
        let text = elf.section_by_name(".text").unwrap();
        let table = LineTable::parse(section.data().unwrap(), text.address()).expect("Go 1.18+");
        let found = table.find(&["runtime.newproc1", "internal/poll.(*FD).Read"]);
        for f in found {
            let f = f.expect("found");
            let code = text
                .data_range(f.address, f.size)
                .unwrap()
                .expect("in .text");
            // Every Go function that can grow its stack begins by comparing SP with the
            // goroutine's stack guard: CMPQ 0x10(R14), SP.
            assert_eq!(code[..4], [0x49, 0x3b, 0x66, 0x10], "{f:x?}");
        }
    }
}
