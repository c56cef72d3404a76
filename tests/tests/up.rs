//! `keelson up` and `keelson down` on this machine: a single-node cluster in
//! one process (API server, scheduler, controllers, agent with runc,
//! keelson-cni, the Service proxy in its default eBPF mode and cluster DNS). A Deployment
//! behind a Service answers a pod by its DNS name; after `keelson down`
//! nothing of the cluster is left on the host.
//!
//! Uses the host's /run/keelson, the `keelson` cgroup root, 169.254.20.10 on
//! `lo`, the node API port 10250 and the nftables table `ip keelson`, as an
//! installed `keelson up` does: one such test at a time on a machine (the
//! tests here take [`ONE_AT_A_TIME`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `keelson up` owns host-wide names: the tests here run one after another.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

use keelson_e2e::registry::{BUSYBOX, Registry};
use keelson_e2e::{free_port, keelson_bin, kubectl_path};

struct Up {
    child: Option<Child>,
}

impl Up {
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Stops `keelson up` and runs `keelson down` even when the test fails.
struct Cleanup {
    up: Up,
    data_dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.up.stop();
        let _ = Command::new(keelson_bin())
            .args(["down", "--data-dir"])
            .arg(&self.data_dir)
            .status();
    }
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let out = Command::new(kubectl_path(33))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("{what}: not within {timeout:?}");
}

/// What of `keelson up` is visible on the host.
fn leftovers(data_dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let links = Command::new("ip").args(["-br", "link"]).output().unwrap();
    for l in String::from_utf8_lossy(&links.stdout).lines() {
        // keelson-cni's host veths: "kc" and 11 hex digits (another
        // test's links may start with "kc" too).
        let name = l.split_whitespace().next().unwrap_or_default();
        let name = name.split('@').next().unwrap_or_default();
        let hex = name.strip_prefix("kc").unwrap_or_default();
        if hex.len() == 11 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            found.push(format!("link {l}"));
        }
    }
    let routes = Command::new("ip")
        .args(["route", "show", "10.244.0.0/24"])
        .output()
        .unwrap();
    let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
    let all = Command::new("ip").args(["route"]).output().unwrap();
    for l in String::from_utf8_lossy(&all.stdout).lines() {
        if l.starts_with("10.244.0.") {
            found.push(format!("route {l}"));
        }
    }
    let _ = routes;
    let nft = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    if String::from_utf8_lossy(&nft.stdout).contains("keelson") {
        found.push("nftables table keelson".into());
    }
    let svc = Command::new("ip")
        .args(["route", "show", "proto", "0x4d"])
        .output()
        .unwrap();
    for l in String::from_utf8_lossy(&svc.stdout).lines() {
        found.push(format!("Service CIDR route {l}"));
    }
    if Path::new("/sys/class/net/keelson-svc").exists() {
        found.push("link keelson-svc".into());
    }
    let lo = Command::new("ip")
        .args(["-4", "addr", "show", "dev", "lo"])
        .output()
        .unwrap();
    if String::from_utf8_lossy(&lo.stdout).contains("169.254.20.10") {
        found.push("169.254.20.10 on lo".into());
    }
    for h in keelson_e2e::agent::cgroup_hierarchies() {
        if h.join("keelson").exists() {
            found.push(format!("cgroup {}", h.join("keelson").display()));
        }
    }
    if Path::new("/sys/fs/bpf/keelson").exists() {
        found.push("BPF pins /sys/fs/bpf/keelson".into());
    }
    if Path::new("/run/keelson").exists() {
        found.push("/run/keelson".into());
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for m in mounts.lines() {
        if m.contains(&*data_dir.to_string_lossy()) || m.contains("/run/keelson") {
            found.push(format!("mount {m}"));
        }
    }
    if data_dir.exists() {
        found.push(format!("data dir {}", data_dir.display()));
    }
    found
}

/// Whether `keelson up` can run here (root, keelson-cni built); prints why
/// not, or panics under KEELSON_REQUIRE_ALL=1.
fn can_run() -> bool {
    keelson_e2e::needs("keelson up")
        .root()
        .keelson()
        .workspace_bin("keelson-cni")
        .ok()
}

/// A `keelson up` started for a test, with its logs, data dir and
/// kubeconfig; Drop stops it and runs `keelson down`.
struct Started {
    // Before `tmp`: it runs `keelson down` on the data dir.
    cleanup: Cleanup,
    data_dir: PathBuf,
    kubeconfig: PathBuf,
    port: u16,
    tmp: tempfile::TempDir,
}

impl Started {
    /// `keelson up --data-dir <tmp>/cluster --listen 127.0.0.1:<free>`; waits
    /// until the node is Ready.
    fn start() -> Started {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("cluster");
        let port = free_port();
        let mut s = Started {
            cleanup: Cleanup {
                up: Up { child: None },
                data_dir: data_dir.clone(),
            },
            kubeconfig: data_dir.join("server/admin.kubeconfig"),
            data_dir,
            port,
            tmp,
        };
        s.spawn("up");
        wait_until("node Ready", Duration::from_secs(60), || {
            s.kubeconfig.exists()
                && Command::new(kubectl_path(33))
                    .arg("--kubeconfig")
                    .arg(&s.kubeconfig)
                    .args([
                        "get",
                        "nodes",
                        "-o",
                        "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}",
                    ])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout) == "True")
        });
        s
    }

    /// Starts `keelson up` (stdout to `<log>.out`, stderr to `<log>.log`).
    fn spawn(&mut self, log: &str) {
        let out = std::fs::File::create(self.tmp.path().join(format!("{log}.out"))).unwrap();
        let err = std::fs::File::create(self.tmp.path().join(format!("{log}.log"))).unwrap();
        self.cleanup.up.child = Some(
            Command::new(keelson_bin())
                .args(["up", "--data-dir"])
                .arg(&self.data_dir)
                .args(["--listen", &format!("127.0.0.1:{}", self.port)])
                .env("KEELSON_LOG", "info")
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap(),
        );
    }

    /// What `keelson up` printed (`log` as given to [`Started::spawn`]).
    fn stdout(&self, log: &str) -> String {
        std::fs::read_to_string(self.tmp.path().join(format!("{log}.out"))).unwrap_or_default()
    }

    /// Its log.
    fn log(&self, log: &str) -> String {
        std::fs::read_to_string(self.tmp.path().join(format!("{log}.log"))).unwrap_or_default()
    }
}

#[test]
fn up_serves_a_deployment_by_dns_name_and_down_leaves_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() {
        return;
    }
    let Some(reg) = Registry::with_test_images_or_skip() else {
        return;
    };
    let mut up = Started::start();
    let kubeconfig = up.kubeconfig.clone();
    // The one-line status once every part works.
    wait_until("the ready line", Duration::from_secs(30), || {
        up.stdout("up").contains("keelson up: cluster ready: node ")
    });
    assert!(
        !up.stdout("up").contains("not ready"),
        "{}",
        up.stdout("up")
    );
    // The agent acts as its node, not as the admin.
    let node_kc = up.data_dir.join("agent/node.kubeconfig");
    let who = kubectl(
        &node_kc,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    );
    assert!(who.starts_with("system:node:"), "{who}");
    let secrets = Command::new(kubectl_path(33))
        .arg("--kubeconfig")
        .arg(&node_kc)
        .args(["auth", "can-i", "list", "secrets", "-A"])
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&secrets.stdout);
    assert!(answer.starts_with("no"), "{answer}");
    let manifest = format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: {image}
        command: ["sh", "-c", "mkdir -p /www && echo hello from $(hostname) > /www/index.html && exec httpd -f -p 80 -h /www"]
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80}}]
"#,
        image = reg.image(BUSYBOX)
    );
    let file = up.tmp.path().join("web.yaml");
    std::fs::write(&file, manifest).unwrap();
    kubectl(&kubeconfig, &["apply", "-f", file.to_str().unwrap()]);
    wait_until("3 pods Running", Duration::from_secs(90), || {
        let phases = kubectl(
            &kubeconfig,
            &[
                "get",
                "pods",
                "-l",
                "app=web",
                "-o",
                "jsonpath={.items[*].status.phase}",
            ],
        );
        phases
            .split_whitespace()
            .filter(|p| *p == "Running")
            .count()
            == 3
    });
    let wide = kubectl(&kubeconfig, &["get", "pods", "-o", "wide"]);
    eprintln!("{wide}");
    let ips = kubectl(
        &kubeconfig,
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].status.podIP}",
        ],
    );
    assert_eq!(
        ips.split_whitespace()
            .filter(|ip| ip.starts_with("10.244.0."))
            .count(),
        3,
        "{ips}"
    );
    // From inside a pod (its mount, network and UTS namespaces): the
    // Service by DNS name, through the cluster DNS and the Service proxy.
    let pid = Command::new("pgrep")
        .args(["-f", "httpd -f -p 80 -h /www"])
        .output()
        .unwrap();
    let pid = String::from_utf8_lossy(&pid.stdout)
        .lines()
        .next()
        .expect("a pod's httpd")
        .to_string();
    let mut answers = std::collections::BTreeSet::new();
    wait_until(
        "the Service answers by name",
        Duration::from_secs(30),
        || {
            // (busybox wget's own -T crashes in Debian's busybox-static.)
            let out = Command::new("timeout")
                .args(["5", "nsenter", "-t", &pid, "-m", "-n", "-u", "-r", "-w"])
                .args(["/bin/wget", "-qO-", "http://web.default.svc.cluster.local"])
                .output()
                .unwrap();
            let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if body.starts_with("hello from web-") {
                answers.insert(body);
            }
            answers.len() >= 2
        },
    );
    eprintln!("answers: {answers:?}");
    // A second start on the same data dir adopts the running pods: the
    // same processes (runtime PIDs) keep running under the same IDs.
    let ids = || -> Vec<String> {
        let out = kubectl(
            &kubeconfig,
            &[
                "get",
                "pods",
                "-l",
                "app=web",
                "-o",
                "jsonpath={.items[*].status.containerStatuses[0].containerID}",
            ],
        );
        let mut v: Vec<String> = out
            .split_whitespace()
            .map(|id| id.trim_start_matches("runc://").to_string())
            .collect();
        v.sort();
        v
    };
    let runc_pid = |id: &str| -> u64 {
        let out = Command::new("runc")
            .args(["--root", "/run/keelson/runc-root", "state", id])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["pid"].as_u64().unwrap_or(0)
    };
    let before = ids();
    assert_eq!(before.len(), 3, "{before:?}");
    let pids: Vec<u64> = before.iter().map(|id| runc_pid(id)).collect();
    assert!(pids.iter().all(|p| *p > 0), "runtime PIDs {pids:?}");
    up.cleanup.up.stop();
    up.spawn("up2");
    // The new agent says so once per pod it adopted.
    wait_until("the 3 pods adopted", Duration::from_secs(60), || {
        up.log("up2").matches("adopted running pod").count() == 3
    });
    let after = ids();
    assert_eq!(before, after, "containers replaced: {}", up.log("up2"));
    let pids_after: Vec<u64> = after.iter().map(|id| runc_pid(id)).collect();
    assert_eq!(pids, pids_after, "processes replaced: {}", up.log("up2"));
    for pid in &pids {
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} gone after the restart"
        );
    }

    // Down: nothing left on the host.
    up.cleanup.up.stop();
    let data_dir = up.data_dir.clone();
    let out = Command::new(keelson_bin())
        .args(["down", "--data-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "keelson down: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left = leftovers(&data_dir);
    assert!(left.is_empty(), "left after keelson down: {left:#?}");
}

/// The shell commands of the README's example (between the
/// `example:begin` and `example:end` markers).
fn readme_example() -> String {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let text = std::fs::read_to_string(&readme).unwrap();
    let start = text
        .find("<!-- example:begin")
        .expect("example:begin in README.md");
    let end = text
        .find("<!-- example:end -->")
        .expect("example:end in README.md");
    let block = &text[start..end];
    let code = block
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .map(|(code, _)| code)
        .expect("a ```sh block in the README example");
    code.to_string()
}

#[test]
fn the_readme_example_runs_as_written() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !can_run() {
        return;
    }
    let script = readme_example();
    assert!(script.contains("cargo xtask images"), "{script}");
    let up = Started::start();
    // As written, but on this test's cluster instead of /var/lib/keelson.
    let data_dir = up.data_dir.display().to_string();
    let script = script.replace("/var/lib/keelson", &data_dir);
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("timeout")
        .args(["300", "sh", "-ec", &script])
        .current_dir(&workspace)
        .env("KEELSON_DATA_DIR", &data_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the README example failed ({}):\n{stdout}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        up.log("up")
    );
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("hello from hello-"),
        "the Service answered {last:?}:\n{stdout}"
    );
    // The agent said it imported the image.
    let events = kubectl(
        &up.kubeconfig,
        &[
            "get",
            "events",
            "-n",
            "default",
            "--field-selector",
            "reason=ImageImported",
            "-o",
            "jsonpath={.items[*].message}",
        ],
    );
    assert!(events.contains("keelson.local/busybox:v1"), "{events:?}");
}
