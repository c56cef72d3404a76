//! The systemd units pass `systemd-analyze verify`, and `keelson server`
//! speaks the notify protocol they rely on (Type=notify, WatchdogSec).

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keelson_e2e::{free_port, keelson_bin, require_or_skip};

#[test]
fn units_verify() {
    if !require_or_skip(
        Path::new("/usr/bin/systemd-analyze").exists(),
        "systemd-analyze not installed (Debian package systemd)",
    ) {
        return;
    }
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd");
    let tmp = tempfile::tempdir().unwrap();
    let bin = keelson_bin();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&units).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "service") {
            // The units name the installed binary; point them at this build.
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.contains("/usr/local/bin/keelson "),
                "{}",
                path.display()
            );
            let name = path.file_name().unwrap().to_owned();
            std::fs::write(
                tmp.path().join(&name),
                text.replace("/usr/local/bin/keelson", &bin.display().to_string()),
            )
            .unwrap();
            names.push(tmp.path().join(name));
        }
    }
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&names)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

#[test]
fn server_notifies_ready_watchdog_and_stopping() {
    let tmp = tempfile::tempdir().unwrap();
    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let port = free_port();
    let mut child = Command::new(keelson_bin())
        .args(["server", "--disable-controllers", "--data-dir"])
        .arg(tmp.path().join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let guard = KillOnDrop(child.id());
    let mut buf = [0u8; 256];
    let mut recv = || {
        let n = sock.recv(&mut buf).expect("a notify message");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(recv(), "READY=1");
    // Serving by then.
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("server listening at READY=1");
    let start = Instant::now();
    assert_eq!(recv(), "WATCHDOG=1");
    assert_eq!(recv(), "WATCHDOG=1");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    loop {
        let m = recv();
        if m == "STOPPING=1" {
            break;
        }
        assert_eq!(m, "WATCHDOG=1");
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    drop(guard);
}

struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}

#[test]
fn install_puts_binaries_units_cni_and_config_in_place() {
    let bin = keelson_bin();
    if !keelson_e2e::needs("install_puts_binaries_units_cni_and_config_in_place")
        .workspace_bin("keelson-cni")
        .ok()
    {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let install = || {
        let out = Command::new(&bin)
            .args(["install", "--pod-cidr", "10.244.7.0/24", "--root"])
            .arg(root.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    install();
    let r = root.path();
    let version = Command::new(r.join("usr/local/bin/keelson"))
        .arg("version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("keelson "));
    // The plugin answers VERSION from the CNI bin dir.
    let v = Command::new(r.join("opt/cni/bin/keelson-cni"))
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&v.stdout).contains("1.1.0"),
        "{}",
        String::from_utf8_lossy(&v.stdout)
    );
    let conflist: serde_json::Value = serde_json::from_slice(
        &std::fs::read(r.join("etc/cni/net.d/10-keelson.conflist")).unwrap(),
    )
    .unwrap();
    assert_eq!(conflist["plugins"][0]["type"], "keelson-cni");
    assert_eq!(conflist["plugins"][0]["subnet"], "10.244.7.0/24");
    use std::os::unix::fs::PermissionsExt;
    let env = r.join("etc/keelson/agent.env");
    assert_eq!(
        std::fs::metadata(&env).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        std::fs::read_to_string(&env)
            .unwrap()
            .contains("KEELSON_AGENT_CREDENTIALS=--kubeconfig /etc/keelson/agent.kubeconfig\n"),
        "an admin-made kubeconfig by default"
    );
    // A joining node's install writes the join flags instead.
    let joining = tempfile::tempdir().unwrap();
    let out = Command::new(&bin)
        .args(["install", "--root"])
        .arg(joining.path())
        .args([
            "--server",
            "https://10.0.0.1:6443",
            "--token",
            "abcdef.0123456789abcdef",
        ])
        .args(["--ca-cert-hash", "sha256:00"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let joined = std::fs::read_to_string(joining.path().join("etc/keelson/agent.env")).unwrap();
    assert!(
        joined.contains("KEELSON_AGENT_CREDENTIALS=--server https://10.0.0.1:6443 --token abcdef.0123456789abcdef --ca-cert-hash sha256:00\n"),
        "{joined}"
    );
    // Its pod CIDR comes from the control plane, whose server.env allocates
    // from the cluster range; the single node brings its own.
    assert!(
        !joined.contains("--pod-cidr") && joined.contains("--cluster-cidr 10.244.0.0/16"),
        "{joined}"
    );
    assert!(
        !joining
            .path()
            .join("etc/cni/net.d/10-keelson.conflist")
            .exists()
    );
    assert!(
        std::fs::read_to_string(&env)
            .unwrap()
            .contains("--pod-cidr 10.244.7.0/24 --cluster-cidr 10.244.0.0/16"),
    );
    assert!(
        std::fs::read_to_string(r.join("etc/keelson/server.env"))
            .unwrap()
            .contains("--cluster-cidr 10.244.0.0/16"),
    );
    // A second install keeps configuration an operator changed.
    std::fs::write(&env, "KEELSON_AGENT_FLAGS=--proxy-mode nftables\n").unwrap();
    install();
    assert_eq!(
        std::fs::read_to_string(&env).unwrap(),
        "KEELSON_AGENT_FLAGS=--proxy-mode nftables\n"
    );
    // The installed units verify against the installed binary.
    if Path::new("/usr/bin/systemd-analyze").exists() {
        let units = r.join("etc/systemd/system");
        let mut names = Vec::new();
        for n in ["keelson-server.service", "keelson-agent.service"] {
            let text = std::fs::read_to_string(units.join(n)).unwrap();
            let p = units.join(format!("check-{n}"));
            std::fs::write(
                &p,
                text.replace(
                    "/usr/local/bin/keelson",
                    &r.join("usr/local/bin/keelson").display().to_string(),
                ),
            )
            .unwrap();
            names.push(p);
        }
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .args(&names)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
    }
}
