//! `docker save` archives imported into the store (made here with the test
//! kit's `docker_archive`, not checked in): plain and gzip-compressed,
//! as a tar or a directory; malformed ones refused with an error naming
//! what is wrong and nothing left behind. Also the store shared by two
//! processes (the agent and `keelson images`), and removal of an image a
//! container's root filesystem is made of. Needs root (layer ownership,
//! overlay mounts).

use std::fs;
use std::path::Path;
use std::time::Duration;

use keelson_e2e::docker_archive::{ArchiveFiles, Layer, SavedImage, save, sha256};
use keelson_images::{ImageError, ImageStore, PullPolicy, mount_rootfs, unmount_rootfs};

fn root_or_skip() -> bool {
    keelson_e2e::needs(module_path!()).root().ok()
}

fn entries(store: &ImageStore, sub: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(store.root().join(sub))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Nothing of a failed import anywhere in the store.
fn assert_empty(store: &ImageStore, what: &str) {
    assert!(
        store.list().is_empty(),
        "{what}: indexed {:?}",
        store.list()
    );
    for sub in ["tmp", "blobs/sha256", "layers/sha256"] {
        assert!(
            entries(store, sub).is_empty(),
            "{what}: left in {sub}: {:?}",
            entries(store, sub)
        );
    }
}

fn hello_layer() -> Layer {
    Layer::new()
        .dir("etc")
        .file("etc/hello", b"hello from a docker archive\n", 0o644)
        .dir("bin")
        .symlink("bin/hi", "../etc/hello")
}

fn second_layer() -> Layer {
    Layer::new()
        .dir("etc")
        .file("etc/second", b"second layer\n", 0o600)
}

#[tokio::test]
async fn imports_docker_save_archives_plain_gzipped_and_unpacked() {
    if !root_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("images"), vec![]).unwrap();

    // Two layers, the second gzip-compressed inside the archive; the
    // archive itself plain.
    let mut img = SavedImage::new(
        &["keelson.local/hello:v1", "hello:latest"],
        vec![hello_layer(), second_layer().gzipped()],
    );
    img.cmd = vec!["cat".into(), "/etc/hello".into()];
    let plain = dir.path().join("hello.tar");
    img.save().write_tar(&plain, false).unwrap();
    let names = store.import_path(&plain).await.unwrap();
    assert_eq!(
        names,
        ["docker.io/library/hello:latest", "keelson.local/hello:v1"]
    );
    let got = store
        .ensure("keelson.local/hello:v1", PullPolicy::Never)
        .await
        .unwrap();
    assert_eq!(got.config.cmd, ["cat", "/etc/hello"]);
    assert_eq!(got.layers.len(), 2);
    assert_eq!(
        fs::read(got.layers[0].join("etc/hello")).unwrap(),
        b"hello from a docker archive\n"
    );
    assert_eq!(
        fs::read_link(got.layers[0].join("bin/hi")).unwrap(),
        Path::new("../etc/hello")
    );
    assert_eq!(
        fs::read(got.layers[1].join("etc/second")).unwrap(),
        b"second layer\n"
    );
    assert!(got.repo_digest.starts_with("keelson.local/hello@sha256:"));
    // The short name is Docker's.
    let short = store.ensure("hello", PullPolicy::Never).await.unwrap();
    assert_eq!(short.image_id, got.image_id);
    assert!(entries(&store, "tmp").is_empty());

    // `docker save | gzip`: the same image again under another tag, its
    // layers already there.
    let gz = dir.path().join("hello.tar.gz");
    SavedImage::new(
        &["keelson.local/hello:v2"],
        vec![hello_layer(), second_layer().gzipped()],
    )
    .save()
    .write_tar(&gz, true)
    .unwrap();
    assert_eq!(
        store.import_path(&gz).await.unwrap(),
        ["keelson.local/hello:v2"]
    );
    let v2 = store
        .ensure("keelson.local/hello:v2", PullPolicy::Never)
        .await
        .unwrap();
    assert_eq!(v2.layers, got.layers);
    assert_eq!(entries(&store, "layers/sha256").len(), 2);

    // A directory (an unpacked archive) whose second image's layer is a
    // link to the first's copy, as older `docker save` writes a layer
    // that two images share.
    let unpacked = dir.path().join("unpacked");
    let mut files = save(vec![
        SavedImage::new(&["keelson.local/a:1"], vec![hello_layer()]),
        SavedImage::new(&["keelson.local/b:1"], vec![hello_layer()]),
    ]);
    let mut m = files.manifest();
    let first = m[0]["Layers"][0].as_str().unwrap().to_string();
    m[1]["Layers"][0] = serde_json::json!("linked/layer.tar");
    files.set_manifest(&m);
    files
        .links
        .push(("linked/layer.tar".into(), format!("../{first}")));
    let tar = dir.path().join("linked.tar");
    files.write_tar(&tar, false).unwrap();
    fs::create_dir(&unpacked).unwrap();
    let st = std::process::Command::new("tar")
        .arg("-C")
        .arg(&unpacked)
        .arg("-xf")
        .arg(&tar)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        store.import_path(&unpacked).await.unwrap(),
        ["keelson.local/a:1", "keelson.local/b:1"]
    );
    // And as the tar itself.
    assert_eq!(
        store.import_path(&tar).await.unwrap(),
        ["keelson.local/a:1", "keelson.local/b:1"]
    );
    assert!(entries(&store, "tmp").is_empty());

    // ls: every image, its layers and sizes.
    let infos = store.images();
    assert_eq!(infos.len(), 5);
    let v1 = infos
        .iter()
        .find(|i| i.reference == "keelson.local/hello:v1")
        .unwrap();
    assert_eq!(v1.image_id.as_deref(), Some(got.image_id.as_str()));
    assert_eq!(v1.layers.len(), 2);
    assert!(v1.size() > 0);
    assert!(v1.created.is_some());
}

/// A well-formed single-image archive to break.
fn good_files() -> ArchiveFiles {
    SavedImage::new(&["keelson.local/bad:v1"], vec![hello_layer()]).save()
}

fn config_name(f: &ArchiveFiles) -> String {
    f.manifest()[0]["Config"].as_str().unwrap().to_string()
}

fn layer_name(f: &ArchiveFiles) -> String {
    f.manifest()[0]["Layers"][0].as_str().unwrap().to_string()
}

/// Replaces the config (and renames it after its new digest).
fn set_config(f: &mut ArchiveFiles, change: impl FnOnce(&mut serde_json::Value)) {
    let old = config_name(f);
    let mut c: serde_json::Value = serde_json::from_slice(f.get(&old).unwrap()).unwrap();
    change(&mut c);
    let bytes = serde_json::to_vec(&c).unwrap();
    let new = format!("{}.json", &sha256(&bytes)["sha256:".len()..]);
    f.remove(&old);
    f.set(&new, bytes);
    let mut m = f.manifest();
    m[0]["Config"] = serde_json::json!(new);
    f.set_manifest(&m);
}

#[tokio::test]
async fn malformed_docker_archives_are_refused_and_leave_nothing() {
    if !root_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("images"), vec![]).unwrap();
    type Break = Box<dyn Fn(&mut ArchiveFiles)>;
    let cases: Vec<(&str, Break, &str)> = vec![
        (
            "no manifest.json",
            Box::new(|f| f.remove("manifest.json")),
            "neither index.json (an OCI image layout) nor manifest.json",
        ),
        (
            "manifest.json not JSON",
            Box::new(|f| f.set("manifest.json", b"[{".to_vec())),
            "parse manifest.json",
        ),
        (
            "a layer path escaping with ..",
            Box::new(|f| {
                let mut m = f.manifest();
                m[0]["Layers"][0] = serde_json::json!("../../../../etc/passwd");
                f.set_manifest(&m);
            }),
            "layer path \"../../../../etc/passwd\" leaves the archive",
        ),
        (
            "a layer that is a link out of the archive",
            Box::new(|f| {
                let mut m = f.manifest();
                m[0]["Layers"][0] = serde_json::json!("evil/layer.tar");
                f.set_manifest(&m);
                f.links
                    .push(("evil/layer.tar".into(), "/etc/passwd".into()));
            }),
            "leaves the archive",
        ),
        (
            "a missing layer",
            Box::new(|f| {
                let l = layer_name(f);
                f.remove(&l);
            }),
            "layer ",
        ),
        (
            "a config whose name is not its digest",
            Box::new(|f| {
                let c = config_name(f);
                let bytes = f.get(&c).unwrap().clone();
                let wrong = format!("{}.json", "0".repeat(64));
                f.remove(&c);
                f.set(&wrong, bytes);
                let mut m = f.manifest();
                m[0]["Config"] = serde_json::json!(wrong);
                f.set_manifest(&m);
            }),
            "digest mismatch: its name says sha256:0000",
        ),
        (
            "an uncompressed layer that is not its diff_id",
            Box::new(|f| {
                set_config(f, |c| {
                    c["rootfs"]["diff_ids"][0] =
                        serde_json::json!(format!("sha256:{}", "1".repeat(64)))
                })
            }),
            "the config's diff_id is sha256:1111",
        ),
        (
            "more layers than diff_ids",
            Box::new(|f| set_config(f, |c| c["rootfs"]["diff_ids"] = serde_json::json!([]))),
            "lists 0 diff_ids for the 1 layers",
        ),
        (
            "no RepoTags",
            Box::new(|f| {
                let mut m = f.manifest();
                m[0]["RepoTags"] = serde_json::json!(null);
                f.set_manifest(&m);
            }),
            "no image in it is named (RepoTags in manifest.json)",
        ),
        (
            "a RepoTag that is no reference",
            Box::new(|f| {
                let mut m = f.manifest();
                m[0]["RepoTags"] = serde_json::json!(["Not A::Name"]);
                f.set_manifest(&m);
            }),
            "RepoTag \"Not A::Name\"",
        ),
    ];
    for (i, (what, brk, want)) in cases.into_iter().enumerate() {
        let mut f = good_files();
        brk(&mut f);
        let path = dir.path().join(format!("bad-{i}.tar"));
        f.write_tar(&path, i % 2 == 1).unwrap();
        let err = store.import_path(&path).await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(want), "{what}: {msg}");
        assert!(
            msg.contains(&path.display().to_string()),
            "{what}: the error names the archive: {msg}"
        );
        assert_empty(&store, what);
    }

    // A gzip layer whose content is not its diff_id: found while
    // unpacking, by the store's own check; nothing kept either.
    let mut f = SavedImage::new(&["keelson.local/bad:gz"], vec![hello_layer().gzipped()]).save();
    set_config(&mut f, |c| {
        c["rootfs"]["diff_ids"][0] = serde_json::json!(format!("sha256:{}", "2".repeat(64)))
    });
    let path = dir.path().join("bad-gzip-layer.tar");
    f.write_tar(&path, false).unwrap();
    let err = store.import_path(&path).await.unwrap_err();
    assert!(
        matches!(&err, ImageError::DigestMismatch { what, .. } if what.contains("diff_id")),
        "{err}"
    );
    assert_empty(&store, "gzip layer with a wrong diff_id");

    // The good one still imports.
    let path = dir.path().join("good.tar");
    good_files().write_tar(&path, false).unwrap();
    assert_eq!(
        store.import_path(&path).await.unwrap(),
        ["keelson.local/bad:v1"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_a_store() {
    if !root_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    // Two stores on one root stand for the agent and `keelson images`:
    // each reads the index from disk and takes the file locks on its own
    // descriptors, as two processes do.
    let agent = ImageStore::open(&root, vec![]).unwrap();
    let cli = ImageStore::open(&root, vec![]).unwrap();
    let a = dir.path().join("a.tar");
    let b = dir.path().join("b.tar");
    SavedImage::new(&["keelson.local/a:1"], vec![hello_layer()])
        .save()
        .write_tar(&a, false)
        .unwrap();
    SavedImage::new(&["keelson.local/b:1"], vec![second_layer()])
        .save()
        .write_tar(&b, false)
        .unwrap();
    agent.import_path(&a).await.unwrap();
    cli.import_path(&b).await.unwrap();
    // Neither write lost the other's entry, and each sees both.
    for s in [&agent, &cli] {
        assert_eq!(s.list(), ["keelson.local/a:1", "keelson.local/b:1"]);
    }
    assert!(agent.get("keelson.local/b:1").unwrap().is_some());
    // A removal by one is seen by the other at once.
    assert!(cli.remove("keelson.local/a:1").await.unwrap());
    assert!(agent.get("keelson.local/a:1").unwrap().is_none());
    cli.gc().await.unwrap();
    assert_eq!(entries(&agent, "layers/sha256").len(), 1);

    // While another process collects (holds store.lock exclusively), an
    // import waits, and then completes.
    let lock = fs::File::open(root.join("store.lock")).unwrap();
    let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let agent = std::sync::Arc::new(agent);
    let task = {
        // The import future is not `Send` (see the agent's `Host::pull`).
        let (agent, a) = (agent.clone(), a.clone());
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || handle.block_on(agent.import_path(&a)))
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!task.is_finished(), "the import went ahead of the lock");
    assert!(cli.get("keelson.local/a:1").unwrap().is_none());
    drop(held);
    task.await.unwrap().unwrap();
    assert!(cli.get("keelson.local/a:1").unwrap().is_some());
}

#[tokio::test]
async fn an_image_a_container_is_made_of_is_removed_only_by_force() {
    if !root_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&dir.path().join("images"), vec![]).unwrap();
    let tar = dir.path().join("used.tar");
    save(vec![
        SavedImage::new(&["keelson.local/used:1"], vec![hello_layer()]),
        SavedImage::new(&["keelson.local/idle:1"], vec![second_layer()]),
    ])
    .write_tar(&tar, false)
    .unwrap();
    store.import_path(&tar).await.unwrap();
    let img = store
        .ensure("keelson.local/used:1", PullPolicy::Never)
        .await
        .unwrap();
    let container = dir.path().join("container");
    let rootfs = mount_rootfs(&img.layers, &container).unwrap();
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = unmount_rootfs(self.0);
        }
    }
    let _guard = Unmount(&container);

    assert_eq!(
        store.users("keelson.local/used:1").unwrap(),
        std::slice::from_ref(&rootfs)
    );
    assert!(store.users("keelson.local/idle:1").unwrap().is_empty());
    let err = store
        .remove_unused("keelson.local/used:1")
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::InUse { .. }), "{err}");
    assert!(
        err.to_string().contains(&rootfs.display().to_string()),
        "{err}"
    );
    assert!(store.get("keelson.local/used:1").unwrap().is_some());
    // An unused one goes.
    assert!(store.remove_unused("keelson.local/idle:1").await.unwrap());
    // Forced: the entry goes, but gc keeps the mounted layer.
    assert!(store.remove("keelson.local/used:1").await.unwrap());
    let stats = store.gc().await.unwrap();
    assert_eq!(stats.layers_removed, 1, "only the idle image's layer");
    assert!(img.layers[0].is_dir());
    assert_eq!(
        fs::read(rootfs.join("etc/hello")).unwrap(),
        b"hello from a docker archive\n"
    );
    // Once unmounted, the next gc takes it.
    unmount_rootfs(&container).unwrap();
    assert_eq!(store.gc().await.unwrap().layers_removed, 1);
    assert!(!img.layers[0].exists());
}
