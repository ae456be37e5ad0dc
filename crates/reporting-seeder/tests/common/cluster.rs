//! A PostgreSQL cluster of a test's own (initdb in a temporary directory, its own socket), for
//! tests that stop or restart a server: never the shared one other tests use.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct OwnCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    /// Extra `-c name=value` server settings.
    settings: String,
}

fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql (apt-get install postgresql)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("initdb under /usr/lib/postgresql/*/bin")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl OwnCluster {
    pub fn start() -> OwnCluster {
        OwnCluster::start_with("")
    }

    /// With extra server settings, e.g. `-c shared_preload_libraries=pg_stat_statements`.
    pub fn start_with(settings: &str) -> OwnCluster {
        let dir = tempfile::Builder::new()
            .prefix("rs-own-cluster")
            .tempdir()
            .unwrap();
        if is_root() {
            // PostgreSQL refuses to run as root.
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let port = 20000 + (std::process::id() % 20000) as u16;
        let c = OwnCluster {
            dir,
            bin: bin_dir(),
            port,
            settings: settings.to_string(),
        };
        c.pg(
            &[
                "initdb",
                "-D",
                &c.data(),
                "-U",
                "postgres",
                "--auth=trust",
                "-N",
            ],
            "initdb",
        );
        c.pg_ctl(&["start"]);
        c
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    fn pg(&self, args: &[&str], what: &str) {
        let program = self.bin.join(args[0]);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let out = cmd.args(&args[1..]).output().unwrap();
        assert!(
            out.status.success(),
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pg_ctl(&self, action: &[&str]) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses='' -c fsync=off -c shared_buffers=16MB {}",
            self.port,
            self.socket_dir().display(),
            self.settings
        );
        let log = self.dir.path().join("log").display().to_string();
        let data = self.data();
        let mut args = vec!["pg_ctl", "-D", &data, "-l", &log, "-w", "-o", &opts];
        args.extend_from_slice(action);
        self.pg(&args, "pg_ctl");
    }

    /// Restarts the server, disconnecting every session (a failover, as the tool sees it).
    pub fn restart(&self) {
        self.pg_ctl(&["-m", "fast", "restart"]);
    }

    pub fn url(&self, db: &str) -> String {
        // No host before the path: a host there would be tried first (on port 5432).
        format!(
            "postgres:///{db}?host={}&port={}&user=postgres",
            self.socket_dir().display(),
            self.port
        )
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.pg_ctl(&["-m", "immediate", "stop"])
        }));
    }
}
