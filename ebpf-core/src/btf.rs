//! Reads enum names from the running kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Drop reason numbers change between kernels (`enum skb_drop_reason` grows in the middle),
//! so Sonde never ships a table: it names a reason by reading the enum from the kernel it runs
//! on. This is a small reader of the BTF type section, enough to find one enum by name.

use std::collections::HashMap;
use std::path::Path;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error)]
pub enum BtfEnumError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} is not BTF data (bad header)")]
    BadHeader(String),
    #[error("BTF type section is truncated at byte {0}")]
    Truncated(usize),
    #[error("BTF has an unknown type kind {0}")]
    UnknownKind(u32),
    #[error("enum {0} is not in this kernel's BTF")]
    NotFound(String),
}

/// Values of a kernel enum mapped to its constant names, with the enum's common prefix
/// removed when asked (`SKB_DROP_REASON_NETFILTER_DROP` becomes `NETFILTER_DROP`).
pub fn read_enum(
    path: &Path,
    name: &str,
    strip_prefix: &str,
) -> Result<HashMap<u32, String>, BtfEnumError> {
    let data = std::fs::read(path).map_err(|source| BtfEnumError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_enum(&data, name, strip_prefix).map_err(|e| match e {
        BtfEnumError::BadHeader(_) => BtfEnumError::BadHeader(path.display().to_string()),
        e => e,
    })
}

/// As [`read_enum`], on BTF bytes already in memory.
pub fn parse_enum(
    data: &[u8],
    name: &str,
    strip_prefix: &str,
) -> Result<HashMap<u32, String>, BtfEnumError> {
    let u16_at = |off: usize| {
        data.get(off..off + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |off: usize| {
        data.get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if u16_at(0) != Some(BTF_MAGIC) {
        return Err(BtfEnumError::BadHeader("BTF data".into()));
    }
    let header = |i: usize| u32_at(4 + 4 * i).ok_or(BtfEnumError::BadHeader("BTF data".into()));
    let hdr_len = header(0)? as usize;
    let (type_off, type_len) = (header(1)? as usize, header(2)? as usize);
    let str_off = header(3)? as usize;
    let str_len = header(4)? as usize;
    let types = hdr_len + type_off;
    let strings = hdr_len + str_off;
    let string = |off: u32| -> &str {
        let start = strings + off as usize;
        let end = (strings + str_len).min(data.len());
        if start >= end {
            return "";
        }
        let s = &data[start..end];
        let n = s.iter().position(|&c| c == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..n]).unwrap_or("")
    };

    let mut off = types;
    let end = types + type_len;
    while off < end {
        let name_off = u32_at(off).ok_or(BtfEnumError::Truncated(off))?;
        let info = u32_at(off + 4).ok_or(BtfEnumError::Truncated(off))?;
        let vlen = (info & 0xffff) as usize;
        let kind = (info >> 24) & 0x1f;
        off += 12;
        let member = match kind {
            KIND_ENUM => 8,
            KIND_ENUM64 | KIND_STRUCT | KIND_UNION | KIND_DATASEC => 12,
            KIND_FUNC_PROTO => 8,
            _ => 0,
        };
        let extra = match kind {
            KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
            KIND_ARRAY => 12,
            0..=19 => 0,
            k => return Err(BtfEnumError::UnknownKind(k)),
        };
        if (kind == KIND_ENUM || kind == KIND_ENUM64) && string(name_off) == name {
            let mut values = HashMap::with_capacity(vlen);
            for i in 0..vlen {
                let m = off + i * member;
                let n = u32_at(m).ok_or(BtfEnumError::Truncated(m))?;
                let v = u32_at(m + 4).ok_or(BtfEnumError::Truncated(m))?;
                let full = string(n);
                let short = full.strip_prefix(strip_prefix).unwrap_or(full);
                values.entry(v).or_insert_with(|| short.to_string());
            }
            return Ok(values);
        }
        off += extra + vlen * member;
    }
    Err(BtfEnumError::NotFound(name.to_string()))
}

/// Names of `enum skb_drop_reason` of the running kernel, without the `SKB_DROP_REASON_`
/// prefix (`NETFILTER_DROP`, `NO_SOCKET`, ...).
pub fn drop_reasons() -> Result<HashMap<u32, String>, BtfEnumError> {
    let mut names = read_enum(Path::new(VMLINUX), "skb_drop_reason", "SKB_DROP_REASON_")?;
    // The first two constants carry no SKB_DROP_REASON_ prefix (SKB_NOT_DROPPED_YET,
    // SKB_CONSUMED); keep them recognisable all the same.
    for name in names.values_mut() {
        if let Some(rest) = name.strip_prefix("SKB_") {
            *name = rest.to_string();
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF bytes holding an INT, a STRUCT with one member, and the given ENUM.
    fn btf_with_enum(name: &str, consts: &[(&str, u32)]) -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut add = |s: &str| {
            let off = strings.len() as u32;
            strings.extend_from_slice(s.as_bytes());
            strings.push(0);
            off
        };
        let int_name = add("int");
        let struct_name = add("thing");
        let member_name = add("field");
        let enum_name = add(name);
        let const_names: Vec<u32> = consts.iter().map(|(n, _)| add(n)).collect();

        let mut types = Vec::new();
        let mut push = |v: u32| types.extend_from_slice(&v.to_le_bytes());
        push(int_name);
        push(KIND_INT << 24);
        push(4);
        push(32);
        push(struct_name);
        push(KIND_STRUCT << 24 | 1);
        push(4);
        push(member_name);
        push(1);
        push(0);
        push(enum_name);
        push(KIND_ENUM << 24 | consts.len() as u32);
        push(4);
        for (n, (_, v)) in const_names.iter().zip(consts) {
            push(*n);
            push(*v);
        }

        let mut out = Vec::new();
        out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        out.push(1);
        out.push(0);
        for v in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn finds_enum_after_other_kinds() {
        let data = btf_with_enum(
            "skb_drop_reason",
            &[
                ("SKB_DROP_REASON_NO_SOCKET", 3),
                ("SKB_DROP_REASON_NETFILTER_DROP", 9),
            ],
        );
        let names = parse_enum(&data, "skb_drop_reason", "SKB_DROP_REASON_").unwrap();
        assert_eq!(names[&3], "NO_SOCKET");
        assert_eq!(names[&9], "NETFILTER_DROP");
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn missing_enum_and_bad_data_are_errors() {
        let data = btf_with_enum("other", &[("A", 1)]);
        assert!(matches!(
            parse_enum(&data, "skb_drop_reason", ""),
            Err(BtfEnumError::NotFound(_))
        ));
        assert!(matches!(
            parse_enum(b"nope", "x", ""),
            Err(BtfEnumError::BadHeader(_))
        ));
        assert!(matches!(
            parse_enum(&data[..data.len() - 20], "other", ""),
            Err(BtfEnumError::Truncated(_)) | Err(BtfEnumError::NotFound(_))
        ));
    }

    #[test]
    fn running_kernel_names_drop_reasons() {
        // Every kernel with the kfree_skb reason argument has these two.
        let names = drop_reasons().unwrap();
        assert!(names.values().any(|n| n == "NETFILTER_DROP"));
        assert!(names.values().any(|n| n == "NO_SOCKET"));
    }
}
