//! A renderer for Helm charts written in a small subset of Helm's template language, for a
//! machine without `helm`. Every construct it accepts renders as Helm 3 renders it; anything
//! else is refused with the file and the reason, never guessed.
//!
//! The subset:
//! - text and `{{ pipeline }}` actions, with `{{-` / `-}}` trimming and `{{/* comments */}}`;
//! - operands: `.`, `.Values.a.b`, `.Release.Name`, `.Release.Namespace`, `.Chart.Name`,
//!   `.Chart.Version`, `.Chart.AppVersion`, `$` and `$var` (with fields), "strings",
//!   `raw strings`, integers, `true`, `false`, and `( pipeline )`;
//! - `if` / `else if` / `else`, `with` / `else`, `range` (lists and maps, with `$v :=` or
//!   `$k, $v :=`), `define` / `include`, and `$var := pipeline`;
//! - functions `toYaml`, `indent`, `nindent`, `quote`, `default`, `include`.
//!
//! Values are read as Helm reads them (YAML through JSON, so every number is a float64), and
//! printed as Go prints them; numbers Go would print in exponent form, strings whose YAML 1.1
//! reading differs from YAML 1.2 (`yes`, `on`...), and strings `toYaml` would have to write in
//! a style this renderer does not reproduce (multi-line, single-quoted) are refused.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

/// A value as Helm's templates see it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    List(Vec<Value>),
    Map(BTreeMap<String, Value>),
}

impl Value {
    /// Converts YAML as Helm loads values: YAML to JSON (numbers become float64, keys strings).
    pub fn from_yaml(v: &serde_yaml::Value, at: &str) -> Result<Value, String> {
        Ok(match v {
            serde_yaml::Value::Null => Value::Null,
            serde_yaml::Value::Bool(b) => Value::Bool(*b),
            serde_yaml::Value::Number(n) => Value::Num(
                n.as_f64()
                    .ok_or_else(|| format!("{at}: {n} is not a number Helm can hold"))?,
            ),
            serde_yaml::Value::String(s) => {
                if yaml11_differs(s) {
                    return Err(format!(
                        "{at}: {s:?} reads as a boolean in YAML 1.1 (Helm's reading); write true/false or another word"
                    ));
                }
                Value::Str(s.clone())
            }
            serde_yaml::Value::Sequence(items) => Value::List(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| Value::from_yaml(item, &format!("{at}[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
            serde_yaml::Value::Mapping(map) => {
                let mut out = BTreeMap::new();
                for (k, item) in map {
                    let serde_yaml::Value::String(key) = k else {
                        return Err(format!("{at}: key {k:?} is not a string"));
                    };
                    if yaml11_differs(key) {
                        return Err(format!("{at}: key {key:?} reads as a boolean in YAML 1.1"));
                    }
                    out.insert(key.clone(), Value::from_yaml(item, &format!("{at}.{key}"))?);
                }
                Value::Map(out)
            }
            serde_yaml::Value::Tagged(t) => {
                return Err(format!("{at}: YAML tag {} is not supported", t.tag))
            }
        })
    }

    /// Go templates' truth: false, 0, nil and empty strings, lists and maps are false.
    fn truthy(&self) -> bool {
        match self {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Num(n) => *n != 0.0,
            Value::Str(s) => !s.is_empty(),
            Value::List(l) => !l.is_empty(),
            Value::Map(m) => !m.is_empty(),
        }
    }

    fn field(&self, name: &str) -> Result<Value, String> {
        match self {
            Value::Map(m) => Ok(m.get(name).cloned().unwrap_or(Value::Null)),
            Value::Null => Err(format!("nil pointer evaluating interface {{}}.{name}")),
            other => Err(format!("can't evaluate field {name} in {}", other.kind())),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "nil",
            Value::Bool(_) => "bool",
            Value::Num(_) => "float64",
            Value::Str(_) => "string",
            Value::List(_) => "[]interface {}",
            Value::Map(_) => "map[string]interface {}",
        }
    }

    /// The text `{{ value }}` prints (Go's `%v`; Helm prints a missing value as nothing).
    fn print(&self) -> Result<String, String> {
        match self {
            Value::Null => Ok(String::new()),
            Value::Bool(b) => Ok(b.to_string()),
            Value::Num(n) => go_float(*n),
            Value::Str(s) => Ok(s.clone()),
            other => Err(format!(
                "printing a {} directly is not supported: use toYaml",
                other.kind()
            )),
        }
    }
}

/// Words YAML 1.1 (go-yaml, which Helm reads values with) takes for booleans, unlike YAML 1.2.
fn yaml11_differs(s: &str) -> bool {
    matches!(
        s,
        "y" | "Y"
            | "yes"
            | "Yes"
            | "YES"
            | "n"
            | "N"
            | "no"
            | "No"
            | "NO"
            | "on"
            | "On"
            | "ON"
            | "off"
            | "Off"
            | "OFF"
    )
}

/// A float64 as Go's `%v` (and go-yaml) print it, where that is plain decimal: integers below
/// 10^6 in magnitude (Go switches to exponent form at 1e+06) and short fractions.
fn go_float(n: f64) -> Result<String, String> {
    if n.fract() == 0.0 && n.abs() < 1e6 {
        return Ok(format!("{n:.0}"));
    }
    let s = format!("{n}");
    if n.is_finite() && n.abs() >= 1e-4 && n.abs() < 1e6 && !s.contains('e') {
        return Ok(s);
    }
    Err(format!(
        "the number {n} would print in exponent form in Helm (float64 %v): quote it in values"
    ))
}

// ---------------------------------------------------------------------------------------------
// Lexing and parsing

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Action(Pipe),
    If(Vec<(Pipe, Vec<Node>)>, Vec<Node>),
    With(Pipe, Vec<Node>, Vec<Node>),
    Range {
        vars: Vec<String>,
        pipe: Pipe,
        body: Vec<Node>,
        otherwise: Vec<Node>,
    },
}

#[derive(Debug, Clone)]
struct Pipe {
    /// `$x :=` before the pipeline.
    decl: Option<String>,
    cmds: Vec<Vec<Arg>>,
}

#[derive(Debug, Clone)]
enum Arg {
    /// `.a.b` (empty: the dot itself).
    Field(Vec<String>),
    /// `$name.a.b` (`$` alone is named "$").
    Var(String, Vec<String>),
    Lit(Value),
    Func(String),
    Sub(Box<Pipe>),
}

const FUNCS: &[&str] = &["toYaml", "indent", "nindent", "quote", "default", "include"];

/// One `{{ }}` or the text between them.
enum Piece {
    Text(String),
    Action(String),
}

fn lex(src: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    while let Some(open) = rest.find("{{") {
        let mut text = rest[..open].to_string();
        if trim_next {
            text = text.trim_start().to_string();
        }
        let after = &rest[open + 2..];
        let (trim_left, inner_start) = match after.as_bytes() {
            [b'-', b' ' | b'\t' | b'\n' | b'\r', ..] => (true, 1),
            _ => (false, 0),
        };
        if trim_left {
            text = text.trim_end().to_string();
        }
        pieces.push(Piece::Text(text));
        let inner = &after[inner_start..];
        // A comment may contain "}}" only before its "*/".
        let search_from = if inner.trim_start().starts_with("/*") {
            inner.find("*/").ok_or("unclosed comment")?
        } else {
            0
        };
        let close = if search_from > 0 {
            inner[search_from..].find("}}").map(|i| i + search_from)
        } else {
            action_end(inner)
        }
        .ok_or("unclosed action: {{ without }}")?;
        let mut body = &inner[..close];
        trim_next = false;
        if let Some(b) = body.strip_suffix('-') {
            if b.ends_with([' ', '\t', '\n', '\r']) {
                trim_next = true;
                body = b;
            }
        }
        let body = body.trim();
        if !(body.starts_with("/*") && body.ends_with("*/")) {
            pieces.push(Piece::Action(body.to_string()));
        }
        rest = &inner[close + 2..];
    }
    let mut text = rest.to_string();
    if trim_next {
        text = text.trim_start().to_string();
    }
    pieces.push(Piece::Text(text));
    Ok(pieces)
}

/// Where an action's `}}` is, skipping quoted and raw strings.
fn action_end(inner: &str) -> Option<usize> {
    let bytes = inner.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'`' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'`' {
                    i += 1;
                }
            }
            b'}' if bytes.get(i + 1) == Some(&b'}') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Field(Vec<String>),
    Var(String, Vec<String>),
    Str(String),
    Num(f64),
    Pipe,
    Open,
    Close,
    Declare,
    Comma,
}

fn tokens(action: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let chars: Vec<char> = action.chars().collect();
    let mut i = 0;
    let word = |i: &mut usize| {
        let start = *i;
        while *i < chars.len() && (chars[*i].is_alphanumeric() || chars[*i] == '_') {
            *i += 1;
        }
        chars[start..*i].iter().collect::<String>()
    };
    let fields = |i: &mut usize| {
        let mut path = Vec::new();
        while *i < chars.len() && chars[*i] == '.' {
            *i += 1;
            let start = *i;
            while *i < chars.len() && (chars[*i].is_alphanumeric() || chars[*i] == '_') {
                *i += 1;
            }
            if *i > start {
                path.push(chars[start..*i].iter().collect::<String>());
            }
        }
        path
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '|' => {
                out.push(Tok::Pipe);
                i += 1
            }
            '(' => {
                out.push(Tok::Open);
                i += 1
            }
            ')' => {
                out.push(Tok::Close);
                i += 1
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1
            }
            ':' if chars.get(i + 1) == Some(&'=') => {
                out.push(Tok::Declare);
                i += 2
            }
            '.' => out.push(Tok::Field(fields(&mut i))),
            '$' => {
                i += 1;
                let name = word(&mut i);
                let name = if name.is_empty() {
                    "$".to_string()
                } else {
                    format!("${name}")
                };
                out.push(Tok::Var(name, fields(&mut i)));
            }
            '"' => {
                i += 1;
                let mut s = String::new();
                loop {
                    match chars.get(i) {
                        None => return Err("unterminated string".into()),
                        Some('"') => break,
                        Some('\\') => {
                            i += 1;
                            s.push(match chars.get(i) {
                                Some('n') => '\n',
                                Some('t') => '\t',
                                Some('\\') => '\\',
                                Some('"') => '"',
                                other => return Err(format!("unsupported escape \\{other:?}")),
                            });
                        }
                        Some(&c) => s.push(c),
                    }
                    i += 1;
                }
                i += 1;
                out.push(Tok::Str(s));
            }
            '`' => {
                let end = chars[i + 1..]
                    .iter()
                    .position(|&c| c == '`')
                    .ok_or("unterminated raw string")?;
                out.push(Tok::Str(chars[i + 1..i + 1 + end].iter().collect()));
                i += end + 2;
            }
            c if c.is_ascii_digit() || c == '-' => {
                let start = i;
                i += 1;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                out.push(Tok::Num(
                    text.parse().map_err(|_| format!("bad number {text}"))?,
                ));
            }
            c if c.is_alphabetic() => out.push(Tok::Word(word(&mut i))),
            other => return Err(format!("unexpected {other:?}")),
        }
    }
    Ok(out)
}

fn parse_pipe(toks: &[Tok]) -> Result<Pipe, String> {
    let (decl, toks) = match toks {
        [Tok::Var(name, path), Tok::Declare, rest @ ..] if path.is_empty() => {
            (Some(name.clone()), rest)
        }
        _ => (None, toks),
    };
    let mut cmds = vec![Vec::new()];
    let mut i = 0;
    while i < toks.len() {
        let arg = match &toks[i] {
            Tok::Pipe => {
                cmds.push(Vec::new());
                i += 1;
                continue;
            }
            Tok::Field(p) => Arg::Field(p.clone()),
            Tok::Var(n, p) => Arg::Var(n.clone(), p.clone()),
            Tok::Str(s) => Arg::Lit(Value::Str(s.clone())),
            Tok::Num(n) => Arg::Lit(Value::Num(*n)),
            Tok::Word(w) if w == "true" || w == "false" => Arg::Lit(Value::Bool(w == "true")),
            Tok::Word(w) if FUNCS.contains(&w.as_str()) => Arg::Func(w.clone()),
            Tok::Word(w) => return Err(format!("function {w:?} is not in the supported subset")),
            Tok::Open => {
                let mut depth = 0;
                let end = (i..toks.len())
                    .find(|&j| {
                        match toks[j] {
                            Tok::Open => depth += 1,
                            Tok::Close => depth -= 1,
                            _ => {}
                        }
                        depth == 0
                    })
                    .ok_or("unbalanced parentheses")?;
                let sub = parse_pipe(&toks[i + 1..end])?;
                i = end;
                Arg::Sub(Box::new(sub))
            }
            other => return Err(format!("unexpected {other:?}")),
        };
        cmds.last_mut().unwrap().push(arg);
        i += 1;
    }
    if cmds.iter().any(Vec::is_empty) {
        return Err("empty command in pipeline".into());
    }
    Ok(Pipe { decl, cmds })
}

/// Parses pieces into nodes until one of `stops` (an `end`, `else`... keyword) is met.
struct Parser {
    pieces: std::vec::IntoIter<Piece>,
    defines: HashMap<String, Vec<Node>>,
}

enum Stop {
    End,
    Else(Option<Vec<Tok>>),
    Eof,
}

impl Parser {
    fn block(&mut self) -> Result<(Vec<Node>, Stop), String> {
        let mut nodes = Vec::new();
        while let Some(piece) = self.pieces.next() {
            let action = match piece {
                Piece::Text(t) => {
                    if !t.is_empty() {
                        nodes.push(Node::Text(t));
                    }
                    continue;
                }
                Piece::Action(a) => a,
            };
            let toks = tokens(&action).map_err(|e| format!("{{{{ {action} }}}}: {e}"))?;
            let err = |e: String| format!("{{{{ {action} }}}}: {e}");
            match toks.first() {
                Some(Tok::Word(w)) if w == "end" => return Ok((nodes, Stop::End)),
                Some(Tok::Word(w)) if w == "else" => {
                    return Ok((nodes, Stop::Else(Some(toks[1..].to_vec()))))
                }
                Some(Tok::Word(w)) if w == "if" => {
                    let mut branches = vec![];
                    let mut cond = parse_pipe(&toks[1..]).map_err(err)?;
                    let otherwise = loop {
                        let (body, stop) = self.block()?;
                        branches.push((cond, body));
                        match stop {
                            Stop::End => break Vec::new(),
                            Stop::Else(Some(rest)) if matches!(rest.first(), Some(Tok::Word(w)) if w == "if") =>
                            {
                                cond = parse_pipe(&rest[1..]).map_err(err)?;
                            }
                            Stop::Else(Some(rest)) if rest.is_empty() => {
                                let (body, stop) = self.block()?;
                                self.expect_end(stop, &action)?;
                                break body;
                            }
                            _ => return Err(err("if without a matching end".into())),
                        }
                    };
                    nodes.push(Node::If(branches, otherwise));
                }
                Some(Tok::Word(w)) if w == "with" || w == "range" => {
                    let is_range = w == "range";
                    let mut rest = &toks[1..];
                    let mut vars = Vec::new();
                    if is_range {
                        if let Some(pos) = rest.iter().position(|t| *t == Tok::Declare) {
                            for t in &rest[..pos] {
                                match t {
                                    Tok::Var(n, p) if p.is_empty() => vars.push(n.clone()),
                                    Tok::Comma => {}
                                    _ => return Err(err("bad range variables".into())),
                                }
                            }
                            rest = &rest[pos + 1..];
                        }
                    }
                    let pipe = parse_pipe(rest).map_err(err)?;
                    let (body, stop) = self.block()?;
                    let otherwise = match stop {
                        Stop::End => Vec::new(),
                        Stop::Else(Some(r)) if r.is_empty() => {
                            let (body, stop) = self.block()?;
                            self.expect_end(stop, &action)?;
                            body
                        }
                        _ => return Err(err("without a matching end".into())),
                    };
                    nodes.push(if is_range {
                        Node::Range {
                            vars,
                            pipe,
                            body,
                            otherwise,
                        }
                    } else {
                        Node::With(pipe, body, otherwise)
                    });
                }
                Some(Tok::Word(w)) if w == "define" => {
                    let [_, Tok::Str(name)] = &toks[..] else {
                        return Err(err("define needs one quoted name".into()));
                    };
                    let (body, stop) = self.block()?;
                    self.expect_end(stop, &action)?;
                    self.defines.insert(name.clone(), body);
                }
                Some(Tok::Word(w))
                    if ["template", "block", "break", "continue", "tpl"].contains(&w.as_str()) =>
                {
                    return Err(err(format!("{w} is not in the supported subset")))
                }
                _ => nodes.push(Node::Action(parse_pipe(&toks).map_err(err)?)),
            }
        }
        Ok((nodes, Stop::Eof))
    }

    fn expect_end(&self, stop: Stop, action: &str) -> Result<(), String> {
        match stop {
            Stop::End => Ok(()),
            _ => Err(format!("{{{{ {action} }}}}: no matching end")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation

struct Scope<'a> {
    defines: &'a HashMap<String, Vec<Node>>,
    vars: Vec<(String, Value)>,
    /// Nested includes, to refuse a template that includes itself forever.
    depth: usize,
}

impl Scope<'_> {
    fn render(&mut self, nodes: &[Node], dot: &Value, out: &mut String) -> Result<(), String> {
        let mark = self.vars.len();
        for node in nodes {
            match node {
                Node::Text(t) => out.push_str(t),
                Node::Action(p) => {
                    let v = self.pipe(p, dot)?;
                    if p.decl.is_none() {
                        out.push_str(&v.print()?);
                    }
                }
                Node::If(branches, otherwise) => {
                    let mut done = false;
                    for (cond, body) in branches {
                        if self.pipe(cond, dot)?.truthy() {
                            self.render(body, dot, out)?;
                            done = true;
                            break;
                        }
                    }
                    if !done {
                        self.render(otherwise, dot, out)?;
                    }
                }
                Node::With(p, body, otherwise) => {
                    let v = self.pipe(p, dot)?;
                    if v.truthy() {
                        self.render(body, &v, out)?;
                    } else {
                        self.render(otherwise, dot, out)?;
                    }
                }
                Node::Range {
                    vars,
                    pipe,
                    body,
                    otherwise,
                } => {
                    let items: Vec<(Value, Value)> = match self.pipe(pipe, dot)? {
                        Value::List(l) => l
                            .into_iter()
                            .enumerate()
                            .map(|(i, v)| (Value::Num(i as f64), v))
                            .collect(),
                        Value::Map(m) => m.into_iter().map(|(k, v)| (Value::Str(k), v)).collect(),
                        Value::Null => Vec::new(),
                        other => return Err(format!("range can't iterate over {}", other.kind())),
                    };
                    if items.is_empty() {
                        self.render(otherwise, dot, out)?;
                    }
                    for (key, item) in items {
                        let mark = self.vars.len();
                        match vars.as_slice() {
                            [] => {}
                            [v] => self.vars.push((v.clone(), item.clone())),
                            [k, v] => {
                                self.vars.push((k.clone(), key));
                                self.vars.push((v.clone(), item.clone()));
                            }
                            _ => return Err("range takes at most two variables".into()),
                        }
                        self.render(body, &item, out)?;
                        self.vars.truncate(mark);
                    }
                }
            }
        }
        self.vars.truncate(mark);
        Ok(())
    }

    fn pipe(&mut self, pipe: &Pipe, dot: &Value) -> Result<Value, String> {
        let mut piped = None;
        for cmd in &pipe.cmds {
            piped = Some(self.command(cmd, dot, piped)?);
        }
        let v = piped.expect("a pipeline has a command");
        if let Some(name) = &pipe.decl {
            self.vars.push((name.clone(), v.clone()));
        }
        Ok(v)
    }

    fn arg(&mut self, arg: &Arg, dot: &Value) -> Result<Value, String> {
        let walk = |mut v: Value, path: &[String]| {
            for f in path {
                v = v.field(f)?;
            }
            Ok::<_, String>(v)
        };
        match arg {
            Arg::Field(path) => walk(dot.clone(), path),
            Arg::Var(name, path) => {
                let v = self
                    .vars
                    .iter()
                    .rev()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| format!("undefined variable {name}"))?;
                walk(v, path)
            }
            Arg::Lit(v) => Ok(v.clone()),
            Arg::Sub(p) => self.pipe(p, dot),
            Arg::Func(f) => Err(format!("{f} used as a value")),
        }
    }

    fn command(&mut self, cmd: &[Arg], dot: &Value, piped: Option<Value>) -> Result<Value, String> {
        let Arg::Func(name) = &cmd[0] else {
            if cmd.len() > 1 || piped.is_some() {
                return Err("only functions take arguments".into());
            }
            return self.arg(&cmd[0], dot);
        };
        let mut args = cmd[1..]
            .iter()
            .map(|a| self.arg(a, dot))
            .collect::<Result<Vec<_>, _>>()?;
        args.extend(piped);
        let want = |n: usize| {
            if args.len() == n {
                Ok(())
            } else {
                Err(format!("{name} takes {n} arguments, got {}", args.len()))
            }
        };
        match name.as_str() {
            "toYaml" => {
                want(1)?;
                let mut s = String::new();
                yaml(&args[0], 0, &mut s)?;
                Ok(Value::Str(s.trim_end_matches('\n').to_string()))
            }
            "indent" | "nindent" => {
                want(2)?;
                let Value::Num(n) = args[0] else {
                    return Err(format!("{name}: the width must be a number"));
                };
                let pad = " ".repeat(n as usize);
                let Value::Str(s) = &args[1] else {
                    return Err(format!("{name}: a {} is not a string", args[1].kind()));
                };
                let body = format!("{pad}{}", s.replace('\n', &format!("\n{pad}")));
                Ok(Value::Str(if name == "nindent" {
                    format!("\n{body}")
                } else {
                    body
                }))
            }
            "quote" => {
                let quoted = args
                    .iter()
                    .filter(|a| **a != Value::Null)
                    .map(|a| Ok(go_quote(&a.print()?)))
                    .collect::<Result<Vec<_>, String>>()?;
                Ok(Value::Str(quoted.join(" ")))
            }
            "default" => {
                want(2)?;
                Ok(if args[1].truthy() {
                    args[1].clone()
                } else {
                    args[0].clone()
                })
            }
            "include" => {
                want(2)?;
                let Value::Str(tpl) = &args[0] else {
                    return Err("include: the template name must be a string".into());
                };
                let body = self
                    .defines
                    .get(tpl)
                    .ok_or_else(|| format!("include: no template {tpl:?}"))?;
                if self.depth > 50 {
                    return Err(format!("include {tpl:?}: nested too deep"));
                }
                let mut inner = Scope {
                    defines: self.defines,
                    vars: vec![("$".into(), args[1].clone())],
                    depth: self.depth + 1,
                };
                let mut s = String::new();
                inner.render(body, &args[1], &mut s)?;
                Ok(Value::Str(s))
            }
            other => Err(format!("function {other} is not in the supported subset")),
        }
    }
}

/// Go's `%q` (strconv.Quote) for printable text.
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------------------------
// toYaml: go-yaml v2's output (through sigs.k8s.io/yaml, as Helm's toYaml does)

fn yaml(v: &Value, indent: usize, out: &mut String) -> Result<(), String> {
    let pad = " ".repeat(indent);
    match v {
        Value::Map(m) if !m.is_empty() => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_by(|a, b| yaml_v2_key_order(a, b));
            for k in keys {
                let item = &m[k];
                out.push_str(&pad);
                out.push_str(&scalar_str(k)?);
                out.push(':');
                match item {
                    Value::Map(im) if !im.is_empty() => {
                        out.push('\n');
                        yaml(item, indent + 2, out)?;
                    }
                    // go-yaml v2 does not indent a sequence under its key.
                    Value::List(l) if !l.is_empty() => {
                        out.push('\n');
                        yaml(item, indent, out)?;
                    }
                    _ => {
                        out.push(' ');
                        out.push_str(&yaml_scalar(item)?);
                        out.push('\n');
                    }
                }
            }
        }
        Value::List(l) if !l.is_empty() => {
            for item in l {
                out.push_str(&pad);
                out.push_str("- ");
                match item {
                    // A block item starts on the dash's line: `- key: v` / `- - x`.
                    Value::Map(_) | Value::List(_) if item.truthy() => {
                        let mut inner = String::new();
                        yaml(item, indent + 2, &mut inner)?;
                        out.push_str(&inner[indent + 2..]);
                    }
                    _ => {
                        out.push_str(&yaml_scalar(item)?);
                        out.push('\n');
                    }
                }
            }
        }
        _ => {
            out.push_str(&pad);
            out.push_str(&yaml_scalar(v)?);
            out.push('\n');
        }
    }
    Ok(())
}

fn yaml_scalar(v: &Value) -> Result<String, String> {
    match v {
        Value::Null => Ok("null".into()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Num(n) => go_float(*n),
        Value::Str(s) => scalar_str(s),
        Value::Map(_) => Ok("{}".into()),
        Value::List(_) => Ok("[]".into()),
    }
}

/// A string as go-yaml v2 writes it: plain when that reads back as the same string, double
/// quoted when plain would read as another type. Strings go-yaml would write single-quoted
/// or as a literal block are refused.
fn scalar_str(s: &str) -> Result<String, String> {
    if s.is_empty() || resolves_to_non_string(s)? {
        return Ok(go_quote(s));
    }
    let first_ok =
        s.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '/' || c == '.' || c == '_');
    let chars_ok = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || " -._/:=+@~,()%*".contains(c));
    if first_ok && chars_ok && !s.ends_with([' ', ':']) && !s.contains(": ") && !s.contains(" #") {
        return Ok(s.to_string());
    }
    Err(format!(
        "toYaml: the string {s:?} needs a YAML quoting style this renderer does not reproduce"
    ))
}

/// Whether go-yaml v2 would read `s`, unquoted, as something other than a string (bool, null,
/// number, timestamp), so that it must quote it. A string that starts like a number and is
/// made only of characters numbers are written with, but is none of the forms recognised
/// here, is refused rather than guessed.
fn resolves_to_non_string(s: &str) -> Result<bool, String> {
    const WORDS: &[&str] = &[
        "~", "null", "Null", "NULL", "true", "True", "TRUE", "false", "False", "FALSE", "y", "Y",
        "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off", "OFF",
        ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF", ".nan",
        ".NaN", ".NAN", "<<",
    ];
    if WORDS.contains(&s) {
        return Ok(true);
    }
    let numeric_start =
        s.starts_with(|c: char| c.is_ascii_digit() || c == '+' || c == '-' || c == '.');
    if !numeric_start {
        return Ok(false);
    }
    // go-yaml tries strconv.ParseInt(s, 0, 64), then ParseFloat, on the string without `_`.
    let plain = s.replace('_', "");
    let body = plain.trim_start_matches(['+', '-']);
    let radix = |prefix: &[&str], digit: fn(char) -> bool| {
        prefix
            .iter()
            .find_map(|p| body.strip_prefix(p))
            .is_some_and(|d| !d.is_empty() && d.chars().all(digit))
    };
    let is_int = !body.is_empty() && body.chars().all(|c| c.is_ascii_digit())
        || radix(&["0x", "0X"], |c| c.is_ascii_hexdigit())
        || radix(&["0o", "0O"], |c| ('0'..='7').contains(&c))
        || radix(&["0b", "0B"], |c| c == '0' || c == '1');
    // Rust reads the decimal forms and inf/nan as Go's ParseFloat does.
    let is_float = plain.parse::<f64>().is_ok();
    let base60 = body.contains(':') && body.chars().all(|c| c.is_ascii_digit() || ":.".contains(c));
    let b = s.as_bytes();
    let is_date = s.len() >= 8
        && b[4] == b'-'
        && b[..4].iter().all(u8::is_ascii_digit)
        && s[5..].chars().all(|c| c.is_ascii_digit() || c == '-');
    if is_int || is_float || base60 || is_date {
        return Ok(true);
    }
    let number_like = s.chars().all(|c| {
        c.is_ascii_digit() || "+-.:_".contains(c) || "eExXoObBpPaAcCdDfFiInNtTyY".contains(c)
    });
    if number_like || (s.len() > 4 && b[4] == b'-' && b[..4].iter().all(u8::is_ascii_digit)) {
        return Err(format!(
            "toYaml: cannot tell whether go-yaml would quote {s:?}; quote-free values only"
        ));
    }
    Ok(false)
}

/// go-yaml v2's map key order (keyList.Less): runs of digits compare as numbers, and a
/// non-letter sorts before a letter.
fn yaml_v2_key_order(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let ar: Vec<char> = a.chars().collect();
    let br: Vec<char> = b.chars().collect();
    let mut i = 0;
    while i < ar.len() && i < br.len() {
        if ar[i] == br[i] {
            i += 1;
            continue;
        }
        let (al, bl) = (ar[i].is_alphabetic(), br[i].is_alphabetic());
        if al && bl {
            return ar[i].cmp(&br[i]);
        }
        if al || bl {
            return if bl {
                Ordering::Less
            } else {
                Ordering::Greater
            };
        }
        let (mut an, mut bn) = (0i64, 0i64);
        if ar[i] == '0' || br[i] == '0' {
            let mut j = i;
            while j > 0 && ar[j - 1].is_ascii_digit() {
                j -= 1;
                if ar[j] != '0' {
                    an = 1;
                    bn = 1;
                    break;
                }
            }
        }
        let mut ai = i;
        while ai < ar.len() && ar[ai].is_ascii_digit() {
            an = an * 10 + (ar[ai] as i64 - '0' as i64);
            ai += 1;
        }
        let mut bi = i;
        while bi < br.len() && br[bi].is_ascii_digit() {
            bn = bn * 10 + (br[bi] as i64 - '0' as i64);
            bi += 1;
        }
        if an != bn {
            return an.cmp(&bn);
        }
        if ai != bi {
            return ai.cmp(&bi);
        }
        return ar[i].cmp(&br[i]);
    }
    ar.len().cmp(&br.len())
}

// ---------------------------------------------------------------------------------------------
// Charts

/// A chart read from its folder: `Chart.yaml`, `values.yaml` and `templates/`.
pub struct Chart {
    pub name: String,
    version: String,
    app_version: String,
    pub values: Value,
    /// Templates that render (not `_*.tpl`), by file name, sorted.
    templates: Vec<(String, Vec<Node>)>,
    /// `templates/NOTES.txt`, printed by `helm install`.
    notes: Option<Vec<Node>>,
    defines: HashMap<String, Vec<Node>>,
}

/// One rendered document and the template it came from.
#[derive(Debug, Clone)]
pub struct Document {
    pub source: String,
    pub kind: String,
    pub text: String,
}

impl Chart {
    pub fn load(dir: &Path) -> Result<Chart, String> {
        let read =
            |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
        let meta_path = dir.join("Chart.yaml");
        let meta: serde_yaml::Value = serde_yaml::from_str(&read(&meta_path)?)
            .map_err(|e| format!("{}: {e}", meta_path.display()))?;
        let field = |k: &str| {
            meta[k]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("{}: {k} missing", meta_path.display()))
        };
        let values_path = dir.join("values.yaml");
        let values: serde_yaml::Value = serde_yaml::from_str(&read(&values_path)?)
            .map_err(|e| format!("{}: {e}", values_path.display()))?;
        let values = Value::from_yaml(&values, &values_path.display().to_string())?;
        let mut files: Vec<_> = std::fs::read_dir(dir.join("templates"))
            .map_err(|e| format!("{}/templates: {e}", dir.display()))?
            .map(|e| e.map(|e| e.path()).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        files.sort();
        let mut templates = Vec::new();
        let mut notes = None;
        let mut defines = HashMap::new();
        for path in files {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let mut parser = Parser {
                pieces: lex(&read(&path)?)
                    .map_err(|e| format!("{}: {e}", path.display()))?
                    .into_iter(),
                defines: HashMap::new(),
            };
            let (nodes, stop) = parser
                .block()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if !matches!(stop, Stop::Eof) {
                return Err(format!("{}: end or else without a block", path.display()));
            }
            defines.extend(parser.defines);
            // Helm prints NOTES.txt after an install instead of applying it: it is parsed (and
            // rendered by `notes`) but is no document.
            if name == "NOTES.txt" {
                notes = Some(nodes);
            } else if !name.starts_with('_') {
                templates.push((name, nodes));
            }
        }
        Ok(Chart {
            name: field("name")?,
            version: field("version")?,
            app_version: field("appVersion")?,
            values,
            templates,
            notes,
            defines,
        })
    }

    /// Renders every template with `values` (the chart's own, already merged with any
    /// overrides), split into documents and ordered as `helm template` orders them by kind.
    pub fn render(
        &self,
        values: &Value,
        release: &str,
        namespace: &str,
    ) -> Result<Vec<Document>, String> {
        let root = self.root(values, release, namespace);
        let mut docs = Vec::new();
        for (name, nodes) in &self.templates {
            let source = format!("{}/templates/{name}", self.name);
            for text in split_documents(&self.run(nodes, &root, &source)?) {
                let kind = text
                    .lines()
                    .find_map(|l| l.strip_prefix("kind:"))
                    .map(|k| k.trim().to_string())
                    .unwrap_or_default();
                docs.push(Document {
                    source: source.clone(),
                    kind,
                    text,
                });
            }
        }
        docs.sort_by_key(|d| install_order(&d.kind));
        Ok(docs)
    }

    /// The text `helm install` prints after installing (`templates/NOTES.txt`), if any.
    pub fn notes(&self, values: &Value, release: &str, namespace: &str) -> Result<String, String> {
        let Some(nodes) = &self.notes else {
            return Ok(String::new());
        };
        let root = self.root(values, release, namespace);
        self.run(nodes, &root, &format!("{}/templates/NOTES.txt", self.name))
    }

    /// What a template sees as `.` and `$`.
    fn root(&self, values: &Value, release: &str, namespace: &str) -> Value {
        let s = |v: &str| Value::Str(v.to_string());
        Value::Map(BTreeMap::from([
            ("Values".into(), values.clone()),
            (
                "Release".into(),
                Value::Map(BTreeMap::from([
                    ("Name".into(), s(release)),
                    ("Namespace".into(), s(namespace)),
                    ("Service".into(), s("Helm")),
                ])),
            ),
            (
                "Chart".into(),
                Value::Map(BTreeMap::from([
                    ("Name".into(), s(&self.name)),
                    ("Version".into(), s(&self.version)),
                    ("AppVersion".into(), s(&self.app_version)),
                ])),
            ),
        ]))
    }

    fn run(&self, nodes: &[Node], root: &Value, source: &str) -> Result<String, String> {
        let mut scope = Scope {
            defines: &self.defines,
            vars: vec![("$".into(), root.clone())],
            depth: 0,
        };
        let mut out = String::new();
        scope
            .render(nodes, root, &mut out)
            .map_err(|e| format!("{source}: {e}"))?;
        Ok(out)
    }
}

/// Helm's `releaseutil.SplitManifests`: documents split at `---` lines, trimmed, empty ones
/// dropped.
fn split_documents(rendered: &str) -> Vec<String> {
    let mut docs = Vec::new();
    let mut current = String::new();
    for line in rendered.trim().lines() {
        if line.trim_end() == "---" {
            docs.push(std::mem::take(&mut current));
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    docs.push(current);
    docs.into_iter()
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty())
        .collect()
}

/// Helm's install order by kind (releaseutil.InstallOrder); other kinds after, by name.
fn install_order(kind: &str) -> (usize, String) {
    const ORDER: &[&str] = &[
        "PriorityClass",
        "Namespace",
        "NetworkPolicy",
        "ResourceQuota",
        "LimitRange",
        "PodSecurityPolicy",
        "PodDisruptionBudget",
        "ServiceAccount",
        "Secret",
        "SecretList",
        "ConfigMap",
        "StorageClass",
        "PersistentVolume",
        "PersistentVolumeClaim",
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleList",
        "ClusterRoleBinding",
        "ClusterRoleBindingList",
        "Role",
        "RoleList",
        "RoleBinding",
        "RoleBindingList",
        "Service",
        "DaemonSet",
        "Pod",
        "ReplicationController",
        "ReplicaSet",
        "Deployment",
        "HorizontalPodAutoscaler",
        "StatefulSet",
        "Job",
        "CronJob",
        "IngressClass",
        "Ingress",
        "APIService",
    ];
    match ORDER.iter().position(|k| *k == kind) {
        Some(i) => (i, String::new()),
        None => (ORDER.len(), kind.to_string()),
    }
}

/// `helm template`'s output for documents: each after `---` and a `# Source:` line.
pub fn stream(docs: &[Document]) -> String {
    let mut out = String::new();
    for d in docs {
        let _ = writeln!(out, "---\n# Source: {}\n{}", d.source, d.text);
    }
    out
}

/// Helm's merge of override values into the chart's (maps merge key by key; anything else
/// replaces; a null override deletes the key).
pub fn merge(base: &Value, over: &Value) -> Value {
    match (base, over) {
        (Value::Map(b), Value::Map(o)) => {
            let mut out = b.clone();
            for (k, v) in o {
                if *v == Value::Null {
                    out.remove(k);
                    continue;
                }
                let merged = match out.get(k) {
                    Some(existing) => merge(existing, v),
                    None => v.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Map(out)
        }
        (_, o) => o.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str, values: &str) -> Result<String, String> {
        let mut parser = Parser {
            pieces: lex(src)?.into_iter(),
            defines: HashMap::new(),
        };
        let (nodes, _) = parser.block()?;
        let values = Value::from_yaml(&serde_yaml::from_str(values).unwrap(), "values")?;
        let root = Value::Map(BTreeMap::from([("Values".into(), values)]));
        let mut scope = Scope {
            defines: &parser.defines,
            vars: vec![("$".into(), root.clone())],
            depth: 0,
        };
        let mut out = String::new();
        scope.render(&nodes, &root, &mut out)?;
        Ok(out)
    }

    #[test]
    fn trimming_and_comments() {
        assert_eq!(render("a  \n  {{- 1 -}}  \n b", "{}").unwrap(), "a1b");
        assert_eq!(render("a {{/* note */}} b", "{}").unwrap(), "a  b");
        assert_eq!(render("a\n{{- /* note */}}\nb", "{}").unwrap(), "a\nb");
        // `{{-3}}` is the number -3, not a trim.
        assert_eq!(render("a {{-3}}", "{}").unwrap(), "a -3");
    }

    #[test]
    fn control_flow() {
        let v = "x: {a: 1, b: ''}\nl: [p, q]\nflag: false";
        assert_eq!(
            render("{{ if .Values.x.a }}y{{ else }}n{{ end }}", v).unwrap(),
            "y"
        );
        assert_eq!(
            render("{{ if .Values.x.b }}y{{ else if .Values.l }}l{{ end }}", v).unwrap(),
            "l"
        );
        assert_eq!(
            render("{{ with .Values.x }}{{ .a }}{{ end }}", v).unwrap(),
            "1"
        );
        assert_eq!(
            render("{{ with .Values.flag }}y{{ else }}n{{ end }}", v).unwrap(),
            "n"
        );
        assert_eq!(
            render("{{ range .Values.l }}[{{ . }}]{{ end }}", v).unwrap(),
            "[p][q]"
        );
        assert_eq!(
            render(
                "{{ range $k, $v := .Values.x }}{{ $k }}={{ $v }};{{ end }}",
                v
            )
            .unwrap(),
            "a=1;b=;"
        );
        assert_eq!(
            render("{{ range $i, $v := .Values.l }}{{ $i }}{{ end }}", v).unwrap(),
            "01"
        );
        assert_eq!(
            render("{{ range .Values.l }}{{ $.Values.x.a }}{{ end }}", v).unwrap(),
            "11"
        );
        assert!(render("{{ .Values.none.deeper }}", v)
            .unwrap_err()
            .contains("nil pointer"));
    }

    #[test]
    fn functions() {
        let v = "s: hi\nnum: 9990\nm: {b: [1, two], a: 'yes-ish', c: {}}\nempty: ''";
        assert_eq!(render("{{ .Values.s | quote }}", v).unwrap(), "\"hi\"");
        assert_eq!(render("{{ .Values.num | quote }}", v).unwrap(), "\"9990\"");
        assert_eq!(
            render("{{ .Values.empty | default \"d\" }}", v).unwrap(),
            "d"
        );
        assert_eq!(render("{{ .Values.s | default \"d\" }}", v).unwrap(), "hi");
        assert_eq!(
            render("x:{{ toYaml .Values.m | nindent 2 }}", v).unwrap(),
            "x:\n  a: yes-ish\n  b:\n  - 1\n  - two\n  c: {}"
        );
        assert_eq!(
            render("{{ `{{ $labels.pod }}` }}", v).unwrap(),
            "{{ $labels.pod }}"
        );
        assert_eq!(
            render(
                "{{ define \"t\" }}<{{ .s }}>{{ end }}{{ include \"t\" .Values | indent 1 }}",
                v
            )
            .unwrap(),
            " <hi>"
        );
        assert!(render("{{ .Values.s | upper }}", v).is_err());
    }

    #[test]
    fn yaml_like_go_yaml_v2() {
        let v = Value::from_yaml(
            &serde_yaml::from_str(
                "b: {c: '1', d: 'true', e: '', f: null, g: 0.5}\na: [{x: 1, z: [2]}]\nk10: 1\nk9: 1\nk_a: 1\nkB: 1",
            )
            .unwrap(),
            "v",
        )
        .unwrap();
        let mut s = String::new();
        yaml(&v, 0, &mut s).unwrap();
        assert_eq!(
            s,
            "a:\n- x: 1\n  z:\n  - 2\nb:\n  c: \"1\"\n  d: \"true\"\n  e: \"\"\n  f: null\n  g: 0.5\n\
             k_a: 1\nk9: 1\nk10: 1\nkB: 1\n"
        );
        assert!(scalar_str("a: b").is_err());
        assert!(scalar_str("line\nline").is_err());
        assert_eq!(scalar_str("2026-01-01").unwrap(), "\"2026-01-01\"");
        assert_eq!(scalar_str("100m").unwrap(), "100m");
        assert_eq!(scalar_str("1e3").unwrap(), "\"1e3\"");
        assert_eq!(scalar_str("+inf").unwrap(), "\"+inf\"");
        assert_eq!(scalar_str("0x1F").unwrap(), "\"0x1F\"");
        assert_eq!(scalar_str("1Mi").unwrap(), "1Mi");
        assert_eq!(scalar_str("200ms").unwrap(), "200ms");
        assert!(scalar_str("1d").is_err());
        // `*` is an alias indicator only where a scalar starts (interface patterns).
        assert_eq!(scalar_str("veth*").unwrap(), "veth*");
        assert!(scalar_str("*eth").is_err());
    }

    #[test]
    fn numbers_print_as_go_prints_float64() {
        assert_eq!(go_float(9990.0).unwrap(), "9990");
        assert_eq!(go_float(0.25).unwrap(), "0.25");
        assert!(go_float(1e6).is_err());
    }

    #[test]
    fn yaml11_booleans_are_refused_in_values() {
        let v: serde_yaml::Value = serde_yaml::from_str("a: on").unwrap();
        assert!(Value::from_yaml(&v, "values")
            .unwrap_err()
            .contains("YAML 1.1"));
    }
}
