//! The node's image store from the command line and from the agent, end to
//! end: a `docker save` archive (made here, with busybox-static in its
//! layer) imported by `keelson images import` while the agent runs shows
//! in `keelson images ls`, runs a pod whose registry does not exist, is
//! refused by `keelson images rm` while the pod runs and removed after; the
//! agent's drop box takes a docker archive too; and image garbage
//! collection by disk usage removes unused images and keeps those pods use,
//! with the kubelet's Node Events.
//!
//! Needs root, runc and the CNI plugins (skips, or fails under
//! KEELSON_REQUIRE_ALL=1, otherwise). No network: the pods' registries are
//! `keelson.invalid` and `127.0.0.1:1`, and nothing is pulled.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Pod};
use keelson_e2e::agent::{AgentProcess, can_run};
use keelson_e2e::docker_archive::{Layer, SavedImage, save};
use keelson_e2e::{ServerProcess, keelson_bin};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

/// `keelson images ARGS --root-dir <the agent's>`.
fn images(agent: &AgentProcess, args: &[&str]) -> Output {
    std::process::Command::new(keelson_bin())
        .arg("images")
        .args(args)
        .arg("--root-dir")
        .arg(&agent.root_dir)
        .output()
        .expect("run keelson images")
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `keelson images ls` rows as (IMAGE, TAG).
fn listed(agent: &AgentProcess) -> Vec<(String, String)> {
    ok(&images(agent, &["ls"]), "keelson images ls")
        .lines()
        .skip(1)
        .map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            (c[0].to_string(), c[1].to_string())
        })
        .collect()
}

fn busybox_layer() -> Option<Layer> {
    let l = Layer::busybox();
    if !keelson_e2e::require_or_skip(l.is_some(), "/bin/busybox (busybox-static) missing") {
        return None;
    }
    l
}

fn pod(name: &str, node: &str, image: &str, policy: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main", "image": image, "imagePullPolicy": policy,
                "command": ["sh", "-c", "echo hello from the archive; while true; do sleep 1; done"],
            }],
        },
    }))
    .unwrap()
}

async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    agent: &AgentProcess,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "{what}: not within {timeout:?}; agent log:\n{}",
        agent.log()
    );
}

fn running(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
        })
}

async fn wait_running(api: &Api<Pod>, name: &str, agent: &AgentProcess) -> Pod {
    wait_for(
        &format!("pod {name} Running"),
        Duration::from_secs(90),
        agent,
        async || api.get(name).await.ok().filter(running),
    )
    .await
}

async fn delete_and_wait(api: &Api<Pod>, name: &str, agent: &AgentProcess) {
    api.delete(name, &DeleteParams::default()).await.unwrap();
    wait_for(
        &format!("pod {name} gone"),
        Duration::from_secs(60),
        agent,
        async || matches!(api.get_opt(name).await, Ok(None)).then_some(()),
    )
    .await;
}

/// The messages of this node's Events with `reason`.
async fn node_events(client: &kube::Client, node: &str, reason: &str) -> Vec<String> {
    Api::<Event>::namespaced(client.clone(), "default")
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            e.involved_object.kind.as_deref() == Some("Node")
                && e.involved_object.name.as_deref() == Some(node)
                && e.reason.as_deref() == Some(reason)
        })
        .filter_map(|e| e.message)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_save_archive_imported_by_the_cli_runs_a_pod() {
    if !can_run("images-cli") {
        return;
    }
    let Some(layer) = busybox_layer() else {
        return;
    };
    let server = ServerProcess::start(None);
    let client = server.client().await;
    let agent = AgentProcess::start(&server, "images-cli", &[]);
    let dir = tempfile::tempdir().unwrap();

    // `docker save | gzip` of an image whose registry does not exist.
    const IMAGE: &str = "keelson.invalid/e2e/busybox:v1";
    let archive = dir.path().join("busybox.tar.gz");
    SavedImage::new(&[IMAGE], vec![layer.gzipped()])
        .save()
        .write_tar(&archive, true)
        .unwrap();
    let out = ok(
        &images(&agent, &["import", archive.to_str().unwrap()]),
        "keelson images import",
    );
    assert!(out.contains(&format!("imported {IMAGE}")), "{out}");
    assert_eq!(
        listed(&agent),
        [("keelson.invalid/e2e/busybox".to_string(), "v1".to_string())]
    );
    let quiet = ok(&images(&agent, &["ls", "-q"]), "keelson images ls -q");
    assert_eq!(quiet.trim(), IMAGE);

    // A pod runs it, nothing pulled.
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    api.create(
        &PostParams::default(),
        &pod("from-archive", &agent.node_name, IMAGE, "IfNotPresent"),
    )
    .await
    .unwrap();
    let p = wait_running(&api, "from-archive", &agent).await;
    // The kubelet's Event for an image the node has: no Pulling.
    let evs = wait_for(
        "a Pulled Event",
        Duration::from_secs(10),
        &agent,
        async || {
            let evs: Vec<(String, String)> = Api::<Event>::namespaced(client.clone(), "default")
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .filter(|e| e.involved_object.name.as_deref() == Some("from-archive"))
                .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
                .collect();
            evs.iter().any(|(r, _)| r == "Pulled").then_some(evs)
        },
    )
    .await;
    assert!(
        evs.contains(&(
            "Pulled".to_string(),
            format!("Container image \"{IMAGE}\" already present on machine")
        )),
        "{evs:?}"
    );
    assert!(!evs.iter().any(|(r, _)| r == "Pulling"), "{evs:?}");
    let status = &p.status.unwrap().container_statuses.unwrap()[0];
    assert!(
        status
            .image_id
            .starts_with("keelson.invalid/e2e/busybox@sha256:"),
        "{status:?}"
    );

    // In use: refused without --force, and the image stays.
    let out = images(&agent, &["rm", IMAGE]);
    assert!(!out.status.success(), "rm of an image in use succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use") && err.contains("--force"), "{err}");
    assert_eq!(listed(&agent).len(), 1);

    // Once the pod is gone, rm removes it and its layers.
    delete_and_wait(&api, "from-archive", &agent).await;
    let out = ok(
        &images(&agent, &["rm", "keelson.invalid/e2e/busybox:v1"]),
        "rm",
    );
    assert!(out.contains(&format!("Deleted: {IMAGE}")), "{out}");
    assert!(listed(&agent).is_empty());
    let layers = agent.root_dir.join("images/layers/sha256");
    assert_eq!(std::fs::read_dir(&layers).unwrap().count(), 0);
    // A second rm says there is no such image.
    let out = images(&agent, &["rm", IMAGE]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such image"));

    // The drop box takes a docker archive too (written under a dot name,
    // then renamed, as the agent's README asks).
    let drop = agent.root_dir.join("images/import");
    let tmp = drop.join(".dropped.tar");
    SavedImage::new(
        &["keelson.invalid/e2e/dropped:v2"],
        vec![busybox_layer().unwrap()],
    )
    .save()
    .write_tar(&tmp, false)
    .unwrap();
    std::fs::rename(&tmp, drop.join("dropped.tar")).unwrap();
    wait_for(
        "the dropped archive imported",
        Duration::from_secs(30),
        &agent,
        async || {
            listed(&agent)
                .contains(&("keelson.invalid/e2e/dropped".into(), "v2".into()))
                .then_some(())
        },
    )
    .await;
    let msgs = wait_for(
        "an ImageImported Event",
        Duration::from_secs(10),
        &agent,
        async || {
            Some(node_events(&client, &agent.node_name, "ImageImported").await)
                .filter(|m| !m.is_empty())
        },
    )
    .await;
    assert!(
        msgs[0].contains("keelson.invalid/e2e/dropped:v2"),
        "{msgs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_gc_removes_unused_images_and_keeps_those_pods_use() {
    if !can_run("images-gc") {
        return;
    }
    let Some(layer) = busybox_layer() else {
        return;
    };
    let server = ServerProcess::start(None);
    let client = server.client().await;
    // Any usage is above 1 %, and 0 % is out of reach: every pass collects
    // what it may and says it could not free enough.
    let agent = AgentProcess::start(
        &server,
        "images-gc",
        &[
            "--image-gc-high-threshold",
            "1",
            "--image-gc-low-threshold",
            "0",
            "--image-minimum-gc-age",
            "0s",
            "--image-gc-period",
            "1s",
        ],
    );
    const USED: &str = "127.0.0.1:1/e2e/used:v1";
    const IDLE: &str = "127.0.0.1:1/e2e/idle:v1";
    // The pod first: from then on its image is in use, even before it is
    // on the node.
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    api.create(
        &PostParams::default(),
        &pod("gc-user", &agent.node_name, USED, "Never"),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("two.tar");
    save(vec![
        SavedImage::new(&[USED], vec![layer]),
        SavedImage::new(
            &[IDLE],
            vec![Layer::new().dir("etc").file("etc/idle", b"idle\n", 0o644)],
        ),
    ])
    .write_tar(&archive, false)
    .unwrap();
    ok(
        &images(&agent, &["import", archive.to_str().unwrap()]),
        "keelson images import",
    );
    let host = |r: &str| r.rsplit_once(':').unwrap().0.to_string();
    wait_for(
        "the idle image collected",
        Duration::from_secs(30),
        &agent,
        async || (listed(&agent) == [(host(USED), "v1".to_string())]).then_some(()),
    )
    .await;
    let collected = node_events(&client, &agent.node_name, "ImageGarbageCollected").await;
    assert!(collected.iter().any(|m| m.contains(IDLE)), "{collected:?}");
    assert!(collected.iter().all(|m| !m.contains(USED)), "{collected:?}");
    let failed = wait_for(
        "a FreeDiskSpaceFailed Event",
        Duration::from_secs(10),
        &agent,
        async || {
            Some(node_events(&client, &agent.node_name, "FreeDiskSpaceFailed").await)
                .filter(|m| !m.is_empty())
        },
    )
    .await;
    assert!(
        failed[0].starts_with("Failed to garbage collect required amount of images."),
        "{failed:?}"
    );
    // The pod gets its image on its next attempt (after the back-off) and
    // runs; collection passes meanwhile leave the image alone.
    wait_running(&api, "gc-user", &agent).await;
    assert_eq!(listed(&agent), [(host(USED), "v1".to_string())]);
    // Its pod gone, the image is unused and goes too, layers and all.
    delete_and_wait(&api, "gc-user", &agent).await;
    wait_for(
        "the used image collected once its pod is gone",
        Duration::from_secs(30),
        &agent,
        async || listed(&agent).is_empty().then_some(()),
    )
    .await;
    let layers = agent.root_dir.join("images/layers/sha256");
    wait_for(
        "its layers removed",
        Duration::from_secs(10),
        &agent,
        async || (std::fs::read_dir(&layers).unwrap().count() == 0).then_some(()),
    )
    .await;
    assert!(Path::new(&agent.root_dir).is_dir());
}
