//! `pods/{name}/proxy[/path]` and `services/{name}/proxy[/path]`: the API
//! server passes the request to the pod (its IP and the named or numbered
//! port) or to one ready endpoint of the Service's port, as kube-apiserver
//! does: `[scheme:]name[:port]`, every method, the body and headers along
//! (the client's credentials not), the answer streamed back.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, header};
use serde_json::Value;

use crate::api::errors::{ApiError, ApiResult};
use crate::api::registry::{ListOptions, Registry};
use crate::api::resources;
use crate::api::selectors::LabelSelector;

/// A proxy request's target, parsed from the path (pure).
#[derive(Debug, PartialEq, Eq)]
pub struct ProxyPath<'a> {
    /// `pods` or `services`.
    pub kind: &'a str,
    /// Namespace.
    pub namespace: &'a str,
    /// `http` or `https` (default http).
    pub scheme: &'a str,
    /// Object name.
    pub name: &'a str,
    /// Port name or number (empty: the default).
    pub port: &'a str,
    /// The path to ask for there, from its `/`.
    pub rest: String,
}

/// Reads `/api/v1/namespaces/{ns}/{pods|services}/{[scheme:]name[:port]}/proxy[/rest]`.
pub fn parse(path: &str) -> Option<ProxyPath<'_>> {
    let p = path.strip_prefix("/api/v1/namespaces/")?;
    let (namespace, p) = p.split_once('/')?;
    let (kind, p) = p.split_once('/')?;
    if !matches!(kind, "pods" | "services") {
        return None;
    }
    let (target, p) = p.split_once('/').unwrap_or((p, ""));
    let rest = match p.strip_prefix("proxy") {
        Some("") => "/".to_string(),
        Some(r) if r.starts_with('/') => r.to_string(),
        _ => return None,
    };
    let parts: Vec<&str> = target.split(':').collect();
    let (scheme, name, port) = match parts.as_slice() {
        [name] => ("http", *name, ""),
        [name, port] => ("http", *name, *port),
        [scheme @ ("http" | "https"), name, port] => (*scheme, *name, *port),
        _ => return None,
    };
    if name.is_empty() || namespace.is_empty() {
        return None;
    }
    Some(ProxyPath {
        kind,
        namespace,
        scheme,
        name,
        port,
        rest,
    })
}

/// The pod's address for port `port` (a number, a container port's name,
/// or empty for 80) (pure).
pub fn pod_address(pod: &Value, port: &str) -> ApiResult<(String, u16)> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let ip = pod["status"]["podIP"]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::unavailable(format!("pod {name} has no IP address yet")))?;
    let number = if port.is_empty() {
        80
    } else if let Ok(n) = port.parse::<u16>() {
        n
    } else {
        pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["ports"].as_array().cloned().unwrap_or_default())
            .find(|p| p["name"] == port)
            .and_then(|p| p["containerPort"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| {
                ApiError::bad_request(format!("pod {name} has no port named {port:?}"))
            })?
    };
    Ok((ip.to_string(), number))
}

/// One ready endpoint of the Service port `port` (its name or number; empty
/// when the Service has one port) among `slices` (pure).
pub fn service_endpoint(service: &Value, slices: &[Value], port: &str) -> ApiResult<(String, u16)> {
    let name = service["metadata"]["name"].as_str().unwrap_or_default();
    let ports = service["spec"]["ports"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let sp = match port {
        "" if ports.len() == 1 => &ports[0],
        "" => {
            return Err(ApiError::bad_request(format!(
                "service {name} has several ports: name one"
            )));
        }
        p => ports
            .iter()
            .find(|sp| {
                sp["name"] == p || sp["port"].as_u64().map(|n| n.to_string()).as_deref() == Some(p)
            })
            .ok_or_else(|| {
                ApiError::unavailable(format!("no endpoints available for service \"{name}\""))
            })?,
    };
    let port_name = sp["name"].as_str().unwrap_or_default();
    for s in slices {
        let Some(port) = s["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"].as_str().unwrap_or_default() == port_name)
        else {
            continue;
        };
        let Some(n) = port["port"].as_u64().and_then(|n| u16::try_from(n).ok()) else {
            continue;
        };
        for e in s["endpoints"].as_array().into_iter().flatten() {
            if e["conditions"]["ready"] == Value::Bool(false) {
                continue;
            }
            if let Some(a) = e["addresses"]
                .as_array()
                .and_then(|a| a.first())
                .and_then(Value::as_str)
            {
                return Ok((a.to_string(), n));
            }
        }
    }
    Err(ApiError::unavailable(format!(
        "no endpoints available for service \"{name}\""
    )))
}

/// Serves one proxy request.
pub async fn serve(
    registry: &Registry,
    target: ProxyPath<'_>,
    method: &Method,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let ns = target.namespace;
    let (host, port) = if target.kind == "pods" {
        let pods = resources::find("", "v1", "pods").expect("pods are served");
        let pod = registry.get(pods, Some(ns), target.name).await?;
        pod_address(&pod, target.port)?
    } else {
        let services = resources::find("", "v1", "services").expect("services are served");
        let slices = resources::find("discovery.k8s.io", "v1", "endpointslices")
            .expect("endpointslices are served");
        let svc = registry.get(services, Some(ns), target.name).await?;
        let selector = LabelSelector::parse(&format!("kubernetes.io/service-name={}", target.name))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let list = registry
            .list(
                slices,
                Some(ns),
                &ListOptions {
                    label_selector: selector,
                    ..Default::default()
                },
            )
            .await?;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        service_endpoint(&svc, &items, target.port)?
    };
    let mut uri = target.rest.clone();
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        uri.push('?');
        uri.push_str(q);
    }
    forward(target.scheme, &host, port, method, &uri, headers, body)
        .await
        .map_err(|e| {
            ApiError::unavailable(format!(
                "error trying to reach {} {ns}/{} at {host}:{port}: {e}",
                &target.kind[..target.kind.len() - 1],
                target.name
            ))
        })
}

async fn forward(
    scheme: &str,
    host: &str,
    port: u16,
    method: &Method,
    uri: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, String> {
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    .map_err(|_| "connect: timed out".to_string())?
    .map_err(|e| format!("connect: {e}"))?;
    let mut req = http::Request::builder().method(method.clone()).uri(uri);
    for (k, v) in headers {
        if k != header::AUTHORIZATION && k != header::HOST && k != header::CONNECTION {
            req = req.header(k, v);
        }
    }
    let req = req
        .header(
            header::HOST,
            HeaderValue::from_str(&addr).map_err(|e| e.to_string())?,
        )
        .body(http_body_util::Full::new(body))
        .map_err(|e| format!("request: {e}"))?;
    let resp = if scheme == "https" {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls config: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(keelson_host::serve::UnverifiedServer))
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| format!("server name {host}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls handshake: {e}"))?;
        send(hyper_util::rt::TokioIo::new(tls), req).await?
    } else {
        send(hyper_util::rt::TokioIo::new(tcp), req).await?
    };
    let (parts, body) = resp.into_parts();
    let mut out = Response::new(Body::new(body));
    *out.status_mut() = parts.status;
    for (k, v) in &parts.headers {
        if k != header::CONNECTION && k != header::TRANSFER_ENCODING {
            out.headers_mut().append(k, v.clone());
        }
    }
    Ok(out)
}

async fn send<IO>(
    io: IO,
    req: http::Request<http_body_util::Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("http handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths() {
        let p = parse("/api/v1/namespaces/shop/pods/https:web:8443/proxy/a/b").unwrap();
        assert_eq!(
            p,
            ProxyPath {
                kind: "pods",
                namespace: "shop",
                scheme: "https",
                name: "web",
                port: "8443",
                rest: "/a/b".into()
            }
        );
        let p = parse("/api/v1/namespaces/shop/services/web:http/proxy").unwrap();
        assert_eq!(
            (p.kind, p.name, p.port, p.rest.as_str()),
            ("services", "web", "http", "/")
        );
        let p = parse("/api/v1/namespaces/shop/pods/web/proxy/").unwrap();
        assert_eq!((p.port, p.rest.as_str()), ("", "/"));
        assert!(parse("/api/v1/namespaces/shop/pods/web/log").is_none());
        assert!(parse("/api/v1/namespaces/shop/pods/web/proxyx").is_none());
        assert!(parse("/api/v1/namespaces/shop/configmaps/web/proxy").is_none());
        assert!(parse("/api/v1/namespaces/shop/pods/ftp:web:21/proxy").is_none());
    }

    #[test]
    fn pod_and_service_addresses() {
        let pod = json!({"metadata": {"name": "web"}, "status": {"podIP": "10.1.0.5"},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]}});
        assert_eq!(pod_address(&pod, "").unwrap(), ("10.1.0.5".into(), 80));
        assert_eq!(pod_address(&pod, "9000").unwrap().1, 9000);
        assert_eq!(pod_address(&pod, "http").unwrap().1, 8080);
        assert!(pod_address(&pod, "grpc").is_err());
        assert!(pod_address(&json!({"metadata": {"name": "x"}}), "").is_err());

        let svc = json!({"metadata": {"name": "web"}, "spec": {"ports": [
            {"name": "http", "port": 80}, {"name": "tls", "port": 443}]}});
        let slices = vec![
            json!({"ports": [{"name": "http", "port": 8080}, {"name": "tls", "port": 8443}],
            "endpoints": [
                {"addresses": ["10.1.0.6"], "conditions": {"ready": false}},
                {"addresses": ["10.1.0.7"], "conditions": {"ready": true}}]}),
        ];
        assert_eq!(
            service_endpoint(&svc, &slices, "tls").unwrap(),
            ("10.1.0.7".into(), 8443)
        );
        assert_eq!(service_endpoint(&svc, &slices, "80").unwrap().1, 8080);
        assert!(
            service_endpoint(&svc, &slices, "").is_err(),
            "two ports, none named"
        );
        assert!(service_endpoint(&svc, &[], "http").is_err());
    }
}
