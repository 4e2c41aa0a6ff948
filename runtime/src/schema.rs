//! The one declaration of a probe's event. A probe's file (`probes/<probe>.rs`) declares its
//! event with [`probe_event!`]: each field once, with its name in the JSON event (and in
//! scripts), its name in the WIT record and its offset in the packed layout. Every form of the
//! event derives from that declaration:
//!
//! - the JSON event and the script map ([`ProbeEvent::visit`], read by `event.rs` and
//!   `script/event.rs`);
//! - the typed WIT record a plugin receives ([`ProbeEvent::typed`]: the generated code names
//!   every field of the WIT record, so a record that drifts from the declaration does not
//!   compile);
//! - the packed record ([`ProbeEvent::pack`], at the declared offsets);
//! - [`ProbeEvent::FIELDS`], the table the drift tests compare with `wit/PACKED.md`, the WIT
//!   records and the Rust SDK's decoders.
//!
//! How a field is written in each form follows from its Rust type ([`Value`]): a `text` for
//! strings, `u64` nanoseconds for durations (seconds in JSON), a sentinel for "none" in the
//! packed layout.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use rhai::Dynamic;
use serde::ser::SerializeMap;

use crate::plugin_host::delivery::{Symbols, NONE};
use crate::script::event::EventConverter;

/// A symbolised kernel stack, innermost frame first, shared by the events of one stack id.
pub type Stack = Arc<[Arc<str>]>;

/// One field of a probe's event, as [`probe_event!`] declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    /// Its key in the JSON event and the script map.
    pub json: &'static str,
    /// Its name in the WIT record (as wit-bindgen spells it in Rust: `duration_ns`).
    pub wit: &'static str,
    /// Its type in the WIT record (`text`, `option<u64>`, ...).
    pub wit_type: &'static str,
    /// Its offset and size in the packed record.
    pub offset: usize,
    pub size: usize,
}

/// A Rust type an event field may have, and how each form writes it.
pub trait Value {
    /// The field's type in the WIT record.
    const WIT_TYPE: &'static str;
    /// Bytes in the packed record.
    const SIZE: usize;
    /// The field in the WIT record.
    type Wit;
    /// Writes `key: value` to a JSON object; nothing when the value is none.
    fn json<M: SerializeMap>(&self, key: &str, map: &mut M) -> Result<(), M::Error>;
    /// The script value; `None` when the value is none (the key is absent).
    fn script(&self, c: &mut EventConverter) -> Option<Dynamic>;
    fn wit(&self, sym: &mut Symbols) -> Self::Wit;
    /// Writes the packed form into `out` (`SIZE` bytes).
    fn pack(&self, sym: &mut Symbols, out: &mut [u8]);
}

fn put(out: &mut [u8], bytes: &[u8]) {
    out[..bytes.len()].copy_from_slice(bytes);
}

macro_rules! text_value {
    ($ty:ty, $script:ident) => {
        impl Value for $ty {
            const WIT_TYPE: &'static str = "text";
            const SIZE: usize = 4;
            type Wit = u32;
            fn json<M: SerializeMap>(&self, key: &str, map: &mut M) -> Result<(), M::Error> {
                map.serialize_entry(key, &**self)
            }
            fn script(&self, c: &mut EventConverter) -> Option<Dynamic> {
                Some(c.$script(self))
            }
            fn wit(&self, sym: &mut Symbols) -> u32 {
                sym.text(self)
            }
            fn pack(&self, sym: &mut Symbols, out: &mut [u8]) {
                put(out, &sym.text(self).to_le_bytes());
            }
        }

        impl Value for Option<$ty> {
            const WIT_TYPE: &'static str = "option<text>";
            const SIZE: usize = 4;
            type Wit = Option<u32>;
            fn json<M: SerializeMap>(&self, key: &str, map: &mut M) -> Result<(), M::Error> {
                match self {
                    Some(s) => map.serialize_entry(key, &**s),
                    None => Ok(()),
                }
            }
            fn script(&self, c: &mut EventConverter) -> Option<Dynamic> {
                self.as_ref().map(|s| c.$script(s))
            }
            fn wit(&self, sym: &mut Symbols) -> Option<u32> {
                self.as_ref().map(|s| sym.text(s))
            }
            fn pack(&self, sym: &mut Symbols, out: &mut [u8]) {
                let i = self.as_ref().map_or(NONE, |s| sym.text(s));
                put(out, &i.to_le_bytes());
            }
        }
    };
}

text_value!(&'static str, static_str);
text_value!(Arc<str>, shared);
text_value!(String, string);
text_value!(Cow<'static, str>, cow);

macro_rules! int_value {
    ($ty:ty, $wit:literal) => {
        impl Value for $ty {
            const WIT_TYPE: &'static str = $wit;
            const SIZE: usize = std::mem::size_of::<$ty>();
            type Wit = $ty;
            fn json<M: SerializeMap>(&self, key: &str, map: &mut M) -> Result<(), M::Error> {
                map.serialize_entry(key, self)
            }
            fn script(&self, _: &mut EventConverter) -> Option<Dynamic> {
                // Every count and size an event has is far below i64::MAX.
                Some(Dynamic::from_int(*self as i64))
            }
            fn wit(&self, _: &mut Symbols) -> $ty {
                *self
            }
            fn pack(&self, _: &mut Symbols, out: &mut [u8]) {
                put(out, &self.to_le_bytes());
            }
        }
    };
}

int_value!(u8, "u8");
int_value!(u16, "u16");
int_value!(u32, "u32");
int_value!(u64, "u64");
int_value!(i32, "s32");

/// An optional number, and the packed form's stand-in for none.
macro_rules! optional_value {
    ($ty:ty, $wit:literal, $packed:ty, $none:expr, $script:expr) => {
        impl Value for Option<$ty> {
            const WIT_TYPE: &'static str = $wit;
            const SIZE: usize = std::mem::size_of::<$packed>();
            type Wit = Option<$ty>;
            fn json<M: SerializeMap>(&self, key: &str, map: &mut M) -> Result<(), M::Error> {
                match self {
                    Some(v) => map.serialize_entry(key, v),
                    None => Ok(()),
                }
            }
            fn script(&self, _: &mut EventConverter) -> Option<Dynamic> {
                self.map($script)
            }
            fn wit(&self, _: &mut Symbols) -> Option<$ty> {
                *self
            }
            fn pack(&self, _: &mut Symbols, out: &mut [u8]) {
                let v: $packed = self.map_or($none, |v| v as $packed);
                put(out, &v.to_le_bytes());
            }
        }
    };
}

// A DNS id in the low 16 bits of a u32, 0xffffffff for none.
optional_value!(u16, "option<u16>", u32, NONE, |v| Dynamic::from_int(
    v.into()
));
optional_value!(u64, "option<u64>", u64, u64::MAX, |v| Dynamic::from_int(
    v as i64
));
// A block status: 0 is success, what none is in the typed record.
optional_value!(i32, "option<s32>", i32, 0, |v| Dynamic::from_int(v.into()));
optional_value!(f64, "option<f64>", f64, f64::NAN, Dynamic::from_float);

/// A duration: seconds (a float) in JSON and scripts, nanoseconds in WIT and packed.
impl Value for Duration {
    const WIT_TYPE: &'static str = "u64";
    const SIZE: usize = 8;
    type Wit = u64;
    fn json<M: SerializeMap>(&self, key: &str, map: &mut M) -> Result<(), M::Error> {
        map.serialize_entry(key, &self.as_secs_f64())
    }
    fn script(&self, _: &mut EventConverter) -> Option<Dynamic> {
        Some(Dynamic::from_float(self.as_secs_f64()))
    }
    fn wit(&self, _: &mut Symbols) -> u64 {
        self.as_nanos() as u64
    }
    fn pack(&self, _: &mut Symbols, out: &mut [u8]) {
        put(out, &(self.as_nanos() as u64).to_le_bytes());
    }
}

impl Value for Option<Duration> {
    const WIT_TYPE: &'static str = "option<u64>";
    const SIZE: usize = 8;
    type Wit = Option<u64>;
    fn json<M: SerializeMap>(&self, key: &str, map: &mut M) -> Result<(), M::Error> {
        match self {
            Some(d) => d.json(key, map),
            None => Ok(()),
        }
    }
    fn script(&self, c: &mut EventConverter) -> Option<Dynamic> {
        self.and_then(|d| d.script(c))
    }
    fn wit(&self, _: &mut Symbols) -> Option<u64> {
        self.map(|d| d.as_nanos() as u64)
    }
    fn pack(&self, _: &mut Symbols, out: &mut [u8]) {
        let ns = self.map_or(u64::MAX, |d| d.as_nanos() as u64);
        put(out, &ns.to_le_bytes());
    }
}

/// A kernel stack: an array of frames in JSON and scripts, an index into the batch's stacks
/// in WIT and packed.
impl Value for Option<Stack> {
    const WIT_TYPE: &'static str = "option<u32>";
    const SIZE: usize = 4;
    type Wit = Option<u32>;
    fn json<M: SerializeMap>(&self, key: &str, map: &mut M) -> Result<(), M::Error> {
        match self {
            Some(stack) => {
                let frames: Vec<&str> = stack.iter().map(|f| &**f).collect();
                map.serialize_entry(key, &frames)
            }
            None => Ok(()),
        }
    }
    fn script(&self, c: &mut EventConverter) -> Option<Dynamic> {
        self.as_ref().map(|s| c.stack(s))
    }
    fn wit(&self, sym: &mut Symbols) -> Option<u32> {
        self.as_ref().map(|s| sym.stack(s))
    }
    fn pack(&self, sym: &mut Symbols, out: &mut [u8]) {
        let i = self.as_ref().map_or(NONE, |s| sym.stack(s));
        put(out, &i.to_le_bytes());
    }
}

/// Walks an event's own fields (after the flow's), in their declared order.
pub trait Visit {
    fn field<V: Value>(&mut self, spec: &FieldSpec, value: &V);
}

/// What [`probe_event!`] implements for a probe's event.
pub trait ProbeEvent {
    /// The probe's name: the event's `type`.
    const PROBE: &'static str;
    /// Its own fields, in declared order.
    const FIELDS: &'static [FieldSpec];
    /// Bytes of its packed record.
    const RECORD_SIZE: usize;
    /// Its WIT record.
    type Typed;
    /// Its 5-tuple, for events that have one.
    fn flow(&self) -> Option<&crate::event::Flow>;
    fn visit(&self, v: &mut impl Visit);
    /// Its typed WIT record, the envelope and flow from `common`.
    fn typed(
        &self,
        common: &crate::plugin_host::delivery::Common,
        sym: &mut Symbols,
    ) -> Self::Typed;
    /// Writes its own fields into a packed record (bytes 80 onwards).
    fn pack(&self, sym: &mut Symbols, record: &mut [u8]);
}

/// Declares a probe's event: the struct, and its [`ProbeEvent`] implementation. Each field
/// reads `name: Type => "json_key", wit_field @ packed_offset`; `, flow` after the record size
/// gives the event a 5-tuple (`pub flow: Flow`, the JSON's flow fields and peer, the WIT
/// record's `flow`).
///
/// ```ignore
/// probe_event! {
///     /// `tcp_reset`: a TCP reset sent or received.
///     pub struct TcpReset: "tcp_reset", wit TcpReset, record 96, flow {
///         /// `sent` or `received`.
///         pub direction: &'static str => "direction", direction @ 80,
///         pub state: Option<&'static str> => "state", state @ 84,
///     }
/// }
/// ```
#[macro_export]
macro_rules! probe_event {
    (
        $(#[$meta:meta])*
        pub struct $name:ident : $probe:literal, wit $wit_ty:ident, record $size:literal $(, $flow:ident)? {
            $(
                $(#[$field_meta:meta])*
                pub $field:ident : $ty:ty => $json:literal, $wit:ident @ $offset:literal
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name {
            $(pub $flow: $crate::event::Flow,)?
            $(
                $(#[$field_meta])*
                pub $field: $ty,
            )*
        }

        impl $crate::schema::ProbeEvent for $name {
            const PROBE: &'static str = $probe;
            const FIELDS: &'static [$crate::schema::FieldSpec] = &[$(
                $crate::schema::FieldSpec {
                    json: $json,
                    wit: stringify!($wit),
                    wit_type: <$ty as $crate::schema::Value>::WIT_TYPE,
                    offset: $offset,
                    size: <$ty as $crate::schema::Value>::SIZE,
                },
            )*];
            const RECORD_SIZE: usize = $size;
            type Typed = $crate::plugin_host::sonde::plugin::types::$wit_ty;

            fn flow(&self) -> Option<&$crate::event::Flow> {
                $(return Some(&self.$flow);)?
                #[allow(unreachable_code)]
                None
            }

            #[allow(unused_variables, unused_mut, unused_assignments)]
            fn visit(&self, v: &mut impl $crate::schema::Visit) {
                let mut i = 0;
                $(
                    v.field(&Self::FIELDS[i], &self.$field);
                    i += 1;
                )*
            }

            fn typed(
                &self,
                common: &$crate::plugin_host::delivery::Common,
                sym: &mut $crate::plugin_host::delivery::Symbols,
            ) -> Self::Typed {
                $crate::plugin_host::sonde::plugin::types::$wit_ty {
                    envelope: common.envelope(),
                    extra: Vec::new(),
                    $($flow: common.flow(),)?
                    $($wit: $crate::schema::Value::wit(&self.$field, sym),)*
                }
            }

            #[allow(unused_variables)]
            fn pack(&self, sym: &mut $crate::plugin_host::delivery::Symbols, record: &mut [u8]) {
                $(
                    $crate::schema::Value::pack(
                        &self.$field,
                        sym,
                        &mut record[$offset..$offset + <$ty as $crate::schema::Value>::SIZE],
                    );
                )*
            }
        }
    };
}

/// Declares the catalogue's events: the [`Kind`](crate::event::Kind) of an event, the probes a
/// plugin can subscribe to ([`EventProbe`](crate::probes::EventProbe)) and the typed batches
/// they are delivered in ([`Delivery`](crate::plugin_host::delivery::Delivery)), one line per
/// probe with events: `Variant(path::to::Event, "kebab-name", BatchRecord)`.
#[macro_export]
macro_rules! catalogue_events {
    ($($variant:ident($event:path, $kebab:literal, $batch:ident)),* $(,)?) => {
        /// The type-specific part of an event: a probe's, or one a plugin derived.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Kind {
            $($variant($event),)*
            Derived($crate::event::Derived),
        }

        impl Kind {
            /// The `type` field: the probe's name, or the plugin's event type.
            pub fn type_name(&self) -> &str {
                match self {
                    $(Kind::$variant(_) => <$event as $crate::schema::ProbeEvent>::PROBE,)*
                    Kind::Derived(d) => &d.type_name,
                }
            }

            /// The event's 5-tuple, for probes whose events have one.
            pub fn flow(&self) -> Option<&$crate::event::Flow> {
                match self {
                    $(Kind::$variant(e) => $crate::schema::ProbeEvent::flow(e),)*
                    Kind::Derived(_) => None,
                }
            }

            /// Walks a probe event's own fields (nothing for a derived event).
            pub fn visit(&self, v: &mut impl $crate::schema::Visit) {
                match self {
                    $(Kind::$variant(e) => $crate::schema::ProbeEvent::visit(e, v),)*
                    Kind::Derived(_) => {}
                }
            }

            /// The probe that made it; `None` for a derived event.
            pub fn probe(&self) -> Option<EventProbe> {
                match self {
                    $(Kind::$variant(_) => Some(EventProbe::$variant),)*
                    Kind::Derived(_) => None,
                }
            }

            /// Writes a probe event's own fields into a packed record.
            pub fn pack(
                &self,
                sym: &mut $crate::plugin_host::delivery::Symbols,
                record: &mut [u8],
            ) {
                match self {
                    $(Kind::$variant(e) => $crate::schema::ProbeEvent::pack(e, sym, record),)*
                    Kind::Derived(_) => {}
                }
            }
        }

        /// The probes whose events plugins and scripts can subscribe to, in the order batches
        /// are handed over.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventProbe {
            $($variant,)*
        }

        impl EventProbe {
            pub const ALL: &'static [EventProbe] = &[$(EventProbe::$variant,)*];

            pub fn name(self) -> &'static str {
                match self {
                    $(EventProbe::$variant => <$event as $crate::schema::ProbeEvent>::PROBE,)*
                }
            }

            /// The interface a `sonde:plugin@0.2` component exports to take this probe's
            /// typed batches.
            pub fn interface(self) -> &'static str {
                match self {
                    $(EventProbe::$variant => concat!($kebab, "-handler"),)*
                }
            }

            /// What its typed calls are counted as (`sonde_plugin_call_duration_seconds{call}`):
            /// the handler's name in `sonde:plugin@0.1.0`, kept for the dashboards.
            pub fn handler(self) -> &'static str {
                match self {
                    $(EventProbe::$variant => concat!("on-", $kebab),)*
                }
            }

            /// Bytes of this probe's packed records (wit/PACKED.md).
            pub fn record_size(self) -> usize {
                match self {
                    $(EventProbe::$variant => <$event as $crate::schema::ProbeEvent>::RECORD_SIZE,)*
                }
            }

            /// The fields of its events (see [`crate::schema::probe_event`]).
            pub fn fields(self) -> &'static [$crate::schema::FieldSpec] {
                match self {
                    $(EventProbe::$variant => <$event as $crate::schema::ProbeEvent>::FIELDS,)*
                }
            }

            /// Its place in [`EventProbe::ALL`].
            pub fn index(self) -> usize {
                self as usize
            }
        }

        /// One call's worth of events of one probe, in the plugin's delivery.
        pub enum Delivery {
            $($variant($crate::plugin_host::sonde::plugin::types::$batch),)*
            Packed($crate::plugin_host::sonde::plugin::types::PackedBatch),
        }

        impl Delivery {
            pub fn len(&self) -> usize {
                match self {
                    $(Delivery::$variant(b) => b.events.len(),)*
                    Delivery::Packed(b) => b.count as usize,
                }
            }

            pub fn is_empty(&self) -> bool {
                self.len() == 0
            }

            /// A typed batch of `probe`'s events (the others in `events` are skipped).
            pub fn typed<'a>(
                probe: EventProbe,
                events: impl Iterator<Item = &'a $crate::event::Event>,
                sym: &mut $crate::plugin_host::delivery::Symbols,
            ) -> Delivery {
                use $crate::plugin_host::delivery::Common;
                use $crate::plugin_host::sonde::plugin::types as wit;
                use $crate::schema::ProbeEvent;
                sym.reset();
                let mut events = events.peekable();
                let node = events
                    .peek()
                    .map_or_else(String::new, |e| e.node.to_string());
                match probe {
                    $(EventProbe::$variant => {
                        let events = events
                            .filter_map(|e| match &e.kind {
                                Kind::$variant(x) => {
                                    let common = Common::new(e, x.flow(), sym);
                                    Some(x.typed(&common, sym))
                                }
                                _ => None,
                            })
                            .collect();
                        Delivery::$variant(wit::$batch {
                            node,
                            events,
                            symbols: sym.finish(),
                        })
                    })*
                }
            }

            /// Calls the typed handler in `handlers` (by [`EventProbe::index`]) that takes
            /// this batch; `packed` takes a packed one. A handler the component lacks is
            /// skipped.
            pub async fn call(
                &self,
                handlers: &[Option<wasmtime::component::Func>],
                packed: Option<&wasmtime::component::Func>,
                store: &mut wasmtime::Store<$crate::plugin_host::HostState>,
            ) -> wasmtime::Result<()> {
                use $crate::plugin_host::world::call_handle;
                match self {
                    $(Delivery::$variant(b) => {
                        call_handle(handlers[EventProbe::$variant.index()].as_ref(), store, b).await
                    })*
                    Delivery::Packed(b) => call_handle(packed, store, b).await,
                }
            }

            /// Checks that a component's handler of `probe` has the type this host's WIT
            /// gives it.
            pub fn check_handler(
                probe: EventProbe,
                func: &wasmtime::component::Func,
                store: &wasmtime::Store<$crate::plugin_host::HostState>,
            ) -> wasmtime::Result<()> {
                use $crate::plugin_host::sonde::plugin::types as wit;
                match probe {
                    $(EventProbe::$variant => {
                        func.typed::<(&wit::$batch,), ()>(store)?;
                    })*
                }
                Ok(())
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use crate::probes::EventProbe;

    const PACKED: &str = include_str!("../../wit/PACKED.md");
    const WIT: &str = include_str!("../../wit/plugin.wit");
    const README: &str = include_str!("../../README.md");

    fn kebab(wit: &str) -> String {
        wit.replace('_', "-")
    }

    /// The rows of PACKED.md's per-probe table for `probe`: (offset, size, field), with
    /// field "" for reserved bytes.
    fn packed_rows(probe: &str) -> Vec<(usize, usize, String)> {
        let mut rows = Vec::new();
        let mut inside = false;
        for line in PACKED.lines() {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            if cells.len() < 5 || cells[2].parse::<usize>().is_err() {
                continue;
            }
            if !cells[1].is_empty() {
                inside = cells[1] == format!("`{probe}`");
            }
            if !inside {
                continue;
            }
            let field = match cells[4].strip_prefix('`') {
                Some(rest) => rest.split('`').next().unwrap_or_default().to_string(),
                None => String::new(),
            };
            rows.push((cells[2].parse().unwrap(), cells[3].parse().unwrap(), field));
        }
        rows
    }

    /// The fields of WIT record `name` after `envelope` and `flow` and before `extra`, as
    /// (name, type).
    fn wit_record(name: &str) -> Vec<(String, String)> {
        let start = WIT
            .find(&format!("record {name} {{"))
            .unwrap_or_else(|| panic!("wit/plugin.wit has no record {name}"));
        let body = &WIT[start..start + WIT[start..].find('}').unwrap()];
        body.lines()
            .skip(1)
            .map(str::trim)
            .filter(|l| !l.starts_with("//") && !l.is_empty())
            .filter_map(|l| l.trim_end_matches(',').split_once(':'))
            .map(|(n, t)| {
                (
                    n.trim().trim_start_matches('%').to_string(),
                    t.trim().to_string(),
                )
            })
            .filter(|(n, _)| !["envelope", "flow", "extra"].contains(&n.as_str()))
            .collect()
    }

    /// Every form of every probe's event follows its declaration: the packed layout in
    /// wit/PACKED.md (offsets, sizes, record size), the WIT record (names, order, types), and
    /// the README's Probes table (each JSON field named in the probe's row).
    #[test]
    fn every_form_follows_the_declaration() {
        for &probe in EventProbe::ALL {
            let name = probe.name();
            let fields = probe.fields();
            let rows = packed_rows(name);
            let declared: Vec<(usize, usize, String)> = fields
                .iter()
                .map(|f| (f.offset, f.size, kebab(f.wit)))
                .collect();
            let documented: Vec<(usize, usize, String)> =
                rows.iter().filter(|r| !r.2.is_empty()).cloned().collect();
            let mut sorted = declared.clone();
            sorted.sort();
            assert_eq!(
                documented, sorted,
                "{name}: wit/PACKED.md vs its declaration"
            );
            let end = rows.iter().map(|(o, s, _)| o + s).max().unwrap_or(80);
            assert_eq!(
                end,
                probe.record_size(),
                "{name}: record size in wit/PACKED.md"
            );
            for (o, s, f) in &declared {
                assert!(
                    o + s <= probe.record_size() && *o >= 80,
                    "{name}.{f} out of its record"
                );
            }
            let wit: Vec<(String, String)> = fields
                .iter()
                .map(|f| (kebab(f.wit), f.wit_type.to_string()))
                .collect();
            let interface = probe.interface();
            let record = interface.strip_suffix("-handler").unwrap();
            assert_eq!(
                wit_record(record),
                wit,
                "{name}: wit/plugin.wit vs its declaration"
            );
            let row = README
                .lines()
                .find(|l| l.starts_with(&format!("| `{name}`")))
                .unwrap_or_else(|| panic!("README.md's Probes table has no row for {name}"));
            for f in fields {
                assert!(
                    row.contains(&format!("`{}`", f.json)),
                    "README.md's row for {name} does not name its field `{}`",
                    f.json
                );
            }
        }
    }
}
