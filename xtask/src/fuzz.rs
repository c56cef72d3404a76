//! `cargo xtask fuzz [--seconds N] [--jobs J] [TARGET...]`: builds the fuzz
//! targets of `fuzz/` with cargo-fuzz (libFuzzer, no sanitizer: it builds
//! on the stable toolchain) and runs each for N seconds (default 30), J at
//! a time (default 2), against a temporary copy of its checked-in corpus
//! `fuzz/corpus/TARGET` (new inputs are not written into the clone). Any
//! crash, panic, timeout or out-of-memory fails the run; the input is kept
//! in `fuzz/artifacts/TARGET/` (ignored by git) to reproduce with
//! `fuzz/README.md`'s commands.
//!
//! The build goes to `fuzz/` under the workspace's target directory
//! (/var/cache/keelson/target/fuzz on CI machines), so later runs reuse it.
//! cargo-fuzz itself is installed by `cargo xtask setup` ([`install`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

/// The targets, as `fuzz/Cargo.toml` names them.
pub const TARGETS: &[&str] = &[
    "api_decode",
    "patch",
    "selectors",
    "cni_config",
    "image_manifest",
    "image_unpack",
    "dns",
];

/// cargo-fuzz, pinned: installed from crates.io by `cargo xtask setup`.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Where cargo-installed tools live (outside the clone, kept between runs).
const TOOLS_ROOT: &str = "/var/cache/keelson/cargo-tools";

/// Seconds each target runs by default (and under `cargo xtask test`).
pub const DEFAULT_SECONDS: u64 = 30;
/// Longest one input may take before libFuzzer calls it a hang.
const INPUT_TIMEOUT_SECONDS: u64 = 10;

fn cargo_fuzz() -> PathBuf {
    Path::new(TOOLS_ROOT).join("bin/cargo-fuzz")
}

/// Installs cargo-fuzz [`CARGO_FUZZ_VERSION`] into [`TOOLS_ROOT`] unless it
/// is there already (then this does nothing).
pub fn install() -> anyhow::Result<()> {
    let bin = cargo_fuzz();
    let have = Command::new(&bin).arg("--version").output().is_ok_and(|o| {
        String::from_utf8_lossy(&o.stdout).trim() == format!("cargo-fuzz {CARGO_FUZZ_VERSION}")
    });
    if have {
        return Ok(());
    }
    super::run(
        super::cargo()
            .args(["install", "cargo-fuzz", "--locked", "--version"])
            .arg(format!("={CARGO_FUZZ_VERSION}"))
            .arg("--root")
            .arg(TOOLS_ROOT),
    )
}

struct Options {
    seconds: u64,
    jobs: usize,
    targets: Vec<String>,
}

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut o = Options {
        seconds: DEFAULT_SECONDS,
        jobs: 2,
        targets: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut number = |flag: &str| -> anyhow::Result<u64> {
            let v = it.next().with_context(|| format!("{flag} needs a value"))?;
            v.parse()
                .with_context(|| format!("{flag} {v:?}: not a whole number"))
        };
        match a.as_str() {
            "--seconds" => o.seconds = number("--seconds")?,
            "--jobs" => o.jobs = number("--jobs")?.max(1) as usize,
            t if TARGETS.contains(&t) => o.targets.push(t.to_string()),
            other => bail!(
                "usage: cargo xtask fuzz [--seconds N] [--jobs J] [TARGET...]: unknown argument {other:?} (targets: {})",
                TARGETS.join(", ")
            ),
        }
    }
    if o.targets.is_empty() {
        o.targets = TARGETS.iter().map(|t| t.to_string()).collect();
    }
    Ok(o)
}

/// The host's target triple, where cargo-fuzz puts the binaries.
fn host_triple() -> anyhow::Result<String> {
    let out = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("-vV")
        .current_dir(super::workspace_root())
        .output()
        .context("rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_string)
        .context("rustc -vV printed no host")
}

/// One target running: its process, its log, its corpus copy.
struct Running {
    target: String,
    child: Child,
    log: tempfile::NamedTempFile,
    _corpus: tempfile::TempDir,
    /// The target's TMPDIR (image_unpack's sandbox), removed with it.
    _tmp: tempfile::TempDir,
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<usize> {
    let mut n = 0;
    for e in std::fs::read_dir(from).with_context(|| format!("read {}", from.display()))? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), to.join(e.file_name()))
                .with_context(|| format!("copy {}", e.path().display()))?;
            n += 1;
        }
    }
    Ok(n)
}

fn start(bin_dir: &Path, fuzz_dir: &Path, target: &str, seconds: u64) -> anyhow::Result<Running> {
    let corpus = tempfile::Builder::new()
        .prefix(&format!("keelson-fuzz-{target}."))
        .tempdir()
        .context("create a corpus dir")?;
    let seeds = copy_dir(&fuzz_dir.join("corpus").join(target), corpus.path())?;
    if seeds == 0 {
        bail!("fuzz/corpus/{target} is empty");
    }
    let artifacts = fuzz_dir.join("artifacts").join(target);
    std::fs::create_dir_all(&artifacts)
        .with_context(|| format!("create {}", artifacts.display()))?;
    let log = tempfile::Builder::new()
        .prefix(&format!("keelson-fuzz-{target}."))
        .suffix(".log")
        .tempfile()
        .context("create a log file")?;
    let log_file = log.reopen().context("open the log file")?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!("keelson-fuzz-{target}-tmp."))
        .tempdir()
        .context("create a temporary dir")?;
    let mut cmd = Command::new(bin_dir.join(target));
    cmd.env("TMPDIR", tmp.path())
        .arg(corpus.path())
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"))
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .stdout(Stdio::null())
        .stderr(log_file);
    eprintln!("+ {cmd:?}");
    let child = cmd
        .spawn()
        .with_context(|| format!("start fuzz target {target}"))?;
    Ok(Running {
        target: target.to_string(),
        child,
        log,
        _corpus: corpus,
        _tmp: tmp,
    })
}

/// Waits for `r`; returns a failure message, or prints its figures.
fn finish(mut r: Running) -> anyhow::Result<Option<String>> {
    let status = r.child.wait().context("wait for a fuzz target")?;
    let log = std::fs::read_to_string(r.log.path()).unwrap_or_default();
    if status.success() {
        // `#N<TAB>DONE   cov: C ft: F corp: K/B ...`, and the final stats.
        let done = log
            .lines()
            .rfind(|l| l.split_whitespace().nth(1) == Some("DONE"))
            .and_then(|l| l.split_once("cov:"))
            .map(|(_, rest)| format!("cov:{rest}"))
            .unwrap_or_default();
        let execs = log
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .map(str::trim)
            .unwrap_or("?");
        eprintln!("fuzz {}: ok, {execs} runs; {done}", r.target);
        return Ok(None);
    }
    let tail: Vec<&str> = log.lines().rev().take(60).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    eprintln!("fuzz {} FAILED ({status}):\n{}", r.target, tail.join("\n"));
    Ok(Some(format!("{} ({status})", r.target)))
}

/// `cargo xtask fuzz`.
pub fn fuzz(args: &[String]) -> anyhow::Result<()> {
    let o = parse(args)?;
    install()?;
    let started = Instant::now();
    let root = super::workspace_root();
    let fuzz_dir = root.join("fuzz");
    let target_dir = super::cargo_target_dir()?.join("fuzz");
    let mut build = Command::new(cargo_fuzz());
    build
        .args(["fuzz", "build", "--sanitizer", "none", "--target-dir"])
        .arg(&target_dir)
        .current_dir(&fuzz_dir);
    // What `cargo run` set for xtask itself is not the fuzz build's: build
    // scripts that watch these (ring's watches CARGO_MANIFEST_DIR) would
    // rebuild half the tree whenever a build by hand came between.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_MANIFEST_LINKS",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&k.as_ref())
        {
            build.env_remove(k.as_ref());
        }
    }
    super::run(&mut build)?;
    let built = started.elapsed();
    let bin_dir = target_dir.join(host_triple()?).join("release");
    let mut failed = Vec::new();
    for batch in o.targets.chunks(o.jobs) {
        let mut running = Vec::new();
        for t in batch {
            running.push(start(&bin_dir, &fuzz_dir, t, o.seconds)?);
        }
        for r in running {
            failed.extend(finish(r)?);
        }
    }
    eprintln!(
        "fuzz: built in {:.0?}, {} target(s) × {} s in {:.0?} all told",
        built,
        o.targets.len(),
        o.seconds,
        started.elapsed()
    );
    if !failed.is_empty() {
        bail!(
            "fuzz targets failed: {} (inputs in fuzz/artifacts/; see fuzz/README.md)",
            failed.join(", ")
        );
    }
    Ok(())
}
