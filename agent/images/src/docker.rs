//! Images from a Docker image archive, what `docker save` writes:
//! `manifest.json` lists each image's config file, its `RepoTags` and its
//! layer tars (lowest first; plain or gzip-compressed).
//!
//! The archive carries no manifest with digests, so one is made: a Docker
//! schema 2 manifest whose config and layer descriptors are the digests and
//! sizes of the files as they are. The archive is then a [`Remote`] and the
//! store imports from it exactly as it pulls: every layer's uncompressed
//! digest is checked against the config's `rootfs.diff_ids`, and nothing
//! is indexed unless all of it is in place. A file whose name is its
//! digest (`<hex>.json` configs, Docker 25's `blobs/sha256/<hex>`) must
//! hash to it.
//!
//! Images are named by their `RepoTags` (`busybox:1.36` is
//! `docker.io/library/busybox:1.36`); an image saved without a tag is not
//! imported, as it names no repository.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::digest::{Digest, Hasher};
use crate::manifest::{self, Descriptor};
use crate::reference::ImageRef;
use crate::remote::{BlobStream, Remote, RemoteError};

/// The archive's table of contents.
pub const MANIFEST: &str = "manifest.json";
/// The config media type of Docker's schema 2.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.docker.container.image.v1+json";
/// An uncompressed layer.
pub const LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// A gzip-compressed layer.
pub const LAYER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Largest config accepted (it is held in memory).
const MAX_CONFIG: u64 = 16 << 20;

/// One image of `manifest.json`, its paths checked ([`parse_manifest`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveImage {
    /// The config file.
    pub config: String,
    /// `RepoTags` (may be empty).
    pub repo_tags: Vec<String>,
    /// Layer tars, lowest first.
    pub layers: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

/// Parses `manifest.json` (pure). Every path must stay inside the archive.
pub fn parse_manifest(bytes: &[u8]) -> Result<Vec<ArchiveImage>, String> {
    let raw: Vec<RawEntry> =
        serde_json::from_slice(bytes).map_err(|e| format!("parse {MANIFEST}: {e}"))?;
    let mut out = Vec::with_capacity(raw.len());
    for e in raw {
        crate::archive::archive_path(&e.config)
            .map_err(|err| format!("{MANIFEST}: config {err}"))?;
        for l in &e.layers {
            crate::archive::archive_path(l).map_err(|err| format!("{MANIFEST}: layer {err}"))?;
        }
        out.push(ArchiveImage {
            config: e.config,
            repo_tags: e.repo_tags.unwrap_or_default(),
            layers: e.layers,
        });
    }
    Ok(out)
}

/// The digest a file's name says it has, if it says one (pure):
/// `<64 hex>.json` (a config of the classic format) or
/// `blobs/sha256/<64 hex>` (Docker 25 and later).
pub fn digest_in_name(path: &str) -> Option<Digest> {
    let p = crate::archive::archive_path(path).ok()?;
    let s = p.to_str()?;
    let hex = s
        .strip_prefix("blobs/sha256/")
        .or_else(|| s.strip_suffix(".json").filter(|h| !h.contains('/')))?;
    Digest::parse(&format!("sha256:{hex}")).ok()
}

/// The Docker schema 2 manifest of a config and its layers (pure).
pub fn image_manifest(config: &Descriptor, layers: &[Descriptor]) -> Vec<u8> {
    let desc = |d: &Descriptor| serde_json::json!({"mediaType": d.media_type, "size": d.size, "digest": d.digest.as_str()});
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest::DOCKER_MANIFEST,
        "config": desc(config),
        "layers": layers.iter().map(desc).collect::<Vec<_>>(),
    });
    serde_json::to_vec(&m).expect("a manifest serialises")
}

/// An unpacked Docker image archive, ready to import.
#[derive(Debug, Clone)]
pub struct DockerArchive {
    /// Canonical reference -> manifest digest.
    names: BTreeMap<String, Digest>,
    /// The manifests made for its images.
    manifests: HashMap<Digest, Vec<u8>>,
    /// Config and layer files by digest.
    blobs: HashMap<Digest, PathBuf>,
}

/// sha256 and size of a file, and whether it starts as gzip does.
fn hash_file(path: &Path) -> Result<(Digest, u64, bool), String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("open: {e}"))?;
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut head = Vec::with_capacity(2);
    loop {
        let n = f.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        if head.len() < 2 {
            let take = (2 - head.len()).min(n);
            head.extend_from_slice(&buf[..take]);
        }
        h.update(&buf[..n]);
    }
    let n = h.len();
    Ok((h.finish(), n, head == [0x1f, 0x8b]))
}

impl DockerArchive {
    /// Reads `dir/manifest.json` and hashes the files it names (blocking
    /// I/O). Images without a tag are skipped; a bad path, a missing file,
    /// a digest that does not match a file's name or an uncompressed layer
    /// that does not match its diff_id is an error naming it.
    pub fn open(dir: &Path) -> Result<DockerArchive, String> {
        let mpath = dir.join(MANIFEST);
        let bytes = std::fs::read(&mpath).map_err(|e| format!("read {}: {e}", mpath.display()))?;
        let images = parse_manifest(&bytes)?;
        let mut out = DockerArchive {
            names: BTreeMap::new(),
            manifests: HashMap::new(),
            blobs: HashMap::new(),
        };
        for img in images {
            let cpath = crate::archive::resolve_inside(dir, &img.config)
                .map_err(|e| format!("config {e}"))?;
            let size = std::fs::metadata(&cpath)
                .map_err(|e| format!("config {}: {e}", img.config))?
                .len();
            if size > MAX_CONFIG {
                return Err(format!("config {}: {size} bytes is too large", img.config));
            }
            let cbytes =
                std::fs::read(&cpath).map_err(|e| format!("config {}: {e}", img.config))?;
            let cdigest = Digest::of(&cbytes);
            if let Some(named) = digest_in_name(&img.config)
                && named != cdigest
            {
                return Err(format!(
                    "config {}: digest mismatch: its name says {named}, its content is {cdigest}",
                    img.config
                ));
            }
            let parsed = manifest::parse_config(&cbytes)
                .map_err(|e| format!("config {}: {e}", img.config))?;
            if parsed.diff_ids.len() != img.layers.len() {
                return Err(format!(
                    "config {} lists {} diff_ids for the {} layers {MANIFEST} names",
                    img.config,
                    parsed.diff_ids.len(),
                    img.layers.len()
                ));
            }
            let mut layers = Vec::with_capacity(img.layers.len());
            for (l, diff_id) in img.layers.iter().zip(&parsed.diff_ids) {
                let lpath =
                    crate::archive::resolve_inside(dir, l).map_err(|e| format!("layer {e}"))?;
                let (digest, size, gzip) =
                    hash_file(&lpath).map_err(|e| format!("layer {l}: {e}"))?;
                if let Some(named) = digest_in_name(l)
                    && named != digest
                {
                    return Err(format!(
                        "layer {l}: digest mismatch: its name says {named}, its content is {digest}"
                    ));
                }
                if !gzip && &digest != diff_id {
                    return Err(format!(
                        "layer {l}: digest mismatch: the config's diff_id is {diff_id}, the layer's content is {digest}"
                    ));
                }
                out.blobs.insert(digest.clone(), lpath);
                layers.push(Descriptor {
                    media_type: if gzip { LAYER_TAR_GZIP } else { LAYER_TAR }.to_string(),
                    digest,
                    size,
                });
            }
            let config = Descriptor {
                media_type: CONFIG_MEDIA_TYPE.to_string(),
                digest: cdigest.clone(),
                size: cbytes.len() as u64,
            };
            out.blobs.insert(cdigest, cpath);
            let m = image_manifest(&config, &layers);
            let mdigest = Digest::of(&m);
            out.manifests.insert(mdigest.clone(), m);
            for tag in &img.repo_tags {
                let r = ImageRef::parse(tag)
                    .map_err(|e| format!("{MANIFEST}: RepoTag {tag:?}: {}", e.0))?;
                out.names.insert(r.to_string(), mdigest.clone());
            }
        }
        Ok(out)
    }

    /// The canonical references of the tagged images.
    pub fn names(&self) -> Vec<String> {
        self.names.keys().cloned().collect()
    }
}

#[async_trait::async_trait]
impl Remote for DockerArchive {
    async fn manifest(&self, r: &ImageRef, _accept: &[&str]) -> Result<Vec<u8>, RemoteError> {
        let d = match &r.digest {
            Some(d) => d.clone(),
            None => self
                .names
                .get(&r.to_string())
                .cloned()
                .ok_or_else(|| RemoteError::NotFound(format!("{r} is not in the archive")))?,
        };
        self.manifests
            .get(&d)
            .cloned()
            .ok_or_else(|| RemoteError::NotFound(format!("manifest {d} is not in the archive")))
    }

    async fn blob(&self, _r: &ImageRef, desc: &Descriptor) -> Result<BlobStream, RemoteError> {
        let path = self.blobs.get(&desc.digest).ok_or_else(|| {
            RemoteError::NotFound(format!("blob {} is not in the archive", desc.digest))
        })?;
        crate::layout::file_blob(path, &desc.digest).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_manifest_json() {
        let m = parse_manifest(
            br#"[{"Config":"abc.json","RepoTags":["busybox:1.36","x/y:z"],"Layers":["l1/layer.tar","l2/layer.tar"]},
                 {"Config":"def.json","RepoTags":null,"Layers":[]}]"#,
        )
        .unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].config, "abc.json");
        assert_eq!(m[0].repo_tags, ["busybox:1.36", "x/y:z"]);
        assert_eq!(m[0].layers, ["l1/layer.tar", "l2/layer.tar"]);
        assert!(m[1].repo_tags.is_empty());
    }

    #[test]
    fn refuses_paths_that_leave_the_archive_and_bad_json() {
        let e =
            parse_manifest(br#"[{"Config":"a.json","Layers":["../../etc/shadow"]}]"#).unwrap_err();
        assert!(
            e.contains("layer") && e.contains("leaves the archive"),
            "{e}"
        );
        let e = parse_manifest(br#"[{"Config":"x/../../a.json","Layers":[]}]"#).unwrap_err();
        assert!(
            e.contains("config") && e.contains("leaves the archive"),
            "{e}"
        );
        let e = parse_manifest(br#"{"Config":"a.json"}"#).unwrap_err();
        assert!(e.starts_with("parse manifest.json"), "{e}");
        assert!(parse_manifest(br#"[{"Layers":[]}]"#).is_err());
    }

    #[test]
    fn digests_in_file_names() {
        let hex = "ab".repeat(32);
        let d = Digest::parse(&format!("sha256:{hex}")).unwrap();
        assert_eq!(digest_in_name(&format!("{hex}.json")), Some(d.clone()));
        assert_eq!(digest_in_name(&format!("blobs/sha256/{hex}")), Some(d));
        assert_eq!(digest_in_name(&format!("{hex}/layer.tar")), None);
        assert_eq!(digest_in_name("config.json"), None);
        assert_eq!(digest_in_name(&format!("sub/{hex}.json")), None);
    }

    #[test]
    fn made_manifest_parses_back() {
        let d = |c: char| Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap();
        let config = Descriptor {
            media_type: CONFIG_MEDIA_TYPE.into(),
            digest: d('a'),
            size: 10,
        };
        let layers = vec![Descriptor {
            media_type: LAYER_TAR.into(),
            digest: d('b'),
            size: 20,
        }];
        let bytes = image_manifest(&config, &layers);
        assert_eq!(
            manifest::Manifest::parse(&bytes).unwrap(),
            manifest::Manifest::Image { config, layers }
        );
        // Deterministic: the same archive gives the same digest.
        assert_eq!(
            Digest::of(&bytes),
            Digest::of(&image_manifest(
                &Descriptor {
                    media_type: CONFIG_MEDIA_TYPE.into(),
                    digest: d('a'),
                    size: 10
                },
                &[Descriptor {
                    media_type: LAYER_TAR.into(),
                    digest: d('b'),
                    size: 20
                }]
            ))
        );
    }
}
