//! Network namespaces for tests: named (`ip netns add`, so `ip -n`, `ip
//! netns exec` and `--netns NAME` flags work), unique to the process and
//! call, deleted on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::process::sh;

/// A name unique to this process and call: `PREFIX` `PID` `x` `N`. Short
/// enough for interface names when the prefix is (at most 15 bytes).
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A named network namespace with `lo` up, deleted on drop (what is left in
/// it goes with it once no process holds it).
#[derive(Debug)]
pub struct Netns {
    /// `ip netns` name.
    pub name: String,
    /// `/run/netns/NAME`.
    pub path: PathBuf,
}

impl Netns {
    /// A new namespace named [`unique`]`(prefix)`.
    pub fn new(prefix: &str) -> Netns {
        Netns::named(unique(prefix))
    }

    /// A new namespace with exactly this name (a leftover of that name from
    /// a crashed run is deleted first).
    pub fn named(name: String) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns {
            path: keelson_host::netns::named(&name),
            name,
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME ARGS`, which must succeed; its stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// `ip -n NAME ARGS`, success or not.
    pub fn ip_try(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .expect("run ip")
    }

    /// `ip netns exec NAME ARGS`, which must succeed; its stdout.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// A command that runs `program` in this namespace (`ip netns exec`,
    /// which also remounts /sys for it).
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `f` on a thread inside this namespace
    /// ([`keelson_host::netns::in_netns`]).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        keelson_host::netns::in_netns(&self.path, f).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Spawns `cmd` inside this namespace (it inherits the spawning
    /// thread's), without `ip netns exec`.
    pub fn spawn(&self, cmd: &mut Command) -> Child {
        self.run(|| cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")))
    }

    /// Names of the links in this namespace.
    pub fn links(&self) -> Vec<String> {
        self.ip(&["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
