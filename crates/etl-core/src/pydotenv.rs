//! `.env` files read as python-dotenv 1.x (`load_dotenv()`, the tool this one replaces) reads
//! them, so a file that worked there gives the same variables here. dotenvy reads a different
//! dialect (`$word` expanded, `NAME=a b` refused, the first of two bindings kept, a line it
//! cannot parse fatal), hence this reader of our own.
//!
//! What python-dotenv does, and so this does:
//! - `NAME=value`, optionally `export NAME=value`, or `'NAME'=value`; blank lines and `#` lines
//!   are skipped. An unquoted value runs to the end of its line, less a ` #` comment and trailing
//!   blanks. `'…'` and `"…"` values may span lines; in `'…'` only `\\` and `\'` are escapes, in
//!   `"…"` also `\"`, `\n`, `\t`, `\r`, `\a`, `\b`, `\f`, `\v`.
//! - A statement it cannot parse (`A="x" y`, a line that is a word with no `=`…) is skipped
//!   with a warning naming its line, and the rest of the file is read.
//! - `NAME` alone (no `=`) sets nothing.
//! - `${NAME}` and `${NAME:-default}` are expanded in every value, quoted or not, from the real
//!   environment first, then from the bindings above; anything else with `$` is itself.
//! - When a name is bound twice, the last binding counts.
//!
//! Where python-dotenv would keep a byte-order mark as part of the first name, it is dropped.

/// One `NAME=value` statement; `None` for a bare `NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub key: String,
    pub value: Option<String>,
}

/// A file's bindings in order, and the lines of the statements that could not be parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    pub bindings: Vec<Binding>,
    pub bad_lines: Vec<usize>,
}

struct Failed;

struct Reader<'a> {
    s: &'a str,
    pos: usize,
    line: usize,
}

fn blank(c: char) -> bool {
    c.is_whitespace() && c != '\r' && c != '\n'
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<char> {
        self.s[self.pos..].chars().next()
    }

    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }

    /// Moves past `n` bytes, counting the line ends (`\r\n`, `\n`, `\r`) in them.
    fn advance(&mut self, n: usize) {
        let taken = &self.s[self.pos..self.pos + n];
        let bytes = taken.as_bytes();
        for (i, b) in bytes.iter().enumerate() {
            match b {
                b'\n' => self.line += 1,
                b'\r' if bytes.get(i + 1) != Some(&b'\n') => self.line += 1,
                _ => {}
            }
        }
        self.pos += n;
    }

    /// Moves past the longest prefix whose characters all satisfy `f`; returns it.
    fn take_while(&mut self, f: impl Fn(char) -> bool) -> &'a str {
        let rest = self.rest();
        let n = rest.find(|c| !f(c)).unwrap_or(rest.len());
        self.advance(n);
        &rest[..n]
    }

    /// A quoted value opened by `q`, as the regex `q((?:\\q|[^q])*)q` matches it: the first
    /// quote with no backslash before it closes the value; with none, the quote of the last
    /// `\q` does (where the regex would backtrack to).
    fn quoted(&mut self, q: char) -> Result<&'a str, Failed> {
        let rest = self.rest();
        let body = &rest[q.len_utf8()..];
        let mut last_escaped = None;
        let mut chars = body.char_indices().peekable();
        let mut close = None;
        while let Some((i, c)) = chars.next() {
            if c == '\\' && chars.peek().map(|(_, n)| *n) == Some(q) {
                let (j, _) = chars.next().ok_or(Failed)?;
                last_escaped = Some(j);
            } else if c == q {
                close = Some(i);
                break;
            }
        }
        let close = close.or(last_escaped).ok_or(Failed)?;
        self.advance(q.len_utf8() + close + q.len_utf8());
        Ok(&body[..close])
    }
}

fn decode(value: &str, escapes: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek().copied()) {
            ('\\', Some(e)) if escapes.contains(e) => {
                chars.next();
                out.push(match e {
                    'a' => '\x07',
                    'b' => '\x08',
                    'f' => '\x0c',
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    'v' => '\x0b',
                    other => other,
                });
            }
            _ => out.push(c),
        }
    }
    out
}

/// An unquoted value: up to the line's end, less the first blank run followed by `#` and all
/// after it, less trailing blanks.
fn unquoted(raw: &str) -> String {
    let mut cut = raw.len();
    let mut run_start = None;
    for (i, c) in raw.char_indices() {
        if c.is_whitespace() {
            run_start.get_or_insert(i);
        } else {
            if c == '#' {
                if let Some(start) = run_start {
                    cut = start;
                    break;
                }
            }
            run_start = None;
        }
    }
    raw[..cut].trim_end().to_string()
}

fn statement(r: &mut Reader<'_>) -> Result<Option<Binding>, Failed> {
    if let Some(after) = r.rest().strip_prefix("export") {
        let blanks = after.len() - after.trim_start_matches(blank).len();
        if blanks > 0 {
            r.advance("export".len() + blanks);
        }
    }
    let key = match r.peek() {
        Some('#') => None,
        Some('\'') => {
            let rest = r.rest();
            let body = &rest[1..];
            let end = body.find('\'').filter(|&e| e > 0).ok_or(Failed)?;
            r.advance(1 + end + 1);
            Some(body[..end].to_string())
        }
        _ => {
            let key = r.take_while(|c| c != '=' && c != '#' && !c.is_whitespace());
            if key.is_empty() {
                return Err(Failed);
            }
            Some(key.to_string())
        }
    };
    r.take_while(blank);
    let value = if r.peek() == Some('=') {
        r.advance(1);
        r.take_while(blank);
        Some(match r.peek() {
            Some('\'') => decode(r.quoted('\'')?, "\\'"),
            Some('"') => decode(r.quoted('"')?, "\\'\"abfnrtv"),
            None | Some('\n') | Some('\r') => String::new(),
            _ => unquoted(r.take_while(|c| c != '\r' && c != '\n')),
        })
    } else {
        None
    };
    // An optional comment, then the end of the line.
    let rest = r.rest();
    let blanks = rest.len() - rest.trim_start_matches(blank).len();
    if rest[blanks..].starts_with('#') {
        r.advance(blanks);
        r.take_while(|c| c != '\r' && c != '\n');
    }
    r.take_while(blank);
    let rest = r.rest();
    if rest.starts_with("\r\n") {
        r.advance(2);
    } else if rest.starts_with('\n') || rest.starts_with('\r') {
        r.advance(1);
    } else if !rest.is_empty() {
        return Err(Failed);
    }
    Ok(key.map(|key| Binding { key, value }))
}

/// The statements of a `.env` text, in order.
pub fn parse(text: &str) -> Parsed {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut r = Reader {
        s: text,
        pos: 0,
        line: 1,
    };
    let mut out = Parsed::default();
    loop {
        r.take_while(char::is_whitespace);
        if r.pos >= r.s.len() {
            return out;
        }
        let line = r.line;
        match statement(&mut r) {
            Ok(Some(b)) => out.bindings.push(b),
            Ok(None) => {}
            Err(Failed) => {
                out.bad_lines.push(line);
                // The rest of the line is skipped, as python-dotenv skips it.
                r.take_while(|c| c != '\r' && c != '\n');
                if r.rest().starts_with('\r') || r.rest().starts_with('\n') {
                    r.advance(1);
                }
            }
        }
    }
}

/// `${NAME}` and `${NAME:-default}` in `value`, from `lookup` (`Some(None)`: bound with no value,
/// which expands to nothing, default or not).
fn expand(value: &str, lookup: &impl Fn(&str) -> Option<Option<String>>) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let inner = &rest[at + 2..];
        let name_end = inner.find(['}', ':']).unwrap_or(inner.len());
        let name = &inner[..name_end];
        let after = &inner[name_end..];
        let (default, consumed) = if let Some(d) = after.strip_prefix(":-") {
            match d.find('}') {
                Some(end) => (Some(&d[..end]), name_end + 2 + end + 1),
                None => (None, 0),
            }
        } else if after.starts_with('}') {
            (None, name_end + 1)
        } else {
            (None, 0)
        };
        if consumed == 0 {
            // Not a variable: the `$` is itself.
            out.push('$');
            rest = &rest[at + 1..];
            continue;
        }
        let found = match lookup(name) {
            Some(v) => v.unwrap_or_default(),
            None => default.unwrap_or_default().to_string(),
        };
        out.push_str(&found);
        rest = &inner[consumed..];
    }
    out.push_str(rest);
    out
}

/// The values python-dotenv would set: each binding's value expanded (the real environment, as
/// `env` gives it, before the bindings above it), the last binding of a name winning; names
/// bound with no value are left out.
pub fn resolve(parsed: &Parsed, env: impl Fn(&str) -> Option<String>) -> Vec<(String, String)> {
    let mut done: Vec<(String, Option<String>)> = Vec::new();
    for b in &parsed.bindings {
        let value = b.value.as_deref().map(|v| {
            expand(v, &|name: &str| {
                env(name).map(Some).or_else(|| {
                    done.iter()
                        .rev()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                })
            })
        });
        done.push((b.key.clone(), value));
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in done {
        out.retain(|(o, _)| *o != k);
        if let Some(v) = v {
            out.push((k, v));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(text: &str, env: &[(&str, &str)]) -> Vec<(String, String)> {
        resolve(&parse(text), |n| {
            env.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.to_string())
        })
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Expected values are what python-dotenv 1.2.2's `dotenv_values` gives for the same text.
    #[test]
    fn values_are_read_as_python_dotenv_reads_them() {
        let text = "# a comment with $HOME and 'quotes\nDB_PASSWORD=pa$word\nQUOTED=\"pa$word\"\n\
                    SINGLE='pa$word'\nSPACED=a b  c   # note\nTRAILING=x   \nBRACED=${DOTENV_TEST_NOT_SET}z\n\
                    ESCAPED=\"a\\\"b\"\nexport EXPORTED=e f\nEMPTY=\nHASH=a#b\n\
                    # later: it's a=b 'x\n  # indented $X\nLAST=pa$s w\n";
        assert_eq!(
            values(text, &[]),
            pairs(&[
                ("DB_PASSWORD", "pa$word"),
                ("QUOTED", "pa$word"),
                ("SINGLE", "pa$word"),
                ("SPACED", "a b  c"),
                ("TRAILING", "x"),
                ("BRACED", "z"),
                ("ESCAPED", "a\"b"),
                ("EXPORTED", "e f"),
                ("EMPTY", ""),
                ("HASH", "a#b"),
                ("LAST", "pa$s w"),
            ])
        );
    }

    #[test]
    fn defaults_escapes_repeats_and_expansion_in_single_quotes() {
        let text = "N=5\nA=${N:-dflt}\nB=${NOPE:-dflt}\nC=\"a\\tb\\\\n\"\nX=13\nX=14\n\
                    D='x${N}'\nE='it\\'s'\nF=${REAL}/${N}\nG=\"multi\nline\"\nH=${N:x}\n";
        assert_eq!(
            values(text, &[("REAL", "r"), ("N", "from env")]),
            pairs(&[
                ("N", "5"),
                ("A", "from env"),
                ("B", "dflt"),
                ("C", "a\tb\\n"),
                ("X", "14"),
                ("D", "xfrom env"),
                ("E", "it's"),
                ("F", "r/from env"),
                ("G", "multi\nline"),
                ("H", "${N:x}"),
            ])
        );
    }

    #[test]
    fn unparsable_statements_are_skipped_by_line_and_the_rest_is_read() {
        let text = "A=1\nthis line is garbage\nBARE\nB=\"x\" y\n\nC=3\n=nokey\nD=\"open\n";
        let parsed = parse(text);
        assert_eq!(parsed.bad_lines, [2, 4, 7, 8]);
        assert_eq!(resolve(&parsed, |_| None), pairs(&[("A", "1"), ("C", "3")]));
        // A bare name binds nothing, and is no error.
        assert!(parsed
            .bindings
            .iter()
            .any(|b| b.key == "BARE" && b.value.is_none()));
    }

    #[test]
    fn line_ends_quoted_keys_and_a_byte_order_mark() {
        let text = "\u{feff}A=1\r\nexport  B = 2 \r'C K'=3\rexportD=4\n";
        assert_eq!(
            values(text, &[]),
            pairs(&[("A", "1"), ("B", "2"), ("C K", "3"), ("exportD", "4")])
        );
    }

    #[test]
    fn a_quote_escaped_last_closes_the_value_when_nothing_else_does() {
        // python-dotenv's regex backtracks to the last \' when no bare quote follows.
        assert_eq!(values("P='C:\\'\n", &[]), pairs(&[("P", "C:\\")]));
    }
}
