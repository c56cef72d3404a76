//! The Kubernetes conformance suite against a Keelson cluster on this
//! machine; started by `cargo xtask conformance` (which builds what it
//! needs first).
//!
//! ```text
//! keelson-conformance --upstream BIN_DIR --kubernetes-module DIR --release V --doc FILE
//!     [--focus REGEX] [--skip REGEX] [--nodes N] [--parallel N] [--report-dir DIR]
//!     [--timeout 12h] [--serial-timeout 12h] [--summarize]
//! ```
//!
//! 1. A cluster from the test kit's multi-node harness: a `keelson server`
//!    and N agents, each in a network namespace, a registry on the link.
//! 2. The suite's images (tests/conformance/build-images.sh, from the
//!    upstream agnhost and files of the `k8s.io/kubernetes` module) pushed to that
//!    registry under the names of upstream's image manifest, and
//!    `KUBE_TEST_REPO_LIST` pointing the suite there.
//! 3. As upstream's conformance runner does: the parallel part
//!    (`ginkgo --nodes P e2e.test`, `[Serial]` skipped), then the serial part
//!    (`e2e.test`, focus on `[Serial]`). `--timeout` / `--serial-timeout`
//!    (Go durations) bound each part (Ginkgo's suite timeout). The
//!    parallel part's output is kept (`parallel.log`): when its merged JSON
//!    report is missing (its process 1 died, or it hit its timeout), the
//!    failures are read from that output and the document says so.
//!    `--summarize` writes the document again from what a run left in the
//!    report dir, without running anything.
//! 4. The Ginkgo JSON reports summed up into the document: counts by SIG,
//!    each failing test with the first line of its failure.
//!
//! While it runs, the host routes the Service CIDR nowhere (`unreachable`)
//! and each node's pod CIDR to that node, so that nothing the suite sends
//! from the host leaves the machine. Ctrl-C stops the suite and tears
//! everything down.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use keelson_e2e::multinode::{Cluster, ClusterOptions, ProxyMode};

/// The Service CIDR of the harness's server (its default).
const SERVICE_CIDR: &str = "10.96.0.0/12";

/// Conformance images: tag in the layout → names (under the registry) as
/// test/utils/image/manifest.go spells them.
const IMAGES: &[(&str, &[&str])] = &[
    (
        "agnhost",
        &[
            "e2e-test-images/agnhost:2.66.1",
            "e2e-test-images/agnhost:2.55",
        ],
    ),
    ("agnhost", &["pause:3.10.2"]),
    ("busybox", &["e2e-test-images/busybox:1.37.0-2"]),
    (
        "nginx",
        &[
            "e2e-test-images/nginx:1.27.0-2",
            "e2e-test-images/nginx:1.28.0-2",
        ],
    ),
    ("kitten", &["e2e-test-images/kitten:1.8"]),
    ("nautilus", &["e2e-test-images/nautilus:1.8"]),
    ("nonroot", &["e2e-test-images/nonroot:1.5"]),
];

struct Args {
    upstream: PathBuf,
    kubernetes_module: PathBuf,
    doc: PathBuf,
    focus: String,
    skip: Option<String>,
    nodes: u8,
    parallel: u32,
    report_dir: PathBuf,
    release: String,
    timeout: String,
    serial_timeout: String,
    /// Only write the document from the reports a run left in report_dir.
    summarize: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        upstream: PathBuf::from("/var/cache/keelson/upstream/bin"),
        kubernetes_module: PathBuf::new(),
        doc: PathBuf::new(),
        focus: r"\[Conformance\]".into(),
        skip: None,
        nodes: 2,
        parallel: 4,
        report_dir: PathBuf::from("/var/cache/keelson/conformance/last"),
        release: String::new(),
        timeout: "12h".into(),
        serial_timeout: "12h".into(),
        summarize: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--upstream" => a.upstream = value()?.into(),
            "--kubernetes-module" => a.kubernetes_module = value()?.into(),
            "--doc" => a.doc = value()?.into(),
            "--focus" => a.focus = value()?,
            "--skip" => a.skip = Some(value()?),
            "--nodes" => a.nodes = value()?.parse().context("--nodes")?,
            "--parallel" => a.parallel = value()?.parse().context("--parallel")?,
            "--report-dir" => a.report_dir = value()?.into(),
            "--release" => a.release = value()?,
            "--timeout" => a.timeout = value()?,
            "--serial-timeout" => a.serial_timeout = value()?,
            "--summarize" => a.summarize = true,
            _ => bail!("unknown flag {flag:?} (see tests/src/bin/keelson-conformance.rs)"),
        }
    }
    if a.kubernetes_module.as_os_str().is_empty() || a.doc.as_os_str().is_empty() {
        bail!("--kubernetes-module DIR and --doc FILE are required");
    }
    if !(1..=8).contains(&a.nodes) || a.parallel == 0 {
        bail!("--nodes must be 1..=8 and --parallel at least 1");
    }
    for p in ["e2e.test", "ginkgo", "kubectl", "agnhost"] {
        if !a.upstream.join(p).is_file() {
            bail!(
                "{} missing: run `cargo xtask upstream`",
                a.upstream.join(p).display()
            );
        }
    }
    Ok(a)
}

/// Host routes that keep the suite's host-side traffic on the link:
/// removed on drop.
struct Routes(Vec<Vec<String>>);

impl Routes {
    fn add(&mut self, route: &[&str]) -> anyhow::Result<()> {
        let out = Command::new("ip")
            .args(["-4", "route", "add"])
            .args(route)
            .output()
            .context("run ip route add")?;
        if !out.status.success() {
            bail!(
                "ip route add {}: {} (a route there already? stop what owns it first)",
                route.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        self.0.push(route.iter().map(|s| s.to_string()).collect());
        Ok(())
    }
}

impl Drop for Routes {
    fn drop(&mut self) {
        for r in self.0.drain(..).rev() {
            let _ = Command::new("ip")
                .args(["-4", "route", "del"])
                .args(&r)
                .output();
        }
    }
}

/// Waits for `child`, the leader of its own process group, passing on a
/// stop request as SIGINT to the group (Ginkgo then interrupts the running
/// specs, cleans up and writes its report); a group still there two minutes
/// later is killed.
fn wait(mut child: Child, stop: &AtomicBool) -> anyhow::Result<std::process::ExitStatus> {
    use nix::sys::signal::{Signal, killpg};
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut signalled: Option<Instant> = None;
    loop {
        if let Some(status) = child.try_wait()? {
            // What the suite left behind (a `kubectl` it started, a
            // port-forward) goes with it.
            let _ = killpg(group, Signal::SIGKILL);
            return Ok(status);
        }
        if stop.load(Ordering::SeqCst) {
            match signalled {
                None => {
                    signalled = Some(Instant::now());
                    let _ = killpg(group, Signal::SIGINT);
                }
                Some(t) if t.elapsed() > Duration::from_secs(120) => {
                    let _ = killpg(group, Signal::SIGKILL);
                }
                Some(_) => {}
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Spawns `cmd` as the leader of a new process group.
fn spawn_group(cmd: &mut Command) -> anyhow::Result<Child> {
    use std::os::unix::process::CommandExt;
    eprintln!("+ {cmd:?}");
    cmd.process_group(0)
        .spawn()
        .with_context(|| format!("run {cmd:?}"))
}

fn stop_on_signals() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("signal runtime");
        rt.block_on(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let _ = tx.send(());
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            eprintln!("keelson-conformance: stopping the suite; the cluster is torn down after it");
            flag.store(true, Ordering::SeqCst);
        });
    });
    let _ = rx.recv_timeout(Duration::from_secs(5));
    stop
}

/// Builds (or reuses) the suite's images: the layout's path.
fn build_images(a: &Args) -> anyhow::Result<PathBuf> {
    let script = keelson_e2e::workspace_root().join("tests/conformance/build-images.sh");
    let out = Command::new("sh")
        .arg(&script)
        .arg(a.upstream.join("agnhost"))
        .arg(&a.kubernetes_module)
        .output()
        .with_context(|| format!("run {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if args.summarize {
        return summarize(&args);
    }
    let images = build_images(&args)?;
    let stop = stop_on_signals();
    let started = Instant::now();
    std::fs::create_dir_all(&args.report_dir)
        .with_context(|| format!("create {}", args.report_dir.display()))?;
    for f in [
        "parallel.json",
        "serial.json",
        "parallel.log",
        "run-meta.json",
    ] {
        let _ = std::fs::remove_file(args.report_dir.join(f));
    }

    // Focus and skip of the parallel and the serial part, and the specs
    // each selects (a dry run), so that a run cut short says what it missed.
    let parts = [
        (
            args.focus.clone(),
            match &args.skip {
                Some(s) => format!(r"\[Serial\]|{s}"),
                None => r"\[Serial\]".to_string(),
            },
        ),
        (
            // Labels follow the test's text in the order they were
            // declared: [Serial] comes before or after the focus.
            format!(r"\[Serial\].*(?:{f})|(?:{f}).*\[Serial\]", f = args.focus),
            args.skip.clone().unwrap_or_else(|| "^$".into()),
        ),
    ];
    let mut results = Results::default();
    let mut part_specs = Vec::new();
    for (i, (focus, skip)) in parts.iter().enumerate() {
        let report = args.report_dir.join(format!("dry-run-{i}.json"));
        let out = Command::new(args.upstream.join("e2e.test"))
            .args(["--ginkgo.dry-run", "--ginkgo.no-color"])
            .arg(format!("--ginkgo.focus={focus}"))
            .arg(format!("--ginkgo.skip={skip}"))
            .arg(format!("--ginkgo.json-report={}", report.display()))
            .stdin(Stdio::null())
            .output()
            .context("run e2e.test --ginkgo.dry-run")?;
        let text = std::fs::read_to_string(&report).with_context(|| {
            format!(
                "e2e.test --ginkgo.dry-run wrote no report: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?;
        part_specs.push(results.add_expected(&text)?);
    }
    eprintln!(
        "keelson-conformance: {} tests selected",
        results.expected.len()
    );

    eprintln!(
        "keelson-conformance: starting a cluster of {} nodes",
        args.nodes
    );
    let cluster = Cluster::start_opts(&ClusterOptions {
        nodes: args.nodes,
        server_extra: &[],
        proxy_mode: ProxyMode::Nftables,
        agent_path: None,
        registry_login: None,
        join: None,
    });
    for (tag, names) in IMAGES {
        for name in *names {
            cluster
                .registry
                .push_layout(&images, tag, name)
                .with_context(|| format!("push {tag} as {name}"))?;
        }
    }
    let reg = cluster.registry.addr();
    let repo_list = args.report_dir.join("repo-list.yaml");
    let mut yaml = String::new();
    for (key, path) in [
        ("promoterE2eRegistry", "/e2e-test-images"),
        ("buildImageRegistry", "/build-image"),
        ("invalidRegistry", "/invalid"),
        ("gcEtcdRegistry", ""),
        ("gcRegistry", ""),
        ("sigStorageRegistry", "/sig-storage"),
        ("privateRegistry", "/k8s-authenticated-test"),
        ("dockerLibraryRegistry", "/library"),
        ("cloudProviderGcpRegistry", "/cloud-provider-gcp"),
    ] {
        writeln!(yaml, "{key}: {reg}{path}")?;
    }
    std::fs::write(&repo_list, yaml)?;

    let mut routes = Routes(Vec::new());
    routes.add(&["unreachable", SERVICE_CIDR])?;
    for n in &cluster.nodes {
        let via = n.ip.to_string();
        routes.add(&[n.pod_cidr.as_str(), "via", via.as_str()])?;
    }

    let kubeconfig = cluster.server.kubeconfig.clone();
    let e2e = args.upstream.join("e2e.test");
    let suite_flags = || -> Vec<String> {
        vec![
            format!("--kubeconfig={}", kubeconfig.display()),
            "--provider=skeleton".into(),
            format!("--kubectl-path={}", args.upstream.join("kubectl").display()),
            format!("--report-dir={}", args.report_dir.display()),
            "--disable-log-dump".into(),
            "--dump-logs-on-failure=false".into(),
            "--ginkgo.no-color".into(),
        ]
    };
    let env = |c: &mut Command| {
        c.env("KUBE_TEST_REPO_LIST", &repo_list)
            .env("KUBECONFIG", &kubeconfig)
            .env("HOME", kubeconfig.parent().unwrap_or(Path::new("/tmp")))
            .stdin(Stdio::null());
    };

    // The parallel part.
    let mut cmd = Command::new(args.upstream.join("ginkgo"));
    cmd.arg(format!("--procs={}", args.parallel))
        .arg(format!("--timeout={}", args.timeout))
        .args(["--no-color", "--json-report=parallel.json"])
        .arg(format!("--output-dir={}", args.report_dir.display()))
        .arg(&e2e)
        .arg("--")
        .args(suite_flags())
        .arg(format!("--ginkgo.focus={}", parts[0].0))
        .arg(format!("--ginkgo.skip={}", parts[0].1));
    env(&mut cmd);
    // Its output is kept too: the fallback when its JSON report is missing.
    cmd.stdout(Stdio::piped());
    let mut child = spawn_group(&mut cmd)?;
    let tee = child.stdout.take().map(|out| {
        let log = args.report_dir.join("parallel.log");
        std::thread::spawn(move || tee_to(out, &log))
    });
    let status = wait(child, &stop)?;
    if let Some(t) = tee {
        let _ = t.join();
    }
    eprintln!("keelson-conformance: parallel part: {status}");

    // The serial part.
    let serial_report = args.report_dir.join("serial.json");
    if !stop.load(Ordering::SeqCst) {
        let mut cmd = Command::new(&e2e);
        cmd.args(suite_flags())
            .arg(format!("--ginkgo.json-report={}", serial_report.display()))
            .arg(format!("--ginkgo.focus={}", parts[1].0))
            .arg(format!("--ginkgo.skip={}", parts[1].1))
            .arg(format!("--ginkgo.timeout={}", args.serial_timeout));
        env(&mut cmd);
        let status = wait(spawn_group(&mut cmd)?, &stop)?;
        eprintln!("keelson-conformance: serial part: {status}");
    }
    let took = started.elapsed();
    drop(routes);
    drop(cluster);

    let meta = RunMeta {
        date: now(),
        minutes: took.as_secs() / 60,
        interrupted: stop.load(Ordering::SeqCst),
    };
    let m = serde_json::json!({"date": meta.date, "minutes": meta.minutes, "interrupted": meta.interrupted});
    std::fs::write(args.report_dir.join("run-meta.json"), m.to_string())?;
    add_reports(&args, &mut results, &part_specs, &meta)?;
    write_doc(&args, &results, &meta)
}

/// When and how long a run was (kept beside its reports).
struct RunMeta {
    date: String,
    minutes: u64,
    interrupted: bool,
}

/// Copies `out` to this process's stdout and to `log`.
fn tee_to(mut out: std::process::ChildStdout, log: &Path) {
    use std::io::{Read, Write};
    let mut file = std::fs::File::create(log).ok();
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n) = out.read(&mut buf) {
        if n == 0 {
            break;
        }
        let _ = std::io::stdout().write_all(&buf[..n]);
        if let Some(f) = file.as_mut() {
            let _ = f.write_all(&buf[..n]);
        }
    }
}

/// The parts' results: their JSON reports, or for a parallel part whose
/// report is missing or empty, what the Ginkgo CLI printed.
fn add_reports(
    args: &Args,
    results: &mut Results,
    parts: &[BTreeMap<String, String>],
    meta: &RunMeta,
) -> anyhow::Result<()> {
    for (i, name) in ["parallel.json", "serial.json"].iter().enumerate() {
        let r = args.report_dir.join(name);
        let before = results.tests.len();
        if let Ok(text) = std::fs::read_to_string(&r) {
            results
                .add_report(&text)
                .with_context(|| format!("read {}", r.display()))?;
        }
        if i == 0
            && results.tests.len() == before
            && !meta.interrupted
            && let (Ok(log), Some(part)) = (
                std::fs::read_to_string(args.report_dir.join("parallel.log")),
                parts.first(),
            )
        {
            let (failed, passed) = results.add_text(&log, part);
            eprintln!(
                "keelson-conformance: {} has no results; from the parallel part's output: {failed} failed, {passed} passed",
                r.display()
            );
        }
    }
    Ok(())
}

fn write_doc(args: &Args, results: &Results, meta: &RunMeta) -> anyhow::Result<()> {
    let doc = results.markdown(&Meta {
        release: &args.release,
        date: &meta.date,
        nodes: args.nodes,
        focus: &args.focus,
        skip: args.skip.as_deref(),
        minutes: meta.minutes,
        interrupted: meta.interrupted,
    });
    if let Some(dir) = args.doc.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.doc, &doc).with_context(|| format!("write {}", args.doc.display()))?;
    println!("{}", results.totals_line());
    println!("written: {}", args.doc.display());
    if results.ran() == 0 {
        bail!(
            "no test ran: see the reports in {}",
            args.report_dir.display()
        );
    }
    Ok(())
}

/// `--summarize`: the document from the reports (and dry runs) a run left
/// in the report dir, without running anything.
fn summarize(args: &Args) -> anyhow::Result<()> {
    let mut results = Results::default();
    let mut parts = Vec::new();
    for i in 0..2 {
        let f = args.report_dir.join(format!("dry-run-{i}.json"));
        let text = std::fs::read_to_string(&f).with_context(|| format!("read {}", f.display()))?;
        parts.push(results.add_expected(&text)?);
    }
    let m: serde_json::Value = std::fs::read(args.report_dir.join("run-meta.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let meta = RunMeta {
        date: m["date"].as_str().map_or_else(now, str::to_string),
        minutes: m["minutes"].as_u64().unwrap_or(0),
        interrupted: m["interrupted"].as_bool().unwrap_or(false),
    };
    add_reports(args, &mut results, &parts, &meta)?;
    write_doc(args, &results, &meta)
}

fn now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The node types Ginkgo names in a failure's heading.
const NODE_TYPES: &[&str] = &[
    "It",
    "BeforeEach",
    "AfterEach",
    "JustBeforeEach",
    "JustAfterEach",
    "BeforeAll",
    "AfterAll",
    "DeferCleanup (Each)",
    "DeferCleanup (All)",
    "DeferCleanup",
];

/// How one test ended, as the report sums it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Passed,
    Failed,
    Skipped,
}

#[derive(Debug, Default)]
struct Results {
    /// By test name: outcome, SIG, first line of the failure or skip reason.
    tests: BTreeMap<String, (Outcome, String, String)>,
    /// Every spec the focus selects (from a dry run), by name: those with
    /// no result were never started (the run was interrupted first).
    expected: BTreeMap<String, String>,
    /// What the document must say about how the results were gathered.
    notes: Vec<String>,
}

struct Meta<'a> {
    release: &'a str,
    date: &'a str,
    nodes: u8,
    focus: &'a str,
    skip: Option<&'a str>,
    minutes: u64,
    interrupted: bool,
}

/// `[sig-apps] Deployment` → `sig-apps`.
fn sig_of(first_container: &str) -> String {
    first_container
        .strip_prefix('[')
        .and_then(|s| s.split_once(']'))
        .map(|(sig, _)| sig.to_string())
        .filter(|s| s.starts_with("sig-"))
        .unwrap_or_else(|| "other".into())
}

/// A spec's full name (containers and leaf, as Ginkgo prints it) and SIG.
fn spec_name(spec: &serde_json::Value) -> (String, String) {
    let containers: Vec<&str> = spec["ContainerHierarchyTexts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str())
        .collect();
    let mut name = containers.join(" ");
    if !name.is_empty() {
        name.push(' ');
    }
    name.push_str(spec["LeafNodeText"].as_str().unwrap_or(""));
    (name, sig_of(containers.first().copied().unwrap_or("")))
}

fn first_line(s: &str) -> String {
    let line = s
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let mut out: String = line.chars().take(200).collect();
    if line.chars().count() > 200 {
        out.push('…');
    }
    out.replace('|', "\\|")
}

impl Results {
    /// Adds the specs of one Ginkgo JSON report (an array of suite reports).
    /// Specs the focus filtered out (skipped without a reason) are not
    /// counted; specs skipped at run time (e2eskipper) are.
    fn add_report(&mut self, json: &str) -> anyhow::Result<()> {
        let suites: serde_json::Value = serde_json::from_str(json).context("not JSON")?;
        let suites = suites.as_array().context("not an array of suite reports")?;
        for suite in suites {
            for spec in suite["SpecReports"].as_array().into_iter().flatten() {
                if spec["LeafNodeType"] != "It" {
                    // A suite-level node that failed fails everything after it.
                    let state = spec["State"].as_str().unwrap_or("");
                    if matches!(state, "failed" | "panicked" | "timedout" | "aborted") {
                        let name = format!("[{}]", spec["LeafNodeType"].as_str().unwrap_or("?"));
                        let msg = first_line(spec["Failure"]["Message"].as_str().unwrap_or(""));
                        self.tests
                            .insert(name, (Outcome::Failed, "suite".into(), msg));
                    }
                    continue;
                }
                let (name, sig) = spec_name(spec);
                let message = spec["Failure"]["Message"].as_str().unwrap_or("");
                let outcome = match spec["State"].as_str().unwrap_or("") {
                    "passed" => Outcome::Passed,
                    "skipped" if message.is_empty() => continue,
                    "skipped" | "pending" => Outcome::Skipped,
                    _ => Outcome::Failed,
                };
                let line = if outcome == Outcome::Passed {
                    String::new()
                } else {
                    first_line(message)
                };
                self.tests.insert(name, (outcome, sig, line));
            }
        }
        Ok(())
    }

    /// Adds what the Ginkgo CLI printed for a part whose JSON report is
    /// missing (its process 1, which writes it, died): each failure block
    /// (`• [FAILED] [t seconds]`, the spec's line, `[FAILED] message`) by
    /// name; the part's other selected specs passed when the count of
    /// bullets (one per finished spec) says every one of them ran.
    /// Returns (failed, passed) as found.
    fn add_text(&mut self, log: &str, part: &BTreeMap<String, String>) -> (usize, usize) {
        let lines: Vec<&str> = log.lines().collect();
        let mut failed = 0;
        let mut bullets = 0;
        for (i, l) in lines.iter().enumerate() {
            bullets += l.matches('•').count();
            let Some(rest) = l.strip_prefix("• [") else {
                continue;
            };
            if !["FAILED]", "PANICKED]", "TIMEDOUT]", "INTERRUPTED]"]
                .iter()
                .any(|s| rest.starts_with(s))
            {
                continue;
            }
            let Some(spec) = lines.get(i + 1) else {
                continue;
            };
            // "<containers> [It] <leaf> [labels]" (the failed node's type in
            // place of It: BeforeEach, AfterEach, ...) → the report's name.
            let mut name = spec.to_string();
            for node in NODE_TYPES {
                let tag = format!(" [{node}] ");
                if let Some(at) = name.find(&tag) {
                    name.replace_range(at..at + tag.len(), " ");
                    break;
                }
            }
            if let Some(cut) = name.rfind(" [")
                && name.ends_with(']')
                && name[cut..].contains(", ")
            {
                name.truncate(cut);
            }
            let message = lines[i + 1..]
                .iter()
                .take(400)
                .map(|l| l.trim())
                .find_map(|l| {
                    ["[FAILED] ", "[PANICKED] ", "[TIMEDOUT] "]
                        .iter()
                        .find_map(|p| l.strip_prefix(p))
                        // "[FAILED] in [It] - file:line" says where, not what.
                        .filter(|m| !m.starts_with("in ["))
                })
                .unwrap_or(rest);
            let sig = part.get(&name).cloned().unwrap_or_else(|| sig_of(&name));
            self.tests
                .insert(name, (Outcome::Failed, sig, first_line(message)));
            failed += 1;
        }
        let left: Vec<(&String, &String)> = part
            .iter()
            .filter(|(n, _)| !self.tests.contains_key(*n))
            .collect();
        let passed = bullets.saturating_sub(failed);
        // A few results missing (a process that died with its spec) do not
        // hide the rest; the document says how many.
        if passed <= left.len() && passed * 20 >= left.len() * 19 {
            if passed < left.len() {
                self.notes.push(format!(
                    "The parallel part's JSON report was lost; its results come from its printed output, \
                     which names failures only: {failed} failed, {passed} passed, and {} of the {} specs \
                     counted as passed here may not have finished.",
                    left.len() - passed,
                    left.len()
                ));
            }
            for (n, sig) in left {
                self.tests
                    .insert(n.clone(), (Outcome::Passed, sig.clone(), String::new()));
            }
        }
        (failed, passed)
    }

    /// Adds the specs a dry run's report says the focus selects.
    fn add_expected(&mut self, json: &str) -> anyhow::Result<BTreeMap<String, String>> {
        let suites: serde_json::Value = serde_json::from_str(json).context("not JSON")?;
        let mut part = BTreeMap::new();
        for suite in suites.as_array().context("not an array of suite reports")? {
            for spec in suite["SpecReports"].as_array().into_iter().flatten() {
                if spec["LeafNodeType"] == "It" && spec["State"] != "skipped" {
                    let (name, sig) = spec_name(spec);
                    self.expected.insert(name.clone(), sig.clone());
                    part.insert(name, sig);
                }
            }
        }
        Ok(part)
    }

    fn not_run(&self) -> usize {
        self.expected
            .keys()
            .filter(|k| !self.tests.contains_key(*k))
            .count()
    }

    fn count(&self, o: Outcome) -> usize {
        self.tests.values().filter(|(x, _, _)| *x == o).count()
    }

    fn ran(&self) -> usize {
        self.count(Outcome::Passed) + self.count(Outcome::Failed)
    }

    fn totals_line(&self) -> String {
        let mut line = format!(
            "conformance: {} passed, {} failed, {} skipped ({} tests)",
            self.count(Outcome::Passed),
            self.count(Outcome::Failed),
            self.count(Outcome::Skipped),
            self.tests.len()
        );
        let not_run = self.not_run();
        if not_run > 0 {
            line += &format!(", {not_run} not run (interrupted first)");
        }
        line
    }

    fn markdown(&self, m: &Meta<'_>) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Kubernetes conformance\n");
        let _ = writeln!(
            s,
            "Written by `cargo xtask conformance` (tests/src/bin/keelson-conformance.rs); \
             do not edit by hand. Run it again as features land.\n"
        );
        let _ = writeln!(
            s,
            "- Suite: upstream `e2e.test` at Kubernetes {}",
            m.release
        );
        let _ = writeln!(
            s,
            "- Run: {} ({} minutes{})",
            m.date,
            m.minutes,
            if m.interrupted { ", interrupted" } else { "" }
        );
        let _ = writeln!(
            s,
            "- Cluster: one `keelson server`, {} `keelson agent` nodes (network namespaces on one machine), nftables proxy, images from a local registry",
            m.nodes
        );
        let _ = writeln!(
            s,
            "- Focus: `{}`{}",
            m.focus,
            m.skip.map(|k| format!(", skip: `{k}`")).unwrap_or_default()
        );
        for n in &self.notes {
            let _ = writeln!(s, "- Note: {n}");
        }
        let _ = writeln!(s, "\n**{}**\n", self.totals_line());
        let _ = writeln!(s, "| SIG | passed | failed | skipped |");
        let _ = writeln!(s, "|---|---:|---:|---:|");
        let mut by_sig: BTreeMap<&str, [usize; 3]> = BTreeMap::new();
        for (o, sig, _) in self.tests.values() {
            by_sig.entry(sig).or_default()[*o as usize] += 1;
        }
        for (sig, [p, f, k]) in &by_sig {
            let _ = writeln!(s, "| {sig} | {p} | {f} | {k} |");
        }
        for (title, want) in [("Failing", Outcome::Failed), ("Skipped", Outcome::Skipped)] {
            let rows: Vec<_> = self
                .tests
                .iter()
                .filter(|(_, (o, _, _))| *o == want)
                .collect();
            if rows.is_empty() {
                continue;
            }
            let _ = writeln!(s, "\n## {title} ({})\n", rows.len());
            let _ = writeln!(s, "| SIG | test | first line |");
            let _ = writeln!(s, "|---|---|---|");
            let mut rows = rows;
            rows.sort_by(|a, b| (a.1.1.as_str(), a.0).cmp(&(b.1.1.as_str(), b.0)));
            for (name, (_, sig, line)) in rows {
                let _ = writeln!(s, "| {sig} | {} | {line} |", name.replace('|', "\\|"));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"[{"SuitePath":"/x","SpecReports":[
      {"LeafNodeType":"SynchronizedBeforeSuite","State":"passed","ContainerHierarchyTexts":null,"LeafNodeText":""},
      {"LeafNodeType":"It","State":"passed","ContainerHierarchyTexts":["[sig-apps] Deployment"],"LeafNodeText":"rolls [Conformance]"},
      {"LeafNodeType":"It","State":"failed","ContainerHierarchyTexts":["[sig-node] Probing"],"LeafNodeText":"probe [Conformance]","Failure":{"Message":"\nTimed out after 300s.\nmore"}},
      {"LeafNodeType":"It","State":"skipped","ContainerHierarchyTexts":["[sig-network] DNS"],"LeafNodeText":"not focused"},
      {"LeafNodeType":"It","State":"skipped","ContainerHierarchyTexts":["[sig-network] DNS"],"LeafNodeText":"ipv6 [Conformance]","Failure":{"Message":"Requires IPv6"}},
      {"LeafNodeType":"It","State":"timedout","ContainerHierarchyTexts":["Other"],"LeafNodeText":"x | y"}
    ]}]"#;

    #[test]
    fn a_report_sums_up_by_sig_without_the_unfocused_specs() {
        let mut r = Results::default();
        r.add_report(REPORT).unwrap();
        assert_eq!(r.count(Outcome::Passed), 1);
        assert_eq!(r.count(Outcome::Failed), 2);
        assert_eq!(r.count(Outcome::Skipped), 1);
        assert_eq!(r.not_run(), 0);
        r.add_expected(r#"[{"SpecReports":[
          {"LeafNodeType":"It","State":"passed","ContainerHierarchyTexts":["[sig-apps] Deployment"],"LeafNodeText":"rolls [Conformance]"},
          {"LeafNodeType":"It","State":"passed","ContainerHierarchyTexts":["[sig-apps] Job"],"LeafNodeText":"late [Conformance]"},
          {"LeafNodeType":"It","State":"skipped","ContainerHierarchyTexts":["[sig-network] DNS"],"LeafNodeText":"not focused"}]}]"#).unwrap();
        assert_eq!(r.not_run(), 1);
        assert!(
            r.totals_line().ends_with(", 1 not run (interrupted first)"),
            "{}",
            r.totals_line()
        );
        let (o, sig, line) = &r.tests["[sig-node] Probing probe [Conformance]"];
        assert_eq!(
            (*o, sig.as_str(), line.as_str()),
            (Outcome::Failed, "sig-node", "Timed out after 300s.")
        );
        let doc = r.markdown(&Meta {
            release: "v1.37.2",
            date: "d",
            nodes: 2,
            focus: "f",
            skip: None,
            minutes: 1,
            interrupted: false,
        });
        assert!(doc.contains("| sig-apps | 1 | 0 | 0 |"), "{doc}");
        assert!(doc.contains("| other | 0 | 1 | 0 |"), "{doc}");
        assert!(doc.contains("Other x \\| y"), "{doc}");
        assert!(doc.contains("## Failing (2)"), "{doc}");
        assert!(!doc.contains("not focused"));
    }

    #[test]
    fn without_a_report_the_printed_failures_and_bullets_count() {
        let mut r = Results::default();
        let part = r
            .add_expected(r#"[{"SpecReports":[
              {"LeafNodeType":"It","State":"passed","ContainerHierarchyTexts":["[sig-apps] Deployment"],"LeafNodeText":"rolls [Conformance]"},
              {"LeafNodeType":"It","State":"passed","ContainerHierarchyTexts":["[sig-api-machinery] Webhook [Privileged]"],"LeafNodeText":"mutates [Conformance]"},
              {"LeafNodeType":"It","State":"passed","ContainerHierarchyTexts":["[sig-node] Pods"],"LeafNodeText":"run [Conformance]"}]}]"#)
            .unwrap();
        let log = "SS•S\n• [FAILED] [0.1 seconds]\n[sig-api-machinery] Webhook [Privileged] [BeforeEach] mutates [Conformance] [sig-api-machinery, Conformance]\n  [FAILED] in [BeforeEach] - x.go:1\n  [FAILED] no rolebindings\nSS•";
        assert_eq!(r.add_text(log, &part), (1, 2));
        let (o, sig, line) =
            &r.tests["[sig-api-machinery] Webhook [Privileged] mutates [Conformance]"];
        assert_eq!(
            (*o, sig.as_str(), line.as_str()),
            (Outcome::Failed, "sig-api-machinery", "no rolebindings")
        );
        assert_eq!(r.count(Outcome::Passed), 2);
        assert_eq!(r.not_run(), 0);
        // Bullets that do not add up: the rest is not counted as passed.
        let mut r = Results::default();
        let part = r.add_expected(r#"[{"SpecReports":[
              {"LeafNodeType":"It","State":"passed","ContainerHierarchyTexts":["[sig-apps] A"],"LeafNodeText":"a"},
              {"LeafNodeType":"It","State":"passed","ContainerHierarchyTexts":["[sig-apps] B"],"LeafNodeText":"b"}]}]"#).unwrap();
        assert_eq!(r.add_text("•", &part), (0, 1));
        assert_eq!(r.count(Outcome::Passed), 0);
    }

    #[test]
    fn a_suite_node_that_failed_is_a_failure() {
        let mut r = Results::default();
        r.add_report(r#"[{"SpecReports":[{"LeafNodeType":"SynchronizedBeforeSuite","State":"failed","Failure":{"Message":"no nodes"}}]}]"#).unwrap();
        assert_eq!(r.count(Outcome::Failed), 1);
        assert!(r.add_report("{}").is_err());
    }
}
