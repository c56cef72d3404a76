//! `keelson bench services --local`, end to end: the bench starts its own
//! cluster (an API server and four agents in network namespaces), runs its
//! backends as pods, measures direct, eBPF and nftables, writes its
//! results, report and plots, and leaves nothing behind — also when
//! interrupted with SIGINT in the middle of a run.
//!
//! Needs root; skips (or fails under KEELSON_REQUIRE_ALL=1) otherwise.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

fn can_run(test: &str) -> bool {
    keelson_e2e::needs(test)
        .root()
        .tools(keelson_localcluster::TOOLS)
        .tools(&["/usr/bin/ldd"])
        .keelson()
        .workspace_bin("keelson-cni")
        .cgroup2()
        .path("/sys/fs/bpf", "/sys/fs/bpf (eBPF proxy mode)")
        .ok()
}

/// A running bench: its stderr lines arrive on `lines`; killed on drop.
struct Bench {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Bench {
    fn start(args: &[&str]) -> Bench {
        let mut child = Command::new(keelson_e2e::keelson_bin())
            .args(["bench", "services", "--local"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keelson bench");
        let (tx, lines) = mpsc::channel();
        let err = child.stderr.take().expect("piped");
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Bench {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `text`; returns it.
    fn wait_line(&mut self, text: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        if let Some(l) = self.seen.iter().find(|l| l.contains(text)) {
            return l.clone();
        }
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(text) {
                        return l;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no line with {text:?} within {timeout:?}; stderr so far:\n{}",
            self.seen.join("\n")
        );
    }

    /// Waits for the exit; (status, stdout, all stderr).
    fn wait(mut self, timeout: Duration) -> (std::process::ExitStatus, String, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("wait for keelson bench") {
                let mut out = String::new();
                if let Some(mut o) = self.child.stdout.take() {
                    let _ = std::io::Read::read_to_string(&mut o, &mut out);
                }
                self.seen.extend(self.lines.try_iter());
                return (st, out, self.seen.join("\n"));
            }
            assert!(
                Instant::now() < deadline,
                "keelson bench still runs after {timeout:?}; stderr:\n{}",
                self.seen.join("\n")
            );
            self.seen.extend(self.lines.try_iter());
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        // A failing test: SIGINT, so that the bench tears its cluster down.
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-INT", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(120);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What the bench said it made: the cluster tag, the server's data dir and
/// each node's root dir.
struct Made {
    tag: String,
    dirs: Vec<PathBuf>,
}

fn made(stderr: &str) -> Made {
    let tag = stderr
        .lines()
        .find_map(|l| l.split("local cluster ").nth(1))
        .and_then(|r| r.split(':').next())
        .expect("the bench names its cluster")
        .to_string();
    let mut dirs = Vec::new();
    for l in stderr.lines() {
        for key in ["(data ", ", root "] {
            if let Some(rest) = l.split(key).nth(1) {
                let d = rest.split([')', ',', ' ']).next().unwrap_or_default();
                dirs.push(PathBuf::from(d));
            }
        }
    }
    Made { tag, dirs }
}

/// Nothing of the cluster `m` is left: network namespaces (and with them
/// every nftables table, veth and route of a node), the bridge, processes
/// (server, agents, shims, containers, load generators), cgroups (and with
/// them the eBPF programs attached to them), the server's and nodes' dirs.
fn assert_nothing_left(m: &Made) {
    let tag = &m.tag;
    let ns = String::from_utf8_lossy(&Command::new("ip").args(["netns"]).output().unwrap().stdout)
        .into_owned();
    assert!(
        !ns.contains(&format!("kmn{tag}-")),
        "network namespaces left:\n{ns}"
    );
    let link = Command::new("ip")
        .args(["link", "show", &format!("kmb{tag}")])
        .output()
        .unwrap();
    assert!(!link.status.success(), "bridge kmb{tag} left");
    let mut marks = vec![format!("kmn{tag}-"), format!("mn{tag}-node")];
    marks.extend(m.dirs.iter().map(|d| d.display().to_string()));
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        for mark in &marks {
            assert!(
                !cmdline.contains(mark.as_str()),
                "process {:?} left: {cmdline}",
                e.file_name()
            );
        }
    }
    for h in keelson_localcluster::host::cgroup_hierarchies() {
        for e in std::fs::read_dir(&h).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(
                !name.starts_with(&format!("keelson-mn-{tag}-")),
                "cgroup {} left",
                e.path().display()
            );
        }
    }
    for d in &m.dirs {
        assert!(!d.exists(), "{} left", d.display());
    }
}

fn cell<'a>(r: &'a Value, mode: &str) -> &'a Value {
    r["cells"]
        .as_array()
        .expect("cells")
        .iter()
        .find(|c| c["mode"] == mode)
        .unwrap_or_else(|| panic!("no {mode} cell in {r:#}"))
}

#[test]
fn bench_services_local_measures_every_mode_and_writes_its_report() {
    if !can_run("bench::bench_services_local_measures_every_mode_and_writes_its_report") {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("run");
    let b = Bench::start(&[
        "--services",
        "5",
        "--duration",
        "2s",
        "--out",
        dir.to_str().unwrap(),
    ]);
    let (status, stdout, stderr) = b.wait(Duration::from_secs(600));
    assert!(status.success(), "keelson bench failed:\n{stderr}");
    assert_nothing_left(&made(&stderr));
    // The terminal table.
    for mode in ["direct", "ebpf", "nftables"] {
        assert!(stdout.contains(mode), "{stdout}");
    }
    let r: Value =
        serde_json::from_slice(&std::fs::read(dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(r["schema"], "keelson-bench-services/v1");
    assert!(["debug", "release"].contains(&r["build"].as_str().unwrap()));
    assert!(r["machine"]["cores"].as_u64().unwrap() > 0);
    assert!(!r["machine"]["kernel"].as_str().unwrap().is_empty());
    assert_eq!(r["config"]["services"], serde_json::json!([5]));
    assert_eq!(r["config"]["rounds"], 3);
    assert_eq!(r["cells"].as_array().unwrap().len(), 3, "{r:#}");
    for mode in ["direct", "ebpf", "nftables"] {
        let c = cell(&r, mode);
        assert_eq!(c["services"], 5);
        assert!(
            c["requests"].as_u64().unwrap() > 0,
            "{mode}: no traffic: {c:#}"
        );
        assert_eq!(c["errors"], 0, "{mode}: errors: {c:#}");
        assert_eq!(c["rounds"].as_array().unwrap().len(), 3, "{mode}");
        let p50 = &c["connect_us"]["p50"];
        assert!(p50["median"].as_f64().unwrap() > 0.0, "{mode}: {c:#}");
        assert!(p50["min"].as_f64() <= p50["max"].as_f64());
        for k in ["1", "8"] {
            assert!(
                c["cps"][k]["median"].as_f64().unwrap() > 0.0,
                "{mode} cps {k}"
            );
            assert!(
                c["rps"][k]["median"].as_f64().unwrap() > 0.0,
                "{mode} rps {k}"
            );
        }
        assert!(
            c["agent_rss_kib"]["median"].as_f64().unwrap() > 0.0,
            "{mode}"
        );
        if mode == "direct" {
            assert!(c["programming_ms"].is_null() && c["vs_direct"].is_null());
        } else {
            let p = &c["programming_ms"];
            assert_eq!(p["samples"], 15, "{mode}: {p:#}");
            assert_eq!(p["timeouts"], 0, "{mode}: {p:#}");
            assert!(p["p50"].as_f64().unwrap() > 0.0);
            assert!(c["vs_direct"]["connect_p50"].as_f64().unwrap() > 0.0);
        }
    }
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(report.contains("| 5 | ebpf |"), "{report}");
    for plot in [
        "connect-latency.svg",
        "connect-latency-p99.svg",
        "connections-per-second.svg",
        "requests-per-second.svg",
        "programming-latency.svg",
    ] {
        let svg = std::fs::read_to_string(dir.join(plot)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("nftables"),
            "{plot}"
        );
        assert!(
            report.contains(&format!("]({plot})")),
            "{plot} not in the report"
        );
    }
    // Compared with itself: no regression, exit 0.
    let json = dir.join("results.json");
    let cmp = Command::new(keelson_e2e::keelson_bin())
        .args(["bench", "compare"])
        .args([&json, &json])
        .output()
        .unwrap();
    assert!(
        cmp.status.success(),
        "{}",
        String::from_utf8_lossy(&cmp.stderr)
    );
}

#[test]
fn bench_services_interrupted_leaves_nothing_behind() {
    if !can_run("bench::bench_services_interrupted_leaves_nothing_behind") {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("run");
    let mut b = Bench::start(&[
        "--services",
        "5",
        "--duration",
        "30s",
        "--out",
        dir.to_str().unwrap(),
    ]);
    // Mid-run: the Services exist and load is flowing.
    b.wait_line("keelson bench: 5 Services", Duration::from_secs(300));
    std::thread::sleep(Duration::from_secs(3));
    let pid = b.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let (status, _, stderr) = b.wait(Duration::from_secs(120));
    assert!(
        !status.success(),
        "an interrupted bench must not succeed:\n{stderr}"
    );
    assert!(stderr.contains("interrupted (SIGINT)"), "{stderr}");
    assert!(stderr.contains("removing the local cluster"), "{stderr}");
    assert_nothing_left(&made(&stderr));
    assert!(
        !dir.join("results.json").exists(),
        "no results from a cut run"
    );
}

#[test]
fn bench_refuses_bad_input_before_any_load() {
    let bin = keelson_e2e::keelson_bin();
    let keelson = |args: &[&str]| {
        let o = Command::new(&bin).args(args).output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (ok, err) = keelson(&["bench", "services", "--local", "--modes", "direct,iptables"]);
    assert!(!ok && err.contains("unknown mode \"iptables\""), "{err}");
    let (ok, err) = keelson(&["bench", "services"]);
    assert!(!ok && err.contains("--local"), "{err}");
    // A kubeconfig whose server does not answer.
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    std::fs::write(&kc, unreachable_kubeconfig()).unwrap();
    let (ok, err) = keelson(&["bench", "services", "--kubeconfig", kc.to_str().unwrap()]);
    assert!(!ok && err.contains("unreachable"), "{err}");
    let (ok, err) = keelson(&["bench", "services", "--local", "--duration", "100ms"]);
    assert!(!ok && err.contains("too short"), "{err}");
}

/// A kubeconfig for a server on a loopback port nothing listens on.
fn unreachable_kubeconfig() -> String {
    let port = keelson_e2e::free_port();
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: x\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n"
    )
}
