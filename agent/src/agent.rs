//! The node agent's entry point: [`AgentConfig`] in, a running [`Agent`]
//! out (`keelson agent` and `keelson up` build the config from their flags).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use keelson_informers::Informers;

use crate::health::{NodeHealth, Part, State};
use crate::supervise::supervise;

/// Everything [`start`] needs. `Default` holds every default of `keelson
/// agent` (its flags start from it); `kubeconfig` and `node_name` have none.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Kubeconfig for the API server (unused when `join` is set).
    pub kubeconfig: PathBuf,
    /// Join with a bootstrap token instead: the node's own credentials are
    /// made (or reused) under `root_dir/pki` and renewed while it runs.
    pub join: Option<crate::join::JoinConfig>,
    /// This node's name.
    pub node_name: String,
    /// Agent state: images, per-pod state, container state, certificates.
    pub root_dir: PathBuf,
    /// OCI runtime: runc, crun, youki, or a path to any OCI runtime CLI.
    pub runtime: String,
    /// The operator's CNI configuration dir (the first config file in
    /// lexical order is used); when it holds none, the agent's own.
    pub cni_conf_dir: PathBuf,
    /// CNI plugin dir (/usr/lib/cni and the keelson binary's dir are
    /// searched after it).
    pub cni_bin_dir: PathBuf,
    /// Name of the top cgroup for pods (kubelet's kubepods).
    pub cgroup_root: String,
    /// The node's InternalIP (None: the first non-loopback address).
    pub node_ip: Option<IpAddr>,
    /// Address of the node API (TLS); None: the node IP, port 10250.
    pub node_api_listen: Option<SocketAddr>,
    /// CA bundle whose client certificates the node API accepts (None:
    /// the CA of `kubeconfig`).
    pub client_ca_file: Option<PathBuf>,
    /// The node's pod CIDR (written to spec.podCIDR when set).
    pub pod_cidr: Option<ipnet::Ipv4Net>,
    /// The Service proxy (mode `None`: no proxy). The agent fills in its
    /// node name and IP.
    pub proxy: keelson_proxy::ProxyConfig,
    /// Cluster DNS server for pods with dnsPolicy ClusterFirst (None: the
    /// node's resolv.conf).
    pub cluster_dns: Option<IpAddr>,
    /// Cluster domain.
    pub cluster_domain: String,
    /// Serve cluster DNS here (None: don't).
    pub dns_listen: Option<SocketAddr>,
    /// Runtime dir: pod namespaces and sockets.
    pub run_dir: PathBuf,
    /// Root of the container log files (<ns>_<name>_<uid>/<container>/<n>.log).
    pub pod_log_dir: PathBuf,
    /// Registries reached over plain HTTP (host or host:port; loopback always is).
    pub insecure_registries: Vec<String>,
    /// Image garbage collection by disk usage of the image filesystem (the
    /// kubelet's --image-gc-high-threshold, --image-gc-low-threshold and
    /// --image-minimum-gc-age). A high threshold of 100 disables it.
    pub image_gc: keelson_images::gc::GcPolicy,
    /// How often image garbage collection looks at disk usage (the
    /// kubelet's fixed 5 minutes).
    pub image_gc_period: Duration,
}

/// The image store's directory under the agent's root dir (`keelson
/// images` finds it the same way).
pub fn image_store_dir(root_dir: &Path) -> PathBuf {
    root_dir.join("images")
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            kubeconfig: PathBuf::new(),
            join: None,
            node_name: String::new(),
            root_dir: PathBuf::from("/var/lib/keelson"),
            runtime: "runc".into(),
            cni_conf_dir: PathBuf::from("/etc/cni/net.d"),
            cni_bin_dir: PathBuf::from("/opt/cni/bin"),
            cgroup_root: "kubepods".into(),
            node_ip: None,
            node_api_listen: None,
            client_ca_file: None,
            pod_cidr: None,
            proxy: keelson_proxy::ProxyConfig {
                mode: keelson_proxy::ProxyMode::None,
                metrics_listen: None,
                ..Default::default()
            },
            cluster_dns: None,
            cluster_domain: "cluster.local".into(),
            dns_listen: None,
            run_dir: PathBuf::from("/run/keelson"),
            pod_log_dir: PathBuf::from("/var/log/pods"),
            insecure_registries: Vec::new(),
            image_gc: keelson_images::gc::GcPolicy {
                high_threshold_percent: 85,
                low_threshold_percent: 80,
                minimum_age: Duration::from_secs(120),
            },
            image_gc_period: Duration::from_secs(300),
        }
    }
}

/// Resolves `--runtime` to a binary path: a path as it is; runc and crun
/// through the tool registry (a missing one names its Debian package); any
/// other name in `PATH`.
pub fn resolve_runtime(name: &str) -> anyhow::Result<PathBuf> {
    use keelson_host::tools::{self, Tool, Use};
    if name.contains('/') {
        let p = PathBuf::from(name);
        if !p.is_file() {
            bail!("--runtime {name}: no such file");
        }
        return Ok(p);
    }
    if name == "containerd" {
        bail!("--runtime containerd: the containerd backend is not available in this build");
    }
    let tool = match name {
        "runc" => tools::RUNC,
        "crun" => tools::CRUN,
        other => Tool {
            name: other.to_string().leak(),
            package: "(none: install it by hand)",
            used_by: Use::Product,
            why: "--runtime",
        },
    };
    tool.find().with_context(|| format!("--runtime {name}"))
}

/// The CA (PEM) the node API checks client certificates against:
/// `client_ca_file`, else the cluster CA named by the kubeconfig; None when
/// neither names one.
pub async fn node_api_client_ca(
    client_ca_file: Option<&std::path::Path>,
    kubeconfig: &std::path::Path,
) -> anyhow::Result<Option<String>> {
    if let Some(f) = client_ca_file {
        return std::fs::read_to_string(f)
            .map(Some)
            .with_context(|| format!("read --client-ca-file {}", f.display()));
    }
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("read kubeconfig {}", kubeconfig.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .with_context(|| format!("load kubeconfig {}", kubeconfig.display()))?;
    Ok(cfg.root_cert.map(|certs| {
        use base64::Engine;
        let mut pem = String::new();
        for der in certs {
            let b64 = base64::engine::general_purpose::STANDARD.encode(der);
            pem.push_str("-----BEGIN CERTIFICATE-----\n");
            for line in b64.as_bytes().chunks(64) {
                pem.push_str(&String::from_utf8_lossy(line));
                pem.push('\n');
            }
            pem.push_str("-----END CERTIFICATE-----\n");
        }
        pem
    }))
}

pub async fn client_from(kubeconfig: &std::path::Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("read kubeconfig {}", kubeconfig.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .with_context(|| format!("load kubeconfig {}", kubeconfig.display()))?;
    kube::Client::try_from(cfg).context("build API client")
}

/// Runs the Service proxy under [`supervise`]: restarted with back-off when
/// it stops, its state in `health` (Ready once it has synced, Failed with
/// the error while a sync fails or it is down).
async fn supervised_proxy(
    informers: Informers,
    config: keelson_proxy::ProxyConfig,
    health: NodeHealth,
) {
    use keelson_proxy::ProxyHealth;
    let h = health.clone();
    supervise(
        health,
        Part::ServiceProxy,
        "ServiceProxyFailed",
        move || {
            let (informers, config, health) = (informers.clone(), config.clone(), h.clone());
            async move {
                let (tx, mut rx) = tokio::sync::watch::channel(ProxyHealth::Starting);
                let forward = async {
                    while rx.changed().await.is_ok() {
                        let state = match &*rx.borrow_and_update() {
                            ProxyHealth::Starting => State::Starting,
                            ProxyHealth::Synced { .. } => State::Ready,
                            ProxyHealth::SyncFailing { backend, error } => State::Failed {
                                reason: "ServiceProxySyncFailed".into(),
                                message: format!("{backend}: {error}"),
                            },
                        };
                        health.set(Part::ServiceProxy, state);
                    }
                    std::future::pending::<()>().await
                };
                tokio::select! {
                    r = keelson_proxy::run_proxy_reporting(&informers, config, &tx) => r,
                    () = forward => Ok(()),
                }
            }
        },
    )
    .await;
}

/// Runs cluster DNS under [`supervise`]: Ready once it listens.
async fn supervised_dns(informers: Informers, config: keelson_dns::DnsConfig, health: NodeHealth) {
    let h = health.clone();
    supervise(health, Part::ClusterDns, "ClusterDNSFailed", move || {
        let (informers, config, health) = (informers.clone(), config.clone(), h.clone());
        async move {
            keelson_dns::run_with(&informers, config, |_| {
                health.set(Part::ClusterDns, State::Ready)
            })
            .await?;
            Ok(())
        }
    })
    .await;
}

/// A running agent: its health, and what [`Agent::stop`] stops.
pub struct Agent {
    /// The agent's health (what the Node conditions and /healthz show).
    pub health: NodeHealth,
    /// The node's name.
    pub node_name: String,
    manager: crate::pods::Manager,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Agent {
    /// Stops the agent's tasks; containers keep running in their shims.
    pub fn stop(self) {
        self.manager.shutdown();
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Starts the agent: registers the Node, then runs its parts in the
/// background (pods, node API, network check, Service proxy, cluster DNS).
pub async fn start(args: AgentConfig) -> anyhow::Result<Agent> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime_bin = resolve_runtime(&args.runtime)?;
    if args.node_name.is_empty() {
        bail!("--node-name must not be empty");
    }
    args.image_gc
        .validate()
        .map_err(|e| anyhow::anyhow!("--image-gc-*-threshold: {e}"))?;
    for d in [&args.root_dir, &args.run_dir, &args.pod_log_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
    }
    let (kubeconfig, client) = match &args.join {
        None => (
            args.kubeconfig.clone(),
            client_from(&args.kubeconfig).await?,
        ),
        Some(j) => {
            let kc = crate::join::join(j, &args.node_name, &args.root_dir).await?;
            let client = crate::join::client(&kc, &args.root_dir).await?;
            (kc, client)
        }
    };
    let node_ip = match args.node_ip {
        Some(ip) => ip,
        None => crate::node::first_non_loopback_ip().context("find the node IP (set --node-ip)")?,
    };
    // The node API listens on the node's address, not on every address.
    let node_api_listen = args
        .node_api_listen
        .unwrap_or(SocketAddr::new(node_ip, 10250));
    let proxy = (args.proxy.mode != keelson_proxy::ProxyMode::None).then(|| {
        let mut p = args.proxy.clone();
        p.node_name = args.node_name.clone();
        if let (None, IpAddr::V4(ip)) = (p.node_ip, node_ip) {
            p.node_ip = Some(ip);
        }
        p
    });
    let runtime_version = crate::node::runtime_version(&runtime_bin).await;
    let runtime_name = runtime_bin
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "oci".into());

    let health = NodeHealth::default();
    // One watch per resource type for the whole agent (pods, Nodes,
    // Services, EndpointSlices), shared by every part.
    let informers = Informers::new(client.clone());
    let events = crate::events::Recorder::new(client.clone(), &args.node_name);
    // The pod network: the operator's config dir, then the agent's own.
    let own_cni = crate::network::ready::OwnConfig::under(&args.root_dir);
    let cni = crate::network::Cni {
        conf_dirs: vec![args.cni_conf_dir.clone(), own_cni.conf_dir.clone()],
        bin_dirs: crate::network::default_bin_dirs(&args.cni_bin_dir),
    };
    // Known before the Node is registered, so that its first status says it.
    let cidr = args.pod_cidr;
    if let Some(pod_cidr) = cidr {
        crate::network::egress::masquerade(pod_cidr, args.proxy.nft.cluster_cidr, &events);
    }
    health.set(
        Part::Network,
        crate::network::ready::check(&cni, &own_cni, cidr).await,
    );

    let node_cfg = crate::node::NodeConfig {
        name: args.node_name.clone(),
        node_ip,
        pod_cidr: args.pod_cidr.map(|c| c.to_string()),
        api_port: node_api_listen.port(),
        runtime_version: format!("{runtime_name}://{runtime_version}"),
    };
    let mut clock = crate::node::ConditionClock::default();
    crate::node::register(&client, &node_cfg, &health, &mut clock)
        .await
        .with_context(|| format!("register node {}", args.node_name))?;
    let mut tasks = vec![
        tokio::spawn(crate::node::heartbeat(
            client.clone(),
            node_cfg.clone(),
            health.clone(),
            events.clone(),
            clock,
        )),
        tokio::spawn(crate::node::routes::run(
            informers.clone(),
            args.node_name.clone(),
        )),
        tokio::spawn(crate::network::ready::monitor(
            health.clone(),
            informers.clone(),
            args.node_name.clone(),
            cni.clone(),
            own_cni,
            crate::network::ready::PodCidr {
                flag: cidr,
                cluster: args.proxy.nft.cluster_cidr,
                events: events.clone(),
            },
        )),
    ];

    let env = crate::pods::host::Host::new(crate::pods::host::HostConfig {
        root_dir: args.root_dir.clone(),
        run_dir: args.run_dir.clone(),
        pod_log_dir: args.pod_log_dir.clone(),
        runtime_bin: runtime_bin.clone(),
        runtime_name,
        cgroup_root: args.cgroup_root.clone(),
        cni,
        insecure_registries: args.insecure_registries.clone(),
        node_name: args.node_name.clone(),
        node_ip,
        cluster_dns: args
            .cluster_dns
            .map(|server| crate::pods::spec::ClusterDns {
                server,
                domain: args.cluster_domain.clone(),
            }),
    })
    .context("set up the pod host (images, runtime, cgroups)")?;
    let env = Arc::new(env);
    // A joined node's API serves a certificate from the cluster CA, and
    // renews both of its certificates.
    let mut serving = None;
    if let Some(j) = &args.join {
        for purpose in [
            crate::join::Purpose::Client,
            crate::join::Purpose::Serving(node_ip),
        ] {
            if let crate::join::Purpose::Serving(ip) = purpose {
                serving = Some(
                    crate::join::serving_certificate(
                        &client,
                        &args.node_name,
                        ip,
                        &args.root_dir,
                        j.cert_ttl,
                    )
                    .await?,
                );
            }
            tasks.push(tokio::spawn(crate::join::rotate(
                kubeconfig.clone(),
                args.node_name.clone(),
                args.root_dir.clone(),
                j.cert_ttl,
                purpose,
            )));
        }
    }
    tasks.push(tokio::spawn(crate::imports::watch(
        env.images.clone(),
        crate::imports::import_dir(&args.root_dir),
        events.clone(),
    )));
    let manager =
        crate::pods::Manager::start(&informers, env.clone(), events.clone(), health.clone())
            .await
            .context("start pod manager")?;
    tasks.push(tokio::spawn(crate::image_gc::run(
        crate::image_gc::ImageGc::new(env.images.clone(), manager.store(), args.image_gc),
        args.image_gc_period,
        events.clone(),
    )));

    tasks.push(
        crate::node_api::serve(crate::node_api::NodeApiConfig {
            listen: node_api_listen,
            client_ca_pem: node_api_client_ca(args.client_ca_file.as_deref(), &kubeconfig).await?,
            pki_dir: args.root_dir.join("pki"),
            serving,
            node_name: args.node_name.clone(),
            node_ip,
            pods: manager.store(),
            host: env.clone(),
            health: health.clone(),
            authorizer: Some(Arc::new(crate::node_api::authz::Authorizer::new(
                client.clone(),
                args.node_name.clone(),
            ))),
        })
        .await
        .context("start node API")?,
    );

    if let Some(config) = proxy {
        tasks.push(tokio::spawn(supervised_proxy(
            informers.clone(),
            config,
            health.clone(),
        )));
    }
    if let Some(listen) = args.dns_listen {
        let upstreams = keelson_dns::upstreams_from_resolv_conf(
            std::path::Path::new("/etc/resolv.conf"),
            &[listen.ip()],
        )
        .unwrap_or_default();
        let config = keelson_dns::DnsConfig {
            listen,
            domain: args.cluster_domain.clone(),
            upstreams,
        };
        tasks.push(tokio::spawn(supervised_dns(
            informers.clone(),
            config,
            health.clone(),
        )));
    }

    tracing::info!(node = %args.node_name, %node_ip, api = %node_api_listen,
        proxy_mode = ?args.proxy.mode, "agent running");
    Ok(Agent {
        health,
        node_name: args.node_name.clone(),
        manager,
        tasks,
    })
}
