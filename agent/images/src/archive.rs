//! Image archives a node takes without a registry, and the one place their
//! formats are told apart: an OCI image layout (`index.json`; what `skopeo
//! copy oci-archive:`, `nerdctl save` and `ctr export` write) or a Docker
//! image archive (`manifest.json`; what `docker save` writes), each as a
//! directory or as a tar archive of one, gzip-compressed or not.
//!
//! A `docker save` of Docker 25 or later holds both files; its `index.json`
//! names the images, so it is read as an OCI layout.

use std::io::Read;
use std::path::{Path, PathBuf};

/// The formats an image archive comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// An OCI image layout (`oci-layout`, `index.json`, `blobs/`).
    OciLayout,
    /// A Docker image archive (`manifest.json`, configs, layer tars).
    DockerArchive,
}

/// Which format the unpacked archive (or directory) `dir` is in: an OCI
/// layout when its `index.json` names an image, else a Docker archive when
/// it has a `manifest.json`, else an OCI layout if it has an `index.json`
/// (whose unnamed images the importer then reports).
pub fn detect(dir: &Path) -> Result<Format, String> {
    let index = dir.join("index.json");
    let manifest = dir.join(crate::docker::MANIFEST);
    if index.is_file() {
        let named = crate::layout::OciLayout::open(dir).is_ok_and(|l| !l.names().is_empty());
        if named || !manifest.is_file() {
            return Ok(Format::OciLayout);
        }
    }
    if manifest.is_file() {
        return Ok(Format::DockerArchive);
    }
    Err(format!(
        "{}: neither index.json (an OCI image layout) nor manifest.json (a docker save archive) in it",
        dir.display()
    ))
}

/// File name endings of image archives in a drop box.
pub const ARCHIVE_SUFFIXES: &[&str] = &[".tar", ".tar.gz", ".tgz"];

/// Whether `path` looks like something [`crate::ImageStore::import_path`]
/// takes, by its name or contents' top level alone (a drop box's filter):
/// a directory with `index.json` or `manifest.json`, or a file named
/// `*.tar`, `*.tar.gz` or `*.tgz`. Dot files are not (a file being written
/// under a dot name is renamed when complete).
pub fn looks_importable(path: &Path) -> bool {
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return false;
    };
    if name.starts_with('.') {
        return false;
    }
    if path.is_dir() {
        return path.join("index.json").is_file() || path.join(crate::docker::MANIFEST).is_file();
    }
    ARCHIVE_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// Unpacks the tar archive `archive` (gzip-compressed or not) into `dest`,
/// which must not exist. Files, directories and symbolic links are kept
/// (older `docker save` links a repeated layer to its first copy); entries
/// may not leave `dest`, nor be written through a link. Whoever reads a
/// file of it through a link checks with [`resolve_inside`].
pub fn unpack_archive(archive: &Path, dest: &Path) -> Result<(), String> {
    let mut file =
        std::fs::File::open(archive).map_err(|e| format!("open {}: {e}", archive.display()))?;
    let mut head = [0u8; 2];
    let gzip = matches!(file.read_exact(&mut head), Ok(()) if head == [0x1f, 0x8b]);
    let file =
        std::fs::File::open(archive).map_err(|e| format!("open {}: {e}", archive.display()))?;
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
            file,
        )))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    std::fs::create_dir(dest).map_err(|e| format!("create {}: {e}", dest.display()))?;
    let mut ar = tar::Archive::new(reader);
    for entry in ar
        .entries()
        .map_err(|e| format!("read {}: {e}", archive.display()))?
    {
        let mut entry = entry.map_err(|e| format!("read {}: {e}", archive.display()))?;
        let ty = entry.header().entry_type();
        if !(ty.is_file() || ty.is_dir() || ty.is_symlink()) {
            continue; // an image archive holds nothing else
        }
        // unpack_in refuses paths that leave `dest` (.., absolute) and
        // writes through a symbolic link.
        let ok = entry
            .unpack_in(dest)
            .map_err(|e| format!("unpack {}: {e}", archive.display()))?;
        if !ok {
            return Err(format!(
                "{}: entry {:?} leaves the archive",
                archive.display(),
                entry
                    .path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ));
        }
    }
    Ok(())
}

/// A path named inside an archive, checked (pure): relative, with no `..`
/// (a leading `./` or `/` is dropped as tar does).
pub fn archive_path(name: &str) -> Result<PathBuf, String> {
    match crate::unpack::clean_relative(name.as_bytes()) {
        Ok(Some(p)) => Ok(p),
        Ok(None) => Err(format!("path {name:?} names no file")),
        Err(_) => Err(format!("path {name:?} leaves the archive")),
    }
}

/// `dir/name` with links resolved, refused unless it stays in `dir` (a
/// symbolic link in an archive could point at any file of the host).
pub fn resolve_inside(dir: &Path, name: &str) -> Result<PathBuf, String> {
    let rel = archive_path(name)?;
    let root = std::fs::canonicalize(dir).map_err(|e| format!("resolve {}: {e}", dir.display()))?;
    let p = std::fs::canonicalize(root.join(&rel)).map_err(|e| format!("{name}: {e}"))?;
    if !p.starts_with(&root) {
        return Err(format!(
            "{name}: a link to {} leaves the archive",
            p.display()
        ));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_paths_stay_inside() {
        assert_eq!(
            archive_path("a/layer.tar").unwrap(),
            Path::new("a/layer.tar")
        );
        assert_eq!(archive_path("./a.json").unwrap(), Path::new("a.json"));
        assert_eq!(archive_path("/abs/x").unwrap(), Path::new("abs/x"));
        for bad in ["../x", "a/../../x", "a/..", ".", ""] {
            assert!(archive_path(bad).is_err(), "{bad}");
        }
        assert!(
            archive_path("../etc/passwd")
                .unwrap_err()
                .contains("leaves the archive")
        );
    }

    #[test]
    fn drop_box_candidates_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (name, want) in [
            ("a.tar", true),
            ("a.tar.gz", true),
            ("a.tgz", true),
            (".a.tar", false),
            ("a.zip", false),
            ("notes", false),
        ] {
            std::fs::write(d.join(name), b"").unwrap();
            assert_eq!(looks_importable(&d.join(name)), want, "{name}");
        }
        for (sub, file, want) in [
            ("oci", "index.json", true),
            ("docker", "manifest.json", true),
            ("other", "x", false),
        ] {
            std::fs::create_dir(d.join(sub)).unwrap();
            std::fs::write(d.join(sub).join(file), b"{}").unwrap();
            assert_eq!(looks_importable(&d.join(sub)), want, "{sub}");
        }
    }

    #[test]
    fn detects_the_format_from_the_top_level_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(detect(d).unwrap_err().contains("neither index.json"));
        std::fs::write(d.join("manifest.json"), b"[]").unwrap();
        assert_eq!(detect(d).unwrap(), Format::DockerArchive);
        // Docker 25+: both files; an index.json naming nothing leaves it
        // to manifest.json.
        std::fs::write(d.join("index.json"), br#"{"manifests":[]}"#).unwrap();
        assert_eq!(detect(d).unwrap(), Format::DockerArchive);
        let hex = "a".repeat(64);
        std::fs::write(
            d.join("index.json"),
            format!(
                r#"{{"manifests":[{{"digest":"sha256:{hex}","annotations":{{"io.containerd.image.name":"docker.io/library/x:1"}}}}]}}"#
            ),
        )
        .unwrap();
        assert_eq!(detect(d).unwrap(), Format::OciLayout);
        std::fs::remove_file(d.join("manifest.json")).unwrap();
        std::fs::write(d.join("index.json"), br#"{"manifests":[]}"#).unwrap();
        assert_eq!(detect(d).unwrap(), Format::OciLayout);
    }
}
