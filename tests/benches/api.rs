//! API benchmark: latency and throughput of the Kubernetes API served by
//! `keelson server`, through HTTPS with a kube-rs client, on the embedded
//! (SQLite) store and on a real etcd.
//!
//! `cargo bench -p keelson-e2e --bench api`. For each backend it fills the
//! store with pods (bulk create, 16 in flight), then measures create, get,
//! update (PUT with resourceVersion), strategic merge patch, a list of every
//! pod, a list with a label selector matching 1% of them, and watch fan-out
//! (N watchers on the pods; time from a write's acknowledgement until its
//! event has reached every watcher, and events delivered per second in a
//! burst). A few in-process timings (store, JSON decode and encode, fsync)
//! show where list and write time goes.
//!
//! The server runs in-process on its own multi-threaded tokio runtime and the
//! client load on another one, so that client work does not queue behind
//! server work on the same workers (each phase is driven by `block_on` of the
//! client runtime, so its top-level future runs on the main thread and the
//! connections and watchers on the client workers). On a small machine both
//! runtimes still share the same cores: the numbers include that contention,
//! and the load average is printed with each table.
//!
//! The rows starting with `in-process:` call the server's store, registry and
//! router directly (no TLS, no socket, no client) to show where the time of a
//! list or a write goes; `disk:` is a bare append + fdatasync next to the
//! store, the floor of a durable write.
//!
//! Controllers and the scheduler are off: this measures the API server alone.
//!
//! etcd comes from [`EtcdProcess`]; without the binary the etcd backend is
//! skipped with a message, unless `KEELSON_REQUIRE_ALL=1`.
//!
//! Environment, to shrink a run (defaults are the full targets):
//!
//! - `KEELSON_BENCH_OBJECTS` (10000): pods in the store.
//! - `KEELSON_BENCH_ITERS` (200): samples of create, get, update, patch and
//!   of each watch fan-out.
//! - `KEELSON_BENCH_LIST_ITERS` (20): repetitions of each list.
//! - `KEELSON_BENCH_CONCURRENCY` (16): requests in flight for bulk create and
//!   the watch burst.
//! - `KEELSON_BENCH_WATCHERS` (`10,100`): watcher counts for fan-out.
//! - `KEELSON_BENCH_WATCH_BURST` (500): writes in the watch throughput burst.
//! - `KEELSON_BENCH_BACKENDS` (`embedded,etcd`).

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use http_body_util::BodyExt as _;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use keelson_control_plane::api::registry::{ApiConfig, ListOptions, Registry};
use keelson_control_plane::api::resources;
use keelson_control_plane::controllers::ControllerConfig;
use keelson_control_plane::server::{self, ServerConfig, ServerHandle};
use keelson_control_plane::store::{KeyValue, Store};
use keelson_e2e::{EtcdProcess, require_all};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::core::ObjectList;
use serde_json::json;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tower::ServiceExt as _;

/// The namespace the benchmark's pods live in.
const NAMESPACE: &str = "bench";
/// Label selector matching 1% of the pods (`bucket` is `i % 100`).
const ONE_PERCENT: &str = "bucket=b07";
/// How long one write's event may take to reach every watcher.
const WATCH_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Settings

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Embedded,
    Etcd,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::Etcd => "etcd",
        }
    }
}

#[derive(Debug)]
struct Settings {
    objects: usize,
    iters: usize,
    list_iters: usize,
    concurrency: usize,
    watchers: Vec<usize>,
    watch_burst: usize,
    backends: Vec<Backend>,
}

fn env_usize(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("parse {name}={v:?} as a number")),
        Err(_) => Ok(default),
    }
}

impl Settings {
    fn from_env() -> Result<Settings> {
        let watchers = match std::env::var("KEELSON_BENCH_WATCHERS") {
            Ok(v) => v
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| {
                    s.trim()
                        .parse()
                        .with_context(|| format!("parse KEELSON_BENCH_WATCHERS={v:?}"))
                })
                .collect::<Result<Vec<usize>>>()?,
            Err(_) => vec![10, 100],
        };
        let backends = match std::env::var("KEELSON_BENCH_BACKENDS") {
            Ok(v) => v
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| match s.trim() {
                    "embedded" | "sqlite" => Ok(Backend::Embedded),
                    "etcd" => Ok(Backend::Etcd),
                    other => bail!("KEELSON_BENCH_BACKENDS: unknown backend {other:?}"),
                })
                .collect::<Result<Vec<_>>>()?,
            Err(_) => vec![Backend::Embedded, Backend::Etcd],
        };
        let s = Settings {
            objects: env_usize("KEELSON_BENCH_OBJECTS", 10_000)?,
            iters: env_usize("KEELSON_BENCH_ITERS", 200)?,
            list_iters: env_usize("KEELSON_BENCH_LIST_ITERS", 20)?,
            concurrency: env_usize("KEELSON_BENCH_CONCURRENCY", 16)?.max(1),
            watchers,
            watch_burst: env_usize("KEELSON_BENCH_WATCH_BURST", 500)?,
            backends,
        };
        if s.objects < 100 || s.iters == 0 || s.list_iters == 0 {
            bail!("need KEELSON_BENCH_OBJECTS >= 100 and ITERS, LIST_ITERS >= 1: {s:?}");
        }
        Ok(s)
    }

    /// Pods created one at a time at the end of filling the store (the
    /// sequential create samples); the rest are bulk-created.
    fn sequential_creates(&self) -> usize {
        self.iters.min(self.objects / 2)
    }
}

// ---------------------------------------------------------------------------
// Results

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tag {
    Plain,
    /// A write at one request in flight: counts for the mutating target.
    Mutating,
    /// The full list through the real client: counts for the list target.
    ListAll,
}

struct Row {
    op: String,
    samples: Vec<Duration>,
    note: String,
    tag: Tag,
}

impl Row {
    fn new(op: impl Into<String>, samples: Vec<Duration>) -> Row {
        let mut samples = samples;
        samples.sort();
        Row {
            op: op.into(),
            samples,
            note: String::new(),
            tag: Tag::Plain,
        }
    }

    fn failed(op: impl Into<String>, err: &anyhow::Error) -> Row {
        let mut r = Row::new(op, Vec::new());
        // kube's errors repeat their Status; the start says what failed.
        let full = format!("{err:#}");
        let cut: String = full.chars().take(220).collect();
        r.note = if cut.len() < full.len() {
            format!("FAILED: {cut}...")
        } else {
            format!("FAILED: {full}")
        };
        r
    }

    fn note(mut self, note: impl Into<String>) -> Row {
        self.note = note.into();
        self
    }

    fn tag(mut self, tag: Tag) -> Row {
        self.tag = tag;
        self
    }

    /// Nearest-rank percentile, in milliseconds.
    fn percentile(&self, q: f64) -> Option<f64> {
        let n = self.samples.len();
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        Some(ms(self.samples[rank - 1]))
    }

    fn mean(&self) -> Option<f64> {
        if self.samples.is_empty() {
            return None;
        }
        let total: Duration = self.samples.iter().sum();
        Some(ms(total) / self.samples.len() as f64)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Report {
    title: String,
    rows: Vec<Row>,
}

impl Report {
    fn push(&mut self, row: Row) {
        print_row(&row);
        self.rows.push(row);
    }

    fn find(&self, tag: Tag) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter(move |r| r.tag == tag)
    }
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

fn print_header() {
    println!(
        "{:<44} {:>6} {:>9} {:>9} {:>9}  note",
        "operation", "n", "p50 ms", "p99 ms", "mean ms"
    );
}

fn print_row(r: &Row) {
    println!(
        "{:<44} {:>6} {:>9} {:>9} {:>9}  {}",
        r.op,
        r.samples.len(),
        fmt_ms(r.percentile(0.50)),
        fmt_ms(r.percentile(0.99)),
        fmt_ms(r.mean()),
        r.note
    );
    let _ = std::io::stdout().flush();
}

fn print_report(r: &Report) {
    println!();
    println!("== {} ==", r.title);
    print_header();
    for row in &r.rows {
        print_row(row);
    }
}

// ---------------------------------------------------------------------------
// Objects

fn pod_name(i: usize) -> String {
    format!("bench-{i:05}")
}

/// A realistic pod of about 1.5 KB: labels, annotations, two containers with
/// env, ports, resources, a probe and volume mounts.
fn pod(i: usize) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(i),
            "namespace": NAMESPACE,
            "labels": {
                "app.kubernetes.io/name": "web-frontend",
                "app.kubernetes.io/component": "frontend",
                "pod-template-hash": "7c9d8f6b5d",
                "release": "stable",
                "bucket": format!("b{:02}", i % 100),
            },
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": "9090",
                "bench.keelson.dev/index": i.to_string(),
            },
        },
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "registry.example.com/shop/web-frontend:1.27.3",
                    "args": ["--listen=:8080", "--metrics=:9090", "--log-level=info"],
                    "ports": [
                        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                        {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
                    ],
                    "env": [
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {"name": "DATABASE_URL", "value": "postgres://web@db.shop.svc.cluster.local:5432/web"},
                        {"name": "CACHE_TTL_SECONDS", "value": "300"},
                    ],
                    "resources": {
                        "requests": {"cpu": "250m", "memory": "256Mi"},
                        "limits": {"cpu": "1", "memory": "512Mi"},
                    },
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10},
                    "volumeMounts": [
                        {"name": "config", "mountPath": "/etc/web", "readOnly": true},
                        {"name": "logs", "mountPath": "/var/log/web"},
                    ],
                },
                {
                    "name": "log-shipper",
                    "image": "registry.example.com/infra/log-shipper:2.4.0",
                    "resources": {
                        "requests": {"cpu": "50m", "memory": "64Mi"},
                        "limits": {"memory": "128Mi"},
                    },
                    "volumeMounts": [{"name": "logs", "mountPath": "/var/log/web", "readOnly": true}],
                },
            ],
            "volumes": [
                {"name": "config", "configMap": {"name": "web-frontend-config"}},
                {"name": "logs", "emptyDir": {}},
            ],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
        },
    }))
    .expect("the benchmark pod is a valid Pod")
}

/// A deterministic spread of pod indices (a fixed odd stride through the
/// store), so that reads and writes do not hit one hot key.
fn spread(i: usize, n: usize) -> usize {
    (i.wrapping_mul(7919) + 13) % n
}

/// A value no earlier write used: a write that changes nothing is not
/// stored (as in Kubernetes), has no event and would leave a watcher waiting.
fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn resource_version(pod: &Pod) -> Result<i64> {
    let rv = pod.metadata.resource_version.as_deref().unwrap_or_default();
    rv.parse()
        .with_context(|| format!("resourceVersion {rv:?} of a written pod"))
}

// ---------------------------------------------------------------------------
// Main

fn main() -> Result<()> {
    let settings = Settings::from_env()?;
    println!(
        "keelson API benchmark: {} pods, {} iterations, {} list repetitions, {} in flight, watchers {:?}, burst {}",
        settings.objects,
        settings.iters,
        settings.list_iters,
        settings.concurrency,
        settings.watchers,
        settings.watch_burst
    );
    println!(
        "machine: {} CPUs; server and client each on a {}-worker tokio runtime (they share the CPUs)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        worker_threads()
    );
    println!(
        "pod request body: {} bytes of JSON",
        serde_json::to_vec(&pod(0))?.len()
    );
    let mut reports = Vec::new();
    for backend in &settings.backends {
        match run_backend(*backend, &settings)
            .with_context(|| format!("benchmark the {} backend", backend.name()))?
        {
            Some(r) => reports.push((*backend, r)),
            None => continue,
        }
    }
    for (_, r) in &reports {
        print_report(r);
    }
    println!();
    println!("load average at the end: {}", load_average());
    summary(&settings, &reports);
    Ok(())
}

/// The 1, 5 and 15 minute load averages, to judge how quiet the machine was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn worker_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn runtime(name: &str) -> Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads())
        .thread_name(name)
        .enable_all()
        .build()
        .with_context(|| format!("build the {name} tokio runtime"))
}

fn summary(settings: &Settings, reports: &[(Backend, Report)]) {
    println!("== targets ==");
    let full = settings.objects >= 10_000;
    if !full {
        println!(
            "(shrunk run: {} pods; the list target is defined for 10,000)",
            settings.objects
        );
    }
    for (backend, report) in reports {
        if *backend == Backend::Embedded {
            let worst = report
                .find(Tag::Mutating)
                .filter_map(|r| r.percentile(0.99).map(|p| (p, r.op.as_str())))
                .max_by(|a, b| a.0.total_cmp(&b.0));
            match worst {
                Some((p99, op)) => println!(
                    "mutating p99 < 10 ms on embedded: {} ({p99:.2} ms, worst: {op})",
                    pass(p99 < 10.0)
                ),
                None => println!("mutating p99 < 10 ms on embedded: FAIL (no samples)"),
            }
        }
        for row in report.find(Tag::ListAll) {
            match row.percentile(0.5) {
                Some(p50) => println!(
                    "list {} pods < 300 ms [{}]: {} (p50 {p50:.2} ms, p99 {} ms)",
                    thousands(settings.objects),
                    backend.name(),
                    pass(p50 < 300.0),
                    fmt_ms(row.percentile(0.99))
                ),
                None => println!(
                    "list {} pods < 300 ms [{}]: FAIL ({})",
                    thousands(settings.objects),
                    backend.name(),
                    row.note
                ),
            }
        }
    }
}

fn pass(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Runs every measurement on one backend; `None` when it is skipped.
fn run_backend(backend: Backend, settings: &Settings) -> Result<Option<Report>> {
    let etcd = match backend {
        Backend::Embedded => None,
        Backend::Etcd => match EtcdProcess::start() {
            Ok(etcd) => Some(etcd),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !require_all() => {
                println!(
                    "\nskipping the etcd backend: {err} (KEELSON_REQUIRE_ALL=1 makes this an error)"
                );
                return Ok(None);
            }
            Err(err) => return Err(err).context("start etcd"),
        },
    };
    let tmp = tempfile::tempdir().context("create a temporary directory")?;
    let server_rt = runtime("keelson-server")?;
    let client_rt = runtime("bench-client")?;
    let config = ServerConfig {
        data_dir: tmp.path().join("server"),
        listen: "127.0.0.1:0".parse()?,
        etcd_servers: etcd.iter().map(|e| e.endpoint.clone()).collect(),
        // The API server alone: no scheduler or controllers writing in the
        // background while it is measured (so no default ServiceAccount and
        // no ServiceAccount admission either).
        api: ApiConfig {
            disabled_admission: vec![
                keelson_control_plane::api::registry::SERVICE_ACCOUNT_ADMISSION.into(),
            ],
            ..ApiConfig::default()
        },
        extra_sans: Vec::new(),
        controllers: false,
        controller_config: ControllerConfig::default(),
        ..ServerConfig::default()
    };
    let handle = server_rt
        .block_on(server::start(config))
        .context("start the API server")?;
    let title = match backend {
        Backend::Embedded => format!(
            "embedded (SQLite in {}, synchronous=FULL), {} pods",
            tmp.path().display(),
            settings.objects
        ),
        Backend::Etcd => format!(
            "etcd ({}, pid {}), {} pods",
            etcd.as_ref().map_or("", |e| e.endpoint.as_str()),
            etcd.as_ref().map_or(0, |e| e.pid()),
            settings.objects
        ),
    };
    println!(
        "\n== {title} ==  (server at https://{}; load average {})",
        handle.addr,
        load_average()
    );
    print_header();
    let mut report = Report {
        title,
        rows: Vec::new(),
    };
    let result = measure(&server_rt, &client_rt, &handle, settings, &mut report);
    server_rt.block_on(handle.shutdown());
    client_rt.shutdown_timeout(Duration::from_secs(2));
    server_rt.shutdown_timeout(Duration::from_secs(2));
    drop(etcd);
    result?;
    Ok(Some(report))
}

fn measure(
    server_rt: &Runtime,
    client_rt: &Runtime,
    handle: &ServerHandle,
    settings: &Settings,
    report: &mut Report,
) -> Result<()> {
    let client = client_rt.block_on(client_for(handle))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    client_rt.block_on(create_namespace(&client))?;

    client_rt.block_on(fill(&pods, settings, report))?;
    client_rt.block_on(reads_and_writes(&pods, settings, report))?;
    client_rt.block_on(lists(&client, &pods, settings, report))?;
    breakdown(server_rt, &handle.registry, handle.addr, settings, report)?;
    for &n in &settings.watchers {
        client_rt
            .block_on(watch_fanout(&pods, n, settings, report))
            .with_context(|| format!("watch fan-out to {n} watchers"))?;
    }
    Ok(())
}

async fn client_for(handle: &ServerHandle) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(&handle.kubeconfig)
        .with_context(|| format!("read {}", handle.kubeconfig.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .context("load the admin kubeconfig")?;
    kube::Client::try_from(cfg).context("build the kube client")
}

async fn create_namespace(client: &kube::Client) -> Result<()> {
    let ns: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE},
    }))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("create namespace {NAMESPACE}"))?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Create, get, update, patch

/// Creates `objects` pods: most of them `concurrency` at a time (the bulk
/// throughput), the last ones one at a time (the create latency).
async fn fill(pods: &Api<Pod>, settings: &Settings, report: &mut Report) -> Result<()> {
    let sequential = settings.sequential_creates();
    let bulk = settings.objects - sequential;
    let started = Instant::now();
    let samples: Vec<Duration> = futures::stream::iter(0..bulk)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let body = pod(i);
                let t = Instant::now();
                pods.create(&PostParams::default(), &body)
                    .await
                    .with_context(|| format!("create pod {}", pod_name(i)))?;
                Ok::<_, anyhow::Error>(t.elapsed())
            }
        })
        .buffer_unordered(settings.concurrency)
        .try_collect()
        .await?;
    let elapsed = started.elapsed();
    report.push(
        Row::new(
            format!("create, bulk ({} in flight)", settings.concurrency),
            samples,
        )
        .note(format!(
            "{:.0} pods/s ({bulk} in {:.1} s)",
            bulk as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64()
        )),
    );

    let mut samples = Vec::with_capacity(sequential);
    for i in bulk..settings.objects {
        let body = pod(i);
        let t = Instant::now();
        pods.create(&PostParams::default(), &body)
            .await
            .with_context(|| format!("create pod {}", pod_name(i)))?;
        samples.push(t.elapsed());
    }
    report.push(
        Row::new("create (1 in flight)", samples)
            .tag(Tag::Mutating)
            .note(format!("store at {}..{} pods", bulk, settings.objects)),
    );
    Ok(())
}

async fn reads_and_writes(pods: &Api<Pod>, settings: &Settings, report: &mut Report) -> Result<()> {
    let n = settings.objects;
    let mut samples = Vec::with_capacity(settings.iters);
    let mut size = 0;
    for i in 0..settings.iters {
        let name = pod_name(spread(i, n));
        let t = Instant::now();
        let p = pods
            .get(&name)
            .await
            .with_context(|| format!("get pod {name}"))?;
        samples.push(t.elapsed());
        if i == 0 {
            size = serde_json::to_vec(&p)?.len();
        }
    }
    report.push(Row::new("get", samples).note(format!("pod as served: {size} bytes")));

    // PUT: the object read just before (untimed), with a changed label and
    // annotation, conditional on its resourceVersion.
    let mut samples = Vec::with_capacity(settings.iters);
    for i in 0..settings.iters {
        let name = pod_name(spread(i + 1, n));
        let mut p = pods
            .get(&name)
            .await
            .with_context(|| format!("get pod {name}"))?;
        p.metadata
            .labels
            .get_or_insert_default()
            .insert("generation-seen".into(), unique("g"));
        p.metadata
            .annotations
            .get_or_insert_default()
            .insert("bench.keelson.dev/updated".into(), unique("update"));
        let t = Instant::now();
        pods.replace(&name, &PostParams::default(), &p)
            .await
            .with_context(|| format!("update pod {name}"))?;
        samples.push(t.elapsed());
    }
    report.push(
        Row::new("update (PUT, resourceVersion)", samples)
            .tag(Tag::Mutating)
            .note("GET before each PUT, untimed"),
    );

    // Strategic merge patch: an annotation and, through the containers'
    // merge key, one container's image.
    let mut samples = Vec::with_capacity(settings.iters);
    for i in 0..settings.iters {
        let name = pod_name(spread(i + 2, n));
        let patch = json!({
            "metadata": {"annotations": {"bench.keelson.dev/patched": unique("patch")}},
            "spec": {"containers": [{
                "name": "app",
                "image": format!("registry.example.com/shop/web-frontend:1.28.{}", i % 50),
            }]},
        });
        let t = Instant::now();
        pods.patch(&name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .with_context(|| format!("patch pod {name}"))?;
        samples.push(t.elapsed());
    }
    report.push(
        Row::new("patch (strategic merge)", samples)
            .tag(Tag::Mutating)
            .note("annotation + containers[name=app].image"),
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Lists

async fn lists(
    client: &kube::Client,
    pods: &Api<Pod>,
    settings: &Settings,
    report: &mut Report,
) -> Result<()> {
    let n = settings.objects;
    // Typed, as a controller would: the target.
    let mut samples = Vec::new();
    let mut failure = None;
    for _ in 0..settings.list_iters {
        let t = Instant::now();
        match pods.list(&ListParams::default()).await {
            Ok(list) if list.items.len() == n => samples.push(t.elapsed()),
            Ok(list) => {
                failure = Some(anyhow::anyhow!(
                    "listed {} pods, expected {n}",
                    list.items.len()
                ));
                break;
            }
            Err(e) => {
                failure = Some(anyhow::Error::new(e).context(format!("list pods in {NAMESPACE}")));
                break;
            }
        }
    }
    let op = format!("list all {n} (kube typed)");
    report.push(match failure {
        Some(e) => Row::failed(op, &e).tag(Tag::ListAll),
        None => Row::new(op, samples)
            .tag(Tag::ListAll)
            .note("HTTPS + server + client decode into ObjectList<Pod>"),
    });

    // Raw bytes, then the client's typed decode of them, apart.
    let path = format!("/api/v1/namespaces/{NAMESPACE}/pods");
    let mut samples = Vec::new();
    let mut decode = Vec::new();
    let mut failure = None;
    let mut bytes = 0;
    for _ in 0..settings.list_iters {
        let req = http::Request::get(&path).body(Vec::new())?;
        let t = Instant::now();
        match client.request_text(req).await {
            Ok(text) => {
                samples.push(t.elapsed());
                bytes = text.len();
                let t = Instant::now();
                let list: ObjectList<Pod> =
                    serde_json::from_str(&text).context("decode the pod list")?;
                decode.push(t.elapsed());
                if list.items.len() != n {
                    bail!("raw list returned {} pods, expected {n}", list.items.len());
                }
            }
            Err(e) => {
                failure = Some(anyhow::Error::new(e).context(format!("GET {path}")));
                break;
            }
        }
    }
    let op = format!("list all {n} (raw bytes)");
    match failure {
        Some(e) => report.push(Row::failed(op, &e)),
        None => {
            report.push(
                Row::new(op, samples)
                    .note(format!("{:.1} MB response, no decode", bytes as f64 / 1e6)),
            );
            report.push(
                Row::new(format!("  client: decode {n} into ObjectList<Pod>"), decode)
                    .note("serde_json, on the client runtime"),
            );
        }
    }

    // Paged, 500 at a time, as client-go's reflectors list.
    let mut samples = Vec::new();
    let mut failure = None;
    for _ in 0..settings.list_iters {
        let t = Instant::now();
        match list_paged(pods, 500).await {
            Ok(count) if count == n => samples.push(t.elapsed()),
            Ok(count) => {
                failure = Some(anyhow::anyhow!(
                    "paged list returned {count} pods, expected {n}"
                ));
                break;
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let op = format!("list all {n} (limit=500 pages, typed)");
    report.push(match failure {
        Some(e) => Row::failed(op, &e),
        None => Row::new(op, samples).note(format!("{} requests", n.div_ceil(500))),
    });

    let expected = (0..n).filter(|i| i % 100 == 7).count();
    let mut samples = Vec::new();
    let mut failure = None;
    for _ in 0..settings.list_iters.max(20) {
        let t = Instant::now();
        match pods.list(&ListParams::default().labels(ONE_PERCENT)).await {
            Ok(list) if list.items.len() == expected => samples.push(t.elapsed()),
            Ok(list) => {
                failure = Some(anyhow::anyhow!(
                    "selector {ONE_PERCENT} listed {} pods, expected {expected}",
                    list.items.len()
                ));
                break;
            }
            Err(e) => {
                failure = Some(anyhow::Error::new(e).context(format!("list pods {ONE_PERCENT}")));
                break;
            }
        }
    }
    let op = format!("list {ONE_PERCENT} ({expected} of {n}, typed)");
    report.push(match failure {
        Some(e) => Row::failed(op, &e),
        None => Row::new(op, samples),
    });
    Ok(())
}

/// Lists every pod `limit` at a time, following continue tokens; returns
/// how many it got.
async fn list_paged(pods: &Api<Pod>, limit: u32) -> Result<usize> {
    let mut count = 0;
    let mut token: Option<String> = None;
    loop {
        let mut params = ListParams::default().limit(limit);
        if let Some(t) = &token {
            params = params.continue_token(t);
        }
        let page = pods
            .list(&params)
            .await
            .with_context(|| format!("list pods in {NAMESPACE}, limit {limit}"))?;
        count += page.items.len();
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(t) => token = Some(t),
            None => return Ok(count),
        }
    }
}

// ---------------------------------------------------------------------------
// In-process breakdown: where list and write time goes.

fn breakdown(
    server_rt: &Runtime,
    registry: &Arc<Registry>,
    addr: SocketAddr,
    settings: &Settings,
    report: &mut Report,
) -> Result<()> {
    let rt = resources::find("", "v1", "pods").context("pods are a registered resource")?;
    let prefix = Registry::prefix(rt, Some(NAMESPACE));
    let store = registry.store().clone();
    let reps = settings.list_iters;

    // store.list: the backend alone.
    let mut samples = Vec::new();
    let mut stored_bytes = 0;
    let mut failure = None;
    let mut kvs = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        match server_rt.block_on(store.list(&prefix, None, 0)) {
            Ok(res) => {
                samples.push(t.elapsed());
                stored_bytes = res.kvs.iter().map(|kv| kv.value.len()).sum::<usize>();
                kvs = res.kvs;
            }
            Err(e) => {
                failure = Some(anyhow::Error::new(e).context(format!("store.list {prefix}")));
                break;
            }
        }
    }
    let op = "  in-process: store.list (all)";
    match failure {
        Some(e) => report.push(Row::failed(op, &e)),
        None => report.push(Row::new(op, samples).note(format!(
            "{:.1} MB stored, {} B/pod",
            stored_bytes as f64 / 1e6,
            stored_bytes / kvs.len().max(1)
        ))),
    }

    // The same read in 500-key pages (what a paged API list asks of the
    // store); it also provides the objects below when one read is refused.
    let mut samples = Vec::new();
    let mut failure = None;
    for _ in 0..reps {
        let t = Instant::now();
        match server_rt.block_on(store_list_paged(store.as_ref(), &prefix, 500)) {
            Ok(paged) => {
                samples.push(t.elapsed());
                if kvs.is_empty() {
                    kvs = paged;
                }
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let op = "  in-process: store.list (500-key pages)";
    match failure {
        Some(e) => report.push(Row::failed(op, &e)),
        None => report.push(Row::new(op, samples)),
    }

    // Decoding the stored values, as registry.list does for every item.
    if !kvs.is_empty() {
        let mut samples = Vec::new();
        for _ in 0..reps {
            let t = Instant::now();
            for kv in &kvs {
                std::hint::black_box(registry.decode(rt, kv).context("decode a stored pod")?);
            }
            samples.push(t.elapsed());
        }
        report.push(
            Row::new("  in-process: decode stored pods (1 thread)", samples)
                .note("serde_json::Value + resourceVersion"),
        );
    }

    // registry.list: store + decode + selector, without HTTP.
    let opts = ListOptions::default();
    let mut samples = Vec::new();
    let mut failure = None;
    let mut list = serde_json::Value::Null;
    for _ in 0..reps {
        let t = Instant::now();
        match server_rt.block_on(registry.list(rt, Some(NAMESPACE), &opts)) {
            Ok(v) => {
                samples.push(t.elapsed());
                list = v;
            }
            Err(e) => {
                failure = Some(anyhow::anyhow!("registry.list pods: {e}"));
                break;
            }
        }
    }
    let op = "  in-process: registry.list (all)";
    match failure {
        Some(e) => report.push(Row::failed(op, &e)),
        None => report.push(Row::new(op, samples).note("store + decode, no HTTP")),
    }

    // registry.list builds its answer with `json!({.., "items": items})`,
    // which serializes the decoded items into a new Value (a deep copy).
    if let Some(items) = list.get("items").and_then(|v| v.as_array()) {
        let items = items.clone();
        let mut samples = Vec::new();
        for _ in 0..reps {
            let t = Instant::now();
            std::hint::black_box(serde_json::to_value(&items)?);
            samples.push(t.elapsed());
        }
        report.push(
            Row::new("  in-process: to_value(items) deep copy", samples)
                .note("what json!({\"items\": items}) costs"),
        );
    }

    if !list.is_null() {
        let mut samples = Vec::new();
        let mut len = 0;
        for _ in 0..reps {
            let t = Instant::now();
            len = std::hint::black_box(serde_json::to_vec(&list)?).len();
            samples.push(t.elapsed());
        }
        report.push(
            Row::new("  in-process: encode list response JSON", samples)
                .note(format!("{:.1} MB", len as f64 / 1e6)),
        );
    }

    // The whole handler through the router (routing, registry.list, JSON
    // encoding, response body), without TLS, sockets or a client.
    let key_dir = tempfile::tempdir().context("create a temporary directory")?;
    let issuer = std::sync::Arc::new(server::satoken::TokenIssuer::load_or_create(
        key_dir.path(),
        server::satoken::DEFAULT_ISSUER,
    )?);
    let pki = server::pki::Pki::load_or_create(key_dir.path(), &["127.0.0.1".to_string()])?;
    let nodes =
        server::nodeproxy::NodeClient::new(&pki.node_client.cert_pem, &pki.node_client.key_pem)
            .map_err(anyhow::Error::msg)?;
    let app = server::http::router(
        registry.clone(),
        addr,
        issuer,
        nodes,
        server::authz::Authorizer::new(),
        None,
        std::sync::Arc::new(server::limits::Limiter::new(
            server::limits::RequestLimits::default(),
            std::sync::Arc::new(server::metrics::Metrics::new()),
        )),
    );
    let uri = format!("/api/v1/namespaces/{NAMESPACE}/pods");
    let mut samples = Vec::new();
    let mut failure = None;
    for _ in 0..reps {
        let req = http::Request::get(&uri).body(axum::body::Body::empty())?;
        let t = Instant::now();
        let res = server_rt.block_on(async {
            let resp = app.clone().oneshot(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body.len()))
        });
        match res {
            Ok((status, _)) if status.is_success() => samples.push(t.elapsed()),
            Ok((status, _)) => {
                failure = Some(anyhow::anyhow!("GET {uri} through the router: {status}"));
                break;
            }
            Err(e) => {
                failure = Some(e.context(format!("GET {uri} through the router")));
                break;
            }
        }
    }
    let op = "  in-process: router GET list (no TLS)";
    match failure {
        Some(e) => report.push(Row::failed(op, &e)),
        None => report.push(Row::new(op, samples).note("handler + encode + body, no socket")),
    }

    // Per watcher and event, the server decodes the stored value and encodes
    // the event line: the fan-out cost per watcher.
    if let Some(kv) = kvs.first() {
        let mut samples = Vec::new();
        for _ in 0..settings.iters.max(1000) {
            let t = Instant::now();
            let obj = registry.decode(rt, kv).context("decode a stored pod")?;
            let line = serde_json::to_vec(&json!({"type": "MODIFIED", "object": obj}))?;
            std::hint::black_box(line);
            samples.push(t.elapsed());
        }
        report.push(
            Row::new("  in-process: decode + encode 1 watch event", samples)
                .note("server CPU per watcher per event"),
        );
    }

    // A store write alone: the current value written back (compare-and-swap).
    if let Some(kv) = kvs.first() {
        let mut samples = Vec::new();
        let mut expected = server_rt
            .block_on(store.get(&kv.key))
            .context("store.get")?
            .0
            .context("the first pod exists")?
            .mod_revision;
        for _ in 0..settings.iters {
            let t = Instant::now();
            let written = server_rt
                .block_on(store.update(&kv.key, kv.value.clone(), expected))
                .with_context(|| format!("store.update {}", kv.key))?;
            samples.push(t.elapsed());
            expected = written.mod_revision;
        }
        report.push(
            Row::new("  in-process: store.update (1 in flight)", samples)
                .note("commit alone, no API"),
        );
    }

    // The disk: a 4 KiB write and fdatasync in the server's temporary
    // directory's filesystem.
    let dir = tempfile::tempdir().context("create a temporary directory")?;
    let path = dir.path().join("fsync-probe");
    let mut file =
        std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
    let block = vec![0u8; 4096];
    let mut samples = Vec::new();
    for _ in 0..settings.iters {
        let t = Instant::now();
        file.write_all(&block)
            .with_context(|| format!("write {}", path.display()))?;
        file.sync_data()
            .with_context(|| format!("fdatasync {}", path.display()))?;
        samples.push(t.elapsed());
    }
    report.push(
        Row::new("  disk: 4 KiB append + fdatasync", samples)
            .note(format!("{}", std::env::temp_dir().display())),
    );
    Ok(())
}

/// Every key under `prefix`, read `page` keys at a time.
async fn store_list_paged(store: &dyn Store, prefix: &str, page: usize) -> Result<Vec<KeyValue>> {
    let mut out = Vec::new();
    loop {
        let start = out.last().map(|kv: &KeyValue| kv.key.clone());
        let res = store
            .list(prefix, start.as_deref(), page)
            .await
            .with_context(|| format!("store.list {prefix} after {start:?}, limit {page}"))?;
        out.extend(res.kvs);
        if !res.more {
            return Ok(out);
        }
    }
}

// ---------------------------------------------------------------------------
// Watch fan-out

/// What the watchers have seen, shared between them.
#[derive(Default)]
struct Arrivals {
    /// Per resourceVersion: how many watchers have it, and when the last one
    /// got it.
    by_rv: HashMap<i64, (usize, Instant)>,
    total: u64,
    /// Per watcher: events seen and the last resourceVersion.
    seen: Vec<(u64, i64)>,
}

impl Arrivals {
    /// For an error message: how far the watchers have got.
    fn describe(&self, rv: i64) -> String {
        let have = self.by_rv.get(&rv).map_or(0, |e| e.0);
        let behind: Vec<String> = self
            .seen
            .iter()
            .enumerate()
            .filter(|(_, (_, last))| *last < rv)
            .map(|(w, (count, last))| format!("watcher {w}: {count} events, last rv {last}"))
            .take(5)
            .collect();
        format!(
            "{have} of {} watchers have rv {rv}; behind: {}",
            self.seen.len(),
            behind.join("; ")
        )
    }
}

/// Opens `n` watches on the namespace's pods from the current
/// resourceVersion, times writes from acknowledgement to the last watcher,
/// then measures events/s in a burst of concurrent writes.
async fn watch_fanout(
    pods: &Api<Pod>,
    n: usize,
    settings: &Settings,
    report: &mut Report,
) -> Result<()> {
    let start_rv = pods
        .list(&ListParams::default().limit(1))
        .await
        .context("list one pod for the resourceVersion")?
        .metadata
        .resource_version
        .unwrap_or_default();
    let arrivals = Arc::new(Mutex::new(Arrivals {
        seen: vec![(0, 0); n],
        ..Arrivals::default()
    }));
    // A resourceVersion is sent here once every watcher has it.
    let (complete_tx, mut complete_rx) = mpsc::unbounded_channel::<(i64, Instant)>();
    let (failed_tx, mut failed_rx) = mpsc::unbounded_channel::<String>();
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(n.max(1));
    let mut tasks = Vec::with_capacity(n);
    let opened = Instant::now();
    for w in 0..n {
        let pods = pods.clone();
        let rv = start_rv.clone();
        let arrivals = arrivals.clone();
        let complete_tx = complete_tx.clone();
        let failed_tx = failed_tx.clone();
        let ready_tx = ready_tx.clone();
        tasks.push(tokio::spawn(async move {
            let params = WatchParams::default().timeout(290);
            let stream = match pods.watch(&params, &rv).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = failed_tx.send(format!("watcher {w}: open: {e}"));
                    return;
                }
            };
            let _ = ready_tx.send(()).await;
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                let pod = match ev {
                    Ok(WatchEvent::Added(p) | WatchEvent::Modified(p)) => p,
                    Ok(WatchEvent::Deleted(_) | WatchEvent::Bookmark(_)) => continue,
                    Ok(WatchEvent::Error(s)) => {
                        let _ = failed_tx.send(format!("watcher {w}: error event: {s:?}"));
                        return;
                    }
                    Err(e) => {
                        let _ = failed_tx.send(format!("watcher {w}: stream: {e}"));
                        return;
                    }
                };
                let now = Instant::now();
                let Ok(rv) = resource_version(&pod) else {
                    continue;
                };
                let mut a = arrivals.lock().expect("arrivals lock");
                a.total += 1;
                a.seen[w].0 += 1;
                a.seen[w].1 = a.seen[w].1.max(rv);
                let entry = a.by_rv.entry(rv).or_insert((0, now));
                entry.0 += 1;
                entry.1 = now;
                if entry.0 == n {
                    let _ = complete_tx.send((rv, now));
                }
            }
            let _ = failed_tx.send(format!("watcher {w}: stream ended"));
        }));
    }
    drop(ready_tx);
    let result = async {
        for _ in 0..n {
            tokio::select! {
                r = ready_rx.recv() => if r.is_none() { bail!("a watcher ended before it was ready") },
                f = failed_rx.recv() => bail!("{}", f.unwrap_or_default()),
            }
        }
        let open_time = opened.elapsed();

        // Latency: one write at a time; wait for every watcher before the next.
        let warmup = 5;
        let mut samples = Vec::with_capacity(settings.iters);
        let mut early = 0;
        let total_before = arrivals.lock().expect("arrivals lock").total;
        let started = Instant::now();
        for seq in 0..warmup + settings.iters {
            let name = pod_name(spread(seq + 3, settings.objects));
            let patch = json!({"metadata": {"annotations": {"bench.keelson.dev/watch-seq": unique("watch")}}});
            let written = pods
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .with_context(|| format!("patch pod {name}"))?;
            let ack = Instant::now();
            let rv = resource_version(&written)?;
            let last = wait_complete(&mut complete_rx, &mut failed_rx, rv)
                .await
                .with_context(|| arrivals.lock().expect("arrivals lock").describe(rv))?;
            if seq >= warmup {
                if last < ack {
                    early += 1;
                }
                samples.push(last.saturating_duration_since(ack));
            }
        }
        let elapsed = started.elapsed();
        let delivered = arrivals.lock().expect("arrivals lock").total - total_before;
        report.push(
            Row::new(format!("watch x{n}: write ack -> all watchers"), samples).note(format!(
                "{:.0} events/s at 1 write in flight; {early} delivered before the ack; {n} watches opened in {:.0} ms",
                delivered as f64 / elapsed.as_secs_f64(),
                ms(open_time)
            )),
        );

        // Throughput: a burst of writes, `concurrency` in flight, until every
        // watcher has every event.
        let burst = settings.watch_burst.min(settings.objects);
        if burst > 0 {
            let total_before = arrivals.lock().expect("arrivals lock").total;
            let started = Instant::now();
            let acks: Vec<(i64, Instant)> = futures::stream::iter(0..burst)
                .map(|seq| {
                    let pods = pods.clone();
                    async move {
                        let name = pod_name(spread(seq + 11, settings.objects));
                        let patch = json!({"metadata": {"annotations": {"bench.keelson.dev/burst-seq": unique("burst")}}});
                        let written = pods
                            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                            .await
                            .with_context(|| format!("patch pod {name}"))?;
                        Ok::<_, anyhow::Error>((resource_version(&written)?, Instant::now()))
                    }
                })
                .buffer_unordered(settings.concurrency)
                .try_collect()
                .await?;
            let writes_done = started.elapsed();
            let mut completed = HashMap::with_capacity(burst);
            while completed.len() < burst {
                let deadline = tokio::time::sleep(WATCH_TIMEOUT);
                tokio::select! {
                    c = complete_rx.recv() => {
                        let (rv, at) = c.context("watchers gone")?;
                        completed.insert(rv, at);
                    }
                    f = failed_rx.recv() => bail!("{}", f.unwrap_or_default()),
                    _ = deadline => bail!("burst: {} of {burst} writes reached every watcher within {WATCH_TIMEOUT:?}", completed.len()),
                }
            }
            let elapsed = started.elapsed();
            let delivered = arrivals.lock().expect("arrivals lock").total - total_before;
            let lags: Vec<Duration> = acks
                .iter()
                .map(|(rv, ack)| completed.get(rv).map_or(Duration::ZERO, |at| at.saturating_duration_since(*ack)))
                .collect();
            report.push(
                Row::new(
                    format!("watch x{n}: burst, ack -> all ({} in flight)", settings.concurrency),
                    lags,
                )
                .note(format!(
                    "{:.0} events/s delivered ({delivered} in {:.2} s; writes took {:.2} s)",
                    delivered as f64 / elapsed.as_secs_f64(),
                    elapsed.as_secs_f64(),
                    writes_done.as_secs_f64()
                )),
            );
        }
        Ok(())
    }
    .await;
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    result
}

/// Waits until every watcher has the event of `rv`; returns when the last
/// one got it.
async fn wait_complete(
    complete: &mut mpsc::UnboundedReceiver<(i64, Instant)>,
    failed: &mut mpsc::UnboundedReceiver<String>,
    rv: i64,
) -> Result<Instant> {
    let deadline = tokio::time::sleep(WATCH_TIMEOUT);
    let mut deadline = std::pin::pin!(deadline);
    loop {
        tokio::select! {
            c = complete.recv() => {
                let (done, at) = c.context("watchers gone")?;
                if done == rv {
                    return Ok(at);
                }
            }
            f = failed.recv() => bail!("{}", f.unwrap_or_default()),
            _ = &mut deadline => bail!("resourceVersion {rv} did not reach every watcher within {WATCH_TIMEOUT:?}"),
        }
    }
}
