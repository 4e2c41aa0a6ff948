//! The kernel's BTF, from one place for the whole process, and a small reader of it.
//!
//! Everything that reads the kernel's types (aya's CO-RE relocations, the checks made before
//! loading a probe, tracepoint arities, drop reason names) gets them through [`KernelBtf`],
//! [`TypeIndex::kernel`] or [`drop_reasons`]: from the file `btf.path` names when it is set
//! ([`set_path`]), else from the kernel's own BTF at [`VMLINUX`]. A kernel built without
//! BTF (`CONFIG_DEBUG_INFO_BTF` off) has no [`VMLINUX`]; a BTF file for it gives CO-RE
//! relocations, but tp_btf programs still cannot load there: the kernel resolves their attach
//! points in its own BTF ([`KernelBtf::own`]).
//!
//! Drop reason numbers change between kernels (`enum skb_drop_reason` grows in the middle),
//! so Sonde never ships a table: it names a reason by reading the enum from the kernel it runs
//! on. The reader here walks the BTF type section, enough to find one enum by name and to
//! index the types the checks ask about.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

/// Where the kernel publishes its own BTF (when built with `CONFIG_DEBUG_INFO_BTF`).
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// How to get a BTF file for a kernel that has none, as errors say it (one line).
pub const HOW_TO_GET_BTF: &str = "get a BTF file for this kernel from BTFHub \
     (https://github.com/aquasecurity/btfhub-archive: <distribution>/<version>/<arch>/\
     <uname -r>.btf.tar.xz, extracted) or make one from the kernel's debug-info vmlinux with \
     `pahole --btf_encode_detached FILE vmlinux`, and set btf.path to it";

/// `btf.path`: the file the kernel's types are read from instead of [`VMLINUX`].
static PATH: RwLock<Option<PathBuf>> = RwLock::new(None);

/// Sets (or, with `None`, clears) `btf.path` for the whole process: every later read of the
/// kernel's types comes from that file.
pub fn set_path(path: Option<PathBuf>) {
    *PATH.write().unwrap_or_else(|e| e.into_inner()) = path;
}

/// `btf.path`, when set.
pub fn path() -> Option<PathBuf> {
    PATH.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Whether the running kernel has BTF of its own ([`VMLINUX`]). A file that exists but cannot
/// be read counts as there (reading it says why it cannot be).
pub fn kernel_has_own() -> bool {
    match std::fs::metadata(VMLINUX) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// Why the kernel's types cannot be had; one line each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelBtfError {
    #[error("this kernel has no BTF ({VMLINUX}) and btf.path is not set: {HOW_TO_GET_BTF}")]
    Missing,
    #[error("kernel BTF {VMLINUX}: {0}")]
    Kernel(String),
    #[error("btf.path: {path}: {reason}")]
    File { path: String, reason: String },
}

/// Where the kernel's types are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The kernel's own BTF, [`VMLINUX`].
    Kernel,
    /// The file `btf.path` names.
    File(PathBuf),
}

impl Source {
    /// `btf.path` when set, else the kernel's own BTF; [`KernelBtfError::Missing`] when the
    /// kernel has none and no file is set.
    pub fn current() -> Result<Source, KernelBtfError> {
        match path() {
            Some(path) => Ok(Source::File(path)),
            None if kernel_has_own() => Ok(Source::Kernel),
            None => Err(KernelBtfError::Missing),
        }
    }

    /// An error about this source.
    fn error(&self, reason: impl Into<String>) -> KernelBtfError {
        match self {
            Source::Kernel => KernelBtfError::Kernel(reason.into()),
            Source::File(path) => KernelBtfError::File {
                path: path.display().to_string(),
                reason: reason.into(),
            },
        }
    }

    /// The BTF bytes; a file's are checked to be whole, well-formed BTF first.
    fn read(&self) -> Result<Vec<u8>, KernelBtfError> {
        let path = match self {
            Source::Kernel => Path::new(VMLINUX),
            Source::File(path) => path.as_path(),
        };
        let data = std::fs::read(path).map_err(|e| self.error(format!("cannot read: {e}")))?;
        if let Source::File(_) = self {
            check_btf_file(&data).map_err(|e| self.error(e.to_string()))?;
        }
        Ok(data)
    }
}

/// Why a file is not BTF the agent can read, with what it is instead when that can be told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotBtf {
    #[error("not a BTF file (it is empty)")]
    Empty,
    #[error(
        "not a BTF file (it is xz-compressed: extract the .btf file first (BTFHub's are \
         .btf.tar.xz: tar xJf FILE))"
    )]
    Xz,
    #[error("not a BTF file (it is gzip-compressed: extract the .btf file first)")]
    Gzip,
    #[error(
        "not a BTF file (it is an ELF file, not raw BTF: make one with `pahole \
         --btf_encode_detached FILE vmlinux`)"
    )]
    Elf,
    #[error("not a BTF file (it is big-endian BTF, for another architecture)")]
    BigEndian,
    #[error("not a BTF file (it does not start with BTF's magic number 0xeb9f)")]
    Magic,
    #[error("not a BTF file (bad header)")]
    Header,
    #[error("not a BTF file (bad header: version or section bounds; truncated?)")]
    Bounds,
    /// A type could not be read (its kind unknown, or running past the type section).
    #[error("not a BTF file ({0})")]
    Type(String),
    #[error("not a BTF file (its type section ends mid-type)")]
    MidType,
}

/// Checks that `data` is a whole BTF blob (header, sections in bounds, every type readable to
/// the end of the type section), so that nothing downstream reads past it; the error says
/// what the file is instead when it can tell (compressed, ELF).
fn check_btf_file(data: &[u8]) -> Result<(), NotBtf> {
    match data {
        [] => return Err(NotBtf::Empty),
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => return Err(NotBtf::Xz),
        [0x1f, 0x8b, ..] => return Err(NotBtf::Gzip),
        [0x7f, b'E', b'L', b'F', ..] => return Err(NotBtf::Elf),
        [0xeb, 0x9f, ..] => return Err(NotBtf::BigEndian),
        _ if data.get(0..2) != Some(&BTF_MAGIC.to_le_bytes()[..]) => return Err(NotBtf::Magic),
        _ => {}
    }
    let sections = Sections::read(data).map_err(|_| NotBtf::Header)?;
    let hdr_len = data
        .get(4..8)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let in_bounds =
        |start: usize, len: usize| start.checked_add(len).is_some_and(|end| end <= data.len());
    if data.get(2) != Some(&1)
        || hdr_len < 24
        || !in_bounds(sections.types, sections.types_len)
        || !in_bounds(sections.strings, sections.strings_len)
    {
        return Err(NotBtf::Bounds);
    }
    let end = sections.types + sections.types_len;
    let mut last = sections.types;
    walk(data, |t| {
        last = t.offset + t.trailing.len();
        if last > end {
            return Err(BtfEnumError::Truncated(t.offset));
        }
        Ok(Walk::Next)
    })
    .map_err(|e| NotBtf::Type(e.to_string()))?;
    if last != end {
        return Err(NotBtf::MidType);
    }
    Ok(())
}

/// The kernel's BTF as the loader uses it: the kernel's types, for CO-RE relocations and the
/// checks before loading (from `btf.path` when set, else the kernel's own), and the kernel's
/// own BTF, in which the kernel resolves tp_btf programs' attach points (type ids of a file
/// need not be the kernel's).
pub struct KernelBtf {
    types: aya::Btf,
    source: Source,
    own: Own,
}

enum Own {
    /// The types are the kernel's own.
    Types,
    /// The types come from a file and the kernel has its own BTF too: read when a tp_btf
    /// program needs it.
    Sysfs(OnceCell<Result<aya::Btf, KernelBtfError>>),
    /// The kernel has no BTF of its own.
    Absent,
}

impl KernelBtf {
    /// Reads and parses the kernel's types from where [`Source::current`] says.
    pub fn load() -> Result<KernelBtf, KernelBtfError> {
        KernelBtf::from_source(Source::current()?)
    }

    /// Reads and parses the kernel's types from `source`.
    pub fn from_source(source: Source) -> Result<KernelBtf, KernelBtfError> {
        let types = parse_aya(&source)?;
        let own = match source {
            Source::Kernel => Own::Types,
            Source::File(_) if kernel_has_own() => Own::Sysfs(OnceCell::new()),
            Source::File(_) => Own::Absent,
        };
        Ok(KernelBtf { types, source, own })
    }

    /// As if the kernel had no BTF of its own (for tests of what then cannot load).
    #[cfg(test)]
    pub(crate) fn without_own(self) -> KernelBtf {
        KernelBtf {
            own: Own::Absent,
            ..self
        }
    }

    /// The kernel's types: what CO-RE relocations and the checks before loading read.
    pub fn types(&self) -> &aya::Btf {
        &self.types
    }

    /// Where [`KernelBtf::types`] came from.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Whether the kernel has BTF of its own, which tp_btf programs need.
    pub fn has_own(&self) -> bool {
        !matches!(self.own, Own::Absent)
    }

    /// The kernel's own BTF, to name tp_btf attach points by their ids in it; `None` when the
    /// kernel has none.
    pub fn own(&self) -> Option<Result<&aya::Btf, KernelBtfError>> {
        match &self.own {
            Own::Types => Some(Ok(&self.types)),
            Own::Sysfs(cell) => Some(
                cell.get_or_init(|| parse_aya(&Source::Kernel))
                    .as_ref()
                    .map_err(Clone::clone),
            ),
            Own::Absent => None,
        }
    }
}

/// aya's parse of the BTF at `source`, which must not panic on a bad file.
fn parse_aya(source: &Source) -> Result<aya::Btf, KernelBtfError> {
    let data = source.read()?;
    std::panic::catch_unwind(|| aya::Btf::parse(&data, aya::Endianness::default()))
        .map_err(|_| source.error("not valid BTF (the parser failed)"))?
        .map_err(|e| source.error(format!("not valid BTF: {e}")))
}

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

/// Where a BTF blob's type and string sections are.
#[derive(Clone, Copy)]
struct Sections {
    types: usize,
    types_len: usize,
    strings: usize,
    strings_len: usize,
}

impl Sections {
    fn read(data: &[u8]) -> Result<Sections, BtfEnumError> {
        let bad = || BtfEnumError::BadHeader("BTF data".into());
        if data.get(0..2) != Some(&BTF_MAGIC.to_le_bytes()[..]) {
            return Err(bad());
        }
        let header = |i: usize| {
            data.get(4 + 4 * i..8 + 4 * i)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .ok_or_else(bad)
        };
        let hdr_len = header(0)?;
        Ok(Sections {
            types: hdr_len + header(1)?,
            types_len: header(2)?,
            strings: hdr_len + header(3)?,
            strings_len: header(4)?,
        })
    }

    /// The NUL-terminated string at `off` of the string section ("" when out of range).
    fn string(self, data: &[u8], off: u32) -> &str {
        let start = self.strings + off as usize;
        let end = (self.strings + self.strings_len).min(data.len());
        if start >= end {
            return "";
        }
        let s = &data[start..end];
        let n = s.iter().position(|&c| c == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..n]).unwrap_or("")
    }
}

/// Calls `visit` on every type of BTF `data`, in id order (the first is id 1), until it
/// returns [`Walk::Stop`].
fn walk<'a>(
    data: &'a [u8],
    mut visit: impl FnMut(&RawType<'a, '_>) -> Result<Walk, BtfEnumError>,
) -> Result<(), BtfEnumError> {
    let u32_at = |off: usize| {
        data.get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let sections = Sections::read(data)?;
    let strings = move |off: u32| sections.string(data, off);
    let (types, type_len) = (sections.types, sections.types_len);

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
        let len = extra + vlen * member;
        let trailing = data
            .get(off..off + len)
            .ok_or(BtfEnumError::Truncated(off))?;
        let t = RawType {
            kind,
            name: strings(name_off),
            vlen,
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
/// probe reads exists: what [`crate::Requirement`]s are checked against. It keeps the BTF
/// bytes and, per type, only where the type is in them, and is kept only while probes are
/// checked.
pub struct TypeIndex {
    data: Vec<u8>,
    sections: Sections,
    /// Per type id (index 0 is `void`): the offset of the type's header in `data`.
    types: Vec<u32>,
    /// The ids of the named types, sorted by name.
    names: Vec<u32>,
}

/// A type's header, read from the BTF bytes.
struct Header {
    kind: u32,
    name_off: u32,
    vlen: usize,
    size_or_type: u32,
    /// Where its members (or other trailing data) start.
    trailing: usize,
}

impl TypeIndex {
    /// The index of the kernel's types: from `btf.path` when set, else the kernel's own BTF
    /// (see [`Source::current`]).
    pub fn kernel() -> Result<TypeIndex, KernelBtfError> {
        TypeIndex::from_source(&Source::current()?)
    }

    /// The index of the kernel's types read from `source`.
    pub fn from_source(source: &Source) -> Result<TypeIndex, KernelBtfError> {
        TypeIndex::parse(source.read()?).map_err(|e| source.error(e.to_string()))
    }

    pub fn parse(data: Vec<u8>) -> Result<TypeIndex, BtfEnumError> {
        let mut types = vec![0];
        let mut names = Vec::new();
        walk(&data, |t| {
            if !t.name.is_empty() {
                names.push(types.len() as u32);
            }
            types.push((t.offset - 12) as u32);
            Ok(Walk::Next)
        })?;
        let mut index = TypeIndex {
            sections: Sections::read(&data)?,
            data,
            types,
            names: Vec::new(),
        };
        names.sort_by(|a, b| index.name(*a).cmp(index.name(*b)));
        index.names = names;
        Ok(index)
    }

    fn u32_at(&self, off: usize) -> u32 {
        self.data
            .get(off..off + 4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn header(&self, id: u32) -> Option<Header> {
        let off = *self.types.get(id as usize).filter(|_| id != 0)? as usize;
        let info = self.u32_at(off + 4);
        Some(Header {
            kind: (info >> 24) & 0x1f,
            name_off: self.u32_at(off),
            vlen: (info & 0xffff) as usize,
            size_or_type: self.u32_at(off + 8),
            trailing: off + 12,
        })
    }

    fn string(&self, off: u32) -> &str {
        self.sections.string(&self.data, off)
    }

    fn name(&self, id: u32) -> &str {
        self.header(id).map_or("", |h| self.string(h.name_off))
    }

    fn id(&self, kind: u32, name: &str) -> Option<u32> {
        let start = self.names.partition_point(|id| self.name(*id) < name);
        self.names[start..]
            .iter()
            .take_while(|id| self.name(**id) == name)
            .copied()
            .find(|id| self.header(*id).is_some_and(|h| h.kind == kind))
    }

    /// Follows typedefs, qualifiers and (when `through_pointers`) pointers to the type they
    /// name.
    fn resolve(&self, mut id: u32, through_pointers: bool) -> u32 {
        for _ in 0..32 {
            let Some(h) = self.header(id) else {
                return 0;
            };
            match h.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = h.size_or_type
                }
                KIND_PTR if through_pointers => id = h.size_or_type,
                _ => return id,
            }
        }
        0
    }

    /// The type id of member `name` of struct or union `id`, looking into its anonymous
    /// members as C does.
    fn member(&self, id: u32, name: &str) -> Option<u32> {
        let h = self.header(id)?;
        if h.kind != KIND_STRUCT && h.kind != KIND_UNION {
            return None;
        }
        for i in 0..h.vlen {
            let m = h.trailing + i * 12;
            let (member, ty) = (self.string(self.u32_at(m)), self.u32_at(m + 4));
            if member == name {
                return Some(ty);
            }
            if member.is_empty() {
                if let Some(found) = self.member(self.resolve(ty, false), name) {
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
        [(KIND_ENUM, 8), (KIND_ENUM64, 12)]
            .iter()
            .filter_map(|(kind, size)| Some((self.header(self.id(*kind, name)?)?, *size)))
            .any(|(h, size)| {
                (0..h.vlen).any(|i| self.string(self.u32_at(h.trailing + i * size)) == constant)
            })
    }

    /// The number of arguments tracepoint `name`'s programs get (`btf_trace_<name>` is a
    /// pointer to a func proto whose first parameter is the context), `None` when the
    /// tracepoint is not in the BTF.
    pub fn tracepoint_args(&self, name: &str) -> Option<usize> {
        let id = self.id(KIND_TYPEDEF, &format!("btf_trace_{name}"))?;
        let proto = self.header(self.resolve(id, true))?;
        (proto.kind == KIND_FUNC_PROTO).then(|| proto.vlen.saturating_sub(1))
    }
}

/// Names of `enum skb_drop_reason` of the running kernel (from `btf.path` when set, see
/// [`Source::current`]), without the `SKB_DROP_REASON_` prefix (`NETFILTER_DROP`,
/// `NO_SOCKET`, ...).
pub fn drop_reasons() -> Result<HashMap<u32, String>, KernelBtfError> {
    drop_reasons_from(&Source::current()?)
}

/// As [`drop_reasons`], from the BTF at `source`.
pub fn drop_reasons_from(source: &Source) -> Result<HashMap<u32, String>, KernelBtfError> {
    let mut names = parse_enum(&source.read()?, "skb_drop_reason", "SKB_DROP_REASON_")
        .map_err(|e| source.error(e.to_string()))?;
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

    /// A file in the temp dir, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, data: &[u8]) -> TempFile {
            let path =
                std::env::temp_dir().join(format!("sonde-btf-test-{}-{name}", std::process::id()));
            std::fs::write(&path, data).unwrap();
            TempFile(path)
        }

        fn source(&self) -> Source {
            Source::File(self.0.clone())
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn a_btf_file_is_checked_whole_and_named_in_errors() {
        let good = btf_with_enum("skb_drop_reason", &[("SKB_DROP_REASON_MINE", 7)]);
        assert_eq!(check_btf_file(&good), Ok(()));
        let cases: &[(&str, &[u8], &str)] = &[
            ("empty", b"", "empty"),
            ("xz", b"\xfd7zXZ\0rest", "xz-compressed"),
            ("gz", b"\x1f\x8b\x08rest", "gzip-compressed"),
            ("elf", b"\x7fELF\x02\x01\x01", "ELF"),
            ("text", b"hello world\n", "magic"),
            ("short", &good[..10], "bad header"),
            ("truncated", &good[..good.len() - 20], "not a BTF file"),
        ];
        for (name, data, why) in cases {
            let file = TempFile::new(name, data);
            let e = KernelBtf::from_source(file.source())
                .err()
                .unwrap()
                .to_string();
            let prefix = format!("btf.path: {}: not a BTF file", file.0.display());
            assert!(e.starts_with(&prefix), "{name}: {e}");
            assert!(e.contains(why), "{name}: {e}");
            assert!(!e.contains('\n'), "{name}: {e}");
            // The checks read the same way.
            let e = TypeIndex::from_source(&file.source())
                .err()
                .unwrap()
                .to_string();
            assert!(e.starts_with(&prefix), "{name}: {e}");
        }
        // A type whose members run past the end of the type section.
        let mut cut = good.clone();
        let types_len = u32::from_le_bytes(cut[12..16].try_into().unwrap());
        cut[12..16].copy_from_slice(&(types_len - 4).to_le_bytes());
        assert!(check_btf_file(&cut).is_err());

        let missing = Source::File(PathBuf::from("/nonexistent/vmlinux.btf"));
        assert_eq!(
            KernelBtf::from_source(missing).err().unwrap().to_string(),
            "btf.path: /nonexistent/vmlinux.btf: cannot read: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn drop_reasons_come_from_the_file() {
        let file = TempFile::new(
            "reasons",
            &btf_with_enum(
                "skb_drop_reason",
                &[("SKB_CONSUMED", 1), ("SKB_DROP_REASON_FROM_A_FILE", 2)],
            ),
        );
        let names = drop_reasons_from(&file.source()).unwrap();
        assert_eq!(names[&1], "CONSUMED");
        assert_eq!(names[&2], "FROM_A_FILE");
        let other = TempFile::new("no-reasons", &btf_with_enum("other", &[("A", 1)]));
        let e = drop_reasons_from(&other.source()).unwrap_err().to_string();
        assert!(
            e.starts_with("btf.path: ") && e.contains("skb_drop_reason"),
            "{e}"
        );
    }

    #[test]
    fn a_copy_of_the_kernels_btf_gives_the_same_types() {
        let copy = TempFile::new("vmlinux", &std::fs::read(VMLINUX).unwrap());
        let btf = KernelBtf::from_source(copy.source()).unwrap();
        assert_eq!(btf.source(), &copy.source());
        // This kernel has its own BTF: tp_btf attach points are looked up there.
        assert!(btf.has_own());
        assert!(btf.own().unwrap().is_ok());
        let index = TypeIndex::from_source(&copy.source()).unwrap();
        assert!(index.has_field("sk_buff", "dev"));
        assert_eq!(
            drop_reasons_from(&copy.source()).unwrap(),
            drop_reasons_from(&Source::Kernel).unwrap()
        );
    }

    #[test]
    fn type_index_finds_members_and_enum_constants() {
        let data = btf_with_enum("colour", &[("RED", 1)]);
        let index = TypeIndex::parse(data).unwrap();
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
