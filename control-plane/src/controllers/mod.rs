//! Controllers: level-triggered reconcilers that talk to the API through a
//! `kube::Client`, so they run against our server or any upstream one.
//!
//! Every controller has the same shape ([`runtime`]): shared informers
//! ([`crate::informers`]) feed a work queue of object keys; workers call the
//! controller's reconcile function for a key; errors are retried per key
//! with backoff; [`runtime::supervise`] restarts a controller that stops.
//! The scheduler and all controllers of a process share one informer
//! factory, so each resource type is watched once.
//!
//! [`spawn_all`] starts the scheduler and every controller; `keelson server`
//! calls it while it holds the leader Lease ([`leader`]).

use std::sync::Arc;
use std::time::Duration;

use crate::informers::Informers;

pub mod daemonset;
pub mod deployment;
pub mod endpointslice;
pub mod gc;
pub mod job;
pub mod leader;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod replicaset;
pub mod rootca;
pub mod runtime;
pub mod serviceaccount;
pub mod workload_deployplan;
pub mod workload_rsplan;
pub mod workload_util;

/// Settings shared by the controllers.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// A node whose Lease is older than this becomes Ready=Unknown (40 s).
    pub node_monitor_grace_period: Duration,
    /// Toleration seconds given to pods for the not-ready and unreachable
    /// NoExecute taints when they set none (300 s).
    pub default_toleration_seconds: i64,
    /// This process's identity for leader election and events.
    pub identity: String,
    /// Give Nodes pod CIDRs from this ([`nodeipam`]); None: agents bring
    /// their own.
    pub node_ipam: Option<nodeipam::Allocation>,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            node_monitor_grace_period: Duration::from_secs(40),
            default_toleration_seconds: 300,
            identity: format!("keelson-{}", std::process::id()),
            node_ipam: None,
        }
    }
}

/// The scheduler's user (its `system:kube-scheduler` role).
pub const SCHEDULER_USER: &str = "system:kube-scheduler";
/// The controller manager's user: leader election and the shared
/// informers (its `system:kube-controller-manager` role lists and watches
/// everything and writes little else).
pub const CONTROLLER_MANAGER_USER: &str = "system:kube-controller-manager";
/// The namespace of the controllers' service accounts.
pub const CONTROLLER_NAMESPACE: &str = "kube-system";

/// The service accounts the controllers act as, as kube-controller-manager
/// with `--use-service-account-credentials`: each is
/// `system:serviceaccount:kube-system:NAME`, bound to the ClusterRole
/// `system:controller:NAME` (the default policy) and to nothing else.
pub mod identity {
    pub const DEPLOYMENT: &str = "deployment-controller";
    pub const REPLICASET: &str = "replicaset-controller";
    pub const DAEMONSET: &str = "daemon-set-controller";
    pub const JOB: &str = "job-controller";
    pub const ENDPOINTSLICE: &str = "endpointslice-controller";
    /// The Endpoints half of the endpointslice controller.
    pub const ENDPOINT: &str = "endpoint-controller";
    pub const SERVICE_ACCOUNT: &str = "service-account-controller";
    pub const ROOT_CA: &str = "root-ca-cert-publisher";
    pub const GARBAGE_COLLECTOR: &str = "generic-garbage-collector";
    pub const NODE: &str = "node-controller";

    /// Every one of them.
    pub const ALL: &[&str] = &[
        DEPLOYMENT,
        REPLICASET,
        DAEMONSET,
        JOB,
        ENDPOINTSLICE,
        ENDPOINT,
        SERVICE_ACCOUNT,
        ROOT_CA,
        GARBAGE_COLLECTOR,
        NODE,
    ];

    /// The user name of the service account `name` in kube-system.
    pub fn user(name: &str) -> String {
        format!(
            "system:serviceaccount:{}:{name}",
            super::CONTROLLER_NAMESPACE
        )
    }
}

/// What every controller gets.
pub struct Context {
    /// The controller manager's client: leader election and the shared
    /// informers (and every write when `clients` is empty).
    pub client: kube::Client,
    pub config: ControllerConfig,
    /// The cluster CA (PEM) the root CA publisher puts in every namespace.
    pub root_ca_pem: String,
    /// A client per identity, keyed by [`SCHEDULER_USER`] or an
    /// [`identity`] name. Empty: everything acts as `client`.
    pub clients: std::collections::HashMap<String, kube::Client>,
}

impl Context {
    /// The client that acts as `who` ([`SCHEDULER_USER`] or an
    /// [`identity`] name); the manager's client when there is none.
    pub fn client_as(&self, who: &str) -> kube::Client {
        self.clients
            .get(who)
            .cloned()
            .unwrap_or_else(|| self.client.clone())
    }
}

/// Run the scheduler and every controller, over one informer factory,
/// until the returned tasks are aborted (the watches stop with them).
pub fn spawn_all(ctx: Arc<Context>) -> Vec<tokio::task::JoinHandle<()>> {
    let informers = Informers::new(ctx.client.clone());
    macro_rules! supervised {
        ($name:literal, $run:path) => {{
            let (ctx, informers) = (ctx.clone(), informers.clone());
            tokio::spawn(runtime::supervise($name, move || {
                $run(ctx.clone(), informers.clone())
            }))
        }};
    }
    vec![
        supervised!("scheduler", crate::scheduler::run_with),
        supervised!("deployment", deployment::run),
        supervised!("replicaset", replicaset::run),
        supervised!("daemonset", daemonset::run),
        supervised!("job", job::run),
        supervised!("endpointslice", endpointslice::run),
        supervised!("serviceaccount", serviceaccount::run),
        supervised!("root-ca-cert-publisher", rootca::run),
        supervised!("garbage-collector", gc::run),
        supervised!("node-lifecycle", nodelifecycle::run),
        supervised!("node-ipam", nodeipam::run),
    ]
}
