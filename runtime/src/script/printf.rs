//! `printf` and `sprintf`: C-style formatting of script values. Conversions `%s %d %i %u %x
//! %X %o %f %e %g %c %%` with the flags `-`, `0`, `+` and space, a width and a precision.

use std::fmt::Write as _;

use rhai::Dynamic;

/// Why a format and its arguments do not go together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("%{conv} needs a number, not {given}")]
    NotANumber { conv: char, given: &'static str },
    #[error("format ends in the middle of a % conversion")]
    Unfinished,
    #[error("unknown conversion %{0}")]
    UnknownConversion(char),
    #[error("the format has more conversions than the {0} argument(s) given")]
    TooFewArguments(usize),
    #[error("{given} argument(s) given but the format has {used} conversion(s)")]
    TooManyArguments { given: usize, used: usize },
}

#[derive(Default)]
struct Spec {
    left: bool,
    zero: bool,
    plus: bool,
    space: bool,
    width: usize,
    precision: Option<usize>,
}

impl Spec {
    /// Pads `body` (whose sign, if any, is `sign`) to the width.
    fn pad(&self, sign: &str, body: &str, numeric: bool) -> String {
        let len = sign.chars().count() + body.chars().count();
        if len >= self.width {
            return format!("{sign}{body}");
        }
        let fill = self.width - len;
        if self.left {
            format!("{sign}{body}{}", " ".repeat(fill))
        } else if self.zero && numeric {
            format!("{sign}{}{body}", "0".repeat(fill))
        } else {
            format!("{}{sign}{body}", " ".repeat(fill))
        }
    }

    fn sign(&self, negative: bool) -> &'static str {
        if negative {
            "-"
        } else if self.plus {
            "+"
        } else if self.space {
            " "
        } else {
            ""
        }
    }
}

fn as_int(v: &Dynamic, conv: char) -> Result<i64, FormatError> {
    if let Ok(i) = v.as_int() {
        Ok(i)
    } else if let Ok(f) = v.as_float() {
        Ok(f as i64)
    } else if let Ok(b) = v.as_bool() {
        Ok(i64::from(b))
    } else if let Ok(c) = v.as_char() {
        Ok(c as i64)
    } else {
        Err(FormatError::NotANumber {
            conv,
            given: v.type_name(),
        })
    }
}

fn as_float(v: &Dynamic, conv: char) -> Result<f64, FormatError> {
    if let Ok(f) = v.as_float() {
        Ok(f)
    } else if let Ok(i) = v.as_int() {
        Ok(i as f64)
    } else {
        Err(FormatError::NotANumber {
            conv,
            given: v.type_name(),
        })
    }
}

/// Formats `args` by `fmt`; the number of conversions must match the number of arguments.
pub fn format(fmt: &str, args: &[Dynamic]) -> Result<String, FormatError> {
    let mut out = String::with_capacity(fmt.len() + 16);
    let mut chars = fmt.chars().peekable();
    let mut next = args.iter();
    let mut used = 0;
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = Spec::default();
        while let Some(&f) = chars.peek() {
            match f {
                '-' => spec.left = true,
                '0' => spec.zero = true,
                '+' => spec.plus = true,
                ' ' => spec.space = true,
                '#' => {}
                _ => break,
            }
            chars.next();
        }
        while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
            spec.width = (spec.width * 10 + d as usize).min(1024);
            chars.next();
        }
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut p = 0;
            while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                p = (p * 10 + d as usize).min(1024);
                chars.next();
            }
            spec.precision = Some(p);
        }
        // Length modifiers from C (`%lu`, `%llx`) mean nothing here.
        while matches!(chars.peek(), Some('l' | 'h' | 'z')) {
            chars.next();
        }
        let Some(conv) = chars.next() else {
            return Err(FormatError::Unfinished);
        };
        if conv == '%' {
            out.push('%');
            continue;
        }
        if !"sdiuxXofegc".contains(conv) {
            return Err(FormatError::UnknownConversion(conv));
        }
        used += 1;
        let Some(arg) = next.next() else {
            return Err(FormatError::TooFewArguments(args.len()));
        };
        let piece = match conv {
            's' => {
                let s = arg.to_string();
                let s = match spec.precision {
                    Some(p) => s.chars().take(p).collect(),
                    None => s,
                };
                spec.pad("", &s, false)
            }
            'c' => {
                let s = match arg.as_char() {
                    Ok(c) => c.to_string(),
                    Err(_) => char::from_u32(as_int(arg, conv)? as u32)
                        .map(String::from)
                        .unwrap_or_default(),
                };
                spec.pad("", &s, false)
            }
            'd' | 'i' => {
                let v = as_int(arg, conv)?;
                spec.pad(spec.sign(v < 0), &v.unsigned_abs().to_string(), true)
            }
            'u' => spec.pad("", &(as_int(arg, conv)? as u64).to_string(), true),
            'x' => spec.pad("", &format!("{:x}", as_int(arg, conv)? as u64), true),
            'X' => spec.pad("", &format!("{:X}", as_int(arg, conv)? as u64), true),
            'o' => spec.pad("", &format!("{:o}", as_int(arg, conv)? as u64), true),
            'f' | 'e' | 'g' => {
                let v = as_float(arg, conv)?;
                let p = spec.precision.unwrap_or(6);
                let body = match conv {
                    'f' => format!("{:.p$}", v.abs()),
                    'e' => format!("{:.p$e}", v.abs()),
                    _ => {
                        let mut s = format!("{:.p$}", v.abs());
                        if s.contains('.') {
                            s = s.trim_end_matches('0').trim_end_matches('.').to_string();
                        }
                        s
                    }
                };
                spec.pad(spec.sign(v.is_sign_negative() && v != 0.0), &body, true)
            }
            _ => unreachable!("checked above"),
        };
        let _ = write!(out, "{piece}");
    }
    if used < args.len() {
        return Err(FormatError::TooManyArguments {
            given: args.len(),
            used,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(fmt: &str, args: &[Dynamic]) -> String {
        format(fmt, args).unwrap()
    }

    #[test]
    fn conversions() {
        let s = |v: &str| Dynamic::from(v.to_string());
        let i = Dynamic::from_int;
        assert_eq!(f("%s dropped %d\n", &[s("b"), i(300)]), "b dropped 300\n");
        assert_eq!(f("[%-6s|%6s]", &[s("ab"), s("cd")]), "[ab    |    cd]");
        assert_eq!(f("%05d %+d % d", &[i(42), i(7), i(7)]), "00042 +7  7");
        assert_eq!(
            f("%x %X %08x %o", &[i(255), i(255), i(4096), i(8)]),
            "ff FF 00001000 10"
        );
        assert_eq!(f("%u", &[i(-1)]), "18446744073709551615");
        assert_eq!(
            f("%.2f %8.3f", &[Dynamic::from_float(1.23456), i(2)]),
            "1.23    2.000"
        );
        assert_eq!(f("%.3s|%c", &[s("abcdef"), i(65)]), "abc|A");
        assert_eq!(f("100%%", &[]), "100%");
        assert_eq!(f("%lu", &[i(5)]), "5");
        assert_eq!(f("%-5d|", &[i(-3)]), "-3   |");
        assert_eq!(f("%05d", &[i(-3)]), "-0003");
    }

    #[test]
    fn mismatches_are_errors() {
        let i = Dynamic::from_int;
        assert_eq!(
            format("%d %d", &[i(1)]),
            Err(FormatError::TooFewArguments(1))
        );
        assert_eq!(
            format("%d", &[i(1), i(2)]).unwrap_err().to_string(),
            "2 argument(s) given but the format has 1 conversion(s)"
        );
        assert_eq!(
            format("%q", &[i(1)]).unwrap_err().to_string(),
            "unknown conversion %q"
        );
        assert_eq!(
            format("%d", &[Dynamic::from("x".to_string())])
                .unwrap_err()
                .to_string(),
            "%d needs a number, not string"
        );
        assert_eq!(format("50%", &[]), Err(FormatError::Unfinished));
    }
}
