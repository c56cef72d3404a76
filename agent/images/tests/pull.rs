//! Pulls from a real local registry (Debian's docker-registry on loopback)
//! with the busybox-static test images, and overlay mounts of the result.
//! Needs root (chown, mknod, overlay mounts, chroot).

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;

use keelson_e2e::registry::{BUSYBOX, Registry, WHITEOUT};
use keelson_images::{ImageError, ImageStore, PullPolicy, mount_rootfs, unmount_rootfs};

/// Root, by the test kit's rule: root (chown, mknod, overlay mounts).
fn root_or_skip() -> bool {
    keelson_e2e::needs(module_path!()).root().ok()
}

fn setup() -> Option<(Registry, tempfile::TempDir, ImageStore)> {
    if !root_or_skip() {
        return None;
    }
    let reg = Registry::with_test_images_or_skip()?;
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("images"), vec![]).unwrap();
    Some((reg, dir, store))
}

/// Entries of a store subdirectory.
fn entries(store: &ImageStore, sub: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(store.root().join(sub))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn mounted(path: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    keelson_images::mount::mount_points(&info)
        .iter()
        .any(|m| Path::new(m) == path)
}

#[tokio::test]
async fn pulls_busybox_with_digests_and_config() {
    let Some((reg, _dir, store)) = setup() else {
        return;
    };
    let image = reg.image(BUSYBOX);
    let img = store
        .ensure(&image, PullPolicy::IfNotPresent)
        .await
        .unwrap();

    let (digest, manifest) = reg.manifest(BUSYBOX).unwrap();
    assert_eq!(img.image_id, manifest["config"]["digest"].as_str().unwrap());
    assert_eq!(
        img.repo_digest,
        format!("{}/keelson-test/busybox@{digest}", reg.addr())
    );
    assert_eq!(img.reference, image);
    assert_eq!(img.config.cmd, ["sh"]);
    assert!(img.config.entrypoint.is_empty());
    assert!(
        img.config.env.iter().any(|e| e.starts_with("PATH=")),
        "{:?}",
        img.config.env
    );
    assert_eq!(img.config.working_dir.as_deref(), Some("/"));
    assert_eq!(img.layers.len(), 1);
    let bb = fs::symlink_metadata(img.layers[0].join("bin/busybox")).unwrap();
    assert!(bb.is_file() && bb.mode() & 0o111 != 0);
    assert_eq!(
        fs::read_link(img.layers[0].join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap();
    assert_eq!(
        img.layers[0],
        store.root().join("layers/sha256").join(&layer_digest[7..])
    );

    let w = store
        .ensure(&reg.image(WHITEOUT), PullPolicy::IfNotPresent)
        .await
        .unwrap();
    assert_eq!(w.config.entrypoint, ["/bin/sh", "-c"]);
    assert_eq!(w.config.cmd, ["cat /data/keep.txt"]);
    assert!(w.config.env.contains(&"KEELSON_TEST=whiteout".to_string()));
    assert_eq!(w.config.working_dir.as_deref(), Some("/data"));
    assert_eq!(w.config.user.as_deref(), Some("1000:1000"));
    assert_eq!(w.layers.len(), 2);
    assert!(entries(&store, "tmp").is_empty(), "no temp leftovers");

    // The store survives a reopen (the agent restarting) without network.
    drop(store);
    let again = ImageStore::open(&_dir.path().join("images"), vec![]).unwrap();
    let got = again
        .get(&image)
        .unwrap()
        .expect("still present after reopen");
    assert_eq!(got.image_id, img.image_id);
    assert_eq!(got.layers, img.layers);
}

#[tokio::test]
async fn pull_policies() {
    let Some((mut reg, _dir, store)) = setup() else {
        return;
    };
    let image = reg.image(BUSYBOX);

    let err = store.ensure(&image, PullPolicy::Never).await.unwrap_err();
    assert!(matches!(err, ImageError::NeverPull { .. }), "{err}");
    assert_eq!(err.reason(), "ErrImageNeverPull");
    assert!(err.to_string().contains(&image), "{err}");

    let first = store
        .ensure(&image, PullPolicy::IfNotPresent)
        .await
        .unwrap();
    let s1 = store.stats();
    assert_eq!(
        (s1.manifests_fetched, s1.blobs_fetched, s1.layers_unpacked),
        (1, 2, 1)
    );

    // IfNotPresent and Never: no network at all.
    store
        .ensure(&image, PullPolicy::IfNotPresent)
        .await
        .unwrap();
    store.ensure(&image, PullPolicy::Never).await.unwrap();
    assert_eq!(store.stats(), s1);

    // Always re-resolves the manifest but downloads nothing already present.
    let again = store.ensure(&image, PullPolicy::Always).await.unwrap();
    let s2 = store.stats();
    assert_eq!(s2.manifests_fetched, 2);
    assert_eq!(s2.blobs_fetched, s1.blobs_fetched);
    assert_eq!(again.repo_digest, first.repo_digest);

    // Registry gone: IfNotPresent still works from the store, Always fails.
    reg.stop();
    let offline = store
        .ensure(&image, PullPolicy::IfNotPresent)
        .await
        .unwrap();
    assert_eq!(offline.image_id, first.image_id);
    let err = store.ensure(&image, PullPolicy::Always).await.unwrap_err();
    assert_eq!(err.reason(), "ErrImagePull");
    assert!(err.to_string().contains(&image), "{err}");
    assert!(
        store.get(&image).unwrap().is_some(),
        "a failed Always keeps the image"
    );
}

#[tokio::test]
async fn concurrent_ensures_pull_once() {
    let Some((reg, _dir, store)) = setup() else {
        return;
    };
    let store = Arc::new(store);
    let image = reg.image(WHITEOUT);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (store, image) = (store.clone(), image.clone());
            tokio::spawn(async move { store.ensure(&image, PullPolicy::IfNotPresent).await })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap().unwrap().image_id);
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]));
    let s = store.stats();
    assert_eq!(s.manifests_fetched, 1, "{s:?}");
    assert_eq!(s.blobs_fetched, 3, "config + 2 layers, once: {s:?}");
    assert_eq!(s.layers_unpacked, 2, "{s:?}");
    assert_eq!(entries(&store, "layers/sha256").len(), 2);
    assert!(entries(&store, "tmp").is_empty());
}

#[tokio::test]
async fn whiteouts_through_overlay_and_chroot() {
    let Some((reg, dir, store)) = setup() else {
        return;
    };
    let img = store
        .ensure(&reg.image(WHITEOUT), PullPolicy::IfNotPresent)
        .await
        .unwrap();

    // Layer 2 on disk, in overlay form.
    let top = &img.layers[1];
    let wh = fs::symlink_metadata(top.join("data/old.txt")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    assert_eq!(
        xattr::get(top.join("etc/replaced"), "trusted.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );

    let cdir = dir.path().join("containers/c1");
    let rootfs = mount_rootfs(&img.layers, &cdir).unwrap();
    let guard = Unmount(cdir.clone());
    assert!(mounted(&rootfs));
    // Idempotent: mounting again keeps the one mount.
    assert_eq!(mount_rootfs(&img.layers, &cdir).unwrap(), rootfs);
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let n = keelson_images::mount::mount_points(&info)
        .iter()
        .filter(|m| Path::new(m.as_str()) == rootfs)
        .count();
    assert_eq!(n, 1);

    assert!(!rootfs.join("data/old.txt").exists(), "deleted by layer 2");
    assert_eq!(
        fs::read_to_string(rootfs.join("data/keep.txt")).unwrap(),
        "keep\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("data/hard.txt")).unwrap(),
        "keep\n"
    );
    let mut replaced: Vec<String> = fs::read_dir(rootfs.join("etc/replaced"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    replaced.sort();
    assert_eq!(
        replaced,
        ["new.txt"],
        "opaque dir hides layer 1's a.txt and sub/"
    );

    // Usable: busybox runs inside it.
    let out = std::process::Command::new("chroot")
        .arg(&rootfs)
        .args(["/bin/busybox", "echo", "ok"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    let out = std::process::Command::new("chroot")
        .arg(&rootfs)
        .args([
            "/bin/sh",
            "-c",
            "echo hi > /data/written && cat /data/keep.txt",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Writes go to the container's upper dir, never into the shared layers.
    assert!(cdir.join("upper/data/written").exists());
    assert!(!img.layers.iter().any(|l| l.join("data/written").exists()));

    drop(guard);
    assert!(!mounted(&rootfs), "unmounted");
    for d in ["rootfs", "upper", "work"] {
        assert!(!cdir.join(d).exists(), "{d} removed");
    }
    unmount_rootfs(&cdir).unwrap();
    unmount_rootfs(&dir.path().join("never-existed")).unwrap();
    // The layers are intact after the container is gone.
    assert!(img.layers[0].join("bin/busybox").is_file());
}

/// Unmounts on drop, so a failed assertion leaves no mount behind.
struct Unmount(std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        unmount_rootfs(&self.0).unwrap();
    }
}

#[tokio::test]
async fn busy_rootfs_is_lazily_unmounted() {
    let Some((reg, dir, store)) = setup() else {
        return;
    };
    let img = store
        .ensure(&reg.image(BUSYBOX), PullPolicy::IfNotPresent)
        .await
        .unwrap();
    let cdir = dir.path().join("c-busy");
    let rootfs = mount_rootfs(&img.layers, &cdir).unwrap();
    // An open directory handle keeps the mount busy.
    let busy = fs::File::open(rootfs.join("bin")).unwrap();
    unmount_rootfs(&cdir).unwrap();
    assert!(!mounted(&rootfs));
    assert!(!cdir.join("rootfs").exists());
    drop(busy);
    assert!(
        img.layers[0].join("bin/busybox").is_file(),
        "layers untouched"
    );
}

#[tokio::test]
async fn missing_image_is_not_found_and_leaves_nothing() {
    let Some((reg, _dir, store)) = setup() else {
        return;
    };
    for image in [
        reg.image("keelson-test/does-not-exist:latest"),
        reg.image("keelson-test/busybox:no-such-tag"),
        format!(
            "{}@sha256:{}",
            reg.image("keelson-test/busybox"),
            "0".repeat(64)
        ),
    ] {
        let err = store
            .ensure(&image, PullPolicy::IfNotPresent)
            .await
            .unwrap_err();
        assert!(err.is_not_found(), "{image}: {err}");
        eprintln!("not found: {err}");
        assert_eq!(err.reason(), "ErrImagePull");
        assert!(err.to_string().contains(&image), "{err}");
    }
    for sub in ["blobs/sha256", "layers/sha256", "tmp"] {
        assert!(
            entries(&store, sub).is_empty(),
            "{sub}: {:?}",
            entries(&store, sub)
        );
    }
    assert!(store.list().is_empty());

    let err = store
        .ensure("Not A Reference", PullPolicy::IfNotPresent)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::InvalidReference { .. }), "{err}");
    assert_eq!(err.reason(), "InvalidImageName");
}

#[tokio::test]
async fn corrupt_blob_is_refused_and_not_kept() {
    let Some((reg, _dir, store)) = setup() else {
        return;
    };
    let (_, manifest) = reg.manifest(BUSYBOX).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    reg.corrupt_blob(layer).unwrap();
    let image = reg.image(BUSYBOX);
    let err = store
        .ensure(&image, PullPolicy::IfNotPresent)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&image), "{err}");
    assert!(err.to_string().contains(layer), "{err}");
    eprintln!("corrupt: {err}");
    assert!(store.get(&image).unwrap().is_none());
    assert!(store.list().is_empty());
    assert!(entries(&store, "layers/sha256").is_empty());
    assert!(entries(&store, "tmp").is_empty());
    // The index never points at anything, so no manifest or config was kept either.
    assert!(entries(&store, "blobs/sha256").is_empty());
}

#[tokio::test]
async fn remove_and_gc() {
    let Some((reg, _dir, store)) = setup() else {
        return;
    };
    let bb = reg.image(BUSYBOX);
    let wo = reg.image(WHITEOUT);
    store.ensure(&bb, PullPolicy::IfNotPresent).await.unwrap();
    let w = store.ensure(&wo, PullPolicy::IfNotPresent).await.unwrap();
    assert_eq!(store.list().len(), 2);
    let stats = store.gc().await.unwrap();
    assert_eq!(
        (stats.blobs_removed, stats.layers_removed),
        (0, 0),
        "all in use"
    );

    assert!(store.remove(&bb).await.unwrap());
    assert!(!store.remove(&bb).await.unwrap());
    let stats = store.gc().await.unwrap();
    assert_eq!((stats.blobs_removed, stats.layers_removed), (2, 1));
    assert!(store.get(&bb).unwrap().is_none());
    let still = store.get(&wo).unwrap().expect("whiteout image kept");
    assert_eq!(still.layers, w.layers);
    assert!(w.layers.iter().all(|l| l.is_dir()));
}

/// Pod workers spawn `ensure` on the runtime: its future must be `Send`.
#[allow(dead_code)]
fn ensure_future_is_send(store: &ImageStore) {
    fn is_send<T: Send>(_: T) {}
    is_send(store.ensure("x", PullPolicy::Always));
}

/// An OCI archive (a tar of the test images' layout) whose index names the
/// busybox image `name`.
fn test_archive(dir: &Path, name: &str) -> std::path::PathBuf {
    let layout = keelson_e2e::registry::build_test_images().expect("build the test images");
    let copy = dir.join("layout");
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(&layout)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(st.success());
    let index_path = copy.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
    for m in index["manifests"].as_array_mut().unwrap() {
        if m["annotations"]["org.opencontainers.image.ref.name"] == "busybox" {
            m["annotations"]["io.containerd.image.name"] = serde_json::json!(name);
        }
    }
    fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    let archive = dir.join("images.tar");
    let st = std::process::Command::new("tar")
        .arg("-C")
        .arg(&copy)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    archive
}

#[tokio::test]
async fn imports_an_oci_archive_with_no_registry_at_all() {
    if !root_or_skip() {
        return;
    }
    if !keelson_e2e::require_or_skip(
        keelson_e2e::registry::missing_image_tools().is_empty(),
        "test image tools missing",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("images"), vec![]).unwrap();
    let archive = test_archive(dir.path(), "keelson.local/busybox:v1");
    let names = store.import_path(&archive).await.unwrap();
    assert_eq!(names, ["keelson.local/busybox:v1"]);
    // Present for IfNotPresent and Never, with nothing to pull from.
    let img = store
        .ensure("keelson.local/busybox:v1", PullPolicy::Never)
        .await
        .unwrap();
    assert!(img.layers[0].join("bin/busybox").is_file());
    assert_eq!(img.config.cmd, ["sh"]);
    assert!(img.repo_digest.starts_with("keelson.local/busybox@sha256:"));
    // Nothing of the unpacked archive is left in the store's tmp.
    assert!(
        entries(&store, "tmp").is_empty(),
        "{:?}",
        entries(&store, "tmp")
    );
    // A second import of the same archive is a no-op that succeeds.
    assert_eq!(
        store.import_path(&archive).await.unwrap(),
        ["keelson.local/busybox:v1"]
    );
    // An archive with no named image is an error saying so.
    let unnamed = dir.path().join("unnamed");
    let layout = keelson_e2e::registry::build_test_images().unwrap();
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(&layout)
        .arg(&unnamed)
        .status()
        .unwrap();
    assert!(st.success());
    let err = store.import_path(&unnamed).await.unwrap_err().to_string();
    assert!(err.contains("io.containerd.image.name"), "{err}");
}
