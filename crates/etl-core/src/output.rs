//! Standard output that a reader may close early (`| head`, `| true`): `print!` panics then, which
//! would turn a finished run's exit status into 101. Here the rest of the output is dropped
//! instead, and the status stands.

use std::io::{ErrorKind, Write};

/// Writes `text` to stdout. A closed pipe ends the output quietly; any other write error (a full
/// disk behind a redirect) is said on stderr, once per write, and the job goes on.
pub fn write_stdout(text: &str) {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::BrokenPipe => {}
        Err(e) => {
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
