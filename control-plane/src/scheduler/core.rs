//! The scheduler's pure core: what a pod asks for ([`PodInfo`]), what a
//! node offers and already carries ([`NodeInfo`]), the filters that decide
//! whether a pod fits a node, the scores that rank the nodes that fit, and
//! [`schedule`], which picks one node or explains why none fits. No I/O,
//! no clock, no async: everything here is a function of its arguments.
//!
//! Filters, in kube-scheduler's order (a node fails on the first filter
//! that rejects it; the resource filter may give several reasons):
//!
//! | filter | reason in the FailedScheduling message |
//! |---|---|
//! | NodeUnschedulable (`spec.unschedulable`, unless the pod tolerates `node.kubernetes.io/unschedulable:NoSchedule`) | `node(s) were unschedulable` |
//! | NodeName (`spec.nodeName` of the pod) | `node(s) didn't match the requested node name` |
//! | TaintToleration (NoSchedule and NoExecute taints; a node whose Ready condition is not True carries an implicit `node.kubernetes.io/not-ready` (False) or `node.kubernetes.io/unreachable` (Unknown, missing) NoSchedule taint) | `node(s) had untolerated taint {key: value}` |
//! | NodeAffinity (`nodeSelector` and required node affinity) | `node(s) didn't match Pod's node affinity/selector` |
//! | NodePorts (host ports) | `node(s) didn't have free ports for the requested pod ports` |
//! | NodeResourcesFit (cpu, memory, pod count) | `Insufficient cpu`, `Insufficient memory`, `Too many pods` |
//!
//! Scores (each 0..=100, weighted as kube-scheduler's defaults):
//! least-allocated (1), balanced allocation (1), spreading of the pods of
//! one controller owner (2), preferred node affinity (2), PreferNoSchedule
//! taints (3). Ties are broken by rotating the starting node, so that equal
//! nodes are filled round-robin.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};

use k8s_openapi::api::core::v1::{Container, Node, Pod, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use keelson_rules::affinity::{self, RequiredNodeAffinity, Term};
use keelson_rules::quantity;
pub use keelson_rules::taints::{
    Effect, TAINT_NOT_READY, TAINT_UNREACHABLE, TAINT_UNSCHEDULABLE, Taint, Toleration,
    tolerated_compiled as tolerated,
};

pub const MAX_SCORE: i64 = 100;
/// Requests assumed, for scoring only, for a container that sets none
/// (kube-scheduler's `DefaultMilliCPURequest` / `DefaultMemoryRequest`).
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// Score weights (kube-scheduler's default profile).
pub const WEIGHT_LEAST_ALLOCATED: i64 = 1;
pub const WEIGHT_BALANCED: i64 = 1;
pub const WEIGHT_SPREAD: i64 = 2;
pub const WEIGHT_NODE_AFFINITY: i64 = 2;
pub const WEIGHT_TAINTS: i64 = 3;

// ---------------------------------------------------------------------------
// Resources

/// Amounts of the resources the scheduler accounts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
}

impl Resources {
    fn add(&mut self, o: Resources) {
        self.milli_cpu = self.milli_cpu.saturating_add(o.milli_cpu);
        self.memory = self.memory.saturating_add(o.memory);
    }

    fn sub(&mut self, o: Resources) {
        self.milli_cpu = self.milli_cpu.saturating_sub(o.milli_cpu);
        self.memory = self.memory.saturating_sub(o.memory);
    }

    fn max(self, o: Resources) -> Resources {
        Resources {
            milli_cpu: self.milli_cpu.max(o.milli_cpu),
            memory: self.memory.max(o.memory),
        }
    }
}

fn quantity_of(map: Option<&BTreeMap<String, Quantity>>, name: &str, milli: bool) -> Option<i64> {
    let q = map?.get(name)?;
    let v = if milli {
        quantity::milli_value(&q.0)
    } else {
        quantity::value(&q.0)
    };
    // The API server validates quantities; an unparsable one counts as zero
    // rather than wedging the pod.
    Some(v.unwrap_or(0).max(0))
}

/// Requests of one `resources` block; a resource with a limit and no
/// request requests its limit (as API defaulting does).
fn requests_of(r: Option<&ResourceRequirements>) -> (Option<i64>, Option<i64>) {
    let req = r.and_then(|r| r.requests.as_ref());
    let lim = r.and_then(|r| r.limits.as_ref());
    let cpu = quantity_of(req, "cpu", true).or_else(|| quantity_of(lim, "cpu", true));
    let mem = quantity_of(req, "memory", false).or_else(|| quantity_of(lim, "memory", false));
    (cpu, mem)
}

/// A container's (requests, requests with scoring defaults for unset ones).
fn container_requests(c: &Container) -> (Resources, Resources) {
    let (cpu, mem) = requests_of(c.resources.as_ref());
    (
        Resources {
            milli_cpu: cpu.unwrap_or(0),
            memory: mem.unwrap_or(0),
        },
        Resources {
            milli_cpu: cpu.unwrap_or(DEFAULT_MILLI_CPU_REQUEST),
            memory: mem.unwrap_or(DEFAULT_MEMORY_REQUEST),
        },
    )
}

/// What a pod requests, as kube-scheduler computes it:
/// `max(sum(containers) + sum(sidecars), max over init containers of
/// (init + sidecars started before it)) + overhead`, where sidecars are
/// init containers with `restartPolicy: Always`. Pod-level
/// `spec.resources` requests, when set, replace the container sum.
/// Returns (requests, requests with scoring defaults).
pub fn pod_requests(pod: &Pod) -> (Resources, Resources) {
    let Some(spec) = pod.spec.as_ref() else {
        return (Resources::default(), Resources::default());
    };
    let mut sum = Resources::default();
    let mut sum_nz = Resources::default();
    for c in &spec.containers {
        let (r, nz) = container_requests(c);
        sum.add(r);
        sum_nz.add(nz);
    }
    let mut sidecars = Resources::default();
    let mut sidecars_nz = Resources::default();
    let mut init_max = Resources::default();
    let mut init_max_nz = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let (r, nz) = container_requests(c);
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars.add(r);
            sidecars_nz.add(nz);
            init_max = init_max.max(sidecars);
            init_max_nz = init_max_nz.max(sidecars_nz);
        } else {
            let mut with = sidecars;
            with.add(r);
            let mut with_nz = sidecars_nz;
            with_nz.add(nz);
            init_max = init_max.max(with);
            init_max_nz = init_max_nz.max(with_nz);
        }
    }
    sum.add(sidecars);
    sum_nz.add(sidecars_nz);
    let mut total = sum.max(init_max);
    let mut total_nz = sum_nz.max(init_max_nz);
    let (pod_cpu, pod_mem) = requests_of(spec.resources.as_ref());
    if let Some(v) = pod_cpu {
        total.milli_cpu = v;
        total_nz.milli_cpu = v;
    }
    if let Some(v) = pod_mem {
        total.memory = v;
        total_nz.memory = v;
    }
    let overhead = spec.overhead.as_ref();
    let oh = Resources {
        milli_cpu: quantity_of(overhead, "cpu", true).unwrap_or(0),
        memory: quantity_of(overhead, "memory", false).unwrap_or(0),
    };
    total.add(oh);
    total_nz.add(oh);
    (total, total_nz)
}

// ---------------------------------------------------------------------------
// Host ports

/// A host port a pod claims: (protocol, host IP, port).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub protocol: String,
    /// `0.0.0.0` when unset: every address.
    pub ip: String,
    pub port: i32,
}

impl HostPort {
    pub fn new(protocol: &str, ip: &str, port: i32) -> HostPort {
        HostPort {
            protocol: protocol.into(),
            ip: ip.into(),
            port,
        }
    }

    fn conflicts(&self, o: &HostPort) -> bool {
        self.port == o.port
            && self.protocol == o.protocol
            && (self.ip == o.ip || is_any(&self.ip) || is_any(&o.ip))
    }
}

fn is_any(ip: &str) -> bool {
    ip == "0.0.0.0" || ip == "::"
}

// ---------------------------------------------------------------------------
// Pods and nodes

/// What the scheduler needs of a pod. Built once per pod version.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PodInfo {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub requests: Resources,
    /// Requests with defaults for unset ones; used for scoring only.
    pub non_zero: Resources,
    pub host_ports: Vec<HostPort>,
    /// `spec.nodeName` (empty: none).
    pub node_name: String,
    /// `nodeSelector` and required node affinity.
    pub required: RequiredNodeAffinity,
    pub preferred_terms: Vec<(i64, Term)>,
    pub tolerations: Vec<Toleration>,
    /// Hash of the controller owner's uid (pods of one owner are spread).
    pub owner: Option<u64>,
}

/// A stable 64-bit key for an owner uid.
pub fn owner_key(uid: &str) -> u64 {
    let mut h = DefaultHasher::new();
    uid.hash(&mut h);
    h.finish()
}

impl PodInfo {
    pub fn from_pod(pod: &Pod) -> PodInfo {
        let meta = &pod.metadata;
        let (requests, non_zero) = pod_requests(pod);
        let mut info = PodInfo {
            uid: meta.uid.clone().unwrap_or_default(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            requests,
            non_zero,
            owner: meta
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true))
                .map(|o| owner_key(&o.uid)),
            ..PodInfo::default()
        };
        let Some(spec) = pod.spec.as_ref() else {
            return info;
        };
        let host_network = spec.host_network == Some(true);
        for c in spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
        {
            for p in c.ports.iter().flatten() {
                let port = match p.host_port {
                    Some(hp) if hp > 0 => hp,
                    _ if host_network && p.container_port > 0 => p.container_port,
                    _ => continue,
                };
                let ip = p
                    .host_ip
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .unwrap_or("0.0.0.0");
                let protocol = p
                    .protocol
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .unwrap_or("TCP");
                info.host_ports.push(HostPort::new(protocol, ip, port));
            }
        }
        info.node_name = spec.node_name.clone().unwrap_or_default();
        info.required = RequiredNodeAffinity::from_spec(spec);
        info.preferred_terms = affinity::preferred_terms(spec);
        info.tolerations = spec
            .tolerations
            .iter()
            .flatten()
            .map(Toleration::from_api)
            .collect();
        info
    }
}

/// The node's Ready condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Ready=False.
    NotReady,
    /// Ready=Unknown or no Ready condition.
    Unknown,
}

/// What the scheduler needs of a Node object (its usage lives in [`Usage`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub readiness: Readiness,
    pub allocatable: Resources,
    pub allowed_pods: i64,
}

impl NodeSpec {
    pub fn from_node(node: &Node) -> NodeSpec {
        let spec = node.spec.as_ref();
        let status = node.status.as_ref();
        let alloc = status.and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()));
        let readiness = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .map_or(Readiness::Unknown, |c| match c.status.as_str() {
                "True" => Readiness::Ready,
                "False" => Readiness::NotReady,
                _ => Readiness::Unknown,
            });
        NodeSpec {
            name: node.metadata.name.clone().unwrap_or_default(),
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints: spec
                .and_then(|s| s.taints.as_ref())
                .into_iter()
                .flatten()
                .map(Taint::from_api)
                .collect(),
            unschedulable: spec.and_then(|s| s.unschedulable) == Some(true),
            readiness,
            allocatable: Resources {
                milli_cpu: quantity_of(alloc, "cpu", true).unwrap_or(0),
                memory: quantity_of(alloc, "memory", false).unwrap_or(0),
            },
            allowed_pods: quantity_of(alloc, "pods", false).unwrap_or(0),
        }
    }
}

/// What the pods assigned to a node (bound or assumed) use of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub requested: Resources,
    pub non_zero_requested: Resources,
    pub pods: i64,
    /// A multiset: one entry per claiming container port.
    pub host_ports: Vec<HostPort>,
    /// Pods per controller owner key.
    pub owners: HashMap<u64, u32>,
}

impl Usage {
    pub fn add(&mut self, pod: &PodInfo) {
        self.requested.add(pod.requests);
        self.non_zero_requested.add(pod.non_zero);
        self.pods += 1;
        self.host_ports.extend(pod.host_ports.iter().cloned());
        if let Some(o) = pod.owner {
            *self.owners.entry(o).or_default() += 1;
        }
    }

    pub fn remove(&mut self, pod: &PodInfo) {
        self.requested.sub(pod.requests);
        self.non_zero_requested.sub(pod.non_zero);
        self.pods -= 1;
        for p in &pod.host_ports {
            if let Some(i) = self.host_ports.iter().position(|x| x == p) {
                self.host_ports.swap_remove(i);
            }
        }
        if let Some(o) = pod.owner
            && let Some(n) = self.owners.get_mut(&o)
        {
            *n -= 1;
            if *n == 0 {
                self.owners.remove(&o);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pods == 0
    }
}

/// A node as the scheduler sees it: the Node object and what is on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub spec: NodeSpec,
    pub usage: Usage,
}

impl std::ops::Deref for NodeInfo {
    type Target = NodeSpec;
    fn deref(&self) -> &NodeSpec {
        &self.spec
    }
}

// ---------------------------------------------------------------------------
// Filters

/// Why a node does not fit a pod.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    Unschedulable,
    NodeName,
    UntoleratedTaint { key: String, value: String },
    NodeAffinity,
    HostPorts,
    InsufficientCpu,
    InsufficientMemory,
    TooManyPods,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Unschedulable => f.write_str("node(s) were unschedulable"),
            Reason::NodeName => f.write_str("node(s) didn't match the requested node name"),
            Reason::UntoleratedTaint { key, value } => {
                write!(f, "node(s) had untolerated taint {{{key}: {value}}}")
            }
            Reason::NodeAffinity => {
                f.write_str("node(s) didn't match Pod's node affinity/selector")
            }
            Reason::HostPorts => {
                f.write_str("node(s) didn't have free ports for the requested pod ports")
            }
            Reason::InsufficientCpu => f.write_str("Insufficient cpu"),
            Reason::InsufficientMemory => f.write_str("Insufficient memory"),
            Reason::TooManyPods => f.write_str("Too many pods"),
        }
    }
}

/// NodeUnschedulable.
pub fn filter_unschedulable(pod: &PodInfo, node: &NodeInfo) -> Result<(), Reason> {
    if node.unschedulable
        && !tolerated(
            &pod.tolerations,
            &Taint::new(TAINT_UNSCHEDULABLE, "", Effect::NoSchedule),
        )
    {
        return Err(Reason::Unschedulable);
    }
    Ok(())
}

/// NodeName.
pub fn filter_node_name(pod: &PodInfo, node: &NodeInfo) -> Result<(), Reason> {
    if !pod.node_name.is_empty() && pod.node_name != node.name {
        return Err(Reason::NodeName);
    }
    Ok(())
}

/// TaintToleration, including the implicit taint of a node that is not Ready.
pub fn filter_taints(pod: &PodInfo, node: &NodeInfo) -> Result<(), Reason> {
    for t in &node.taints {
        if matches!(t.effect, Effect::NoSchedule | Effect::NoExecute)
            && !tolerated(&pod.tolerations, t)
        {
            return Err(Reason::UntoleratedTaint {
                key: t.key.clone(),
                value: t.value.clone(),
            });
        }
    }
    let implicit = match node.readiness {
        Readiness::Ready => return Ok(()),
        Readiness::NotReady => TAINT_NOT_READY,
        Readiness::Unknown => TAINT_UNREACHABLE,
    };
    let taint = Taint::new(implicit, "", Effect::NoSchedule);
    if !tolerated(&pod.tolerations, &taint) {
        return Err(Reason::UntoleratedTaint {
            key: taint.key,
            value: taint.value,
        });
    }
    Ok(())
}

/// NodeAffinity: `nodeSelector` and required node affinity.
pub fn filter_node_affinity(pod: &PodInfo, node: &NodeInfo) -> Result<(), Reason> {
    if pod.required.matches(&node.labels, &node.name) {
        Ok(())
    } else {
        Err(Reason::NodeAffinity)
    }
}

/// NodePorts.
pub fn filter_host_ports(pod: &PodInfo, node: &NodeInfo) -> Result<(), Reason> {
    for want in &pod.host_ports {
        if node
            .usage
            .host_ports
            .iter()
            .any(|used| used.conflicts(want))
        {
            return Err(Reason::HostPorts);
        }
    }
    Ok(())
}

/// NodeResourcesFit on cpu, memory and the pod count; every shortfall is a
/// reason of its own, in this order: pods, cpu, memory.
pub fn filter_resources(pod: &PodInfo, node: &NodeInfo, out: &mut Vec<Reason>) {
    let u = &node.usage;
    if u.pods + 1 > node.allowed_pods {
        out.push(Reason::TooManyPods);
    }
    let free_cpu = node
        .allocatable
        .milli_cpu
        .saturating_sub(u.requested.milli_cpu);
    if pod.requests.milli_cpu > 0 && pod.requests.milli_cpu > free_cpu {
        out.push(Reason::InsufficientCpu);
    }
    let free_mem = node.allocatable.memory.saturating_sub(u.requested.memory);
    if pod.requests.memory > 0 && pod.requests.memory > free_mem {
        out.push(Reason::InsufficientMemory);
    }
}

/// Every filter in order; the reasons of the first one that rejects the
/// node go to `out` (empty: the node fits).
pub fn filter(pod: &PodInfo, node: &NodeInfo, out: &mut Vec<Reason>) {
    out.clear();
    let single = [
        filter_unschedulable,
        filter_node_name,
        filter_taints,
        filter_node_affinity,
        filter_host_ports,
    ];
    for f in single {
        if let Err(r) = f(pod, node) {
            out.push(r);
            return;
        }
    }
    filter_resources(pod, node, out);
}

// ---------------------------------------------------------------------------
// Scores

fn least_allocated_one(requested: i64, allocatable: i64) -> i64 {
    if allocatable <= 0 || requested > allocatable {
        return 0;
    }
    (allocatable - requested) * MAX_SCORE / allocatable
}

/// NodeResourcesFit's LeastAllocated strategy on cpu and memory (weight 1
/// each), with the pod's requests (scoring defaults for unset ones) added.
pub fn score_least_allocated(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let r = node.usage.non_zero_requested;
    let a = node.allocatable;
    let cpu = least_allocated_one(
        r.milli_cpu.saturating_add(pod.non_zero.milli_cpu),
        a.milli_cpu,
    );
    let mem = least_allocated_one(r.memory.saturating_add(pod.non_zero.memory), a.memory);
    (cpu + mem) / 2
}

/// NodeResourcesBalancedAllocation: `(1 - stddev(cpu fraction, memory
/// fraction)) * 100`, with the pod's actual requests added.
pub fn score_balanced(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let r = node.usage.requested;
    let a = node.allocatable;
    let frac = |req: i64, alloc: i64| {
        if alloc <= 0 {
            1.0
        } else {
            (req as f64 / alloc as f64).min(1.0)
        }
    };
    let cpu = frac(
        r.milli_cpu.saturating_add(pod.requests.milli_cpu),
        a.milli_cpu,
    );
    let mem = frac(r.memory.saturating_add(pod.requests.memory), a.memory);
    let std = (cpu - mem).abs() / 2.0;
    ((1.0 - std) * MAX_SCORE as f64) as i64
}

/// Pods of the pod's controller owner already on the node (raw; fewer is better).
pub fn spread_count(pod: &PodInfo, node: &NodeInfo) -> i64 {
    pod.owner
        .and_then(|o| node.usage.owners.get(&o))
        .map_or(0, |n| i64::from(*n))
}

/// Sum of the weights of the pod's preferred node affinity terms the node
/// matches (raw; more is better).
pub fn node_affinity_weight(pod: &PodInfo, node: &NodeInfo) -> i64 {
    affinity::preferred_score(&pod.preferred_terms, &node.labels, &node.name)
}

/// PreferNoSchedule taints the pod does not tolerate (raw; fewer is better).
pub fn intolerable_prefer_no_schedule(pod: &PodInfo, node: &NodeInfo) -> i64 {
    node.taints
        .iter()
        .filter(|t| t.effect == Effect::PreferNoSchedule && !tolerated(&pod.tolerations, t))
        .count() as i64
}

/// Scale raw counts to 0..=100 where the smallest raw count is best:
/// `100 * (max - raw) / max`.
pub fn normalize_fewer_is_better(raw: i64, max: i64) -> i64 {
    if max <= 0 {
        MAX_SCORE
    } else {
        MAX_SCORE * (max - raw) / max
    }
}

/// Scale raw values to 0..=100 where the largest is best: `100 * raw / max`.
pub fn normalize_more_is_better(raw: i64, max: i64) -> i64 {
    if max <= 0 { 0 } else { MAX_SCORE * raw / max }
}

// ---------------------------------------------------------------------------
// Scheduling one pod

/// Why a pod fits no node: how many nodes failed for each reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FitError {
    pub nodes: usize,
    pub reasons: BTreeMap<Reason, usize>,
}

impl fmt::Display for FitError {
    /// kube-scheduler's message: `0/3 nodes are available: 1 Insufficient
    /// cpu, 2 node(s) didn't match Pod's node affinity/selector.`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nodes == 0 {
            return f.write_str("no nodes available to schedule pods");
        }
        let mut parts: Vec<String> = self
            .reasons
            .iter()
            .map(|(r, n)| format!("{n} {r}"))
            .collect();
        parts.sort();
        write!(
            f,
            "0/{} nodes are available: {}.",
            self.nodes,
            parts.join(", ")
        )
    }
}

/// Per-node working space for [`schedule`], kept between calls so that
/// scheduling allocates nothing in the steady state.
#[derive(Default)]
pub struct Scratch {
    feasible: Vec<Candidate>,
    reasons: Vec<Reason>,
}

#[derive(Clone, Copy)]
struct Candidate {
    index: usize,
    resources: i64,
    spread: i64,
    affinity: i64,
    taints: i64,
}

/// Pick a node for `pod` among `nodes` (index into `nodes`), or say why
/// none fits. `rotation` chooses among nodes with the best score: the
/// first one at or after `rotation % feasible` wins.
pub fn schedule(
    pod: &PodInfo,
    nodes: &[NodeInfo],
    rotation: usize,
    scratch: &mut Scratch,
) -> Result<usize, FitError> {
    let Scratch { feasible, reasons } = scratch;
    feasible.clear();
    let mut failures: BTreeMap<Reason, usize> = BTreeMap::new();
    let (mut max_spread, mut max_affinity, mut max_taints) = (0, 0, 0);
    for (index, node) in nodes.iter().enumerate() {
        filter(pod, node, reasons);
        if !reasons.is_empty() {
            for r in reasons.drain(..) {
                *failures.entry(r).or_default() += 1;
            }
            continue;
        }
        let c = Candidate {
            index,
            resources: WEIGHT_LEAST_ALLOCATED * score_least_allocated(pod, node)
                + WEIGHT_BALANCED * score_balanced(pod, node),
            spread: spread_count(pod, node),
            affinity: node_affinity_weight(pod, node),
            taints: intolerable_prefer_no_schedule(pod, node),
        };
        max_spread = max_spread.max(c.spread);
        max_affinity = max_affinity.max(c.affinity);
        max_taints = max_taints.max(c.taints);
        feasible.push(c);
    }
    if feasible.is_empty() {
        return Err(FitError {
            nodes: nodes.len(),
            reasons: failures,
        });
    }
    let total = |c: &Candidate| {
        c.resources
            + WEIGHT_SPREAD * normalize_fewer_is_better(c.spread, max_spread)
            + WEIGHT_NODE_AFFINITY * normalize_more_is_better(c.affinity, max_affinity)
            + WEIGHT_TAINTS * normalize_fewer_is_better(c.taints, max_taints)
    };
    let n = feasible.len();
    let start = rotation % n;
    let mut best = feasible[start];
    let mut best_score = total(&best);
    for k in 1..n {
        let c = feasible[(start + k) % n];
        let s = total(&c);
        if s > best_score {
            best = c;
            best_score = s;
        }
    }
    Ok(best.index)
}

#[cfg(test)]
mod tests;
