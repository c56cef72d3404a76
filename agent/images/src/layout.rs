//! Images from an OCI image layout (a directory, or a tar archive of one:
//! what `skopeo copy oci-archive:`, `nerdctl save` and `ctr export` write;
//! `archive.rs` tells it from a `docker save` archive), for nodes without
//! a registry. The layout is a [`Remote`]: the store
//! imports from it exactly as it pulls, digests verified.
//!
//! An image's name comes from its index entry's annotations:
//! `io.containerd.image.name` (a full reference), else
//! `org.opencontainers.image.ref.name` when that is a full reference
//! (`host/repo:tag`); entries with only a bare tag are not imported, as
//! they name no repository.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use serde::Deserialize;

use crate::digest::Digest;
use crate::manifest::Descriptor;
use crate::reference::ImageRef;
use crate::remote::{BlobStream, Remote, RemoteError};

/// The annotation containerd and nerdctl put the full image name in.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI annotation for an entry's name (often just a tag).
pub const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    digest: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// The image name an index entry's annotations give, if any (pure).
pub fn entry_name(annotations: &BTreeMap<String, String>) -> Option<String> {
    if let Some(n) = annotations.get(CONTAINERD_NAME) {
        return Some(n.clone());
    }
    let n = annotations.get(OCI_REF_NAME)?;
    (n.contains('/') || n.contains(':')).then(|| n.clone())
}

/// An OCI image layout on disk.
#[derive(Debug, Clone)]
pub struct OciLayout {
    dir: PathBuf,
    /// Canonical reference -> manifest (or index) digest.
    names: BTreeMap<String, Digest>,
}

impl OciLayout {
    /// Reads `dir/index.json`. Entries without a usable name are skipped.
    pub fn open(dir: &Path) -> Result<OciLayout, String> {
        let path = dir.join("index.json");
        let bytes = std::fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
        let index: Index =
            serde_json::from_slice(&bytes).map_err(|e| format!("parse {}: {e}", path.display()))?;
        let mut names = BTreeMap::new();
        for e in index.manifests {
            let Some(name) = entry_name(&e.annotations) else {
                continue;
            };
            let r = ImageRef::parse(&name)
                .map_err(|err| format!("{}: image name {name:?}: {}", path.display(), err.0))?;
            let d = Digest::parse(&e.digest).map_err(|err| format!("{}: {err}", path.display()))?;
            names.insert(r.to_string(), d);
        }
        Ok(OciLayout {
            dir: dir.to_path_buf(),
            names,
        })
    }

    /// The canonical references of the named images.
    pub fn names(&self) -> Vec<String> {
        self.names.keys().cloned().collect()
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(d.hex())
    }
}

#[async_trait::async_trait]
impl Remote for OciLayout {
    async fn manifest(&self, r: &ImageRef, _accept: &[&str]) -> Result<Vec<u8>, RemoteError> {
        let d = match &r.digest {
            Some(d) => d.clone(),
            None => self
                .names
                .get(&r.to_string())
                .cloned()
                .ok_or_else(|| RemoteError::NotFound(format!("{r} is not in the layout")))?,
        };
        tokio::fs::read(self.blob_path(&d))
            .await
            .map_err(|e| RemoteError::NotFound(format!("manifest {d}: {e}")))
    }

    async fn blob(&self, _r: &ImageRef, desc: &Descriptor) -> Result<BlobStream, RemoteError> {
        file_blob(&self.blob_path(&desc.digest), &desc.digest).await
    }
}

/// The file `path` as the blob `digest` (the store verifies the bytes).
pub(crate) async fn file_blob(path: &Path, digest: &Digest) -> Result<BlobStream, RemoteError> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| RemoteError::NotFound(format!("blob {digest}: {e}")))?;
    let stream = tokio_util_like::ReaderStream::new(file)
        .map(|r| r.map_err(|e| RemoteError::Other(e.to_string())));
    Ok(stream.boxed())
}

/// A minimal `AsyncRead` -> `Stream` of chunks (what tokio-util's
/// ReaderStream does), to keep the dependency list short.
mod tokio_util_like {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, ReadBuf};

    pub struct ReaderStream<R> {
        reader: Option<R>,
        buf: Vec<u8>,
    }

    impl<R> ReaderStream<R> {
        pub fn new(reader: R) -> Self {
            ReaderStream {
                reader: Some(reader),
                buf: vec![0; 64 * 1024],
            }
        }
    }

    impl<R: AsyncRead + Unpin> futures::Stream for ReaderStream<R> {
        type Item = std::io::Result<bytes::Bytes>;

        fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            let this = self.get_mut();
            let Some(reader) = this.reader.as_mut() else {
                return Poll::Ready(None);
            };
            let mut rb = ReadBuf::new(&mut this.buf);
            match Pin::new(reader).poll_read(cx, &mut rb) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => {
                    this.reader = None;
                    Poll::Ready(Some(Err(e)))
                }
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    this.reader = None;
                    Poll::Ready(None)
                }
                Poll::Ready(Ok(())) => {
                    Poll::Ready(Some(Ok(bytes::Bytes::copy_from_slice(rb.filled()))))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_containerd_annotation_or_a_full_ref_name() {
        let a = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            entry_name(&a(&[
                (CONTAINERD_NAME, "keelson.local/busybox:v1"),
                (OCI_REF_NAME, "v1")
            ]))
            .as_deref(),
            Some("keelson.local/busybox:v1")
        );
        assert_eq!(
            entry_name(&a(&[(OCI_REF_NAME, "docker.io/library/nginx:1.25")])).as_deref(),
            Some("docker.io/library/nginx:1.25")
        );
        // A bare tag names no repository.
        assert_eq!(entry_name(&a(&[(OCI_REF_NAME, "busybox")])), None);
        assert_eq!(entry_name(&a(&[])), None);
    }
}
