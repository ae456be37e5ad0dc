//! Standard output that a reader may close early (`| head`, `| true`): `print!` panics then, which
//! would turn a finished run's exit status into 101. Here the rest of the output is dropped
//! instead, and the status stands.

use std::borrow::Cow;
use std::io::{ErrorKind, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether the job writes colour to stdout (decided once, from the terminal and `NO_COLOR`).
static STDOUT_COLOUR: AtomicBool = AtomicBool::new(false);

/// Tells [`write_stdout`] that the job's own output may carry colour.
pub fn set_stdout_colour(on: bool) {
    STDOUT_COLOUR.store(on, Ordering::Relaxed);
}

/// Characters a terminal would act on rather than show: C0 and C1 controls, DEL, and the
/// bidirectional overrides and isolates that reorder what follows them.
fn is_control(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every control character written as an escape (`\u{1b}`), so that text from the
/// database (a manifest's table name, an agency slug, an error) can neither move the cursor,
/// clear a screen, nor pass for another line of output. `keep` says which stay: newlines
/// (between the lines of a table), and colour (SGR sequences, `ESC [ digits;… m`, when the
/// output is coloured: the tool's own).
pub fn printable(text: &str, keep: Keep) -> Cow<'_, str> {
    if !text.chars().any(is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if keep.colour && c == '\u{1b}' {
            if let Some(len) = sgr_len(rest) {
                out.push_str(&rest[..len]);
                rest = &rest[len..];
                continue;
            }
        }
        if (keep.newlines && c == '\n') || !is_control(c) {
            out.push(c);
        } else {
            out.push_str(&c.escape_unicode().to_string());
        }
        rest = &rest[c.len_utf8()..];
    }
    Cow::Owned(out)
}

/// What [`printable`] leaves as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keep {
    pub newlines: bool,
    pub colour: bool,
}

/// The length of the SGR sequence `text` starts with (`ESC [ 1;31 m`), if it starts with one.
fn sgr_len(text: &str) -> Option<usize> {
    let body = text.strip_prefix("\u{1b}[")?;
    let params = body
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b';')
        .count();
    (body.as_bytes().get(params) == Some(&b'm')).then_some(2 + params + 1)
}

/// Stderr for text log lines: each event arrives whole in one write, and goes out as one line
/// whatever its fields hold.
#[derive(Debug, Clone, Copy)]
pub struct PrintableStderr {
    pub colour: bool,
}

impl Write for PrintableStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let (line, end) = match text.strip_suffix('\n') {
            Some(line) => (line, "\n"),
            None => (text.as_ref(), ""),
        };
        let keep = Keep {
            newlines: false,
            colour: self.colour,
        };
        let mut err = std::io::stderr().lock();
        err.write_all(printable(line, keep).as_bytes())?;
        err.write_all(end.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Set when stdout refused a write for another reason than a closed pipe.
static STDOUT_FAILED: AtomicBool = AtomicBool::new(false);

/// Whether some output never reached stdout (a full disk behind a redirect): a job that
/// otherwise succeeded then exits 1, as what was asked of it did not arrive.
pub fn stdout_failed() -> bool {
    STDOUT_FAILED.load(Ordering::Relaxed)
}

/// Writes `text` to stdout. A closed pipe ends the output quietly; any other write error (a full
/// disk behind a redirect) is said on stderr, once per write, and the job goes on (and exits 1
/// at its end: [`stdout_failed`]).
pub fn write_stdout(text: &str) {
    let keep = Keep {
        newlines: true,
        colour: STDOUT_COLOUR.load(Ordering::Relaxed),
    };
    let text = printable(text, keep);
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::BrokenPipe => {}
        Err(e) => {
            STDOUT_FAILED.store(true, Ordering::Relaxed);
            let _ = writeln!(std::io::stderr(), "could not write the output: {e}");
        }
    }
}

/// `print!` that survives a closed pipe.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(&format!($($arg)*))
    };
}

/// `println!` that survives a closed pipe.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(&format!("{}\n", format_args!($($arg)*)))
    };
}

#[cfg(test)]
mod tests {
    use super::{printable, Keep};

    #[test]
    fn control_characters_are_escaped_and_only_what_is_asked_kept() {
        let lines = Keep {
            newlines: true,
            colour: false,
        };
        assert_eq!(printable("plain café 日本", lines), "plain café 日本");
        assert_eq!(
            printable("reporting.esc\u{1b}[2Jx\ry\u{7f}\u{9b}\u{202e}z", lines),
            "reporting.esc\\u{1b}[2Jx\\u{d}y\\u{7f}\\u{9b}\\u{202e}z"
        );
        assert_eq!(printable("a\nb\tc", lines), "a\nb\\u{9}c");
        assert_eq!(printable("a\nb", Keep::default()), "a\\u{a}b");
        let colour = Keep {
            newlines: false,
            colour: true,
        };
        // The tool's colours stay; anything else that starts with ESC does not.
        assert_eq!(
            printable(
                "\u{1b}[1;31merror\u{1b}[0m \u{1b}[2J\u{1b}]0;t\u{7}",
                colour
            ),
            "\u{1b}[1;31merror\u{1b}[0m \\u{1b}[2J\\u{1b}]0;t\\u{7}"
        );
        assert_eq!(printable("\u{1b}[31", colour), "\\u{1b}[31");
    }
}
