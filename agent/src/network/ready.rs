//! Whether pods can be networked, and the agent's own CNI configuration.
//!
//! The operator's config dir (`--cni-conf-dir`) comes first. When it holds
//! no configuration, the agent networks pods out of the box, as k3s's agent
//! does: it writes a keelson-cni conflist for the node's pod CIDR (the
//! `--pod-cidr` flag, else the Node's `spec.podCIDR`) into its own dir,
//! `<root-dir>/cni/net.d`, with IPAM state in `<root-dir>/cni/ipam`. Where it
//! cannot (no pod CIDR, no keelson-cni binary), the network is not ready:
//! the Node is `Ready=False` with the kubelet's `NetworkPluginNotReady` and
//! waiting pods get a `NetworkNotReady` Event.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector::{ObjectRef, Store};

use super::{Cni, CniError};
use crate::health::{NodeHealth, Part, State};

/// How often the network is checked while it is not ready.
pub const RECHECK_NOT_READY: Duration = Duration::from_secs(2);
/// How often the network is checked while it is ready.
pub const RECHECK_READY: Duration = Duration::from_secs(30);
/// The conflist file the agent writes into its own dir.
pub const OWN_CONFLIST: &str = "10-keelson.conflist";

/// The agent's own CNI configuration, used when the operator's dir is empty.
#[derive(Debug, Clone)]
pub struct OwnConfig {
    /// `<root-dir>/cni/net.d` (the last of [`Cni::conf_dirs`]).
    pub conf_dir: PathBuf,
    /// keelson-cni's IPAM `dataDir`.
    pub ipam_dir: PathBuf,
}

impl OwnConfig {
    /// The agent's own dirs under `root_dir`.
    pub fn under(root_dir: &Path) -> OwnConfig {
        OwnConfig {
            conf_dir: root_dir.join("cni/net.d"),
            ipam_dir: root_dir.join("cni/ipam"),
        }
    }
}

/// One check: `Ready` if a configuration loads (writing the agent's own one
/// first when none does and `pod_cidr` is known and keelson-cni is there),
/// else `Failed` with `NetworkPluginNotReady` and what is missing.
pub async fn check(cni: &Cni, own: &OwnConfig, pod_cidr: Option<Ipv4Net>) -> State {
    let not_ready = |message: String| State::Failed {
        reason: "NetworkPluginNotReady".into(),
        message,
    };
    let missing = match cni.load().await {
        Ok(_) => return State::Ready,
        Err(e @ CniError::NoConfig { .. }) => e.to_string(),
        Err(e) => return not_ready(e.to_string()),
    };
    let Some(cidr) = pod_cidr else {
        return not_ready(format!(
            "{missing}; no pod CIDR to write keelson-cni's own configuration for \
             (set --pod-cidr, or have the control plane set the Node's spec.podCIDR)"
        ));
    };
    if cni.find_plugin("keelson-cni").is_none() {
        return not_ready(format!(
            "{missing}; keelson-cni not found in {} to network pods itself",
            cni.bin_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(":")
        ));
    }
    let text = super::conf::keelson_conflist(cidr, Some(&own.ipam_dir));
    let path = own.conf_dir.join(OWN_CONFLIST);
    if let Err(e) = write(&path, &text) {
        return not_ready(format!("{missing}; write {}: {e}", path.display()));
    }
    tracing::info!(path = %path.display(), pod_cidr = %cidr,
        "no CNI configuration: networking pods with keelson-cni's own");
    match cni.load().await {
        Ok(_) => State::Ready,
        Err(e) => not_ready(e.to_string()),
    }
}

fn write(path: &Path, text: &str) -> std::io::Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|t| t == text) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    Ok(keelson_host::fs::write_atomic(path, text.as_bytes())?)
}

/// The pod CIDR to configure: the flag's, else the Node's `spec.podCIDR`
/// (from the shared Node informer).
fn pod_cidr(nodes: &Store<Node>, node: &str, flag: Option<Ipv4Net>) -> Option<Ipv4Net> {
    if flag.is_some() {
        return flag;
    }
    let n = nodes.get(&ObjectRef::new(node))?;
    n.spec.as_ref()?.pod_cidr.as_ref()?.parse().ok()
}

/// Where the node's pod CIDR comes from, and what to do with one the
/// control plane gives.
pub struct PodCidr {
    /// `--pod-cidr` (already masqueraded at start); None: the Node's
    /// spec.podCIDR.
    pub flag: Option<Ipv4Net>,
    /// `--cluster-cidr`, for the egress masquerade.
    pub cluster: Option<Ipv4Net>,
    pub events: crate::events::Recorder,
}

/// Keeps [`Part::Network`] current for ever: checks at once, then every
/// [`RECHECK_NOT_READY`] while not ready and [`RECHECK_READY`] while ready.
/// A pod CIDR the control plane gives the Node gets the egress masquerade
/// once it appears.
pub async fn monitor(
    health: NodeHealth,
    informers: keelson_informers::Informers,
    node: String,
    cni: Cni,
    own: OwnConfig,
    source: PodCidr,
) {
    let nodes = informers.cluster::<Node>().store();
    let mut masqueraded = source.flag;
    loop {
        let cidr = pod_cidr(&nodes, &node, source.flag);
        if let Some(c) = cidr
            && masqueraded != Some(c)
            && super::egress::masquerade(c, source.cluster, &source.events)
        {
            masqueraded = Some(c);
        }
        let state = check(&cni, &own, cidr).await;
        let wait = if state == State::Ready {
            RECHECK_READY
        } else {
            RECHECK_NOT_READY
        };
        if let State::Failed { message, .. } = &state
            && health.snapshot().get(&Part::Network) != Some(&state)
        {
            tracing::warn!("pod network not ready: {message}");
        }
        health.set(Part::Network, state);
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin_dir() -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("keelson-cni");
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    fn setup(tmp: &Path, bin: &Path) -> (Cni, OwnConfig) {
        let own = OwnConfig::under(&tmp.join("root"));
        let cni = Cni {
            conf_dirs: vec![tmp.join("etc-cni"), own.conf_dir.clone()],
            bin_dirs: vec![bin.to_path_buf()],
        };
        (cni, own)
    }

    #[tokio::test]
    async fn writes_its_own_conflist_when_the_operator_has_none() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = plugin_dir();
        let (cni, own) = setup(tmp.path(), bin.path());
        let state = check(&cni, &own, Some("10.244.7.0/24".parse().unwrap())).await;
        assert_eq!(state, State::Ready);
        let list = cni.load().await.unwrap();
        assert_eq!(list.name, "keelson");
        assert_eq!(list.plugins[0]["type"], "keelson-cni");
        assert_eq!(list.plugins[0]["subnet"], "10.244.7.0/24");
        assert_eq!(
            list.plugins[0]["dataDir"],
            own.ipam_dir.display().to_string()
        );
    }

    #[tokio::test]
    async fn the_operators_config_wins_and_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = plugin_dir();
        let (cni, own) = setup(tmp.path(), bin.path());
        std::fs::create_dir_all(&cni.conf_dirs[0]).unwrap();
        std::fs::write(
            cni.conf_dirs[0].join("05-op.conflist"),
            r#"{"cniVersion":"1.0.0","name":"op","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        assert_eq!(check(&cni, &own, None).await, State::Ready);
        assert_eq!(cni.load().await.unwrap().name, "op");
        assert!(!own.conf_dir.join(OWN_CONFLIST).exists());
    }

    #[tokio::test]
    async fn not_ready_says_what_is_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let bin = plugin_dir();
        let (cni, own) = setup(tmp.path(), bin.path());
        match check(&cni, &own, None).await {
            State::Failed { reason, message } => {
                assert_eq!(reason, "NetworkPluginNotReady");
                assert!(message.contains("no pod CIDR"), "{message}");
                assert!(message.contains("etc-cni"), "{message}");
            }
            s => panic!("{s:?}"),
        }
        let empty = tempfile::tempdir().unwrap();
        let (cni, own) = setup(tmp.path(), empty.path());
        match check(&cni, &own, Some("10.244.7.0/24".parse().unwrap())).await {
            State::Failed { message, .. } => {
                assert!(message.contains("keelson-cni not found"), "{message}")
            }
            s => panic!("{s:?}"),
        }
        assert!(!own.conf_dir.join(OWN_CONFLIST).exists());
    }
}
