//! The node side of pod work: images, the OCI runtime, cgroups, sandboxes,
//! CNI and per-pod files, all rooted at the agent's flags. The worker calls
//! these; the planner never does.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use keelson_host::fs::write_atomic;
use keelson_images::auth::Credential;
use keelson_images::{ImageStore, PullPolicy, PulledImage};
use keelson_runtime::cgroups::{self, CgroupManager, QosClass};
use keelson_runtime::{ContainerConfig, ContainerInfo, Mount, OciRuntime, Runtime, sandbox};
use serde::{Deserialize, Serialize};

use crate::network::{Attachment, Cni};

use super::{spec, volumes};

/// Container labels (kept by the runtime for adoption).
pub mod labels {
    /// Pod uid.
    pub const POD_UID: &str = "keelson.dev/pod-uid";
    /// Pod namespace.
    pub const POD_NAMESPACE: &str = "keelson.dev/pod-namespace";
    /// Pod name.
    pub const POD_NAME: &str = "keelson.dev/pod-name";
    /// Container name.
    pub const CONTAINER: &str = "keelson.dev/container";
    /// Attempt (restartCount).
    pub const ATTEMPT: &str = "keelson.dev/attempt";
    /// Crash streak before this attempt.
    pub const STREAK: &str = "keelson.dev/streak";
    /// containerStatuses[].imageID.
    pub const IMAGE_ID: &str = "keelson.dev/image-id";
}

/// Where things live and what to run.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// --root-dir.
    pub root_dir: PathBuf,
    /// --run-dir.
    pub run_dir: PathBuf,
    /// --pod-log-dir.
    pub pod_log_dir: PathBuf,
    /// OCI runtime binary.
    pub runtime_bin: PathBuf,
    /// Runtime name for containerIDs (`runc`).
    pub runtime_name: String,
    /// --cgroup-root.
    pub cgroup_root: String,
    /// CNI runtime.
    pub cni: Cni,
    /// Plain-HTTP registries.
    pub insecure_registries: Vec<String>,
    /// This node.
    pub node_name: String,
    /// The node's IP.
    pub node_ip: IpAddr,
    /// Where pods with dnsPolicy ClusterFirst resolve names (None: the
    /// node's resolv.conf).
    pub cluster_dns: Option<spec::ClusterDns>,
}

/// Per-pod state kept in `root-dir/pods/<uid>/state.json` (written
/// atomically), enough to tear the pod down after an agent restart.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PodState {
    /// Pod uid.
    pub uid: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// QoS class (Guaranteed, Burstable, BestEffort).
    pub qos: String,
    /// Pod cgroup path.
    pub cgroup_parent: String,
    /// Sandbox files.
    pub netns: PathBuf,
    /// IPC namespace file.
    pub ipcns: PathBuf,
    /// UTS namespace file.
    pub utsns: PathBuf,
    /// The node's namespaces the pod shares (hostNetwork, hostIPC, hostPID).
    #[serde(default)]
    pub host_namespaces: sandbox::HostNamespaces,
    /// The CNI attachment.
    pub attachment: Option<Attachment>,
    /// The CNI ADD result (prevResult for DEL).
    pub cni_result: serde_json::Value,
    /// Pod IPs.
    pub pod_ips: Vec<IpAddr>,
}

/// A failed start, classified for the status.
#[derive(Debug)]
pub struct StartError {
    /// Pull or create.
    pub kind: super::plan::FailureKind,
    /// Full message.
    pub message: String,
}

/// The node side.
pub struct Host {
    /// Config.
    pub cfg: HostConfig,
    /// Image store.
    pub images: Arc<ImageStore>,
    /// Container runtime.
    pub runtime: Arc<dyn Runtime>,
    /// Cgroups.
    pub cgroups: CgroupManager,
}

/// The runtime container ID of `container` attempt `attempt` of pod `uid`.
pub fn container_id(uid: &str, container: &str, attempt: u32) -> String {
    let short: String = uid.chars().filter(|c| *c != '-').take(12).collect();
    format!("k{short}-{container}-{attempt}")
}

/// The image pull policy (default Always for :latest or no tag, else IfNotPresent).
pub fn pull_policy(c: &Container) -> PullPolicy {
    match c.image_pull_policy.as_deref() {
        Some("Always") => PullPolicy::Always,
        Some("Never") => PullPolicy::Never,
        Some("IfNotPresent") => PullPolicy::IfNotPresent,
        _ => {
            let image = c.image.as_deref().unwrap_or("");
            let last = image.rsplit('/').next().unwrap_or(image);
            if image.contains('@') || (last.contains(':') && !last.ends_with(":latest")) {
                PullPolicy::IfNotPresent
            } else {
                PullPolicy::Always
            }
        }
    }
}

fn io(op: String) -> impl FnOnce(std::io::Error) -> String {
    move |e| format!("{op}: {e}")
}

impl Host {
    /// The file mounted at a container attempt's terminationMessagePath.
    pub fn termination_log(&self, uid: &str, container: &str, attempt: u32) -> PathBuf {
        self.pod_dir(uid)
            .join("termination")
            .join(format!("{container}-{attempt}"))
    }

    /// An exited attempt's termination message, as the kubelet reads it:
    /// the file (at most 4 KiB), or, under FallbackToLogsOnError when that
    /// is empty and the exit code is not 0, the last 80 lines (at most
    /// 2 KiB) of its log.
    pub fn termination_message(
        &self,
        pod: &Pod,
        container: &Container,
        attempt: u32,
        exit_code: i32,
    ) -> Option<String> {
        const MAX: u64 = 4096;
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        let mut text = String::new();
        if let Ok(f) = std::fs::File::open(self.termination_log(uid, &container.name, attempt)) {
            use std::io::Read;
            let mut buf = Vec::new();
            let _ = f.take(MAX).read_to_end(&mut buf);
            text = String::from_utf8_lossy(&buf).into_owned();
        }
        let fallback =
            container.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
        if text.is_empty() && fallback && exit_code != 0 {
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            let name = pod.metadata.name.as_deref().unwrap_or_default();
            let log = self
                .log_dir(ns, name, uid)
                .join(&container.name)
                .join(format!("{attempt}.log"));
            let data = std::fs::read(log).unwrap_or_default();
            let (lines, _) = crate::node_api::logs::parse(&data);
            let out =
                crate::node_api::logs::render(&crate::node_api::logs::tail(lines, Some(80)), false);
            let start = out.len().saturating_sub(2048);
            text = String::from_utf8_lossy(&out[start..]).into_owned();
        }
        Some(text)
    }
    /// Opens the image store, the runtime and the cgroup manager.
    pub fn new(cfg: HostConfig) -> anyhow::Result<Self> {
        use anyhow::Context;
        let images = ImageStore::open(
            &crate::agent::image_store_dir(&cfg.root_dir),
            cfg.insecure_registries.clone(),
        )
        .with_context(|| format!("open image store in {}", cfg.root_dir.display()))?;
        let shim_exe = std::env::current_exe().context("find the keelson binary")?;
        let runtime = OciRuntime {
            runtime: cfg.runtime_bin.clone(),
            state_dir: cfg.run_dir.join("containers"),
            shim_exe,
        };
        std::fs::create_dir_all(&runtime.state_dir)
            .with_context(|| format!("create {}", runtime.state_dir.display()))?;
        std::fs::create_dir_all(cfg.root_dir.join("pods"))
            .with_context(|| format!("create {}/pods", cfg.root_dir.display()))?;
        let cgroups = CgroupManager::new("/sys/fs/cgroup", &cfg.cgroup_root)
            .with_context(|| "detect cgroups under /sys/fs/cgroup".to_string())?;
        Ok(Self {
            cfg,
            images: Arc::new(images),
            runtime: Arc::new(runtime),
            cgroups,
        })
    }

    /// The sandbox run dir (namespaces only live here).
    pub fn sandbox_dir(&self) -> PathBuf {
        self.cfg.run_dir.join("sandboxes")
    }

    /// The pod's state dir.
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.cfg.root_dir.join("pods").join(uid)
    }

    /// The pod's log dir.
    pub fn log_dir(&self, ns: &str, name: &str, uid: &str) -> PathBuf {
        self.cfg.pod_log_dir.join(format!("{ns}_{name}_{uid}"))
    }

    /// Reads the pod's saved state.
    pub fn load_state(&self, uid: &str) -> Option<PodState> {
        let b = std::fs::read(self.pod_dir(uid).join("state.json")).ok()?;
        serde_json::from_slice(&b).ok()
    }

    fn save_state(&self, st: &PodState) -> Result<(), String> {
        let p = self.pod_dir(&st.uid).join("state.json");
        let b = serde_json::to_vec_pretty(st).unwrap_or_default();
        write_atomic(&p, &b).map_err(|e| e.to_string())
    }

    /// Uids with a pod dir under root-dir/pods.
    pub fn pod_dirs(&self) -> Vec<String> {
        std::fs::read_dir(self.cfg.root_dir.join("pods"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Pod cgroup, namespaces, CNI ADD, /etc files. On failure what was
    /// made is released again.
    pub async fn create_sandbox(&self, pod: &Pod) -> Result<PodState, String> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let domain = self
            .cfg
            .cluster_dns
            .as_ref()
            .map_or("cluster.local", |d| d.domain.as_str());
        let hostname = spec::pod_hostname(pod, domain);
        let pod_spec = pod.spec.as_ref();
        let host_ns = sandbox::HostNamespaces {
            network: spec::host_network(pod),
            ipc: pod_spec.and_then(|s| s.host_ipc).unwrap_or(false),
            pid: pod_spec.and_then(|s| s.host_pid).unwrap_or(false),
        };
        let dir = self.pod_dir(&uid);
        std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        let qos = cgroups::qos_class(pod);
        let res = cgroups::pod_resources(pod);
        let cgroup_parent = self
            .cgroups
            .ensure_pod(&uid, qos, &res)
            .map_err(|e| format!("create pod cgroup: {e}"))?;
        let sb_dir = self.sandbox_dir();
        let (u2, h2) = (uid.clone(), hostname.clone());
        let sb =
            tokio::task::spawn_blocking(move || sandbox::create_with(&sb_dir, &u2, &h2, host_ns))
                .await
                .map_err(|e| format!("create sandbox: {e}"))?
                .map_err(|e| format!("create sandbox: {e}"))?;
        let mut st = PodState {
            uid: uid.clone(),
            namespace: ns.clone(),
            name: name.clone(),
            qos: qos.as_str().into(),
            cgroup_parent,
            netns: sb.netns.clone(),
            ipcns: sb.ipcns.clone(),
            utsns: sb.utsns.clone(),
            host_namespaces: sb.host,
            ..Default::default()
        };
        if spec::host_network(pod) {
            st.pod_ips = vec![self.cfg.node_ip];
        } else {
            let att = Attachment {
                container_id: uid.clone(),
                netns: sb.netns.clone(),
                ifname: "eth0".into(),
                args: crate::network::conf::k8s_args(&ns, &name, &uid),
            };
            // Saved before ADD: a crash in between still lets a later start DEL.
            st.attachment = Some(att.clone());
            self.save_state(&st)?;
            let added = async {
                let list = self.cfg.cni.load().await?;
                self.cfg.cni.add(&list, &att).await
            }
            .await;
            match added {
                Ok(r) => {
                    st.pod_ips = r.ips.clone();
                    st.cni_result = r.raw;
                }
                Err(e) => {
                    self.release_network(&st).await;
                    let _ = sandbox::remove(&self.sandbox_dir(), &uid);
                    return Err(format!("set up pod network: {e}"));
                }
            }
        }
        let ip = st.pod_ips.first().map(|i| i.to_string());
        let node_hosts = host_ns
            .network
            .then(|| std::fs::read_to_string("/etc/hosts").unwrap_or_default());
        let node_hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_string();
        let files = [
            (
                "hosts",
                spec::pod_hosts_file(pod, ip.as_deref(), &hostname, domain, node_hosts.as_deref()),
            ),
            (
                "hostname",
                format!(
                    "{}\n",
                    if host_ns.network {
                        &node_hostname
                    } else {
                        &hostname
                    }
                ),
            ),
            (
                "resolv.conf",
                spec::resolv_conf(
                    pod,
                    &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
                    self.cfg.cluster_dns.as_ref(),
                ),
            ),
        ];
        for (f, text) in files {
            let p = dir.join(f);
            write_atomic(&p, text.as_bytes()).map_err(|e| e.to_string())?;
        }
        self.save_state(&st)?;
        Ok(st)
    }

    async fn release_network(&self, st: &PodState) {
        let Some(att) = &st.attachment else { return };
        match self.cfg.cni.load().await {
            Ok(list) => {
                let prev = (!st.cni_result.is_null()).then_some(&st.cni_result);
                if let Err(e) = self.cfg.cni.del(&list, att, prev).await {
                    tracing::warn!(pod = %st.uid, "{e}");
                }
            }
            Err(e) => tracing::warn!(pod = %st.uid, "CNI DEL skipped: {e}"),
        }
    }

    /// Makes the image present. The pull future of keelson-images is not
    /// provably `Send` (a higher-ranked lifetime in its layer download
    /// closure), so it runs on a blocking thread with `block_on`.
    pub async fn pull(
        &self,
        reference: &str,
        policy: PullPolicy,
        creds: &[Credential],
    ) -> Result<PulledImage, keelson_images::ImageError> {
        let images = self.images.clone();
        let r = reference.to_string();
        let mut creds = creds.to_vec();
        creds.extend(self.node_credentials());
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || handle.block_on(images.ensure_with(&r, policy, &creds)))
            .await
            .map_err(|e| keelson_images::ImageError::Pull {
                reference: reference.to_string(),
                detail: format!("pull task: {e}"),
            })?
    }

    /// The node's own registry credentials, read at each pull (so an edit
    /// applies at once): `<root dir>/config.json`, then
    /// `$HOME/.docker/config.json`, in docker's format, as the kubelet
    /// reads its root directory's and the user's. A malformed file is
    /// logged and skipped: a pull without it may still work.
    fn node_credentials(&self) -> Vec<Credential> {
        let mut files = vec![self.cfg.root_dir.join("config.json")];
        if let Some(home) = std::env::var_os("HOME") {
            files.push(PathBuf::from(home).join(".docker/config.json"));
        }
        let mut out = Vec::new();
        for f in files {
            let Ok(bytes) = std::fs::read(&f) else {
                continue;
            };
            match keelson_images::auth::parse_config_json(&bytes) {
                Ok(c) => out.extend(c),
                Err(e) => tracing::warn!("registry credentials {}: {e}", f.display()),
            }
        }
        out
    }

    /// Where a pod volume lives on the node:
    /// `<pod dir>/volumes/<kind>/<name>`.
    pub fn volume_dir(&self, uid: &str, v: &k8s_openapi::api::core::v1::Volume) -> PathBuf {
        let kind = if v.config_map.is_some() {
            "configmap"
        } else if v.secret.is_some() {
            "secret"
        } else if v.downward_api.is_some() {
            "downward-api"
        } else if v.projected.is_some() {
            "projected"
        } else {
            "empty-dir"
        };
        self.pod_dir(uid).join("volumes").join(kind).join(&v.name)
    }

    /// Writes the files of every ConfigMap, Secret, downward API and
    /// projected volume of the pod (atomically; unchanged ones are left
    /// alone). Secret and projected volumes live on a tmpfs, never on disk.
    pub async fn setup_volumes(
        &self,
        pod: &Pod,
        st: &PodState,
        sources: &volumes::Sources,
    ) -> Result<(), StartError> {
        use super::plan::FailureKind;
        let vols = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        for v in vols.iter().filter(|v| volumes::is_written(v)) {
            let files = volumes::render(pod, v, sources)
                .map_err(|e| StartError {
                    kind: FailureKind::Config,
                    message: e.to_string(),
                })?
                .unwrap_or_default();
            let dir = self.volume_dir(&st.uid, v);
            let sensitive = volumes::is_sensitive(v);
            let name = v.name.clone();
            tokio::task::spawn_blocking(move || -> Result<(), String> {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("create {}: {e}", dir.display()))?;
                if sensitive {
                    keelson_host::mounts::mount_tmpfs(&dir, None).map_err(|e| e.to_string())?;
                }
                super::atomic::write(&dir, &files)
                    .map(|_| ())
                    .map_err(|e| format!("write volume {name} in {}: {e}", dir.display()))
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
            .map_err(|message| StartError {
                kind: FailureKind::Create,
                message,
            })?;
        }
        Ok(())
    }

    /// What fieldRefs and resourceFieldRefs of the pod read beyond its object.
    pub fn field_values(&self, st: &PodState) -> spec::FieldValues {
        let facts = crate::node::HostFacts::read(Path::new("/proc"), Path::new("/etc"));
        spec::FieldValues {
            pod_ip: st
                .pod_ips
                .first()
                .map(|i| i.to_string())
                .unwrap_or_default(),
            host_ip: self.cfg.node_ip.to_string(),
            node_name: self.cfg.node_name.clone(),
            node_cpu_millis: facts.cpus as u64 * 1000,
            node_memory_bytes: facts.memory_bytes,
        }
    }

    /// The container's image if its pull policy lets the store's copy do
    /// (IfNotPresent and Never) and the store has it: no network. `None`:
    /// it must be pulled (policy Always, or absent under IfNotPresent);
    /// absent under Never is the `ErrImageNeverPull` failure.
    pub fn present_image(&self, c: &Container) -> Result<Option<PulledImage>, StartError> {
        let image_ref = c.image.clone().unwrap_or_default();
        let fail = |e: keelson_images::ImageError| StartError {
            kind: super::plan::FailureKind::of_image_error(&e),
            message: e.to_string(),
        };
        let policy = pull_policy(c);
        if policy == PullPolicy::Always {
            // A bad reference fails here too, before any Pulling Event.
            keelson_images::ImageRef::parse(&image_ref).map_err(|e| {
                fail(keelson_images::ImageError::InvalidReference {
                    reference: image_ref.clone(),
                    reason: e.0,
                })
            })?;
            return Ok(None);
        }
        match self.images.get(&image_ref).map_err(fail)? {
            Some(img) => Ok(Some(img)),
            None if policy == PullPolicy::Never => {
                Err(fail(keelson_images::ImageError::NeverPull {
                    reference: image_ref,
                }))
            }
            None => Ok(None),
        }
    }

    /// Pulls the container's image per its pull policy, trying `creds`.
    pub async fn pull_image(
        &self,
        c: &Container,
        creds: &[Credential],
    ) -> Result<PulledImage, StartError> {
        let image_ref = c.image.clone().unwrap_or_default();
        self.pull(&image_ref, pull_policy(c), creds)
            .await
            .map_err(|e| StartError {
                kind: super::plan::FailureKind::of_image_error(&e),
                message: e.to_string(),
            })
    }

    /// Bytes on disk of the image's unpacked layers (what `keelson images
    /// ls` shows; the `Pulled` Event says it).
    pub async fn image_size(&self, image: &PulledImage) -> u64 {
        let image = image.clone();
        tokio::task::spawn_blocking(move || image.size_on_disk())
            .await
            .unwrap_or(0)
    }

    /// Builds the config from the image and starts the container.
    #[allow(clippy::too_many_arguments)]
    pub async fn start_container(
        &self,
        pod: &Pod,
        st: &PodState,
        c: &Container,
        image: PulledImage,
        attempt: u32,
        streak: u32,
        env_src: spec::EnvSources<'_>,
    ) -> Result<(String, PulledImage), StartError> {
        use super::plan::FailureKind;
        let create = |message: String| StartError {
            kind: FailureKind::Create,
            message,
        };
        let uid = &st.uid;
        let id = container_id(uid, &c.name, attempt);
        let cdir = self
            .pod_dir(uid)
            .join("containers")
            .join(format!("{}-{attempt}", c.name));
        std::fs::create_dir_all(&cdir)
            .map_err(|e| create(format!("create {}: {e}", cdir.display())))?;
        let (layers, cd) = (image.layers.clone(), cdir.clone());
        let rootfs =
            tokio::task::spawn_blocking(move || keelson_images::mount_rootfs(&layers, &cd))
                .await
                .map_err(|e| create(format!("mount rootfs: {e}")))?
                .map_err(|e| create(format!("mount rootfs: {e}")))?;
        let config_err = |message: String| StartError {
            kind: FailureKind::Config,
            message,
        };
        let env =
            spec::env(pod, c, &image.config, env_src).map_err(|e| config_err(e.to_string()))?;
        let args = spec::resolve_args(c, &image.config, &spec::env_map(&env))
            .map_err(|e| config_err(e.to_string()))?;
        let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
        let (uid_n, gid_n) =
            spec::user(pod, c, &image.config, &|n| spec::passwd_lookup(&passwd, n));
        let mut mounts = self.mounts(pod, st, c).map_err(create)?;
        // The termination message file, writable by any user in the
        // container, read once it exits.
        let term = self.termination_log(uid, &c.name, attempt);
        if let Some(dir) = term.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| create(format!("create {}: {e}", dir.display())))?;
        }
        std::fs::write(&term, b"")
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&term, std::fs::Permissions::from_mode(0o666))
            })
            .map_err(|e| create(format!("create {}: {e}", term.display())))?;
        mounts.push(Mount {
            source: term,
            destination: c
                .termination_message_path
                .clone()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/dev/termination-log".into()),
            readonly: false,
        });
        let log_path = self
            .log_dir(&st.namespace, &st.name, uid)
            .join(&c.name)
            .join(format!("{attempt}.log"));
        if let Some(p) = log_path.parent() {
            std::fs::create_dir_all(p)
                .map_err(|e| create(format!("create {}: {e}", p.display())))?;
        }
        let sc = c.security_context.as_ref();
        let caps = sc.and_then(|s| s.capabilities.as_ref());
        let hostname = std::fs::read_to_string(self.pod_dir(uid).join("hostname"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let mut lbl = BTreeMap::new();
        lbl.insert(labels::POD_UID.into(), uid.clone());
        lbl.insert(labels::POD_NAMESPACE.into(), st.namespace.clone());
        lbl.insert(labels::POD_NAME.into(), st.name.clone());
        lbl.insert(labels::CONTAINER.into(), c.name.clone());
        lbl.insert(labels::ATTEMPT.into(), attempt.to_string());
        lbl.insert(labels::STREAK.into(), streak.to_string());
        lbl.insert(labels::IMAGE_ID.into(), image.repo_digest.clone());
        let config = ContainerConfig {
            id: id.clone(),
            labels: lbl,
            rootfs,
            args,
            env,
            cwd: c
                .working_dir
                .clone()
                .or(image.config.working_dir.clone())
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| "/".into()),
            uid: uid_n,
            gid: gid_n,
            hostname,
            sandbox: sandbox::Sandbox {
                netns: st.netns.clone(),
                ipcns: st.ipcns.clone(),
                utsns: st.utsns.clone(),
                host: st.host_namespaces,
            },
            cgroups_path: cgroups::container_cgroups_path(&st.cgroup_parent, &id),
            resources: cgroups::container_resources(c),
            readonly_rootfs: sc
                .and_then(|s| s.read_only_root_filesystem)
                .unwrap_or(false),
            cap_add: caps.and_then(|c| c.add.clone()).unwrap_or_default(),
            cap_drop: caps.and_then(|c| c.drop.clone()).unwrap_or_default(),
            privileged: sc.and_then(|s| s.privileged).unwrap_or(false),
            mounts,
            log_path,
            stdin: c.stdin == Some(true),
        };
        self.runtime
            .start(&config)
            .await
            .map_err(|e| create(e.to_string()))?;
        Ok((id, image))
    }

    fn mounts(&self, pod: &Pod, st: &PodState, c: &Container) -> Result<Vec<Mount>, String> {
        let dir = self.pod_dir(&st.uid);
        let mut out = vec![
            Mount {
                source: dir.join("hosts"),
                destination: "/etc/hosts".into(),
                readonly: false,
            },
            Mount {
                source: dir.join("hostname"),
                destination: "/etc/hostname".into(),
                readonly: false,
            },
            Mount {
                source: dir.join("resolv.conf"),
                destination: "/etc/resolv.conf".into(),
                readonly: false,
            },
        ];
        let volumes = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        for vm in c.volume_mounts.iter().flatten() {
            let v = volumes
                .iter()
                .find(|v| v.name == vm.name)
                .ok_or_else(|| format!("volumeMount {}: no volume of that name", vm.name))?;
            let mut readonly = vm.read_only.unwrap_or(false);
            let source = if volumes::is_written(v) {
                // Set up by setup_volumes; always read-only, as the kubelet
                // mounts API data.
                readonly = true;
                self.volume_dir(&st.uid, v)
            } else if let Some(ed) = &v.empty_dir {
                let p = self.volume_dir(&st.uid, v);
                std::fs::create_dir_all(&p)
                    .map_err(io(format!("create emptyDir {}", p.display())))?;
                if ed.medium.as_deref() == Some("Memory") {
                    let size = ed
                        .size_limit
                        .as_ref()
                        .map(|q| keelson_rules::quantity::value(&q.0))
                        .transpose()
                        .map_err(|e| format!("emptyDir {}: sizeLimit: {e}", v.name))?;
                    keelson_host::mounts::mount_tmpfs(&p, size.map(|s| s.max(4096) as u64))
                        .map_err(|e| e.to_string())?;
                }
                // World-writable, as the kubelet makes every emptyDir (after
                // the tmpfs mount, whose root it is then): a container
                // running as any user writes there.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777))
                    .map_err(io(format!("chmod emptyDir {}", p.display())))?;
                p
            } else if let Some(hp) = &v.host_path {
                let p = PathBuf::from(&hp.path);
                match hp.type_.as_deref() {
                    Some("DirectoryOrCreate") => {
                        std::fs::create_dir_all(&p)
                            .map_err(io(format!("create hostPath {}", p.display())))?;
                    }
                    Some("FileOrCreate") if !p.exists() => {
                        std::fs::write(&p, b"")
                            .map_err(io(format!("create hostPath {}", p.display())))?;
                    }
                    Some("Directory") if !p.is_dir() => {
                        return Err(format!("hostPath {}: not a directory", p.display()));
                    }
                    Some("File") if !p.is_file() => {
                        return Err(format!("hostPath {}: not a file", p.display()));
                    }
                    _ => {}
                }
                p
            } else {
                return Err(format!(
                    "volume {}: unsupported volume type (emptyDir, hostPath, configMap, \
                     secret, downwardAPI and projected are)",
                    v.name
                ));
            };
            let source = match vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
                // A file of a written volume: bound as it is now (the
                // symlinks resolved), so it does not follow updates, as on
                // a kubelet.
                Some(sp) if !sp.contains("..") && volumes::is_written(v) => {
                    let p = source.join(sp);
                    std::fs::canonicalize(&p)
                        .map_err(io(format!("subPath {sp} of volume {}", v.name)))?
                }
                Some(sp) if !sp.contains("..") => {
                    let p = source.join(sp);
                    std::fs::create_dir_all(&p)
                        .map_err(io(format!("create subPath {}", p.display())))?;
                    p
                }
                Some(sp) => return Err(format!("volumeMount {}: bad subPath {sp}", vm.name)),
                None => source,
            };
            out.push(Mount {
                source,
                destination: vm.mount_path.clone(),
                readonly,
            });
        }
        Ok(out)
    }

    /// Removes a stopped container and its rootfs.
    pub async fn remove_container(&self, info: &ContainerInfo) {
        if let Err(e) = self.runtime.remove(&info.id).await {
            tracing::warn!(container = %info.id, "{e}");
        }
        let (Some(uid), Some(name), Some(attempt)) = (
            info.labels.get(labels::POD_UID),
            info.labels.get(labels::CONTAINER),
            info.labels.get(labels::ATTEMPT),
        ) else {
            return;
        };
        let cdir = self
            .pod_dir(uid)
            .join("containers")
            .join(format!("{name}-{attempt}"));
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = keelson_images::unmount_rootfs(&cdir) {
                tracing::warn!("{e}");
            }
            let _ = std::fs::remove_dir_all(&cdir);
        })
        .await;
    }

    /// Stops every container of the pod (SIGTERM, `grace`, SIGKILL), removes
    /// them, releases the network, the namespaces and the cgroup, and
    /// deletes the pod's files. Idempotent; works from saved state alone.
    pub async fn teardown(
        &self,
        uid: &str,
        containers: Vec<ContainerInfo>,
        grace: Duration,
    ) -> Result<(), String> {
        let stops = containers.iter().map(|c| self.runtime.stop(&c.id, grace));
        for (c, r) in containers
            .iter()
            .zip(futures::future::join_all(stops).await)
        {
            if let Err(e) = r {
                return Err(format!("stop container {}: {e}", c.id));
            }
        }
        for c in &containers {
            self.remove_container(c).await;
        }
        let dir = self.pod_dir(uid);
        // Any rootfs still mounted (a container the runtime forgot).
        if let Ok(rd) = std::fs::read_dir(dir.join("containers")) {
            for e in rd.flatten() {
                let p = e.path();
                let _ =
                    tokio::task::spawn_blocking(move || keelson_images::unmount_rootfs(&p)).await;
            }
        }
        let st = self.load_state(uid);
        if let Some(st) = &st {
            self.release_network(st).await;
        } else {
            // No state: DEL what an ADD would have made.
            let sb = sandbox::paths(&self.sandbox_dir(), uid);
            if sb.netns.exists() {
                let att = Attachment {
                    container_id: uid.to_string(),
                    netns: sb.netns.clone(),
                    ifname: "eth0".into(),
                    args: String::new(),
                };
                self.release_network(&PodState {
                    uid: uid.into(),
                    attachment: Some(att),
                    ..Default::default()
                })
                .await;
            }
        }
        let sb_dir = self.sandbox_dir();
        let u = uid.to_string();
        tokio::task::spawn_blocking(move || sandbox::remove(&sb_dir, &u))
            .await
            .map_err(|e| format!("remove sandbox {uid}: {e}"))?
            .map_err(|e| format!("remove sandbox {uid}: {e}"))?;
        let qoses: Vec<QosClass> = match &st {
            Some(s) => vec![QosClass::parse(&s.qos)],
            None => vec![
                QosClass::Guaranteed,
                QosClass::Burstable,
                QosClass::BestEffort,
            ],
        };
        for q in qoses {
            self.cgroups
                .remove_pod(uid, q)
                .map_err(|e| format!("remove pod cgroup {uid}: {e}"))?;
        }
        if let Some(st) = &st {
            let _ = std::fs::remove_dir_all(self.log_dir(&st.namespace, &st.name, uid));
        }
        // Volume tmpfs mounts (and anything else still mounted there).
        keelson_host::mounts::unmount_under(&dir).map_err(|e| e.to_string())?;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("remove {}: {e}", dir.display())),
        }
    }

    /// Tears down every pod this host has containers, state or namespaces
    /// for, then removes the cgroup root and the sandbox run dir: what
    /// `keelson down` leaves is nothing. Returns how many pods it found.
    pub async fn teardown_all(&self, grace: Duration) -> Result<usize, String> {
        let mut by_pod: BTreeMap<String, Vec<ContainerInfo>> = BTreeMap::new();
        for c in self
            .runtime
            .list()
            .await
            .map_err(|e| format!("list containers: {e}"))?
        {
            let uid = c.labels.get(labels::POD_UID).cloned().unwrap_or_default();
            by_pod.entry(uid).or_default().push(c);
        }
        for uid in self.pod_dirs() {
            by_pod.entry(uid).or_default();
        }
        for uid in sandbox::list(&self.sandbox_dir()).unwrap_or_default() {
            by_pod.entry(uid).or_default();
        }
        let found = by_pod.keys().filter(|u| !u.is_empty()).count();
        for (uid, containers) in by_pod {
            if uid.is_empty() {
                // Containers without a pod label: stop and remove them alone.
                for c in &containers {
                    let _ = self.runtime.stop(&c.id, grace).await;
                    self.remove_container(c).await;
                }
                continue;
            }
            self.teardown(&uid, containers, grace).await?;
        }
        self.cgroups
            .remove_root()
            .map_err(|e| format!("remove cgroup root {}: {e}", self.cfg.cgroup_root))?;
        let sb = self.sandbox_dir();
        let _ = sandbox::release_run_dir(&sb);
        match std::fs::remove_dir_all(&sb) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("remove {}: {e}", sb.display())),
        }
        Ok(found)
    }

    /// Whether the kernel OOM-killed something in the container's cgroup.
    pub fn oom_killed(&self, st: &PodState, id: &str) -> bool {
        self.cgroups
            .oom_killed(&cgroups::container_cgroups_path(&st.cgroup_parent, id))
    }
}

/// Attempt and streak from a container's labels.
pub fn attempt_of(info: &ContainerInfo) -> (u32, u32) {
    let n = |k: &str| info.labels.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
    (n(labels::ATTEMPT), n(labels::STREAK))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_and_pull_policies() {
        assert_eq!(
            container_id("0a1b2c3d-4e5f-6789-abcd-ef0123456789", "web", 3),
            "k0a1b2c3d4e5f-web-3"
        );
        for (image, policy, want) in [
            ("busybox", None, PullPolicy::Always),
            ("reg:5000/busybox:latest", None, PullPolicy::Always),
            ("reg:5000/busybox:1.36", None, PullPolicy::IfNotPresent),
            ("reg:5000/busybox", None, PullPolicy::Always),
            ("busybox@sha256:00", None, PullPolicy::IfNotPresent),
            ("busybox", Some("Never"), PullPolicy::Never),
            ("busybox:1", Some("Always"), PullPolicy::Always),
        ] {
            let c: Container =
                serde_json::from_value(json!({"name":"a","image":image,"imagePullPolicy":policy}))
                    .unwrap();
            assert_eq!(pull_policy(&c), want, "{image} {policy:?}");
        }
    }
}
