//! Real-kernel tests: runc, cgroups, namespaces, the shim. Run as root;
//! they skip (or fail with KEELSON_REQUIRE_ALL=1) without root or runc.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use keelson_runtime::cgroups::{self, CgroupManager, QosClass, Resources};
use keelson_runtime::{
    ContainerConfig, ContainerState, OciRuntime, Runtime, RuntimeError, sandbox,
};

const RUNC: &str = "/usr/sbin/runc";
const SHIM: &str = env!("CARGO_BIN_EXE_keelson-runtime-shim");

/// Root, runc, busybox-static and cgroupfs, by the test kit's rule (a skip,
/// or a failure under KEELSON_REQUIRE_ALL=1).
fn can_run() -> bool {
    keelson_e2e::needs("keelson-runtime real-kernel tests")
        .root()
        .tool(RUNC)
        .path("/bin/busybox", "busybox-static")
        .path("/sys/fs/cgroup", "cgroupfs")
        .ok()
}

fn rand_suffix() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// One test's world: temp dirs, a busybox rootfs, a cgroup root, a
/// sandbox dir and the runtime. Drop removes everything.
struct Env {
    tmp: tempfile::TempDir,
    rt: OciRuntime,
    cg: CgroupManager,
    run_dir: PathBuf,
    rootfs: PathBuf,
    suffix: String,
    pods: Vec<String>,
}

impl Env {
    fn new() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("keelson-rt-")
            .tempdir()
            .unwrap();
        let rootfs = tmp.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for app in [
            "sh", "echo", "sleep", "cat", "dd", "head", "hostname", "id", "readlink", "true",
        ] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(app)).unwrap();
        }
        let suffix = rand_suffix();
        let cg = CgroupManager::new("/sys/fs/cgroup", &format!("keelson-test-{suffix}")).unwrap();
        let rt = OciRuntime {
            runtime: RUNC.into(),
            state_dir: tmp.path().join("state"),
            shim_exe: SHIM.into(),
        };
        let run_dir = tmp.path().join("sandboxes");
        Env {
            tmp,
            rt,
            cg,
            run_dir,
            rootfs,
            suffix,
            pods: Vec::new(),
        }
    }

    /// A pod cgroup (burstable) and, with `hostname`, a sandbox.
    fn pod(
        &mut self,
        res: &Resources,
        hostname: Option<&str>,
    ) -> (String, String, sandbox::Sandbox) {
        let uid = format!("u{}-{}", self.suffix, self.pods.len());
        self.pods.push(uid.clone());
        let path = self.cg.ensure_pod(&uid, QosClass::Burstable, res).unwrap();
        let sb = match hostname {
            Some(h) => sandbox::create(&self.run_dir, &uid, h).unwrap(),
            None => sandbox::Sandbox::default(),
        };
        (uid, path, sb)
    }

    fn config(
        &self,
        name: &str,
        pod_path: &str,
        sb: &sandbox::Sandbox,
        args: &[&str],
    ) -> ContainerConfig {
        let id = format!("c{}-{name}", self.suffix);
        ContainerConfig {
            id: id.clone(),
            labels: BTreeMap::from([("name".to_string(), name.to_string())]),
            rootfs: self.rootfs.clone(),
            args: args.iter().map(|s| s.to_string()).collect(),
            cwd: "/".into(),
            sandbox: sb.clone(),
            cgroups_path: cgroups::container_cgroups_path(pod_path, &id),
            resources: Resources {
                cpu_shares: Some(2),
                cpu_period_us: Some(100_000),
                ..Default::default()
            },
            log_path: self.tmp.path().join("logs").join(format!("{name}.log")),
            ..Default::default()
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.rt.state_dir) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = std::process::Command::new(RUNC)
                    .arg("--root")
                    .arg(self.rt.runtime_root())
                    .args(["delete", "--force", &id])
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
        for uid in &self.pods {
            let _ = sandbox::remove(&self.run_dir, uid);
        }
        let _ = sandbox::release_run_dir(&self.run_dir);
        if let Err(e) = self.cg.remove_root() {
            eprintln!("cleanup: {e}");
        }
    }
}

async fn wait_exited(rt: &OciRuntime, id: &str, timeout: Duration) -> ContainerState {
    let deadline = Instant::now() + timeout;
    loop {
        let st = rt.state(id).await.unwrap().expect("container exists").state;
        if matches!(st, ContainerState::Exited { .. }) || Instant::now() > deadline {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn exit_code(st: &ContainerState) -> (i32, bool) {
    match st {
        ContainerState::Exited {
            exit_code,
            oom_killed,
            ..
        } => (*exit_code, *oom_killed),
        s => panic!("not exited: {s:?}"),
    }
}

/// (stream, tag, text) of each CRI log line; panics on a malformed line.
fn read_log(path: &Path) -> Vec<(String, String, String)> {
    let f = std::fs::File::open(path).unwrap();
    std::io::BufReader::new(f)
        .lines()
        .map(|l| {
            let l = l.unwrap();
            let mut p = l.splitn(4, ' ');
            let ts = p.next().unwrap();
            chrono::DateTime::parse_from_rfc3339(ts)
                .unwrap_or_else(|e| panic!("bad timestamp in {l:?}: {e}"));
            assert!(ts.ends_with('Z'), "not UTC: {l:?}");
            let stream = p.next().unwrap().to_string();
            assert!(stream == "stdout" || stream == "stderr", "{l:?}");
            let tag = p.next().unwrap().to_string();
            assert!(tag == "F" || tag == "P", "{l:?}");
            (stream, tag, p.next().unwrap_or("").to_string())
        })
        .collect()
}

fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_exit_codes_and_bad_command() {
    if !can_run() {
        return;
    }
    let mut env = Env::new();
    let (_, pod, sb) = env.pod(&Resources::default(), None);
    let echo = env.config(
        "echo",
        &pod,
        &sb,
        &[
            "sh",
            "-c",
            "echo out1; echo err1 >&2; echo out2; printf tail",
        ],
    );
    let three = env.config("three", &pod, &sb, &["sh", "-c", "exit 3"]);
    let bad = env.config("bad", &pod, &sb, &["no-such-binary"]);

    env.rt.start(&echo).await.unwrap();
    env.rt.start(&three).await.unwrap();
    let st = wait_exited(&env.rt, &echo.id, Duration::from_secs(10)).await;
    assert_eq!(exit_code(&st), (0, false));
    let log = read_log(&echo.log_path);
    let out: Vec<&str> = log
        .iter()
        .filter(|l| l.0 == "stdout")
        .map(|l| l.2.as_str())
        .collect();
    let err: Vec<&str> = log
        .iter()
        .filter(|l| l.0 == "stderr")
        .map(|l| l.2.as_str())
        .collect();
    assert_eq!(out, ["out1", "out2", "tail"], "{log:?}");
    assert_eq!(err, ["err1"], "{log:?}");

    let st = wait_exited(&env.rt, &three.id, Duration::from_secs(10)).await;
    assert_eq!(exit_code(&st), (3, false));
    let info = env.rt.state(&three.id).await.unwrap().unwrap();
    assert_eq!(info.labels.get("name").map(String::as_str), Some("three"));

    match env.rt.start(&bad).await {
        Err(RuntimeError::StartFailed { reason, .. }) => {
            assert!(reason.contains("no-such-binary"), "{reason}");
            eprintln!("bad command reason: {reason}");
        }
        other => panic!("bad command started: {other:?}"),
    }
    assert!(matches!(
        env.rt.state(&bad.id).await.unwrap().unwrap().state,
        ContainerState::Exited { .. }
    ));
    let ids: Vec<String> = env
        .rt
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    for id in [&echo.id, &three.id, &bad.id] {
        env.rt.remove(id).await.unwrap();
        env.rt.remove(id).await.unwrap();
        assert!(env.rt.state(id).await.unwrap().is_none());
    }
    assert!(env.rt.list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_limits_and_stop_with_grace() {
    if !can_run() {
        return;
    }
    let mut env = Env::new();
    let pod_res = Resources {
        cpu_shares: Some(1024),
        memory_limit: Some(256 << 20),
        ..Default::default()
    };
    let (_, pod, sb) = env.pod(&pod_res, None);
    let mut sleeper = env.config("sleep", &pod, &sb, &["sleep", "1000"]);
    sleeper.resources = Resources {
        cpu_shares: Some(512),
        cpu_quota_us: Some(25_000),
        cpu_period_us: Some(100_000),
        memory_limit: Some(64 << 20),
        pids_limit: Some(50),
    };
    let stubborn = env.config(
        "stubborn",
        &pod,
        &sb,
        &["sh", "-c", "trap '' TERM; echo trapped; sleep 1000"],
    );
    let polite = env.config(
        "polite",
        &pod,
        &sb,
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; echo trapped; while true; do sleep 0.1; done",
        ],
    );

    let st = env.rt.start(&sleeper).await.unwrap();
    let ContainerState::Running { pid, .. } = st else {
        panic!("not running: {st:?}")
    };
    assert!(pid_alive(pid));
    // `runc start` returns as the init is told to exec: it may briefly
    // still be `runc init`.
    let deadline = Instant::now() + Duration::from_secs(2);
    let cmdline = loop {
        let c = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
        if c.starts_with("sleep\0") || Instant::now() > deadline {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(cmdline.starts_with("sleep\0"), "{cmdline:?}");
    assert_eq!(env.rt.state(&sleeper.id).await.unwrap().unwrap().state, st);

    // Limits, as the kernel sees them.
    let cgp = &sleeper.cgroups_path;
    let read = |ctrl: &str, file: &str| {
        let d = env.cg.controller_dir(ctrl, cgp).unwrap();
        std::fs::read_to_string(d.join(file))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(read("cpu", "cpu.shares"), "512");
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "25000");
    assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
    assert_eq!(
        read("memory", "memory.limit_in_bytes"),
        (64u64 << 20).to_string()
    );
    assert_eq!(read("pids", "pids.max"), "50");
    assert!(
        read("memory", "cgroup.procs")
            .lines()
            .any(|l| l == pid.to_string())
    );
    let pod_mem = env.cg.controller_dir("memory", &pod).unwrap();
    assert_eq!(
        std::fs::read_to_string(pod_mem.join("memory.limit_in_bytes"))
            .unwrap()
            .trim(),
        (256u64 << 20).to_string()
    );

    env.rt.start(&stubborn).await.unwrap();
    env.rt.start(&polite).await.unwrap();
    // The shells say when their traps are installed.
    for c in [&stubborn, &polite] {
        keelson_e2e::wait_for(
            &format!("{} to install its TERM trap", c.id),
            Duration::from_secs(10),
            || {
                let lines = c.log_path.exists().then(|| read_log(&c.log_path))?;
                lines.iter().any(|l| l.2 == "trapped").then_some(())
            },
        );
    }

    let t0 = Instant::now();
    let (a, b, c) = tokio::join!(
        async {
            env.rt
                .stop(&stubborn.id, Duration::from_secs(2))
                .await
                .unwrap();
            t0.elapsed()
        },
        async {
            env.rt
                .stop(&polite.id, Duration::from_secs(2))
                .await
                .unwrap();
            t0.elapsed()
        },
        async {
            env.rt.stop(&sleeper.id, Duration::ZERO).await.unwrap();
            t0.elapsed()
        },
    );
    eprintln!("stop: stubborn {a:?}, polite {b:?}, sleep(grace 0) {c:?}");
    assert!(
        a >= Duration::from_secs(2) && a < Duration::from_secs(5),
        "stubborn stopped after {a:?}"
    );
    assert!(
        b < Duration::from_millis(1500),
        "polite stopped after {b:?}"
    );
    assert!(
        c < Duration::from_millis(1500),
        "grace 0 stopped after {c:?}"
    );
    assert_eq!(
        exit_code(&env.rt.state(&stubborn.id).await.unwrap().unwrap().state),
        (137, false)
    );
    assert_eq!(
        exit_code(&env.rt.state(&polite.id).await.unwrap().unwrap().state),
        (0, false)
    );
    assert_eq!(
        exit_code(&env.rt.state(&sleeper.id).await.unwrap().unwrap().state),
        (137, false)
    );
    assert!(!pid_alive(pid));
    // Stopping again is a no-op.
    env.rt
        .stop(&sleeper.id, Duration::from_secs(1))
        .await
        .unwrap();
    env.rt
        .stop("never-existed", Duration::from_secs(1))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_killed() {
    if !can_run() {
        return;
    }
    let mut env = Env::new();
    let (_, pod, sb) = env.pod(&Resources::default(), None);
    let mut c = env.config(
        "oom",
        &pod,
        &sb,
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
    );
    c.resources.memory_limit = Some(20 << 20);
    env.rt.start(&c).await.unwrap();
    let st = wait_exited(&env.rt, &c.id, Duration::from_secs(20)).await;
    assert_eq!(exit_code(&st), (137, true), "{st:?}");
    assert!(env.cg.oom_killed(&c.cgroups_path));
    env.rt.remove(&c.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_shared_and_everything_cleaned_up() {
    if !can_run() {
        return;
    }
    let mut env = Env::new();
    let (uid, pod, sb) = env.pod(&Resources::default(), Some("pod-host-a"));
    // Idempotent: a second create returns the same, still-mounted sandbox.
    assert_eq!(sandbox::create(&env.run_dir, &uid, "ignored").unwrap(), sb);
    assert_eq!(sandbox::list(&env.run_dir).unwrap(), vec![uid.clone()]);
    // The namespace outlived the thread that made it, and lo is up.
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", sb.netns.display()))
        .args(["ip", "-o", "link", "show", "lo"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("LOOPBACK,UP"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let host_ino = std::fs::metadata(&sb.netns).unwrap().ino();
    let own_ino = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
    assert_ne!(host_ino, own_ino);

    let script = "readlink /proc/self/ns/net; readlink /proc/self/ns/uts; hostname; sleep 1000";
    let a = env.config("a", &pod, &sb, &["sh", "-c", script]);
    let b = env.config("b", &pod, &sb, &["sh", "-c", script]);
    env.rt.start(&a).await.unwrap();
    env.rt.start(&b).await.unwrap();
    let lines = |p: &Path| -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let l: Vec<String> = if p.exists() {
                read_log(p).into_iter().map(|l| l.2).collect()
            } else {
                vec![]
            };
            if l.len() >= 3 || Instant::now() > deadline {
                return l;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let la = lines(&a.log_path);
    let lb = lines(&b.log_path);
    assert_eq!(la, lb);
    assert_eq!(la[0], format!("net:[{host_ino}]"));
    assert_eq!(
        la[1],
        format!("uts:[{}]", std::fs::metadata(&sb.utsns).unwrap().ino())
    );
    assert_eq!(la[2], "pod-host-a");

    // Tear down like the agent does, then look for leftovers.
    for c in [&a, &b] {
        env.rt
            .stop(&c.id, Duration::from_millis(200))
            .await
            .unwrap();
        env.rt.remove(&c.id).await.unwrap();
    }
    sandbox::remove(&env.run_dir, &uid).unwrap();
    sandbox::remove(&env.run_dir, &uid).unwrap();
    env.cg.remove_pod(&uid, QosClass::Burstable).unwrap();
    env.cg.remove_pod(&uid, QosClass::Burstable).unwrap();

    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(&uid), "mount left: {mountinfo}");
    for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let leftover = h
            .path()
            .join(env.cg.root_name())
            .join("burstable")
            .join(format!("pod{uid}"));
        assert!(!leftover.exists(), "cgroup left: {}", leftover.display());
    }
    assert!(env.cg.list_pods().unwrap().is_empty());
    for id in [&a.id, &b.id] {
        assert!(
            !env.rt.runtime_root().join(id).exists(),
            "runc state left for {id}"
        );
        assert!(
            !env.rt.container_dir(id).exists(),
            "state dir left for {id}"
        );
    }
    assert!(sandbox::list(&env.run_dir).unwrap().is_empty());
}

/// Helper run as a separate process by `shim_survives_agent_kill`: starts a
/// container like the agent would, prints its pid, then waits to be killed.
/// Ignored in normal runs; run by itself it fails instead of passing empty.
#[tokio::test]
#[ignore = "the \"agent\" process of shim_survives_agent_kill, which runs it"]
async fn agent_child_helper() {
    let spec = std::env::var("KEELSON_TEST_AGENT_CHILD").expect(
        "agent_child_helper is run by shim_survives_agent_kill, with KEELSON_TEST_AGENT_CHILD",
    );
    let v: serde_json::Value = serde_json::from_str(&spec).unwrap();
    let s = |k: &str| v[k].as_str().unwrap().to_string();
    let rt = OciRuntime {
        runtime: RUNC.into(),
        state_dir: s("state_dir").into(),
        shim_exe: SHIM.into(),
    };
    let c = ContainerConfig {
        id: s("id"),
        rootfs: s("rootfs").into(),
        args: vec!["sleep".into(), "1000".into()],
        cwd: "/".into(),
        cgroups_path: s("cgroups_path"),
        log_path: s("log_path").into(),
        ..Default::default()
    };
    let st = rt.start(&c).await.unwrap();
    let ContainerState::Running { pid, .. } = st else {
        panic!("{st:?}")
    };
    println!("STARTED {pid}");
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    tokio::time::sleep(Duration::from_secs(120)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shim_survives_agent_kill() {
    if !can_run() {
        return;
    }
    let mut env = Env::new();
    let (_, pod, sb) = env.pod(&Resources::default(), None);
    let c = env.config("survivor", &pod, &sb, &["sleep", "1000"]);
    let spec = serde_json::json!({
        "state_dir": env.rt.state_dir, "id": c.id, "rootfs": c.rootfs,
        "cgroups_path": c.cgroups_path, "log_path": c.log_path,
    });
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "agent_child_helper",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KEELSON_TEST_AGENT_CHILD", spec.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = keelson_e2e::Proc(child);
    let stdout = child.0.stdout.take().unwrap();
    let pid: u32 = tokio::task::spawn_blocking(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            // libtest may print "test agent_child_helper ... " on the same line.
            if let Some(i) = line.find("STARTED ") {
                return line[i + 8..]
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
            }
        }
        panic!("agent child ended without starting the container");
    })
    .await
    .unwrap();
    // kill -9 the "agent".
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.0.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let st = env.rt.state(&c.id).await.unwrap().unwrap().state;
    assert!(
        matches!(st, ContainerState::Running { pid: p, .. } if p == pid),
        "{st:?}"
    );
    let shim_pid: i32 = std::fs::read_to_string(env.rt.container_dir(&c.id).join("shim.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(pid_alive(shim_pid as u32), "shim died with the agent");
    // The shim still reports the exit.
    env.rt.stop(&c.id, Duration::ZERO).await.unwrap();
    assert_eq!(
        exit_code(&env.rt.state(&c.id).await.unwrap().unwrap().state),
        (137, false)
    );
    env.rt.remove(&c.id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_starts_in_one_sandbox_run_and_stop() {
    if !can_run() {
        return;
    }
    let mut env = Env::new();
    let (_, pod, sb) = env.pod(&Resources::default(), Some("lat"));
    let mut times = Vec::new();
    for i in 0..10 {
        let c = env.config(&format!("lat{i}"), &pod, &sb, &["sleep", "1000"]);
        let t0 = Instant::now();
        let st = env.rt.start(&c).await.unwrap();
        times.push(t0.elapsed());
        assert!(matches!(st, ContainerState::Running { .. }), "{st:?}");
        env.rt.stop(&c.id, Duration::ZERO).await.unwrap();
        env.rt.remove(&c.id).await.unwrap();
    }
    // A measurement, not an assertion (a loaded machine is not a broken
    // runtime): printed for the README's figures.
    times.sort();
    eprintln!(
        "start-to-running through the shim (runc): min {:?} median {:?} max {:?}",
        times[0], times[5], times[9]
    );
}
