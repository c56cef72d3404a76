//! `pods/{name}/log`, `exec`, `attach`, `portforward`: the API server finds
//! the pod's node and passes the request to that node's agent (its node
//! API, TLS on the port the Node advertises in
//! `status.daemonEndpoints.kubeletEndpoint`): a log is streamed back, a
//! streaming request's upgraded connection is spliced to the node's.
//!
//! The API server authenticates to the node with its node client
//! certificate ([`NodeClient`]). The node's serving certificate is
//! self-signed by its agent, so it is not verified (as kube-apiserver does
//! without `--kubelet-certificate-authority`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, StatusCode, header};
use serde_json::Value;

use crate::api::errors::{ApiError, ApiResult};
use crate::api::registry::Registry;
use crate::api::resources;

/// How the API server connects to node APIs: TLS, presenting its node
/// client certificate (signed by the cluster CA, in system:masters).
#[derive(Clone)]
pub struct NodeClient {
    tls: Arc<rustls::ClientConfig>,
}

impl NodeClient {
    /// A client presenting `cert_pem`/`key_pem`.
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<NodeClient, String> {
        use rustls::pki_types::pem::PemObject;
        let certs: Vec<rustls::pki_types::CertificateDer<'static>> =
            rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("node client certificate: {e}"))?;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| format!("node client key: {e}"))?;
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls config: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(keelson_host::serve::UnverifiedServer))
        .with_client_auth_cert(certs, key)
        .map_err(|e| format!("node client certificate: {e}"))?;
        Ok(NodeClient { tls: Arc::new(tls) })
    }
}

/// Query parameters of `pods/log` forwarded to the node as they are.
const FORWARDED: &[&str] = &[
    "follow",
    "previous",
    "tailLines",
    "timestamps",
    "sinceSeconds",
    "sinceTime",
    "limitBytes",
];

/// Where a pod's logs are served: node address and port, and the container.
#[derive(Debug, PartialEq, Eq)]
pub struct LogTarget {
    pub host: String,
    pub port: u16,
    pub path: String,
}

/// The container a request names, or the pod's only container (pure).
fn container_of<'a>(pod: &'a Value, container: Option<&'a str>) -> ApiResult<&'a str> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let names: Vec<&str> = ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| pod["spec"][*k].as_array().into_iter().flatten())
        .filter_map(|c| c["name"].as_str())
        .collect();
    match container {
        Some(c) if names.contains(&c) => Ok(c),
        Some(c) => Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None => {
            let main: Vec<&str> = pod["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["name"].as_str())
                .collect();
            match main.as_slice() {
                [only] => Ok(*only),
                _ => Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    main.join(" ")
                ))),
            }
        }
    }
}

/// The node API's address of the pod's node (pure).
fn node_endpoint(pod: &Value, node: &Value) -> ApiResult<(String, u16)> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let addresses = node["status"]["addresses"].as_array();
    let pick = |kind: &str| {
        addresses
            .into_iter()
            .flatten()
            .find(|a| a["type"] == kind)
            .and_then(|a| a["address"].as_str())
    };
    let node_name = node["metadata"]["name"].as_str().unwrap_or_default();
    let host = pick("InternalIP")
        .or_else(|| pick("ExternalIP"))
        .or_else(|| pick("Hostname"))
        .ok_or_else(|| {
            ApiError::unavailable(format!(
                "node {node_name} of pod {name} reports no address for its node API"
            ))
        })?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .unwrap_or(10250);
    Ok((host.to_string(), port))
}

/// Works out the node API URL path for a pod's container log (pure).
pub fn log_target(
    pod: &Value,
    node: &Value,
    container: Option<&str>,
    query: &[(String, String)],
) -> ApiResult<LogTarget> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let container = container_of(pod, container)?;
    let (host, port) = node_endpoint(pod, node)?;
    let mut path = format!("/containerLogs/{ns}/{name}/{container}");
    let forwarded: Vec<String> = query
        .iter()
        .filter(|(k, _)| FORWARDED.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    if !forwarded.is_empty() {
        path.push('?');
        path.push_str(&forwarded.join("&"));
    }
    Ok(LogTarget { host, port, path })
}

fn encode(v: &str) -> String {
    percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The streaming subresources of pods, passed through to the node.
pub const STREAMING: &[&str] = &["exec", "attach", "portforward"];

/// Works out the node API URL path of `pods/exec`, `pods/attach`,
/// `pods/portforward` or `pods/log` over a WebSocket (pure): the query
/// goes along but for `container`, which becomes part of the path.
pub fn stream_target(
    pod: &Value,
    node: &Value,
    sub: &str,
    query: &[(String, String)],
) -> ApiResult<LogTarget> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let (host, port) = node_endpoint(pod, node)?;
    let container = query
        .iter()
        .find(|(k, _)| k == "container")
        .map(|(_, v)| v.as_str())
        .filter(|c| !c.is_empty());
    let mut path = match sub {
        "portforward" => format!("/portForward/{ns}/{name}"),
        "log" => format!(
            "/containerLogs/{ns}/{name}/{}",
            container_of(pod, container)?
        ),
        _ => format!("/{sub}/{ns}/{name}/{}", container_of(pod, container)?),
    };
    let forwarded: Vec<String> = query
        .iter()
        .filter(|(k, _)| k != "container" && (sub != "log" || FORWARDED.contains(&k.as_str())))
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    if !forwarded.is_empty() {
        path.push('?');
        path.push_str(&forwarded.join("&"));
    }
    Ok(LogTarget { host, port, path })
}

/// The pod and the Node it is bound to.
async fn pod_and_node(registry: &Registry, ns: &str, name: &str) -> ApiResult<(Value, Value)> {
    let pods = resources::find("", "v1", "pods").expect("pods are served");
    let nodes = resources::find("", "v1", "nodes").expect("nodes are served");
    let pod = registry.get(pods, Some(ns), name).await?;
    let node_name = pod["spec"]["nodeName"].as_str().unwrap_or_default();
    if node_name.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    let node = registry.get(nodes, None, node_name).await?;
    Ok((pod, node))
}

/// `pods/{name}/exec|attach|portforward`: the request, with its upgrade
/// (WebSocket or SPDY), is passed to the pod's node; once the node
/// switches protocols, bytes are copied both ways until either side
/// closes. The client's credentials are not passed on.
pub async fn stream(
    registry: &Registry,
    client: &NodeClient,
    ns: &str,
    name: &str,
    sub: &str,
    mut req: axum::extract::Request,
) -> ApiResult<Response> {
    let (pod, node) = pod_and_node(registry, ns, name).await?;
    let node_name = node["metadata"]["name"].as_str().unwrap_or_default();
    let query: Vec<(String, String)> =
        serde_urlencoded::from_str(req.uri().query().unwrap_or_default())
            .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
    let target = stream_target(&pod, &node, sub, &query)?;
    let unavailable = |e: String| {
        ApiError::unavailable(format!(
            "{sub} in pod {ns}/{name} on node {node_name} at {}:{}: {e}",
            target.host, target.port
        ))
    };
    let (mut sender, addr) = connect(client, &target, true).await.map_err(unavailable)?;
    let mut out = http::Request::builder()
        .method(req.method().clone())
        .uri(&target.path)
        .header(header::HOST, &addr);
    for (k, v) in req.headers() {
        if k != header::HOST && k != header::AUTHORIZATION && k != header::CONTENT_LENGTH {
            out = out.header(k, v);
        }
    }
    let out = out
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| unavailable(format!("request: {e}")))?;
    let mut resp = sender
        .send_request(out)
        .await
        .map_err(|e| unavailable(format!("{} {}: {e}", req.method(), target.path)))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(node_error(resp).await);
    }
    let mut answer = Response::new(Body::empty());
    *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *answer.headers_mut() = resp.headers().clone();
    let client = hyper::upgrade::on(&mut req);
    let node_side = hyper::upgrade::on(&mut resp);
    let what = format!("{sub} {ns}/{name}");
    tokio::spawn(async move {
        let (client, node_side) = match tokio::try_join!(client, node_side) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!("{what}: upgrade: {e}");
                return;
            }
        };
        let mut client = hyper_util::rt::TokioIo::new(client);
        let mut node_side = hyper_util::rt::TokioIo::new(node_side);
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut node_side).await {
            tracing::debug!("{what}: {e}");
        }
    });
    Ok(answer)
}

/// Streams a container log from the pod's node.
pub async fn pod_log(
    registry: &Registry,
    client: &NodeClient,
    ns: &str,
    name: &str,
    query: &[(String, String)],
) -> ApiResult<Response> {
    let (pod, node) = pod_and_node(registry, ns, name).await?;
    let node_name = node["metadata"]["name"].as_str().unwrap_or_default();
    let container = query
        .iter()
        .find(|(k, _)| k == "container")
        .map(|(_, v)| v.as_str());
    let target = log_target(&pod, &node, container, query)?;
    fetch(client, &target).await.map_err(|e| {
        ApiError::unavailable(format!(
            "logs of pod {ns}/{name} from node {node_name} at {}:{}: {e}",
            target.host, target.port
        ))
    })
}

/// An HTTP/1.1 connection to a node API (TLS), with upgrades when asked:
/// the sender and the address as a Host header.
async fn connect(
    client: &NodeClient,
    target: &LogTarget,
    upgrades: bool,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
        String,
    ),
    String,
> {
    let addr = if target.host.contains(':') {
        format!("[{}]:{}", target.host, target.port)
    } else {
        format!("{}:{}", target.host, target.port)
    };
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    .map_err(|_| "connect: timed out".to_string())?
    .map_err(|e| format!("connect: {e}"))?;
    let server_name = rustls::pki_types::ServerName::try_from(target.host.clone())
        .map_err(|e| format!("server name {}: {e}", target.host))?;
    let tls = tokio_rustls::TlsConnector::from(client.tls.clone())
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("tls handshake: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| format!("http handshake: {e}"))?;
    tokio::spawn(async move {
        let r = if upgrades {
            conn.with_upgrades().await
        } else {
            conn.await
        };
        if let Err(e) = r {
            tracing::debug!("node API connection: {e}");
        }
    });
    Ok((sender, addr))
}

/// A node's error answer as the API server's (404 stays 404, else 400).
async fn node_error(resp: http::Response<hyper::body::Incoming>) -> Response {
    use http_body_util::BodyExt;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let msg = String::from_utf8_lossy(&body).trim().to_string();
    let code = if status == StatusCode::NOT_FOUND {
        404
    } else {
        400
    };
    error_response(code, &msg)
}

async fn fetch(client: &NodeClient, target: &LogTarget) -> Result<Response, String> {
    let (mut sender, addr) = connect(client, target, false).await?;
    let req = http::Request::get(&target.path)
        .header(header::HOST, &addr)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("GET {}: {e}", target.path))?;
    if !resp.status().is_success() {
        return Ok(node_error(resp).await);
    }
    let mut out = Response::new(Body::new(resp.into_body()));
    out.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(out)
}

fn error_response(code: u16, msg: &str) -> Response {
    let e = match code {
        404 => ApiError::not_found_message(msg.to_string()),
        _ => ApiError::bad_request(msg.to_string()),
    };
    let body = serde_json::to_vec(&e.to_status()).unwrap_or_default();
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(containers: &[&str], init: &[&str]) -> Value {
        let c = |n: &&str| json!({"name": n, "image": "busybox"});
        json!({"metadata": {"name": "web", "namespace": "shop"},
               "spec": {"nodeName": "n1",
                        "containers": containers.iter().map(c).collect::<Vec<_>>(),
                        "initContainers": init.iter().map(c).collect::<Vec<_>>()}})
    }

    fn node(addresses: Value, port: Option<u64>) -> Value {
        let mut n = json!({"metadata": {"name": "n1"}, "status": {"addresses": addresses}});
        if let Some(p) = port {
            n["status"]["daemonEndpoints"] = json!({"kubeletEndpoint": {"Port": p}});
        }
        n
    }

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn targets() {
        let addrs = json!([{"type": "Hostname", "address": "n1"},
                           {"type": "InternalIP", "address": "10.0.0.7"}]);
        let t = log_target(
            &pod(&["app"], &[]),
            &node(addrs.clone(), Some(11250)),
            None,
            &q(&[("follow", "true"), ("tailLines", "5"), ("pretty", "1")]),
        )
        .unwrap();
        assert_eq!(
            t,
            LogTarget {
                host: "10.0.0.7".into(),
                port: 11250,
                path: "/containerLogs/shop/web/app?follow=true&tailLines=5".into()
            }
        );
        // Default port, init container by name.
        let t = log_target(
            &pod(&["app", "side"], &["setup"]),
            &node(addrs.clone(), None),
            Some("setup"),
            &[],
        )
        .unwrap();
        assert_eq!(t.port, 10250);
        assert_eq!(t.path, "/containerLogs/shop/web/setup");
        // Two containers and none named: the error lists them.
        let e = log_target(
            &pod(&["app", "side"], &[]),
            &node(addrs.clone(), None),
            None,
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("choose one of: [app side]"), "{e}");
        // Unknown container.
        let e = log_target(
            &pod(&["app"], &[]),
            &node(addrs.clone(), None),
            Some("nope"),
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("container nope is not valid"), "{e}");
        // Streaming subresources: container into the path, the rest of
        // the query along (repeated commands kept in order).
        let t = stream_target(
            &pod(&["app", "side"], &[]),
            &node(addrs.clone(), None),
            "exec",
            &q(&[
                ("command", "sh"),
                ("container", "side"),
                ("command", "-c"),
                ("command", "echo a&b"),
                ("stdout", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(
            t.path,
            "/exec/shop/web/side?command=sh&command=%2Dc&command=echo%20a%26b&stdout=true"
        );
        let e = stream_target(
            &pod(&["app", "side"], &[]),
            &node(addrs.clone(), None),
            "attach",
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("choose one of"), "{e}");
        let t = stream_target(
            &pod(&["app", "side"], &[]),
            &node(addrs.clone(), None),
            "portforward",
            &q(&[("ports", "80")]),
        )
        .unwrap();
        assert_eq!(t.path, "/portForward/shop/web?ports=80");
        // A node without addresses.
        let e = log_target(&pod(&["app"], &[]), &node(json!([]), None), None, &[]).unwrap_err();
        assert!(e.to_string().contains("no address"), "{e}");
    }
}
