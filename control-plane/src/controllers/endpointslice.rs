//! The EndpointSlice controller, and the legacy Endpoints object next to it,
//! as upstream's endpointslice and endpoints controllers do them.
//!
//! For every Service with a selector, the pods it selects become endpoints:
//! one per pod and address family, with `ready` / `serving` / `terminating`
//! conditions, the node, a `targetRef` to the pod, and the ports resolved
//! from the Service's `targetPort` (a number, or the name of a container
//! port; a pod that lacks the named port lands in a slice without it).
//! Endpoints with the same ports share slices of at most 100 endpoints,
//! named `<service>-<random>`, labelled `kubernetes.io/service-name` and
//! `endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io`
//! and owned by the Service. A Service with no endpoints keeps one empty
//! placeholder slice. The Endpoints object `<service>` carries the same pods
//! as subsets (`addresses` / `notReadyAddresses`), labelled
//! `endpointslice.kubernetes.io/skip-mirror: "true"`. Services without a
//! selector (and ExternalName ones) are left alone.
//!
//! Plan, then act: [`plan_slices`] and [`plan_endpoints`] are pure; the
//! executor writes only what differs, so a sync with nothing new writes
//! nothing. Pods and Services come from the shared informers' caches;
//! slices and the Endpoints object are read from the API at each sync (they
//! are ours, and a stale cache of our own writes would make duplicates). A
//! pod event queues every Service in its namespace whose selector matches
//! the pod now or matched it before; a change to one of our slices or to a
//! managed Service's Endpoints queues that Service. A deleted Service's
//! Endpoints object and slices are removed by the same work queue, from the
//! Service's last state.
//!
//! Not done (yet): topology zones and hints, trafficDistribution, the
//! 1000-address truncation of Endpoints, and the startup sweep of Endpoints
//! left behind by Services deleted while no controller ran.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort as CorePort, EndpointSubset, Endpoints, ObjectReference, Pod,
    Service, ServicePort,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use keelson_rules::{owners, readiness, selectors};
use kube::api::{Api, DeleteParams, ListParams, PostParams};

use super::runtime::{Controller, Key, SyncError};
use crate::informers::{Cache, Informers};

pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
pub const LABEL_SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

// ---------------------------------------------------------------------------
// Pure: which pods, which endpoints, which slices.

/// The selector of a Service this controller manages endpoints for: `None`
/// for Services without one (or with an empty one, as upstream's storage
/// round trip makes of `{}`) and for ExternalName Services.
pub fn service_selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    spec.selector.as_ref().filter(|s| !s.is_empty())
}

/// Whether a Service's selector selects `pod` (a label set).
pub fn selects(selector: &BTreeMap<String, String>, pod: &Pod) -> bool {
    selectors::set_matches(selector, pod.metadata.labels.as_ref())
}

fn pod_ips(pod: &Pod) -> Vec<String> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let mut ips: Vec<String> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.clone())
        .filter(|ip| !ip.is_empty())
        .collect();
    if ips.is_empty()
        && let Some(ip) = status.pod_ip.as_ref().filter(|ip| !ip.is_empty())
    {
        ips.push(ip.clone());
    }
    ips
}

fn family_of(ip: &str) -> &'static str {
    if ip.contains(':') { "IPv6" } else { "IPv4" }
}

/// The Service's address families (its slices' address types), IPv4 when unset.
pub fn address_types(svc: &Service) -> Vec<String> {
    let fams: Vec<String> = svc
        .spec
        .as_ref()
        .and_then(|s| s.ip_families.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|f| f == "IPv4" || f == "IPv6")
        .collect();
    if fams.is_empty() {
        vec!["IPv4".to_string()]
    } else {
        fams
    }
}

fn headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

fn publish_not_ready(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false)
}

fn service_ports(svc: &Service) -> &[ServicePort] {
    svc.spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default()
}

/// The pod port a Service port sends to (upstream's `podutil.FindPort`): a
/// numeric `targetPort` as is; a named one looked up among the pod's
/// container ports (and restartable init containers') of the same protocol.
pub fn find_port(pod: &Pod, port: &ServicePort) -> Option<i32> {
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(0)) => Some(port.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            let proto = port.protocol.as_deref().unwrap_or("TCP");
            let spec = pod.spec.as_ref()?;
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            spec.containers
                .iter()
                .chain(sidecars)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == proto
                })
                .map(|p| p.container_port)
        }
    }
}

fn hostname_for(svc: &Service, pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let hostname = spec.hostname.as_ref().filter(|h| !h.is_empty())?;
    (spec.subdomain.as_deref() == svc.metadata.name.as_deref()
        && pod.metadata.namespace == svc.metadata.namespace)
        .then(|| hostname.clone())
}

fn pod_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

fn pod_name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or_default()
}

/// Sortable identity of a list of slice ports (they have no `Ord` of their own).
type PortsKey = Vec<(String, i32, String, Option<String>)>;

fn ports_key(ports: &[EndpointPort]) -> PortsKey {
    ports
        .iter()
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.port.unwrap_or_default(),
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                p.app_protocol.clone(),
            )
        })
        .collect()
}

/// Endpoints of one address type and one port set, keyed by pod name.
#[derive(Debug, Default)]
struct Group {
    ports: Vec<EndpointPort>,
    endpoints: BTreeMap<String, Endpoint>,
}

/// What the Service's slices should hold, grouped by (address type, ports).
fn desired_groups(svc: &Service, pods: &[&Pod]) -> BTreeMap<(String, PortsKey), Group> {
    let types = address_types(svc);
    let publish = publish_not_ready(svc);
    let mut groups: BTreeMap<(String, PortsKey), Group> = BTreeMap::new();
    for pod in pods {
        if readiness::is_pod_terminal(pod) {
            continue;
        }
        let ips = pod_ips(pod);
        if ips.is_empty() {
            continue;
        }
        let serving = readiness::is_pod_ready(pod);
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let ports: Vec<EndpointPort> = service_ports(svc)
            .iter()
            .filter_map(|sp| {
                Some(EndpointPort {
                    name: Some(sp.name.clone().unwrap_or_default()),
                    port: Some(find_port(pod, sp)?),
                    protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())),
                    app_protocol: sp.app_protocol.clone(),
                })
            })
            .collect();
        let key = ports_key(&ports);
        for ty in &types {
            let addresses: Vec<String> = ips
                .iter()
                .filter(|ip| family_of(ip) == ty)
                .cloned()
                .collect();
            if addresses.is_empty() {
                continue;
            }
            let endpoint = Endpoint {
                addresses,
                conditions: Some(EndpointConditions {
                    ready: Some(publish || (serving && !terminating)),
                    serving: Some(serving),
                    terminating: Some(terminating),
                }),
                hostname: hostname_for(svc, pod),
                node_name: pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .filter(|n| !n.is_empty()),
                target_ref: Some(pod_ref(pod)),
                ..Default::default()
            };
            let group = groups.entry((ty.clone(), key.clone())).or_default();
            group.ports = ports.clone();
            group.endpoints.insert(pod_name(pod).to_string(), endpoint);
        }
    }
    groups
}

/// Labels every slice of `svc` carries: the Service's own, plus ours.
pub fn slice_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = svc
        .metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k != LABEL_SERVICE_NAME && k != LABEL_MANAGED_BY && k != LABEL_HEADLESS)
        .collect();
    if headless(svc) {
        labels.insert(LABEL_HEADLESS.into(), String::new());
    }
    labels.insert(
        LABEL_SERVICE_NAME.into(),
        svc.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(LABEL_MANAGED_BY.into(), CONTROLLER_NAME.into());
    labels
}

fn service_owner(svc: &Service) -> OwnerReference {
    owners::controller_owner_ref("v1", "Service", &svc.metadata)
}

fn owned_by(slice: &EndpointSlice, svc: &Service) -> bool {
    let uid = svc.metadata.uid.as_deref().unwrap_or_default();
    owners::controller_ref(&slice.metadata).is_some_and(|o| o.kind == "Service" && o.uid == uid)
}

fn endpoint_key(ep: &Endpoint) -> Option<&str> {
    ep.target_ref.as_ref().and_then(|r| r.name.as_deref())
}

/// One change to the Service's slices.
#[derive(Debug, Clone, PartialEq)]
pub enum SliceAction {
    Create(EndpointSlice),
    /// A full replacement of an existing slice (its resourceVersion kept).
    Update(EndpointSlice),
    Delete(String),
}

/// A slice's content: what the planner fills and compares.
#[derive(Debug, Clone)]
struct Content {
    address_type: String,
    ports: Vec<EndpointPort>,
    endpoints: Vec<Endpoint>,
}

fn render(svc: &Service, base: Option<&EndpointSlice>, c: Content) -> EndpointSlice {
    let mut metadata = match base {
        Some(b) => b.metadata.clone(),
        None => ObjectMeta {
            generate_name: Some(format!(
                "{}-",
                svc.metadata.name.as_deref().unwrap_or_default()
            )),
            namespace: svc.metadata.namespace.clone(),
            ..Default::default()
        },
    };
    metadata.labels = Some(slice_labels(svc));
    metadata.owner_references = Some(vec![service_owner(svc)]);
    EndpointSlice {
        metadata,
        address_type: c.address_type,
        endpoints: Some(c.endpoints),
        ports: Some(c.ports),
    }
}

/// Whether two slices differ in anything this controller sets.
fn slice_differs(old: &EndpointSlice, new: &EndpointSlice) -> bool {
    old.address_type != new.address_type
        || old.metadata.labels != new.metadata.labels
        || old.metadata.owner_references != new.metadata.owner_references
        || old.ports.as_deref().unwrap_or_default() != new.ports.as_deref().unwrap_or_default()
        || old.endpoints.as_deref().unwrap_or_default()
            != new.endpoints.as_deref().unwrap_or_default()
}

/// Plan the Service's slices from the pods it selects and the slices that
/// exist (those labelled as its and ours). Endpoints stay in the slice they
/// are in; new ones fill slices with room before new slices are made; a
/// slice that would be deleted while another is created is reused instead.
/// Creates and updates come before deletes, so readers see no gap.
pub fn plan_slices(
    svc: &Service,
    pods: &[&Pod],
    existing: &[EndpointSlice],
    max_per_slice: usize,
) -> Vec<SliceAction> {
    let max = max_per_slice.max(1);
    let types = address_types(svc);
    let mut groups = desired_groups(svc, pods);

    let mut existing: Vec<&EndpointSlice> = existing.iter().collect();
    existing.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let (owned, foreign): (Vec<&EndpointSlice>, Vec<&EndpointSlice>) = existing
        .into_iter()
        .partition(|s| owned_by(s, svc) && types.contains(&s.address_type));
    let mut deletes: Vec<&EndpointSlice> = foreign;

    // Existing slices that keep a role, with their new content.
    let mut kept: Vec<(&EndpointSlice, Content, (String, PortsKey))> = Vec::new();
    let mut placed: BTreeSet<(String, PortsKey, String)> = BTreeSet::new();
    let total: usize = groups.values().map(|g| g.endpoints.len()).sum();

    if total == 0 {
        // Placeholder: one empty slice of the primary address type.
        let primary = types[0].clone();
        let content = Content {
            address_type: primary.clone(),
            ports: Vec::new(),
            endpoints: Vec::new(),
        };
        let mut actions = Vec::new();
        let mut reused = false;
        for s in owned {
            if !reused && s.address_type == primary {
                reused = true;
                let new = render(svc, Some(s), content.clone());
                if slice_differs(s, &new) {
                    actions.push(SliceAction::Update(new));
                }
            } else {
                deletes.push(s);
            }
        }
        if !reused {
            actions.push(SliceAction::Create(render(svc, None, content)));
        }
        actions.extend(
            deletes
                .into_iter()
                .map(|s| SliceAction::Delete(slice_name(s))),
        );
        return actions;
    }

    for s in owned {
        let key = (
            s.address_type.clone(),
            ports_key(s.ports.as_deref().unwrap_or_default()),
        );
        let Some(group) = groups.get(&key) else {
            deletes.push(s);
            continue;
        };
        let mut eps = Vec::new();
        for ep in s.endpoints.iter().flatten() {
            if eps.len() >= max {
                break;
            }
            let Some(name) = endpoint_key(ep) else {
                continue;
            };
            let id = (key.0.clone(), key.1.clone(), name.to_string());
            if let Some(want) = group.endpoints.get(name)
                && !placed.contains(&id)
            {
                eps.push(want.clone());
                placed.insert(id);
            }
        }
        let content = Content {
            address_type: key.0.clone(),
            ports: group.ports.clone(),
            endpoints: eps,
        };
        kept.push((s, content, key));
    }

    // Fill: endpoints not yet placed go to kept slices with room, then to new ones.
    let mut creates: Vec<Content> = Vec::new();
    for (key, group) in &mut groups {
        let mut rest: Vec<Endpoint> = std::mem::take(&mut group.endpoints)
            .into_iter()
            .filter(|(name, _)| !placed.contains(&(key.0.clone(), key.1.clone(), name.clone())))
            .map(|(_, ep)| ep)
            .collect();
        rest.reverse();
        for (_, content, _) in kept.iter_mut().filter(|(_, _, k)| k == key) {
            while content.endpoints.len() < max {
                let Some(ep) = rest.pop() else { break };
                content.endpoints.push(ep);
            }
        }
        while !rest.is_empty() {
            let mut chunk = Vec::new();
            while chunk.len() < max {
                let Some(ep) = rest.pop() else { break };
                chunk.push(ep);
            }
            creates.push(Content {
                address_type: key.0.clone(),
                ports: group.ports.clone(),
                endpoints: chunk,
            });
        }
    }

    let mut actions = Vec::new();
    for (s, content, _) in kept {
        if content.endpoints.is_empty() {
            deletes.push(s);
            continue;
        }
        let new = render(svc, Some(s), content);
        if slice_differs(s, &new) {
            actions.push(SliceAction::Update(new));
        }
    }
    // Reuse slices about to be deleted for content about to be created
    // (the address type of a slice cannot change).
    for content in creates {
        let reuse = deletes
            .iter()
            .position(|s| s.address_type == content.address_type);
        match reuse {
            Some(i) => {
                let s = deletes.remove(i);
                actions.push(SliceAction::Update(render(svc, Some(s), content)));
            }
            None => actions.push(SliceAction::Create(render(svc, None, content))),
        }
    }
    actions.extend(
        deletes
            .into_iter()
            .map(|s| SliceAction::Delete(slice_name(s))),
    );
    actions
}

fn slice_name(s: &EndpointSlice) -> String {
    s.metadata.name.clone().unwrap_or_default()
}

/// Labels of the Endpoints object of `svc`.
pub fn endpoints_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    labels.insert(LABEL_SKIP_MIRROR.into(), "true".into());
    if headless(svc) {
        labels.insert(LABEL_HEADLESS.into(), String::new());
    } else {
        labels.remove(LABEL_HEADLESS);
    }
    labels
}

type CorePortKey = Vec<(String, i32, String, Option<String>)>;

fn core_port_key(p: &CorePort) -> (String, i32, String, Option<String>) {
    (
        p.name.clone().unwrap_or_default(),
        p.port,
        p.protocol.clone().unwrap_or_else(|| "TCP".into()),
        p.app_protocol.clone(),
    )
}

/// The subsets of the Endpoints object of `svc` (upstream's endpoints
/// controller followed by `RepackSubsets` and `SortSubsets`): addresses
/// grouped by identical port sets, ready ones apart from not-ready ones.
/// Terminating pods are left out unless the Service publishes not-ready
/// addresses.
pub fn desired_subsets(svc: &Service, pods: &[&Pod]) -> Vec<EndpointSubset> {
    let publish = publish_not_ready(svc);
    let primary = address_types(svc)[0].clone();
    type Entry = (Vec<CorePort>, Vec<EndpointAddress>, Vec<EndpointAddress>);
    let mut groups: BTreeMap<CorePortKey, Entry> = BTreeMap::new();
    for pod in pods {
        if readiness::is_pod_terminal(pod)
            || (pod.metadata.deletion_timestamp.is_some() && !publish)
        {
            continue;
        }
        let Some(ip) = pod_ips(pod).into_iter().find(|ip| family_of(ip) == primary) else {
            continue;
        };
        let mut ports: Vec<CorePort> = service_ports(svc)
            .iter()
            .filter_map(|sp| {
                Some(CorePort {
                    name: sp.name.clone().filter(|n| !n.is_empty()),
                    port: find_port(pod, sp)?,
                    protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())),
                    app_protocol: sp.app_protocol.clone(),
                })
            })
            .collect();
        if ports.is_empty() && !(service_ports(svc).is_empty() && headless(svc)) {
            continue;
        }
        ports.sort_by_key(core_port_key);
        let address = EndpointAddress {
            ip,
            hostname: hostname_for(svc, pod),
            node_name: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty()),
            target_ref: Some(pod_ref(pod)),
        };
        let key: CorePortKey = ports.iter().map(core_port_key).collect();
        let entry = groups
            .entry(key)
            .or_insert_with(|| (ports, Vec::new(), Vec::new()));
        if publish || readiness::is_pod_ready(pod) {
            entry.1.push(address);
        } else {
            entry.2.push(address);
        }
    }
    let sort = |v: &mut Vec<EndpointAddress>| {
        v.sort_by(|a, b| {
            (&a.ip, a.target_ref.as_ref().and_then(|r| r.name.as_ref()))
                .cmp(&(&b.ip, b.target_ref.as_ref().and_then(|r| r.name.as_ref())))
        })
    };
    groups
        .into_values()
        .map(|(ports, mut ready, mut not_ready)| {
            sort(&mut ready);
            sort(&mut not_ready);
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then_some(ports),
            }
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq)]
pub enum EndpointsAction {
    Create(Endpoints),
    /// A full replacement (resourceVersion kept).
    Update(Endpoints),
}

/// Plan the Endpoints object `<service>`: `None` when it already says it all.
pub fn plan_endpoints(
    svc: &Service,
    pods: &[&Pod],
    existing: Option<&Endpoints>,
) -> Option<EndpointsAction> {
    let subsets = desired_subsets(svc, pods);
    let labels = endpoints_labels(svc);
    match existing {
        None => Some(EndpointsAction::Create(Endpoints {
            metadata: ObjectMeta {
                name: svc.metadata.name.clone(),
                namespace: svc.metadata.namespace.clone(),
                labels: Some(labels),
                ..Default::default()
            },
            subsets: Some(subsets),
        })),
        Some(cur) => {
            let same = cur.metadata.labels.as_ref() == Some(&labels)
                && cur.subsets.as_deref().unwrap_or_default() == subsets.as_slice();
            (!same).then(|| {
                let mut new = cur.clone();
                new.metadata.labels = Some(labels);
                new.subsets = Some(subsets);
                EndpointsAction::Update(new)
            })
        }
    }
}

// ---------------------------------------------------------------------------
// Executor.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: {err}")]
    Api { op: String, err: kube::Error },
}

impl Error {
    fn api(op: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let op = op.into();
        move |err| Error::Api { op, err }
    }
}

impl SyncError for Error {
    fn quiet(&self) -> bool {
        matches!(self, Error::Api { err: kube::Error::Api(s), .. } if s.code == 409)
    }
}

/// A Service is looked at again at least this often.
const RESYNC: Duration = Duration::from_secs(300);

struct Ctx {
    /// Writes EndpointSlices (as endpointslice-controller).
    client: kube::Client,
    /// Writes Endpoints (as endpoint-controller).
    endpoints_client: kube::Client,
    services: Cache<Service>,
    pods: Cache<Pod>,
    /// Services deleted whose Endpoints and slices may remain: their last
    /// state (filled by the Service event handler).
    deleted: Arc<Mutex<HashMap<Key, Arc<Service>>>>,
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

async fn reconcile(key: &Key, ctx: &Ctx) -> Result<Option<Duration>, Error> {
    let Some(svc) = ctx.services.get(key) else {
        let gone = ctx
            .deleted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned();
        if let Some(svc) = gone {
            cleanup(ctx, &svc).await?;
            ctx.deleted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(key);
        }
        return Ok(None);
    };
    let Some(selector) = service_selector(&svc) else {
        return Ok(None);
    };
    if svc.metadata.deletion_timestamp.is_some() {
        return Ok(None);
    }
    let ns = key.namespace.clone();
    let name = key.name.clone();
    let pods = ctx
        .pods
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()) && selects(selector, p));
    let mut pods: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
    pods.sort_by(|a, b| pod_name(a).cmp(pod_name(b)));

    let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let lp = ListParams::default().labels(&format!(
        "{LABEL_SERVICE_NAME}={name},{LABEL_MANAGED_BY}={CONTROLLER_NAME}"
    ));
    let existing = slices
        .list(&lp)
        .await
        .map_err(Error::api(format!(
            "list endpoint slices of service {ns}/{name}"
        )))?
        .items;
    for action in plan_slices(&svc, &pods, &existing, MAX_ENDPOINTS_PER_SLICE) {
        match action {
            SliceAction::Create(s) => {
                let made = slices
                    .create(&PostParams::default(), &s)
                    .await
                    .map_err(Error::api(format!(
                        "create endpoint slice for service {ns}/{name}"
                    )))?;
                tracing::debug!(service = %key, slice = ?made.metadata.name, "created endpoint slice");
            }
            SliceAction::Update(s) => {
                let sname = slice_name(&s);
                slices
                    .replace(&sname, &PostParams::default(), &s)
                    .await
                    .map_err(Error::api(format!("update endpoint slice {ns}/{sname}")))?;
                tracing::debug!(service = %key, slice = %sname, "updated endpoint slice");
            }
            SliceAction::Delete(sname) => {
                match slices.delete(&sname, &DeleteParams::default()).await {
                    Ok(_) => {
                        tracing::debug!(slice = %format!("{ns}/{sname}"), "deleted endpoint slice")
                    }
                    Err(e) if is_not_found(&e) => {}
                    Err(err) => {
                        return Err(Error::Api {
                            op: format!("delete endpoint slice {ns}/{sname}"),
                            err,
                        });
                    }
                }
            }
        }
    }

    let eps: Api<Endpoints> = Api::namespaced(ctx.endpoints_client.clone(), &ns);
    let current = eps
        .get_opt(&name)
        .await
        .map_err(Error::api(format!("get endpoints {ns}/{name}")))?;
    match plan_endpoints(&svc, &pods, current.as_ref()) {
        None => {}
        Some(EndpointsAction::Create(e)) => {
            eps.create(&PostParams::default(), &e)
                .await
                .map_err(Error::api(format!("create endpoints {ns}/{name}")))?;
        }
        Some(EndpointsAction::Update(e)) => {
            eps.replace(&name, &PostParams::default(), &e)
                .await
                .map_err(Error::api(format!("update endpoints {ns}/{name}")))?;
        }
    }
    Ok(Some(RESYNC))
}

/// After a Service is gone: remove its Endpoints object (when it is ours)
/// and its slices (the garbage collector would too, through the owner
/// reference).
async fn cleanup(ctx: &Ctx, svc: &Service) -> Result<(), Error> {
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    if service_selector(svc).is_none() {
        return Ok(());
    }
    let eps: Api<Endpoints> = Api::namespaced(ctx.endpoints_client.clone(), &ns);
    let current = eps.get_opt(&name).await.map_err(Error::api(format!(
        "get endpoints {ns}/{name} of a deleted service"
    )))?;
    let ours = current.is_some_and(|e| {
        e.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_SKIP_MIRROR))
            .map(String::as_str)
            == Some("true")
    });
    if ours {
        match eps.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(err) => {
                return Err(Error::Api {
                    op: format!("delete endpoints {ns}/{name} of a deleted service"),
                    err,
                });
            }
        }
    }
    let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let lp = ListParams::default().labels(&format!(
        "{LABEL_SERVICE_NAME}={name},{LABEL_MANAGED_BY}={CONTROLLER_NAME}"
    ));
    let list = slices.list(&lp).await.map_err(Error::api(format!(
        "list endpoint slices of deleted service {ns}/{name}"
    )))?;
    for s in list.items.iter().filter(|s| owned_by(s, svc)) {
        let sname = slice_name(s);
        match slices.delete(&sname, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(err) => {
                return Err(Error::Api {
                    op: format!("delete endpoint slice {ns}/{sname} of a deleted service"),
                    err,
                });
            }
        }
    }
    Ok(())
}

/// Services in the pod's namespace whose selector matches it.
fn matching(services: &Cache<Service>, pod: &Pod) -> Vec<Key> {
    let ns = pod.metadata.namespace.as_deref();
    services
        .filter(|s| {
            s.metadata.namespace.as_deref() == ns
                && service_selector(s).is_some_and(|sel| selects(sel, pod))
        })
        .iter()
        .map(|s| Key::of(s.as_ref()))
        .collect()
}

/// Run the controller until the task is aborted.
pub async fn run(ctx: Arc<super::Context>, informers: Arc<Informers>) {
    let mut c: Controller<Key> = Controller::new("endpointslice");
    let deleted: Arc<Mutex<HashMap<Key, Arc<Service>>>> = Arc::default();
    // Services: themselves; a deleted one is remembered for its cleanup.
    let services = {
        let deleted = deleted.clone();
        c.watch(&informers.get::<Service>(), move |ev, q| {
            let Some(s) = ev.object() else { return };
            let key = Key::of(s.as_ref());
            let mut gone = deleted.lock().unwrap_or_else(|e| e.into_inner());
            if matches!(ev, crate::informers::Event::Deleted(_)) {
                gone.insert(key.clone(), s.clone());
            } else {
                gone.remove(&key);
            }
            q.add(key);
        })
    };
    // Pods: the Services that select them now, and those that did before
    // (a pod whose labels changed leaves their slices).
    let pods = {
        let services = services.clone();
        c.watch(&informers.get::<Pod>(), move |ev, q| {
            for p in ev.old().into_iter().chain(ev.object()) {
                for k in matching(&services, p) {
                    q.add(k);
                }
            }
        })
    };
    // Our slices: changed or deleted behind our back.
    c.watch(&informers.get::<EndpointSlice>(), |ev, q| {
        let Some(s) = ev.object() else { return };
        let labels = s.metadata.labels.as_ref();
        if labels
            .and_then(|l| l.get(LABEL_MANAGED_BY))
            .map(String::as_str)
            != Some(CONTROLLER_NAME)
        {
            return;
        }
        if let (Some(n), Some(ns)) = (
            labels.and_then(|l| l.get(LABEL_SERVICE_NAME)),
            s.metadata.namespace.as_deref(),
        ) {
            q.add(Key::new(ns, n));
        }
    });
    // Endpoints objects of Services we manage.
    {
        let services = services.clone();
        c.watch(&informers.get::<Endpoints>(), move |ev, q| {
            let Some(e) = ev.object() else { return };
            let key = Key::of(e.as_ref());
            if services
                .get(&key)
                .is_some_and(|s| service_selector(&s).is_some())
            {
                q.add(key);
            }
        });
    }
    let ctx = Arc::new(Ctx {
        client: ctx.client_as(super::identity::ENDPOINTSLICE),
        endpoints_client: ctx.client_as(super::identity::ENDPOINT),
        services,
        pods,
        deleted,
    });
    c.run(4, move |key: Key| {
        let ctx = ctx.clone();
        async move { reconcile(&key, &ctx).await }
    })
    .await;
}

// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn svc(v: Value) -> Service {
        let mut base = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "ns", "uid": "svc-uid"},
            "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.10", "ipFamilies": ["IPv4"],
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
        });
        merge(&mut base, v);
        serde_json::from_value(base).unwrap()
    }

    fn merge(a: &mut Value, b: Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    if v.is_null() {
                        a.remove(&k);
                    } else {
                        merge(a.entry(k).or_insert(Value::Null), v);
                    }
                }
            }
            (a, b) => *a = b,
        }
    }

    /// A running pod `name` with IP `ip`, ready or not, labelled app=web.
    fn pod(name: &str, ip: &str, ready: bool) -> Pod {
        pod_with(name, ip, ready, json!({}))
    }

    fn pod_with(name: &str, ip: &str, ready: bool, extra: Value) -> Pod {
        let mut base = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i",
                     "ports": [{"name": "web", "containerPort": 8080}, {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        });
        merge(&mut base, extra);
        serde_json::from_value(base).unwrap()
    }

    /// Apply actions to a fake set of slices, naming created ones `web-N`.
    fn apply(mut slices: Vec<EndpointSlice>, actions: Vec<SliceAction>) -> Vec<EndpointSlice> {
        let mut n = slices.len();
        for a in actions {
            match a {
                SliceAction::Create(mut s) => {
                    n += 1;
                    s.metadata.name = Some(format!("web-{n:03}"));
                    s.metadata.generate_name = None;
                    slices.push(s);
                }
                SliceAction::Update(s) => {
                    let i = slices
                        .iter()
                        .position(|x| x.metadata.name == s.metadata.name)
                        .unwrap();
                    slices[i] = s;
                }
                SliceAction::Delete(name) => {
                    slices.retain(|x| x.metadata.name.as_deref() != Some(&name))
                }
            }
        }
        slices
    }

    fn converge(
        svc: &Service,
        pods: &[&Pod],
        slices: Vec<EndpointSlice>,
        max: usize,
    ) -> Vec<EndpointSlice> {
        let actions = plan_slices(svc, pods, &slices, max);
        let slices = apply(slices, actions);
        assert_eq!(
            plan_slices(svc, pods, &slices, max),
            vec![],
            "second plan must be empty"
        );
        slices
    }

    /// (address type, ports, endpoints as (pod, ready, serving, terminating)) per slice.
    type Summary = Vec<(
        String,
        Vec<(Option<String>, Option<i32>)>,
        Vec<(String, bool, bool, bool)>,
    )>;

    fn summary(slices: &[EndpointSlice]) -> Summary {
        slices
            .iter()
            .map(|s| {
                (
                    s.address_type.clone(),
                    s.ports
                        .iter()
                        .flatten()
                        .map(|p| (p.name.clone(), p.port))
                        .collect(),
                    s.endpoints
                        .iter()
                        .flatten()
                        .map(|e| {
                            let c = e.conditions.clone().unwrap();
                            (
                                endpoint_key(e).unwrap().to_string(),
                                c.ready.unwrap(),
                                c.serving.unwrap(),
                                c.terminating.unwrap(),
                            )
                        })
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn slices_table() {
        let http = || vec![(Some("http".to_string()), Some(8080))];
        struct Case {
            name: &'static str,
            svc: Service,
            pods: Vec<Pod>,
            want: Summary,
        }
        let e = |n: &str, r: bool, s: bool, t: bool| (n.to_string(), r, s, t);
        let cases = vec![
            Case {
                name: "ready and unready pods share a slice",
                svc: svc(json!({})),
                pods: vec![pod("a", "10.0.0.1", true), pod("b", "10.0.0.2", false)],
                want: vec![(
                    "IPv4".into(),
                    http(),
                    vec![e("a", true, true, false), e("b", false, false, false)],
                )],
            },
            Case {
                name: "terminating pod: not ready, serving as its readiness, terminating",
                svc: svc(json!({})),
                pods: vec![pod_with(
                    "a",
                    "10.0.0.1",
                    true,
                    json!({"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"}}),
                )],
                want: vec![("IPv4".into(), http(), vec![e("a", false, true, true)])],
            },
            Case {
                name: "publishNotReadyAddresses makes everything ready",
                svc: svc(json!({"spec": {"publishNotReadyAddresses": true}})),
                pods: vec![pod("a", "10.0.0.1", false)],
                want: vec![("IPv4".into(), http(), vec![e("a", true, false, false)])],
            },
            Case {
                name: "pods without IP and terminal pods are left out; none left gives a placeholder",
                svc: svc(json!({})),
                pods: vec![
                    pod_with("a", "", true, json!({"status": {"podIPs": null}})),
                    pod_with(
                        "b",
                        "10.0.0.2",
                        true,
                        json!({"status": {"phase": "Succeeded"}}),
                    ),
                ],
                want: vec![("IPv4".into(), vec![], vec![])],
            },
            Case {
                name: "named targetPort: a pod without the name goes to a slice without the port",
                svc: svc(json!({"spec": {"ports": [
                    {"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"},
                    {"name": "dns", "port": 53, "targetPort": "dns", "protocol": "UDP"}]}})),
                pods: vec![
                    pod("a", "10.0.0.1", true),
                    pod_with(
                        "b",
                        "10.0.0.2",
                        true,
                        json!({"spec": {"containers": [{"name": "c", "image": "i",
                        "ports": [{"name": "web", "containerPort": 9090}]}]}}),
                    ),
                ],
                want: vec![
                    (
                        "IPv4".into(),
                        vec![
                            (Some("http".into()), Some(8080)),
                            (Some("dns".into()), Some(53)),
                        ],
                        vec![e("a", true, true, false)],
                    ),
                    (
                        "IPv4".into(),
                        vec![(Some("http".into()), Some(9090))],
                        vec![e("b", true, true, false)],
                    ),
                ],
            },
            Case {
                name: "a named port of another protocol does not match",
                svc: svc(
                    json!({"spec": {"ports": [{"name": "d", "port": 53, "targetPort": "dns", "protocol": "TCP"}]}}),
                ),
                pods: vec![pod("a", "10.0.0.1", true)],
                want: vec![("IPv4".into(), vec![], vec![e("a", true, true, false)])],
            },
            Case {
                name: "dual stack: one slice per family",
                svc: svc(json!({"spec": {"ipFamilies": ["IPv4", "IPv6"]}})),
                pods: vec![pod_with(
                    "a",
                    "10.0.0.1",
                    true,
                    json!({"status": {"podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]}}),
                )],
                want: vec![
                    ("IPv4".into(), http(), vec![e("a", true, true, false)]),
                    ("IPv6".into(), http(), vec![e("a", true, true, false)]),
                ],
            },
        ];
        for c in cases {
            let pods: Vec<&Pod> = c.pods.iter().collect();
            let slices = converge(&c.svc, &pods, Vec::new(), 100);
            let mut got = summary(&slices);
            let mut want = c.want;
            got.sort();
            want.sort();
            assert_eq!(got, want, "case: {}", c.name);
        }
    }

    #[test]
    fn slice_metadata() {
        let s = svc(json!({"metadata": {"labels": {"team": "x"}}, "spec": {"clusterIP": "None"}}));
        let p = pod_with(
            "a",
            "10.0.0.1",
            true,
            json!({"spec": {"hostname": "h", "subdomain": "web"}}),
        );
        let actions = plan_slices(&s, &[&p], &[], 100);
        let [SliceAction::Create(slice)] = actions.as_slice() else {
            panic!("{actions:?}")
        };
        assert_eq!(slice.metadata.generate_name.as_deref(), Some("web-"));
        assert_eq!(slice.metadata.namespace.as_deref(), Some("ns"));
        let labels = slice.metadata.labels.clone().unwrap();
        assert_eq!(labels[LABEL_SERVICE_NAME], "web");
        assert_eq!(labels[LABEL_MANAGED_BY], CONTROLLER_NAME);
        assert_eq!(labels["team"], "x");
        assert_eq!(labels[LABEL_HEADLESS], "");
        let owner = &slice.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("Service", "svc-uid", Some(true))
        );
        let ep = &slice.endpoints.as_ref().unwrap()[0];
        assert_eq!(ep.addresses, vec!["10.0.0.1"]);
        assert_eq!(ep.node_name.as_deref(), Some("n1"));
        assert_eq!(ep.hostname.as_deref(), Some("h"));
        let r = ep.target_ref.as_ref().unwrap();
        assert_eq!(
            (r.kind.as_deref(), r.name.as_deref(), r.uid.as_deref()),
            (Some("Pod"), Some("a"), Some("uid-a"))
        );
        let port = &slice.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.port, port.protocol.as_deref()),
            (Some("http"), Some(8080), Some("TCP"))
        );
    }

    #[test]
    fn no_write_when_nothing_changed_and_minimal_updates() {
        let s = svc(json!({}));
        let pods: Vec<Pod> = (0..5)
            .map(|i| pod(&format!("p{i}"), &format!("10.0.0.{i}"), true))
            .collect();
        let refs: Vec<&Pod> = pods.iter().collect();
        let slices = converge(&s, &refs, Vec::new(), 100);
        assert_eq!(slices.len(), 1);
        // One pod turns unready: one update of that slice, nothing else.
        let mut pods2 = pods.clone();
        pods2[2] = pod("p2", "10.0.0.2", false);
        let refs2: Vec<&Pod> = pods2.iter().collect();
        let actions = plan_slices(&s, &refs2, &slices, 100);
        assert!(
            matches!(actions.as_slice(), [SliceAction::Update(_)]),
            "{actions:?}"
        );
        let slices = apply(slices, actions);
        // The endpoint kept its place in the slice.
        let names: Vec<_> = slices[0]
            .endpoints
            .iter()
            .flatten()
            .map(|e| endpoint_key(e).unwrap().to_string())
            .collect();
        assert_eq!(names, ["p0", "p1", "p2", "p3", "p4"]);
        assert_eq!(plan_slices(&s, &refs2, &slices, 100), vec![]);
    }

    #[test]
    fn slices_hold_at_most_max_and_refill() {
        let s = svc(json!({}));
        let pods: Vec<Pod> = (0..7)
            .map(|i| pod(&format!("p{i}"), &format!("10.0.0.{i}"), true))
            .collect();
        let refs: Vec<&Pod> = pods.iter().collect();
        let slices = converge(&s, &refs, Vec::new(), 3);
        let sizes: Vec<usize> = slices
            .iter()
            .map(|s| s.endpoints.as_ref().unwrap().len())
            .collect();
        assert_eq!(sizes, [3, 3, 1]);
        // Remove two pods from the first slice and add one new: the new one fills the gap
        // in an existing slice, no slice is created.
        let mut refs: Vec<&Pod> = refs
            .into_iter()
            .filter(|p| !["p0", "p1"].contains(&pod_name(p)))
            .collect();
        let extra = pod("p9", "10.0.0.9", true);
        refs.push(&extra);
        let actions = plan_slices(&s, &refs, &slices, 3);
        assert!(
            actions.iter().all(|a| matches!(a, SliceAction::Update(_))),
            "{actions:?}"
        );
        let slices = apply(slices, actions);
        let total: usize = slices
            .iter()
            .map(|s| s.endpoints.as_ref().unwrap().len())
            .sum();
        assert_eq!(total, 6);
        assert!(
            slices
                .iter()
                .all(|s| s.endpoints.as_ref().unwrap().len() <= 3)
        );
        assert_eq!(plan_slices(&s, &refs, &slices, 3), vec![]);
        // Everything gone: a single placeholder remains.
        let slices = converge(&s, &[], slices, 3);
        assert_eq!(summary(&slices), vec![("IPv4".to_string(), vec![], vec![])]);
        // And it is reused when endpoints come back.
        let name = slices[0].metadata.name.clone();
        let slices = converge(&s, &[&extra], slices, 3);
        assert_eq!(slices.len(), 1);
        assert_eq!(slices[0].metadata.name, name);
    }

    #[test]
    fn port_change_reuses_slices_and_foreign_slices_go() {
        let s = svc(json!({}));
        let p = pod("a", "10.0.0.1", true);
        let slices = converge(&s, &[&p], Vec::new(), 100);
        let name = slices[0].metadata.name.clone();
        let s2 = svc(
            json!({"spec": {"ports": [{"name": "http", "port": 80, "targetPort": 9000, "protocol": "TCP"}]}}),
        );
        let actions = plan_slices(&s2, &[&p], &slices, 100);
        assert!(
            matches!(actions.as_slice(), [SliceAction::Update(_)]),
            "{actions:?}"
        );
        let slices = apply(slices, actions);
        assert_eq!(slices[0].metadata.name, name);
        assert_eq!(slices[0].ports.as_ref().unwrap()[0].port, Some(9000));
        // A slice owned by an older Service of the same name is deleted.
        let mut old = slices[0].clone();
        old.metadata.name = Some("web-old".into());
        old.metadata.owner_references.as_mut().unwrap()[0].uid = "older".into();
        let mut with_old = slices.clone();
        with_old.push(old);
        assert_eq!(
            plan_slices(&s2, &[&p], &with_old, 100),
            vec![SliceAction::Delete("web-old".into())]
        );
    }

    #[test]
    fn selector_rules() {
        assert!(service_selector(&svc(json!({"spec": {"selector": null}}))).is_none());
        let mut empty = svc(json!({}));
        empty.spec.as_mut().unwrap().selector = Some(BTreeMap::new());
        assert!(service_selector(&empty).is_none());
        assert!(service_selector(&svc(json!({"spec": {"type": "ExternalName"}}))).is_none());
        let s = svc(json!({}));
        let sel = service_selector(&s).unwrap();
        assert!(selects(sel, &pod("a", "1.1.1.1", true)));
        assert!(!selects(
            sel,
            &pod_with(
                "a",
                "1.1.1.1",
                true,
                json!({"metadata": {"labels": {"app": "db"}}})
            )
        ));
    }

    #[test]
    fn endpoints_object() {
        let s = svc(
            json!({"metadata": {"labels": {"team": "x"}}, "spec": {"ports": [
            {"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"}]}}),
        );
        let a = pod("a", "10.0.0.2", true);
        let b = pod("b", "10.0.0.1", false);
        let c = pod_with(
            "c",
            "10.0.0.3",
            true,
            json!({"spec": {"containers": [{"name": "c", "image": "i",
            "ports": [{"name": "web", "containerPort": 9090}]}]}}),
        );
        let d = pod_with(
            "d",
            "10.0.0.4",
            true,
            json!({"metadata": {"deletionTimestamp": "2024-01-01T00:00:00Z"}}),
        );
        let pods = [&a, &b, &c, &d];
        let Some(EndpointsAction::Create(e)) = plan_endpoints(&s, &pods, None) else {
            panic!()
        };
        assert_eq!(e.metadata.name.as_deref(), Some("web"));
        let labels = e.metadata.labels.clone().unwrap();
        assert_eq!(labels[LABEL_SKIP_MIRROR], "true");
        assert_eq!(labels["team"], "x");
        let got = serde_json::to_value(&e.subsets).unwrap();
        let addr = |ip: &str, n: &str| json!({"ip": ip, "nodeName": "n1", "targetRef": {"kind": "Pod", "namespace": "ns", "name": n, "uid": format!("uid-{n}")}});
        assert_eq!(
            got,
            json!([
                {"addresses": [addr("10.0.0.2", "a")], "notReadyAddresses": [addr("10.0.0.1", "b")],
                 "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]},
                {"addresses": [addr("10.0.0.3", "c")], "ports": [{"name": "http", "port": 9090, "protocol": "TCP"}]},
            ])
        );
        assert_eq!(plan_endpoints(&s, &pods, Some(&e)), None);
        let Some(EndpointsAction::Update(e2)) = plan_endpoints(&s, &[&a], Some(&e)) else {
            panic!()
        };
        assert_eq!(e2.subsets.as_ref().unwrap().len(), 1);
    }
}
