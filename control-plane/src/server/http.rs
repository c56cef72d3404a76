//! HTTP routing: Kubernetes REST paths to [`Registry`] operations, request
//! bodies (decoded by [`crate::api::body`]), responses and watch streams.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::{Value, json};

use super::audit;
use super::auth::UserInfo;
use super::authz::{self, Authorizer, attributes};
use super::limits::{self, Limiter};
use super::metrics::{Metrics, WatchLabels};
use super::satoken::TokenIssuer;
use super::{discovery, openapi};
use crate::api::body;
use crate::api::custom::CustomVersion;
use crate::api::errors::{ApiError, ApiResult};
use crate::api::registry::{
    DeleteOptions, FieldValidation, ListOptions, PatchType, Registry, ScaleChange, WatchEvent,
    WatchOptions, WriteCheck, WriteOptions,
};
use crate::api::resources::ResourceType;
use crate::api::selectors::{FieldSelector, LabelSelector};
use crate::api::table;

/// Largest request body accepted (as kube-apiserver: 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    server_address: String,
    metrics: Arc<Metrics>,
    tokens: Arc<TokenIssuer>,
    nodes: super::nodeproxy::NodeClient,
    authz: Arc<Authorizer>,
    audit: Option<Arc<audit::Auditor>>,
    limits: Arc<Limiter>,
}

/// The client's address, as the TLS listener saw it.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

pub fn router(
    registry: Arc<Registry>,
    addr: SocketAddr,
    tokens: Arc<TokenIssuer>,
    nodes: super::nodeproxy::NodeClient,
    authz: Arc<Authorizer>,
    audit: Option<Arc<audit::Auditor>>,
    limits: Arc<Limiter>,
) -> Router {
    let state = AppState {
        registry,
        server_address: addr.to_string(),
        metrics: limits.metrics().clone(),
        tokens,
        nodes,
        authz,
        audit,
        limits,
    };
    Router::new().fallback(handle).with_state(state)
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = Response::new(Body::from(bytes));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub fn error_response(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = json_response(status, &e.to_status());
    if let Some(s) = e.retry_after() {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    if e.code == 401 {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

fn with_warnings(mut r: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let v = format!("299 - \"{}\"", w.replace('\\', "\\\\").replace('"', "\\\""));
        if let Ok(h) = HeaderValue::from_str(&v) {
            r.headers_mut().append(header::WARNING, h);
        }
    }
    r
}

/// What a resource path names.
#[derive(Debug)]
struct Target {
    rt: &'static ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
    watch_prefix: bool,
}

/// The resource type served at (group, version, plural).
type Lookup<'a> = &'a dyn Fn(&str, &str, &str) -> Option<&'static ResourceType>;

/// Parse `/api/v1/...` or `/apis/<group>/<version>/...` after the group-version.
fn parse_target(find: Lookup<'_>, group: &str, version: &str, segs: &[&str]) -> ApiResult<Target> {
    let not_found = || ApiError::path_not_found(&segs.join("/"));
    let mut segs = segs;
    let mut watch_prefix = false;
    if segs.first() == Some(&"watch") {
        watch_prefix = true;
        segs = &segs[1..];
    }
    let (namespace, rest) = if segs.len() >= 3
        && segs[0] == "namespaces"
        && !matches!(segs[2], "status" | "finalize")
    {
        (Some(segs[1].to_string()), &segs[2..])
    } else {
        (None, segs)
    };
    let plural = rest.first().ok_or_else(not_found)?;
    let rt = find(group, version, plural).ok_or_else(not_found)?;
    if namespace.is_some() && !rt.namespaced {
        return Err(not_found());
    }
    let name = rest.get(1).map(|s| s.to_string());
    let subresource = rest.get(2).map(|s| s.to_string());
    if rest.len() > 3 {
        return Err(not_found());
    }
    if let Some(sub) = &subresource
        && !rt.has_subresource(sub)
    {
        return Err(not_found());
    }
    Ok(Target {
        rt,
        namespace,
        name,
        subresource,
        watch_prefix,
    })
}

fn query_map(uri: &http::Uri) -> HashMap<String, String> {
    uri.query()
        .map(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).unwrap_or_default())
        .unwrap_or_default()
        .into_iter()
        .collect()
}

/// The aggregated discovery version the client asked for (`v2`, else
/// `v2beta1`), if it did: `Accept: application/json;g=apidiscovery.k8s.io;
/// v=v2;as=APIGroupDiscoveryList`.
fn wants_aggregated(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
    let asks = |version: &str| {
        accept.split(',').any(|part| {
            let p: Vec<&str> = part.split(';').map(str::trim).collect();
            p.first() == Some(&"application/json")
                && p.contains(&"as=APIGroupDiscoveryList")
                && p.contains(&"g=apidiscovery.k8s.io")
                && p.contains(&format!("v={version}").as_str())
        })
    };
    ["v2", "v2beta1"].into_iter().find(|v| asks(v))
}

fn aggregated_response(custom: &discovery::Custom, legacy: bool, version: &str) -> Response {
    let doc = discovery::aggregated(custom, legacy, &format!("apidiscovery.k8s.io/{version}"));
    let mut r = json_response(StatusCode::OK, &doc);
    let ct = format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList");
    if let Ok(v) = HeaderValue::from_str(&ct) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    r
}

/// Whether the client asked for a server-side `meta.k8s.io/v1` Table (kubectl get).
fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| {
            a.split(',').any(|part| {
                let p: Vec<&str> = part.split(';').map(str::trim).collect();
                p.contains(&"as=Table") && p.contains(&"g=meta.k8s.io") && p.contains(&"v=v1")
            })
        })
}

fn as_table(
    custom: Option<&CustomVersion>,
    rt: &ResourceType,
    items: &[Value],
    list_meta: Value,
) -> Value {
    let now = chrono::Utc::now();
    match custom.filter(|c| !c.printer_columns.is_empty()) {
        Some(c) => {
            let columns: Vec<table::CustomColumn<'_>> = c
                .printer_columns
                .iter()
                .map(|p| table::CustomColumn {
                    name: &p.name,
                    ty: &p.ty,
                    format: &p.format,
                    description: &p.description,
                    priority: p.priority,
                    json_path: &p.json_path,
                })
                .collect();
            table::render_custom(&columns, items, list_meta, now)
        }
        None => table::render(rt.group, rt.kind, items, list_meta, now),
    }
}

fn flag(q: &HashMap<String, String>, k: &str) -> bool {
    q.get(k).is_some_and(|v| v == "true" || v == "1")
}

fn parse_body(headers: &HeaderMap, body: &Bytes) -> ApiResult<(Value, String)> {
    let ct = body::media_type(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json"),
    );
    let value = body::decode(&ct, body)?;
    Ok((value, ct))
}

fn write_options(
    q: &HashMap<String, String>,
    check: Option<WriteCheck>,
) -> ApiResult<WriteOptions> {
    let dry_run = match q.get("dryRun").map(String::as_str) {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unsupported dryRun value {other:?}: only All is supported"
            )));
        }
    };
    Ok(WriteOptions {
        dry_run,
        field_validation: FieldValidation::parse(
            q.get("fieldValidation").map(String::as_str).unwrap_or(""),
        )?,
        check,
    })
}

fn selectors(q: &HashMap<String, String>) -> ApiResult<(LabelSelector, FieldSelector)> {
    let ls = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let fs = FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok((ls, fs))
}

fn delete_options(q: &HashMap<String, String>, body: Option<&Value>) -> ApiResult<DeleteOptions> {
    let mut o = DeleteOptions::default();
    if let Some(b) = body {
        o.grace_period_seconds = b.get("gracePeriodSeconds").and_then(Value::as_i64);
        o.propagation_policy = b
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .map(String::from);
        if b.get("orphanDependents") == Some(&Value::Bool(true)) {
            o.propagation_policy = Some("Orphan".into());
        }
        o.precondition_uid = b
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(String::from);
        o.precondition_resource_version = b
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(String::from);
        o.dry_run = b
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
    }
    if let Some(g) = q.get("gracePeriodSeconds") {
        o.grace_period_seconds = Some(
            g.parse()
                .map_err(|_| ApiError::bad_request("gracePeriodSeconds must be an integer"))?,
        );
    }
    if let Some(p) = q.get("propagationPolicy") {
        o.propagation_policy = Some(p.clone());
    }
    if let Some(p) = &o.propagation_policy
        && !matches!(p.as_str(), "Orphan" | "Background" | "Foreground")
    {
        return Err(ApiError::bad_request(format!(
            "propagationPolicy {p:?} is invalid: must be Orphan, Background or Foreground"
        )));
    }
    // An unsupported value must not turn a dry run into a real deletion.
    let body_dry_run = body
        .and_then(|b| b.get("dryRun"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|v| v.as_str().unwrap_or_default());
    for v in q
        .get("dryRun")
        .map(String::as_str)
        .into_iter()
        .chain(body_dry_run)
    {
        match v {
            "" => {}
            "All" => o.dry_run = true,
            other => {
                return Err(ApiError::bad_request(format!(
                    "unsupported dryRun value {other:?}: only All is supported"
                )));
            }
        }
    }
    Ok(o)
}

/// `/api/v1/namespaces/{ns}/pods/{name}/{exec|attach|portforward}`:
/// namespace, name and subresource.
fn streaming_subresource(path: &str) -> Option<(&str, &str, &str)> {
    match path
        .trim_end_matches('/')
        .split('/')
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["", "api", "v1", "namespaces", ns, "pods", name, sub]
            if super::nodeproxy::STREAMING.contains(sub) =>
        {
            Some((ns, name, sub))
        }
        _ => None,
    }
}

async fn handle(State(state): State<AppState>, req: Request) -> Response {
    let started = std::time::Instant::now();
    let received = chrono::Utc::now();
    let method = req.method().clone();
    let uri = req.uri().clone();
    let Some(mut user) = req.extensions().get::<UserInfo>().cloned() else {
        // Only in-process callers (benchmarks) come without a user.
        return dispatch(&state, req, None, false).await.0;
    };
    let mut req = req;
    let mut impersonator = None;
    if authz::impersonation::requested(req.headers()) {
        match authz::impersonation::impersonate(&state.authz, &user, req.headers()) {
            Ok(as_user) => {
                impersonator = Some(std::mem::replace(&mut user, as_user));
                req.extensions_mut().insert(user.clone());
                let names: Vec<_> = req
                    .headers()
                    .keys()
                    .filter(|k| k.as_str().starts_with("impersonate-"))
                    .cloned()
                    .collect();
                for n in names {
                    req.headers_mut().remove(n);
                }
            }
            Err(e) => return error_response(&e),
        }
    }
    let source = req.extensions().get::<PeerAddr>().map(|p| p.0.ip());
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let attrs = attributes::of_request(&user, method.as_str(), uri.path(), uri.query());
    let long_running = limits::is_long_running(&attrs, &uri);
    let headers = state.audit.is_some().then(|| req.headers().clone());
    let level = state
        .audit
        .as_ref()
        .map_or(audit::Level::None, |a| a.level(&attrs));
    // As kube-apiserver's handler chain: the request deadline, then the
    // in-flight limit, then authorization.
    let timeout = if long_running {
        Ok(None)
    } else {
        state.limits.timeout_for(uri.query()).map(Some)
    };
    let admitted = match timeout {
        Err(e) => Err(error_response(&e)),
        Ok(t) => state
            .limits
            .admit(&attrs, long_running)
            .map(|p| (t, p))
            .map_err(|_| limits::too_many_requests()),
    };
    let (decision, denied) = decide(&state.authz, &attrs, &uri);
    let keep_body = level >= audit::Level::Request;
    let http1_with_body = req.version() < http::Version::HTTP_2
        && (req.headers().contains_key(header::TRANSFER_ENCODING)
            || req
                .headers()
                .get(header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0"));
    let (mut resp, request_body) = match (admitted, denied) {
        (Err(refused), _) => (refused, None),
        (Ok(_), Some(e)) => (error_response(&e), None),
        (Ok((None, _)), None) => dispatch(&state, req, Some(&user), keep_body).await,
        (Ok((Some(timeout), in_flight)), None) => {
            // The handler runs in a task of its own and is left to finish
            // if the deadline passes first (as upstream's timeout filter
            // leaves its goroutine): cutting a write between the store and
            // its allocations would leave them out of step. Its body ends
            // at the deadline, so a trickling client holds nothing.
            let deadline = tokio::time::Instant::from_std(started) + timeout;
            let (req, body_timed_out) = limits::body_until(req, deadline);
            let task_state = state.clone();
            let task_user = user.clone();
            let task = tokio::spawn(async move {
                let _in_flight = in_flight;
                dispatch(&task_state, req, Some(&task_user), keep_body).await
            });
            match tokio::time::timeout_at(deadline, task).await {
                // A handler whose body timed out answers for itself (a
                // read error) only when it beats the deadline's timer.
                Ok(Ok(done)) if !body_timed_out.load(std::sync::atomic::Ordering::SeqCst) => done,
                Ok(Err(e)) => {
                    tracing::error!(%method, %uri, error = %e, "request handler failed");
                    (
                        error_response(&ApiError::internal("the request handler failed")),
                        None,
                    )
                }
                Ok(Ok(_)) | Err(_) => {
                    tracing::debug!(%method, %uri, ?timeout, "request timed out");
                    let mut r = error_response(&state.limits.timed_out());
                    if http1_with_body {
                        // An HTTP/1 body the handler stopped reading
                        // cannot be skipped over: the connection ends.
                        r.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    (r, None)
                }
            }
        }
    };
    if let Some(auditor) = &state.audit
        && level != audit::Level::None
    {
        let mut response_body = None;
        if level == audit::Level::RequestResponse && !long_running {
            let (parts, body) = resp.into_parts();
            let bytes = axum::body::to_bytes(body, usize::MAX)
                .await
                .unwrap_or_default();
            response_body = Some(bytes.clone());
            resp = Response::from_parts(parts, Body::from(bytes));
        }
        // The request object as the server read it (JSON, YAML or protobuf).
        let request_object = match (&request_body, &headers) {
            (Some(b), Some(h)) if !b.is_empty() => parse_body(h, b).ok().map(|(v, _)| v),
            _ => None,
        };
        let uid = uuid::Uuid::new_v4().to_string();
        auditor.record(
            level,
            &audit::Record {
                attrs: &attrs,
                impersonator: impersonator.as_ref(),
                uid: &uid,
                uri: &uri.to_string(),
                source,
                user_agent: &user_agent,
                decision: &decision,
                received,
                code: resp.status().as_u16(),
                long_running,
                request: request_object.as_ref(),
                response: response_body.as_deref(),
            },
        );
    }
    tracing::debug!(%method, %uri, status = resp.status().as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "request");
    resp
}

/// Serve an authorized request; the body it carried when `keep_body`.
async fn dispatch(
    state: &AppState,
    req: Request,
    user: Option<&UserInfo>,
    keep_body: bool,
) -> (Response, Option<Bytes>) {
    let method = req.method().clone();
    let uri = req.uri().clone();
    if let Some((ns, name, sub)) = streaming_subresource(uri.path()) {
        if !matches!(method, Method::GET | Method::POST) {
            return (
                error_response(&ApiError::method_not_allowed(format!(
                    "{method} is not supported on pods/{sub}"
                ))),
                None,
            );
        }
        let resp = super::nodeproxy::stream(&state.registry, &state.nodes, ns, name, sub, req)
            .await
            .unwrap_or_else(|e| error_response(&e));
        return (resp, None);
    }
    let (parts, body) = req.into_parts();
    // A declared length over the limit is refused before a byte is read
    // (a client that waits for 100-continue never sends the body).
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        let mut r = error_response(&ApiError::too_large(format!(
            "the request body exceeds {MAX_BODY} bytes"
        )));
        let expects_continue = parts
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if expects_continue && parts.version < http::Version::HTTP_2 {
            // The client waits for 100 Continue before it sends the body:
            // it never will, and the connection closes after the answer.
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        } else {
            // The client sends without waiting; closing or resetting
            // before it finishes loses it the answer. Discard what it
            // sends (nothing is kept), for a while, so it reads it.
            tokio::spawn(async move {
                let mut body = body.into_data_stream();
                let deadline = tokio::time::sleep(Duration::from_secs(30));
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        chunk = body.next() => if !matches!(chunk, Some(Ok(_))) { break },
                        _ = &mut deadline => break,
                    }
                }
            });
        }
        return (r, None);
    }
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            let mut r = error_response(&ApiError::too_large(format!(
                "the request body exceeds {MAX_BODY} bytes"
            )));
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return (r, None);
        }
    };
    let kept = keep_body.then(|| body.clone());
    let result = match super::proxy::parse(uri.path()) {
        Some(target) => {
            super::proxy::serve(
                &state.registry,
                target,
                &method,
                uri.query(),
                &parts.headers,
                body,
            )
            .await
        }
        None => route(state, &method, &uri, &parts.headers, body, user).await,
    };
    let resp = match result {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    (resp, kept)
}

async fn route(
    state: &AppState,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    body: Bytes,
    user: Option<&UserInfo>,
) -> ApiResult<Response> {
    let path = uri.path().trim_end_matches('/');
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let custom = state.registry.custom_types().snapshot();
    let get_only = |doc: Option<Value>| -> ApiResult<Response> {
        if method != Method::GET {
            return Err(ApiError::method_not_allowed(format!(
                "{method} is not supported on {path}"
            )));
        }
        doc.map(|d| json_response(StatusCode::OK, &d))
            .ok_or_else(|| ApiError::path_not_found(path))
    };
    match segs.as_slice() {
        ["version"] => get_only(Some(discovery::version())),
        ["metrics"] => {
            if method != Method::GET {
                return Err(ApiError::method_not_allowed(format!(
                    "{method} is not supported on {path}"
                )));
            }
            let mut r = Response::new(Body::from(state.metrics.render()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            Ok(r)
        }
        ["healthz"] | ["livez"] | ["readyz"] => {
            state
                .registry
                .store()
                .current_revision()
                .await
                .map_err(|e| ApiError::unavailable(format!("store: {e}")))?;
            let mut r = Response::new(Body::from("ok"));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            Ok(r)
        }
        ["api"] | ["apis"] if method == Method::GET && wants_aggregated(headers).is_some() => {
            let version = wants_aggregated(headers).unwrap_or("v2");
            Ok(aggregated_response(&custom, segs == ["api"], version))
        }
        ["api"] => get_only(Some(discovery::api_versions(&state.server_address))),
        ["apis"] => get_only(Some(discovery::api_group_list(&custom))),
        ["api", version] => get_only(discovery::api_resource_list(&custom, "", version)),
        ["apis", group] => get_only(discovery::api_group(&custom, group)),
        ["apis", group, version] => get_only(discovery::api_resource_list(&custom, group, version)),
        ["openapi", "v2"] => {
            let accept = headers
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if accept.contains("protobuf") {
                let mut r = Response::new(Body::from(openapi::v2_protobuf()));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                    ),
                );
                Ok(r)
            } else {
                get_only(Some(openapi::v2_json()))
            }
        }
        ["apis", "authentication.k8s.io", "v1", "selfsubjectreviews"] => {
            if method != Method::POST {
                return Err(ApiError::method_not_allowed(format!(
                    "{method} is not supported on {path}"
                )));
            }
            Ok(json_response(
                StatusCode::CREATED,
                &self_subject_review(user),
            ))
        }
        ["apis", "authorization.k8s.io", "v1", review]
        | [
            "apis",
            "authorization.k8s.io",
            "v1",
            "namespaces",
            _,
            review,
        ] if access_review_kind(review).is_some() => {
            if method != Method::POST {
                return Err(ApiError::method_not_allowed(format!(
                    "{method} is not supported on {path}"
                )));
            }
            let (obj, _) = parse_body(headers, &body)?;
            let kind = access_review_kind(review).unwrap_or_default();
            let path_ns = (segs.len() == 6).then(|| segs[4]);
            Ok(json_response(
                StatusCode::CREATED,
                &access_review(&state.authz, kind, path_ns, user, obj)?,
            ))
        }
        ["openapi", "v3"] => get_only(Some(openapi::index())),
        ["openapi", "v3", "api", version] => get_only(openapi::document("", version)),
        ["openapi", "v3", "apis", group, version] => get_only(openapi::document(group, version)),
        ["api", version, rest @ ..] => {
            let t = parse_target(&|g, v, p| state.registry.find(g, v, p), "", version, rest)?;
            resource(state, method, uri, headers, body, t, user).await
        }
        ["apis", group, version, rest @ ..] => {
            let t = parse_target(
                &|g, v, p| state.registry.find(g, v, p),
                group,
                version,
                rest,
            )?;
            resource(state, method, uri, headers, body, t, user).await
        }
        _ => Err(ApiError::path_not_found(path)),
    }
}

/// The authorizer's decision on a request, and the 403 (as kube-apiserver
/// words it) when it is not allowed. Streaming subresources opened with GET
/// (WebSocket) need `create` too, as kube-apiserver checks them.
fn decide(
    authz: &Authorizer,
    a: &attributes::Attributes,
    uri: &http::Uri,
) -> (authz::Decision, Option<ApiError>) {
    let decision = authz.authorize(a);
    if let Some(e) = authz.forbidden(a, &decision) {
        return (decision, Some(e));
    }
    if a.verb == "get" && streaming_subresource(uri.path()).is_some() {
        let create = attributes::Attributes {
            verb: "create".into(),
            ..a.clone()
        };
        let d = authz.authorize(&create);
        if let Some(e) = authz.forbidden(&create, &d) {
            return (d, Some(e));
        }
    }
    (decision, None)
}

/// The kind an authorization review path creates.
fn access_review_kind(plural: &str) -> Option<&'static str> {
    match plural {
        "selfsubjectaccessreviews" => Some("SelfSubjectAccessReview"),
        "subjectaccessreviews" => Some("SubjectAccessReview"),
        "localsubjectaccessreviews" => Some("LocalSubjectAccessReview"),
        "selfsubjectrulesreviews" => Some("SelfSubjectRulesReview"),
        _ => None,
    }
}

/// `kubectl auth can-i` and the authorization reviews, answered by the
/// authorizer: for the requester (the Self reviews) or for the user the
/// review names (SubjectAccessReview; LocalSubjectAccessReview in the
/// path's namespace).
fn access_review(
    authz: &Authorizer,
    kind: &str,
    path_namespace: Option<&str>,
    requester: Option<&UserInfo>,
    mut review: Value,
) -> ApiResult<Value> {
    review["kind"] = json!(kind);
    review["apiVersion"] = json!("authorization.k8s.io/v1");
    if !review["metadata"].is_object() {
        review["metadata"] = json!({});
    }
    review["metadata"]["creationTimestamp"] = json!(crate::api::registry::now_rfc3339());
    let spec = review["spec"].clone();
    let anonymous = UserInfo::anonymous();
    let subject = if kind.starts_with("Self") {
        requester.cloned().unwrap_or(anonymous)
    } else {
        let user = spec["user"].as_str().unwrap_or_default();
        let groups: Vec<String> = spec["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g.as_str().map(String::from))
            .collect();
        if user.is_empty() && groups.is_empty() {
            return Err(ApiError::invalid(
                "authorization.k8s.io",
                kind,
                "",
                vec![crate::api::errors::Cause::required("spec.user")],
            ));
        }
        UserInfo {
            name: user.to_string(),
            uid: spec["uid"].as_str().unwrap_or_default().to_string(),
            groups,
            extra: Default::default(),
        }
    };
    if kind == "SelfSubjectRulesReview" {
        let ns = spec["namespace"].as_str().unwrap_or_default();
        review["status"] =
            authz::rules_review_status(&authz.rules_for(&subject.name, &subject.groups, ns));
        return Ok(review);
    }
    let a = if let Some(ra) = spec["resourceAttributes"].as_object() {
        let f = |k: &str| ra.get(k).and_then(Value::as_str).unwrap_or_default();
        let ns = f("namespace");
        if let Some(p) = path_namespace
            && p != ns
        {
            return Err(ApiError::invalid(
                "authorization.k8s.io",
                kind,
                "",
                vec![crate::api::errors::Cause::invalid(
                    "spec.resourceAttributes.namespace",
                    ns,
                    "must match metadata.namespace",
                )],
            ));
        }
        attributes::Attributes::resource(
            &subject,
            f("verb"),
            f("group"),
            ns,
            f("resource"),
            f("subresource"),
            f("name"),
        )
    } else if let Some(na) = spec["nonResourceAttributes"].as_object() {
        let f = |k: &str| na.get(k).and_then(Value::as_str).unwrap_or_default();
        attributes::Attributes {
            user: subject.name.clone(),
            groups: subject.groups.clone(),
            verb: f("verb").to_string(),
            path: f("path").to_string(),
            ..Default::default()
        }
    } else {
        return Err(ApiError::invalid(
            "authorization.k8s.io",
            kind,
            "",
            vec![crate::api::errors::Cause::required(
                "spec.resourceAttributes",
            )],
        ));
    };
    review["status"] = authz::review_status(&authz.authorize(&a));
    Ok(review)
}

/// `kubectl auth whoami`: who the request was authenticated as.
fn self_subject_review(user: Option<&UserInfo>) -> Value {
    let info = match user {
        Some(u) => {
            let mut i = json!({"username": u.name, "groups": u.groups});
            if !u.uid.is_empty() {
                i["uid"] = json!(u.uid);
            }
            if !u.extra.is_empty() {
                i["extra"] = json!(u.extra);
            }
            i
        }
        None => json!({}),
    };
    json!({
        "kind": "SelfSubjectReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": crate::api::registry::now_rfc3339()},
        "status": {"userInfo": info},
    })
}

fn patch_type(ct: &str) -> ApiResult<PatchType> {
    match ct {
        "application/json-patch+json" => Ok(PatchType::Json),
        "application/merge-patch+json" => Ok(PatchType::Merge),
        "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

async fn resource(
    state: &AppState,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    body: Bytes,
    t: Target,
    user: Option<&UserInfo>,
) -> ApiResult<Response> {
    let reg = &state.registry;
    let check = user.map(|u| state.authz.write_check(u));
    let q = query_map(uri);
    let ns = t.namespace.as_deref();
    let rt = t.rt;
    if rt.namespaced && t.name.is_some() && ns.is_none() {
        return Err(ApiError::path_not_found(uri.path()));
    }
    let sub = t.subresource.as_deref();
    let ok = |v: &Value| Ok(json_response(StatusCode::OK, v));
    match (method, t.name.as_deref(), sub) {
        (&Method::GET, None, None) => {
            let (label_selector, field_selector) = selectors(&q)?;
            if t.watch_prefix || flag(&q, "watch") {
                let rv = match q.get("resourceVersion").map(String::as_str) {
                    None | Some("") | Some("0") => None,
                    Some(s) => Some(s.parse::<i64>().map_err(|_| {
                        ApiError::bad_request(format!("invalid resourceVersion {s:?}"))
                    })?),
                };
                let opts = WatchOptions {
                    label_selector,
                    field_selector,
                    resource_version: rv,
                    send_initial_events: flag(&q, "sendInitialEvents"),
                    lines: !wants_table(headers),
                };
                return watch(
                    state,
                    rt,
                    t.namespace.clone(),
                    opts,
                    &q,
                    wants_table(headers),
                    user,
                )
                .await;
            }
            let limit = match q.get("limit") {
                Some(l) => l
                    .parse::<usize>()
                    .map_err(|_| ApiError::bad_request("limit must be a non-negative integer"))?,
                None => 0,
            };
            let opts = ListOptions {
                label_selector,
                field_selector,
                limit,
                continue_token: q.get("continue").cloned(),
            };
            if !wants_table(headers)
                && let Some(bytes) = reg.list_raw(rt, ns, &opts).await?
            {
                let mut r = Response::new(Body::from(bytes));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                return Ok(r);
            }
            let list = reg.list(rt, ns, &opts).await?;
            if wants_table(headers) {
                let items = list["items"].as_array().cloned().unwrap_or_default();
                let custom = reg.custom_types().of(rt);
                return ok(&as_table(
                    custom.as_deref(),
                    rt,
                    &items,
                    list["metadata"].clone(),
                ));
            }
            ok(&list)
        }
        (&Method::GET, Some(name), None) => {
            if t.watch_prefix || flag(&q, "watch") {
                let (label_selector, mut field_selector) = selectors(&q)?;
                field_selector
                    .0
                    .push(("metadata.name".into(), true, name.to_string()));
                let rv = q
                    .get("resourceVersion")
                    .and_then(|s| s.parse::<i64>().ok())
                    .filter(|r| *r > 0);
                let opts = WatchOptions {
                    label_selector,
                    field_selector,
                    resource_version: rv,
                    send_initial_events: flag(&q, "sendInitialEvents"),
                    lines: !wants_table(headers),
                };
                return watch(
                    state,
                    rt,
                    t.namespace.clone(),
                    opts,
                    &q,
                    wants_table(headers),
                    user,
                )
                .await;
            }
            let obj = reg.get(rt, ns, name).await?;
            if wants_table(headers) {
                let rv = obj
                    .pointer("/metadata/resourceVersion")
                    .cloned()
                    .unwrap_or(Value::Null);
                let custom = reg.custom_types().of(rt);
                return ok(&as_table(
                    custom.as_deref(),
                    rt,
                    std::slice::from_ref(&obj),
                    json!({"resourceVersion": rv}),
                ));
            }
            ok(&obj)
        }
        (&Method::GET, Some(name), Some("status")) => ok(&reg.get(rt, ns, name).await?),
        (&Method::GET, Some(name), Some("scale")) => {
            ok(&reg.scale_of(rt, &reg.get(rt, ns, name).await?))
        }
        (&Method::GET, Some(name), Some("log")) => {
            let query: Vec<(String, String)> =
                q.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            super::nodeproxy::pod_log(reg, &state.nodes, ns.unwrap_or("default"), name, &query)
                .await
        }
        (&Method::POST, None, None) => {
            let (mut obj, _) = parse_body(headers, &body)?;
            if rt.group == "certificates.k8s.io"
                && let Some(u) = user
            {
                super::nodejoin::admit_csr(&mut obj, u)?;
            }
            let w = reg
                .create(rt, ns, obj, &write_options(&q, check.clone())?)
                .await?;
            Ok(with_warnings(
                json_response(StatusCode::CREATED, &w.object),
                &w.warnings,
            ))
        }
        (&Method::POST, Some(name), Some("token")) => {
            let (obj, _) = parse_body(headers, &body)?;
            let answer = super::satoken::token_request(
                reg,
                &state.tokens,
                ns.unwrap_or("default"),
                name,
                &obj,
            )
            .await?;
            Ok(json_response(StatusCode::CREATED, &answer))
        }
        (&Method::POST, Some(name), Some("binding")) => {
            let (obj, _) = parse_body(headers, &body)?;
            let status = reg.bind(ns.unwrap_or_default(), name, &obj).await?;
            Ok(json_response(StatusCode::CREATED, &status))
        }
        (&Method::PUT, Some(name), None | Some("status") | Some("finalize") | Some("approval")) => {
            let (obj, _) = parse_body(headers, &body)?;
            let w = reg
                .update(rt, ns, name, obj, sub, &write_options(&q, check.clone())?)
                .await?;
            Ok(with_warnings(
                json_response(StatusCode::OK, &w.object),
                &w.warnings,
            ))
        }
        (&Method::PUT, Some(name), Some("scale")) => {
            let (obj, _) = parse_body(headers, &body)?;
            ok(&reg
                .update_scale(
                    rt,
                    ns.unwrap_or_default(),
                    name,
                    ScaleChange::Replace(&obj),
                    &write_options(&q, check.clone())?,
                )
                .await?)
        }
        (&Method::PATCH, Some(name), None | Some("status") | Some("approval")) => {
            let (p, ct) = parse_body(headers, &body)?;
            let w = reg
                .patch(
                    rt,
                    ns,
                    name,
                    patch_type(&ct)?,
                    &p,
                    sub,
                    &write_options(&q, check.clone())?,
                )
                .await?;
            Ok(with_warnings(
                json_response(StatusCode::OK, &w.object),
                &w.warnings,
            ))
        }
        (&Method::PATCH, Some(name), Some("scale")) => {
            let (p, ct) = parse_body(headers, &body)?;
            let change = ScaleChange::Patch(patch_type(&ct)?, &p);
            ok(&reg
                .update_scale(
                    rt,
                    ns.unwrap_or_default(),
                    name,
                    change,
                    &write_options(&q, check.clone())?,
                )
                .await?)
        }
        (&Method::DELETE, Some(name), None) => {
            let b = if body.is_empty() {
                None
            } else {
                Some(parse_body(headers, &body)?.0)
            };
            let opts = delete_options(&q, b.as_ref())?;
            ok(&reg.delete(rt, ns, name, &opts).await?)
        }
        (&Method::DELETE, None, None) => {
            let b = if body.is_empty() {
                None
            } else {
                Some(parse_body(headers, &body)?.0)
            };
            let opts = delete_options(&q, b.as_ref())?;
            let (label_selector, field_selector) = selectors(&q)?;
            let list = ListOptions {
                label_selector,
                field_selector,
                limit: 0,
                continue_token: None,
            };
            ok(&reg.delete_collection(rt, ns, &list, &opts).await?)
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "{method} is not supported on {}",
            uri.path()
        ))),
    }
}

fn table_event_line(
    custom: Option<&CustomVersion>,
    rt: &ResourceType,
    kind: &str,
    object: &Value,
) -> Bytes {
    let rv = object
        .pointer("/metadata/resourceVersion")
        .cloned()
        .unwrap_or(Value::Null);
    event_line(
        kind,
        &as_table(
            custom,
            rt,
            std::slice::from_ref(object),
            json!({"resourceVersion": rv}),
        ),
    )
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

async fn watch(
    state: &AppState,
    rt: &'static ResourceType,
    ns: Option<String>,
    opts: WatchOptions,
    q: &HashMap<String, String>,
    table: bool,
    user: Option<&UserInfo>,
) -> ApiResult<Response> {
    // Held by the task that streams the watch, given back however it ends
    // (timeout, the client gone, the store's stream ended).
    let slot = user.map(|u| state.limits.watch(&u.name)).transpose()?;
    let start_rv = opts.resource_version.unwrap_or(0);
    let object = opts
        .field_selector
        .required_value("metadata.name")
        .is_some();
    let selector = match (
        opts.label_selector.is_empty(),
        opts.field_selector.fields().any(|f| f != "metadata.name"),
    ) {
        (true, false) => "none",
        (false, false) => "label",
        (true, true) => "field",
        (false, true) => "label+field",
    };
    state.metrics.watch_started(WatchLabels {
        group: rt.group.into(),
        version: rt.version.into(),
        resource: rt.plural.into(),
        scope: match (object, &ns) {
            (true, _) => "object",
            (false, Some(_)) => "namespace",
            (false, None) => "cluster",
        }
        .into(),
        selector: selector.into(),
    });
    let mut events = state.registry.watch(rt, ns, opts).await?;
    let bookmarks = flag(q, "allowWatchBookmarks");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .unwrap_or(1800);
    let kind = rt.kind;
    let api_version = rt.api_version();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(256);
    let current = state.registry.store().current_revision().await.unwrap_or(0);
    let custom = state.registry.custom_types().of(rt);
    let line = move |kind: &str, o: &Value| {
        if table {
            table_event_line(custom.as_deref(), rt, kind, o)
        } else {
            event_line(kind, o)
        }
    };
    tokio::spawn(async move {
        let _slot = slot;
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.tick().await;
        let mut last_rv = start_rv.max(0);
        if last_rv == 0 {
            last_rv = current;
        }
        loop {
            let line = tokio::select! {
                _ = &mut deadline => break,
                _ = tick.tick(), if bookmarks => {
                    event_line("BOOKMARK", &json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": last_rv.to_string()}}))
                }
                ev = events.next() => match ev {
                    None => break,
                    Some(WatchEvent::Progress(rv)) => { last_rv = last_rv.max(rv); continue; }
                    Some(WatchEvent::InitialEventsEnd(rv)) => {
                        last_rv = last_rv.max(rv);
                        event_line("BOOKMARK", &json!({"kind": kind, "apiVersion": api_version, "metadata": {
                            "resourceVersion": last_rv.to_string(),
                            "annotations": {"k8s.io/initial-events-end": "true"}}}))
                    }
                    Some(WatchEvent::Line { revision, line }) => { last_rv = last_rv.max(revision); line }
                    Some(WatchEvent::Added(o)) => { last_rv = last_rv.max(rv_of(&o)); line("ADDED", &o) }
                    Some(WatchEvent::Modified(o)) => { last_rv = last_rv.max(rv_of(&o)); line("MODIFIED", &o) }
                    Some(WatchEvent::Deleted(o)) => { last_rv = last_rv.max(rv_of(&o)); line("DELETED", &o) }
                    Some(WatchEvent::Error(s)) => {
                        let _ = tx.send(Ok(event_line("ERROR", &s))).await;
                        break;
                    }
                },
                _ = tx.closed() => break,
            };
            if tx.send(Ok(line)).await.is_err() {
                break;
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    Ok(r.into_response())
}

fn rv_of(o: &Value) -> i64 {
    o.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {

    #[test]
    fn streaming_subresources_are_told_apart() {
        assert_eq!(
            streaming_subresource("/api/v1/namespaces/shop/pods/web/exec"),
            Some(("shop", "web", "exec"))
        );
        assert_eq!(
            streaming_subresource("/api/v1/namespaces/shop/pods/web/portforward/"),
            Some(("shop", "web", "portforward"))
        );
        assert_eq!(
            streaming_subresource("/api/v1/namespaces/shop/pods/web/log"),
            None
        );
        assert_eq!(
            streaming_subresource("/api/v1/namespaces/shop/services/web/exec"),
            None
        );
        assert_eq!(
            streaming_subresource("/apis/v1/namespaces/shop/pods/web/exec"),
            None
        );
    }
    use super::*;
    use crate::api::resources;

    #[test]
    fn targets() {
        let t = parse_target(
            &resources::find,
            "",
            "v1",
            &["namespaces", "default", "pods", "web", "status"],
        )
        .unwrap();
        assert_eq!(t.rt.kind, "Pod");
        assert_eq!(t.namespace.as_deref(), Some("default"));
        assert_eq!(t.name.as_deref(), Some("web"));
        assert_eq!(t.subresource.as_deref(), Some("status"));
        let t = parse_target(&resources::find, "", "v1", &["namespaces", "default"]).unwrap();
        assert_eq!(t.rt.kind, "Namespace");
        assert_eq!(t.name.as_deref(), Some("default"));
        let t = parse_target(
            &resources::find,
            "",
            "v1",
            &["namespaces", "gone", "finalize"],
        )
        .unwrap();
        assert_eq!(t.subresource.as_deref(), Some("finalize"));
        let t = parse_target(&resources::find, "", "v1", &["pods"]).unwrap();
        assert!(t.namespace.is_none() && t.name.is_none());
        let t = parse_target(
            &resources::find,
            "",
            "v1",
            &["watch", "namespaces", "a", "pods"],
        )
        .unwrap();
        assert!(t.watch_prefix);
        assert!(parse_target(&resources::find, "", "v1", &["namespaces", "a", "nodes"]).is_err());
        assert!(parse_target(&resources::find, "", "v1", &["pods", "x", "bogus"]).is_err());
        assert!(
            parse_target(
                &resources::find,
                "apps",
                "v1",
                &["namespaces", "a", "deployments", "d", "scale"]
            )
            .is_ok()
        );
    }
}
