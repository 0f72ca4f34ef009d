//! containerd-style filters, as `ctr content ls <filter>...` and the List RPC send them.
//!
//! ```text
//! filters   := filter*                      several filters are OR-ed
//! filter    := selector ("," selector)*     selectors inside one filter are AND-ed
//! selector  := fieldpath [op value]         no op: the field must be present
//! fieldpath := field ("." field)*           e.g. labels."containerd.io/gc.root"
//! field     := quoted | [A-Za-z0-9_]+
//! op        := "==" | "!=" | "~="
//! value     := quoted | [^\s,]+
//! quoted    := '"' ... '"' | "'" ... "'"    backslash escapes \" \' \\ \n \t
//! ```
//!
//! `~=` (regular expression) would cost a regex dependency for a feature no ctr command we serve
//! uses, so it is rejected with InvalidArgument at parse time rather than silently mismatching.
//! As in containerd, `a!=v` is true when `a` is absent (an absent field reads as "").

use crate::error::{Error, Result};

/// Field lookup for filtering: the value at `path` (e.g. `["labels", "foo"]`), or None if absent.
pub trait Fields {
    fn field(&self, path: &[String]) -> Option<String>;
}

/// A parsed list of filters (OR of ANDs). The empty list matches everything.
#[derive(Debug, Clone, Default)]
pub struct Filters(Vec<Vec<Selector>>);

#[derive(Debug, Clone, PartialEq)]
struct Selector {
    path: Vec<String>,
    op: Op,
    value: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Present,
    Equal,
    NotEqual,
}

impl Filters {
    pub fn parse_all<S: AsRef<str>>(filters: &[S]) -> Result<Filters> {
        let mut out = Vec::new();
        for f in filters {
            let f = f.as_ref();
            if f.trim().is_empty() {
                // An empty filter matches everything; so does the OR containing it.
                return Ok(Filters(Vec::new()));
            }
            out.push(Parser { src: f, pos: 0 }.filter()?);
        }
        Ok(Filters(out))
    }

    pub fn matches(&self, item: &impl Fields) -> bool {
        self.0.is_empty() || self.0.iter().any(|all| all.iter().all(|s| s.matches(item)))
    }
}

impl Selector {
    fn matches(&self, item: &impl Fields) -> bool {
        let value = item.field(&self.path);
        match self.op {
            Op::Present => value.is_some(),
            Op::Equal => value.as_deref() == Some(self.value.as_str()),
            Op::NotEqual => value.as_deref().unwrap_or("") != self.value,
        }
    }
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn err(&self, reason: impl Into<String>) -> Error {
        Error::InvalidFilter {
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

    fn filter(&mut self) -> Result<Vec<Selector>> {
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

    fn selector(&mut self) -> Result<Selector> {
        let mut path = vec![self.field()?];
        loop {
            self.skip_ws();
            if self.peek() != Some('.') {
                break;
            }
            self.pos += 1;
            path.push(self.field()?);
        }
        let op = if self.rest().starts_with("==") {
            Op::Equal
        } else if self.rest().starts_with("!=") {
            Op::NotEqual
        } else if self.rest().starts_with("~=") {
            return Err(self.err("regular expression match (~=) is not supported"));
        } else {
            return Ok(Selector {
                path,
                op: Op::Present,
                value: String::new(),
            });
        };
        self.pos += 2;
        self.skip_ws();
        let value = self.value()?;
        Ok(Selector { path, op, value })
    }

    fn field(&mut self) -> Result<String> {
        self.skip_ws();
        if matches!(self.peek(), Some('"' | '\'')) {
            return self.quoted();
        }
        let len = self
            .rest()
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(self.rest().len());
        if len == 0 {
            return Err(self.err(format!("expected a field name at offset {}", self.pos)));
        }
        let field = self.rest()[..len].to_owned();
        self.pos += len;
        Ok(field)
    }

    fn value(&mut self) -> Result<String> {
        if matches!(self.peek(), Some('"' | '\'')) {
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

    fn quoted(&mut self) -> Result<String> {
        let start = self.pos;
        let quote = self.peek().expect("caller saw a quote");
        self.pos += 1;
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                c if c == quote => {
                    self.pos += i + 1;
                    return Ok(out);
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => out.push('\n'),
                    Some((_, 't')) => out.push('\t'),
                    Some((_, e @ ('\\' | '"' | '\'' | '/'))) => out.push(e),
                    Some((_, e)) => {
                        return Err(self.err(format!("unknown escape \\{e} in quoted string")));
                    }
                    None => break,
                },
                c => out.push(c),
            }
        }
        Err(self.err(format!("unterminated quoted string at offset {start}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Code;
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
    fn operators_and_or() {
        let it = item(&[
            ("digest", "sha256:ab"),
            ("size", "3"),
            ("labels.a", "x"),
            ("labels.c.d/e", "y"),
        ]);
        assert!(m(&[], &it));
        assert!(m(&[""], &it));
        assert!(m(&["digest==sha256:ab"], &it));
        assert!(!m(&["digest==sha256:ac"], &it));
        assert!(m(&["digest!=sha256:ac"], &it));
        assert!(m(&["size==3,labels.a==x"], &it));
        assert!(!m(&["size==3,labels.a==y"], &it));
        assert!(m(&["size==4", "labels.a==x"], &it));
        assert!(!m(&["size==4", "labels.a==y"], &it));
        assert!(m(&["labels.a"], &it));
        assert!(!m(&["labels.b"], &it));
        assert!(
            m(&["labels.b!=x"], &it),
            "absent field is != any non-empty value"
        );
        assert!(m(&[r#"labels."c.d/e"==y"#], &it));
        assert!(m(&[r#" labels . "c.d/e" == "y" , size == 3 "#], &it));
        assert!(m(&[r#"labels.a=="x""#], &it));
        assert!(!m(&[r#"labels.a=="x\"""#], &it));
    }

    #[test]
    fn bad_filters_are_invalid_argument() {
        for f in [
            "==x",
            "labels.",
            "labels.a==",
            "labels.a==\"open",
            "a b",
            "a=x",
            "a==x,",
            "labels.a~=x.*",
            "a==\"\\q\"",
        ] {
            let err = Filters::parse_all(&[f]).unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{f:?}");
            assert!(
                err.to_string().contains(&format!("{f:?}")),
                "{err} does not name {f:?}"
            );
        }
        assert!(
            Filters::parse_all(&["a~=x"])
                .unwrap_err()
                .to_string()
                .contains("not supported")
        );
    }
}
