//! The Python `kubernetes` client (from PyPI) lists and watches pods.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use keelson_e2e::{ServerProcess, require_all};
use kube::api::{Api, DeleteParams, PostParams};

fn python_has_kubernetes() -> bool {
    Command::new("python3")
        .args(["-c", "import kubernetes"])
        .status()
        .is_ok_and(|s| s.success())
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn python_client_lists_and_watches_pods() {
    if !python_has_kubernetes() {
        assert!(
            !require_all(),
            "the Python kubernetes client is not installed (cargo xtask setup installs it)"
        );
        eprintln!("skipping: python3 -c 'import kubernetes' failed");
        return;
    }
    // No scheduler: the pod stays unbound, so its deletion is immediate.
    let server = ServerProcess::start_with(None, keelson_e2e::API_ONLY);
    let client = server.client().await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.create(&PostParams::default(), &pod("before"))
        .await
        .unwrap();

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/list_watch_pods.py");
    let mut child = Command::new("python3")
        .args([
            script,
            server.kubeconfig.to_str().unwrap(),
            "default",
            "during",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next = |what: &str| {
        rx.recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("python client: no line while waiting for {what}"))
    };
    let listed = next("LISTED");
    assert!(listed.starts_with("LISTED 1 "), "{listed}");
    assert_eq!(next("ITEM"), "ITEM before busybox:1.36");
    assert_eq!(next("WATCHING"), "WATCHING");
    tokio::time::sleep(Duration::from_millis(300)).await;

    pods.create(&PostParams::default(), &pod("during"))
        .await
        .unwrap();
    assert_eq!(next("ADDED"), "EVENT ADDED during Pending");
    // Unbound pods are deleted at once.
    pods.delete("during", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(next("DELETED"), "EVENT DELETED during Pending");
    assert_eq!(next("DONE"), "DONE");
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
