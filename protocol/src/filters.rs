//! containerd's filter syntax, as clients send it in `filters` fields (Events.Subscribe,
//! Images.List, Containers.List, ...).
//!
//! ```text
//! filters   := filter*                      several filters are OR-ed; none matches everything
//! filter    := selector ("," selector)*     selectors inside one filter are AND-ed
//! selector  := fieldpath [op value]         no op: the field must be present
//! fieldpath := field ("." field)*           e.g. labels."containerd.io/gc.root"
//! field     := quoted | [A-Za-z0-9_-]+
//! op        := "==" | "!=" | "~="            "~=" is a regular expression (unanchored search)
//! value     := quoted | [^\s,]+
//! quoted    := '"' … '"' | '/' … '/' | '|' … '|' | "'" … "'"
//! ```
//!
//! Quoted strings take Go's escapes (`\n \t \\ \x41 \u00e9 \101 …` and the quote itself), as
//! containerd's scanner does; `/…/` and `|…|` exist so a regular expression needs no doubled
//! backslashes: `topic~=/^\/tasks\//` is `topic~="^/tasks/"`. Inside `/…/` and `|…|` an
//! unknown escape such as `\.` is kept as written, for the regular expression to read.
//! Single quotes are our extension (containerd rejects them).
//!
//! Semantics (containerd's `selector.Match`): `==` needs the field present and equal; `!=` and
//! `~=` read an absent field as `""`, so `labels.x!=v` holds when `x` is absent.
//!
//! Regular expressions use `regex-lite`, whose syntax is RE2's (Go's) minus Unicode classes.

use regex_lite::Regex;

/// Field lookup for filtering: the value at `path` (e.g. `["labels", "foo"]`), or None when the
/// object has no such field (containerd's adaptor `Field(fieldpath) (string, bool)`).
pub trait Fields {
    fn field(&self, path: &[String]) -> Option<String>;
}

/// A filter that cannot be parsed; the message names the filter and where it went wrong.
#[derive(Debug, thiserror::Error)]
#[error("invalid filter {filter:?}: {reason}")]
pub struct ParseError {
    pub filter: String,
    pub reason: String,
}

impl ParseError {
    pub fn code(&self) -> crate::Code {
        crate::Code::InvalidArgument
    }
}

/// A parsed list of filters (an OR of ANDs). The empty list matches everything.
#[derive(Debug, Clone, Default)]
pub struct Filters(Vec<Vec<Selector>>);

#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

#[derive(Debug, Clone)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

impl Filters {
    /// Parses every filter; one that fails makes the whole list an error.
    pub fn parse_all<S: AsRef<str>>(filters: &[S]) -> Result<Filters, ParseError> {
        let mut out = Vec::with_capacity(filters.len());
        for f in filters {
            let f = f.as_ref();
            if f.is_empty() {
                // containerd: an empty filter matches everything, and so does an OR holding it.
                return Ok(Filters(Vec::new()));
            }
            out.push(Parser { src: f, pos: 0 }.filter()?);
        }
        Ok(Filters(out))
    }

    pub fn matches(&self, item: &impl Fields) -> bool {
        self.0.is_empty() || self.0.iter().any(|all| all.iter().all(|s| s.matches(item)))
    }

    /// True when there is no filter (everything matches).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Selector {
    fn matches(&self, item: &impl Fields) -> bool {
        let value = item.field(&self.path);
        match &self.op {
            Op::Present => value.is_some(),
            Op::Equal(v) => value.as_deref() == Some(v.as_str()),
            Op::NotEqual(v) => value.as_deref().unwrap_or("") != v,
            Op::Matches(re) => re.is_match(value.as_deref().unwrap_or("")),
        }
    }
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
}

fn is_field_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn is_quote(c: char) -> bool {
    matches!(c, '"' | '\'' | '/' | '|')
}

impl Parser<'_> {
    fn err(&self, reason: impl Into<String>) -> ParseError {
        ParseError {
            filter: self.src.to_owned(),
            reason: reason.into(),
        }
    }

    fn rest(&self) -> &str {
        &self.src[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.peek().filter(|c| c.is_whitespace()) {
            self.pos += c.len_utf8();
        }
    }

    fn filter(&mut self) -> Result<Vec<Selector>, ParseError> {
        let mut all = vec![self.selector()?];
        loop {
            self.skip_ws();
            match self.peek() {
                None => return Ok(all),
                Some(',') => {
                    self.pos += 1;
                    all.push(self.selector()?);
                }
                Some(c) => return Err(self.err(format!("unexpected {c:?} at offset {}", self.pos))),
            }
        }
    }

    fn selector(&mut self) -> Result<Selector, ParseError> {
        let mut path = vec![self.field()?];
        loop {
            self.skip_ws();
            if self.peek() != Some('.') {
                break;
            }
            self.pos += 1;
            path.push(self.field()?);
        }
        self.skip_ws();
        let op = ["==", "!=", "~="]
            .into_iter()
            .find(|op| self.rest().starts_with(op));
        let Some(op) = op else {
            if matches!(self.peek(), Some('=' | '!' | '~')) {
                return Err(self.err(format!(
                    "unsupported operator at offset {} (expected ==, != or ~=)",
                    self.pos
                )));
            }
            return Ok(Selector {
                path,
                op: Op::Present,
            });
        };
        self.pos += 2;
        self.skip_ws();
        let at = self.pos;
        let value = self.value()?;
        let op = match op {
            "==" => Op::Equal(value),
            "!=" => Op::NotEqual(value),
            _ => Op::Matches(Regex::new(&value).map_err(|e| {
                self.err(format!(
                    "bad regular expression {value:?} at offset {at}: {e}"
                ))
            })?),
        };
        Ok(Selector { path, op })
    }

    fn field(&mut self) -> Result<String, ParseError> {
        self.skip_ws();
        if self.peek().is_some_and(is_quote) {
            return self.quoted();
        }
        let len = self
            .rest()
            .find(|c: char| !is_field_char(c))
            .unwrap_or(self.rest().len());
        if len == 0 {
            return Err(self.err(format!("expected a field name at offset {}", self.pos)));
        }
        let field = self.rest()[..len].to_owned();
        self.pos += len;
        Ok(field)
    }

    fn value(&mut self) -> Result<String, ParseError> {
        if self.peek().is_some_and(is_quote) {
            return self.quoted();
        }
        let len = self
            .rest()
            .find(|c: char| c == ',' || c.is_whitespace())
            .unwrap_or(self.rest().len());
        if len == 0 {
            return Err(self.err(format!("expected a value at offset {}", self.pos)));
        }
        let value = self.rest()[..len].to_owned();
        self.pos += len;
        Ok(value)
    }

    fn quoted(&mut self) -> Result<String, ParseError> {
        let start = self.pos;
        let quote = self.peek().expect("caller saw a quote");
        // In /regex/ and |regex| an unknown escape belongs to the regular expression.
        let keep_unknown = matches!(quote, '/' | '|');
        self.pos += 1;
        let mut out = String::new();
        let mut chars = self.rest().char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            match c {
                c if c == quote => {
                    self.pos += i + 1;
                    return Ok(out);
                }
                '\n' => break,
                '\\' => {
                    let Some((_, e)) = chars.next() else { break };
                    let simple = match e {
                        'a' => Some('\x07'),
                        'b' => Some('\x08'),
                        'f' => Some('\x0c'),
                        'n' => Some('\n'),
                        'r' => Some('\r'),
                        't' => Some('\t'),
                        'v' => Some('\x0b'),
                        '\\' => Some('\\'),
                        e if e == quote => Some(e),
                        _ => None,
                    };
                    if let Some(s) = simple {
                        out.push(s);
                        continue;
                    }
                    let (radix, digits) = match e {
                        'x' => (16, 2),
                        'u' => (16, 4),
                        'U' => (16, 8),
                        '0'..='7' => (8, 2),
                        _ if keep_unknown => {
                            out.push('\\');
                            out.push(e);
                            continue;
                        }
                        _ => {
                            return Err(self.err(format!(
                                "unknown escape \\{e} in the quoted string at offset {start}"
                            )));
                        }
                    };
                    let mut v: u32 = if radix == 8 { e as u32 - '0' as u32 } else { 0 };
                    for _ in 0..digits {
                        let d = chars.next().and_then(|(_, d)| d.to_digit(radix));
                        let Some(d) = d else {
                            return Err(self.err(format!(
                                "bad numeric escape \\{e} in the quoted string at offset {start}"
                            )));
                        };
                        v = v * radix + d;
                    }
                    match char::from_u32(v).filter(|_| radix != 8 || v <= 255) {
                        Some(c) => out.push(c),
                        None => {
                            return Err(self.err(format!(
                                "escape \\{e} is not a valid character (offset {start})"
                            )));
                        }
                    }
                }
                c => out.push(c),
            }
        }
        Err(self.err(format!("unterminated quoted string at offset {start}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Item(HashMap<&'static str, &'static str>);

    impl Fields for Item {
        fn field(&self, path: &[String]) -> Option<String> {
            self.0.get(path.join(".").as_str()).map(|v| v.to_string())
        }
    }

    fn item(kv: &[(&'static str, &'static str)]) -> Item {
        Item(kv.iter().copied().collect())
    }

    fn m(filters: &[&str], it: &Item) -> bool {
        Filters::parse_all(filters).unwrap().matches(it)
    }

    #[test]
    fn equality_presence_and_boolean_structure() {
        let it = item(&[
            ("topic", "/tasks/exit"),
            ("namespace", "k8s.io"),
            ("labels.a", "x"),
            ("labels.c.d/e", "y"),
            ("with-dash", "1"),
        ]);
        assert!(m(&[], &it));
        assert!(m(&[""], &it));
        assert!(m(&["topic==\"/tasks/exit\""], &it));
        assert!(!m(&["topic==\"/tasks/oom\""], &it));
        assert!(m(&["topic!=\"/tasks/oom\""], &it));
        assert!(m(&["namespace==k8s.io"], &it), "unquoted value with a dot");
        assert!(m(&["namespace==k8s.io,labels.a==x"], &it));
        assert!(!m(&["namespace==k8s.io,labels.a==y"], &it));
        assert!(m(&["labels.a==y", "namespace==k8s.io"], &it), "OR");
        assert!(!m(&["labels.a==y", "namespace==default"], &it));
        assert!(m(&["labels.a"], &it));
        assert!(!m(&["labels.b"], &it));
        assert!(!m(&["labels.b==\"\""], &it), "== needs the field present");
        assert!(m(&["labels.b!=x"], &it), "an absent field reads as \"\"");
        assert!(m(&[r#"labels."c.d/e"==y"#], &it));
        assert!(m(
            &[r#" labels . "c.d/e" == "y" , namespace == "k8s.io" "#],
            &it
        ));
        assert!(m(&["with-dash==1"], &it));
        assert!(m(&[r#"labels.a=="\x78""#], &it), "hex escape");
        assert!(m(&[r#"labels.a=="\170""#], &it), "octal escape");
        assert!(!m(&[r#"labels.a=="x\"""#], &it));
    }

    #[test]
    fn regular_expressions() {
        let it = item(&[("topic", "/images/create"), ("labels.a", "a.b")]);
        assert!(m(&[r#"topic~="/images/""#], &it), "CRI's filter");
        assert!(!m(&[r#"topic~="/tasks/""#], &it));
        assert!(m(&[r#"topic~="^/images/(create|update)$""#], &it));
        assert!(m(&[r"topic~=/^\/images\//"], &it), "slash-quoted");
        assert!(m(&[r"labels.a~=|^a\.b$|"], &it), "pipe-quoted keeps \\.");
        assert!(!m(&[r"labels.a~=|^a\.c$|"], &it));
        assert!(m(&["labels.z~=^$"], &it), "an absent field reads as \"\"");
        assert!(m(&["topic~=create"], &it), "unquoted, unanchored");
        assert!(m(&["topic==\"/tasks/exit\"", "topic~=images"], &it));
    }

    #[test]
    fn bad_filters_are_invalid_argument_and_named() {
        for f in [
            "==x",
            "labels.",
            "labels.a==",
            "labels.a==\"open",
            "a b",
            "a=x",
            "a=~x",
            "a==x,",
            "a~=\"(\"",
            "a==\"\\q\"",
            "a==\"\\x4\"",
            ",",
        ] {
            let err = Filters::parse_all(&["topic==x", f]).unwrap_err();
            assert_eq!(err.code(), crate::Code::InvalidArgument, "{f:?}");
            assert!(
                err.to_string().contains(&format!("{f:?}")),
                "{err} does not name {f:?}"
            );
        }
        let e = Filters::parse_all(&["a~=\"(\""]).unwrap_err();
        assert!(e.to_string().contains("regular expression"), "{e}");
    }
}
