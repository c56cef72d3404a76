//! Helpers for the root tests: running the plugin (and Debian's reference
//! plugins) inside a "host" namespace, and in-process TCP/ping probes. Each
//! test makes its own host namespace, so the machine's own namespace is
//! never touched. Namespaces and the skip rule are the test kit's
//! (keelson-e2e).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

pub const PLUGIN: &str = env!("CARGO_BIN_EXE_keelson-cni");

#[allow(unused_imports)] // each test file uses its own subset
pub use keelson_e2e::{Netns, sh, unique};

/// True when the test can run (root and `tools`); otherwise says why (and
/// panics when KEELSON_REQUIRE_ALL=1, as CI sets): the test kit's rule.
pub fn can_run(test: &str, tools: &[&str]) -> bool {
    keelson_e2e::needs(test).root().tools(tools).ok()
}

/// What the plugin's tests ask of a namespace beyond the kit's [`Netns`].
pub trait NetnsExt {
    /// Host-side veths of the plugin ("kc..." links).
    fn kc_links(&self) -> Vec<String>;
    /// `ping -c1` from this namespace to `ip`.
    fn ping(&self, ip: Ipv4Addr) -> bool;
}

impl NetnsExt for Netns {
    fn kc_links(&self) -> Vec<String> {
        self.links()
            .into_iter()
            .filter(|n| n.starts_with("kc"))
            .collect()
    }

    fn ping(&self, ip: Ipv4Addr) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "ping", "-c1", "-W2", "-q"])
            .arg(ip.to_string())
            .output()
            .expect("run ping")
            .status
            .success()
    }
}

/// The plugin's network configuration for `subnet` with state under `data_dir`.
pub fn conf(name: &str, subnet: &str, data_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": name,
        "type": "keelson-cni",
        "subnet": subnet,
        "dataDir": data_dir,
        "mtu": 1400,
    })
}

/// One plugin run's outcome.
#[derive(Debug)]
pub struct Ran {
    pub ok: bool,
    pub stdout: Value,
    pub stderr: String,
}

/// Builds the command for `plugin` with CNI_* set.
pub fn plugin_cmd(
    plugin: &str,
    command: &str,
    cid: &str,
    netns: Option<&Path>,
    ifname: &str,
) -> Command {
    let mut cmd = Command::new(plugin);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if !cid.is_empty() {
        cmd.env("CNI_CONTAINERID", cid);
        cmd.env("CNI_IFNAME", ifname);
    }
    if let Some(n) = netns {
        cmd.env("CNI_NETNS", n);
    }
    cmd
}

/// Runs `cmd` in `host` with `stdin`, waiting for it.
pub fn run_in(host: &Netns, mut cmd: Command, stdin: &[u8]) -> Ran {
    let mut child = host.spawn(&mut cmd);
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait plugin");
    Ran {
        ok: out.status.success(),
        stdout: serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs keelson-cni `command` for (cid, eth0) in `pod`, from `host`.
pub fn cni(host: &Netns, command: &str, cid: &str, pod: Option<&Netns>, conf: &Value) -> Ran {
    let cmd = plugin_cmd(PLUGIN, command, cid, pod.map(|p| p.path.as_path()), "eth0");
    run_in(host, cmd, conf.to_string().as_bytes())
}

/// The pod address of an ADD result.
pub fn result_ip(result: &Value) -> Ipv4Addr {
    let addr = result["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no ips in {result}"));
    addr.split('/').next().unwrap().parse().unwrap()
}

/// A TCP server in `ns` on `port` that answers "hello from NAME" to one client
/// per call of the returned closure's accept; runs until the listener drops.
pub fn tcp_server(ns: &Netns, port: u16) -> std::thread::JoinHandle<()> {
    let listener = ns.run(|| TcpListener::bind(("0.0.0.0", port)).expect("bind listener"));
    let name = ns.name.clone();
    std::thread::spawn(move || {
        listener.set_nonblocking(false).expect("blocking listener");
        // Serve a bounded number of clients, then stop.
        for _ in 0..8 {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            let _ = s.write_all(format!("hello from {name}").as_bytes());
        }
    })
}

/// Connects from `ns` to `addr` and returns what the server said.
pub fn tcp_get(ns: &Netns, addr: SocketAddr) -> std::io::Result<String> {
    ns.run(|| {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        Ok(buf)
    })
}

/// Entries of a directory (names), empty when it does not exist.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
