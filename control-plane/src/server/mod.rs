//! `keelson server`: the Kubernetes API over HTTPS, with client-certificate
//! and bearer-token authentication, over an embedded or etcd store.

pub mod audit;
pub mod auth;
pub mod authz;
pub mod background;
pub mod discovery;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod nodejoin;
pub mod nodeproxy;
pub mod openapi;
pub mod pki;
pub mod proxy;
pub mod satoken;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::api::registry::{ApiConfig, Registry};
use crate::store::{Store, StoreError, etcd::EtcdStore, sqlite::SqliteStore};

/// Settings of `keelson server`.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Empty: the embedded store under `data_dir`.
    pub etcd_servers: Vec<String>,
    /// TLS towards etcd (`--etcd-cafile`, `--etcd-certfile`, `--etcd-keyfile`).
    pub etcd_tls: Option<EtcdTlsFiles>,
    /// Where audit events go (`--audit-log-path`); None: no audit log.
    pub audit_log_path: Option<PathBuf>,
    /// The audit policy (`--audit-policy-file`); None: every request at
    /// Metadata.
    pub audit_policy_file: Option<PathBuf>,
    pub api: ApiConfig,
    /// Extra names and addresses for the serving certificate.
    pub extra_sans: Vec<String>,
    /// Run the scheduler and controllers (under leader election).
    pub controllers: bool,
    pub controller_config: crate::controllers::ControllerConfig,
    /// The `iss` of service account tokens, and their default audience.
    pub service_account_issuer: String,
    /// The address pods reach this server at, published as the
    /// `kubernetes` Service's endpoint (None: the listen address unless it
    /// is loopback or unspecified).
    pub advertise_address: Option<std::net::IpAddr>,
    /// What a connection and a client address may hold (timeouts, HTTP/2
    /// streams, connections per address).
    pub serving: keelson_host::serve::Limits,
    /// Request timeout, in-flight limits, watches per user.
    pub requests: limits::RequestLimits,
}

impl Default for ServerConfig {
    /// `keelson server`'s defaults: `/var/lib/keelson/server`, 127.0.0.1:6443,
    /// the embedded store, [`ApiConfig::default`], the controllers on.
    fn default() -> Self {
        ServerConfig {
            data_dir: PathBuf::from("/var/lib/keelson/server"),
            listen: SocketAddr::from(([127, 0, 0, 1], 6443)),
            etcd_servers: Vec::new(),
            etcd_tls: None,
            audit_log_path: None,
            audit_policy_file: None,
            api: ApiConfig::default(),
            extra_sans: Vec::new(),
            controllers: true,
            controller_config: crate::controllers::ControllerConfig::default(),
            service_account_issuer: satoken::DEFAULT_ISSUER.to_string(),
            advertise_address: None,
            serving: keelson_host::serve::Limits::default(),
            requests: limits::RequestLimits::default(),
        }
    }
}

/// The files of TLS towards etcd.
#[derive(Clone, Debug, Default)]
pub struct EtcdTlsFiles {
    pub ca_file: PathBuf,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl EtcdTlsFiles {
    fn load(&self) -> Result<crate::store::etcd::EtcdTls, ServerError> {
        let read = |what: &str, p: &std::path::Path| {
            std::fs::read_to_string(p).map_err(|source| ServerError::Io {
                operation: format!("read the etcd {what} {}", p.display()),
                source,
            })
        };
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(ServerError::Tls(
                "--etcd-certfile and --etcd-keyfile go together".into(),
            ));
        }
        Ok(crate::store::etcd::EtcdTls {
            ca_pem: read("CA file", &self.ca_file)?,
            cert_pem: self
                .cert_file
                .as_deref()
                .map(|p| read("certificate", p))
                .transpose()?,
            key_pem: self
                .key_file
                .as_deref()
                .map(|p| read("key", p))
                .transpose()?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("open store: {0}")]
    Store(#[from] StoreError),
    #[error("certificates: {0}")]
    Pki(#[from] pki::PkiError),
    #[error("{operation}: {source}")]
    Io {
        operation: String,
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("TLS client towards node APIs: {0}")]
    NodeClient(String),
}

/// A running server.
pub struct ServerHandle {
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    pub registry: Arc<Registry>,
    shutdown: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    ca: pki::CertPair,
    url: String,
}

impl ServerHandle {
    /// Stop accepting connections and stop background loops.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }

    /// Write a kubeconfig for the node `name`: `system:node:NAME` in
    /// `system:nodes`, with a certificate from the cluster CA, so that an
    /// agent beside this server acts as its node, not as the admin.
    pub fn write_node_kubeconfig(
        &self,
        name: &str,
        path: &std::path::Path,
    ) -> Result<(), ServerError> {
        let tls = |e: pki::PkiError| ServerError::Tls(e.to_string());
        let pair = pki::issue(
            &self.ca,
            &format!("system:node:{name}"),
            &["system:nodes"],
            &[],
            false,
        )
        .map_err(tls)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| ServerError::Io {
                operation: format!("create {}", dir.display()),
                source,
            })?;
        }
        std::fs::write(
            path,
            pki::kubeconfig(&self.ca.cert_pem, &self.url, name, &pair),
        )
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        })
        .map_err(|source| ServerError::Io {
            operation: format!("write {}", path.display()),
            source,
        })
    }

    /// Resolves when the server is told to stop (by [`ServerHandle::shutdown`]).
    pub fn stopped(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shutdown.subscribe()
    }
}

/// Open the store the configuration names.
pub async fn open_store(config: &ServerConfig) -> Result<Arc<dyn Store>, ServerError> {
    if config.etcd_servers.is_empty() {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::Io {
            operation: format!("create data directory {}", config.data_dir.display()),
            source,
        })?;
        Ok(Arc::new(SqliteStore::open(
            &config.data_dir.join("state.db"),
        )?))
    } else {
        let tls = config
            .etcd_tls
            .as_ref()
            .map(EtcdTlsFiles::load)
            .transpose()?;
        Ok(Arc::new(
            EtcdStore::connect_with(&config.etcd_servers, tls.as_ref()).await?,
        ))
    }
}

/// A kube-rs client for the controllers, with the admin credentials.
/// A client of this server that presents `pair`.
async fn client_with(
    pki: &pki::Pki,
    url: &str,
    pair: &pki::CertPair,
) -> Result<kube::Client, ServerError> {
    let text = pki::kubeconfig(&pki.ca.cert_pem, url, "controller", pair);
    let kc = kube::config::Kubeconfig::from_yaml(&text)
        .map_err(|e| ServerError::Tls(format!("controller kubeconfig: {e}")))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| ServerError::Tls(format!("controller kubeconfig: {e}")))?;
    kube::Client::try_from(cfg).map_err(|e| ServerError::Tls(format!("controller client: {e}")))
}

/// The controllers' context: the controller manager, the scheduler and
/// each controller act as themselves (least privilege, as
/// kube-controller-manager with `--use-service-account-credentials`), each
/// with a client certificate from the cluster CA made at start and held in
/// memory only.
async fn controller_context(
    pki: &pki::Pki,
    url: &str,
    config: &ServerConfig,
) -> Result<crate::controllers::Context, ServerError> {
    use crate::controllers::{CONTROLLER_MANAGER_USER, CONTROLLER_NAMESPACE, SCHEDULER_USER};
    let issue = |user: &str, groups: &[&str]| {
        pki::issue(&pki.ca, user, groups, &[], false).map_err(|e| ServerError::Tls(e.to_string()))
    };
    let manager = issue(CONTROLLER_MANAGER_USER, &[])?;
    let mut clients = std::collections::HashMap::new();
    let scheduler = issue(SCHEDULER_USER, &[])?;
    clients.insert(
        SCHEDULER_USER.to_string(),
        client_with(pki, url, &scheduler).await?,
    );
    let sa_group = format!("system:serviceaccounts:{CONTROLLER_NAMESPACE}");
    for id in crate::controllers::identity::ALL {
        let pair = issue(
            &crate::controllers::identity::user(id),
            &["system:serviceaccounts", &sa_group],
        )?;
        clients.insert(id.to_string(), client_with(pki, url, &pair).await?);
    }
    Ok(crate::controllers::Context {
        client: client_with(pki, url, &manager).await?,
        config: config.controller_config.clone(),
        root_ca_pem: pki.ca.cert_pem.clone(),
        clients,
    })
}

/// Start the server: certificates, store, bootstrap objects, background
/// loops, and the HTTPS listener.
pub async fn start(config: ServerConfig) -> Result<ServerHandle, ServerError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::Io {
        operation: format!("create data directory {}", config.data_dir.display()),
        source,
    })?;
    let store = open_store(&config).await?;
    let registry = Arc::new(Registry::new(store, config.api.clone()));

    let mut sans: Vec<String> = vec![
        "localhost".into(),
        "127.0.0.1".into(),
        "::1".into(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
        registry.allocator().first_ip().to_string(),
    ];
    if !config.listen.ip().is_unspecified() {
        sans.push(config.listen.ip().to_string());
    }
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim().to_lowercase();
        if crate::api::validation::is_dns1123_subdomain(&h) {
            sans.push(h);
        }
    }
    sans.extend(config.extra_sans.iter().cloned());
    sans.dedup();
    let pki = pki::Pki::load_or_create(&config.data_dir, &sans)?;
    let tokens = auth::Tokens::load_or_create(&config.data_dir)?;
    let issuer = Arc::new(satoken::TokenIssuer::load_or_create(
        &pki.dir,
        &config.service_account_issuer,
    )?);

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Io {
            operation: format!("listen on {}", config.listen),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Io {
        operation: "read listen address".into(),
        source,
    })?;
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let url = format!("https://{host}:{}", addr.port());
    let kubeconfig = config.data_dir.join("admin.kubeconfig");
    pki.write_kubeconfig(&kubeconfig, &url, "admin", &pki.admin)?;

    let advertise = config.advertise_address.or_else(|| {
        let ip = addr.ip();
        (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
    });
    background::bootstrap(&registry, addr.port(), advertise).await;
    authz::policy::reconcile(&registry).await;

    let (shutdown, rx) = tokio::sync::watch::channel(false);
    let authorizer = authz::Authorizer::new();
    let mut tasks = authorizer.run(registry.clone(), rx.clone());
    if tokio::time::timeout(std::time::Duration::from_secs(30), authorizer.wait_synced())
        .await
        .is_err()
    {
        tracing::warn!(
            "the authorizer has not read the RBAC policy after 30 s; requests it cannot allow are refused until it has"
        );
    }
    let tls = tls::server_config(&pki).map_err(ServerError::Tls)?;
    let authn = Arc::new(auth::Authenticator::new(
        tokens,
        Some(auth::ServiceAccounts {
            issuer: issuer.clone(),
            registry: registry.clone(),
        }),
    ));
    let nodes = nodeproxy::NodeClient::new(&pki.node_client.cert_pem, &pki.node_client.key_pem)
        .map_err(ServerError::NodeClient)?;
    let auditor = match &config.audit_log_path {
        None => None,
        Some(path) => {
            let policy = match &config.audit_policy_file {
                None => audit::Policy::default(),
                Some(p) => {
                    let text = std::fs::read_to_string(p).map_err(|source| ServerError::Io {
                        operation: format!("read the audit policy {}", p.display()),
                        source,
                    })?;
                    audit::Policy::parse(&text).map_err(|e| ServerError::Io {
                        operation: format!("the audit policy {}", p.display()),
                        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                    })?
                }
            };
            let a = audit::Auditor::open(path, policy)
                .await
                .map_err(|source| ServerError::Io {
                    operation: format!("open the audit log {}", path.display()),
                    source,
                })?;
            Some(Arc::new(a))
        }
    };
    nodejoin::publish_cluster_info(&registry, &pki.ca.cert_pem, &url).await;
    tasks.push(nodejoin::run(
        registry.clone(),
        authorizer.clone(),
        pki.ca.clone(),
        rx.clone(),
    ));
    let metrics = Arc::new(metrics::Metrics::new());
    let limiter = Arc::new(limits::Limiter::new(config.requests, metrics.clone()));
    let app = http::router(
        registry.clone(),
        addr,
        issuer,
        nodes,
        authorizer,
        auditor,
        limiter,
    );
    tasks.push(tokio::spawn(tls::serve(
        listener,
        tls,
        config.serving,
        metrics,
        authn,
        app,
        rx.clone(),
    )));
    tasks.extend(background::spawn(registry.clone(), rx.clone()));
    if config.controllers {
        let ctx = std::sync::Arc::new(controller_context(&pki, &url, &config).await?);
        tasks.push(tokio::spawn(crate::controllers::leader::run_when_leader(
            ctx, rx,
        )));
    }
    tracing::info!(%addr, store = registry.store().backend_name(), kubeconfig = %kubeconfig.display(), "API server listening");
    Ok(ServerHandle {
        addr,
        kubeconfig,
        registry,
        shutdown,
        tasks,
        ca: pki.ca.clone(),
        url,
    })
}
