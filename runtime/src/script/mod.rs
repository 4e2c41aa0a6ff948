//! The rhai script engine: scripts that handle probe events bpftrace-style (README.md,
//! "Ad-hoc questions: `sonde trace`"). A script defines handlers, `fn on_<probe>(e)` for each probe it wants (the event `e` is
//! a map with the fields of the JSON event), `fn on_interval()` and `fn on_exit()`, and
//! aggregates into named maps (`count`, `sum`, `avg`, `min`, `max`, `hist`, `lhist`).
//!
//! This module owns compiling a script, checking its handlers against the probe catalogue,
//! running them under the sandbox limits and keeping its maps; `sonde trace` (in `trace.rs`)
//! feeds it live events, and resident scripts can feed it the same way.
//!
//! Sandbox: rhai has no file, process or network access; modules (`import`) and `eval` are
//! off; every handler call is bounded in operations, call depth, string, array and map
//! sizes, and the aggregation maps in entries and number. Going past a limit stops the script
//! with an error that names the limit.

pub mod aggregate;
pub mod event;
pub mod output;
pub mod printf;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rhai::{CallFnOptions, Dynamic, Engine, EvalAltResult, ImmutableString, Position, Scope, AST};

use self::aggregate::{key_of, Aggregations, Buckets, MapLimits, Num};
use self::event::EventConverter;
use crate::event::Event;

/// Where `print`, `printf` and `print_map` write: the text, newlines included.
pub type Printer = Arc<dyn Fn(&str) + Send + Sync>;

/// The sandbox's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Operations one handler call (or the top-level statements) may run.
    pub operations: u64,
    /// Bytes in a string.
    pub string_size: usize,
    /// Items in an array.
    pub array_size: usize,
    /// Entries in an object map.
    pub map_size: usize,
    /// Depth of nested function calls.
    pub call_depth: usize,
    /// Aggregation maps and their entries.
    pub maps: MapLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            operations: 1_000_000,
            string_size: 64 << 10,
            array_size: 10_000,
            map_size: 10_000,
            call_depth: 32,
            maps: MapLimits::default(),
        }
    }
}

/// A script that cannot be compiled or that failed while running: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ScriptError {
    /// The file, or `-e` for a script given on the command line.
    pub origin: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for ScriptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

/// What the script's handlers subscribe to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Handlers {
    /// Probes with an `on_<probe>` handler, in catalogue order.
    pub probes: Vec<&'static str>,
    pub interval: bool,
    pub exit: bool,
}

/// `on_<probe>` function names by probe.
type HandlerFns = Vec<(&'static str, Arc<str>)>;

/// The state the script's built-in functions share with the host.
struct State {
    maps: Aggregations,
    print: Printer,
}

/// How much work handling events has been, for `--stats`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    pub events: u64,
    /// Time spent converting events and running their handlers.
    pub busy: Duration,
}

/// A compiled script with its maps.
pub struct Script {
    engine: Engine,
    ast: AST,
    scope: Scope<'static>,
    state: Arc<Mutex<State>>,
    /// Set by `exit()`; read before every event.
    exit: Arc<AtomicBool>,
    origin: String,
    source: String,
    handlers: Handlers,
    /// `on_<probe>` by probe name.
    handler_fns: HandlerFns,
    convert: EventConverter,
    limits: Limits,
    stats: Stats,
}

fn runtime(message: impl std::fmt::Display) -> Box<EvalAltResult> {
    EvalAltResult::ErrorRuntime(Dynamic::from(message.to_string()), Position::NONE).into()
}

type Fallible<T> = Result<T, Box<EvalAltResult>>;

fn number(v: &Dynamic, func: &str) -> Fallible<Num> {
    Num::from_dynamic(v).ok_or_else(|| {
        runtime(format!(
            "{func}(): the value must be a number, not {}",
            v.type_name()
        ))
    })
}

fn integer(v: &Dynamic, func: &str) -> Fallible<i64> {
    match Num::from_dynamic(v) {
        Some(Num::Int(i)) => Ok(i),
        Some(Num::Float(f)) => Ok(f as i64),
        None => Err(runtime(format!(
            "{func}(): the value must be a number, not {}",
            v.type_name()
        ))),
    }
}

/// Registers the aggregation, printing and control functions on `engine`.
fn register_builtins(engine: &mut Engine, state: &Arc<Mutex<State>>, exit: &Arc<AtomicBool>) {
    fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
        state.lock().unwrap_or_else(|e| e.into_inner())
    }
    let s = Arc::clone(state);
    let count = move |name: ImmutableString, key: Dynamic| -> Fallible<i64> {
        let n = lock(&s).maps.count(&name, key_of(&key)).map_err(runtime)?;
        Ok(n as i64)
    };
    let c2 = count.clone();
    engine.register_fn("count", count);
    engine.register_fn("count", move |name: ImmutableString| {
        c2(name, Dynamic::from_array(vec![]))
    });

    let s = Arc::clone(state);
    let sum = move |name: ImmutableString, key: Dynamic, v: Dynamic| -> Fallible<Dynamic> {
        let v = number(&v, "sum")?;
        let n = lock(&s).maps.sum(&name, key_of(&key), v).map_err(runtime)?;
        Ok(n.to_dynamic())
    };
    let s2 = sum.clone();
    engine.register_fn("sum", sum);
    engine.register_fn("sum", move |name: ImmutableString, v: Dynamic| {
        s2(name, Dynamic::from_array(vec![]), v)
    });

    type Update =
        fn(&mut Aggregations, &str, aggregate::Key, Num) -> Result<(), aggregate::MapError>;
    let updates: [(&str, Update); 3] = [
        ("avg", Aggregations::avg),
        ("min", Aggregations::min),
        ("max", Aggregations::max),
    ];
    for (func, update) in updates {
        let s = Arc::clone(state);
        let keyed = move |name: ImmutableString, key: Dynamic, v: Dynamic| -> Fallible<()> {
            let v = number(&v, func)?;
            update(&mut lock(&s).maps, &name, key_of(&key), v).map_err(runtime)
        };
        let keyless = keyed.clone();
        engine.register_fn(func, keyed);
        engine.register_fn(func, move |name: ImmutableString, v: Dynamic| {
            keyless(name, Dynamic::from_array(vec![]), v)
        });
    }

    let s = Arc::clone(state);
    let hist = move |name: ImmutableString, key: Dynamic, v: Dynamic| -> Fallible<()> {
        let v = integer(&v, "hist")?;
        lock(&s)
            .maps
            .hist(&name, key_of(&key), v, Buckets::Log2)
            .map_err(runtime)
    };
    let h2 = hist.clone();
    engine.register_fn("hist", hist);
    engine.register_fn("hist", move |name: ImmutableString, v: Dynamic| {
        h2(name, Dynamic::from_array(vec![]), v)
    });

    let s = Arc::clone(state);
    let lhist = move |name: ImmutableString,
                      key: Dynamic,
                      v: Dynamic,
                      min: i64,
                      max: i64,
                      step: i64|
          -> Fallible<()> {
        let v = integer(&v, "lhist")?;
        let buckets = Buckets::linear(min, max, step).map_err(runtime)?;
        lock(&s)
            .maps
            .hist(&name, key_of(&key), v, buckets)
            .map_err(runtime)
    };
    let l2 = lhist.clone();
    engine.register_fn("lhist", lhist);
    engine.register_fn(
        "lhist",
        move |name: ImmutableString, v: Dynamic, min: i64, max: i64, step: i64| {
            l2(name, Dynamic::from_array(vec![]), v, min, max, step)
        },
    );

    // Not `get`: rhai's strings have `get(index)`, which a call with an integer key would reach.
    let s = Arc::clone(state);
    let get = move |name: ImmutableString, key: Dynamic| -> Dynamic {
        lock(&s)
            .maps
            .get(&name, &key_of(&key))
            .map_or(Dynamic::UNIT, Num::to_dynamic)
    };
    let g2 = get.clone();
    engine.register_fn("lookup", get);
    engine.register_fn("lookup", move |name: ImmutableString| {
        g2(name, Dynamic::from_array(vec![]))
    });

    let s = Arc::clone(state);
    engine.register_fn("clear", move |name: ImmutableString| {
        lock(&s).maps.clear(&name);
    });

    let s = Arc::clone(state);
    engine.register_fn("print_map", move |name: ImmutableString| {
        let st = lock(&s);
        if let Some(map) = st.maps.maps.get(name.as_str()) {
            let text = output::map_text(&name, map);
            (st.print)(&text);
        }
    });

    let x = Arc::clone(exit);
    engine.register_fn("exit", move || -> Fallible<()> {
        x.store(true, Ordering::Relaxed);
        Err(EvalAltResult::Exit(Dynamic::UNIT, Position::NONE).into())
    });

    // printf and sprintf: rhai has no variadic functions, so one overload per arity.
    let s = Arc::clone(state);
    let printf = move |fmt: &str, args: &[Dynamic]| -> Fallible<()> {
        let text = printf::format(fmt, args).map_err(|e| runtime(format!("printf(): {e}")))?;
        (lock(&s).print)(&text);
        Ok(())
    };
    let sprintf = |fmt: &str, args: &[Dynamic]| -> Fallible<String> {
        printf::format(fmt, args).map_err(|e| runtime(format!("sprintf(): {e}")))
    };
    macro_rules! variadic {
        ($($arg:ident),*) => {{
            let p = printf.clone();
            engine.register_fn("printf", move |fmt: ImmutableString, $($arg: Dynamic),*| {
                p(&fmt, &[$($arg),*])
            });
            engine.register_fn("sprintf", move |fmt: ImmutableString, $($arg: Dynamic),*| {
                sprintf(&fmt, &[$($arg),*])
            });
        }};
    }
    variadic!();
    variadic!(a);
    variadic!(a, b);
    variadic!(a, b, c);
    variadic!(a, b, c, d);
    variadic!(a, b, c, d, e);
    variadic!(a, b, c, d, e, f);
}

impl Script {
    /// Compiles `source` (named `origin` in errors) and checks its handlers against the probe
    /// catalogue `probes`. Top-level statements run later, in [`Script::start`].
    pub fn compile(
        source: &str,
        origin: &str,
        probes: &[&'static str],
        limits: Limits,
        print: Printer,
    ) -> Result<Script, ScriptError> {
        Self::compile_with(source, origin, probes, limits, print, |_| {})
    }

    /// [`Script::compile`], with `extend` registering more functions on the engine (and
    /// hooks such as a deadline) before the script is compiled: what resident scripts use for
    /// their metric and event functions.
    pub fn compile_with(
        source: &str,
        origin: &str,
        probes: &[&'static str],
        limits: Limits,
        print: Printer,
        extend: impl FnOnce(&mut Engine),
    ) -> Result<Script, ScriptError> {
        let state = Arc::new(Mutex::new(State {
            maps: Aggregations::new(limits.maps),
            print: Arc::clone(&print),
        }));
        let exit = Arc::new(AtomicBool::new(false));
        let mut engine = Engine::new();
        engine
            .set_max_operations(limits.operations)
            .set_max_string_size(limits.string_size)
            .set_max_array_size(limits.array_size)
            .set_max_map_size(limits.map_size)
            .set_max_call_levels(limits.call_depth)
            .set_max_expr_depths(64, 32)
            .set_max_variables(1000)
            .set_max_functions(1000)
            // eval() would compile code the checks above never saw.
            .disable_symbol("eval");
        let p = Arc::clone(&print);
        engine.on_print(move |s| p(&format!("{s}\n")));
        let p = Arc::clone(&print);
        engine.on_debug(move |s, _, pos| match pos.line() {
            Some(line) => p(&format!("[line {line}] {s}\n")),
            None => p(&format!("{s}\n")),
        });
        register_builtins(&mut engine, &state, &exit);
        extend(&mut engine);

        let ast = engine.compile(source).map_err(|e| ScriptError {
            origin: origin.to_string(),
            line: e.position().line(),
            column: e.position().position(),
            message: e.err_type().to_string(),
        })?;
        let (handlers, handler_fns) = check_handlers(&ast, probes).map_err(|e| ScriptError {
            origin: origin.to_string(),
            line: None,
            column: None,
            message: e.to_string(),
        })?;
        Ok(Script {
            engine,
            ast,
            scope: Scope::new(),
            state,
            exit,
            origin: origin.to_string(),
            source: source.to_string(),
            handlers,
            handler_fns,
            convert: EventConverter::new(),
            limits,
            stats: Stats::default(),
        })
    }

    pub fn handlers(&self) -> &Handlers {
        &self.handlers
    }

    /// Whether the script mentions event field `field` (`e.stack`, `e["stack"]`), so that
    /// costly fields are collected only for scripts that read them.
    pub fn mentions_field(&self, field: &str) -> bool {
        let words = self
            .source
            .split(|c: char| !(c.is_alphanumeric() || c == '_'));
        words.into_iter().any(|w| w == field)
    }

    /// Runs the top-level statements (once, before any event).
    pub fn start(&mut self) -> Result<(), ScriptError> {
        self.engine
            .run_ast_with_scope(&mut self.scope, &self.ast)
            .map_err(|e| self.error(*e, None))
    }

    fn call(&mut self, name: &str, args: impl rhai::FuncArgs) -> Result<(), ScriptError> {
        let options = CallFnOptions::new().eval_ast(false).rewind_scope(true);
        match self.engine.call_fn_with_options::<Dynamic>(
            options,
            &mut self.scope,
            &self.ast,
            name,
            args,
        ) {
            Ok(_) => Ok(()),
            Err(e) => Err(self.error(*e, Some(name))),
        }
    }

    /// Hands events to their handlers (events of probes without one are skipped) and stops
    /// at the first error, or after the event whose handler called `exit()`.
    pub fn on_events(&mut self, events: &[Event]) -> Result<(), ScriptError> {
        let started = Instant::now();
        let mut handled = 0;
        let mut last_type = "";
        let mut handler: Option<Arc<str>> = None;
        let result = (|| {
            for e in events {
                if self.exited() {
                    break;
                }
                let type_name = e.kind.type_name();
                if type_name != last_type {
                    last_type = type_name;
                    handler = self
                        .handler_fns
                        .iter()
                        .find(|(p, _)| *p == type_name)
                        .map(|(_, f)| Arc::clone(f));
                }
                let Some(name) = &handler else { continue };
                let map = self.convert.convert(e);
                handled += 1;
                self.call(name, (Dynamic::from_map(map),))?;
            }
            Ok(())
        })();
        self.stats.events += handled;
        self.stats.busy += started.elapsed();
        result
    }

    /// As [`Script::on_events`], for events in their JSON form (an agent's event stream):
    /// the handler is chosen by the `type` field.
    pub fn on_json_events(&mut self, events: &[serde_json::Value]) -> Result<(), ScriptError> {
        let started = Instant::now();
        let mut handled = 0;
        let result = (|| {
            for e in events {
                if self.exited() {
                    break;
                }
                let Some(type_name) = e.get("type").and_then(|t| t.as_str()) else {
                    continue;
                };
                let Some(name) = self
                    .handler_fns
                    .iter()
                    .find(|(p, _)| *p == type_name)
                    .map(|(_, f)| Arc::clone(f))
                else {
                    continue;
                };
                handled += 1;
                self.call(&name, (event::json_value(e),))?;
            }
            Ok(())
        })();
        self.stats.events += handled;
        self.stats.busy += started.elapsed();
        result
    }

    /// Runs `on_interval()`, when defined.
    pub fn on_interval(&mut self) -> Result<(), ScriptError> {
        if self.handlers.interval {
            self.call("on_interval", ())?;
        }
        Ok(())
    }

    /// Runs `on_exit()`, when defined.
    pub fn on_exit(&mut self) -> Result<(), ScriptError> {
        if self.handlers.exit {
            self.call("on_exit", ())?;
        }
        Ok(())
    }

    /// Whether the script called `exit()`.
    pub fn exited(&self) -> bool {
        self.exit.load(Ordering::Relaxed)
    }

    /// The aggregation maps, for printing.
    pub fn maps(&self) -> impl std::ops::Deref<Target = Aggregations> + '_ {
        struct Maps<'a>(MutexGuard<'a, State>);
        impl std::ops::Deref for Maps<'_> {
            type Target = Aggregations;
            fn deref(&self) -> &Aggregations {
                &self.0.maps
            }
        }
        Maps(self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// A rhai error as a script error: the innermost position, and the limit it hit named.
    fn error(&self, err: EvalAltResult, handler: Option<&str>) -> ScriptError {
        let mut functions = Vec::new();
        let mut err = &err;
        while let EvalAltResult::ErrorInFunctionCall(name, _, inner, _) = err {
            functions.push(name.clone());
            err = inner;
        }
        let pos = err.position();
        let l = &self.limits;
        let mut message = match err {
            EvalAltResult::ErrorTooManyOperations(_) => format!(
                "stopped: the handler ran more than {} operations, the limit per call \
                 (an endless loop?)",
                l.operations
            ),
            EvalAltResult::ErrorStackOverflow(_) => format!(
                "stopped: function calls nested deeper than {}, the limit (endless recursion?)",
                l.call_depth
            ),
            EvalAltResult::ErrorDataTooLarge(what, _) => format!(
                "stopped: {} is over the limit (strings {} bytes, arrays {} items, \
                 object maps {} entries)",
                what.to_lowercase(),
                l.string_size,
                l.array_size,
                l.map_size
            ),
            EvalAltResult::ErrorRuntime(v, _) => v.to_string(),
            other => {
                let text = other.to_string();
                match text.strip_suffix(&format!(" ({pos})")) {
                    Some(t) => t.to_string(),
                    None => text,
                }
            }
        };
        let within: Vec<String> = handler
            .map(String::from)
            .into_iter()
            .chain(
                functions
                    .into_iter()
                    .filter(|f| Some(f.as_str()) != handler),
            )
            .collect();
        if !within.is_empty() {
            message = format!("in {}(): {message}", within.join("() > "));
        }
        ScriptError {
            origin: self.origin.clone(),
            line: pos.line(),
            column: pos.position(),
            message,
        }
    }
}

/// A script's `on_*` function that is not a handler the agent can call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum HandlerError {
    #[error("handler {name} takes {want} parameter(s), not {got}: fn {shape}")]
    Arity {
        name: String,
        want: usize,
        got: usize,
        shape: String,
    },
    #[error("{name}: the {probe} probe has no events (it keeps metrics and a table)")]
    NoEvents { name: String, probe: String },
    #[error("unknown handler {name}: there is no probe named {probe:?}; the handlers are {all}")]
    Unknown {
        name: String,
        probe: String,
        all: String,
    },
}

/// Checks `on_*` functions against the catalogue: `on_<probe>(e)`, `on_interval()`,
/// `on_exit()`; any other `on_` name is an error that lists what exists.
fn check_handlers(
    ast: &AST,
    probes: &[&'static str],
) -> Result<(Handlers, HandlerFns), HandlerError> {
    let mut handlers = Handlers::default();
    let mut fns = Vec::new();
    let all = || {
        let mut names: Vec<String> = probes.iter().map(|p| format!("on_{p}(e)")).collect();
        names.push("on_interval()".into());
        names.push("on_exit()".into());
        names.join(", ")
    };
    for f in ast.iter_functions() {
        let Some(what) = f.name.strip_prefix("on_") else {
            continue;
        };
        let arity = |n: usize, shape: &str| {
            if f.params.len() == n {
                Ok(())
            } else {
                Err(HandlerError::Arity {
                    name: f.name.to_string(),
                    want: n,
                    got: f.params.len(),
                    shape: shape.to_string(),
                })
            }
        };
        match what {
            "interval" => {
                arity(0, "on_interval()")?;
                handlers.interval = true;
            }
            "exit" => {
                arity(0, "on_exit()")?;
                handlers.exit = true;
            }
            _ => match probes.iter().find(|p| **p == what) {
                Some(probe) => {
                    arity(1, &format!("{}(e)", f.name))?;
                    fns.push((*probe, Arc::from(f.name)));
                }
                None if crate::probes::DRIVERS.iter().any(|d| d.spec.name == what) => {
                    return Err(HandlerError::NoEvents {
                        name: f.name.to_string(),
                        probe: what.to_string(),
                    });
                }
                None => {
                    return Err(HandlerError::Unknown {
                        name: f.name.to_string(),
                        probe: what.to_string(),
                        all: all(),
                    })
                }
            },
        }
    }
    handlers.probes = probes
        .iter()
        .copied()
        .filter(|p| fns.iter().any(|(q, _)| q == p))
        .collect();
    Ok((handlers, fns))
}

#[cfg(test)]
mod tests {
    use super::event::drop_event;
    use super::*;

    const PROBES: &[&str] = &["packet_drop", "tcp_retrans", "tcp_reset"];

    fn compile_with(source: &str, limits: Limits) -> (Script, Arc<Mutex<String>>) {
        let printed = Arc::new(Mutex::new(String::new()));
        let p = Arc::clone(&printed);
        let script = Script::compile(
            source,
            "test.rhai",
            PROBES,
            limits,
            Arc::new(move |s| p.lock().unwrap().push_str(s)),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        (script, printed)
    }

    fn compile(source: &str) -> (Script, Arc<Mutex<String>>) {
        compile_with(source, Limits::default())
    }

    fn compile_err(source: &str) -> String {
        match Script::compile(source, "-e", PROBES, Limits::default(), Arc::new(|_| {})) {
            Ok(_) => panic!("{source:?} compiled"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn handlers_name_the_probes_they_need() {
        let (s, _) = compile(
            "fn on_tcp_reset(e) {} fn on_packet_drop(e) {} fn helper(x) {} fn on_exit() {}",
        );
        assert_eq!(
            s.handlers(),
            &Handlers {
                probes: vec!["packet_drop", "tcp_reset"],
                interval: false,
                exit: true,
            }
        );
    }

    #[test]
    fn unknown_handler_lists_the_probes() {
        let e = compile_err("fn on_foo(e) { }");
        assert_eq!(
            e,
            "-e: unknown handler on_foo: there is no probe named \"foo\"; the handlers are \
             on_packet_drop(e), on_tcp_retrans(e), on_tcp_reset(e), on_interval(), on_exit()"
        );
        let e = compile_err("fn on_packet_drop() { }");
        assert!(e.contains("takes 1 parameter(s), not 0"), "{e}");
    }

    #[test]
    fn syntax_error_names_line_and_column() {
        let e = compile_err("fn on_packet_drop(e) {\n  count(\"x\", e.pod);\n  let = 3;\n}");
        assert!(e.starts_with("-e:3:7: "), "{e}");
    }

    #[test]
    fn modules_and_eval_are_unavailable() {
        let e = compile_err("import \"/etc/passwd\" as p;");
        assert!(e.starts_with("-e:1:1: "), "{e}");
        let e = compile_err("fn on_exit() { eval(\"1\") }");
        assert!(e.contains("eval"), "{e}");
    }

    #[test]
    fn counts_by_pod_and_reason() {
        let (mut s, _) = compile("fn on_packet_drop(e) { count(\"drops\", [e.pod, e.reason]); }");
        let events: Vec<Event> = (0..300)
            .map(|i| drop_event("B", "NETFILTER_DROP", 1000 + i, 9999))
            .collect();
        s.on_events(&events).unwrap();
        assert_eq!(
            output::json(&s.maps()),
            serde_json::json!({"maps": {"drops": [{"key": ["B", "NETFILTER_DROP"], "value": 300}]}})
        );
        assert_eq!(s.stats().events, 300);
    }

    #[test]
    fn hist_and_lhist_of_event_fields() {
        let (mut s, _) = compile(
            "fn on_packet_drop(e) { hist(\"sport\", e.sport); lhist(\"dport\", e.pod, e.dport, 0, 100, 10); }",
        );
        let events: Vec<Event> = [(1, 5), (2, 15), (3, 15), (4, 95), (8, 100), (1500, 250)]
            .iter()
            .map(|&(sport, dport)| drop_event("B", "X", sport, dport))
            .collect();
        s.on_events(&events).unwrap();
        let j = output::json(&s.maps());
        assert_eq!(
            j["maps"]["sport"][0]["value"]["buckets"],
            serde_json::json!([
                {"min": 1, "max": 2, "count": 1},
                {"min": 2, "max": 4, "count": 2},
                {"min": 4, "max": 8, "count": 1},
                {"min": 8, "max": 16, "count": 1},
                {"min": 16, "max": 32, "count": 0},
                {"min": 32, "max": 64, "count": 0},
                {"min": 64, "max": 128, "count": 0},
                {"min": 128, "max": 256, "count": 0},
                {"min": 256, "max": 512, "count": 0},
                {"min": 512, "max": 1024, "count": 0},
                {"min": 1024, "max": 2048, "count": 1},
            ])
        );
        assert_eq!(
            j["maps"]["dport"][0],
            serde_json::json!({"key": ["B"], "value": {
                "buckets": [
                    {"min": 0, "max": 10, "count": 1},
                    {"min": 10, "max": 20, "count": 2},
                    {"min": 20, "max": 30, "count": 0},
                    {"min": 30, "max": 40, "count": 0},
                    {"min": 40, "max": 50, "count": 0},
                    {"min": 50, "max": 60, "count": 0},
                    {"min": 60, "max": 70, "count": 0},
                    {"min": 70, "max": 80, "count": 0},
                    {"min": 80, "max": 90, "count": 0},
                    {"min": 90, "max": 100, "count": 1},
                    {"min": 100, "max": null, "count": 2},
                ],
                "count": 6, "sum": 480}})
        );
    }

    #[test]
    fn endless_loop_is_stopped_by_the_operation_limit() {
        let limits = Limits {
            operations: 10_000,
            ..Limits::default()
        };
        for (source, at) in [
            ("fn on_packet_drop(e) {\n  loop { }\n}", "test.rhai: "),
            // rhai reports limits where the handler was called, which for a handler is nowhere.
            (
                "fn on_packet_drop(e) {\n  let n = 0;\n  loop { n += 1; }\n}",
                "test.rhai: ",
            ),
        ] {
            let (mut s, _) = compile_with(source, limits);
            let err = s
                .on_events(&[drop_event("B", "X", 1, 2)])
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(at), "{err}");
            assert!(
                err.contains(
                    "in on_packet_drop(): stopped: the handler ran more than 10000 operations"
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn size_and_depth_limits_stop_the_script() {
        let (mut s, _) = compile("fn on_exit() { let s = \"x\"; loop { s += s; } }");
        let err = s.on_exit().unwrap_err().to_string();
        assert!(err.contains("over the limit (strings 65536 bytes"), "{err}");
        let (mut s, _) = compile("fn f(n) { f(n + 1) } fn on_exit() { f(0) }");
        let err = s.on_exit().unwrap_err().to_string();
        assert!(err.contains("deeper than 32"), "{err}");
        let (mut s, _) = compile("fn on_exit() { for i in 0..20000 { count(\"m\", i); } }");
        let err = s.on_exit().unwrap_err().to_string();
        assert!(err.contains("limit of 10000 entries"), "{err}");
    }

    #[test]
    fn mixing_kinds_in_a_map_is_an_error() {
        let (mut s, _) = compile("fn on_exit() {\n  count(\"m\", 1);\n  sum(\"m\", 1, 2);\n}");
        let err = s.on_exit().unwrap_err().to_string();
        assert_eq!(
            err,
            "test.rhai:3:3: in on_exit(): map @m holds count values; it cannot also take sum()"
        );
    }

    #[test]
    fn exit_stops_at_once() {
        let (mut s, printed) =
            compile("fn on_packet_drop(e) { if count(\"n\") >= 3 { exit(); } print(\"seen\"); }");
        let events: Vec<Event> = (0..10).map(|i| drop_event("B", "X", i, 2)).collect();
        s.on_events(&events).unwrap();
        assert!(s.exited());
        assert_eq!(s.stats().events, 3);
        assert_eq!(*printed.lock().unwrap(), "seen\nseen\n");
    }

    #[test]
    fn printing() {
        let (mut s, printed) = compile(
            "count(\"n\", \"k\");\n\
             fn on_exit() { printf(\"%-4s|%5d|%x\\n\", \"ab\", 42, 255); print(sprintf(\"%.1f\", 1.23456)); print_map(\"n\"); }",
        );
        s.start().unwrap();
        s.on_exit().unwrap();
        assert_eq!(*printed.lock().unwrap(), "ab  |   42|ff\n1.2\n@n[k]: 1\n\n");
    }

    #[test]
    fn lookup_reads_entries_by_any_key() {
        let (mut s, printed) = compile(
            "count(\"p\", 9999); count(\"p\", 9999); sum(\"s\", [\"a\", 1], 5); count(\"n\");\n\
             print(`${lookup(\"p\", 9999)} ${lookup(\"p\", [9999])} ${lookup(\"s\", [\"a\", 1])} ${lookup(\"n\")} ${lookup(\"p\", 1)}`);",
        );
        s.start().unwrap();
        assert_eq!(*printed.lock().unwrap(), "2 2 5 1 \n");
    }

    #[test]
    fn stack_is_collected_only_when_mentioned() {
        let (s, _) = compile("fn on_packet_drop(e) { count(\"s\", e.stack); }");
        assert!(s.mentions_field("stack"));
        let (s, _) = compile("fn on_packet_drop(e) { count(\"s\", e.location); }");
        assert!(!s.mentions_field("stack"));
    }
}
