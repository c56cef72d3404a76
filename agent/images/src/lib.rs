//! Registry pulls (oci-client), the content store (by digest), layer
//! unpacking (with whiteouts) and overlayfs root filesystems.
//!
//! Contract used by the agent's pod workers (keep these names; add freely).

#![forbid(unsafe_code)]

pub mod archive;
pub mod auth;
pub mod digest;
pub mod docker;
pub mod gc;
pub mod layout;
pub mod manifest;
pub mod mount;
pub mod reference;
pub mod remote;
pub mod store;
pub mod unpack;

use std::path::PathBuf;

/// Errors of this crate; each names the operation and the image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference does not parse (the kubelet's InvalidImageName).
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    /// The registry has no such repository, tag or digest.
    #[error("pull image {reference}: not found ({detail})")]
    NotFound { reference: String, detail: String },
    /// Policy Never and the image is not in the store.
    #[error("image {reference} is not present with pull policy Never")]
    NeverPull { reference: String },
    /// Network, registry or authentication failure.
    #[error("pull image {reference}: {detail}")]
    Pull { reference: String, detail: String },
    /// Content from the registry does not match its digest; nothing of it
    /// was kept.
    #[error("pull image {reference}: {what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        reference: String,
        what: String,
        expected: String,
        actual: String,
    },
    /// A manifest, media type or platform this crate does not handle.
    #[error("pull image {reference}: {detail}")]
    Unsupported { reference: String, detail: String },
    /// An image archive (`import_path`) is not one this crate reads, or is
    /// malformed; nothing of it was indexed.
    #[error("import {path}: {detail}")]
    Import { path: PathBuf, detail: String },
    /// A layer could not be unpacked (bad tar, path escaping the root, ...).
    #[error("pull image {reference}: unpack layer {layer}: {detail}")]
    Unpack {
        reference: String,
        layer: String,
        detail: String,
    },
    /// Something in the store is not what it should be.
    #[error("image store {path}: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    /// A filesystem operation failed.
    #[error("{op} {path}: {error}")]
    Io {
        op: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    /// Containers' root filesystems are made of the image (`remove_unused`).
    #[error(
        "image {reference} is in use by {} container(s) (root filesystem {}); stop them first, or force",
        users.len(),
        users.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    InUse {
        reference: String,
        users: Vec<PathBuf>,
    },
    /// A mount or unmount failed.
    #[error("{op} {path}: {detail}")]
    Mount {
        op: &'static str,
        path: PathBuf,
        detail: String,
    },
}

impl ImageError {
    /// The kubelet's waiting reason for this error: `InvalidImageName`,
    /// `ErrImageNeverPull` or `ErrImagePull`.
    pub fn reason(&self) -> &'static str {
        match self {
            ImageError::InvalidReference { .. } => "InvalidImageName",
            ImageError::NeverPull { .. } => "ErrImageNeverPull",
            _ => "ErrImagePull",
        }
    }

    /// True if the registry said the image does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ImageError::NotFound { .. })
    }
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

pub use mount::{is_mounted, mount_rootfs, unmount_rootfs};
pub use reference::ImageRef;
pub use store::{GcStats, ImageInfo, ImageStore, StoreStats};
