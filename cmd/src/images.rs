//! `keelson images import|ls|rm`: the node's image store
//! (`<root-dir>/images`, keelson-images) from the command line, as `crictl
//! images` / `crictl rmi` and `ctr images import` serve a containerd node.
//! Safe while the agent runs: the store locks its index and holds
//! collection off while anything is imported (see keelson-images' README).

use std::path::PathBuf;

use anyhow::{Context, bail};
use keelson_agent::agent::{AgentConfig, image_store_dir};
use keelson_images::{ImageError, ImageInfo, ImageRef, ImageStore};

/// `keelson images`.
#[derive(clap::Args)]
pub struct ImagesArgs {
    #[command(subcommand)]
    command: ImagesCommand,
}

/// Where the store is: the agent's root dir.
#[derive(clap::Args)]
struct Store {
    /// The agent's --root-dir; the store is its images/ dir (for `keelson
    /// up`: <data-dir>/agent).
    #[arg(long, default_value_os_t = AgentConfig::default().root_dir)]
    root_dir: PathBuf,
}

#[derive(clap::Subcommand)]
enum ImagesCommand {
    /// Import images from `docker save` tarballs or OCI archives.
    ///
    /// Archives: `docker save` tarballs, OCI archives (`skopeo copy
    /// oci-archive:`, `nerdctl save`, `ctr export`), plain or
    /// gzip-compressed, or directories of either. Images are named by the
    /// archive (Docker's RepoTags, the OCI index's
    /// io.containerd.image.name). Each image is imported whole, its
    /// digests verified, or not at all. Pods use them with imagePullPolicy
    /// IfNotPresent or Never.
    Import {
        /// Archives to import.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        #[command(flatten)]
        store: Store,
    },
    /// List the images in the store.
    ///
    /// Repository, tag, manifest digest, image ID (config digest) and size
    /// on disk of its unpacked layers (shared layers count for each image).
    #[command(visible_alias = "list")]
    Ls {
        /// Only the references, one a line.
        #[arg(long, short)]
        quiet: bool,
        #[command(flatten)]
        store: Store,
    },
    /// Remove images from the store and free what no other image uses.
    ///
    /// An image is refused while a container's root filesystem is made of
    /// it (a running container, or a stopped one not yet removed), unless
    /// --force; its layers then stay on disk until that container is gone.
    /// The store does not know pod specs: an image that a pod will start
    /// or restart a container from next can be removed, and that container
    /// then pulls it again (or fails with ErrImageNeverPull under
    /// imagePullPolicy Never, ErrImagePull if no registry has it).
    #[command(visible_alias = "rmi")]
    Rm {
        /// References (`busybox:1.36`, `registry:5000/app@sha256:...`).
        #[arg(required = true, value_name = "REF")]
        references: Vec<String>,
        /// Remove images containers are made of too.
        #[arg(long, short)]
        force: bool,
        #[command(flatten)]
        store: Store,
    },
}

fn open(store: &Store, create: bool) -> anyhow::Result<ImageStore> {
    let dir = image_store_dir(&store.root_dir);
    if !create && !dir.join("blobs").is_dir() {
        bail!(
            "no image store in {} (is --root-dir the agent's? `keelson up` keeps it in <data-dir>/agent)",
            dir.display()
        );
    }
    ImageStore::open(&dir, Vec::new())
        .with_context(|| format!("open the image store in {}", dir.display()))
}

/// Runs `keelson images ...`.
pub async fn run(args: ImagesArgs) -> anyhow::Result<()> {
    match args.command {
        ImagesCommand::Import { files, store } => {
            let store = open(&store, true)?;
            let mut failed = 0;
            for f in &files {
                match store.import_path(f).await {
                    Ok(names) => {
                        for n in names {
                            println!("imported {n} from {}", f.display());
                        }
                    }
                    Err(e) => {
                        eprintln!("keelson images import: {e}");
                        failed += 1;
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} of {} archive(s) not imported", files.len());
            }
            Ok(())
        }
        ImagesCommand::Ls { quiet, store } => {
            let store = open(&store, false)?;
            let images = tokio::task::spawn_blocking(move || store.images())
                .await
                .context("list images")?;
            print!("{}", render_list(&images, quiet));
            Ok(())
        }
        ImagesCommand::Rm {
            references,
            force,
            store,
        } => {
            let store = open(&store, false)?;
            let mut failed = 0;
            for r in &references {
                let removed = if force {
                    store.remove(r).await
                } else {
                    store.remove_unused(r).await
                };
                match removed {
                    Ok(true) => println!("Deleted: {}", canonical(r)),
                    Ok(false) => {
                        eprintln!("keelson images rm: no such image {r}");
                        failed += 1;
                    }
                    Err(e @ ImageError::InUse { .. }) => {
                        eprintln!("keelson images rm: {e} (--force removes it)");
                        failed += 1;
                    }
                    Err(e) => {
                        eprintln!("keelson images rm: {e}");
                        failed += 1;
                    }
                }
            }
            // Free what the removed images alone had.
            store.gc().await.context("free unused layers")?;
            if failed > 0 {
                bail!("{failed} of {} image(s) not removed", references.len());
            }
            Ok(())
        }
    }
}

fn canonical(r: &str) -> String {
    ImageRef::parse(r).map_or_else(|_| r.to_string(), |r| r.to_string())
}

/// `crictl images`' table (pure).
fn render_list(images: &[ImageInfo], quiet: bool) -> String {
    if quiet {
        return images
            .iter()
            .map(|i| format!("{}\n", i.reference))
            .collect();
    }
    let short = |d: &str| -> String {
        let hex = d.strip_prefix("sha256:").unwrap_or(d);
        hex.chars().take(13).collect()
    };
    let mut rows = vec![[
        "IMAGE".to_string(),
        "TAG".into(),
        "DIGEST".into(),
        "IMAGE ID".into(),
        "SIZE".into(),
    ]];
    for i in images {
        let (name, tag) = match ImageRef::parse(&i.reference) {
            Ok(r) => (r.name(), r.tag.unwrap_or_else(|| "<none>".into())),
            Err(_) => (i.reference.clone(), "<none>".into()),
        };
        let (id, size) = match &i.image_id {
            Some(id) => (short(id), human_size(i.size())),
            None => ("<incomplete>".into(), "-".into()),
        };
        rows.push([name, tag, short(&i.digest), id, size]);
    }
    let mut widths = [0usize; 5];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// Bytes as `crictl images` shows them: decimal units, three significant
/// digits (`4.27MB`, `512B`).
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    let decimals = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    let s = format!("{v:.decimals$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s}{}", UNITS[u])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_crictl_shows_them() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(4_270_000), "4.27MB");
        assert_eq!(human_size(1_200_000), "1.2MB");
        assert_eq!(human_size(12_345_678), "12.3MB");
        assert_eq!(human_size(999_999), "1000kB");
        assert_eq!(human_size(3_000_000_000), "3GB");
    }

    #[test]
    fn the_list_is_a_table_like_crictls() {
        let hex = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let images = vec![
            ImageInfo {
                reference: "docker.io/library/busybox:1.36".into(),
                digest: hex('a'),
                image_id: Some(hex('b')),
                layers: vec![("l".into(), 1_200_000)],
                created: None,
            },
            ImageInfo {
                reference: format!("127.0.0.1:5000/app@{}", hex('c')),
                digest: hex('c'),
                image_id: None,
                layers: vec![],
                created: None,
            },
        ];
        let out = render_list(&images, false);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("IMAGE "), "{out}");
        let cols: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cols,
            [
                "docker.io/library/busybox",
                "1.36",
                "aaaaaaaaaaaaa",
                "bbbbbbbbbbbbb",
                "1.2MB"
            ]
        );
        let cols: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            cols,
            [
                "127.0.0.1:5000/app",
                "<none>",
                "ccccccccccccc",
                "<incomplete>",
                "-"
            ]
        );
        assert_eq!(
            render_list(&images, true),
            format!(
                "docker.io/library/busybox:1.36\n127.0.0.1:5000/app@{}\n",
                hex('c')
            )
        );
    }
}
