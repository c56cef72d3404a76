//! `cargo xtask`: set up a Debian machine, run every test, start a cluster,
//! run the benchmarks.
//!
//! ```text
//! cargo xtask setup   # apt packages, Python test client, cargo-fuzz
//! cargo xtask test    # setup, then every test (both tiers; root tests need root), then fuzz 30 s each
//! cargo xtask fuzz [--seconds N] [--jobs J] [TARGET...]  # the fuzz targets of fuzz/, N s each
//! cargo xtask up      # setup, build, `keelson up`: a single-node cluster on this machine
//! cargo xtask bench   # the API server benchmark, both storage backends
//! cargo xtask images  # test images into the import dir of `keelson up`'s agent
//! cargo xtask upstream     # build upstream e2e.test, kube-proxy, kubelet, agnhost, crictl (Go)
//! cargo xtask conformance  # the Kubernetes conformance suite against a Keelson cluster
//! ```

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

mod fuzz;
mod upstream;

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
    // Every program the product, the tests and the build run, with its
    // package, is listed in keelson-host's tool registry (one home).
    let missing: Vec<&str> = keelson_host::tools::setup_packages()
        .into_iter()
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
    // The fuzz targets' runner (crates.io, cached outside the clone).
    fuzz::install()
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
        .env("KEELSON_REQUIRE_ALL", "1")
        // Golden files are compared, never rewritten, by the test command.
        .env_remove("KEELSON_UPDATE_GOLDEN"))?;
    // Hostile input: every fuzz target, briefly, from its checked-in corpus.
    fuzz::fuzz(&["--seconds".into(), fuzz::DEFAULT_SECONDS.to_string()])
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

/// The names the test images get in the node's image store.
const IMAGE_NAMES: &[(&str, &str)] = &[
    ("busybox", "keelson.local/busybox:v1"),
    ("whiteout", "keelson.local/whiteout:v1"),
];

/// `cargo xtask images [--data-dir DIR]`: builds the busybox-static test
/// images (agent/images/testdata/build-test-images.sh, cached under
/// /var/cache/keelson/images) and puts them, as an OCI archive with the names
/// of [`IMAGE_NAMES`], into the image import dir of the agent of `keelson
/// up --data-dir DIR` (default `$KEELSON_DATA_DIR`, else /var/lib/keelson).
/// A running agent imports it within seconds; one started later, at start.
/// No registry and no network.
fn images(extra: &[String]) -> anyhow::Result<()> {
    let data_dir = match extra {
        [] => std::env::var("KEELSON_DATA_DIR").unwrap_or_else(|_| "/var/lib/keelson".into()),
        [flag, dir] if flag == "--data-dir" => dir.clone(),
        _ => bail!("usage: cargo xtask images [--data-dir DIR]"),
    };
    let cache = PathBuf::from("/var/cache/keelson/images");
    let script = workspace_root().join("agent/images/testdata/build-test-images.sh");
    eprintln!("+ sh {} {}", script.display(), cache.display());
    let out = Command::new("sh")
        .arg(&script)
        .arg(&cache)
        .output()
        .with_context(|| format!("run {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let layout = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    // A copy of the layout whose index names each image in full.
    let work = cache.join(format!(".archive-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    run(Command::new("cp").arg("-a").arg(&layout).arg(&work))?;
    let index_path = work.join("index.json");
    let mut index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&index_path).with_context(|| format!("read {}", index_path.display()))?,
    )
    .context("parse the layout's index.json")?;
    let mut named = Vec::new();
    for m in index["manifests"].as_array_mut().into_iter().flatten() {
        let tag = m["annotations"]["org.opencontainers.image.ref.name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Some((_, name)) = IMAGE_NAMES.iter().find(|(t, _)| *t == tag) {
            m["annotations"]["io.containerd.image.name"] = serde_json::json!(name);
            named.push(*name);
        }
    }
    std::fs::write(&index_path, serde_json::to_vec(&index)?)
        .with_context(|| format!("write {}", index_path.display()))?;
    let import = PathBuf::from(&data_dir).join("agent/images/import");
    std::fs::create_dir_all(&import).with_context(|| format!("create {}", import.display()))?;
    // Written under a dot name, then renamed: the agent skips dot files.
    let tmp = import.join(".keelson-test-images.tar");
    let result = run(Command::new("tar")
        .arg("-C")
        .arg(&work)
        .arg("-cf")
        .arg(&tmp)
        .arg("."));
    let _ = std::fs::remove_dir_all(&work);
    result?;
    let archive = import.join("keelson-test-images.tar");
    std::fs::rename(&tmp, &archive).with_context(|| format!("rename to {}", archive.display()))?;
    println!(
        "{}: {} (the agent of keelson up --data-dir {data_dir} imports it)",
        archive.display(),
        named.join(", ")
    );
    Ok(())
}

/// `cargo xtask conformance [keelson-conformance flags]`: the upstream
/// programs (built once, cached), this clone's binaries, then
/// tests/src/bin/keelson-conformance.rs, which builds the suite's images,
/// starts a multi-node cluster, runs the suite and writes docs/conformance.md.
fn conformance(extra: &[String]) -> anyhow::Result<()> {
    setup()?;
    let bin = upstream::build()?;
    run(cargo().args(["build", "--workspace", "--bins"]))?;
    let (kmod, _) = upstream::kubernetes_module(&PathBuf::from(upstream::UPSTREAM).join("src"))?;
    // The run takes an hour or more: it runs copies of this clone's
    // binaries, so the target directory may be rebuilt meanwhile.
    let debug = cargo_target_dir()?.join("debug");
    let copies = PathBuf::from("/var/cache/keelson/conformance/bin");
    std::fs::create_dir_all(&copies)?;
    for name in ["keelson", "keelson-cni", "keelson-conformance"] {
        let to = copies.join(name);
        let _ = std::fs::remove_file(&to);
        std::fs::copy(debug.join(name), &to)
            .with_context(|| format!("copy {name} to {}", copies.display()))?;
    }
    run(Command::new(copies.join("keelson-conformance"))
        .env("KEELSON_BIN", copies.join("keelson"))
        .env("KEELSON_CNI_BIN", copies.join("keelson-cni"))
        .arg("--upstream")
        .arg(&bin)
        .arg("--kubernetes-module")
        .arg(&kmod)
        .args(["--release", upstream::KUBERNETES])
        .arg("--doc")
        .arg(workspace_root().join("docs/conformance.md"))
        .args(extra))
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
        "fuzz" => fuzz::fuzz(rest),
        "upstream" => upstream::build().map(drop),
        "conformance" => conformance(rest),
        _ => {
            eprintln!(
                "usage: cargo xtask setup | test [cargo test args] | up [keelson up args] | bench | images [--data-dir DIR] | fuzz [--seconds N] [--jobs J] [TARGET...] | upstream | conformance [--focus REGEX] [--skip REGEX] [--nodes N] [--parallel N]"
            );
            if cmd == "help" {
                Ok(())
            } else {
                bail!("unknown command {cmd:?}")
            }
        }
    }
}
