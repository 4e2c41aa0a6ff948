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
    let mut found = None;
    walk(data, |t| {
        if (t.kind == KIND_ENUM || t.kind == KIND_ENUM64) && t.name == name {
            let member = if t.kind == KIND_ENUM { 8 } else { 12 };
            let mut values = HashMap::with_capacity(t.vlen);
            for i in 0..t.vlen {
                let m = i * member;
                let full = t.string(t.u32_at(m)?);
                let v = t.u32_at(m + 4)?;
                let short = full.strip_prefix(strip_prefix).unwrap_or(full);
                values.entry(v).or_insert_with(|| short.to_string());
            }
            found = Some(values);
            return Ok(Walk::Stop);
        }
        Ok(Walk::Next)
    })?;
    found.ok_or_else(|| BtfEnumError::NotFound(name.to_string()))
}

/// One type of the BTF type section, as [`walk`] hands it over: its kind, name, the `size` or
/// `type` word, and the bytes of its members (or other trailing data).
struct RawType<'a, 's> {
    kind: u32,
    name: &'a str,
    vlen: usize,
    size_or_type: u32,
    trailing: &'a [u8],
    strings: &'s dyn Fn(u32) -> &'a str,
    offset: usize,
}

impl<'a> RawType<'a, '_> {
    fn u32_at(&self, off: usize) -> Result<u32, BtfEnumError> {
        self.trailing
            .get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or(BtfEnumError::Truncated(self.offset + off))
    }

    fn string(&self, off: u32) -> &'a str {
        (self.strings)(off)
    }
}

enum Walk {
    Next,
    Stop,
}

/// Calls `visit` on every type of BTF `data`, in id order (the first is id 1), until it
/// returns [`Walk::Stop`].
fn walk<'a>(
    data: &'a [u8],
    mut visit: impl FnMut(&RawType<'a, '_>) -> Result<Walk, BtfEnumError>,
) -> Result<(), BtfEnumError> {
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
    let strings_at = hdr_len + str_off;
    let strings = move |off: u32| -> &'a str {
        let start = strings_at + off as usize;
        let end = (strings_at + str_len).min(data.len());
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
        let size_or_type = u32_at(off + 8).ok_or(BtfEnumError::Truncated(off))?;
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
        let len = extra + vlen * member;
        let trailing = data
            .get(off..off + len)
            .ok_or(BtfEnumError::Truncated(off))?;
        let t = RawType {
            kind,
            name: strings(name_off),
            vlen,
            size_or_type,
            trailing,
            strings: &strings,
            offset: off,
        };
        if let Walk::Stop = visit(&t)? {
            return Ok(());
        }
        off += len;
    }
    Ok(())
}

const KIND_PTR: u32 = 2;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

/// The kernel's structs, unions and the types between them, enough to tell whether a field a
/// probe reads exists: what [`crate::Requirement`]s are checked against. Built from the BTF
/// in one pass and kept only while probes are checked.
pub struct TypeIndex {
    /// Per type id (index 0 is `void`): kind, name, `size`/`type` word, members' range.
    types: Vec<(u32, String, u32, std::ops::Range<usize>)>,
    /// Struct and union members: (name, type id). Enum constants: (name, 0).
    members: Vec<(String, u32)>,
    /// Func protos' parameter counts, by type id.
    params: HashMap<u32, usize>,
    by_name: HashMap<(u32, String), u32>,
}

impl TypeIndex {
    /// The index of the running kernel's BTF.
    pub fn kernel() -> Result<TypeIndex, BtfEnumError> {
        let data = std::fs::read(VMLINUX).map_err(|source| BtfEnumError::Read {
            path: VMLINUX.into(),
            source,
        })?;
        TypeIndex::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<TypeIndex, BtfEnumError> {
        let mut index = TypeIndex {
            types: vec![(0, String::new(), 0, 0..0)],
            members: Vec::new(),
            params: HashMap::new(),
            by_name: HashMap::new(),
        };
        walk(data, |t| {
            let id = index.types.len() as u32;
            let start = index.members.len();
            match t.kind {
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..t.vlen {
                        let name = t.string(t.u32_at(i * 12)?).to_string();
                        index.members.push((name, t.u32_at(i * 12 + 4)?));
                    }
                }
                KIND_ENUM | KIND_ENUM64 => {
                    let member = if t.kind == KIND_ENUM { 8 } else { 12 };
                    for i in 0..t.vlen {
                        index
                            .members
                            .push((t.string(t.u32_at(i * member)?).to_string(), 0));
                    }
                }
                KIND_FUNC_PROTO => {
                    index.params.insert(id, t.vlen);
                }
                _ => {}
            }
            if !t.name.is_empty() {
                index
                    .by_name
                    .entry((t.kind, t.name.to_string()))
                    .or_insert(id);
            }
            let end = index.members.len();
            index
                .types
                .push((t.kind, t.name.to_string(), t.size_or_type, start..end));
            Ok(Walk::Next)
        })?;
        Ok(index)
    }

    fn id(&self, kind: u32, name: &str) -> Option<u32> {
        self.by_name.get(&(kind, name.to_string())).copied()
    }

    /// Follows typedefs, qualifiers and (when `through_pointers`) pointers to the type they
    /// name.
    fn resolve(&self, mut id: u32, through_pointers: bool) -> u32 {
        for _ in 0..32 {
            let Some((kind, _, next, _)) = self.types.get(id as usize) else {
                return 0;
            };
            match *kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = *next
                }
                KIND_PTR if through_pointers => id = *next,
                _ => return id,
            }
        }
        0
    }

    /// The type id of member `name` of struct or union `id`, looking into its anonymous
    /// members as C does.
    fn member(&self, id: u32, name: &str) -> Option<u32> {
        let (kind, _, _, range) = self.types.get(id as usize)?;
        if *kind != KIND_STRUCT && *kind != KIND_UNION {
            return None;
        }
        for (member, ty) in &self.members[range.clone()] {
            if member == name {
                return Some(*ty);
            }
            if member.is_empty() {
                if let Some(found) = self.member(self.resolve(*ty, false), name) {
                    return Some(found);
                }
            }
        }
        None
    }

    /// Whether `struct ty` has `path`: members separated by dots, through pointers
    /// (`q.disk` for `rq->q->disk`). `ty` may also name a union.
    pub fn has_field(&self, ty: &str, path: &str) -> bool {
        let Some(mut id) = self.id(KIND_STRUCT, ty).or_else(|| self.id(KIND_UNION, ty)) else {
            return false;
        };
        for name in path.split('.') {
            match self.member(self.resolve(id, true), name) {
                Some(next) => id = next,
                None => return false,
            }
        }
        true
    }

    /// Whether `enum name` exists and has constant `constant`.
    pub fn has_enum_constant(&self, name: &str, constant: &str) -> bool {
        [KIND_ENUM, KIND_ENUM64]
            .iter()
            .filter_map(|k| self.id(*k, name))
            .any(|id| {
                let range = self.types[id as usize].3.clone();
                self.members[range].iter().any(|(c, _)| c == constant)
            })
    }

    /// The number of arguments tracepoint `name`'s programs get (`btf_trace_<name>` is a
    /// pointer to a func proto whose first parameter is the context), `None` when the
    /// tracepoint is not in the BTF.
    pub fn tracepoint_args(&self, name: &str) -> Option<usize> {
        let id = self.id(KIND_TYPEDEF, &format!("btf_trace_{name}"))?;
        let proto = self.resolve(id, true);
        self.params.get(&proto).map(|n| n.saturating_sub(1))
    }
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

    #[test]
    fn type_index_finds_members_and_enum_constants() {
        let data = btf_with_enum("colour", &[("RED", 1)]);
        let index = TypeIndex::parse(&data).unwrap();
        assert!(index.has_field("thing", "field"));
        assert!(!index.has_field("thing", "other"));
        assert!(!index.has_field("nothing", "field"));
        assert!(index.has_enum_constant("colour", "RED"));
        assert!(!index.has_enum_constant("colour", "BLUE"));
    }

    #[test]
    fn running_kernel_fields_through_anonymous_members_and_pointers() {
        let index = TypeIndex::kernel().unwrap();
        // `dev` sits in an anonymous union of struct sk_buff.
        assert!(index.has_field("sk_buff", "dev"));
        assert!(index.has_field("sock", "__sk_common.skc_net.net"));
        // `q` is a pointer to struct request_queue.
        assert!(index.has_field("request", "q.disk"));
        assert!(!index.has_field("sk_buff", "no_such_field"));
        assert!(!index.has_field("request", "q.no_such_field"));
        // kfree_skb(skb, location, reason, rx_sk) on the kernels Sonde is tested on.
        assert!(index.tracepoint_args("kfree_skb").is_some_and(|n| n >= 3));
        assert_eq!(index.tracepoint_args("no_such_tracepoint"), None);
    }
}
