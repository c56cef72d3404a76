//! Every external program Keelson runs, the Debian package that provides it,
//! and one lookup for each.
//!
//! A part that runs a program resolves it once when it starts
//! ([`Tool::find`]); a missing program is a [`MissingTool`] naming the
//! package to install, not a spawn error deep inside a sync. `cargo xtask
//! setup` installs [`setup_packages`]; a test (tests/tests/setup.rs) checks
//! that every program the workspace's sources run is listed here and that its
//! package is installed by setup (or is essential to Debian).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// Who runs a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// The product (agent, proxy, plugin, server) on a node.
    Product,
    /// Tests and benchmarks.
    Test,
    /// Building (build scripts, `cargo xtask`).
    Build,
}

/// An external program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    /// The program's name (looked up in `PATH`), or its absolute path.
    pub name: &'static str,
    /// The Debian package that provides it.
    pub package: &'static str,
    /// Who runs it.
    pub used_by: Use,
    /// What for.
    pub why: &'static str,
}

macro_rules! tools {
    ($($id:ident = $name:literal, $pkg:literal, $use:ident, $why:literal;)*) => {
        $(
            #[doc = concat!("`", $name, "` (Debian `", $pkg, "`): ", $why)]
            pub const $id: Tool = Tool { name: $name, package: $pkg, used_by: Use::$use, why: $why };
        )*
        /// Every external program, product, tests and build.
        pub const ALL: &[Tool] = &[$($id),*];
    };
}

tools! {
    NFT = "nft", "nftables", Product, "the Service proxy's nftables table (nftables mode; eBPF mode's masquerade table)";
    CONNTRACK = "conntrack", "conntrack", Product, "the Service proxy flushes stale UDP conntrack entries";
    IP = "ip", "iproute2", Product, "pod sandboxes, the cluster DNS address, namespaced commands";
    RUNC = "runc", "runc", Product, "the default OCI runtime";
    CRUN = "crun", "crun", Product, "an OCI runtime (--runtime crun)";
    ETCD = "etcd", "etcd-server", Test, "the etcd storage backend's tests";
    DOCKER_REGISTRY = "/usr/bin/docker-registry", "docker-registry", Test, "a local registry for image tests";
    SKOPEO = "skopeo", "skopeo", Test, "pushes test images to the local registry";
    UMOCI = "umoci", "umoci", Test, "builds the test images (OCI layouts)";
    BUSYBOX = "/bin/busybox", "busybox-static", Test, "the test images' only binary";
    KUBECTL = "kubectl", "kubectl", Test, "kubectl against the API server (versioned binaries kubectl.1.NN beside it)";
    PYTHON3 = "python3", "python3-minimal", Test, "the Python kubernetes client test";
    GIT = "git", "git", Test, "listing the workspace's sources (the setup test)";
    CURL = "curl", "curl", Test, "HTTP requests to pods, Services and the node API";
    NSENTER = "nsenter", "util-linux", Test, "running commands in a node's or pod's namespaces";
    UNSHARE = "unshare", "util-linux", Test, "a mount namespace per test node";
    PGREP = "pgrep", "procps", Test, "finding test pods' processes";
    SYSCTL = "sysctl", "procps", Test, "forwarding and redirects in test namespaces";
    NSTAT = "nstat", "iproute2", Test, "kernel counters in failure messages";
    KILL = "kill", "procps", Test, "signalling test processes";
    TIMEOUT = "timeout", "coreutils", Test, "bounding commands run in pods";
    CHROOT = "chroot", "coreutils", Test, "running a command in an unpacked rootfs";
    ID = "id", "coreutils", Build, "checking for root in cargo xtask";
    UMOUNT = "umount", "mount", Test, "unmounting what a failed test left";
    MOUNT = "mount", "mount", Test, "mounting bpffs/tmpfs in a test node's mount namespace";
    SH = "sh", "dash", Test, "shell snippets in tests";
    SYSTEMD_ANALYZE = "systemd-analyze", "systemd", Test, "verifying the systemd units";
    BPFTOOL = "bpftool", "bpftool", Test, "inspecting BPF programs and links";
    IPTABLES = "iptables", "iptables", Test, "Debian's portmap plugin (CNI comparison tests)";
    PING = "ping", "iputils-ping", Test, "pod-to-pod reachability";
    CNI_BRIDGE = "/usr/lib/cni/bridge", "containernetworking-plugins", Test, "a reference CNI plugin (test agents' pod network)";
    CNI_HOST_LOCAL = "/usr/lib/cni/host-local", "containernetworking-plugins", Test, "a reference IPAM plugin";
    CNI_PTP = "/usr/lib/cni/ptp", "containernetworking-plugins", Test, "the reference plugin keelson-cni's bench compares with";
    CNI_PORTMAP = "/usr/lib/cni/portmap", "containernetworking-plugins", Test, "hostPorts with keelson-cni";
    CLANG = "clang-19", "clang-19", Build, "compiles the eBPF programs";
    PROTOC = "protoc", "protobuf-compiler", Build, "etcd-client's and containerd-client's build scripts";
    DPKG_QUERY = "dpkg-query", "dpkg", Build, "cargo xtask setup: what is installed";
    APT_GET = "apt-get", "apt", Build, "cargo xtask setup: installing packages";
    TAR = "tar", "tar", Build, "packing test images";
    SHA256SUM = "sha256sum", "coreutils", Build, "cache keys of test images";
}

/// Programs the build runs that do not come from Debian packages, and where
/// they come from instead.
pub const NOT_FROM_APT: &[(&str, &str)] = &[
    (
        "cargo",
        "the Rust toolchain (rustup, pinned in rust-toolchain.toml)",
    ),
    ("rustc", "the Rust toolchain"),
    (
        "go",
        "the Go toolchain at /usr/local/go (building upstream Kubernetes programs only)",
    ),
    (
        "cargo-fuzz",
        "crates.io: `cargo xtask setup` installs it into /var/cache/keelson/cargo-tools (fuzz targets only)",
    ),
];

/// Debian packages needed beyond the programs above: headers and libraries
/// that builds read, and tools that only come as Recommends.
pub const BUILD_PACKAGES: &[(&str, &str)] = &[
    (
        "libprotobuf-dev",
        "google/protobuf/*.proto for etcd-client and containerd-client (only a Recommends of protobuf-compiler)",
    ),
    ("libbpf-dev", "libbpf headers for the eBPF programs"),
    (
        "build-essential",
        "a C toolchain for bundled SQLite and ring",
    ),
    ("pkg-config", "build scripts that look for system libraries"),
    ("python3-pip", "installs the Python kubernetes client"),
];

/// Every Debian package `cargo xtask setup` installs: the packages of
/// [`ALL`] and [`BUILD_PACKAGES`], sorted, without duplicates.
pub fn setup_packages() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = ALL
        .iter()
        .map(|t| t.package)
        .chain(BUILD_PACKAGES.iter().map(|(p, _)| *p))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// A program that is not installed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name} not found in {searched} (install the Debian package {package}; needed for {why})")]
pub struct MissingTool {
    /// The program.
    pub name: &'static str,
    /// Its package.
    pub package: &'static str,
    /// What for.
    pub why: &'static str,
    /// Where it was looked for.
    pub searched: String,
}

/// `PATH` when the environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl Tool {
    /// The program's path: an absolute name if that file exists, else the
    /// first executable file of that name in `PATH` (or [`DEFAULT_PATH`]).
    pub fn find(&self) -> Result<PathBuf, MissingTool> {
        let path = std::env::var_os("PATH");
        self.find_in(path.as_deref().unwrap_or(OsStr::new(DEFAULT_PATH)))
    }

    /// [`Tool::find`] with `path` as the search path.
    pub fn find_in(&self, path: &OsStr) -> Result<PathBuf, MissingTool> {
        let missing = |searched: String| MissingTool {
            name: self.name,
            package: self.package,
            why: self.why,
            searched,
        };
        if self.name.starts_with('/') {
            let p = Path::new(self.name);
            return if is_executable(p) {
                Ok(p.to_path_buf())
            } else {
                Err(missing(self.name.to_string()))
            };
        }
        std::env::split_paths(path)
            .map(|dir| dir.join(self.name))
            .find(|p| is_executable(p))
            .ok_or_else(|| missing(format!("PATH={}", path.to_string_lossy())))
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The tool named `name` (a program name or absolute path), if listed.
pub fn by_name(name: &str) -> Option<&'static Tool> {
    let base = name.rsplit('/').next().unwrap_or(name);
    ALL.iter()
        .find(|t| t.name == name || t.name.rsplit('/').next() == Some(base))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn finds_the_first_executable_in_path_and_names_the_package_otherwise() {
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        // Not executable in d1: skipped; executable in d2: found.
        std::fs::write(d1.path().join("nft"), "").unwrap();
        let exe = d2.path().join("nft");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths([d1.path(), d2.path()]).unwrap();
        assert_eq!(NFT.find_in(&path).unwrap(), exe);

        let err = CONNTRACK.find_in(&path).unwrap_err();
        assert_eq!(err.package, "conntrack");
        let msg = err.to_string();
        assert!(msg.starts_with("conntrack not found in PATH="), "{msg}");
        assert!(
            msg.contains("install the Debian package conntrack"),
            "{msg}"
        );
    }

    #[test]
    fn absolute_names_are_checked_as_they_are() {
        let t = Tool {
            name: "/nonexistent/keelson-tool",
            package: "p",
            used_by: Use::Test,
            why: "w",
        };
        assert_eq!(
            t.find_in(OsStr::new("/usr/bin")).unwrap_err().searched,
            "/nonexistent/keelson-tool"
        );
    }

    #[test]
    fn setup_installs_every_listed_package_and_the_build_inputs() {
        let p = setup_packages();
        for t in ALL {
            assert!(p.contains(&t.package), "{}", t.package);
        }
        assert!(p.contains(&"libprotobuf-dev"));
        assert!(p.windows(2).all(|w| w[0] < w[1]), "sorted, no duplicates");
        assert_eq!(by_name("/usr/sbin/nft"), Some(&NFT));
        assert_eq!(by_name("docker-registry"), Some(&DOCKER_REGISTRY));
        assert_eq!(by_name("no-such-tool"), None);
    }
}
