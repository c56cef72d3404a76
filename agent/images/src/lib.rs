//! Registry pulls (oci-client), the content store (by digest), layer
//! unpacking (with whiteouts) and overlayfs root filesystems.
//!
//! Contract used by the agent's pod workers (keep these names; add freely).

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

/// Errors of this crate; each names the operation and the image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Not built yet.
    #[error("{0}: not built yet")]
    NotBuilt(String),
}

/// The pod spec's imagePullPolicy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Pull every time (the manifest digest decides whether layers download).
    Always,
    /// Pull only if the reference is not in the store.
    IfNotPresent,
    /// Never pull; fail if absent.
    Never,
}

/// What a container needs from its image config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// Entrypoint.
    pub entrypoint: Vec<String>,
    /// Cmd.
    pub cmd: Vec<String>,
    /// Env, as `KEY=value`.
    pub env: Vec<String>,
    /// WorkingDir.
    pub working_dir: Option<String>,
    /// User (`uid`, `uid:gid`, or a name).
    pub user: Option<String>,
}

/// An image present in the store.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The reference as the pod spec gave it.
    pub reference: String,
    /// Image ID: the config digest, `sha256:...`.
    pub image_id: String,
    /// `repository@sha256:<manifest digest>` (containerStatuses[].imageID).
    pub repo_digest: String,
    /// Entrypoint, Cmd, Env, WorkingDir, User.
    pub config: ImageConfig,
    /// Unpacked layer directories, lowest first.
    pub layers: Vec<PathBuf>,
}

/// The content store under a root directory.
#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
}

impl ImageStore {
    /// Opens (creating) the store at `root`. Registries in `insecure` (host
    /// or host:port) are reached over plain HTTP; loopback ones always are.
    pub fn open(root: &Path, insecure: Vec<String>) -> Result<Self, ImageError> {
        let _ = insecure;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Makes `reference` present according to `policy` and returns it.
    pub async fn ensure(
        &self,
        reference: &str,
        policy: PullPolicy,
    ) -> Result<PulledImage, ImageError> {
        let _ = (policy, &self.root);
        Err(ImageError::NotBuilt(reference.to_string()))
    }
}

/// Mounts an overlay of `layers` at `container_dir/rootfs` (upper and work
/// dirs beside it) and returns the rootfs path. Idempotent.
pub fn mount_rootfs(layers: &[PathBuf], container_dir: &Path) -> Result<PathBuf, ImageError> {
    let _ = layers;
    Err(ImageError::NotBuilt(container_dir.display().to_string()))
}

/// Unmounts and removes what `mount_rootfs` made. Idempotent.
pub fn unmount_rootfs(container_dir: &Path) -> Result<(), ImageError> {
    let _ = container_dir;
    Ok(())
}
