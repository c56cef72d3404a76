//! Controllers: level-triggered reconcilers built on kube-rs's runtime
//! (watchers, reflectors, work queues) that talk to the API through a
//! `kube::Client`, so they run against our server or any upstream one.
//!
//! [`run_all`] starts the scheduler and every controller; `keelson server`
//! calls it while it holds the leader Lease ([`leader`]).

use std::sync::Arc;
use std::time::Duration;

pub mod daemonset;
pub mod deployment;
pub mod endpointslice;
pub mod gc;
pub mod leader;
pub mod nodelifecycle;
pub mod replicaset;
pub mod serviceaccount;
pub mod workload_deployplan;
pub mod workload_queue;
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
}

/// Drive an applier's result stream to its end, logging the failures worth
/// a warning (a vanished object or a reconcile error is handled by the
/// controller's own error policy).
pub(crate) async fn drive<T, E1, E2>(
    results: impl futures::Stream<Item = Result<T, kube::runtime::controller::Error<E1, E2>>>,
    controller: &'static str,
) where
    E1: std::error::Error + 'static,
    E2: std::error::Error + 'static,
{
    use futures::StreamExt;
    use kube::runtime::controller::Error;
    results
        .for_each(|res| {
            match res {
                Ok(_) | Err(Error::ObjectNotFound(_) | Error::ReconcilerFailed(..)) => {}
                Err(e) => tracing::warn!(error = %e, "{controller}"),
            }
            std::future::ready(())
        })
        .await
}

/// Run the scheduler and every controller until the returned tasks are aborted.
pub fn spawn_all(ctx: Arc<Context>) -> Vec<tokio::task::JoinHandle<()>> {
    vec![
        tokio::spawn(crate::scheduler::run(ctx.clone())),
        tokio::spawn(deployment::run(ctx.clone())),
        tokio::spawn(replicaset::run(ctx.clone())),
        tokio::spawn(daemonset::run(ctx.clone())),
        tokio::spawn(endpointslice::run(ctx.clone())),
        tokio::spawn(serviceaccount::run(ctx.clone())),
        tokio::spawn(gc::run(ctx.clone())),
        tokio::spawn(nodelifecycle::run(ctx)),
    ]
}
