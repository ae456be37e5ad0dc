//! Configuration read from the environment, with a `.env` file in the working directory as a
//! fallback that never overrides a variable the real environment already sets.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

/// A configuration error: names the variable and what to do about it, never echoes a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}={value:?} is not valid: {expected}")]
    Invalid {
        var: String,
        value: String,
        expected: String,
    },
    /// For values that may carry a secret: the value itself is never shown.
    #[error("{var} is not valid: {reason}")]
    InvalidSecret { var: String, reason: String },
    #[error("could not read {path}: {reason}; fix or remove the file")]
    DotEnv { path: String, reason: String },
}

/// A snapshot of the environment. Jobs read configuration from this, never from `std::env`
/// directly, so tests can hand in exactly the variables they mean.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
    /// What loading `.env` has to say (statements it skipped), for the log once it is set up.
    warnings: Vec<String>,
}

impl Env {
    /// The process environment, after merging `.env` from the working directory (real variables
    /// win). Call before starting any thread: loading `.env` sets process variables.
    pub fn load() -> Result<Env, ConfigError> {
        let warnings = load_dotenv(Path::new(".env"))?;
        Ok(Env {
            warnings,
            ..Env::from_process()
        })
    }

    pub fn from_process() -> Env {
        Env {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
            warnings: Vec::new(),
        }
    }

    /// What loading `.env` skipped, one message per statement, for the log.
    pub fn dotenv_warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn from_pairs<I, K, V>(pairs: I) -> Env
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Env {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            warnings: Vec::new(),
        }
    }

    /// The raw value; an empty value counts as unset, as most shells and schedulers produce
    /// `VAR=` when they mean "no value".
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    /// Every variable's name, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.vars.keys().map(String::as_str)
    }

    /// The raw value even when empty (a password may legitimately be empty).
    pub fn get_raw(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    pub fn string_or(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or(default).to_string()
    }

    /// A parsed value, `default` when unset.
    pub fn parse_or<T: FromStr>(
        &self,
        name: &str,
        default: T,
        expected: &str,
    ) -> Result<T, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw.trim().parse().map_err(|_| ConfigError::Invalid {
                var: name.to_string(),
                value: raw.to_string(),
                expected: expected.to_string(),
            }),
        }
    }

    /// A whole number of at least 1.
    pub fn positive_or(&self, name: &str, default: u64) -> Result<u64, ConfigError> {
        let value: u64 = self.parse_or(name, default, "expected a whole number of at least 1")?;
        if value == 0 {
            return Err(ConfigError::Invalid {
                var: name.to_string(),
                value: "0".to_string(),
                expected: "expected a whole number of at least 1".to_string(),
            });
        }
        Ok(value)
    }

    /// A duration: `500ms`, `30s`, `5min`, `2h`, or a bare number of milliseconds (as PostgreSQL
    /// reads its timeouts); `0` means off.
    pub fn duration_or(
        &self,
        name: &str,
        default: std::time::Duration,
    ) -> Result<std::time::Duration, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => parse_duration(raw).ok_or_else(|| ConfigError::Invalid {
                var: name.to_string(),
                value: raw.to_string(),
                expected: "expected a duration such as 500ms, 30s, 5min or 2h (0 turns it off)"
                    .to_string(),
            }),
        }
    }

    /// `true/false`, `t/f`, `1/0`, `yes/no`, `y/n`, `on/off`, any case: what PostgreSQL takes for
    /// a boolean (and so a manifest's `enabled` column).
    pub fn bool_or(&self, name: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => match raw.trim().to_ascii_lowercase().as_str() {
                "true" | "t" | "1" | "yes" | "y" | "on" => Ok(true),
                "false" | "f" | "0" | "no" | "n" | "off" => Ok(false),
                _ => Err(ConfigError::Invalid {
                    var: name.to_string(),
                    value: raw.to_string(),
                    expected: "expected true or false (or t/f, 1/0, yes/no, y/n, on/off)"
                        .to_string(),
                }),
            },
        }
    }
}

/// `500ms`, `30s`, `5min`, `2h`, `1d`, or a bare number of milliseconds.
pub fn parse_duration(raw: &str) -> Option<std::time::Duration> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let n: u64 = number.parse().ok()?;
    let ms = match unit.trim() {
        "" | "ms" => n,
        "s" => n.checked_mul(1_000)?,
        "min" | "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(std::time::Duration::from_millis(ms))
}

/// Loads `path` into the process environment without overriding variables already set, reading
/// it as the tool this one replaces read it (python-dotenv's `load_dotenv()`: see
/// [`crate::pydotenv`]). A missing file is fine; one that cannot be read (not UTF-8, a directory)
/// is a configuration error. Returns a warning for each statement skipped because it could not be
/// parsed (python-dotenv skips them too), naming its line but never its content, which may hold a
/// password.
pub fn load_dotenv(path: &Path) -> Result<Vec<String>, ConfigError> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::DotEnv {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let parsed = crate::pydotenv::parse(&text);
    let mut set = Vec::new();
    for (name, value) in crate::pydotenv::resolve(&parsed, |n| std::env::var(n).ok()) {
        if std::env::var_os(&name).is_none() {
            std::env::set_var(&name, value);
            set.push(name);
        }
    }
    let mut warnings: Vec<String> = parsed
        .bad_lines
        .iter()
        .map(|line| {
            format!(
                "{}: the statement on line {line} could not be parsed and was skipped (as the \
                 tool this one replaces skipped it); write it as NAME=value, quoting a value that \
                 holds quotes",
                path.display()
            )
        })
        .collect();
    // Each variable keeps the environment's value, but DATABASE_URL from the file outranks the
    // DB_* the environment sets: say so, as the connection goes elsewhere than they say.
    if set.iter().any(|n| n == "DATABASE_URL") {
        let outranked: Vec<&str> = DB_PARTS
            .iter()
            .copied()
            .filter(|n| !set.iter().any(|s| s == n))
            .filter(|n| std::env::var(n).is_ok_and(|v| !v.trim().is_empty()))
            .collect();
        if !outranked.is_empty() {
            warnings.push(format!(
                "{}: its DATABASE_URL is used, and {} set in the environment ignored \
                 (DATABASE_URL outranks them); set DATABASE_URL in the environment, or remove \
                 it from the file",
                path.display(),
                outranked.join(", ")
            ));
        }
    }
    Ok(warnings)
}

/// The variables DATABASE_URL replaces (DB_SSLMODE and DB_SSLROOTCERT still apply to it).
const DB_PARTS: &[&str] = &["DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_that_cannot_be_parsed_is_skipped_with_its_line_and_not_its_content() {
        let dir = std::env::temp_dir().join(format!("etl-core-dotenv-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(".env");
        std::fs::write(
            &file,
            "ETL_CORE_TEST_BEFORE=1\nDB_PASSWORD=\"S3cretPW\" x\nETL_CORE_TEST_AFTER=2\n",
        )
        .unwrap();
        let warnings = load_dotenv(&file).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("line 2"), "{warnings:?}");
        assert!(!warnings[0].contains("S3cret"), "{warnings:?}");
        let env = Env::from_process();
        assert_eq!(env.get("ETL_CORE_TEST_BEFORE"), Some("1"));
        assert_eq!(env.get("ETL_CORE_TEST_AFTER"), Some("2"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn empty_value_counts_as_unset() {
        let env = Env::from_pairs([("A", " "), ("B", "7")]);
        assert_eq!(env.positive_or("A", 3), Ok(3));
        assert_eq!(env.positive_or("B", 3), Ok(7));
    }

    #[test]
    fn bad_numbers_name_the_variable() {
        let env = Env::from_pairs([("SEEDER_MAX_WORKERS", "abc"), ("Z", "0")]);
        let err = env.positive_or("SEEDER_MAX_WORKERS", 8).unwrap_err();
        assert!(err.to_string().contains("SEEDER_MAX_WORKERS"), "{err}");
        assert!(env.positive_or("Z", 8).is_err());
    }

    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("500"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("5min"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration(" 2h "), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        for bad in ["", "s", "-1s", "1.5s", "10 parsecs", "1e3"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        let env = Env::from_pairs([("T", "soon")]);
        assert!(env
            .duration_or("T", Duration::ZERO)
            .unwrap_err()
            .to_string()
            .contains("T="));
    }

    #[test]
    fn booleans() {
        let env = Env::from_pairs([
            ("T", "YES"),
            ("F", "off"),
            ("X", "maybe"),
            ("T1", "t"),
            ("F1", "N"),
        ]);
        assert_eq!(env.bool_or("T", false), Ok(true));
        assert_eq!(env.bool_or("F", true), Ok(false));
        assert_eq!(env.bool_or("T1", false), Ok(true));
        assert_eq!(env.bool_or("F1", true), Ok(false));
        assert_eq!(env.bool_or("U", true), Ok(true));
        assert!(env
            .bool_or("X", true)
            .unwrap_err()
            .to_string()
            .contains("X="));
    }

    #[test]
    fn dotenv_never_overrides_the_real_environment() {
        let dir = std::env::temp_dir().join(format!("etl-core-dotenv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(".env");
        std::fs::write(
            &file,
            "ETL_CORE_TEST_REAL=from_file\nETL_CORE_TEST_ONLY_FILE=from_file\n",
        )
        .unwrap();
        // The only test touching these variables, so mutating the process env is contained.
        unsafe_free_set("ETL_CORE_TEST_REAL", "from_env");
        load_dotenv(&file).unwrap();
        let env = Env::from_process();
        assert_eq!(env.get("ETL_CORE_TEST_REAL"), Some("from_env"));
        assert_eq!(env.get("ETL_CORE_TEST_ONLY_FILE"), Some("from_file"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[allow(clippy::disallowed_methods)]
    fn unsafe_free_set(k: &str, v: &str) {
        // Edition 2021: set_var is safe; tests in this module never read these names concurrently.
        std::env::set_var(k, v);
    }
}
