//! `cargo xtask`: set up a Debian machine, run every test, start a cluster,
//! run the benchmarks.
//!
//! ```text
//! cargo xtask setup   # apt packages and Python test client
//! cargo xtask test    # setup, then every test (both tiers; root tests need root)
//! cargo xtask up      # setup, build, `keelson up`: a single-node cluster on this machine
//! cargo xtask bench   # the API server benchmark, both storage backends
//! cargo xtask images  # build the busybox-static test images (OCI layout, cached)
//! ```

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

/// Debian packages the build and the tests need.
const APT_PACKAGES: &[&str] = &[
    "etcd-server",       // the etcd storage backend and its tests
    "protobuf-compiler", // etcd-client and containerd-client build scripts
    "build-essential",   // bundled SQLite and ring
    "pkg-config",
    "python3-pip", // the Python kubernetes client test
    "conntrack",   // keelson-proxy flushes stale UDP conntrack entries
    // Image tests: a local registry, the busybox-static test images built
    // with umoci (cargo xtask images) and pushed with skopeo.
    "docker-registry",
    "umoci",
    "skopeo",
    "busybox-static",
    "runc",     // keelson-runtime: the default OCI runtime and its tests
    "iproute2", // keelson-runtime: `ip link set lo up` in pod sandboxes
    // keelson-cni tests and bench: Debian's reference ptp/host-local/portmap,
    // the iptables portmap drives, ping between pods.
    "containernetworking-plugins",
    "iptables",
    "iputils-ping",
    // keelson-ebpf: the C programs (clang, libbpf headers); bpftool in its tests.
    "clang-19",
    "libbpf-dev",
    "bpftool",
];

/// Python packages the tests use (from PyPI).
const PIP_PACKAGES: &[&str] = &["kubernetes"];

fn workspace_root() -> PathBuf {
    // `cargo run` sets CARGO_MANIFEST_DIR at run time too. Prefer it to the
    // compile-time value: clones sharing one target directory can share one
    // xtask binary, built in another clone.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd.status().with_context(|| format!("run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn python() -> &'static str {
    if Command::new("python3").arg("--version").output().is_ok() {
        "python3"
    } else {
        "python"
    }
}

fn setup() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if !missing.is_empty() {
        if !is_root() {
            bail!("missing packages {missing:?}: run as root, or apt-get install them");
        }
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    let py = python();
    for pkg in PIP_PACKAGES {
        let have = Command::new(py)
            .args(["-c", &format!("import {pkg}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !have {
            let mut cmd = Command::new(py);
            cmd.args(["-m", "pip", "install", "-q", pkg]);
            if let Err(e) = run(&mut cmd) {
                // Debian's system Python refuses pip installs without this flag.
                eprintln!("retrying pip with --break-system-packages: {e}");
                run(Command::new(py).args([
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--break-system-packages",
                    pkg,
                ]))?;
            }
        }
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

fn test(extra: &[String]) -> anyhow::Result<()> {
    setup()?;
    // Build every binary first: the end-to-end tests start them.
    run(cargo().args(["build", "--workspace", "--bins"]))?;
    run(cargo()
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(extra)
        .env("KEELSON_REQUIRE_ALL", "1"))
}

fn up(extra: &[String]) -> anyhow::Result<()> {
    setup()?;
    run(cargo().args(["build", "--release", "-p", "keelson", "-p", "keelson-cni"]))?;
    let target = cargo_target_dir()?;
    let bin = target.join("release/keelson");
    let data_dir = std::env::var("KEELSON_DATA_DIR").unwrap_or_else(|_| "/var/lib/keelson".into());
    eprintln!("starting a single-node cluster; data in {data_dir}");
    eprintln!("when it is up:");
    eprintln!("  export KUBECONFIG={data_dir}/server/admin.kubeconfig");
    eprintln!("  kubectl get nodes,pods -A -o wide");
    eprintln!("stop it with Ctrl-C (pods keep running; a new start adopts them);");
    eprintln!(
        "remove everything with: {} down --data-dir {data_dir}",
        bin.display()
    );
    run(Command::new(bin)
        .args(["up", "--data-dir", &data_dir])
        .args(extra))
}

fn cargo_target_dir() -> anyhow::Result<PathBuf> {
    let out = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("cargo metadata")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let key = "\"target_directory\":\"";
    let start = text
        .find(key)
        .context("cargo metadata: no target_directory")?
        + key.len();
    let end = text[start..]
        .find('"')
        .context("cargo metadata: bad target_directory")?
        + start;
    Ok(PathBuf::from(&text[start..end]))
}

fn bench(extra: &[String]) -> anyhow::Result<()> {
    setup()?;
    run(cargo()
        .args(["bench", "-p", "keelson-e2e", "--bench", "api", "--"])
        .args(extra)
        .env("KEELSON_REQUIRE_ALL", "1"))
}

/// Builds the busybox-static test images (an OCI layout with tags `busybox`
/// and `whiteout`) into the cache, the same script the tests run
/// (agent/images/testdata/build-test-images.sh); reused while the script and
/// /bin/busybox are unchanged.
fn images(extra: &[String]) -> anyhow::Result<()> {
    let cache = extra
        .first()
        .cloned()
        .unwrap_or_else(|| "/var/cache/keelson/images".into());
    let script = workspace_root().join("agent/images/testdata/build-test-images.sh");
    run(Command::new("sh").arg(&script).arg(&cache))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = args
        .split_first()
        .map(|(c, r)| (c.as_str(), r))
        .unwrap_or(("help", &[]));
    match cmd {
        "setup" => setup(),
        "test" => test(rest),
        "up" => up(rest),
        "bench" => bench(rest),
        "images" => images(rest),
        _ => {
            eprintln!(
                "usage: cargo xtask setup | test [cargo test args] | up [keelson up args] | bench | images [CACHE_DIR]"
            );
            if cmd == "help" {
                Ok(())
            } else {
                bail!("unknown command {cmd:?}")
            }
        }
    }
}
