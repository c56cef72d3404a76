//! `kubectl logs` through the API server: the server finds the pod's node and
//! streams the log from the node API the Node advertises. The node API here is
//! a small TLS server in the test standing for an agent (the agent's own tests
//! use the real one).

use std::sync::Arc;
use std::time::Duration;

use keelson_e2e::{ServerProcess, kubectl_versions};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A node API on 127.0.0.1 with a self-signed certificate. Answers
/// `/containerLogs/{ns}/{pod}/{container}` for container `app` with a line
/// naming the query, and with two lines 300 ms apart when following.
async fn fake_node_api() -> u16 {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
                let (path, query) = target.split_once('?').unwrap_or((&target, ""));
                let chunk = |s: &str| format!("{:x}\r\n{s}\r\n", s.len());
                if path != "/containerLogs/default/web/app" {
                    let body = format!("container not found ({path})");
                    let _ = tls
                        .write_all(
                            format!(
                                "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            )
                            .as_bytes(),
                        )
                        .await;
                    return;
                }
                let _ = tls
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
                    .await;
                if query.contains("follow=true") {
                    let _ = tls.write_all(chunk("line 1\n").as_bytes()).await;
                    let _ = tls.flush().await;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let _ = tls.write_all(chunk("line 2\n").as_bytes()).await;
                } else {
                    let _ = tls
                        .write_all(chunk(&format!("hello from app\nquery={query}\n")).as_bytes())
                        .await;
                }
                let _ = tls.write_all(b"0\r\n\r\n").await;
                let _ = tls.flush().await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_logs_are_streamed_from_the_node() {
    let node_port = fake_node_api().await;
    let server = ServerProcess::start_with(None, keelson_e2e::API_ONLY);
    let client = server.client().await;
    let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(json!({
        "metadata": {"name": "n1"},
        "status": {
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": node_port}}
        }
    }))
    .unwrap();
    nodes.create(&Default::default(), &node).await.unwrap();
    // Node status is written through the status subresource, as an agent does.
    nodes
        .patch_status(
            "n1",
            &Default::default(),
            &kube::api::Patch::Merge(json!({"status": node.status})),
        )
        .await
        .unwrap();
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client.clone(), "default");
    for (name, containers) in [
        ("web", json!([{"name": "app", "image": "busybox"}])),
        (
            "two",
            json!([{"name": "a", "image": "busybox"}, {"name": "b", "image": "busybox"}]),
        ),
    ] {
        let pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"nodeName": "n1", "containers": containers}
        }))
        .unwrap();
        pods.create(&Default::default(), &pod).await.unwrap();
    }
    let pending = serde_json::from_value(json!({
        "metadata": {"name": "pending"},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]}
    }))
    .unwrap();
    pods.create(&Default::default(), &pending).await.unwrap();

    for minor in kubectl_versions() {
        let out = server.kubectl_ok(minor, &["logs", "web", "--tail=3"]);
        assert!(out.contains("hello from app"), "kubectl 1.{minor}: {out}");
        assert!(out.contains("tailLines=3"), "kubectl 1.{minor}: {out}");
        let started = std::time::Instant::now();
        let out = server.kubectl_ok(minor, &["logs", "-f", "web"]);
        assert_eq!(out, "line 1\nline 2\n", "kubectl 1.{minor}");
        assert!(started.elapsed() >= Duration::from_millis(300));
        // Errors: two containers and none named, a container that does not
        // exist, a pod without a node, a pod that does not exist.
        for (args, want) in [
            (
                vec!["logs", "two", "-c", "zzz"],
                "container zzz is not valid",
            ),
            (vec!["logs", "pending"], "does not have a host assigned"),
            (vec!["logs", "nope"], "not found"),
        ] {
            let out = server.kubectl(minor, &args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "kubectl 1.{minor} {args:?}");
            assert!(
                stderr.contains(want),
                "kubectl 1.{minor} {args:?}: {stderr}"
            );
        }
    }
    // Through the API directly (kubectl picks the container itself when a pod
    // has several, so the server's own message is checked here).
    let err = pods.logs("two", &Default::default()).await.unwrap_err();
    assert!(err.to_string().contains("choose one of: [a b]"), "{err}");
    let text = pods
        .logs(
            "web",
            &kube::api::LogParams {
                previous: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(text.contains("previous=true"), "{text}");
}
