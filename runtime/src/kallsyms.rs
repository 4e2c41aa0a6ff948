//! Kernel addresses to symbols, from /proc/kallsyms (read once; sorted; binary search).

use std::io::{Read, Write};
use std::sync::Arc;

use flate2::{read::DeflateDecoder, write::DeflateEncoder, Compression};

/// Names per compressed block: a lookup inflates one block (a few KiB, microseconds), and
/// callers keep what they resolved (drop locations, stacks).
const BLOCK: usize = 256;

/// Function symbols, kept compact: the kernel has over a hundred thousand, whose names
/// (about 3 MB) are kept deflated in blocks of [`BLOCK`], a third of their size. Only the
/// addresses (8 bytes a symbol) are searched.
pub struct Kallsyms {
    /// Start addresses, sorted.
    addrs: Vec<u64>,
    /// The names in the order of `addrs`, [`BLOCK`] to a block, each followed by a newline;
    /// each block deflated.
    blocks: Vec<Box<[u8]>>,
}

impl Kallsyms {
    /// Reads /proc/kallsyms. Without the privilege to see addresses (they read as zero) the
    /// table is empty and addresses are shown in hex.
    pub fn load() -> Self {
        let text = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Self {
        let symbols = functions(text);
        let mut names = String::new();
        let blocks = symbols
            .chunks(BLOCK)
            .map(|chunk| {
                names.clear();
                for (_, name) in chunk {
                    names.push_str(name);
                    names.push('\n');
                }
                let mut z = DeflateEncoder::new(Vec::new(), Compression::default());
                // Writing to a Vec cannot fail.
                let _ = z.write_all(names.as_bytes());
                z.finish().unwrap_or_default().into_boxed_slice()
            })
            .collect();
        Kallsyms {
            addrs: symbols.iter().map(|(a, _)| *a).collect(),
            blocks,
        }
    }

    /// The name of symbol `i` (an index into `addrs`).
    fn name_at(&self, i: usize) -> Option<String> {
        let mut names = String::new();
        DeflateDecoder::new(&self.blocks.get(i / BLOCK)?[..])
            .read_to_string(&mut names)
            .ok()?;
        names.split('\n').nth(i % BLOCK).map(str::to_string)
    }

    /// The function containing `addr` and the offset into it.
    pub fn resolve(&self, addr: u64) -> Option<(String, u64)> {
        let i = self.addrs.partition_point(|a| *a <= addr).checked_sub(1)?;
        Some((self.name_at(i)?, addr - self.addrs[i]))
    }

    /// The function name alone, or the address in hex when unknown.
    pub fn name(&self, addr: u64) -> Arc<str> {
        match self.resolve(addr) {
            Some((name, _)) => Arc::from(name),
            None => Arc::from(format!("0x{addr:x}")),
        }
    }

    /// `function+0xoffset`, as stack frames are usually shown.
    pub fn frame(&self, addr: u64) -> Arc<str> {
        match self.resolve(addr) {
            Some((name, off)) => Arc::from(format!("{name}+0x{off:x}")),
            None => Arc::from(format!("0x{addr:x}")),
        }
    }
}

/// The function symbols of kallsyms text (text symbols, local or global, and weak ones, with
/// an address), sorted by address; symbols at one address keep the order they were listed in.
fn functions(text: &str) -> Vec<(u64, &str)> {
    let mut symbols: Vec<(u64, &str)> = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let addr = u64::from_str_radix(parts.next()?, 16).ok()?;
            let kind = parts.next()?;
            let name = parts.next()?;
            (addr != 0 && matches!(kind, "t" | "T" | "w" | "W")).then_some((addr, name))
        })
        .collect();
    symbols.sort_by_key(|(a, _)| *a);
    symbols
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "ffffffff81000000 T _stext\n\
        ffffffff81000100 t helper\n\
        ffffffff81000200 D some_data\n\
        ffffffff81000300 T nf_hook_slow\n\
        ffffffffc0000000 t mod_fn\t[nf_tables]\n";

    #[test]
    fn resolves_inside_functions() {
        let k = Kallsyms::parse(SAMPLE);
        assert_eq!(&*k.name(0xffffffff81000105), "helper");
        // Data symbols are skipped, so this still belongs to `helper`.
        assert_eq!(&*k.frame(0xffffffff81000210), "helper+0x110");
        assert_eq!(&*k.frame(0xffffffff81000310), "nf_hook_slow+0x10");
        assert_eq!(&*k.name(0xffffffffc0000004), "mod_fn");
        assert_eq!(&*k.name(0x1000), "0x1000");
    }

    /// Every symbol of a table spanning several blocks, and of this kernel's own when it can
    /// be read (as root), resolves to the name the uncompressed, sorted list of functions
    /// has for it.
    #[test]
    fn compressed_names_resolve_as_the_text_says() {
        let mut text = String::new();
        for i in 0..(BLOCK * 3 + 17) as u64 {
            text.push_str(&format!(
                "{:x} t f{i}_{}\n",
                0xffffffff81000000 + i * 16,
                "x".repeat((i % 40) as usize)
            ));
        }
        let own = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        for text in [text, own] {
            let k = Kallsyms::parse(&text);
            // Which symbols are kept is `resolves_inside_functions`'s to check; this one
            // checks that each keeps its name through the blocks.
            let plain = functions(&text);
            assert_eq!(k.addrs.len(), plain.len());
            // Every symbol of the small table; every 97th of the kernel's (at the end of its
            // name: several share an address, and the last one listed there wins).
            let step = if plain.len() > BLOCK * 4 { 97 } else { 1 };
            for (i, (addr, _)) in plain.iter().enumerate().step_by(step) {
                let last = plain.partition_point(|(a, _)| *a <= *addr) - 1;
                assert_eq!(
                    k.resolve(addr + 1),
                    Some((plain[last].1.to_string(), 1)),
                    "symbol {i} at {addr:x}"
                );
            }
        }
    }
}
