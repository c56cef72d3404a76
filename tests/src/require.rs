//! Whether a test can run here: one rule for every crate's tests and
//! benches. A test that lacks something (root, a tool, a cgroup2
//! hierarchy, the `keelson` binary) says what and skips, unless
//! `KEELSON_REQUIRE_ALL=1` (CI, `cargo xtask test`), where it fails.
//!
//! ```no_run
//! if !keelson_e2e::needs("nftables::removal").root().tools(&["ip", "nft"]).ok() {
//!     return;
//! }
//! ```

use std::path::Path;

/// True when every test tier must run (CI): missing tools are failures, not
/// skips.
pub fn require_all() -> bool {
    std::env::var("KEELSON_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

/// Whether a test can run: `available`, else a skip with `why` on stderr,
/// or a panic when every test is required (`KEELSON_REQUIRE_ALL=1`, as CI sets).
pub fn require_or_skip(available: bool, why: &str) -> bool {
    if available {
        return true;
    }
    assert!(!require_all(), "required but unavailable: {why}");
    eprintln!("skipping: {why} (KEELSON_REQUIRE_ALL=1 makes this a failure)");
    false
}

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// Where a program is: an absolute path that exists, else the first
/// executable of that name in `PATH`.
pub fn find_tool(name: &str) -> Option<std::path::PathBuf> {
    if let Some(t) = keelson_host::tools::by_name(name)
        && t.name == name
    {
        return t.find().ok();
    }
    if name.starts_with('/') {
        return Path::new(name).exists().then(|| name.into());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| keelson_host::tools::DEFAULT_PATH.into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// What a test needs; [`Needs::ok`] gives the verdict.
#[must_use = "ask for the verdict with .ok()"]
#[derive(Debug)]
pub struct Needs {
    test: String,
    missing: Vec<String>,
}

/// Starts the list of what `test` needs.
pub fn needs(test: &str) -> Needs {
    Needs {
        test: test.to_string(),
        missing: Vec::new(),
    }
}

impl Needs {
    /// Root (network namespaces, nftables, BPF, cgroups, mounts).
    pub fn root(mut self) -> Self {
        if !is_root() {
            self.missing.push("root".into());
        }
        self
    }

    /// A program: an absolute path, or a name found in `PATH`.
    pub fn tool(mut self, name: &str) -> Self {
        if find_tool(name).is_none() {
            let pkg = keelson_host::tools::by_name(name)
                .map(|t| format!(" (Debian package {})", t.package))
                .unwrap_or_default();
            self.missing.push(format!("the `{name}` tool{pkg}"));
        }
        self
    }

    /// Several programs.
    pub fn tools(self, names: &[&str]) -> Self {
        names.iter().fold(self, |n, t| n.tool(t))
    }

    /// A file or directory, described as `what`.
    pub fn path(mut self, path: impl AsRef<Path>, what: &str) -> Self {
        if !path.as_ref().exists() {
            self.missing
                .push(format!("{what} ({})", path.as_ref().display()));
        }
        self
    }

    /// A cgroup2 hierarchy under /sys/fs/cgroup (pure v2 or hybrid).
    pub fn cgroup2(mut self) -> Self {
        if crate::cgroup2().is_none() {
            self.missing
                .push("a cgroup2 hierarchy (/sys/fs/cgroup or /sys/fs/cgroup/unified)".into());
        }
        self
    }

    /// The `keelson` binary of this clone (see [`crate::keelson_bin`]):
    /// missing is a skip; stale or built from other code is always a
    /// failure.
    pub fn keelson(self) -> Self {
        self.workspace_bin("keelson")
    }

    /// A binary of this workspace (`keelson`, `keelson-cni`), as
    /// [`Needs::keelson`].
    pub fn workspace_bin(mut self, name: &str) -> Self {
        if let Err(why) = crate::bin::workspace_bin(name) {
            match why {
                crate::bin::BinError::Missing(_) => self.missing.push(why.to_string()),
                other => panic!("{}: {other}", self.test),
            }
        }
        self
    }

    /// Anything else the caller checked: `available`, else `what` is missing.
    pub fn also(mut self, available: bool, what: &str) -> Self {
        if !available {
            self.missing.push(what.to_string());
        }
        self
    }

    /// What is missing, as phrases.
    pub fn missing(&self) -> &[String] {
        &self.missing
    }

    /// The skip reason, `None` when everything is there.
    pub fn reason(&self) -> Option<String> {
        (!self.missing.is_empty()).then(|| format!("needs {}", self.missing.join(", ")))
    }

    /// The verdict: true to run. Otherwise says why on stderr and returns
    /// false, or panics under `KEELSON_REQUIRE_ALL=1`.
    pub fn ok(self) -> bool {
        let Some(reason) = self.reason() else {
            return true;
        };
        assert!(
            !require_all(),
            "{}: {reason} (KEELSON_REQUIRE_ALL=1)",
            self.test
        );
        eprintln!(
            "skipping {}: {reason} (KEELSON_REQUIRE_ALL=1 makes this a failure)",
            self.test
        );
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_things_are_named() {
        let n = needs("t")
            .tool("/nonexistent/keelson-tool")
            .path("/nonexistent", "a thing")
            .also(true, "never listed");
        assert_eq!(n.missing().len(), 2, "{:?}", n.missing());
        let r = n.reason().unwrap();
        assert!(r.contains("keelson-tool") && r.contains("a thing"), "{r}");
        assert_eq!(needs("t").tool("sh").reason(), None);
    }
}
