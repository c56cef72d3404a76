//! Node IPAM: every Node gets a pod CIDR from the cluster CIDR, as
//! kube-controller-manager's range allocator does with
//! `--allocate-node-cidrs --cluster-cidr --node-cidr-mask-size`.
//!
//! A Node without `spec.podCIDR` gets the first block of the mask size that
//! no other Node holds, written to `spec.podCIDR` and `spec.podCIDRs` (a
//! Node whose agent set its own keeps it, and its block counts as taken). A
//! deleted Node's block is free again. When the cluster CIDR is full the
//! Node gets a `CIDRNotAvailable` Event and is retried.
//!
//! [`Blocks`] is pure; Nodes come from the shared informer; one worker, so
//! two Nodes never get the same block.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use serde_json::json;

use super::runtime::{Controller, Key, SyncError, brief, is_status};
use crate::informers::{Cache, Event, Informers};

/// Each Node's block when no size is given (kube-controller-manager's
/// --node-cidr-mask-size for IPv4).
pub const DEFAULT_MASK_SIZE: u8 = 24;

/// What to allocate from (`--cluster-cidr`, `--node-cidr-mask-size`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub cluster_cidr: Ipv4Net,
    pub mask_size: u8,
}

impl Allocation {
    /// Checked as kube-controller-manager checks its flags: the mask is
    /// at least as long as the cluster CIDR's and at most /30.
    pub fn new(cluster_cidr: Ipv4Net, mask_size: u8) -> Result<Allocation, String> {
        if mask_size < cluster_cidr.prefix_len() || mask_size > 30 {
            return Err(format!(
                "node CIDR mask size /{mask_size} does not fit the cluster CIDR {cluster_cidr} \
                 (it must be between /{} and /30)",
                cluster_cidr.prefix_len()
            ));
        }
        Ok(Allocation {
            cluster_cidr: cluster_cidr.trunc(),
            mask_size,
        })
    }

    /// How many node blocks the cluster CIDR holds.
    fn count(&self) -> u64 {
        1u64 << (self.mask_size - self.cluster_cidr.prefix_len())
    }

    fn block(&self, index: u64) -> Ipv4Net {
        let shift = 32 - u32::from(self.mask_size);
        let base = u32::from(self.cluster_cidr.network());
        let ip = base + ((index as u32) << shift);
        Ipv4Net::new(ip.into(), self.mask_size).expect("a valid prefix length")
    }

    /// The indices of the blocks `cidr` overlaps (none when it is outside
    /// the cluster CIDR).
    fn indices(&self, cidr: Ipv4Net) -> std::ops::Range<u64> {
        let c = self.cluster_cidr;
        if !(c.contains(&cidr.network()) || cidr.contains(&c.network())) {
            return 0..0;
        }
        let shift = 32 - u32::from(self.mask_size);
        let base = u32::from(c.network());
        let first = u32::from(cidr.network()).max(base);
        let last = u32::from(cidr.broadcast()).min(u32::from(c.broadcast()));
        u64::from((first - base) >> shift)..u64::from((last - base) >> shift) + 1
    }
}

/// The blocks in use.
#[derive(Debug, Default)]
pub struct Blocks {
    taken: HashSet<u64>,
}

impl Blocks {
    /// Mark what `cidr` overlaps as taken.
    pub fn take(&mut self, a: &Allocation, cidr: Ipv4Net) {
        self.taken.extend(a.indices(cidr));
    }

    /// The first free block.
    pub fn first_free(&self, a: &Allocation) -> Option<Ipv4Net> {
        (0..a.count())
            .find(|i| !self.taken.contains(i))
            .map(|i| a.block(i))
    }
}

fn pod_cidrs(n: &Node) -> Vec<Ipv4Net> {
    let Some(spec) = &n.spec else {
        return Vec::new();
    };
    spec.pod_cidrs
        .iter()
        .flatten()
        .chain(spec.pod_cidr.iter())
        .filter_map(|c| c.parse::<Ipv4Net>().ok())
        .collect()
}

struct Ctx {
    client: kube::Client,
    recorder: Recorder,
    allocation: Allocation,
    nodes: Cache<Node>,
    /// Blocks given to Nodes whose update the cache may not show yet.
    given: Mutex<HashMap<String, Ipv4Net>>,
}

impl Ctx {
    fn given(&self) -> std::sync::MutexGuard<'_, HashMap<String, Ipv4Net>> {
        self.given.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug)]
struct Error(String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl SyncError for Error {}

/// Wait before trying a full cluster CIDR again.
const FULL_RETRY: Duration = Duration::from_secs(30);

async fn reconcile(key: &Key, ctx: &Ctx) -> Result<Option<Duration>, Error> {
    let Some(node) = ctx.nodes.get(key) else {
        ctx.given().remove(&key.name);
        return Ok(None);
    };
    if !pod_cidrs(&node).is_empty() {
        ctx.given().remove(&key.name);
        return Ok(None);
    }
    let a = &ctx.allocation;
    let mut blocks = Blocks::default();
    for n in ctx.nodes.filter(|_| true) {
        for c in pod_cidrs(&n) {
            blocks.take(a, c);
        }
    }
    let pending = ctx.given().clone();
    for (name, c) in &pending {
        if *name != key.name && ctx.nodes.get(&Key::cluster(name)).is_some() {
            blocks.take(a, *c);
        }
    }
    let cidr = match pending.get(&key.name) {
        Some(c) => *c,
        None => match blocks.first_free(a) {
            Some(c) => c,
            None => {
                let note = format!(
                    "no pod CIDR left in {} (/{} blocks) for node {}",
                    a.cluster_cidr, a.mask_size, key.name
                );
                tracing::warn!("{note}");
                let event = KubeEvent {
                    type_: EventType::Warning,
                    reason: "CIDRNotAvailable".into(),
                    note: Some(format!("Node {} status is now: CIDRNotAvailable", key.name)),
                    action: "AllocateCIDR".into(),
                    secondary: None,
                };
                let _ = ctx
                    .recorder
                    .publish(&event, &kube::Resource::object_ref(node.as_ref(), &()))
                    .await;
                return Ok(Some(FULL_RETRY));
            }
        },
    };
    ctx.given().insert(key.name.clone(), cidr);
    let api: Api<Node> = Api::all(ctx.client.clone());
    let patch = json!({"spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]}});
    match api
        .patch(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            tracing::info!(node = %key.name, %cidr, "pod CIDR allocated");
            Ok(None)
        }
        Err(e) if is_status(&e, 404) => {
            ctx.given().remove(&key.name);
            Ok(None)
        }
        Err(e) => Err(Error(format!(
            "set pod CIDR {cidr} on node {}: {}",
            key.name,
            brief(&e)
        ))),
    }
}

/// Run the allocator until the task is aborted.
pub async fn run(ctx: Arc<super::Context>, informers: Arc<Informers>) {
    let Some(allocation) = ctx.config.node_ipam else {
        return std::future::pending().await;
    };
    let mut c: Controller<Key> = Controller::new("node-ipam");
    let informer = informers.get::<Node>();
    let cache = informer.cache();
    let nodes = c.watch(&informer, move |ev, q| match ev {
        // A freed block: the Nodes still waiting may have it.
        Event::Deleted(n) => {
            q.add(Key::of(n.as_ref()));
            for w in cache.filter(|n| pod_cidrs(n).is_empty()) {
                q.add(Key::of(w.as_ref()));
            }
        }
        ev => {
            if let Some(n) = ev.object()
                && pod_cidrs(n).is_empty()
            {
                q.add(Key::of(n.as_ref()));
            }
        }
    });
    let client = ctx.client_as(super::identity::NODE);
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "node-ipam-controller".into(),
            instance: Some(ctx.config.identity.clone()),
        },
    );
    let ctx = Arc::new(Ctx {
        client,
        recorder,
        allocation,
        nodes,
        given: Mutex::default(),
    });
    c.run(1, move |key: Key| {
        let ctx = ctx.clone();
        async move { reconcile(&key, &ctx).await }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_are_given_in_order_around_taken_ones() {
        let a = Allocation::new(net("10.244.0.0/16"), 24).unwrap();
        let mut b = Blocks::default();
        assert_eq!(b.first_free(&a), Some(net("10.244.0.0/24")));
        b.take(&a, net("10.244.0.0/24"));
        b.take(&a, net("10.244.1.128/25"));
        assert_eq!(b.first_free(&a), Some(net("10.244.2.0/24")));
        // Outside the cluster CIDR: nothing taken.
        b.take(&a, net("10.245.2.0/24"));
        assert_eq!(b.first_free(&a), Some(net("10.244.2.0/24")));
        // A larger block takes all it covers.
        b.take(&a, net("10.244.0.0/22"));
        assert_eq!(b.first_free(&a), Some(net("10.244.4.0/24")));
        // One covering the whole cluster CIDR fills it.
        b.take(&a, net("10.0.0.0/8"));
        assert_eq!(b.first_free(&a), None);
    }

    #[test]
    fn full_and_bad_sizes() {
        let a = Allocation::new(net("10.244.0.0/23"), 24).unwrap();
        let mut b = Blocks::default();
        b.take(&a, net("10.244.0.0/24"));
        assert_eq!(b.first_free(&a), Some(net("10.244.1.0/24")));
        b.take(&a, net("10.244.1.0/24"));
        assert_eq!(b.first_free(&a), None);
        assert!(Allocation::new(net("10.244.0.0/16"), 8).is_err());
        assert!(Allocation::new(net("10.244.0.0/16"), 31).is_err());
        assert_eq!(
            Allocation::new(net("10.244.3.7/16"), 24)
                .unwrap()
                .cluster_cidr,
            net("10.244.0.0/16")
        );
    }
}
