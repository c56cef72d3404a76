//! `docker save` archives made in the test itself (no Docker engine here, and
//! no checked-in binaries): layer tars written with the tar crate, an image
//! config listing their diff_ids, and `manifest.json`, in Docker's classic
//! archive layout (`<config sha256>.json`, `<layer id>/layer.tar`).
//!
//! ```no_run
//! use keelson_e2e::docker_archive::{Layer, SavedImage};
//! let layer = Layer::new().file("etc/motd", b"hi\n", 0o644);
//! let files = SavedImage::new(&["keelson.local/motd:v1"], vec![layer]).save();
//! files.write_tar(std::path::Path::new("/tmp/motd.tar"), false).unwrap();
//! ```

use std::io::Write;
use std::path::Path;

use sha2::Digest as _;

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    let d = sha2::Sha256::digest(data);
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// An image layer being built: a tar of files, directories and links.
pub struct Layer {
    builder: tar::Builder<Vec<u8>>,
    /// Store the layer gzip-compressed in the archive.
    pub gzip: bool,
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    /// An empty layer.
    pub fn new() -> Layer {
        Layer {
            builder: tar::Builder::new(Vec::new()),
            gzip: false,
        }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h
    }

    /// Adds a regular file.
    pub fn file(mut self, path: &str, data: &[u8], mode: u32) -> Layer {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        self.builder
            .append_data(&mut h, path, data)
            .expect("append a file to a layer");
        self
    }

    /// Adds a directory.
    pub fn dir(mut self, path: &str) -> Layer {
        let mut h = Self::header(tar::EntryType::Directory, 0o755, 0);
        self.builder
            .append_data(&mut h, path, std::io::empty())
            .expect("append a directory to a layer");
        self
    }

    /// Adds a symbolic link `path` -> `target`.
    pub fn symlink(mut self, path: &str, target: &str) -> Layer {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.builder
            .append_link(&mut h, path, target)
            .expect("append a link to a layer");
        self
    }

    /// This layer stored gzip-compressed.
    pub fn gzipped(mut self) -> Layer {
        self.gzip = true;
        self
    }

    /// A layer with the host's busybox-static as `/bin/busybox` and `sh`,
    /// `sleep`, `cat`, `echo` linked to it (None without busybox-static).
    pub fn busybox() -> Option<Layer> {
        let bb = std::fs::read("/bin/busybox").ok()?;
        let mut l = Layer::new()
            .dir("bin")
            .dir("etc")
            .dir("tmp")
            .file("bin/busybox", &bb, 0o755);
        for tool in ["sh", "sleep", "cat", "echo", "ls", "true"] {
            l = l.symlink(&format!("bin/{tool}"), "busybox");
        }
        Some(l.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644))
    }

    /// (the uncompressed tar, the bytes stored in the archive).
    fn finish(self) -> (Vec<u8>, Vec<u8>) {
        let tar = self.builder.into_inner().expect("finish a layer tar");
        let stored = if self.gzip { gzip(&tar) } else { tar.clone() };
        (tar, stored)
    }
}

/// gzip-compresses `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

/// One image of an archive.
pub struct SavedImage {
    /// RepoTags (`busybox:1.36`, `keelson.local/x:v1`).
    pub tags: Vec<String>,
    /// Layers, lowest first.
    pub layers: Vec<Layer>,
    /// The config's Cmd.
    pub cmd: Vec<String>,
    /// The config's Env.
    pub env: Vec<String>,
}

impl SavedImage {
    /// An image with `tags` and `layers`, Cmd `["sh"]`, a PATH.
    pub fn new(tags: &[&str], layers: Vec<Layer>) -> SavedImage {
        SavedImage {
            tags: tags.iter().map(|t| t.to_string()).collect(),
            layers,
            cmd: vec!["sh".into()],
            env: vec!["PATH=/bin".into()],
        }
    }

    /// The files `docker save` writes for this image alone.
    pub fn save(self) -> ArchiveFiles {
        save(vec![self])
    }
}

/// The files of a Docker image archive, in order, to change before
/// writing (tests of malformed archives do).
#[derive(Clone, Debug, Default)]
pub struct ArchiveFiles {
    /// (path in the archive, contents).
    pub files: Vec<(String, Vec<u8>)>,
    /// Symbolic links (path, target).
    pub links: Vec<(String, String)>,
}

/// The archive `docker save` writes for `images`.
pub fn save(images: Vec<SavedImage>) -> ArchiveFiles {
    let mut out = ArchiveFiles::default();
    let mut manifest = Vec::new();
    for img in images {
        let mut diff_ids = Vec::new();
        let mut layer_paths = Vec::new();
        for layer in img.layers {
            let (tar, stored) = layer.finish();
            let diff_id = sha256(&tar);
            // Docker's classic layer directory names are v1 IDs, not
            // content digests: make one of the stored bytes.
            let id = sha256(&stored)["sha256:".len()..].to_string();
            let path = format!("{id}/layer.tar");
            if !out.files.iter().any(|(p, _)| *p == path) {
                out.files.push((format!("{id}/VERSION"), b"1.0".to_vec()));
                out.files.push((path.clone(), stored));
            }
            diff_ids.push(diff_id);
            layer_paths.push(path);
        }
        let config = serde_json::json!({
            "architecture": host_arch(),
            "os": "linux",
            "config": {"Cmd": img.cmd, "Env": img.env, "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config = serde_json::to_vec(&config).expect("config serialises");
        let config_name = format!("{}.json", &sha256(&config)["sha256:".len()..]);
        out.files.push((config_name.clone(), config));
        manifest.push(serde_json::json!({
            "Config": config_name,
            "RepoTags": img.tags,
            "Layers": layer_paths,
        }));
    }
    out.files.push((
        "manifest.json".into(),
        serde_json::to_vec(&manifest).expect("manifest serialises"),
    ));
    out
}

/// Docker's name for this machine's architecture.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

impl ArchiveFiles {
    /// The file `path`'s contents.
    pub fn get(&self, path: &str) -> Option<&Vec<u8>> {
        self.files.iter().find(|(p, _)| p == path).map(|(_, d)| d)
    }

    /// Replaces (or adds) the file `path`.
    pub fn set(&mut self, path: &str, data: Vec<u8>) {
        match self.files.iter_mut().find(|(p, _)| p == path) {
            Some((_, d)) => *d = data,
            None => self.files.push((path.to_string(), data)),
        }
    }

    /// Drops the file `path`.
    pub fn remove(&mut self, path: &str) {
        self.files.retain(|(p, _)| p != path);
    }

    /// `manifest.json`, parsed.
    pub fn manifest(&self) -> serde_json::Value {
        serde_json::from_slice(self.get("manifest.json").expect("manifest.json"))
            .expect("manifest.json parses")
    }

    /// Replaces `manifest.json`.
    pub fn set_manifest(&mut self, m: &serde_json::Value) {
        self.set("manifest.json", serde_json::to_vec(m).expect("serialises"));
    }

    /// Writes the archive as a tar at `path`, gzip-compressed if `gzip`
    /// (`docker save | gzip`).
    pub fn write_tar(&self, path: &Path, gzip_it: bool) -> std::io::Result<()> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in &self.files {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            h.set_mtime(1_700_000_000);
            b.append_data(&mut h, name, data.as_slice())?;
        }
        for (name, target) in &self.links {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_size(0);
            b.append_link(&mut h, name, target)?;
        }
        let bytes = b.into_inner()?;
        let bytes = if gzip_it { gzip(&bytes) } else { bytes };
        std::fs::write(path, bytes)
    }
}
