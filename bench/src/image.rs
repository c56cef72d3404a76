//! The backend image, built from the running `keelson` binary: an OCI
//! layout of one uncompressed layer holding the binary, the shared
//! libraries `ldd` names and its ELF interpreter, with the entrypoint
//! `/keelson bench backend`. No registry and no network: the layout goes
//! into an agent's image import dir.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

/// The image's name (`io.containerd.image.name`).
pub const IMAGE: &str = "keelson.local/keelson-bench:v1";

/// The files of the layer: the binary as `/keelson`, and every absolute
/// path `ldd` prints for it.
fn layer_files(bin: &Path) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .with_context(|| format!("run ldd {}", bin.display()))?;
    let mut files = vec![(bin.to_path_buf(), "keelson".to_string())];
    // Static binaries: "not a dynamic executable" and no paths.
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(str::to_string);
        if let Some(p) = path {
            files.push((PathBuf::from(&p), p.trim_start_matches('/').to_string()));
        }
    }
    Ok(files)
}

fn sha256_file(path: &Path) -> anyhow::Result<(String, u64)> {
    let mut f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h).with_context(|| format!("read {}", path.display()))?;
    Ok((format!("{:x}", h.finalize()), n))
}

fn write_blob(blobs: &Path, bytes: &[u8]) -> anyhow::Result<(String, u64)> {
    let hex = format!("{:x}", Sha256::digest(bytes));
    let p = blobs.join(&hex);
    std::fs::write(&p, bytes).with_context(|| format!("write {}", p.display()))?;
    Ok((hex, bytes.len() as u64))
}

/// Writes the OCI layout of [`IMAGE`] for `bin` into the new directory
/// `dir`.
pub fn build_layout(bin: &Path, dir: &Path) -> anyhow::Result<()> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).with_context(|| format!("create {}", blobs.display()))?;
    let layer_tmp = dir.join("layer.tar");
    {
        let f = std::fs::File::create(&layer_tmp)
            .with_context(|| format!("create {}", layer_tmp.display()))?;
        let mut tar = tar::Builder::new(std::io::BufWriter::new(f));
        tar.mode(tar::HeaderMode::Deterministic);
        // Plain entries only: the agent unpacks no GNU sparse files.
        tar.sparse(false);
        let mut dirs: Vec<String> = vec![
            "proc".into(),
            "sys".into(),
            "dev".into(),
            "tmp".into(),
            "etc".into(),
        ];
        let files = layer_files(bin)?;
        for (_, name) in &files {
            let mut p = Path::new(name).parent();
            while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
                dirs.push(d.display().to_string());
                p = d.parent();
            }
        }
        dirs.sort();
        dirs.dedup();
        for d in &dirs {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            tar.append_data(&mut h, format!("{d}/"), std::io::empty())
                .with_context(|| format!("add {d}/ to the layer"))?;
        }
        for (src, name) in &files {
            // Follows symlinks: the layer holds the files themselves.
            tar.append_path_with_name(src, name)
                .with_context(|| format!("add {} to the layer", src.display()))?;
        }
        tar.into_inner()
            .context("finish the layer")?
            .flush()
            .context("write the layer")?;
    }
    let (layer_hex, layer_size) = sha256_file(&layer_tmp)?;
    std::fs::rename(&layer_tmp, blobs.join(&layer_hex)).context("move the layer blob")?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/keelson"], "Cmd": ["bench", "backend"], "Env": ["PATH=/"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_hex}")]},
    });
    let (config_hex, config_size) = write_blob(&blobs, config.to_string().as_bytes())?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{config_hex}"), "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": format!("sha256:{layer_hex}"), "size": layer_size}],
    });
    let (manifest_hex, manifest_size) = write_blob(&blobs, manifest.to_string().as_bytes())?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": format!("sha256:{manifest_hex}"), "size": manifest_size,
                       "annotations": {"io.containerd.image.name": IMAGE}}],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).context("write index.json")?;
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .context("write oci-layout")?;
    Ok(())
}

/// Puts the layout for `bin` into the agent import dir `import` (built
/// under a dot name, which the agent skips, then renamed).
pub fn import_into(bin: &Path, import: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(import).with_context(|| format!("create {}", import.display()))?;
    let tmp = import.join(".keelson-bench");
    let _ = std::fs::remove_dir_all(&tmp);
    build_layout(bin, &tmp)?;
    let dest = import.join("keelson-bench");
    if dest.exists() {
        bail!("{} exists already", dest.display());
    }
    std::fs::rename(&tmp, &dest).with_context(|| format!("rename to {}", dest.display()))
}
