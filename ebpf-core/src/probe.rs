//! Loading, attaching, configuring and reading one probe of the catalogue.

use std::collections::HashMap;
use std::hash::Hash;
use std::os::fd::AsFd;

use aya::maps::Map;
use aya::maps::{Array, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf, StackTraceMap};
use aya::programs::{BtfTracePoint, FEntry, FExit, KProbe, ProgramError, SchedClassifier};
use aya::{Ebpf, EbpfError, EbpfLoader, Pod};
use aya_obj::btf::BtfKind;

use crate::btf::{KernelBtf, TypeIndex};
use crate::kprobe::KprobeError;
use crate::record::{
    KernelConfig, KernelParams, Stats, F_EVENTS, F_STACK, STAT_LOST, STAT_SUPPRESSED,
};
use crate::tc::{
    kernel_has_tcx, TcAttach, TcMode, TcTarget, Watched, WATCHED_LOW_MAP, WATCHED_MAP,
};
use crate::{
    Condition, FnAttach, FnMode, Hook, HookPoint, ProbeSpec, Requirement, Used, CATALOGUE,
};

const CONFIG_MAP: &str = "probe_config";
const STATS_MAP: &str = "probe_stats";
const EVENTS_MAP: &str = "events";
const PARAMS_MAP: &str = "probe_params";
const NS_BUCKETS_MAP: &str = "ns_buckets";
/// A probe's in-kernel table of flows (tcp_rtt), sized from [`ProbeSettings::table_size`].
pub const TABLE_MAP: &str = "flows";

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("tracepoint {category}/{tracepoint} is not in this kernel (no btf_trace_{tracepoint} in its BTF)")]
    MissingHook {
        category: &'static str,
        tracepoint: &'static str,
    },
    #[error(
        "attach: tcx needs TCX links (Linux 6.6 or later) and this kernel's BTF has no struct \
         tcx_link: use attach: auto or clsact (a clsact qdisc and bpf filters)"
    )]
    NoTcx,
    #[error("cannot attach a kprobe to {function}: {reason}")]
    Kprobe {
        function: String,
        #[source]
        reason: crate::kprobe::KprobeError,
    },
    #[error("cannot attach an {kind} program to {function}: {reason}")]
    Trampoline {
        kind: &'static str,
        function: &'static str,
        reason: String,
    },
    #[error(
        "its kernel-function hooks attach neither as fentry ({fentry}) nor as kprobes ({kprobe})"
    )]
    FnModes { fentry: String, kprobe: String },
    #[error("{0}")]
    Btf(String),
    #[error(
        "this kernel has no BTF of its own ({}): tp_btf and fentry programs need it; btf.path gives \
         CO-RE relocations only",
        crate::btf::VMLINUX
    )]
    NoKernelBtf,
    #[error("this kernel's BTF has no {0}, which the probe reads")]
    MissingRequirement(crate::Requirement),
    #[error("permission denied loading eBPF: run as root or with CAP_BPF and CAP_PERFMON")]
    PermissionDenied,
    #[error("cannot load object: {0}")]
    Object(#[source] EbpfError),
    #[error("program {program} is missing from the object")]
    MissingProgram { program: &'static str },
    #[error(
        "program {program} was refused by the kernel: {}",
        one_line_reason(source)
    )]
    Program {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("ring buffer size {0} must be a power of two of at least 4096 bytes")]
    RingBufferSize(u32),
    #[error("this kernel has no {}", .0.what())]
    KernelLacks(BpfFeature),
    #[error(
        "tracepoint {tracepoint} passes {args} arguments on this kernel; the probe's programs \
         read at least {needed}"
    )]
    TracepointArgs {
        tracepoint: &'static str,
        args: usize,
        needed: usize,
    },
}

/// The gist of a program error on one line: for a verifier rejection, the verifier's last
/// complaint rather than its whole log.
fn one_line_reason(e: &ProgramError) -> String {
    if let ProgramError::LoadError {
        io_error,
        verifier_log,
    } = e
    {
        let log = verifier_log.to_string();
        let complaint = log.lines().map(str::trim).rfind(|l| {
            !l.is_empty()
                && !l.starts_with("verification time")
                && !l.starts_with("stack depth")
                && !l.starts_with("processed ")
        });
        return match complaint {
            Some(c) => format!("{io_error}; verifier: {c}"),
            None => io_error.to_string(),
        };
    }
    e.to_string().replace('\n', " ")
}

/// What the agent asks of a probe's kernel side; changes apply live through
/// [`LoadedProbe::configure`] except the ring buffer size, which needs a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSettings {
    /// Emit per-event records (counting always happens).
    pub events: bool,
    /// Events per second per CPU; 0 = unlimited.
    pub rate_per_cpu: u64,
    /// Token bucket depth.
    pub burst: u64,
    /// Events per second from one network namespace, in front of the per-CPU limit (one
    /// pod's flood does not silence the others); 0 = no such limit. Unused when
    /// `rate_per_cpu` is 0.
    pub rate_per_namespace: u64,
    /// Its token bucket depth.
    pub burst_per_namespace: u64,
    /// Collect kernel stacks (packet_drop).
    pub stack: bool,
    /// Ring buffer size in bytes, a power of two.
    pub ring_buffer_size: u32,
    /// Probe-specific values, written live to the probe's `probe_params` array when it has
    /// one (what each means is in `<probe>.h`, e.g. tcp_connect's slow threshold).
    pub params: [u64; 4],
    /// Entries of the probe's `flows` table, when it has one (0 = as compiled); a change
    /// needs a reload.
    pub table_size: u32,
    /// How TC programs are attached to interfaces (probes with TC hooks); a change needs a
    /// reload.
    pub tc_attach: TcAttach,
    /// How kernel-function hooks are attached (probes with fentry and kprobe forms); a change
    /// needs a reload.
    pub fn_attach: FnAttach,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        ProbeSettings {
            events: true,
            rate_per_cpu: 1000,
            burst: 1000,
            rate_per_namespace: 100,
            burst_per_namespace: 100,
            stack: false,
            ring_buffer_size: 1 << 20,
            params: [0; 4],
            table_size: 0,
            tc_attach: TcAttach::Auto,
            fn_attach: FnAttach::Auto,
        }
    }
}

impl ProbeSettings {
    fn kernel_config(&self) -> KernelConfig {
        let mut flags = 0;
        if self.events {
            flags |= F_EVENTS;
        }
        if self.stack {
            flags |= F_STACK;
        }
        KernelConfig {
            rate: self.rate_per_cpu,
            burst: self.burst.max(1),
            // Wake the agent when an eighth of the buffer is waiting; its poll timer drains
            // smaller amounts.
            wakeup_bytes: self.ring_buffer_size / 8,
            flags,
            ns_rate: self.rate_per_namespace,
            ns_burst: self.burst_per_namespace.max(1),
        }
    }
}

/// A probe loaded into the kernel and attached; dropping it detaches and unloads it.
pub struct LoadedProbe {
    pub spec: &'static ProbeSpec,
    /// The program loaded for each hook of the spec (an older one on an older kernel; none
    /// for a hook not used here).
    programs: Vec<Option<&'static str>>,
    /// For each kprobe hook, the name its function has on this kernel.
    functions: Vec<Option<&'static str>>,
    /// What the probe lacks on this kernel (an older program had to do, an optional hook is
    /// missing, a hook it needs here could not be attached).
    degraded: Option<String>,
    ebpf: Ebpf,
    ring_buffer_size: u32,
    table_size: u32,
    params: [u64; 4],
    tc_attach: TcAttach,
    /// How its TC programs are attached here (none without TC hooks).
    tc_mode: Option<TcMode>,
    fn_attach: FnAttach,
    /// How its kernel-function hooks are attached here (none without two forms of them).
    fn_mode: Option<FnMode>,
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> ProbeError {
    move |source| ProbeError::Map { map, source }
}

fn is_eperm(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            // EPERM only: the verifier refuses programs with EACCES.
            if io.raw_os_error() == Some(libc::EPERM) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// A program of the object, as its kind (`BtfTracePoint`, `SchedClassifier`).
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(ProbeError::MissingProgram { program: name })?
        .try_into()
        .map_err(|source| program_error(name, source))
}

/// An fentry (or with `ret`, fexit) program the kernel would not load or attach. Not a
/// permission error when it says EPERM: the agent loads its other programs, so it has the
/// right; such a kernel refuses BPF trampolines (as one under lockdown or without ftrace
/// direct calls does).
fn trampoline_error(ret: bool, function: &'static str, source: ProgramError) -> ProbeError {
    ProbeError::Trampoline {
        kind: if ret { "fexit" } else { "fentry" },
        function,
        reason: if is_eperm(&source) {
            "the kernel does not permit BPF trampolines here".to_string()
        } else {
            one_line_reason(&source)
        },
    }
}

fn program_error(program: &'static str, source: ProgramError) -> ProbeError {
    if is_eperm(&source) {
        ProbeError::PermissionDenied
    } else {
        ProbeError::Program { program, source }
    }
}

/// Checks that every hook of a probe exists in the kernel's BTF: its tracepoint (in the
/// kernel's own BTF, where the kernel looks for it), and returns how its TC hooks are attached
/// under `attach` (none without TC hooks; TCX links are looked up in the kernel's types, which
/// may come from `btf.path`): the error of `tcx` on a kernel without TCX links. On a kernel
/// without BTF of its own, a hook that needs it ([`HookPoint::needs_kernel_btf`]) is refused,
/// or left out when optional.
pub fn check_hooks(
    spec: &ProbeSpec,
    btf: &KernelBtf,
    attach: TcAttach,
) -> Result<Option<TcMode>, ProbeError> {
    let mut tc_mode = None;
    for hook in spec.hooks {
        if hook.point.needs_kernel_btf() && !btf.has_own() {
            if hook.optional.is_none() {
                return Err(ProbeError::NoKernelBtf);
            }
            continue;
        }
        match hook.point {
            HookPoint::TpBtf {
                category,
                tracepoint,
            } => {
                let name = format!("btf_trace_{tracepoint}");
                if hook.optional.is_none()
                    && kernel_own(btf)?
                        .id_by_type_name_kind(&name, BtfKind::Typedef)
                        .is_err()
                {
                    return Err(ProbeError::MissingHook {
                        category,
                        tracepoint,
                    });
                }
            }
            HookPoint::Tc(_) if tc_mode.is_none() => {
                tc_mode = Some(attach.resolve(kernel_has_tcx(btf.types()))?);
            }
            HookPoint::Tc(_) => {}
            // Whether one can be attached is for choosing the programs (`Kernel::kprobe`),
            // whether a trampoline can, for attaching them (`ProbeLoader::load`).
            HookPoint::Kprobe { .. } | HookPoint::Fentry { .. } => {}
        }
    }
    Ok(tc_mode)
}

/// The kernel's own BTF, for a hook that needs it.
fn kernel_own(btf: &KernelBtf) -> Result<&aya::Btf, ProbeError> {
    btf.own()
        .ok_or(ProbeError::NoKernelBtf)?
        .map_err(|e| ProbeError::Btf(e.to_string()))
}

/// Checks that the kernel has everything a probe's programs read ([`ProbeSpec::requires`]);
/// the error names the first thing missing.
pub fn check_requirements(spec: &ProbeSpec, types: &TypeIndex) -> Result<(), ProbeError> {
    for requirement in spec.requires.iter().flat_map(|group| group.iter()) {
        let present = match *requirement {
            Requirement::Field { ty, path } => types.has_field(ty, path),
            Requirement::EnumValue { ty, constant } => types.has_enum_constant(ty, constant),
            Requirement::TracepointArgs { tracepoint, args } => {
                types.tracepoint_args(tracepoint).is_some_and(|n| n >= args)
            }
        };
        if !present {
            return Err(ProbeError::MissingRequirement(*requirement));
        }
    }
    Ok(())
}

/// What `sonde probes` learns of a probe that loads ([`ProbeLoader::check`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// What the probe lacks on this kernel, when an older program had to do.
    pub degraded: Option<String>,
    /// How its TC programs would be attached (none without TC hooks).
    pub tc_mode: Option<TcMode>,
    /// How its kernel-function hooks attach (none without two forms of them).
    pub fn_mode: Option<FnMode>,
    /// The hooks it uses on this kernel.
    pub hooks: Vec<String>,
}

/// Loads probes with one aya loader for all of them: making an aya loader parses the kernel
/// BTF (about 6 ms and 12 MB each time), so a batch of probes shares one. Make the loader
/// before parsing the BTF the probes are loaded against ([`KernelBtf::load`]): the loader's
/// own parse is then let go before the second one is made, and the two never coexist.
pub struct ProbeLoader<'btf> {
    loader: EbpfLoader<'btf>,
    /// The kernel's types, read the first time a probe with requirements is checked.
    types: Option<Result<TypeIndex, crate::btf::KernelBtfError>>,
}

impl<'btf> ProbeLoader<'btf> {
    pub fn new() -> Self {
        let mut loader = EbpfLoader::new();
        loader.btf(None);
        ProbeLoader {
            loader,
            types: None,
        }
    }

    /// Loads the probe's programs into the kernel without attaching them: what
    /// `sonde probes` does to tell whether a probe can run here, with TC programs attached
    /// under `tc_attach` and kernel-function hooks under `fn_attach`: what the probe lacks on
    /// this kernel, if anything, and how its programs would be attached. A probe whose
    /// function hooks come in two forms is attached and let go: whether the kernel attaches
    /// a trampoline is only known by trying.
    pub fn check(
        &mut self,
        spec: &'static ProbeSpec,
        btf: &'btf KernelBtf,
        tc_attach: TcAttach,
        fn_attach: FnAttach,
    ) -> Result<Checked, ProbeError> {
        let settings = ProbeSettings {
            tc_attach,
            fn_attach,
            ..ProbeSettings::default()
        };
        let probe = if spec.has_fn_modes() {
            self.load(spec, btf, &settings)?
        } else {
            self.load_programs(spec, btf, &settings, None)?
        };
        Ok(Checked {
            hooks: probe.hook_names(),
            degraded: probe.degraded,
            tc_mode: probe.tc_mode,
            fn_mode: probe.fn_mode,
        })
    }

    /// Loads, configures and attaches the probe. A hook used only where the kernel needs it
    /// that fails to attach leaves the probe running without it, degraded. A probe whose
    /// kernel-function hooks come in two forms attaches them as `settings.fn_attach` says;
    /// under `auto`, as fentry where that attaches, else as kprobes.
    pub fn load(
        &mut self,
        spec: &'static ProbeSpec,
        btf: &'btf KernelBtf,
        settings: &ProbeSettings,
    ) -> Result<LoadedProbe, ProbeError> {
        if !spec.has_fn_modes() {
            return self.load_in(spec, btf, settings, None);
        }
        let mut failed: Option<ProbeError> = None;
        for &mode in settings.fn_attach.modes() {
            match self.load_in(spec, btf, settings, Some(mode)) {
                Ok(probe) => return Ok(probe),
                Err(e @ ProbeError::PermissionDenied) => return Err(e),
                Err(e) => {
                    failed = Some(match failed {
                        // The same reason both ways (no BTF of the kernel's own): said once.
                        Some(fentry) if fentry.to_string() == e.to_string() => e,
                        Some(fentry) => ProbeError::FnModes {
                            fentry: fentry.to_string(),
                            kprobe: e.to_string(),
                        },
                        None => e,
                    })
                }
            }
        }
        Err(failed.expect("every FnAttach has a mode"))
    }

    fn load_in(
        &mut self,
        spec: &'static ProbeSpec,
        btf: &'btf KernelBtf,
        settings: &ProbeSettings,
        mode: Option<FnMode>,
    ) -> Result<LoadedProbe, ProbeError> {
        let mut probe = self.load_programs(spec, btf, settings, mode)?;
        probe.configure(settings)?;
        // TC programs are attached per interface by the agent (see `LoadedProbe::tc_target`).
        let mut lacks = Vec::new();
        for (i, hook) in spec.hooks.iter().enumerate() {
            let Some(name) = probe.programs[i] else {
                continue;
            };
            match hook.point {
                HookPoint::TpBtf { .. } => {
                    program::<BtfTracePoint>(&mut probe.ebpf, name)?
                        .attach()
                        .map_err(|source| program_error(name, source))?;
                }
                HookPoint::Fentry { function, ret } => {
                    let attached = if ret {
                        program::<FExit>(&mut probe.ebpf, name)?.attach().map(drop)
                    } else {
                        program::<FEntry>(&mut probe.ebpf, name)?.attach().map(drop)
                    };
                    attached.map_err(|e| trampoline_error(ret, function, e))?;
                }
                HookPoint::Kprobe { .. } => {
                    let function = probe.functions[i].expect("a kprobe hook's function is chosen");
                    let attached = program::<KProbe>(&mut probe.ebpf, name)?.attach(function, 0);
                    match (attached, hook.used) {
                        (Ok(_), _) => {}
                        (Err(e), Used::Where { lacks: what, .. }) => {
                            probe.programs[i] = None;
                            lacks.push(format!(
                                "{what}: attaching a kprobe to {function} failed: {}",
                                one_line_reason(&e)
                            ));
                        }
                        (Err(source), Used::Always | Used::Attach(_)) => {
                            return Err(program_error(name, source))
                        }
                    }
                }
                HookPoint::Tc(_) => {}
            }
        }
        if !lacks.is_empty() {
            lacks.extend(probe.degraded.take());
            probe.degraded = Some(lacks.join("; "));
        }
        Ok(probe)
    }

    /// Loads the programs of the probe's hooks on this kernel, with its kernel-function
    /// hooks in `mode` (for a probe that has two forms of them).
    fn load_programs(
        &mut self,
        spec: &'static ProbeSpec,
        btf: &'btf KernelBtf,
        settings: &ProbeSettings,
        mode: Option<FnMode>,
    ) -> Result<LoadedProbe, ProbeError> {
        let tc_mode = check_hooks(spec, btf, settings.tc_attach)?;
        let by_kernel = spec
            .hooks
            .iter()
            .any(|h| !h.older.is_empty() || h.optional.is_some() || h.used != Used::Always);
        let types = if spec.requires.is_empty() && !by_kernel {
            None
        } else {
            let types = self
                .types
                .get_or_insert_with(|| TypeIndex::from_source(btf.source()))
                .as_ref()
                .map_err(|e| ProbeError::Btf(e.to_string()))?;
            check_requirements(spec, types)?;
            Some(types)
        };
        let Plan {
            programs,
            functions,
            degraded,
        } = choose_programs(spec, &RunningKernel::new(spec, types, btf.has_own()), mode)?;
        let size = settings.ring_buffer_size;
        if size < 4096 || !size.is_power_of_two() {
            return Err(ProbeError::RingBufferSize(size));
        }
        let loader = self
            .loader
            .btf(Some(btf.types()))
            .map_max_entries(EVENTS_MAP, size);
        if settings.table_size > 0 {
            loader.map_max_entries(TABLE_MAP, settings.table_size);
        }
        let mut ebpf = loader.load(spec.object).map_err(|e| {
            if is_eperm(&e) {
                ProbeError::PermissionDenied
            } else {
                ProbeError::Object(e)
            }
        })?;
        for (hook, &name) in spec.hooks.iter().zip(&programs) {
            let Some(name) = name else { continue };
            match hook.point {
                HookPoint::TpBtf { tracepoint, .. } => program::<BtfTracePoint>(&mut ebpf, name)?
                    .load(tracepoint, kernel_own(btf)?)
                    .map_err(|source| program_error(name, source))?,
                HookPoint::Tc(_) => program::<SchedClassifier>(&mut ebpf, name)?
                    .load()
                    .map_err(|source| program_error(name, source))?,
                HookPoint::Kprobe { .. } => program::<KProbe>(&mut ebpf, name)?
                    .load()
                    .map_err(|source| program_error(name, source))?,
                HookPoint::Fentry {
                    function,
                    ret: false,
                } => program::<FEntry>(&mut ebpf, name)?
                    .load(function, kernel_own(btf)?)
                    .map_err(|e| trampoline_error(false, function, e))?,
                HookPoint::Fentry {
                    function,
                    ret: true,
                } => program::<FExit>(&mut ebpf, name)?
                    .load(function, kernel_own(btf)?)
                    .map_err(|e| trampoline_error(true, function, e))?,
            }
        }
        Ok(LoadedProbe {
            spec,
            programs,
            functions,
            degraded,
            ebpf,
            ring_buffer_size: size,
            table_size: settings.table_size,
            params: [0; 4],
            tc_attach: settings.tc_attach,
            tc_mode,
            fn_attach: settings.fn_attach,
            fn_mode: mode,
        })
    }
}

/// A kind of BPF object that arrived in a known kernel release and that probes depend on.
/// The running kernel is asked once per process ([`BpfFeature::on_running_kernel`]); a
/// kernel without one gets a reason naming it instead of an `EINVAL` from the loader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BpfFeature {
    /// BPF ring buffers, which carry every probe's events: Linux 5.8 (457f44363a88 "bpf:
    /// Implement BPF ring buffer and verifier support for it").
    RingBuffer,
    /// BTF-typed tracing programs, which tp_btf and fentry/fexit hooks are: Linux 5.5
    /// (f1b9509c2fb0 "bpf: Replace prog_raw_tp+btf_id with prog_tracing").
    Tracing,
}

impl BpfFeature {
    /// What the kernel lacks, for a probe's reason.
    pub fn what(self) -> &'static str {
        match self {
            BpfFeature::RingBuffer => {
                "BPF ring buffers (Linux 5.8 or later), which carry every probe's events"
            }
            BpfFeature::Tracing => {
                "BTF-typed tracing programs (Linux 5.5 or later), which tp_btf and fentry hooks are"
            }
        }
    }

    /// Whether the running kernel has it, asked once (a trivial map or program is created
    /// and closed). A probe whose answer is not clear is taken as present, leaving the
    /// reason to the load itself.
    pub fn on_running_kernel(self) -> bool {
        use std::sync::OnceLock;
        static RING_BUFFER: OnceLock<bool> = OnceLock::new();
        static TRACING: OnceLock<bool> = OnceLock::new();
        match self {
            BpfFeature::RingBuffer => *RING_BUFFER.get_or_init(|| {
                aya::sys::is_map_supported(aya::maps::MapType::RingBuf).unwrap_or(true)
            }),
            BpfFeature::Tracing => *TRACING.get_or_init(|| {
                aya::sys::is_program_supported(aya::programs::ProgramType::Tracing).unwrap_or(true)
            }),
        }
    }
}

/// What choosing a probe's programs needs to know about a kernel: the running one, or one a
/// test makes up.
pub trait Kernel {
    /// Whether the kernel has `feature`.
    fn has(&self, feature: BpfFeature) -> bool;
    /// Arguments tracepoint `tracepoint` passes (its BTF signature); `None` when the kernel
    /// has no such tracepoint or its types were not read.
    fn tracepoint_args(&self, tracepoint: &str) -> Option<usize>;
    /// Whether the kernel has BTF of its own (hooks that need it: [`HookPoint::needs_kernel_btf`]).
    fn has_own_btf(&self) -> bool;
    /// Whether a kprobe can be attached to kernel function `function`, and why not.
    fn kprobe(&self, function: &'static str) -> Result<(), KprobeError>;

    /// The first of `functions` a kprobe can be attached to, and why none can.
    fn kprobe_any(&self, functions: &[&'static str]) -> Result<&'static str, KprobeError> {
        let mut first = None;
        for &function in functions {
            match self.kprobe(function) {
                Ok(()) => return Ok(function),
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        // Either none is in kallsyms or the kernel has no kprobes: both said once.
        Err(match (first, functions) {
            (Some(KprobeError::NotFound(_)), [_, _, ..]) | (None, _) => {
                KprobeError::NoneFound(functions.to_vec())
            }
            (Some(e), _) => e,
        })
    }
}

/// The running kernel: its types, and its kprobes (looked up once, for the functions of the
/// probe's kprobe hooks).
struct RunningKernel<'a> {
    types: Option<&'a TypeIndex>,
    own_btf: bool,
    functions: Vec<&'static str>,
    kprobes: std::cell::OnceCell<Result<Vec<&'static str>, KprobeError>>,
}

impl<'a> RunningKernel<'a> {
    fn new(spec: &ProbeSpec, types: Option<&'a TypeIndex>, own_btf: bool) -> Self {
        let functions = spec
            .hooks
            .iter()
            .flat_map(|h| match h.point {
                HookPoint::Kprobe { functions, .. } => functions,
                _ => &[],
            })
            .copied()
            .collect();
        RunningKernel {
            types,
            own_btf,
            functions,
            kprobes: std::cell::OnceCell::new(),
        }
    }
}

impl Kernel for RunningKernel<'_> {
    fn has(&self, feature: BpfFeature) -> bool {
        feature.on_running_kernel()
    }

    fn tracepoint_args(&self, tracepoint: &str) -> Option<usize> {
        self.types?.tracepoint_args(tracepoint)
    }

    fn has_own_btf(&self) -> bool {
        self.own_btf
    }

    fn kprobe(&self, function: &'static str) -> Result<(), KprobeError> {
        let found = self
            .kprobes
            .get_or_init(|| crate::kprobe::attachable(&self.functions))
            .as_ref()
            .map_err(Clone::clone)?;
        if found.contains(&function) {
            Ok(())
        } else {
            Err(KprobeError::NotFound(function))
        }
    }
}

/// Whether `condition` holds on `kernel`.
fn holds(condition: Condition, kernel: &dyn Kernel) -> bool {
    match condition {
        Condition::TracepointArgsBelow { tracepoint, args } => {
            kernel.tracepoint_args(tracepoint).is_some_and(|n| n < args)
        }
    }
}

/// What a probe runs on a kernel ([`choose_programs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The program of each hook of the spec, `None` for a hook not used.
    pub programs: Vec<Option<&'static str>>,
    /// For each kprobe hook used, the name its function has on the kernel.
    pub functions: Vec<Option<&'static str>>,
    /// What the probe lacks there, each thing said once.
    pub degraded: Option<String>,
}

/// The program of each hook on `kernel` (`None` for a hook not used there): by its
/// tracepoints' arguments, whether it needs a hook at all (`Hook::used`; for a probe whose
/// kernel-function hooks come in two forms, those of `mode`), whether an optional hook's
/// tracepoint is there, whether its kprobes can be attached and to which name of their
/// function; and what the probe lacks with them, each said once. Without the kernel's own
/// BTF, optional hooks that need it are left out (required ones were refused by
/// [`check_hooks`]).
pub fn choose_programs(
    spec: &ProbeSpec,
    kernel: &dyn Kernel,
    mode: Option<FnMode>,
) -> Result<Plan, ProbeError> {
    // Every probe's object holds its events' ring buffer.
    if !kernel.has(BpfFeature::RingBuffer) {
        return Err(ProbeError::KernelLacks(BpfFeature::RingBuffer));
    }
    let tracing = kernel.has(BpfFeature::Tracing);
    let mut programs = Vec::with_capacity(spec.hooks.len());
    let mut functions = vec![None; spec.hooks.len()];
    let mut lacks: Vec<String> = Vec::new();
    let mut lack = |what: String| {
        if !lacks.contains(&what) {
            lacks.push(what);
        }
    };
    for (i, hook) in spec.hooks.iter().enumerate() {
        let used = match hook.used {
            Used::Always => true,
            Used::Where { when, .. } => holds(when, kernel),
            Used::Attach(m) => mode == Some(m),
        };
        if !used {
            programs.push(None);
            continue;
        }
        let program = match hook.point {
            HookPoint::TpBtf { tracepoint, .. } => {
                if !tracing && hook.optional.is_none() {
                    return Err(ProbeError::KernelLacks(BpfFeature::Tracing));
                }
                let args = kernel.tracepoint_args(tracepoint);
                let missing = args.is_none() || !kernel.has_own_btf() || !tracing;
                let chosen = match hook.optional {
                    Some(_) if missing => None,
                    _ => hook.program_for(args),
                };
                match (chosen, hook.optional) {
                    (Some((name, older_lacks)), _) => {
                        if let Some(what) = older_lacks {
                            lack(what.to_string());
                        }
                        Some(name)
                    }
                    (None, Some(what)) => {
                        lack(what.to_string());
                        None
                    }
                    (None, None) => {
                        return Err(ProbeError::TracepointArgs {
                            tracepoint,
                            args: args.unwrap_or(0),
                            needed: hook.older.iter().map(|o| o.args).min().unwrap_or(hook.args),
                        })
                    }
                }
            }
            // Under `attach: auto` the loader then tries the probe's kprobe form.
            HookPoint::Fentry { .. } if !tracing => {
                return Err(ProbeError::KernelLacks(BpfFeature::Tracing))
            }
            HookPoint::Tc(_) | HookPoint::Fentry { .. } => Some(hook.program),
            HookPoint::Kprobe {
                functions: names, ..
            } => match (kernel.kprobe_any(names), hook.used) {
                (Ok(function), _) => {
                    functions[i] = Some(function);
                    Some(hook.program)
                }
                (Err(why), Used::Where { lacks: what, .. }) => {
                    lack(format!("{what}: {why}"));
                    None
                }
                (Err(reason), Used::Always | Used::Attach(_)) => {
                    return Err(ProbeError::Kprobe {
                        function: names.join(" or "),
                        reason,
                    })
                }
            },
        };
        programs.push(program);
    }
    let degraded = (!lacks.is_empty()).then(|| lacks.join("; "));
    Ok(Plan {
        programs,
        functions,
        degraded,
    })
}

impl Default for ProbeLoader<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl LoadedProbe {
    /// Loads, configures and attaches one probe (see [`ProbeLoader`] for several).
    pub fn load(
        spec: &'static ProbeSpec,
        btf: &KernelBtf,
        settings: &ProbeSettings,
    ) -> Result<Self, ProbeError> {
        ProbeLoader::new().load(spec, btf, settings)
    }

    /// Applies settings to the running probe. Returns `false` when they cannot apply live
    /// (a different ring buffer size, table size or TC attach mode) and the probe must be
    /// reloaded.
    pub fn configure(&mut self, settings: &ProbeSettings) -> Result<bool, ProbeError> {
        if settings.ring_buffer_size != self.ring_buffer_size
            || settings.table_size != self.table_size
            || settings.tc_attach != self.tc_attach
            || settings.fn_attach != self.fn_attach
        {
            return Ok(false);
        }
        let map = self
            .ebpf
            .map_mut(CONFIG_MAP)
            .ok_or(ProbeError::MissingMap(CONFIG_MAP))?;
        let mut config: Array<_, KernelConfig> =
            Array::try_from(map).map_err(map_err(CONFIG_MAP))?;
        config
            .set(0, settings.kernel_config(), 0)
            .map_err(map_err(CONFIG_MAP))?;
        self.params = settings.params;
        if let Some(map) = self.ebpf.map_mut(PARAMS_MAP) {
            let mut params: Array<_, KernelParams> =
                Array::try_from(map).map_err(map_err(PARAMS_MAP))?;
            params
                .set(0, KernelParams(settings.params), 0)
                .map_err(map_err(PARAMS_MAP))?;
        }
        Ok(true)
    }

    /// What the probe lacks on this kernel, if anything.
    pub fn degraded(&self) -> Option<&str> {
        self.degraded.as_deref()
    }

    /// The hooks the probe uses on this kernel, with the program each runs.
    pub fn hooks(&self) -> impl Iterator<Item = (&'static Hook, &'static str)> + '_ {
        self.spec
            .hooks
            .iter()
            .zip(&self.programs)
            .filter_map(|(hook, program)| Some((hook, (*program)?)))
    }

    /// The hooks the probe uses on this kernel as `sonde probes` names them (a kprobe hook by
    /// the name its function has here).
    pub fn hook_names(&self) -> Vec<String> {
        self.spec
            .hooks
            .iter()
            .zip(self.programs.iter().zip(&self.functions))
            .filter(|(_, (program, _))| program.is_some())
            .map(|(hook, (_, function))| hook.name_with(*function))
            .collect()
    }

    /// How the probe's kernel-function hooks are attached (none without two forms of them).
    pub fn fn_mode(&self) -> Option<FnMode> {
        self.fn_mode
    }

    /// The probe-specific values last applied ([`ProbeSettings::params`]), for collectors
    /// whose settings act in the agent rather than in the kernel.
    pub fn params(&self) -> [u64; 4] {
        self.params
    }

    /// How the probe's TC programs are attached (none without TC hooks).
    pub fn tc_mode(&self) -> Option<TcMode> {
        self.tc_mode
    }

    /// What attaching the probe's TC programs to interfaces needs (none without TC hooks).
    pub fn tc_target(&mut self) -> Result<Option<TcTarget>, ProbeError> {
        let Some(mode) = self.tc_mode else {
            return Ok(None);
        };
        let mut programs = Vec::new();
        for (hook, &name) in self.spec.hooks.iter().zip(&self.programs.clone()) {
            let (Some(direction), Some(name)) = (hook.tc_direction(), name) else {
                continue;
            };
            let prog = program::<SchedClassifier>(&mut self.ebpf, name)?;
            let fd = prog
                .fd()
                .and_then(|fd| fd.as_fd().try_clone_to_owned().map_err(ProgramError::from))
                .map_err(|source| program_error(name, source))?;
            programs.push((direction, fd));
        }
        // Each TC probe prefers its own filter priority, so two never contend for one.
        let slot = CATALOGUE
            .iter()
            .filter(|s| s.hooks.iter().any(|h| h.tc_direction().is_some()))
            .position(|s| s.name == self.spec.name)
            .unwrap_or(0) as u16;
        let fd_of = |name: &'static str, map: Option<&Map>| match map {
            Some(Map::HashMap(data) | Map::Array(data)) => data
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| ProbeError::Map {
                    map: name,
                    source: MapError::from(e),
                }),
            _ => Err(ProbeError::Map {
                map: name,
                source: MapError::InvalidMapType { map_type: 0 },
            }),
        };
        let watched = match self.ebpf.map(WATCHED_MAP) {
            Some(rest) => Some(std::sync::Arc::new(Watched {
                low: fd_of(WATCHED_LOW_MAP, self.ebpf.map(WATCHED_LOW_MAP))?,
                rest: fd_of(WATCHED_MAP, Some(rest))?,
            })),
            None => None,
        };
        Ok(Some(TcTarget {
            probe: self.spec.name,
            mode,
            slot,
            programs,
            watched,
        }))
    }

    /// Takes the probe's event ring buffer, to be drained by the agent.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .ebpf
            .take_map(EVENTS_MAP)
            .ok_or(ProbeError::MissingMap(EVENTS_MAP))?;
        RingBuf::try_from(map).map_err(map_err(EVENTS_MAP))
    }

    /// Records lost to a full ring buffer and suppressed by the rate limit, over all CPUs.
    pub fn stats(&self) -> Result<Stats, ProbeError> {
        let map = self
            .ebpf
            .map(STATS_MAP)
            .ok_or(ProbeError::MissingMap(STATS_MAP))?;
        let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(map_err(STATS_MAP))?;
        let sum = |slot: u32| -> Result<u64, ProbeError> {
            Ok(stats
                .get(&slot, 0)
                .map_err(map_err(STATS_MAP))?
                .iter()
                .sum())
        };
        Ok(Stats {
            lost: sum(STAT_LOST)?,
            suppressed: sum(STAT_SUPPRESSED)?,
        })
    }

    /// Events suppressed by each network namespace's rate limit (and by the CPU's after it),
    /// by namespace inode, for the namespaces the kernel still has a bucket for.
    pub fn ns_suppressed(&self) -> Result<HashMap<u32, u64>, ProbeError> {
        Ok(self
            .hash_entries::<u32, crate::record::NsBucket>(NS_BUCKETS_MAP)?
            .into_iter()
            .filter(|(_, b)| b.suppressed > 0)
            .map(|(netns, b)| (netns, b.suppressed))
            .collect())
    }

    /// The probe's in-kernel counters, summed over CPUs.
    pub fn counters<K: Pod + Eq + Hash>(&self) -> Result<HashMap<K, u64>, ProbeError> {
        let name = self.spec.counter_map;
        let map = self.ebpf.map(name).ok_or(ProbeError::MissingMap(name))?;
        let counters: PerCpuHashMap<_, K, u64> =
            PerCpuHashMap::try_from(map).map_err(map_err(name))?;
        if let (Map::PerCpuHashMap(data) | Map::PerCpuLruHashMap(data), Some(cpus)) =
            (map, batches())
        {
            match crate::batch::percpu_sums::<K>(data.fd().as_fd(), cpus) {
                // A key the kernel moved between two calls may come twice: the later is
                // the newer value.
                Ok(rows) => return Ok(rows.into_iter().collect()),
                Err(e) => no_batches(&e),
            }
        }
        let mut out = HashMap::new();
        for entry in counters.iter() {
            match entry {
                Ok((key, values)) => {
                    out.insert(key, values.iter().sum());
                }
                // A key deleted between listing and lookup: nothing to count.
                Err(MapError::KeyNotFound) => continue,
                Err(source) => return Err(ProbeError::Map { map: name, source }),
            }
        }
        Ok(out)
    }

    /// The probe's in-kernel counters when they are a per-CPU array (for hot paths, where a
    /// hash lookup per event costs too much): each index summed over CPUs.
    pub fn array_counters(&self) -> Result<Vec<u64>, ProbeError> {
        let name = self.spec.counter_map;
        let map = self.ebpf.map(name).ok_or(ProbeError::MissingMap(name))?;
        let counters: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(map_err(name))?;
        (0..counters.len())
            .map(|i| Ok(counters.get(&i, 0).map_err(map_err(name))?.iter().sum()))
            .collect()
    }

    /// [`LoadedProbe::array_counters`] by what each index counts (`key_of(index)`), leaving
    /// out those at zero.
    pub fn array_counters_by<K: Eq + Hash>(
        &self,
        key_of: impl Fn(usize) -> K,
    ) -> Result<HashMap<K, u64>, ProbeError> {
        Ok(self
            .array_counters()?
            .into_iter()
            .enumerate()
            .filter(|(_, v)| *v > 0)
            .map(|(i, v)| (key_of(i), v))
            .collect())
    }

    /// Every entry of one of the probe's hash maps (plain or LRU, not per-CPU), such as a
    /// flow table, read without taking it from the probe.
    pub fn hash_entries<K: Pod, V: Pod>(
        &self,
        name: &'static str,
    ) -> Result<Vec<(K, V)>, ProbeError> {
        let map = self.ebpf.map(name).ok_or(ProbeError::MissingMap(name))?;
        let table: aya::maps::HashMap<_, K, V> =
            aya::maps::HashMap::try_from(map).map_err(map_err(name))?;
        if let (Map::HashMap(data) | Map::LruHashMap(data), Some(_)) = (map, batches()) {
            match crate::batch::entries::<K, V>(data.fd().as_fd()) {
                Ok(rows) => return Ok(rows),
                Err(e) => no_batches(&e),
            }
        }
        let mut out = Vec::new();
        for entry in table.iter() {
            match entry {
                Ok(kv) => out.push(kv),
                // Evicted or deleted between listing and lookup.
                Err(MapError::KeyNotFound) => continue,
                Err(source) => return Err(ProbeError::Map { map: name, source }),
            }
        }
        Ok(out)
    }

    /// Deletes `key` from one of the probe's hash maps (a row the agent has dealt with);
    /// a key gone already is not an error.
    pub fn hash_remove<K: Pod>(&self, name: &'static str, key: &K) -> Result<(), ProbeError> {
        let fd = match self.ebpf.map(name) {
            Some(Map::HashMap(data) | Map::LruHashMap(data)) => data.fd().as_fd(),
            Some(_) => {
                return Err(ProbeError::Map {
                    map: name,
                    source: MapError::InvalidMapType { map_type: 0 },
                })
            }
            None => return Err(ProbeError::MissingMap(name)),
        };
        crate::tc::delete_elem(fd, key).map_err(|e| ProbeError::Map {
            map: name,
            source: MapError::from(e),
        })
    }

    /// Takes a stack trace map of the probe, for the decoder that resolves its stack ids.
    pub fn take_stack_map(
        &mut self,
        name: &'static str,
    ) -> Result<StackTraceMap<MapData>, ProbeError> {
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(ProbeError::MissingMap(name))?;
        StackTraceMap::try_from(map).map_err(map_err(name))
    }
}

/// Whether counter maps are read in batches ([`crate::batch`]): the number of possible CPUs
/// until a batch lookup failed as unsupported.
fn batches() -> Option<usize> {
    use std::sync::atomic::Ordering;
    if BATCHES_REFUSED.load(Ordering::Relaxed) {
        return None;
    }
    aya::util::nr_cpus().ok()
}

static BATCHES_REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A batch lookup failed: the map is walked this time, and always from now on when the
/// kernel has no batches (before 5.6: `EINVAL`; `ENOTSUPP` where the map type lacks them).
fn no_batches(e: &std::io::Error) {
    const ENOTSUPP: i32 = 524;
    if matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | ENOTSUPP | libc::EPERM)
    ) {
        BATCHES_REFUSED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    tracing::debug!(error = %e, "batch lookup of a map failed: walking it key by key");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Hook, Requirement, CATALOGUE};
    use aya::EbpfLoader;

    #[test]
    fn the_running_kernel_has_what_every_probe_reads() {
        let types = TypeIndex::kernel().unwrap();
        for spec in CATALOGUE {
            check_requirements(spec, &types).unwrap_or_else(|e| panic!("{}: {e}", spec.name));
        }
    }

    #[test]
    fn kfree_skb_program_follows_the_kernels_arguments() {
        let hook = &crate::packet_drop::SPEC.hooks[0];
        assert_eq!(hook.program_for(Some(4)), Some(("packet_drop", None)));
        assert_eq!(hook.program_for(Some(5)), Some(("packet_drop", None)));
        assert_eq!(
            hook.program_for(Some(3)),
            Some(("packet_drop_reason", None))
        );
        let (name, lacks) = hook.program_for(Some(2)).unwrap();
        assert_eq!(name, "packet_drop_noreason");
        assert!(lacks.unwrap().contains("NOT_SPECIFIED"));
        assert_eq!(hook.program_for(Some(1)), None);
        // Unknown arity (no kernel types read): the newest program.
        assert_eq!(hook.program_for(None), Some(("packet_drop", None)));
    }

    #[test]
    fn an_optional_hook_the_kernel_lacks_is_left_out_and_said() {
        const SPEC: ProbeSpec = ProbeSpec {
            name: "test",
            description: "",
            hooks: &[
                Hook::tp_btf("always", "skb", "kfree_skb"),
                Hook::tp_btf("never", "none", "sonde_no_such_tracepoint").optional("lacks x"),
                Hook::tp_btf_by_args("too_new", "skb", "kfree_skb", 9, &[]).optional("lacks x"),
            ],
            requires: &[],
            counter_map: "",
            object: &[],
        };
        let types = TypeIndex::kernel().unwrap();
        let Plan {
            programs, degraded, ..
        } = choose_programs(&SPEC, &RunningKernel::new(&SPEC, Some(&types), true), None).unwrap();
        assert_eq!(programs, vec![Some("always"), None, None]);
        assert_eq!(degraded.as_deref(), Some("lacks x"));
        // Required, it is an error naming the tracepoint.
        const REQUIRED: ProbeSpec = ProbeSpec {
            hooks: &[Hook::tp_btf_by_args("too_new", "skb", "kfree_skb", 9, &[])],
            ..SPEC
        };
        let e = choose_programs(
            &REQUIRED,
            &RunningKernel::new(&REQUIRED, Some(&types), true),
            None,
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with("tracepoint kfree_skb passes"),
            "{e}"
        );
    }

    /// A TC hook beside an optional tp_btf hook.
    const TC_AND_OPTIONAL_TP_BTF: ProbeSpec = ProbeSpec {
        name: "test",
        description: "",
        hooks: &[
            Hook::tc("ingress", crate::TcDirection::Ingress),
            Hook::tp_btf("extra", "skb", "kfree_skb").optional("lacks extra"),
        ],
        requires: &[],
        counter_map: "",
        object: &[],
    };

    #[test]
    fn without_the_kernels_own_btf_only_hooks_that_do_not_need_it_load() {
        let btf = KernelBtf::from_source(crate::btf::Source::Kernel)
            .unwrap()
            .without_own();
        assert!(!btf.has_own() && btf.own().is_none());
        let e = check_hooks(&crate::packet_drop::SPEC, &btf, TcAttach::Auto).unwrap_err();
        assert_eq!(
            e.to_string(),
            "this kernel has no BTF of its own (/sys/kernel/btf/vmlinux): tp_btf and fentry \
             programs need it; btf.path gives CO-RE relocations only"
        );
        // TC hooks need CO-RE relocations and struct tcx_link, from the types.
        check_hooks(&crate::flow::SPEC, &btf, TcAttach::Auto).unwrap();
        // An optional tp_btf hook beside them is left out, and said.
        check_hooks(&TC_AND_OPTIONAL_TP_BTF, &btf, TcAttach::Auto).unwrap();
        let types = TypeIndex::kernel().unwrap();
        let Plan {
            programs, degraded, ..
        } = choose_programs(
            &TC_AND_OPTIONAL_TP_BTF,
            &RunningKernel::new(&TC_AND_OPTIONAL_TP_BTF, Some(&types), false),
            None,
        )
        .unwrap();
        assert_eq!(programs, vec![Some("ingress"), None]);
        assert_eq!(degraded.as_deref(), Some("lacks extra"));
    }

    /// A made-up kernel: `tcp_send_reset`'s arguments, the functions kprobes can attach to
    /// (`None`: no kprobes at all), and the BPF features it lacks.
    struct TestKernel {
        send_reset_args: usize,
        kprobes: Option<&'static [&'static str]>,
        lacks: &'static [BpfFeature],
    }

    impl Kernel for TestKernel {
        fn has(&self, feature: BpfFeature) -> bool {
            !self.lacks.contains(&feature)
        }

        fn tracepoint_args(&self, tracepoint: &str) -> Option<usize> {
            match tracepoint {
                "tcp_send_reset" => Some(self.send_reset_args),
                "tcp_receive_reset" => Some(1),
                _ => None,
            }
        }

        fn has_own_btf(&self) -> bool {
            true
        }

        fn kprobe(&self, function: &'static str) -> Result<(), KprobeError> {
            match self.kprobes {
                None => Err(KprobeError::NoKprobes),
                Some(f) if f.contains(&function) => Ok(()),
                Some(_) => Err(KprobeError::NotFound(function)),
            }
        }
    }

    /// The hooks (as shown) and programs tcp_reset uses on a made-up kernel, and what it lacks.
    fn tcp_reset_on(
        send_reset_args: usize,
        kprobes: Option<&'static [&'static str]>,
    ) -> (Vec<String>, Vec<&'static str>, Option<String>) {
        let kernel = TestKernel {
            send_reset_args,
            kprobes,
            lacks: &[],
        };
        let spec = &crate::tcp_reset::SPEC;
        let Plan {
            programs, degraded, ..
        } = choose_programs(spec, &kernel, None).unwrap();
        let used: Vec<_> = spec
            .hooks
            .iter()
            .zip(&programs)
            .filter_map(|(h, p)| Some((h.to_string(), (*p)?)))
            .collect();
        (
            used.iter().map(|(h, _)| h.clone()).collect(),
            used.iter().map(|(_, p)| *p).collect(),
            degraded,
        )
    }

    const BOTH: &[&str] = &["tcp_v4_send_reset", "tcp_v6_send_reset"];

    #[test]
    fn kprobes_stand_in_only_for_the_old_send_reset_tracepoint() {
        const TRACEPOINTS: [&str; 2] =
            ["tp_btf/tcp/tcp_send_reset", "tp_btf/tcp/tcp_receive_reset"];
        // Linux 6.10 and later (3 arguments): the tracepoint sees every reset; no kprobe,
        // whether or not the kernel has kprobes (this host's has none).
        for kprobes in [Some(BOTH), None] {
            let (hooks, _, degraded) = tcp_reset_on(3, kprobes);
            assert_eq!(hooks, TRACEPOINTS);
            assert_eq!(degraded, None);
        }
        // Older (2 arguments) with kprobes: both functions, each with its program.
        let (hooks, programs, degraded) = tcp_reset_on(2, Some(BOTH));
        assert_eq!(
            hooks,
            [
                TRACEPOINTS[0],
                TRACEPOINTS[1],
                "kprobe/tcp_v4_send_reset",
                "kprobe/tcp_v6_send_reset"
            ]
        );
        assert_eq!(
            programs,
            [
                "tcp_send_reset",
                "tcp_receive_reset",
                "tcp_v4_send_reset",
                "tcp_v6_send_reset"
            ]
        );
        assert_eq!(degraded, None);
    }

    #[test]
    fn an_old_kernel_without_kprobes_is_degraded_and_says_why() {
        let (hooks, _, degraded) = tcp_reset_on(2, None);
        assert_eq!(
            hooks,
            ["tp_btf/tcp/tcp_send_reset", "tp_btf/tcp/tcp_receive_reset"]
        );
        // Said once for both functions.
        let degraded = degraded.unwrap();
        assert!(
            degraded.starts_with("resets sent for packets no socket owns")
                && degraded.ends_with(&format!(": {}", KprobeError::NoKprobes))
                && degraded.matches("has no kprobes").count() == 1,
            "{degraded}"
        );
        // One function inlined away: the other is still attached, the missing one named.
        let (hooks, _, degraded) = tcp_reset_on(2, Some(&["tcp_v4_send_reset"]));
        assert_eq!(hooks.last().unwrap(), "kprobe/tcp_v4_send_reset");
        assert!(
            degraded.as_deref().unwrap().ends_with(
                ": tcp_v6_send_reset is not in /proc/kallsyms (inlined or renamed in this kernel)"
            ),
            "{degraded:?}"
        );
    }

    #[test]
    fn a_kprobe_every_kernel_needs_is_an_error_where_it_cannot_attach() {
        const HOOKS: &[Hook] = &[Hook {
            used: Used::Always,
            ..Hook::kprobe_where(
                "tcp_v4_send_reset",
                &["tcp_v4_send_reset"],
                Condition::TracepointArgsBelow {
                    tracepoint: "tcp_send_reset",
                    args: 3,
                },
                "",
            )
        }];
        static SPEC: ProbeSpec = ProbeSpec {
            hooks: HOOKS,
            ..crate::tcp_reset::SPEC
        };
        let kernel = TestKernel {
            send_reset_args: 3,
            kprobes: None,
            lacks: &[],
        };
        assert_eq!(
            choose_programs(&SPEC, &kernel, None)
                .unwrap_err()
                .to_string(),
            format!(
                "cannot attach a kprobe to tcp_v4_send_reset: {}",
                KprobeError::NoKprobes
            )
        );
    }

    #[test]
    fn a_kernel_without_ring_buffers_refuses_every_ebpf_probe_with_the_reason() {
        let kernel = TestKernel {
            send_reset_args: 3,
            kprobes: Some(BOTH),
            lacks: &[BpfFeature::RingBuffer],
        };
        for spec in CATALOGUE {
            for mode in [None, Some(FnMode::Fentry), Some(FnMode::Kprobe)] {
                let e = choose_programs(spec, &kernel, mode).unwrap_err();
                assert_eq!(
                    e.to_string(),
                    "this kernel has no BPF ring buffers (Linux 5.8 or later), which carry \
                     every probe's events",
                    "{}",
                    spec.name
                );
            }
        }
    }

    #[test]
    fn a_kernel_without_tracing_programs_keeps_the_probes_that_need_none() {
        let kernel = TestKernel {
            send_reset_args: 3,
            kprobes: Some(&["ip_rcv_core", "ip_local_deliver", "ip_forward", "ip_output"]),
            lacks: &[BpfFeature::Tracing],
        };
        let reason = "this kernel has no BTF-typed tracing programs (Linux 5.5 or later), which \
                      tp_btf and fentry hooks are";
        // tp_btf probes are refused with the reason, not a loader error.
        let e = choose_programs(&crate::packet_drop::SPEC, &kernel, None).unwrap_err();
        assert_eq!(e.to_string(), reason);
        // TC probes need neither.
        choose_programs(&crate::flow::SPEC, &kernel, None).unwrap();
        // Fentry hooks are refused (so `attach: auto` goes on to kprobes); stack_latency also
        // counts at kfree_skb, so neither form loads.
        for mode in [FnMode::Fentry, FnMode::Kprobe] {
            let e = choose_programs(&crate::stack_latency::SPEC, &kernel, Some(mode)).unwrap_err();
            assert_eq!(e.to_string(), reason);
        }
        // Kprobes alone need neither.
        let kernel = TestKernel {
            kprobes: Some(&["virtnet_send_command_reply"]),
            ..kernel
        };
        choose_programs(&crate::virtio_net::SPEC, &kernel, None).unwrap();
        // An optional tp_btf hook is left out and said.
        let Plan {
            programs, degraded, ..
        } = choose_programs(&TC_AND_OPTIONAL_TP_BTF, &kernel, None).unwrap();
        assert_eq!(programs, vec![Some("ingress"), None]);
        assert_eq!(degraded.as_deref(), Some("lacks extra"));
    }

    #[test]
    fn this_kernel_has_ring_buffers_and_tracing_programs() {
        assert!(BpfFeature::RingBuffer.on_running_kernel());
        assert!(BpfFeature::Tracing.on_running_kernel());
    }

    /// Loads every program of `spec` (all forms, whichever the kernel would use), without
    /// attaching any.
    fn load_every_program(spec: &ProbeSpec) {
        let btf = KernelBtf::load().unwrap();
        let mut ebpf = EbpfLoader::new()
            .btf(Some(btf.types()))
            .load(spec.object)
            .unwrap();
        let own = || kernel_own(&btf).unwrap();
        for hook in spec.hooks {
            let name = hook.program;
            let loaded = match hook.point {
                HookPoint::TpBtf { tracepoint, .. } => program::<BtfTracePoint>(&mut ebpf, name)
                    .unwrap()
                    .load(tracepoint, own()),
                HookPoint::Kprobe { .. } => program::<KProbe>(&mut ebpf, name).unwrap().load(),
                HookPoint::Fentry {
                    function,
                    ret: false,
                } => program::<FEntry>(&mut ebpf, name)
                    .unwrap()
                    .load(function, own()),
                HookPoint::Fentry {
                    function,
                    ret: true,
                } => program::<FExit>(&mut ebpf, name)
                    .unwrap()
                    .load(function, own()),
                HookPoint::Tc(_) => program::<SchedClassifier>(&mut ebpf, name).unwrap().load(),
            };
            match loaded {
                Ok(()) => {}
                // This kernel (like this host's) may refuse trampolines altogether; the
                // kernel matrix loads them where they are allowed.
                Err(e) if matches!(hook.point, HookPoint::Fentry { .. }) && is_eperm(&e) => {
                    eprintln!("{} {name}: this kernel refuses fentry programs", spec.name)
                }
                Err(e) => panic!("{} {name}: {}", spec.name, one_line_reason(&e)),
            }
        }
    }

    /// The kprobe programs pass this kernel's verifier although it would not attach them (it
    /// has kprobe programs for uprobes, not kprobes): they load on kernels that need them.
    #[test]
    fn every_tcp_reset_program_loads_here() {
        load_every_program(&crate::tcp_reset::SPEC);
    }

    /// Both forms of stack_latency's function hooks pass the verifier, whichever this kernel
    /// attaches.
    #[test]
    fn every_stack_latency_program_loads_here() {
        load_every_program(&crate::stack_latency::SPEC);
    }

    /// virtio_net's kprobe and kretprobe programs pass this kernel's verifier, their CO-RE
    /// relocations (net_device's priv[] or its size) resolved against this kernel's BTF.
    #[test]
    fn every_virtio_net_program_loads_here() {
        load_every_program(&crate::virtio_net::SPEC);
    }

    #[test]
    fn a_missing_field_is_named() {
        const SPEC: ProbeSpec = ProbeSpec {
            name: "test",
            description: "",
            hooks: &[],
            requires: &[
                crate::requires::SOCK_NETNS,
                &[Requirement::field("sk_buff", "no_such_field")],
            ],
            counter_map: "",
            object: &[],
        };
        let types = TypeIndex::kernel().unwrap();
        let e = check_requirements(&SPEC, &types).unwrap_err();
        assert_eq!(
            e.to_string(),
            "this kernel's BTF has no field sk_buff.no_such_field, which the probe reads"
        );
        let tp = ProbeSpec {
            requires: &[&[Requirement::TracepointArgs {
                tracepoint: "kfree_skb",
                args: 9,
            }]],
            ..SPEC
        };
        assert_eq!(
            check_requirements(&tp, &types).unwrap_err().to_string(),
            "this kernel's BTF has no tracepoint kfree_skb with at least 9 arguments, which the probe reads"
        );
    }
}
