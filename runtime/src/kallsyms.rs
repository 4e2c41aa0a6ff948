//! Kernel addresses to symbols, from /proc/kallsyms (read once; sorted; binary search).

use std::sync::Arc;

/// Function symbols, kept compact (about 12 bytes plus the name per symbol): the kernel has
/// over a hundred thousand.
pub struct Kallsyms {
    /// Start addresses, sorted.
    addrs: Vec<u64>,
    /// End of each symbol's name in `names` (the start is the previous end).
    name_ends: Vec<u32>,
    names: String,
}

impl Kallsyms {
    /// Reads /proc/kallsyms. Without the privilege to see addresses (they read as zero) the
    /// table is empty and addresses are shown in hex.
    pub fn load() -> Self {
        let text = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Self {
        let mut symbols: Vec<(u64, &str)> = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                let addr = u64::from_str_radix(parts.next()?, 16).ok()?;
                let kind = parts.next()?;
                let name = parts.next()?;
                // Functions only: text symbols, local or global, and weak ones.
                if addr == 0 || !matches!(kind, "t" | "T" | "w" | "W") {
                    return None;
                }
                Some((addr, name))
            })
            .collect();
        symbols.sort_by_key(|(a, _)| *a);
        let mut k = Kallsyms {
            addrs: Vec::with_capacity(symbols.len()),
            name_ends: Vec::with_capacity(symbols.len()),
            names: String::with_capacity(symbols.iter().map(|(_, n)| n.len()).sum()),
        };
        for (addr, name) in symbols {
            k.addrs.push(addr);
            k.names.push_str(name);
            k.name_ends.push(k.names.len() as u32);
        }
        k
    }

    /// The function containing `addr` and the offset into it.
    pub fn resolve(&self, addr: u64) -> Option<(&str, u64)> {
        let i = self.addrs.partition_point(|a| *a <= addr).checked_sub(1)?;
        let start = if i == 0 {
            0
        } else {
            self.name_ends[i - 1] as usize
        };
        let name = &self.names[start..self.name_ends[i] as usize];
        Some((name, addr - self.addrs[i]))
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
}
