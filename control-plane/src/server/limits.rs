//! What one request, and one user, may hold of the API server, as
//! kube-apiserver's filters bound it:
//!
//! - a request timeout for requests that are not long-running
//!   (`--request-timeout`, 60 s; a client's `?timeout=` shortens it), with
//!   kube-apiserver's 504 `Timeout` Status; the handler runs on to its end
//!   in the background, as upstream's does, but its request body stops at
//!   the deadline, so a client that trickles one holds nothing past it;
//! - in-flight limits (`--max-requests-inflight`, 400, and
//!   `--max-mutating-requests-inflight`, 200, 0: no limit), upstream's
//!   legacy `WithMaxInFlightLimit`: long-running requests are not counted,
//!   one over the limit gets 429 with `Retry-After: 1` and upstream's
//!   plain-text body, except for `system:masters`, which upstream serves
//!   anyway ("a super-admin or a loopback connection");
//! - open watches per user (`--max-watches-per-user`), which upstream does
//!   not have (its priority and fairness counts watches among the seats of
//!   a flow): past the limit a watch gets 429 `TooManyRequests`.
//!
//! Every rejection is counted in [`Metrics`] by reason.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use futures::StreamExt;
use http::{HeaderValue, StatusCode, header};
use keelson_host::serve::{PerKeyLimit, Slot};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::authz::attributes::Attributes;
use super::metrics::Metrics;
use crate::api::errors::ApiError;

/// The limits `keelson server` applies per request and per user; the
/// flags' defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// Longest a request that is not long-running may take
    /// (kube-apiserver's `--request-timeout`, 60 s).
    pub request_timeout: Duration,
    /// Read-only (get, list) requests served at once; 0: no limit
    /// (kube-apiserver's `--max-requests-inflight`, 400).
    pub max_requests_inflight: usize,
    /// Other requests served at once; 0: no limit (kube-apiserver's
    /// `--max-mutating-requests-inflight`, 200).
    pub max_mutating_requests_inflight: usize,
    /// Watches one user may have open; 0: no limit. 5000: an agent
    /// (`system:node:NAME`, one per node) opens one watch per resource
    /// type, a dozen or two, and the controllers share one informer per
    /// type; what comes near is a DaemonSet whose pods all run as one
    /// service account, each with a few watches: 5000 lets a three-watch
    /// DaemonSet run on more than 1600 nodes while a client that leaks
    /// watches is still stopped.
    pub max_watches_per_user: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            request_timeout: Duration::from_secs(60),
            max_requests_inflight: 400,
            max_mutating_requests_inflight: 200,
            max_watches_per_user: 5000,
        }
    }
}

/// Why a request or connection was refused: the `reason` label of
/// `apiserver_rejected_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Over `--max-requests-inflight`.
    ReadOnlyInflight,
    /// Over `--max-mutating-requests-inflight`.
    MutatingInflight,
    /// Over `--max-watches-per-user`.
    WatchesPerUser,
    /// Not done within `--request-timeout` (or the client's `?timeout=`).
    Timeout,
}

impl Rejection {
    pub fn label(self) -> &'static str {
        match self {
            Rejection::ReadOnlyInflight => "max_requests_inflight",
            Rejection::MutatingInflight => "max_mutating_requests_inflight",
            Rejection::WatchesPerUser => "max_watches_per_user",
            Rejection::Timeout => "request_timeout",
        }
    }
}

/// Upstream's verbs that do not count as mutating.
const READ_ONLY_VERBS: &[&str] = &["get", "list", "watch"];

/// The limits in force, with their counts.
pub struct Limiter {
    limits: RequestLimits,
    read_only: Option<Arc<Semaphore>>,
    mutating: Option<Arc<Semaphore>>,
    watches: PerKeyLimit<String>,
    metrics: Arc<Metrics>,
}

/// A request's place among those in flight, until dropped; none for
/// long-running requests and for `system:masters` over the limit.
pub type InFlight = Option<OwnedSemaphorePermit>;

impl Limiter {
    pub fn new(limits: RequestLimits, metrics: Arc<Metrics>) -> Limiter {
        let semaphore = |n: usize| (n > 0).then(|| Arc::new(Semaphore::new(n)));
        Limiter {
            read_only: semaphore(limits.max_requests_inflight),
            mutating: semaphore(limits.max_mutating_requests_inflight),
            watches: PerKeyLimit::new(limits.max_watches_per_user),
            limits,
            metrics,
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Admit a request (upstream's `WithMaxInFlightLimit`): its place in
    /// flight, or which limit it is over (answered [`too_many_requests`]).
    pub fn admit(&self, attrs: &Attributes, long_running: bool) -> Result<InFlight, Rejection> {
        if long_running {
            return Ok(None);
        }
        let (semaphore, reason) = if READ_ONLY_VERBS.contains(&attrs.verb.as_str()) {
            (&self.read_only, Rejection::ReadOnlyInflight)
        } else {
            (&self.mutating, Rejection::MutatingInflight)
        };
        let Some(semaphore) = semaphore else {
            return Ok(None);
        };
        match semaphore.clone().try_acquire_owned() {
            Ok(permit) => Ok(Some(permit)),
            Err(_) if attrs.groups.iter().any(|g| g == "system:masters") => Ok(None),
            Err(_) => {
                self.metrics.rejected(reason.label());
                Err(reason)
            }
        }
    }

    /// A place for one more watch of `user`, held until the watch ends.
    pub fn watch(&self, user: &str) -> Result<Slot<String>, ApiError> {
        self.watches.try_acquire(&user.to_string()).ok_or_else(|| {
            self.metrics.rejected(Rejection::WatchesPerUser.label());
            ApiError::too_many_requests(format!(
                    "too many open watches: user {user:?} has {} open, the most one user may have (--max-watches-per-user)",
                self.watches.max()
            ))
        })
    }

    /// Watches `user` has open now.
    pub fn watches_of(&self, user: &str) -> usize {
        self.watches.held(&user.to_string())
    }

    /// How long a request that is not long-running may take: the
    /// server's request timeout, or the client's `timeout` query
    /// parameter when shorter and not zero (upstream's
    /// `WithRequestDeadline`); a malformed one is a bad request.
    pub fn timeout_for(&self, query: Option<&str>) -> Result<Duration, ApiError> {
        let limit = self.limits.request_timeout;
        let asked = query
            .into_iter()
            .flat_map(form_urlencoded_pairs)
            .find(|(k, _)| k == "timeout")
            .map(|(_, v)| v)
            .filter(|v| !v.is_empty());
        let Some(asked) = asked else {
            return Ok(limit);
        };
        let asked = parse_go_duration(&asked).map_err(|e| {
            ApiError::bad_request(format!(
                "invalid timeout specified in the request URL - {e}"
            ))
        })?;
        Ok(if !asked.is_zero() && asked < limit {
            asked
        } else {
            limit
        })
    }

    /// Count a request that timed out; the Status to answer it with.
    pub fn timed_out(&self) -> ApiError {
        self.metrics.rejected(Rejection::Timeout.label());
        timeout_error()
    }
}

fn form_urlencoded_pairs(q: &str) -> Vec<(String, String)> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(q).unwrap_or_default()
}

/// kube-apiserver's answer to a request that took too long
/// (`NewTimeoutError("request did not complete within the allotted
/// timeout", 0)`).
pub fn timeout_error() -> ApiError {
    ApiError::timeout_no_retry("request did not complete within the allotted timeout")
}

/// kube-apiserver's answer over an in-flight limit (`tooManyRequests` of
/// its max-in-flight and priority-and-fairness filters): 429, a
/// `Retry-After` of one second and a line of plain text, as Go's
/// `http.Error` writes it.
pub fn too_many_requests() -> Response {
    let mut r = Response::new(Body::from("Too many requests, please try again later.\n"));
    *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let h = r.headers_mut();
    h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// Whether a request is long-running, as kube-apiserver's
/// `BasicLongRunningRequestCheck` with its sets: the verbs watch and
/// proxy, the subresources attach, exec, log, portforward and proxy
/// (plus a `?watch=` on one object by name, which this server streams).
pub fn is_long_running(attrs: &Attributes, uri: &http::Uri) -> bool {
    matches!(attrs.verb.as_str(), "watch" | "proxy")
        || (attrs.resource_request
            && matches!(
                attrs.subresource.as_str(),
                "attach" | "exec" | "log" | "portforward" | "proxy"
            ))
        || uri.query().is_some_and(|q| {
            form_urlencoded_pairs(q)
                .iter()
                .any(|(k, v)| k == "watch" && (v == "true" || v == "1"))
        })
        || super::proxy::parse(uri.path()).is_some()
}

/// `req` with a body that fails once `deadline` passes (upstream's
/// `timeoutReader`): a handler that outlives its request timeout stops
/// waiting for a client that trickles its body. The flag turns true when
/// the body has failed so (the handler's answer is then not the client's).
pub fn body_until(req: Request, deadline: tokio::time::Instant) -> (Request, Arc<AtomicBool>) {
    let timed_out = Arc::new(AtomicBool::new(false));
    let flag = timed_out.clone();
    let req = req.map(|body| {
        let stream = body.into_data_stream();
        Body::from_stream(futures::stream::unfold(Some(stream), move |stream| {
            let flag = flag.clone();
            async move {
                let mut stream = stream?;
                match tokio::time::timeout_at(deadline, stream.next()).await {
                    Ok(Some(Ok(bytes))) => Some((Ok(bytes), Some(stream))),
                    Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e)), None)),
                    Ok(None) => None,
                    Err(_) => {
                        flag.store(true, Ordering::SeqCst);
                        Some((
                            Err(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "the request body did not arrive within the request timeout",
                            )),
                            None,
                        ))
                    }
                }
            }
        }))
    });
    (req, timed_out)
}

/// A Go duration (`time.ParseDuration`): an optional sign, then one or
/// more decimal numbers each with a unit (ns, us, µs, ms, s, m, h), as in
/// `30s`, `1m30s`, `1.5h`; `0` alone is zero. Negative durations are
/// zero here (no timeout of the client's own).
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let invalid = || format!("time: invalid duration {s:?}");
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(end);
        if num.is_empty() || num == "." {
            return Err(invalid());
        }
        let n: f64 = num.parse().map_err(|_| invalid())?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(format!("time: missing unit in duration {s:?}")),
            other => return Err(format!("time: unknown unit {other:?} in duration {s:?}")),
        };
        total += n * scale;
        rest = tail;
    }
    if negative || !total.is_finite() {
        return Ok(Duration::ZERO);
    }
    Duration::try_from_secs_f64(total).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::auth::UserInfo;
    use crate::server::authz::attributes;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.into(),
            uid: String::new(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..UserInfo::anonymous()
        }
    }

    fn attrs(u: &UserInfo, method: &str, uri: &str) -> (Attributes, http::Uri) {
        let uri: http::Uri = uri.parse().unwrap();
        (
            attributes::of_request(u, method, uri.path(), uri.query()),
            uri,
        )
    }

    fn limiter(read_only: usize, mutating: usize, watches: usize) -> Limiter {
        Limiter::new(
            RequestLimits {
                max_requests_inflight: read_only,
                max_mutating_requests_inflight: mutating,
                max_watches_per_user: watches,
                ..RequestLimits::default()
            },
            Arc::new(Metrics::new()),
        )
    }

    #[test]
    fn long_running_requests_are_upstreams() {
        let u = user("alice", &[]);
        for (method, uri, long) in [
            ("GET", "/api/v1/pods?watch=true", true),
            ("GET", "/api/v1/watch/namespaces/a/pods", true),
            ("GET", "/api/v1/namespaces/a/pods/p?watch=1", true),
            ("GET", "/api/v1/namespaces/a/pods/p/log", true),
            ("GET", "/api/v1/namespaces/a/pods/p/log?follow=true", true),
            ("POST", "/api/v1/namespaces/a/pods/p/exec?command=ls", true),
            ("GET", "/api/v1/namespaces/a/pods/p/attach", true),
            ("POST", "/api/v1/namespaces/a/pods/p/portforward", true),
            ("GET", "/api/v1/namespaces/a/pods/p/proxy/x", true),
            ("GET", "/api/v1/namespaces/a/services/s:80/proxy/", true),
            ("GET", "/api/v1/nodes/n/proxy/metrics", true),
            ("GET", "/api/v1/pods", false),
            ("GET", "/api/v1/pods?watch=false", false),
            ("POST", "/api/v1/namespaces/a/configmaps", false),
            ("GET", "/api/v1/namespaces/a/pods/p/status", false),
            ("GET", "/healthz", false),
        ] {
            let (a, uri) = attrs(&u, method, uri);
            assert_eq!(is_long_running(&a, &uri), long, "{method} {uri}");
        }
    }

    #[test]
    fn in_flight_limits_count_read_only_and_mutating_apart() {
        let l = limiter(2, 1, 0);
        let u = user("alice", &["system:authenticated"]);
        let (get, _) = attrs(&u, "GET", "/api/v1/pods");
        let (post, _) = attrs(&u, "POST", "/api/v1/namespaces/a/configmaps");
        let (watch, _) = attrs(&u, "GET", "/api/v1/pods?watch=true");
        let r1 = l.admit(&get, false).unwrap();
        let r2 = l.admit(&get, false).unwrap();
        assert!(r1.is_some() && r2.is_some());
        assert_eq!(
            l.admit(&get, false).unwrap_err(),
            Rejection::ReadOnlyInflight
        );
        let answer = too_many_requests();
        assert_eq!(answer.status(), 429);
        assert_eq!(answer.headers()[header::RETRY_AFTER], "1");
        // The mutating limit is its own; long-running requests are not counted.
        let m1 = l.admit(&post, false).unwrap();
        assert!(m1.is_some());
        assert_eq!(
            l.admit(&post, false).unwrap_err(),
            Rejection::MutatingInflight
        );
        assert!(l.admit(&watch, true).unwrap().is_none());
        // A place comes back when its request is done.
        drop(r1);
        assert!(l.admit(&get, false).unwrap().is_some());
        drop(m1);
        assert!(l.admit(&post, false).is_ok());
        let text = l.metrics().render();
        assert!(
            text.contains(r#"apiserver_rejected_requests_total{reason="max_requests_inflight"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"apiserver_rejected_requests_total{reason="max_mutating_requests_inflight"} 1"#
            ),
            "{text}"
        );
    }

    #[test]
    fn system_masters_is_served_over_the_limit_and_zero_means_no_limit() {
        let l = limiter(1, 1, 0);
        let admin = user("admin", &["system:masters", "system:authenticated"]);
        let (get, _) = attrs(&admin, "GET", "/api/v1/pods");
        let _held = l.admit(&get, false).unwrap();
        assert!(l.admit(&get, false).unwrap().is_none(), "served, uncounted");
        let none = limiter(0, 0, 0);
        let u = user("alice", &[]);
        let (post, _) = attrs(&u, "POST", "/api/v1/namespaces/a/configmaps");
        let held: Vec<_> = (0..1000)
            .map(|_| none.admit(&post, false).unwrap())
            .collect();
        assert_eq!(held.len(), 1000);
    }

    #[test]
    fn watches_are_counted_per_user_until_they_end() {
        let l = limiter(0, 0, 2);
        let a1 = l.watch("alice").unwrap();
        let _a2 = l.watch("alice").unwrap();
        let e = l.watch("alice").unwrap_err();
        assert_eq!((e.code, e.reason), (429, "TooManyRequests"));
        assert!(e.message.contains("\"alice\""), "{}", e.message);
        // Another user has places of their own.
        let _b = l.watch("bob").unwrap();
        assert_eq!(l.watches_of("alice"), 2);
        drop(a1);
        assert_eq!(l.watches_of("alice"), 1);
        let _a3 = l.watch("alice").unwrap();
        let text = l.metrics().render();
        assert!(
            text.contains(r#"apiserver_rejected_requests_total{reason="max_watches_per_user"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn client_timeouts_shorten_but_never_lengthen() {
        let l = limiter(0, 0, 0);
        let sixty = Duration::from_secs(60);
        assert_eq!(l.timeout_for(None).unwrap(), sixty);
        assert_eq!(l.timeout_for(Some("limit=5")).unwrap(), sixty);
        assert_eq!(
            l.timeout_for(Some("timeout=5s")).unwrap(),
            Duration::from_secs(5)
        );
        assert_eq!(l.timeout_for(Some("timeout=10m")).unwrap(), sixty);
        assert_eq!(l.timeout_for(Some("timeout=0s")).unwrap(), sixty);
        let e = l.timeout_for(Some("timeout=5x")).unwrap_err();
        assert_eq!(e.code, 400);
        assert!(
            e.message
                .starts_with("invalid timeout specified in the request URL - time: unknown unit"),
            "{}",
            e.message
        );
        let t = l.timed_out().to_status();
        assert_eq!(t["code"], 504);
        assert_eq!(t["reason"], "Timeout");
        assert_eq!(
            t["message"],
            "Timeout: request did not complete within the allotted timeout"
        );
    }

    #[test]
    fn go_durations() {
        let ms = Duration::from_millis;
        for (s, d) in [
            ("0", ms(0)),
            ("30s", ms(30_000)),
            ("1m0s", ms(60_000)),
            ("1h2m3.5s", ms(3_723_500)),
            ("500ms", ms(500)),
            ("1.5m", ms(90_000)),
            ("+2s", ms(2000)),
            ("-2s", ms(0)),
            ("250000us", ms(250)),
            ("1000000000ns", ms(1000)),
        ] {
            assert_eq!(parse_go_duration(s), Ok(d), "{s}");
        }
        for s in ["", "s", "5", "1x", ".s", "1m5", "-"] {
            assert!(parse_go_duration(s).is_err(), "{s:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_body_fails_at_the_deadline() {
        let (mut tx, rx) =
            futures::channel::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
        let req = Request::new(Body::from_stream(rx));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        let (req, cut) = body_until(req, deadline);
        tx.try_send(Ok(bytes::Bytes::from_static(b"{"))).unwrap();
        let read = axum::body::to_bytes(req.into_body(), 1024);
        let err = read.await.unwrap_err();
        assert!(
            std::error::Error::source(&err)
                .map(|s| s.to_string())
                .unwrap_or_default()
                .contains("request timeout")
                || err.to_string().contains("request timeout"),
            "{err}"
        );
        assert!(cut.load(Ordering::SeqCst));
        drop(tx);
    }
}
