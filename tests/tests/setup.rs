//! The setup installs everything the workspace runs: every external program
//! named in the sources (product, tests, build scripts) is in keelson-host's
//! tool registry, and the Debian package providing it on this machine is
//! one `cargo xtask setup` installs, or one Debian treats as essential (on
//! every machine). A program added without its install step fails here, not
//! on a user's fresh machine.
//!
//! Needs dpkg (Debian); skips elsewhere unless KEELSON_REQUIRE_ALL=1.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use keelson_host::tools::{self, ALL, NOT_FROM_APT};

/// Paths that name programs inside container images (busybox applets and
/// test fixtures), not on the host.
const IN_IMAGES: &[&str] = &["/bin/app", "/bin/true", "/bin/wget", "/bin/busybox"];

/// Shell words that are not programs.
const SHELL_WORDS: &[&str] = &[
    "if", "then", "else", "elif", "fi", "for", "in", "do", "done", "while", "case", "esac", "set",
    "trap", "exit", "echo", "printf", "[", "test", "command", "export", "local", "return", "read",
    "cd", ":", "true", "false", "shift", "exec", "{", "}",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Files git tracks (plus untracked, not ignored) with one of `exts`.
fn sources(exts: &[&str]) -> Vec<PathBuf> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root())
        .args(["ls-files", "--cached", "--others", "--exclude-standard"])
        .output()
        .expect("git ls-files");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|f| exts.iter().any(|e| f.ends_with(e)))
        .map(|f| root().join(f))
        .filter(|p| p.is_file())
        .collect()
}

/// The string literal starting right after `prefix` in `line`.
fn literals_after<'a>(line: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find(prefix) {
        rest = &rest[i + prefix.len()..];
        if let Some(end) = rest.find('"') {
            out.push(&rest[..end]);
        }
    }
    out
}

/// Programs the Rust sources run: `Command::new("x")`, `exec(&["x", ...`
/// style helpers, and absolute paths under the bin dirs.
fn programs_in_rust(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        for p in ["Command::new(\"", "exec(&[\"", "sh(&[\"", "run(&[\""] {
            for lit in literals_after(line, p) {
                out.insert(lit.to_string());
            }
        }
        for lit in literals_after(line, "\"/") {
            let path = format!("/{lit}");
            let dirs = [
                "/usr/sbin/",
                "/usr/bin/",
                "/sbin/",
                "/bin/",
                "/usr/lib/cni/",
            ];
            if dirs.iter().any(|d| path.starts_with(d))
                && !path.starts_with("/proc")
                && path
                    .rsplit('/')
                    .next()
                    .is_some_and(|n| !n.is_empty() && !n.contains('.'))
                && !IN_IMAGES.contains(&path.as_str())
            {
                out.insert(path);
            }
        }
    }
    out.retain(|p| {
        !p.is_empty() && !p.contains(' ') && !p.contains('{') && !p.starts_with("/proc/")
    });
    out
}

/// The first word of every simple command of a shell script (functions it
/// defines left out).
fn programs_in_shell(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let text = text.replace("\\\n", " ");
    let functions: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.trim().split_once("()").map(|(n, _)| n.trim()))
        .collect();
    for line in text.lines() {
        let line = line.split(" #").next().unwrap_or("");
        if line.trim_start().starts_with('#') {
            continue;
        }
        for part in line.split([';', '|', '&', '(', ')', '`']) {
            let mut words = part.split_whitespace();
            let mut w = words.next();
            // Assignments before a command (`X=1 cmd`) and `$(`.
            while let Some(x) = w {
                if x.contains('=') || x.starts_with('$') {
                    w = words.next();
                } else {
                    break;
                }
            }
            let Some(w) = w else { continue };
            if w.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
                && !SHELL_WORDS.contains(&w)
                && !w.ends_with(')')
                && !w.starts_with('.')
                && !w.starts_with('-')
                && !functions.contains(w)
                && w.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_lowercase() || c == '/')
            {
                out.insert(w.to_string());
            }
        }
    }
    out
}

/// Where `name` is on this machine (absolute names as they are): Debian's
/// bin dirs first (what a package installs), then `PATH` (programs the
/// build machines have beyond Debian's, e.g. pyenv's python3, come last).
fn locate(name: &str) -> Option<PathBuf> {
    if name.starts_with('/') {
        return Path::new(name).exists().then(|| PathBuf::from(name));
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let path = format!("{}:{path}", tools::DEFAULT_PATH);
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Which package owns each installed file, from dpkg's file lists.
fn dpkg_files() -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir("/var/lib/dpkg/info") else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pkg) = name.strip_suffix(".list") else {
            continue;
        };
        let pkg = pkg.split(':').next().unwrap_or(pkg).to_string();
        for line in std::fs::read_to_string(e.path())
            .unwrap_or_default()
            .lines()
        {
            out.insert(PathBuf::from(line), pkg.clone());
        }
    }
    out
}

/// The Debian package owning `path` (trying its /usr-merged twin and its
/// resolved target too).
fn package_of(files: &BTreeMap<PathBuf, String>, path: &Path) -> Option<String> {
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut candidates = vec![path.to_path_buf(), real.clone()];
    for p in [path, real.as_path()] {
        let s = p.to_string_lossy();
        candidates.push(match s.strip_prefix("/usr") {
            Some(rest) => PathBuf::from(rest),
            None => PathBuf::from(format!("/usr{s}")),
        });
    }
    candidates.iter().find_map(|c| files.get(c).cloned())
}

/// Whether Debian marks `pkg` essential (present on every installation).
fn essential(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Essential}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "yes")
}

#[test]
fn every_program_the_workspace_runs_is_installed_by_setup() {
    let have_dpkg = Command::new("dpkg").arg("--version").output().is_ok();
    if !keelson_e2e::require_or_skip(have_dpkg, "no dpkg (not Debian)") {
        return;
    }
    // 1. What the sources run.
    let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let me = Path::new(file!()).file_name().expect("file name");
    for f in sources(&[".rs"]) {
        if f.file_name() == Some(me) {
            continue; // its fixtures are not programs it runs
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for p in programs_in_rust(&text) {
            found.entry(p).or_default().insert(f.display().to_string());
        }
    }
    for f in sources(&[".sh", ".ci/run"]) {
        let text = std::fs::read_to_string(&f).unwrap();
        for p in programs_in_shell(&text) {
            found.entry(p).or_default().insert(f.display().to_string());
        }
    }
    // The scan sees what it should (a broken scan would pass vacuously).
    for p in ["nft", "runc", "curl", "umoci", "skopeo", "sha256sum"] {
        assert!(
            found.keys().any(|k| k.rsplit('/').next() == Some(p)),
            "the scan did not find {p}: {found:?}"
        );
    }

    let setup: BTreeSet<&str> = tools::setup_packages().into_iter().collect();
    let owners = dpkg_files();
    let mut problems = Vec::new();
    for (program, files) in &found {
        let base = program.rsplit('/').next().unwrap_or(program);
        if NOT_FROM_APT.iter().any(|(n, _)| *n == base) {
            continue;
        }
        let Some(path) = locate(program) else {
            problems.push(format!(
                "{program} (run in {files:?}) is not installed here"
            ));
            continue;
        };
        let Some(pkg) = package_of(&owners, &path) else {
            problems.push(format!(
                "{program} ({}) belongs to no Debian package",
                path.display()
            ));
            continue;
        };
        match tools::by_name(program) {
            Some(t) => {
                if t.package != pkg {
                    problems.push(format!(
                        "{program}: the registry says package {}, dpkg says {pkg}",
                        t.package
                    ));
                }
            }
            None if essential(&pkg) => {}
            None => problems.push(format!(
                "{program} (package {pkg}, run in {files:?}) is not in keelson-host's tool registry"
            )),
        }
        if !setup.contains(pkg.as_str()) && !essential(&pkg) {
            problems.push(format!(
                "{program}: package {pkg} is neither installed by setup nor essential"
            ));
        }
    }
    // 2. Every registered program is installed (setup ran), from the
    // package the registry names.
    for t in ALL {
        match locate(t.name) {
            None => problems.push(format!(
                "{} is registered but not installed (package {})",
                t.name, t.package
            )),
            Some(path) => {
                let pkg = package_of(&owners, &path);
                if pkg.as_deref() != Some(t.package) {
                    problems.push(format!(
                        "{}: registered as package {}, dpkg says {pkg:?}",
                        t.name, t.package
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_scanners_find_programs() {
    let rust = r#"
        let a = Command::new("nft").arg("-f");
        node.exec(&["sysctl", "-w"]);
        sh(&["ip", "link"]);
        let p = "/usr/sbin/runc"; let q = "/bin/wget"; let r = "/usr/bin/x.conf";
        let s = format!("a {}", 1);
    "#;
    let got = programs_in_rust(rust);
    assert_eq!(
        got.into_iter().collect::<Vec<_>>(),
        ["/usr/sbin/runc", "ip", "nft", "sysctl"]
    );
    let shell = "set -eu\nfor tool in a b; do\n  command -v \"$tool\" >/dev/null || exit 1\ndone\n\
                 key=$(cat \"$0\" | sha256sum | cut -c1-16)\nX=1 umoci init --layout x # comment\n\
                 mktar() { # DIR\n  tar -C \"$1\" .\n}\nmktar a b\nfor w in sh \\\n  vi; do\n  ln -s $w\ndone\n";
    let got = programs_in_shell(shell);
    for p in ["cat", "sha256sum", "cut", "umoci", "tar", "ln"] {
        assert!(got.contains(p), "{p}: {got:?}");
    }
    for p in ["for", "command", "mktar", "vi"] {
        assert!(!got.contains(p), "{p}: {got:?}");
    }
}
