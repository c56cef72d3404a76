//! Real-kernel test topology: routed veths from per-test netns to the
//! host, busybox httpd + a python UDP responder as backends, a cgroup2
//! child for the client, and Drop guards for all of it. Namespaces,
//! processes and the skip rule come from the test kit (keelson-e2e).
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use keelson_e2e::{Netns, Proc, run};

pub const PYTHON: &str = "/usr/bin/python3";
pub const UDP_PORT: u16 = 5353;

/// The cgroup2 hierarchy, detected (/sys/fs/cgroup on a pure v2 host,
/// /sys/fs/cgroup/unified on a hybrid one).
pub fn cgroup2() -> PathBuf {
    keelson_e2e::cgroup2().expect("a cgroup2 hierarchy (checked by can_run)")
}

/// True when the test can run; otherwise prints why and returns false, or
/// panics under KEELSON_REQUIRE_ALL=1.
pub fn can_run(test: &str) -> bool {
    keelson_e2e::needs(test)
        .root()
        .tools(&["ip", "busybox", "bpftool", PYTHON])
        .cgroup2()
        .ok()
}

pub fn sh(script: &str) -> Output {
    run(Command::new("sh").args(["-ec", script]))
}

/// A network namespace whose `eth0` is routed from the host through a veth,
/// deleted on Drop (the host end explicitly, then the namespace).
pub struct RoutedNetns {
    pub ns: Netns,
    pub name: String,
    pub addr: Ipv4Addr,
    pub host_if: String,
}

impl RoutedNetns {
    /// A netns with `eth0` = addr/32 routed from the host through veth
    /// `host_if` (169.254.1.1 on the host side), reaching only `reach`.
    pub fn new(name: String, host_if: String, addr: Ipv4Addr, reach: &str) -> RoutedNetns {
        let ns = Netns::named(name);
        let (n, h) = (&ns.name, &host_if);
        sh(&format!(
            "ip link add {h} type veth peer name eth0 netns {n}
             ip -n {n} addr add {addr}/32 dev eth0
             ip -n {n} link set eth0 up
             ip -n {n} route add 169.254.1.1 dev eth0
             ip -n {n} route add {reach} via 169.254.1.1 dev eth0
             ip addr add 169.254.1.1/32 dev {h}
             ip link set {h} up
             ip route add {addr}/32 dev {h}"
        ));
        RoutedNetns {
            name: ns.name.clone(),
            ns,
            addr,
            host_if,
        }
    }

    /// `ip netns exec NAME` (add the program and its arguments).
    pub fn exec(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]);
        c
    }
}

impl Drop for RoutedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

/// A cgroup2 child directory, removed on Drop (after killing what is left
/// in it).
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn new(name: &str) -> Cgroup {
        let path = cgroup2().join(name);
        let _ = std::fs::remove_dir(&path);
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("create cgroup {}: {e}", path.display()));
        Cgroup { path }
    }

    /// `sh -c` that joins this cgroup, then runs `cmd` in `ns`.
    pub fn run_in(&self, ns: &RoutedNetns, cmd: &str) -> Output {
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec ip netns exec {} {cmd}",
                self.path.display(),
                ns.name
            ))
            .output()
            .expect("run client")
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Ok(pids) = std::fs::read_to_string(self.path.join("cgroup.procs")) {
            for pid in pids.split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).output();
            }
        }
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A removal guard for a pin directory.
pub struct Pins(pub PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = keelson_ebpf::remove_all(&self.0);
    }
}

/// One backend: a netns serving its name over HTTP (port 80, plus
/// /cgi-bin/ip answering the client address it sees) and over UDP.
pub struct BackendNs {
    pub name: String,
    pub ns: RoutedNetns,
    _procs: Vec<Proc>,
    _dir: PathBuf,
}

impl Drop for BackendNs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

const UDP_RESPONDER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto((sys.argv[3] + " " + peer[0]).encode(), peer)
"#;

impl BackendNs {
    pub fn start(name: &str, ns: RoutedNetns) -> BackendNs {
        let dir =
            std::env::temp_dir().join(format!("keelson-ebpf-{}-{}", ns.name, std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("cgi-bin")).unwrap();
        std::fs::write(dir.join("index.html"), name).unwrap();
        let cgi = dir.join("cgi-bin/ip");
        std::fs::write(
            &cgi,
            "#!/bin/sh\necho 'Content-Type: text/plain'\necho\necho \"$REMOTE_ADDR\"\n",
        )
        .unwrap();
        sh(&format!("chmod 755 {}", cgi.display()));
        let addr = ns.addr;
        let httpd = ns
            .exec()
            .args(["busybox", "httpd", "-f", "-p", &format!("{addr}:80"), "-h"])
            .arg(&dir)
            .stdin(Stdio::null())
            .spawn()
            .expect("start httpd");
        let udp = ns
            .exec()
            .args([
                PYTHON,
                "-c",
                UDP_RESPONDER,
                &addr.to_string(),
                &UDP_PORT.to_string(),
                name,
            ])
            .stdin(Stdio::null())
            .spawn()
            .expect("start udp responder");
        let b = BackendNs {
            name: name.to_string(),
            ns,
            _procs: vec![Proc(httpd), Proc(udp)],
            _dir: dir,
        };
        b.wait_listening();
        b
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.ns.exec().args(["ss", "-lntu"]).output().expect("ss");
            let s = String::from_utf8_lossy(&out.stdout);
            if s.contains(&format!("{}:80", self.ns.addr))
                && s.contains(&format!("{}:{UDP_PORT}", self.ns.addr))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "backend {} not listening: {s}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Python (busybox wget segfaults on Debian 12's static busybox): `n`
/// HTTP GETs of http://vip:port/path, each on a new connection; one line
/// each with the body, or "FAIL".
pub fn http_loop(vip: Ipv4Addr, port: u16, path: &str, n: usize) -> String {
    format!(
        "{PYTHON} -c '
import re, socket
for i in range({n}):
    try:
        s = socket.create_connection((\"{vip}\", {port}), timeout=3)
        s.sendall(b\"GET {path} HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n\")
        data = b\"\"
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        s.close()
        print(re.split(rb\"\\r?\\n\\r?\\n\", data, maxsplit=1)[-1].decode().strip())
    except OSError as e:
        print(\"FAIL\", e)
'"
    )
}

/// Python: `n` unconnected UDP datagrams from one socket; prints, per
/// reply, "<payload>|<source address as recvfrom reports it>".
pub fn udp_loop(vip: Ipv4Addr, port: u16, n: usize) -> String {
    format!(
        "{PYTHON} -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
for i in range({n}):
    s.sendto(b\"x\", (\"{vip}\", {port}))
    data, peer = s.recvfrom(2048)
    print(data.decode() + \"|\" + peer[0] + \":\" + str(peer[1]))
'"
    )
}

/// Python: a connected UDP socket (connect4 path): sends one datagram,
/// prints "<payload>|<getpeername>".
pub fn udp_connected(vip: Ipv4Addr, port: u16) -> String {
    format!(
        "{PYTHON} -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.connect((\"{vip}\", {port}))
s.send(b\"x\")
data = s.recv(2048)
print(data.decode() + \"|\" + s.getpeername()[0])
'"
    )
}

/// Python: one TCP connect; prints "peer <getpeername>" or "error <errno name> <seconds>".
pub fn tcp_probe(vip: Ipv4Addr, port: u16) -> String {
    format!(
        "{PYTHON} -c '
import socket, time, errno
s = socket.socket()
s.settimeout(5)
t = time.monotonic()
try:
    s.connect((\"{vip}\", {port}))
    print(\"peer\", s.getpeername()[0], s.getpeername()[1])
except OSError as e:
    print(\"error\", errno.errorcode.get(e.errno, e.errno), round(time.monotonic() - t, 3))
'"
    )
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Ids of the programs attached to a cgroup (bpftool's view).
pub fn cgroup_prog_ids(cg: &Path) -> Vec<u64> {
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cg)
        .output()
        .expect("bpftool cgroup show");
    let s = String::from_utf8_lossy(&out.stdout);
    let mut ids = Vec::new();
    for part in s.split("\"id\":").skip(1) {
        let n: String = part.chars().take_while(|c| c.is_ascii_digit()).collect();
        if let Ok(n) = n.parse() {
            ids.push(n);
        }
    }
    ids.sort();
    ids
}

pub fn prog_exists(id: u64) -> bool {
    Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .output()
        .is_ok_and(|o| o.status.success())
}
