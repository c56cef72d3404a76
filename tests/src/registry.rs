//! A local OCI registry for tests: Debian's `docker-registry` on
//! 127.0.0.1 (plain HTTP) with its storage in a temporary directory, and the
//! test images built from busybox-static (`agent/images/testdata/
//! build-test-images.sh`, cached under /var/cache/keelson/images) pushed to
//! it with skopeo. Nothing comes from the internet.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use keelson_e2e::registry::{Registry, BUSYBOX};
//! let Some(reg) = Registry::with_test_images_or_skip() else { return Ok(()) };
//! let image = reg.image(BUSYBOX); // "127.0.0.1:PORT/keelson-test/busybox:latest"
//! # Ok(()) }
//! ```

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{free_port, require_all};

/// `keelson-test/busybox:latest`: one layer, Cmd ["sh"].
pub const BUSYBOX: &str = "keelson-test/busybox:latest";
/// `keelson-test/whiteout:latest`: two layers; the second deletes
/// /data/old.txt and replaces /etc/replaced (opaque) with new.txt.
pub const WHITEOUT: &str = "keelson-test/whiteout:latest";

/// A user the registry can require ([`Registry::start_with_login`]).
#[derive(Clone, Copy, Debug)]
pub struct Login {
    pub user: &'static str,
    pub password: &'static str,
    /// The password's bcrypt hash, for the registry's htpasswd file.
    pub bcrypt: &'static str,
}

/// The test login: user `puller`, password `pull-s3cret`.
pub const LOGIN: Login = Login {
    user: "puller",
    password: "pull-s3cret",
    bcrypt: "$2b$05$9CuQat6fa2uFqAasDgD.4uEhW68Y/ELylQkH/omdOm3G2bWHODKo6",
};

/// Layout tag -> repository:tag pushed.
const PUSHES: &[(&str, &str)] = &[("busybox", BUSYBOX), ("whiteout", WHITEOUT)];

/// Media types asked for when reading manifests back.
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// The registry binary: `$KEELSON_REGISTRY_BIN`, else Debian's.
pub fn registry_binary() -> PathBuf {
    std::env::var_os("KEELSON_REGISTRY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/docker-registry"))
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).any(|d| d.join(tool).is_file())
}

/// Tools missing for building and pushing the test images.
pub fn missing_image_tools() -> Vec<String> {
    let mut missing = Vec::new();
    for tool in ["umoci", "skopeo", "tar", "sha256sum"] {
        if !on_path(tool) {
            missing.push(tool.to_string());
        }
    }
    let busybox = std::env::var("BUSYBOX").unwrap_or_else(|_| "/bin/busybox".into());
    if !Path::new(&busybox).is_file() {
        missing.push(format!("{busybox} (busybox-static)"));
    }
    missing
}

/// The image build script in this repository.
pub fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/images/testdata/build-test-images.sh")
}

/// Where built image layouts are cached: `$KEELSON_IMAGE_CACHE`, else
/// /var/cache/keelson/images.
pub fn image_cache() -> PathBuf {
    std::env::var_os("KEELSON_IMAGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/keelson/images"))
}

/// Builds the test images (or finds them cached) and returns the OCI
/// layout directory, with tags `busybox` and `whiteout`.
pub fn build_test_images() -> anyhow::Result<PathBuf> {
    let script = build_script();
    let out = Command::new("sh")
        .arg(&script)
        .arg(image_cache())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("run {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let layout = String::from_utf8(out.stdout)?.trim().to_string();
    let layout = PathBuf::from(layout);
    anyhow::ensure!(
        layout.join("index.json").is_file(),
        "{}: no OCI layout at {}",
        script.display(),
        layout.display()
    );
    Ok(layout)
}

/// A running `docker-registry`, killed by PID on drop.
pub struct Registry {
    child: Option<Child>,
    host: IpAddr,
    port: u16,
    dir: tempfile::TempDir,
    login: Option<Login>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("addr", &self.addr())
            .finish()
    }
}

impl Registry {
    /// Starts the registry on a free loopback port and waits until `/v2/`
    /// answers. The error is an `io::Error` of kind `NotFound` when the
    /// binary is missing.
    pub fn start() -> anyhow::Result<Registry> {
        Self::start_on(Ipv4Addr::LOCALHOST.into())
    }

    /// Like [`Registry::start`], listening on `host` (an address of this
    /// machine, e.g. a test bridge's that network namespaces reach) instead
    /// of 127.0.0.1.
    pub fn start_on(host: IpAddr) -> anyhow::Result<Registry> {
        Self::start_with(host, None)
    }

    /// Like [`Registry::start_on`], answering only requests that carry
    /// `login`'s user and password (htpasswd basic auth): anything else
    /// gets 401, as from a private registry.
    pub fn start_with_login(host: IpAddr, login: Login) -> anyhow::Result<Registry> {
        Self::start_with(host, Some(login))
    }

    fn start_with(host: IpAddr, login: Option<Login>) -> anyhow::Result<Registry> {
        let bin = registry_binary();
        if !bin.is_file() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "{} not installed (apt-get install docker-registry)",
                    bin.display()
                ),
            )
            .into());
        }
        let mut last = None;
        for _ in 0..3 {
            match Self::start_once(&bin, host, login) {
                Ok(r) => return Ok(r),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("tried"))
    }

    fn start_once(bin: &Path, host: IpAddr, login: Option<Login>) -> anyhow::Result<Registry> {
        let dir = tempfile::Builder::new()
            .prefix("keelson-registry-")
            .tempdir()?;
        let port = free_port();
        let config = dir.path().join("config.yml");
        let auth = match login {
            Some(l) => {
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(&htpasswd, format!("{}:{}\n", l.user, l.bcrypt))?;
                format!(
                    "auth:\n  htpasswd:\n    realm: keelson-test\n    path: {}\n",
                    htpasswd.display()
                )
            }
            None => String::new(),
        };
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  \
                 maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: {}\n{auth}",
                dir.path().join("storage").display(),
                std::net::SocketAddr::new(host, port)
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let mut reg = Registry {
            child: Some(child),
            host,
            port,
            dir,
            login,
        };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Some(Ok(Some(status))) = reg.child.as_mut().map(Child::try_wait) {
                bail!("docker-registry exited ({status}): {}", reg.log());
            }
            if let Ok((200, _, _)) = reg.http("GET", "/v2/", None) {
                return Ok(reg);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "docker-registry did not answer on {} in 20 s: {}",
            reg.addr(),
            reg.log()
        )
    }

    /// For tests: a running registry, or `None` (after saying why) when it is
    /// not installed and `KEELSON_REQUIRE_ALL` is not `1`.
    ///
    /// # Panics
    ///
    /// If it is installed but does not start, or is missing while required.
    pub fn start_or_skip() -> Option<Registry> {
        match Self::start() {
            Ok(r) => Some(r),
            Err(e)
                if !require_all()
                    && e.downcast_ref::<std::io::Error>()
                        .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound) =>
            {
                eprintln!("skipping: {e}");
                None
            }
            Err(e) => panic!("start docker-registry: {e:#}"),
        }
    }

    /// Like [`Registry::start_or_skip`], with the test images pushed; also
    /// skips (unless required) when umoci, skopeo or busybox are missing.
    pub fn with_test_images_or_skip() -> Option<Registry> {
        let missing = missing_image_tools();
        if !missing.is_empty() {
            if require_all() {
                panic!("test image tools missing: {missing:?}");
            }
            eprintln!("skipping: test image tools missing: {missing:?}");
            return None;
        }
        let reg = Self::start_or_skip()?;
        reg.push_test_images().expect("push test images");
        Some(reg)
    }

    /// `127.0.0.1:PORT` (or the address given to [`Registry::start_on`]).
    pub fn addr(&self) -> String {
        std::net::SocketAddr::new(self.host, self.port).to_string()
    }

    /// `127.0.0.1:PORT/<name>`.
    pub fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.addr())
    }

    /// The registry's storage root (docker/registry/v2/...).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The registry's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Builds (or reuses) the test images and pushes them with skopeo.
    pub fn push_test_images(&self) -> anyhow::Result<()> {
        let layout = build_test_images()?;
        for (tag, dest) in PUSHES {
            self.push_layout(&layout, tag, dest)?;
        }
        Ok(())
    }

    /// `skopeo copy oci:LAYOUT:TAG docker://ADDR/DEST`.
    pub fn push_layout(&self, layout: &Path, tag: &str, dest: &str) -> anyhow::Result<()> {
        let mut cmd = Command::new("skopeo");
        cmd.args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
        ]);
        if let Some(l) = self.login {
            cmd.arg(format!("--dest-creds={}:{}", l.user, l.password));
        }
        let out = cmd
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}", self.image(dest)))
            .stdin(Stdio::null())
            .output()
            .context("run skopeo")?;
        if !out.status.success() {
            bail!(
                "skopeo copy {tag} -> {dest}: {}\nregistry log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
        }
        Ok(())
    }

    /// The manifest `repo:tag` resolves to: its digest (the
    /// Docker-Content-Digest header) and its JSON.
    pub fn manifest(&self, image: &str) -> anyhow::Result<(String, serde_json::Value)> {
        let (repo, tag) = image.rsplit_once(':').context("image without a tag")?;
        let (status, headers, body) =
            self.http("GET", &format!("/v2/{repo}/manifests/{tag}"), Some(ACCEPT))?;
        anyhow::ensure!(status == 200, "GET manifest {image}: HTTP {status}");
        let digest = headers
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("docker-content-digest")
                    .then(|| v.trim().to_string())
            })
            .context("no Docker-Content-Digest header")?;
        Ok((digest, serde_json::from_slice(&body)?))
    }

    /// Overwrites the middle of a stored blob (same length): the registry
    /// then serves bytes that do not match the digest.
    pub fn corrupt_blob(&self, digest: &str) -> anyhow::Result<()> {
        let hex = digest.strip_prefix("sha256:").context("sha256 digest")?;
        let path = self
            .storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data");
        let mut data = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        let mid = data.len() / 2;
        for b in data.iter_mut().skip(mid).take(16) {
            *b ^= 0xff;
        }
        std::fs::write(&path, data).with_context(|| format!("write {}", path.display()))?;
        Ok(())
    }

    /// Kills the registry now (drop does the same).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A plain HTTP/1.0 request to the registry: (status, headers, body).
    fn http(
        &self,
        method: &str,
        path: &str,
        accept: Option<&str>,
    ) -> anyhow::Result<(u16, String, Vec<u8>)> {
        let mut s = TcpStream::connect((self.host, self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let accept = accept
            .map(|a| format!("Accept: {a}\r\n"))
            .unwrap_or_default();
        let auth = self
            .login
            .map(|l| {
                use base64::Engine;
                let b = base64::engine::general_purpose::STANDARD;
                format!(
                    "Authorization: Basic {}\r\n",
                    b.encode(format!("{}:{}", l.user, l.password))
                )
            })
            .unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.0\r\nHost: {}\r\n{accept}{auth}\r\n",
            self.addr()
        )?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .context("no end of headers")?;
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no status")?;
        Ok((status, head, raw[split + 4..].to_vec()))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}
