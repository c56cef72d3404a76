//! The conformance runner end to end, on a slice of the suite: upstream's
//! `e2e.test` (built by `cargo xtask upstream`) against a two-node Keelson
//! cluster, through `keelson-conformance`, which must write a document
//! that counts what really ran.
//!
//! CI builds no upstream program: without them this test skips with the
//! reason, unless `KEELSON_REQUIRE_UPSTREAM=1` makes that a failure.

use std::path::PathBuf;
use std::process::Command;

use keelson_e2e::multinode::can_run;

const UPSTREAM: &str = "/var/cache/keelson/upstream/bin";

/// Two conformance tests that need pods, the downward API and the node's
/// address: quick, and passing on Keelson.
const FOCUS: &str = r"\[sig-node\] Pods should get a host IP \[Conformance\]|\[sig-node\] Downward API should provide pod name, namespace and IP address as env vars \[Conformance\]";

/// The built upstream programs and the module they came from (from the
/// stamp `cargo xtask upstream` writes), or why not.
fn upstream() -> Result<(PathBuf, PathBuf, String), String> {
    let bin = PathBuf::from(UPSTREAM);
    let stamp = std::fs::read_to_string(bin.join("STAMP"))
        .map_err(|_| format!("{UPSTREAM}/STAMP missing: run `cargo xtask upstream`"))?;
    let release = stamp
        .lines()
        .find_map(|l| l.strip_prefix("kubernetes "))
        .ok_or("no release in the upstream STAMP")?
        .to_string();
    let module = PathBuf::from(format!(
        "/var/cache/keelson/go/mod/k8s.io/kubernetes@{release}"
    ));
    if !module.join("test/e2e").is_dir() {
        return Err(format!(
            "{} missing: run `cargo xtask upstream`",
            module.display()
        ));
    }
    for p in ["e2e.test", "ginkgo", "kubectl", "agnhost"] {
        if !bin.join(p).is_file() {
            return Err(format!(
                "{UPSTREAM}/{p} missing: run `cargo xtask upstream`"
            ));
        }
    }
    Ok((bin, module, release))
}

#[test]
fn a_slice_of_the_conformance_suite_passes_and_is_written_up() {
    let (bin, module, release) = match upstream() {
        Ok(u) => u,
        Err(why) => {
            assert!(
                std::env::var("KEELSON_REQUIRE_UPSTREAM").as_deref() != Ok("1"),
                "KEELSON_REQUIRE_UPSTREAM=1: {why}"
            );
            eprintln!("skipping: {why}");
            return;
        }
    };
    if !can_run("conformance") {
        return;
    }
    let runner =
        keelson_e2e::bin::workspace_bin("keelson-conformance").unwrap_or_else(|e| panic!("{e}"));
    let tmp = tempfile::tempdir().expect("temp dir");
    let doc = tmp.path().join("conformance.md");
    let out = Command::new(runner)
        .arg("--upstream")
        .arg(&bin)
        .arg("--kubernetes-module")
        .arg(&module)
        .args(["--release", &release, "--focus", FOCUS, "--parallel", "2"])
        .arg("--doc")
        .arg(&doc)
        .arg("--report-dir")
        .arg(tmp.path().join("reports"))
        .output()
        .expect("run keelson-conformance");
    let text = std::fs::read_to_string(&doc).unwrap_or_default();
    assert!(
        out.status.success(),
        "keelson-conformance: {}\n{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("**conformance: 2 passed, 0 failed, 0 skipped (2 tests)**"),
        "{text}"
    );
    assert!(text.contains("| sig-node | 2 | 0 | 0 |"), "{text}");
    assert!(text.contains(&format!("Kubernetes {release}")), "{text}");
    // The run left no host route behind.
    let routes = Command::new("ip")
        .args(["-4", "route"])
        .output()
        .expect("ip route");
    assert!(
        !String::from_utf8_lossy(&routes.stdout).contains("unreachable 10.96.0.0/12"),
        "the Service CIDR route outlived the run"
    );
}
