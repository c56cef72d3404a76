//! The workspace's binaries (`keelson`, `keelson-cni`) as tests run them,
//! checked to be built from this clone's current sources.
//!
//! The cargo target directory may be shared by several clones
//! (/var/cache/keelson/target): `target/debug/keelson` is whatever clone
//! built last. A test crate cannot depend on another package's binary
//! (`CARGO_BIN_EXE_*` is only set for the package's own), so the binary is
//! located next to the test executable and then checked against the
//! dep-info file cargo writes beside it (`keelson.d`: every source file the
//! binary was compiled from): this clone's `cmd/src/main.rs` must be among
//! them, and none of them may be newer than the binary. Otherwise the test
//! fails, saying so, instead of testing other code.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The workspace root of this clone (the kit lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// Why a binary cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BinError {
    /// Not built at all.
    Missing(PathBuf),
    /// Built from another clone's sources.
    Foreign {
        /// The binary.
        bin: PathBuf,
        /// A source it was built from.
        source: PathBuf,
        /// This clone.
        root: PathBuf,
    },
    /// A source file changed (or is gone) since it was built.
    Stale {
        /// The binary.
        bin: PathBuf,
        /// The newer (or missing) source.
        source: PathBuf,
    },
    /// No dep-info file to check it against.
    Unchecked(PathBuf),
}

impl std::fmt::Display for BinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const BUILD: &str =
            "run `cargo build --workspace --bins` in this clone (cargo xtask test does)";
        match self {
            BinError::Missing(bin) => write!(f, "{} is not built: {BUILD}", bin.display()),
            BinError::Foreign { bin, source, root } => write!(
                f,
                "{} was built from another clone ({} is not under {}): {BUILD}",
                bin.display(),
                source.display(),
                root.display()
            ),
            BinError::Stale { bin, source } => write!(
                f,
                "{} is older than its source {} (changed or removed since the build): {BUILD}",
                bin.display(),
                source.display()
            ),
            BinError::Unchecked(d) => write!(
                f,
                "{} is missing, so the binary cannot be checked against this clone: {BUILD}",
                d.display()
            ),
        }
    }
}

/// The sources listed in a dep-info file (`target: dep dep ...`, spaces in
/// names escaped with a backslash).
fn dep_info_sources(text: &str) -> Vec<PathBuf> {
    let Some((_, deps)) = text.lines().next().and_then(|l| l.split_once(": ")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = deps.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            ' ' => {
                if !cur.is_empty() {
                    out.push(PathBuf::from(std::mem::take(&mut cur)));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(PathBuf::from(cur));
    }
    out
}

/// Checks `bin` against its dep-info file `dep_info` and this clone's
/// `root`; `main` is the source that must be listed (relative to `root`).
pub fn check_bin(bin: &Path, dep_info: &Path, root: &Path, main: &Path) -> Result<(), BinError> {
    let built = std::fs::metadata(bin)
        .and_then(|m| m.modified())
        .map_err(|_| BinError::Missing(bin.to_path_buf()))?;
    let text = std::fs::read_to_string(dep_info)
        .map_err(|_| BinError::Unchecked(dep_info.to_path_buf()))?;
    let sources = dep_info_sources(&text);
    let want = root.join(main);
    if !sources.contains(&want) {
        let other = sources
            .iter()
            .find(|s| s.ends_with(main))
            .or_else(|| sources.first())
            .cloned()
            .unwrap_or_default();
        return Err(BinError::Foreign {
            bin: bin.to_path_buf(),
            source: other,
            root: root.to_path_buf(),
        });
    }
    for s in sources.iter().filter(|s| s.starts_with(root)) {
        let changed = std::fs::metadata(s)
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let gone = !s.exists();
        if gone || changed > built {
            return Err(BinError::Stale {
                bin: bin.to_path_buf(),
                source: s.clone(),
            });
        }
    }
    Ok(())
}

/// The directory cargo puts binaries in for this test run
/// (`target/<profile>`: the parent of a test executable's `deps`, or where
/// a workspace binary such as `keelson-conformance` itself is).
fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("the executable's directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent()
            .expect("target/<profile>/deps/..")
            .to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Which source file is the root of each workspace binary.
fn main_of(name: &str) -> &'static Path {
    match name {
        "keelson" => Path::new("cmd/src/main.rs"),
        "keelson-cni" => Path::new("cni/src/main.rs"),
        "keelson-conformance" => Path::new("tests/src/bin/keelson-conformance.rs"),
        other => panic!("unknown workspace binary {other}"),
    }
}

/// A workspace binary, checked ([`check_bin`]) to be built from this
/// clone's current sources. `$KEELSON_BIN` (for `keelson`) and
/// `$KEELSON_CNI_BIN` (for `keelson-cni`) override the lookup and the
/// check: the caller chose that binary (a copy that a long run keeps while
/// the target directory is rebuilt, or a release build).
pub fn workspace_bin(name: &str) -> Result<PathBuf, BinError> {
    let chosen = match name {
        "keelson" => std::env::var_os("KEELSON_BIN"),
        "keelson-cni" => std::env::var_os("KEELSON_CNI_BIN"),
        _ => None,
    };
    if let Some(p) = chosen {
        return Ok(PathBuf::from(p));
    }
    let dir = target_profile_dir();
    let bin = dir.join(name);
    check_bin(
        &bin,
        &dir.join(format!("{name}.d")),
        &workspace_root(),
        main_of(name),
    )?;
    Ok(bin)
}

/// The `keelson` binary of this clone; panics, saying what to build,
/// when it is missing, stale or built from another clone.
pub fn keelson_bin() -> PathBuf {
    workspace_bin("keelson").unwrap_or_else(|e| panic!("{e}"))
}

/// The `keelson-cni` binary of this clone, checked like [`keelson_bin`].
pub fn keelson_cni_bin() -> PathBuf {
    workspace_bin("keelson-cni").unwrap_or_else(|e| panic!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path, secs_ago: u64) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
        let t = SystemTime::now() - std::time::Duration::from_secs(secs_ago);
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    #[test]
    fn a_binary_is_checked_against_the_clone_it_was_built_from() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("clone a"), t.path().join("b"));
        let main = Path::new("cmd/src/main.rs");
        for root in [&a, &b] {
            touch(&root.join(main), 100);
            touch(&root.join("agent/src/lib.rs"), 100);
        }
        let bin = t.path().join("target/keelson");
        touch(&bin, 50);
        let dep = t.path().join("target/keelson.d");
        let escape = |p: PathBuf| p.display().to_string().replace(' ', "\\ ");
        std::fs::write(
            &dep,
            format!(
                "{}: {} {} /registry/src/x.rs\n",
                bin.display(),
                escape(a.join(main)),
                escape(a.join("agent/src/lib.rs"))
            ),
        )
        .unwrap();
        assert_eq!(check_bin(&bin, &dep, &a, main), Ok(()));
        assert!(matches!(
            check_bin(&bin, &dep, &b, main),
            Err(BinError::Foreign { .. })
        ));
        // A source changed after the build.
        touch(&a.join("agent/src/lib.rs"), 0);
        let e = check_bin(&bin, &dep, &a, main).unwrap_err();
        assert!(matches!(e, BinError::Stale { .. }), "{e}");
        assert!(e.to_string().contains("agent/src/lib.rs"), "{e}");
        // Not built, or no dep-info.
        assert!(matches!(
            check_bin(&t.path().join("nope"), &dep, &a, main),
            Err(BinError::Missing(_))
        ));
        assert!(matches!(
            check_bin(&bin, &t.path().join("nope.d"), &a, main),
            Err(BinError::Unchecked(_))
        ));
    }
}
