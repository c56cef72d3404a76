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
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            node_monitor_grace_period: Duration::from_secs(40),
            default_toleration_seconds: 300,
            identity: format!("keelson-{}", std::process::id()),
        }
    }
}

/// What every controller gets.
pub struct Context {
    pub client: kube::Client,
    pub config: ControllerConfig,
    /// The cluster CA (PEM) the root CA publisher puts in every namespace.
    pub root_ca_pem: String,
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
    ]
}
