//! Server-side `meta.k8s.io/v1` Table rendering, which `kubectl get` asks for
//! with `Accept: application/json;as=Table;v=v1;g=meta.k8s.io`.
//!
//! Columns and cells follow kube-apiserver's printers
//! (`pkg/printers/internalversion`) as the server runs them: with every
//! column filled in (kubectl hides priority-1 columns unless `-o wide`), cells
//! typed as upstream types them (mostly strings; integer counts where
//! upstream emits `int64`) and each row carrying the object's metadata as a
//! `PartialObjectMetadata`. Kinds without a printer get Name and Age.
//!
//! Pure: objects in, a JSON value out. Time comes in as `now`.

use std::collections::BTreeSet;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Map, Value, json};

/// Render `items` (objects of kind `kind` in API group `group`) as a Table.
/// `now` is injected for the Age column. `list_meta` is the list's metadata
/// (resourceVersion, continue) copied into the Table's metadata.
pub fn render(
    group: &str,
    kind: &str,
    items: &[Value],
    list_meta: Value,
    now: DateTime<Utc>,
) -> Value {
    let printer = printer_for(group, kind);
    let column_definitions: Vec<Value> = printer
        .columns
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": c.ty,
                "format": c.format,
                "description": c.description,
                "priority": c.priority,
            })
        })
        .collect();
    table(column_definitions, items, list_meta, |item| {
        let obj = J(Some(item));
        ((printer.cells)(obj, now), (printer.conditions)(obj))
    })
}

/// A custom resource's column as its definition's `additionalPrinterColumns`
/// entry gives it: `json_path` is a simple JSONPath (`.spec.size`,
/// `.status.conditions[0].type`).
pub struct CustomColumn<'a> {
    pub name: &'a str,
    pub ty: &'a str,
    pub format: &'a str,
    pub description: &'a str,
    pub priority: i32,
    pub json_path: &'a str,
}

/// Render custom resources as kube-apiserver does for a definition with
/// `additionalPrinterColumns`: Name, then those columns (a `date` column
/// shows the time since, as Age does; a missing value is null).
pub fn render_custom(
    columns: &[CustomColumn<'_>],
    items: &[Value],
    list_meta: Value,
    now: DateTime<Utc>,
) -> Value {
    let mut column_definitions = vec![json!({
        "name": NAME.name, "type": NAME.ty, "format": NAME.format,
        "description": NAME.description, "priority": NAME.priority,
    })];
    column_definitions.extend(columns.iter().map(|c| {
        json!({"name": c.name, "type": c.ty, "format": c.format, "description": c.description, "priority": c.priority})
    }));
    table(column_definitions, items, list_meta, |item| {
        let mut cells = vec![name(J(Some(item)))];
        for c in columns {
            let v = simple_json_path(item, c.json_path);
            cells.push(match (c.ty, v) {
                (_, None | Some(Value::Null)) => Value::Null,
                ("date", Some(t)) => since(J(Some(t)), now).into(),
                ("string", Some(Value::String(s))) => s.clone().into(),
                ("string", Some(other)) => other.to_string().into(),
                (_, Some(other)) => other.clone(),
            });
        }
        (cells, None)
    })
}

/// The value at a simple JSONPath: `.a.b`, `.a[2].b`, optionally in braces.
fn simple_json_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let path = path.trim();
    let path = path
        .strip_prefix('{')
        .and_then(|p| p.strip_suffix('}'))
        .unwrap_or(path);
    let mut cur = v;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, indices) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            cur = cur.get(key)?;
        }
        for idx in indices.split('[').filter(|s| !s.is_empty()) {
            let n: usize = idx.strip_suffix(']')?.parse().ok()?;
            cur = cur.get(n)?;
        }
    }
    Some(cur)
}

fn table(
    column_definitions: Vec<Value>,
    items: &[Value],
    list_meta: Value,
    row_of: impl Fn(&Value) -> (Vec<Value>, Option<Value>),
) -> Value {
    let rows: Vec<Value> = items
        .iter()
        .map(|item| {
            let (cells, conditions) = row_of(item);
            let mut row = Map::new();
            row.insert("cells".into(), Value::Array(cells));
            if let Some(conditions) = conditions {
                row.insert("conditions".into(), conditions);
            }
            let metadata = match item.get("metadata") {
                Some(m @ Value::Object(_)) => m.clone(),
                _ => json!({}),
            };
            row.insert(
                "object".into(),
                json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": metadata,
                }),
            );
            Value::Object(row)
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": table_metadata(&list_meta),
        "columnDefinitions": column_definitions,
        "rows": rows,
    })
}

/// The ListMeta fields a Table carries, leaving out empty ones as ListMeta's
/// `omitempty` does.
fn table_metadata(list_meta: &Value) -> Value {
    let mut out = Map::new();
    for key in ["resourceVersion", "continue"] {
        if let Some(s) = list_meta
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            out.insert(key.into(), Value::String(s.to_owned()));
        }
    }
    if let Some(n) = list_meta.get("remainingItemCount").and_then(Value::as_i64) {
        out.insert("remainingItemCount".into(), n.into());
    }
    Value::Object(out)
}

// ---------------------------------------------------------------------------
// Columns and the per-kind printers.

struct Column {
    name: &'static str,
    ty: &'static str,
    format: &'static str,
    priority: u8,
    description: &'static str,
}

const fn col(name: &'static str, ty: &'static str, description: &'static str) -> Column {
    Column {
        name,
        ty,
        format: "",
        priority: 0,
        description,
    }
}

/// A priority-1 column, shown by `kubectl get -o wide`.
const fn wide(name: &'static str, ty: &'static str, description: &'static str) -> Column {
    Column {
        name,
        ty,
        format: "",
        priority: 1,
        description,
    }
}

const NAME_DOC: &str = "Name must be unique within a namespace. Is required when creating \
resources, although some resources may allow a client to request the generation of an \
appropriate name automatically. Name is primarily intended for creation idempotence and \
configuration definition. Cannot be updated. More info: \
https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const CREATED_DOC: &str = "CreationTimestamp is a timestamp representing the server time when \
this object was created. It is not guaranteed to be set in happens-before order across \
separate operations. Clients may not set this value. It is represented in RFC3339 form and \
is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: \
https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";
const CONTAINERS_DOC: &str = "Names of each container in the template.";
const IMAGES_DOC: &str = "Images referenced by each container in the template.";

const NAME: Column = Column {
    name: "Name",
    ty: "string",
    format: "name",
    priority: 0,
    description: NAME_DOC,
};
const AGE: Column = col("Age", "string", CREATED_DOC);

type CellsFn = fn(J<'_>, DateTime<Utc>) -> Vec<Value>;
type ConditionsFn = fn(J<'_>) -> Option<Value>;

struct Printer {
    columns: &'static [Column],
    cells: CellsFn,
    conditions: ConditionsFn,
}

fn no_conditions(_: J<'_>) -> Option<Value> {
    None
}

fn printer_for(group: &str, kind: &str) -> Printer {
    let (columns, cells): (&'static [Column], CellsFn) = match (group, kind) {
        ("", "Pod") => {
            return Printer {
                columns: POD_COLUMNS,
                cells: pod_cells,
                conditions: pod_conditions,
            };
        }
        ("", "Node") => (NODE_COLUMNS, node_cells),
        ("", "Namespace") => (NAMESPACE_COLUMNS, namespace_cells),
        ("", "Service") => (SERVICE_COLUMNS, service_cells),
        ("", "Endpoints") => (ENDPOINTS_COLUMNS, endpoints_cells),
        ("discovery.k8s.io", "EndpointSlice") => (ENDPOINT_SLICE_COLUMNS, endpoint_slice_cells),
        ("", "ConfigMap") => (CONFIG_MAP_COLUMNS, config_map_cells),
        ("", "Secret") => (SECRET_COLUMNS, secret_cells),
        ("", "ServiceAccount") => (SERVICE_ACCOUNT_COLUMNS, service_account_cells),
        ("" | "events.k8s.io", "Event") => (EVENT_COLUMNS, event_cells),
        ("coordination.k8s.io", "Lease") => (LEASE_COLUMNS, lease_cells),
        ("apps", "Deployment") => (DEPLOYMENT_COLUMNS, deployment_cells),
        ("apps", "ReplicaSet") => (REPLICA_SET_COLUMNS, replica_set_cells),
        ("apps", "DaemonSet") => (DAEMON_SET_COLUMNS, daemon_set_cells),
        ("apps", "StatefulSet") => (STATEFUL_SET_COLUMNS, stateful_set_cells),
        ("apps", "ControllerRevision") => (CONTROLLER_REVISION_COLUMNS, controller_revision_cells),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            (CREATED_AT_COLUMNS, created_at_cells)
        }
        _ => (DEFAULT_COLUMNS, default_cells),
    };
    Printer {
        columns,
        cells,
        conditions: no_conditions,
    }
}

static DEFAULT_COLUMNS: &[Column] = &[NAME, AGE];

/// kube-apiserver's default table convertor (types without a printer of
/// their own, such as CustomResourceDefinitions): Name and Created At.
static CREATED_AT_COLUMNS: &[Column] = &[
    NAME,
    Column {
        name: "Created At",
        ty: "date",
        format: "",
        priority: 0,
        description: CREATED_DOC,
    },
];

fn created_at_cells(o: J<'_>, _now: DateTime<Utc>) -> Vec<Value> {
    vec![
        name(o),
        o.at("metadata").at("creationTimestamp").str().into(),
    ]
}

fn default_cells(o: J<'_>, now: DateTime<Utc>) -> Vec<Value> {
    vec![name(o), age(o, now)]
}

fn name(o: J<'_>) -> Value {
    o.at("metadata").at("name").str().into()
}

fn age(o: J<'_>, now: DateTime<Utc>) -> Value {
    since(o.at("metadata").at("creationTimestamp"), now).into()
}

// --- Pod -------------------------------------------------------------------

static POD_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Ready",
        "string",
        "The aggregate readiness state of this pod for accepting traffic.",
    ),
    col(
        "Status",
        "string",
        "The aggregate status of the containers in this pod.",
    ),
    col(
        "Restarts",
        "string",
        "The number of times the containers in this pod have been restarted and when the last \
         container in this pod has restarted.",
    ),
    AGE,
    wide(
        "IP",
        "string",
        "podIP address allocated to the pod. Routable at least within the cluster.",
    ),
    wide(
        "Node",
        "string",
        "NodeName indicates in which node this pod is scheduled.",
    ),
    wide(
        "Nominated Node",
        "string",
        "nominatedNodeName is set only when this pod preempts other pods on the node.",
    ),
    wide(
        "Readiness Gates",
        "string",
        "If specified, all readiness gates will be evaluated for pod readiness.",
    ),
];

/// The kubelet's reason for pods on a node that stopped reporting.
const NODE_UNREACHABLE_POD_REASON: &str = "NodeLost";

/// The Status column: the phase, refined by what the init and app containers
/// report, as `kubectl get pods` shows it.
struct PodSummary {
    ready: i64,
    total: i64,
    reason: String,
    restarts: i64,
    last_restart: Option<DateTime<Utc>>,
}

fn is_restartable_init(spec: J<'_>, container_name: &str) -> bool {
    spec.at("initContainers")
        .items()
        .iter()
        .map(|c| J(Some(c)))
        .find(|c| c.at("name").str() == container_name)
        .is_some_and(|c| c.at("restartPolicy").str() == "Always")
}

fn later(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn has_condition(status: J<'_>, ty: &str) -> bool {
    status
        .at("conditions")
        .items()
        .iter()
        .map(|c| J(Some(c)))
        .any(|c| c.at("type").str() == ty && c.at("status").str() == "True")
}

fn summarize_pod(pod: J<'_>) -> PodSummary {
    let spec = pod.at("spec");
    let status = pod.at("status");
    let init_specs = spec.at("initContainers").items();
    let mut total = spec.at("containers").items().len() as i64;
    total += init_specs
        .iter()
        .filter(|c| J(Some(c)).at("restartPolicy").str() == "Always")
        .count() as i64;
    let mut ready = 0i64;
    let mut restarts = 0i64;
    let mut restartable_init_restarts = 0i64;
    let mut last_restart = None;
    let mut last_restartable_init_restart = None;

    let phase = status.at("phase").str();
    let mut reason = match status.at("reason").str() {
        "" => phase.to_owned(),
        r => r.to_owned(),
    };
    if status
        .at("conditions")
        .items()
        .iter()
        .map(|c| J(Some(c)))
        .any(|c| c.at("type").str() == "PodScheduled" && c.at("reason").str() == "SchedulingGated")
    {
        reason = "SchedulingGated".into();
    }

    let mut initializing = false;
    for (i, c) in status
        .at("initContainerStatuses")
        .items()
        .iter()
        .enumerate()
    {
        let c = J(Some(c));
        let count = c.at("restartCount").int();
        let finished = c.at("lastState").at("terminated").at("finishedAt").time();
        restarts = restarts.saturating_add(count);
        last_restart = later(last_restart, finished);
        let restartable = is_restartable_init(spec, c.at("name").str());
        if restartable {
            restartable_init_restarts = restartable_init_restarts.saturating_add(count);
            last_restartable_init_restart = later(last_restartable_init_restart, finished);
        }
        let terminated = c.at("state").at("terminated");
        let waiting = c.at("state").at("waiting");
        if terminated.is_obj() && terminated.at("exitCode").int() == 0 {
            continue;
        }
        if restartable && c.at("started").bool() {
            if c.at("ready").bool() {
                ready += 1;
            }
            continue;
        }
        reason = if terminated.is_obj() {
            match terminated.at("reason").str() {
                "" => match terminated.at("signal").int() {
                    0 => format!("Init:ExitCode:{}", terminated.at("exitCode").int()),
                    signal => format!("Init:Signal:{signal}"),
                },
                r => format!("Init:{r}"),
            }
        } else if waiting.is_obj() && !matches!(waiting.at("reason").str(), "" | "PodInitializing")
        {
            format!("Init:{}", waiting.at("reason").str())
        } else {
            format!("Init:{i}/{}", init_specs.len())
        };
        initializing = true;
        break;
    }

    if !initializing || has_condition(status, "Initialized") {
        restarts = restartable_init_restarts;
        last_restart = last_restartable_init_restart;
        let mut has_running = false;
        for c in status.at("containerStatuses").items().iter().rev() {
            let c = J(Some(c));
            restarts = restarts.saturating_add(c.at("restartCount").int());
            last_restart = later(
                last_restart,
                c.at("lastState").at("terminated").at("finishedAt").time(),
            );
            let waiting = c.at("state").at("waiting");
            let terminated = c.at("state").at("terminated");
            if waiting.is_obj() && !waiting.at("reason").str().is_empty() {
                reason = waiting.at("reason").str().to_owned();
            } else if terminated.is_obj() && !terminated.at("reason").str().is_empty() {
                reason = terminated.at("reason").str().to_owned();
            } else if terminated.is_obj() {
                reason = match terminated.at("signal").int() {
                    0 => format!("ExitCode:{}", terminated.at("exitCode").int()),
                    signal => format!("Signal:{signal}"),
                };
            } else if c.at("ready").bool() && c.at("state").at("running").is_obj() {
                has_running = true;
                ready += 1;
            }
        }
        // A pod whose last-listed container completed but another still runs.
        if reason == "Completed" && has_running {
            reason = if has_condition(status, "Ready") {
                "Running"
            } else {
                "NotReady"
            }
            .into();
        }
    }

    if pod.at("metadata").at("deletionTimestamp").is_set() {
        if status.at("reason").str() == NODE_UNREACHABLE_POD_REASON {
            reason = "Unknown".into();
        } else if !matches!(phase, "Succeeded" | "Failed") {
            reason = "Terminating".into();
        }
    }

    PodSummary {
        ready,
        total,
        reason,
        restarts,
        last_restart,
    }
}

fn pod_cells(pod: J<'_>, now: DateTime<Utc>) -> Vec<Value> {
    let s = summarize_pod(pod);
    let restarts = match s.last_restart {
        Some(t) if s.restarts != 0 => format!("{} ({} ago)", s.restarts, human_duration(now - t)),
        _ => s.restarts.to_string(),
    };
    let spec = pod.at("spec");
    let status = pod.at("status");
    let ip = match status.at("podIPs").idx(0).at("ip").str() {
        "" => status.at("podIP").str(),
        ip => ip,
    };
    let gates = spec.at("readinessGates").items();
    let readiness_gates = if gates.is_empty() {
        "<none>".to_owned()
    } else {
        let conditions = status.at("conditions").items();
        let passing = gates
            .iter()
            .filter(|g| {
                let ty = J(Some(g)).at("conditionType").str();
                conditions
                    .iter()
                    .map(|c| J(Some(c)))
                    .find(|c| c.at("type").str() == ty)
                    .is_some_and(|c| c.at("status").str() == "True")
            })
            .count();
        format!("{passing}/{}", gates.len())
    };
    vec![
        name(pod),
        format!("{}/{}", s.ready, s.total).into(),
        s.reason.into(),
        restarts.into(),
        age(pod, now),
        or_none(ip).into(),
        or_none(spec.at("nodeName").str()).into(),
        or_none(status.at("nominatedNodeName").str()).into(),
        readiness_gates.into(),
    ]
}

/// Finished pods carry a `Completed` row condition, as upstream marks them.
fn pod_conditions(pod: J<'_>) -> Option<Value> {
    let (reason, message) = match pod.at("status").at("phase").str() {
        "Succeeded" => ("Succeeded", "The pod has completed successfully."),
        "Failed" => ("Failed", "The pod failed."),
        _ => return None,
    };
    Some(json!([{"type": "Completed", "status": "True", "reason": reason, "message": message}]))
}

// --- Node ------------------------------------------------------------------

static NODE_COLUMNS: &[Column] = &[
    NAME,
    col("Status", "string", "The status of the node"),
    col("Roles", "string", "The roles of the node"),
    AGE,
    col("Version", "string", "Kubelet Version reported by the node."),
    wide(
        "Internal-IP",
        "string",
        "List of addresses reachable to the node.",
    ),
    wide(
        "External-IP",
        "string",
        "List of addresses reachable to the node.",
    ),
    wide(
        "OS-Image",
        "string",
        "OS Image reported by the node from /etc/os-release.",
    ),
    wide(
        "Kernel-Version",
        "string",
        "Kernel Version reported by the node from 'uname -r'.",
    ),
    wide(
        "Container-Runtime",
        "string",
        "ContainerRuntime Version reported by the node.",
    ),
];

fn node_cells(node: J<'_>, now: DateTime<Utc>) -> Vec<Value> {
    let status = node.at("status");
    // Upstream keys conditions by type, so the last Ready condition wins.
    let ready = status
        .at("conditions")
        .items()
        .iter()
        .map(|c| J(Some(c)))
        .rfind(|c| c.at("type").str() == "Ready");
    let mut states = vec![match ready {
        Some(c) if c.at("status").str() == "True" => "Ready",
        Some(_) => "NotReady",
        None => "Unknown",
    }];
    if node.at("spec").at("unschedulable").bool() {
        states.push("SchedulingDisabled");
    }

    let mut roles = BTreeSet::new();
    if let Some(labels) = node.at("metadata").at("labels").map() {
        for (k, v) in labels {
            if let Some(role) = k.strip_prefix("node-role.kubernetes.io/") {
                if !role.is_empty() {
                    roles.insert(role.to_owned());
                }
            } else if k == "kubernetes.io/role" {
                match v.as_str() {
                    Some(role) if !role.is_empty() => {
                        roles.insert(role.to_owned());
                    }
                    _ => {}
                }
            }
        }
    }
    let roles = if roles.is_empty() {
        "<none>".to_owned()
    } else {
        roles.into_iter().collect::<Vec<_>>().join(",")
    };

    let address = |ty: &str| -> String {
        status
            .at("addresses")
            .items()
            .iter()
            .map(|a| J(Some(a)))
            .find(|a| a.at("type").str() == ty)
            .map_or_else(|| "<none>".to_owned(), |a| a.at("address").str().to_owned())
    };
    let info = status.at("nodeInfo");
    let or_unknown = |s: &str| {
        if s.is_empty() {
            "<unknown>".to_owned()
        } else {
            s.to_owned()
        }
    };
    vec![
        name(node),
        states.join(",").into(),
        roles.into(),
        age(node, now),
        info.at("kubeletVersion").str().into(),
        address("InternalIP").into(),
        address("ExternalIP").into(),
        or_unknown(info.at("osImage").str()).into(),
        or_unknown(info.at("kernelVersion").str()).into(),
        or_unknown(info.at("containerRuntimeVersion").str()).into(),
    ]
}

// --- Namespace, ConfigMap, Secret, ServiceAccount, Lease ---------------------

static NAMESPACE_COLUMNS: &[Column] = &[
    NAME,
    col("Status", "string", "The status of the namespace"),
    AGE,
];

fn namespace_cells(ns: J<'_>, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        name(ns),
        ns.at("status").at("phase").str().into(),
        age(ns, now),
    ]
}

static CONFIG_MAP_COLUMNS: &[Column] = &[
    NAME,
    col("Data", "string", "Data contains the configuration data."),
    AGE,
];

fn config_map_cells(cm: J<'_>, now: DateTime<Utc>) -> Vec<Value> {
    let count = cm.at("data").entries() + cm.at("binaryData").entries();
    vec![name(cm), count.into(), age(cm, now)]
}

static SECRET_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Type",
        "string",
        "Used to facilitate programmatic handling of secret data.",
    ),
    col("Data", "string", "Data contains the secret data."),
    AGE,
];

fn secret_cells(secret: J<'_>, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        name(secret),
        secret.at("type").str().into(),
        secret.at("data").entries().into(),
        age(secret, now),
    ]
}

static SERVICE_ACCOUNT_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Secrets",
        "string",
        "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use.",
    ),
    AGE,
];

fn service_account_cells(sa: J<'_>, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        name(sa),
        sa.at("secrets").items().len().into(),
        age(sa, now),
    ]
}

static LEASE_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Holder",
        "string",
        "holderIdentity contains the identity of the holder of a current lease.",
    ),
    AGE,
];

fn lease_cells(lease: J<'_>, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        name(lease),
        lease.at("spec").at("holderIdentity").str().into(),
        age(lease, now),
    ]
}

// --- Service, Endpoints, EndpointSlice ---------------------------------------

static SERVICE_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Type",
        "string",
        "type determines how the Service is exposed.",
    ),
    col(
        "Cluster-IP",
        "string",
        "clusterIP is the IP address of the service.",
    ),
    col(
        "External-IP",
        "string",
        "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.",
    ),
    col(
        "Port(s)",
        "string",
        "The list of ports that are exposed by this service.",
    ),
    AGE,
    wide(
        "Selector",
        "string",
        "Route service traffic to pods with label keys and values matching this selector.",
    ),
];

fn service_cells(svc: J<'_>, now: DateTime<Utc>) -> Vec<Value> {
    let spec = svc.at("spec");
    // An unset type is ClusterIP, as the API server defaults it.
    let ty = match spec.at("type").str() {
        "" => "ClusterIP",
        t => t,
    };
    let cluster_ip = match spec.at("clusterIPs").idx(0).str() {
        "" => or_none(spec.at("clusterIP").str()),
        ip => ip,
    };
    let external_ips: Vec<&str> = spec
        .at("externalIPs")
        .items()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let external_ip = match ty {
        "ClusterIP" | "NodePort" if external_ips.is_empty() => "<none>".to_owned(),
        "ClusterIP" | "NodePort" => external_ips.join(","),
        "LoadBalancer" => {
            let mut all = load_balancer_addresses(svc.at("status").at("loadBalancer"));
            if all.is_empty() && external_ips.is_empty() {
                "<pending>".to_owned()
            } else {
                all.extend(external_ips.iter().map(|s| (*s).to_owned()));
                all.join(",")
            }
        }
        "ExternalName" => spec.at("externalName").str().to_owned(),
        _ => "<unknown>".to_owned(),
    };
    let ports: Vec<String> = spec
        .at("ports")
        .items()
        .iter()
        .map(|p| {
            let p = J(Some(p));
            let protocol = match p.at("protocol").str() {
                "" => "TCP",
                proto => proto,
            };
            match p.at("nodePort").int() {
                n if n > 0 => format!("{}:{n}/{protocol}", p.at("port").int()),
                _ => format!("{}/{protocol}", p.at("port").int()),
            }
        })
        .collect();
    let ports = if ports.is_empty() {
        "<none>".to_owned()
    } else {
        ports.join(",")
    };
    vec![
        name(svc),
        ty.into(),
        cluster_ip.into(),
        external_ip.into(),
        ports.into(),
        age(svc, now),
        format_labels(spec.at("selector")).into(),
    ]
}

/// Ingress IPs (or hostnames when there is no IP), without repeats, in order.
fn load_balancer_addresses(lb: J<'_>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for ingress in lb.at("ingress").items() {
        let ingress = J(Some(ingress));
        let addr = match ingress.at("ip").str() {
            "" => ingress.at("hostname").str(),
            ip => ip,
        };
        if !addr.is_empty() && !out.iter().any(|a| a == addr) {
            out.push(addr.to_owned());
        }
    }
    out
}

static ENDPOINTS_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Endpoints",
        "string",
        "The set of all endpoints is the union of all subsets.",
    ),
    AGE,
];

/// At most this many addresses are listed before "+ N more...".
const MAX_LISTED: usize = 3;

fn endpoints_cells(ep: J<'_>, now: DateTime<Utc>) -> Vec<Value> {
    vec![
        name(ep),
        format_endpoints(ep.at("subsets").items()).into(),
        age(ep, now),
    ]
}

fn format_endpoints(subsets: &[Value]) -> String {
    if subsets.is_empty() {
        return "<none>".into();
    }
    let mut list: Vec<String> = Vec::new();
    let mut count = 0usize;
    let mut more = false;
    for subset in subsets {
        let subset = J(Some(subset));
        let addresses = subset.at("addresses").items();
        let ips = addresses.iter().map(|a| J(Some(a)).at("ip").str());
        let ports = subset.at("ports").items();
        if ports.is_empty() {
            // Headless services may have no ports.
            count += addresses.len();
            for ip in ips {
                if list.len() == MAX_LISTED {
                    more = true;
                    break;
                }
                list.push(ip.to_owned());
            }
            continue;
        }
        for port in ports {
            let port = J(Some(port)).at("port").int();
            count += addresses.len();
            for ip in ips.clone() {
                if list.len() == MAX_LISTED {
                    more = true;
                    break;
                }
                list.push(join_host_port(ip, port));
            }
        }
    }
    let joined = list.join(",");
    if more {
        format!("{joined} + {} more...", count - MAX_LISTED)
    } else {
        joined
    }
}

fn join_host_port(host: &str, port: i64) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

static ENDPOINT_SLICE_COLUMNS: &[Column] = &[
    NAME,
    col(
        "AddressType",
        "string",
        "addressType specifies the type of address carried by this EndpointSlice.",
    ),
    col(
        "Ports",
        "string",
        "ports specifies the list of network ports exposed by each endpoint in this slice.",
    ),
    col(
        "Endpoints",
        "string",
        "endpoints is a list of unique endpoints in this slice.",
    ),
    AGE,
];

fn endpoint_slice_cells(slice: J<'_>, now: DateTime<Utc>) -> Vec<Value> {
    let ports = slice.at("ports").items().iter().map(|p| {
        let p = J(Some(p));
        if p.at("port").is_number() {
            p.at("port").int().to_string()
        } else if let Some(name) = p.at("name").0.and_then(Value::as_str) {
            name.to_owned()
        } else {
            "*".to_owned()
        }
    });
    let endpoints = slice.at("endpoints").items().iter().flat_map(|e| {
        J(Some(e))
            .at("addresses")
            .items()
            .iter()
            .map(|a| a.as_str().unwrap_or("").to_owned())
    });
    vec![
        name(slice),
        slice.at("addressType").str().into(),
        list_with_more(ports).into(),
        list_with_more(endpoints).into(),
        age(slice, now),
    ]
}

fn list_with_more(items: impl Iterator<Item = String>) -> String {
    let mut list = Vec::new();
    let mut count = 0usize;
    for item in items {
        if list.len() < MAX_LISTED {
            list.push(item);
        }
        count += 1;
    }
    let joined = list.join(",");
    if count > MAX_LISTED {
        format!("{joined} + {} more...", count - MAX_LISTED)
    } else if joined.is_empty() {
        "<unset>".into()
    } else {
        joined
    }
}

// --- Events ----------------------------------------------------------------

static EVENT_COLUMNS: &[Column] = &[
    col(
        "Last Seen",
        "string",
        "The time at which the most recent occurrence of this event was recorded.",
    ),
    col(
        "Type",
        "string",
        "Type of this event (Normal, Warning), new types could be added in the future",
    ),
    col(
        "Reason",
        "string",
        "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
    ),
    col("Object", "string", "The object that this event is about."),
    wide(
        "Subobject",
        "string",
        "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement.",
    ),
    wide("Source", "string", "The component reporting this event."),
    col(
        "Message",
        "string",
        "A human-readable description of the status of this operation.",
    ),
    wide(
        "First Seen",
        "string",
        "The time at which the event was first recorded.",
    ),
    wide(
        "Count",
        "string",
        "The number of times this event has occurred.",
    ),
    Column {
        name: "Name",
        ty: "string",
        format: "name",
        priority: 1,
        description: NAME_DOC,
    },
];

/// Renders core/v1 Events and events.k8s.io/v1 Events alike: upstream prints
/// both from the same internal type, so the events.k8s.io field names
/// (`regarding`, `note`, `deprecated*`) are read where the core ones are absent.
fn event_cells(ev: J<'_>, now: DateTime<Utc>) -> Vec<Value> {
    let first_of = |a: &str, b: &str| {
        if ev.at(a).is_set() {
            ev.at(a)
        } else {
            ev.at(b)
        }
    };
    let first_ts = first_of("firstTimestamp", "deprecatedFirstTimestamp");
    let last_ts = first_of("lastTimestamp", "deprecatedLastTimestamp");
    let count = first_of("count", "deprecatedCount");
    let source = first_of("source", "deprecatedSource");
    let involved = first_of("involvedObject", "regarding");
    let message = first_of("message", "note");
    let controller = match ev.at("reportingComponent").str() {
        "" => ev.at("reportingController").str(),
        c => c,
    };

    let first_seen = if first_ts.time().is_some() {
        since(first_ts, now)
    } else {
        since(ev.at("eventTime"), now)
    };
    let mut last_seen = if last_ts.time().is_some() {
        since(last_ts, now)
    } else {
        first_seen.clone()
    };
    let mut count = count.int();
    let series = ev.at("series");
    if series.is_obj() {
        last_seen = since(series.at("lastObservedTime"), now);
        count = series.at("count").int();
    } else if count == 0 {
        // Singleton events have no count in the new API.
        count = 1;
    }

    let kind = involved.at("kind").str().to_lowercase();
    let object = match involved.at("name").str() {
        "" => kind,
        n => format!("{kind}/{n}"),
    };
    let component = first_non_empty(source.at("component").str(), controller);
    let instance = first_non_empty(source.at("host").str(), ev.at("reportingInstance").str());
    let source = if instance.is_empty() {
        component.to_owned()
    } else {
        format!("{component}, {instance}")
    };
    vec![
        last_seen.into(),
        ev.at("type").str().into(),
        ev.at("reason").str().into(),
        object.into(),
        involved.at("fieldPath").str().into(),
        source.into(),
        message.str().trim().into(),
        first_seen.into(),
        count.into(),
        name(ev),
    ]
}

fn first_non_empty<'a>(a: &'a str, b: &'a str) -> &'a str {
    if a.is_empty() { b } else { a }
}

// --- apps ------------------------------------------------------------------

static DEPLOYMENT_COLUMNS: &[Column] = &[
    NAME,
    col("Ready", "string", "Number of the pod with ready state"),
    col(
        "Up-to-date",
        "string",
        "Total number of non-terminating pods targeted by this deployment that have the desired template spec.",
    ),
    col(
        "Available",
        "string",
        "Total number of available non-terminating pods (ready for at least minReadySeconds) targeted by this deployment.",
    ),
    AGE,
    wide("Containers", "string", CONTAINERS_DOC),
    wide("Images", "string", IMAGES_DOC),
    wide("Selector", "string", "Label selector for pods."),
];

fn deployment_cells(d: J<'_>, now: DateTime<Utc>) -> Vec<Value> {
    let spec = d.at("spec");
    let status = d.at("status");
    let (containers, images) = container_cells(spec.at("template"));
    let selector = label_selector(spec.at("selector")).unwrap_or_else(|| "<invalid>".into());
    vec![
        name(d),
        format!(
            "{}/{}",
            status.at("readyReplicas").int(),
            spec.at("replicas").int()
        )
        .into(),
        status.at("updatedReplicas").int().into(),
        status.at("availableReplicas").int().into(),
        age(d, now),
        containers.into(),
        images.into(),
        selector.into(),
    ]
}

static REPLICA_SET_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Desired",
        "integer",
        "Replicas is the number of desired pods.",
    ),
    col(
        "Current",
        "integer",
        "Replicas is the most recently observed number of non-terminating pods.",
    ),
    col(
        "Ready",
        "integer",
        "The number of non-terminating pods targeted by this ReplicaSet with a Ready Condition.",
    ),
    AGE,
    wide("Containers", "string", CONTAINERS_DOC),
    wide("Images", "string", IMAGES_DOC),
    wide(
        "Selector",
        "string",
        "Selector is a label query over pods that should match the replica count.",
    ),
];

fn replica_set_cells(rs: J<'_>, now: DateTime<Utc>) -> Vec<Value> {
    let spec = rs.at("spec");
    let status = rs.at("status");
    let (containers, images) = container_cells(spec.at("template"));
    vec![
        name(rs),
        spec.at("replicas").int().into(),
        status.at("replicas").int().into(),
        status.at("readyReplicas").int().into(),
        age(rs, now),
        containers.into(),
        images.into(),
        format_label_selector(spec.at("selector")).into(),
    ]
}

static DAEMON_SET_COLUMNS: &[Column] = &[
    NAME,
    col(
        "Desired",
        "integer",
        "The total number of nodes that should be running the daemon pod.",
    ),
    col(
        "Current",
        "integer",
        "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod.",
    ),
    col(
        "Ready",
        "integer",
        "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running with a Ready Condition.",
    ),
    col(
        "Up-to-date",
        "integer",
        "The total number of nodes that are running updated daemon pod",
    ),
    col(
        "Available",
        "integer",
        "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available.",
    ),
    col(
        "Node Selector",
        "string",
        "NodeSelector is a selector which must be true for the pod to fit on a node.",
    ),
    AGE,
    wide("Containers", "string", CONTAINERS_DOC),
    wide("Images", "string", IMAGES_DOC),
    wide(
        "Selector",
        "string",
        "A label query over pods that are managed by the daemon set.",
    ),
];

fn daemon_set_cells(ds: J<'_>, now: DateTime<Utc>) -> Vec<Value> {
    let spec = ds.at("spec");
    let status = ds.at("status");
    let (containers, images) = container_cells(spec.at("template"));
    vec![
        name(ds),
        status.at("desiredNumberScheduled").int().into(),
        status.at("currentNumberScheduled").int().into(),
        status.at("numberReady").int().into(),
        status.at("updatedNumberScheduled").int().into(),
        status.at("numberAvailable").int().into(),
        format_labels(spec.at("template").at("spec").at("nodeSelector")).into(),
        age(ds, now),
        containers.into(),
        images.into(),
        format_label_selector(spec.at("selector")).into(),
    ]
}

static STATEFUL_SET_COLUMNS: &[Column] = &[
    NAME,
    col("Ready", "string", "Number of the pod with ready state"),
    AGE,
    wide("Containers", "string", CONTAINERS_DOC),
    wide("Images", "string", IMAGES_DOC),
];

fn stateful_set_cells(sts: J<'_>, now: DateTime<Utc>) -> Vec<Value> {
    let spec = sts.at("spec");
    let (containers, images) = container_cells(spec.at("template"));
    vec![
        name(sts),
        format!(
            "{}/{}",
            sts.at("status").at("readyReplicas").int(),
            spec.at("replicas").int()
        )
        .into(),
        age(sts, now),
        containers.into(),
        images.into(),
    ]
}

static CONTROLLER_REVISION_COLUMNS: &[Column] = &[
    NAME,
    col("Controller", "string", "Controller of the object"),
    col(
        "Revision",
        "string",
        "Revision indicates the revision of the state represented by Data.",
    ),
    AGE,
];

fn controller_revision_cells(cr: J<'_>, now: DateTime<Utc>) -> Vec<Value> {
    let controller = cr
        .at("metadata")
        .at("ownerReferences")
        .items()
        .iter()
        .map(|r| J(Some(r)))
        .find(|r| r.at("controller").bool())
        .map_or_else(|| "<none>".to_owned(), controller_name);
    vec![
        name(cr),
        controller.into(),
        cr.at("revision").int().into(),
        age(cr, now),
    ]
}

/// `kind.group/name` in lower case, as `formatResourceName` writes an owner.
fn controller_name(owner: J<'_>) -> String {
    let name = owner.at("name").str();
    let group = match owner.at("apiVersion").str().split('/').collect::<Vec<_>>()[..] {
        [_version] => "",
        [group, _version] => group,
        _ => return "<invalid>".into(),
    };
    let kind = owner.at("kind").str();
    let group_kind = match (kind, group) {
        ("", "") => return name.to_owned(),
        (k, "") => k.to_owned(),
        (k, g) => format!("{k}.{g}"),
    };
    format!("{}/{name}", group_kind.to_lowercase())
}

/// Container names and images of a pod template, each comma-joined.
fn container_cells(template: J<'_>) -> (String, String) {
    let containers = template.at("spec").at("containers").items();
    let names: Vec<&str> = containers
        .iter()
        .map(|c| J(Some(c)).at("name").str())
        .collect();
    let images: Vec<&str> = containers
        .iter()
        .map(|c| J(Some(c)).at("image").str())
        .collect();
    (names.join(","), images.join(","))
}

// ---------------------------------------------------------------------------
// Label formatting.

/// `labels.FormatLabels`: `k=v` pairs sorted as strings, or `<none>`.
fn format_labels(labels: J<'_>) -> String {
    let mut pairs: Vec<String> = labels
        .map()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    if pairs.is_empty() {
        return "<none>".into();
    }
    pairs.sort();
    pairs.join(",")
}

/// `metav1.FormatLabelSelector`: the selector string, `<none>` when it
/// selects everything or nothing, `<error>` when malformed.
fn format_label_selector(sel: J<'_>) -> String {
    match label_selector(sel) {
        None => "<error>".into(),
        Some(s) if s.is_empty() => "<none>".into(),
        Some(s) => s,
    }
}

/// A `LabelSelector` object in selector syntax (`app=web,tier in (a,b)`),
/// requirements sorted by key. Empty for a missing or empty selector; `None`
/// when it is malformed.
fn label_selector(sel: J<'_>) -> Option<String> {
    if !sel.is_set() {
        return Some(String::new());
    }
    if !sel.is_obj() {
        return None;
    }
    let mut reqs: Vec<(String, String)> = Vec::new();
    if sel.at("matchLabels").is_set() {
        for (k, v) in sel.at("matchLabels").map()? {
            reqs.push((k.clone(), format!("{k}={}", v.as_str()?)));
        }
    }
    if sel.at("matchExpressions").is_set() {
        for expr in sel.at("matchExpressions").0?.as_array()? {
            let expr = J(Some(expr));
            let key = expr.at("key").str();
            let mut values = match expr.at("values").0 {
                None | Some(Value::Null) => Vec::new(),
                Some(v) => v
                    .as_array()?
                    .iter()
                    .map(Value::as_str)
                    .collect::<Option<Vec<_>>>()?,
            };
            values.sort_unstable();
            let rendered = match expr.at("operator").str() {
                "In" if !values.is_empty() => format!("{key} in ({})", values.join(",")),
                "NotIn" if !values.is_empty() => format!("{key} notin ({})", values.join(",")),
                "Exists" if values.is_empty() => key.to_owned(),
                "DoesNotExist" if values.is_empty() => format!("!{key}"),
                _ => return None,
            };
            reqs.push((key.to_owned(), rendered));
        }
    }
    reqs.sort_by(|a, b| a.0.cmp(&b.0));
    Some(
        reqs.into_iter()
            .map(|(_, r)| r)
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn or_none(s: &str) -> &str {
    if s.is_empty() { "<none>" } else { s }
}

// ---------------------------------------------------------------------------
// Time.

/// How long ago `t` was, or `<unknown>` when it is missing or unparsable.
fn since(t: J<'_>, now: DateTime<Utc>) -> String {
    t.time()
        .map_or_else(|| "<unknown>".into(), |t| human_duration(now - t))
}

/// `duration.HumanDuration` from apimachinery: two or three significant
/// figures, `<invalid>` for more than a second in the future.
fn human_duration(d: TimeDelta) -> String {
    // Whole seconds, truncated toward zero as Go's int(d.Seconds()) does.
    let seconds = d.num_seconds();
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        return match seconds % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{}d", hours / 24),
            h => format!("{}d{h}h", hours / 24),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        return match (hours / 24) % 365 {
            0 => format!("{}y", hours / 24 / 365),
            d => format!("{}y{d}d", hours / 24 / 365),
        };
    }
    format!("{}y", hours / 24 / 365)
}

// ---------------------------------------------------------------------------
// Lenient JSON access: a missing field or a field of the wrong type reads as
// the zero value, as it would in a Go struct, so odd objects never panic.

#[derive(Clone, Copy)]
struct J<'a>(Option<&'a Value>);

impl<'a> J<'a> {
    fn at(self, key: &str) -> J<'a> {
        J(self.0.and_then(|v| v.as_object()).and_then(|m| m.get(key)))
    }

    fn idx(self, i: usize) -> J<'a> {
        J(self.0.and_then(Value::as_array).and_then(|a| a.get(i)))
    }

    fn str(self) -> &'a str {
        self.0.and_then(Value::as_str).unwrap_or("")
    }

    fn int(self) -> i64 {
        match self.0 {
            Some(Value::Number(n)) => n
                .as_i64()
                .or_else(|| n.as_u64().map(|_| i64::MAX))
                .or_else(|| n.as_f64().map(|f| f as i64))
                .unwrap_or(0),
            _ => 0,
        }
    }

    fn bool(self) -> bool {
        self.0.and_then(Value::as_bool).unwrap_or(false)
    }

    fn items(self) -> &'a [Value] {
        self.0.and_then(Value::as_array).map_or(&[], Vec::as_slice)
    }

    fn map(self) -> Option<&'a Map<String, Value>> {
        self.0.and_then(Value::as_object)
    }

    /// Entries of a map-valued field (`data`, `binaryData`).
    fn entries(self) -> usize {
        self.map().map_or(0, Map::len)
    }

    fn is_set(self) -> bool {
        self.0.is_some_and(|v| !v.is_null())
    }

    fn is_obj(self) -> bool {
        self.0.is_some_and(Value::is_object)
    }

    fn is_number(self) -> bool {
        self.0.is_some_and(Value::is_number)
    }

    /// An RFC 3339 timestamp; Go's zero time counts as unset.
    fn time(self) -> Option<DateTime<Utc>> {
        let t = DateTime::parse_from_rfc3339(self.str())
            .ok()?
            .with_timezone(&Utc);
        (t.timestamp() != GO_ZERO_TIME).then_some(t)
    }
}

/// Go's zero time, 0001-01-01T00:00:00Z, in Unix seconds.
const GO_ZERO_TIME: i64 = -62_135_596_800;

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::{Value, json};

    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap()
    }

    /// An RFC 3339 timestamp `secs` seconds before `now()`.
    fn ago(secs: i64) -> String {
        (now() - TimeDelta::seconds(secs)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }

    fn meta(name: &str, age_secs: i64) -> Value {
        json!({"name": name, "namespace": "default", "uid": "u-1", "creationTimestamp": ago(age_secs)})
    }

    fn table(group: &str, kind: &str, items: &[Value]) -> Value {
        render(group, kind, items, json!({}), now())
    }

    fn cells(group: &str, kind: &str, obj: Value) -> Vec<Value> {
        let t = table(group, kind, &[obj]);
        let cells = t["rows"][0]["cells"].as_array().unwrap().clone();
        let columns = t["columnDefinitions"].as_array().unwrap().len();
        assert_eq!(cells.len(), columns, "{kind}: one cell per column");
        cells
    }

    fn column_names(group: &str, kind: &str) -> Vec<(String, i64)> {
        table(group, kind, &[])["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_owned(),
                    c["priority"].as_i64().unwrap(),
                )
            })
            .collect()
    }

    // --- Table shape ---------------------------------------------------------

    #[test]
    fn table_shape_carries_list_meta_columns_and_partial_metadata() {
        let pod = json!({
            "metadata": {"name": "web-0", "namespace": "prod", "resourceVersion": "42",
                          "labels": {"app": "web"}, "creationTimestamp": ago(30)},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]},
            "status": {"phase": "Pending"},
        });
        let list_meta = json!({"resourceVersion": "99", "continue": "tok", "remainingItemCount": 3, "selfLink": "x"});
        let t = render("", "Pod", &[pod], list_meta, now());
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(
            t["metadata"],
            json!({"resourceVersion": "99", "continue": "tok", "remainingItemCount": 3})
        );
        assert_eq!(t["columnDefinitions"][0]["name"], "Name");
        assert_eq!(t["columnDefinitions"][0]["type"], "string");
        assert_eq!(t["columnDefinitions"][0]["format"], "name");
        assert_eq!(t["columnDefinitions"][0]["priority"], 0);
        assert!(
            t["columnDefinitions"][0]["description"]
                .as_str()
                .unwrap()
                .starts_with("Name must be unique")
        );
        assert_eq!(t["columnDefinitions"][1]["format"], "");
        let row = &t["rows"][0];
        assert_eq!(row["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(row["object"]["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(row["object"]["metadata"]["name"], "web-0");
        assert_eq!(row["object"]["metadata"]["labels"], json!({"app": "web"}));
        assert!(row.get("conditions").is_none());
    }

    #[test]
    fn empty_list_meta_and_no_items() {
        let t = render("", "ConfigMap", &[], json!({"resourceVersion": ""}), now());
        assert_eq!(t["metadata"], json!({}));
        assert_eq!(t["rows"], json!([]));
        let t = render("", "ConfigMap", &[], Value::Null, now());
        assert_eq!(t["metadata"], json!({}));
    }

    #[test]
    fn column_sets_and_wide_priorities() {
        let p = |names: &[(&str, i64)]| -> Vec<(String, i64)> {
            names.iter().map(|(n, p)| ((*n).to_owned(), *p)).collect()
        };
        assert_eq!(
            column_names("", "Pod"),
            p(&[
                ("Name", 0),
                ("Ready", 0),
                ("Status", 0),
                ("Restarts", 0),
                ("Age", 0),
                ("IP", 1),
                ("Node", 1),
                ("Nominated Node", 1),
                ("Readiness Gates", 1)
            ])
        );
        assert_eq!(
            column_names("", "Node"),
            p(&[
                ("Name", 0),
                ("Status", 0),
                ("Roles", 0),
                ("Age", 0),
                ("Version", 0),
                ("Internal-IP", 1),
                ("External-IP", 1),
                ("OS-Image", 1),
                ("Kernel-Version", 1),
                ("Container-Runtime", 1)
            ])
        );
        assert_eq!(
            column_names("", "Service"),
            p(&[
                ("Name", 0),
                ("Type", 0),
                ("Cluster-IP", 0),
                ("External-IP", 0),
                ("Port(s)", 0),
                ("Age", 0),
                ("Selector", 1)
            ])
        );
        assert_eq!(
            column_names("apps", "Deployment"),
            p(&[
                ("Name", 0),
                ("Ready", 0),
                ("Up-to-date", 0),
                ("Available", 0),
                ("Age", 0),
                ("Containers", 1),
                ("Images", 1),
                ("Selector", 1)
            ])
        );
        assert_eq!(
            column_names("events.k8s.io", "Event"),
            column_names("", "Event"),
        );
        assert_eq!(
            column_names("", "Event")[..4],
            p(&[("Last Seen", 0), ("Type", 0), ("Reason", 0), ("Object", 0)])
        );
        assert_eq!(
            column_names("example.com", "Widget"),
            p(&[("Name", 0), ("Age", 0)])
        );
        // Kind alone does not pick a printer: the group must match too.
        assert_eq!(
            column_names("example.com", "Pod"),
            p(&[("Name", 0), ("Age", 0)])
        );
    }

    // --- Age -----------------------------------------------------------------

    #[test]
    fn definitions_show_when_they_were_created() {
        let now: DateTime<Utc> = "2024-01-01T00:10:00Z".parse().unwrap();
        let crd = json!({"metadata": {"name": "widgets.example.com", "creationTimestamp": "2024-01-01T00:00:00Z"}});
        let t = render(
            "apiextensions.k8s.io",
            "CustomResourceDefinition",
            &[crd],
            json!({}),
            now,
        );
        assert_eq!(t["columnDefinitions"][1]["name"], "Created At");
        assert_eq!(
            t["rows"][0]["cells"],
            json!(["widgets.example.com", "2024-01-01T00:00:00Z"])
        );
    }

    #[test]
    fn custom_columns_follow_their_json_paths() {
        let now: DateTime<Utc> = "2024-01-01T00:10:00Z".parse().unwrap();
        let columns = [
            CustomColumn {
                name: "Size",
                ty: "string",
                format: "",
                description: "",
                priority: 0,
                json_path: ".spec.size",
            },
            CustomColumn {
                name: "Replicas",
                ty: "integer",
                format: "",
                description: "",
                priority: 0,
                json_path: ".spec.replicas",
            },
            CustomColumn {
                name: "First",
                ty: "string",
                format: "",
                description: "",
                priority: 1,
                json_path: "{.spec.ports[1].name}",
            },
            CustomColumn {
                name: "Since",
                ty: "date",
                format: "",
                description: "",
                priority: 0,
                json_path: ".metadata.creationTimestamp",
            },
            CustomColumn {
                name: "Gone",
                ty: "string",
                format: "",
                description: "",
                priority: 0,
                json_path: ".status.nothing",
            },
        ];
        let item = json!({"metadata": {"name": "w", "creationTimestamp": "2024-01-01T00:00:00Z"},
                          "spec": {"size": "small", "replicas": 3, "ports": [{"name": "a"}, {"name": "b"}]}});
        let t = render_custom(&columns, &[item], json!({"resourceVersion": "5"}), now);
        assert_eq!(t["columnDefinitions"][0]["name"], "Name");
        assert_eq!(t["columnDefinitions"][3]["priority"], 1);
        assert_eq!(
            t["rows"][0]["cells"],
            json!(["w", "small", 3, "b", "10m", null])
        );
        assert_eq!(t["metadata"]["resourceVersion"], "5");
    }

    #[test]
    fn human_duration_matches_apimachinery() {
        let ms = TimeDelta::milliseconds;
        let s = TimeDelta::seconds;
        let m = |n: i64| s(60 * n);
        let h = |n: i64| s(3600 * n);
        let d = |n: i64| h(24 * n);
        let cases: &[(TimeDelta, &str)] = &[
            (s(-3), "<invalid>"),
            (s(-2), "<invalid>"),
            (ms(-1999), "0s"),
            (s(-1), "0s"),
            (ms(-500), "0s"),
            (s(0), "0s"),
            (ms(999), "0s"),
            (s(5), "5s"),
            (s(119), "119s"),
            (s(120), "2m"),
            (s(150), "2m30s"),
            (s(599), "9m59s"),
            (m(10), "10m"),
            (s(630), "10m"),
            (m(179), "179m"),
            (m(180), "3h"),
            (m(190), "3h10m"),
            (m(479), "7h59m"),
            (h(8), "8h"),
            (h(8) + m(59), "8h"),
            (h(47), "47h"),
            (h(48), "2d"),
            (h(52), "2d4h"),
            (h(191), "7d23h"),
            (d(8), "8d"),
            (d(729), "729d"),
            (d(730), "2y"),
            (d(760), "2y30d"),
            (d(365 * 8 - 1), "7y364d"),
            (d(365 * 8), "8y"),
            (d(365 * 20), "20y"),
        ];
        for (delta, want) in cases {
            assert_eq!(human_duration(*delta), *want, "{delta:?}");
        }
    }

    #[test]
    fn age_is_unknown_when_missing_unparsable_or_zero() {
        let base = |created: Value| {
            cells(
                "",
                "ConfigMap",
                json!({"metadata": {"name": "c", "creationTimestamp": created}}),
            )[2]
            .clone()
        };
        assert_eq!(base(json!(ago(600))), json!("10m"));
        assert_eq!(base(Value::Null), json!("<unknown>"));
        assert_eq!(base(json!("yesterday")), json!("<unknown>"));
        assert_eq!(base(json!(17)), json!("<unknown>"));
        assert_eq!(base(json!("0001-01-01T00:00:00Z")), json!("<unknown>"));
        assert_eq!(
            base(json!((now() + TimeDelta::seconds(30)).to_rfc3339())),
            json!("<invalid>")
        );
        // Fractional seconds and offsets parse.
        assert_eq!(base(json!("2024-05-01T13:57:30.5+02:00")), json!("2m29s"));
    }

    // --- Pod -----------------------------------------------------------------

    fn running(ready: bool) -> Value {
        json!({"name": "c", "ready": ready, "restartCount": 0, "state": {"running": {"startedAt": ago(100)}}})
    }

    fn pod(spec: Value, status: Value) -> Value {
        json!({"metadata": meta("p", 3 * 3600 + 600), "spec": spec, "status": status})
    }

    fn two_containers() -> Value {
        json!({"containers": [{"name": "a", "image": "a"}, {"name": "b", "image": "b"}]})
    }

    /// Ready, Status and Restarts of a pod.
    fn pod_summary(p: Value) -> (Value, Value, Value) {
        let c = cells("", "Pod", p);
        (c[1].clone(), c[2].clone(), c[3].clone())
    }

    #[test]
    fn pod_running_with_all_columns() {
        let p = json!({
            "metadata": meta("web-7d9c", 3 * 3600 + 600),
            "spec": {"nodeName": "node-1", "containers": [{"name": "a"}, {"name": "b"}],
                     "readinessGates": [{"conditionType": "example.com/lb"}, {"conditionType": "example.com/dns"}]},
            "status": {
                "phase": "Running",
                "podIP": "10.244.1.7",
                "podIPs": [{"ip": "10.244.1.7"}, {"ip": "fd00::7"}],
                "nominatedNodeName": "node-2",
                "conditions": [
                    {"type": "Ready", "status": "False"},
                    {"type": "example.com/lb", "status": "True"},
                    {"type": "example.com/dns", "status": "False"},
                ],
                "containerStatuses": [running(true), running(false)],
            },
        });
        assert_eq!(
            cells("", "Pod", p),
            vec![
                json!("web-7d9c"),
                json!("1/2"),
                json!("Running"),
                json!("0"),
                json!("3h10m"),
                json!("10.244.1.7"),
                json!("node-1"),
                json!("node-2"),
                json!("1/2"),
            ]
        );
    }

    #[test]
    fn pod_pending_unscheduled_shows_none_placeholders() {
        let c = cells(
            "",
            "Pod",
            pod(
                json!({"containers": [{"name": "a"}]}),
                json!({"phase": "Pending"}),
            ),
        );
        assert_eq!(c[1..4], [json!("0/1"), json!("Pending"), json!("0")]);
        assert_eq!(
            c[5..],
            [
                json!("<none>"),
                json!("<none>"),
                json!("<none>"),
                json!("<none>")
            ]
        );
    }

    #[test]
    fn pod_ip_falls_back_to_pod_ip_field() {
        let c = cells(
            "",
            "Pod",
            pod(json!({}), json!({"phase": "Running", "podIP": "10.0.0.9"})),
        );
        assert_eq!(c[5], json!("10.0.0.9"));
    }

    #[test]
    fn pod_crash_loop_shows_reason_and_last_restart() {
        let p = pod(
            two_containers(),
            json!({"phase": "Running", "containerStatuses": [
                {"name": "a", "ready": false, "restartCount": 5,
                 "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 2m40s"}},
                 "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": ago(300)}}},
                {"name": "b", "ready": true, "restartCount": 2, "state": {"running": {}},
                 "lastState": {"terminated": {"exitCode": 137, "finishedAt": ago(3600)}}},
            ]}),
        );
        assert_eq!(
            pod_summary(p),
            (json!("1/2"), json!("CrashLoopBackOff"), json!("7 (5m ago)"))
        );
    }

    #[test]
    fn pod_restarts_without_finish_time_is_a_bare_count() {
        let p = pod(
            json!({"containers": [{"name": "a"}]}),
            json!({"phase": "Running", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 3, "state": {"running": {}}}]}),
        );
        assert_eq!(pod_summary(p), (json!("1/1"), json!("Running"), json!("3")));
    }

    #[test]
    fn pod_zero_restarts_never_shows_ago() {
        let p = pod(
            json!({"containers": [{"name": "a"}]}),
            json!({"phase": "Running", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}},
                 "lastState": {"terminated": {"exitCode": 0, "finishedAt": ago(60)}}}]}),
        );
        assert_eq!(pod_summary(p).2, json!("0"));
    }

    #[test]
    fn pod_container_creating() {
        let p = pod(
            json!({"containers": [{"name": "a"}]}),
            json!({"phase": "Pending", "containerStatuses": [
                {"name": "a", "ready": false, "restartCount": 0,
                 "state": {"waiting": {"reason": "ContainerCreating"}}}]}),
        );
        assert_eq!(
            pod_summary(p),
            (json!("0/1"), json!("ContainerCreating"), json!("0"))
        );
    }

    #[test]
    fn pod_completed_gets_row_condition() {
        let p = pod(
            json!({"containers": [{"name": "a"}]}),
            json!({"phase": "Succeeded", "containerStatuses": [
                {"name": "a", "ready": false, "restartCount": 0,
                 "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}),
        );
        let t = table("", "Pod", &[p]);
        assert_eq!(t["rows"][0]["cells"][2], "Completed");
        assert_eq!(
            t["rows"][0]["conditions"],
            json!([{"type": "Completed", "status": "True", "reason": "Succeeded",
                    "message": "The pod has completed successfully."}])
        );
        let failed = pod(json!({}), json!({"phase": "Failed", "reason": "Evicted"}));
        let t = table("", "Pod", &[failed]);
        assert_eq!(t["rows"][0]["cells"][2], "Evicted");
        assert_eq!(t["rows"][0]["conditions"][0]["reason"], "Failed");
    }

    #[test]
    fn pod_terminated_without_reason_shows_exit_code_or_signal() {
        let term = |t: Value| {
            pod(
                json!({"containers": [{"name": "a"}]}),
                json!({"phase": "Running", "containerStatuses": [
                    {"name": "a", "ready": false, "restartCount": 0, "state": {"terminated": t}}]}),
            )
        };
        assert_eq!(
            pod_summary(term(json!({"exitCode": 137}))).1,
            json!("ExitCode:137")
        );
        assert_eq!(
            pod_summary(term(json!({"exitCode": 137, "signal": 9}))).1,
            json!("Signal:9")
        );
        assert_eq!(
            pod_summary(term(json!({"exitCode": 1, "reason": "OOMKilled"}))).1,
            json!("OOMKilled")
        );
    }

    #[test]
    fn pod_completed_sidecar_with_running_container() {
        // Statuses are walked last to first: "b" completed sets the reason,
        // then "a" running flips it back.
        let statuses = json!([
            running(true),
            {"name": "b", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
        ]);
        let with_ready = pod(
            two_containers(),
            json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                   "containerStatuses": statuses.clone()}),
        );
        assert_eq!(
            pod_summary(with_ready),
            (json!("1/2"), json!("Running"), json!("0"))
        );
        let not_ready = pod(
            two_containers(),
            json!({"phase": "Running", "containerStatuses": statuses}),
        );
        assert_eq!(pod_summary(not_ready).1, json!("NotReady"));
    }

    #[test]
    fn pod_terminating_unless_finished_and_unknown_when_node_lost() {
        let mut p = pod(
            json!({"containers": [{"name": "a"}]}),
            json!({"phase": "Running", "containerStatuses": [running(true)]}),
        );
        p["metadata"]["deletionTimestamp"] = json!(ago(5));
        assert_eq!(
            pod_summary(p.clone()),
            (json!("1/1"), json!("Terminating"), json!("0"))
        );

        p["status"]["reason"] = json!("NodeLost");
        assert_eq!(pod_summary(p.clone()).1, json!("Unknown"));

        let mut done = pod(json!({}), json!({"phase": "Succeeded"}));
        done["metadata"]["deletionTimestamp"] = json!(ago(5));
        assert_eq!(pod_summary(done).1, json!("Succeeded"));

        // An explicit null deletionTimestamp is not a deletion.
        let mut live = pod(json!({}), json!({"phase": "Running"}));
        live["metadata"]["deletionTimestamp"] = Value::Null;
        assert_eq!(pod_summary(live).1, json!("Running"));
    }

    #[test]
    fn pod_scheduling_gated() {
        let p = pod(
            json!({"containers": [{"name": "a"}]}),
            json!({"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]}),
        );
        assert_eq!(pod_summary(p).1, json!("SchedulingGated"));
    }

    fn init_pod(init_statuses: Value, extra_conditions: Value) -> Value {
        pod(
            json!({"initContainers": [{"name": "i0"}, {"name": "i1"}], "containers": [{"name": "a"}]}),
            json!({"phase": "Pending", "conditions": extra_conditions,
                   "initContainerStatuses": init_statuses,
                   "containerStatuses": [{"name": "a", "ready": false, "restartCount": 0,
                                          "state": {"waiting": {"reason": "PodInitializing"}}}]}),
        )
    }

    #[test]
    fn pod_init_container_states() {
        let done = json!({"name": "i0", "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}});
        let cases = [
            (
                json!([{"name": "i0", "restartCount": 0, "state": {"running": {}}}]),
                "Init:0/2",
            ),
            (
                json!([done.clone(), {"name": "i1", "restartCount": 0, "state": {"running": {}}}]),
                "Init:1/2",
            ),
            (
                json!([{"name": "i0", "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}}]),
                "Init:0/2",
            ),
            (
                json!([{"name": "i0", "restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff"}}}]),
                "Init:ImagePullBackOff",
            ),
            (
                json!([{"name": "i0", "restartCount": 0, "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]),
                "Init:Error",
            ),
            (
                json!([{"name": "i0", "restartCount": 0, "state": {"terminated": {"exitCode": 2}}}]),
                "Init:ExitCode:2",
            ),
            (
                json!([{"name": "i0", "restartCount": 0, "state": {"terminated": {"exitCode": 2, "signal": 15}}}]),
                "Init:Signal:15",
            ),
            // All init containers done: the app containers speak.
            (
                json!([done.clone(), {"name": "i1", "restartCount": 0, "state": {"terminated": {"exitCode": 0}}}]),
                "PodInitializing",
            ),
        ];
        for (statuses, want) in cases {
            let (ready, status, _) = pod_summary(init_pod(statuses.clone(), json!([])));
            assert_eq!(status, json!(want), "{statuses}");
            assert_eq!(ready, json!("0/1"));
        }
    }

    #[test]
    fn pod_init_restarts_count_only_while_initializing() {
        let failing = json!([{"name": "i0", "restartCount": 4,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(90)}}}]);
        assert_eq!(
            pod_summary(init_pod(failing.clone(), json!([]))),
            (
                json!("0/1"),
                json!("Init:CrashLoopBackOff"),
                json!("4 (90s ago)")
            )
        );
        // Once the pod reports Initialized, plain init container restarts no longer count.
        let (_, status, restarts) = pod_summary(init_pod(
            failing,
            json!([{"type": "Initialized", "status": "True"}]),
        ));
        assert_eq!(status, json!("PodInitializing"));
        assert_eq!(restarts, json!("0"));
    }

    #[test]
    fn pod_sidecar_init_container_counts_as_a_container() {
        let p = pod(
            json!({"initContainers": [{"name": "proxy", "restartPolicy": "Always"}],
                   "containers": [{"name": "a"}]}),
            json!({"phase": "Running",
                   "conditions": [{"type": "Initialized", "status": "True"}],
                   "initContainerStatuses": [{"name": "proxy", "ready": true, "started": true, "restartCount": 1,
                       "state": {"running": {}},
                       "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(45)}}}],
                   "containerStatuses": [running(true)]}),
        );
        assert_eq!(
            pod_summary(p),
            (json!("2/2"), json!("Running"), json!("1 (45s ago)"))
        );
    }

    #[test]
    fn pod_latest_restart_wins_across_containers() {
        let p = pod(
            two_containers(),
            json!({"phase": "Running", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 1, "state": {"running": {}},
                 "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(7200)}}},
                {"name": "b", "ready": true, "restartCount": 1, "state": {"running": {}},
                 "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(150)}}},
            ]}),
        );
        assert_eq!(
            pod_summary(p),
            (json!("2/2"), json!("Running"), json!("2 (2m30s ago)"))
        );
    }

    // --- Node ----------------------------------------------------------------

    #[test]
    fn node_ready_with_roles_and_wide_columns() {
        let n = json!({
            "metadata": {"name": "cp-1", "creationTimestamp": ago(52 * 3600),
                "labels": {"node-role.kubernetes.io/control-plane": "", "node-role.kubernetes.io/etcd": "",
                           "kubernetes.io/role": "master", "kubernetes.io/hostname": "cp-1"}},
            "spec": {},
            "status": {
                "conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}],
                "addresses": [{"type": "Hostname", "address": "cp-1"}, {"type": "InternalIP", "address": "192.168.1.10"},
                              {"type": "ExternalIP", "address": "203.0.113.10"}, {"type": "InternalIP", "address": "192.168.1.11"}],
                "nodeInfo": {"kubeletVersion": "v1.31.0-keelson", "osImage": "Debian GNU/Linux 12 (bookworm)",
                             "kernelVersion": "6.1.0-18-amd64", "containerRuntimeVersion": "keelson://0.1.0"},
            },
        });
        assert_eq!(
            cells("", "Node", n),
            vec![
                json!("cp-1"),
                json!("Ready"),
                json!("control-plane,etcd,master"),
                json!("2d4h"),
                json!("v1.31.0-keelson"),
                json!("192.168.1.10"),
                json!("203.0.113.10"),
                json!("Debian GNU/Linux 12 (bookworm)"),
                json!("6.1.0-18-amd64"),
                json!("keelson://0.1.0"),
            ]
        );
    }

    #[test]
    fn node_not_ready_cordoned_without_roles_or_info() {
        let n = json!({
            "metadata": {"name": "w-1", "creationTimestamp": ago(600), "labels": {"node-role.kubernetes.io/": "", "kubernetes.io/role": ""}},
            "spec": {"unschedulable": true},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]},
        });
        assert_eq!(
            cells("", "Node", n),
            vec![
                json!("w-1"),
                json!("NotReady,SchedulingDisabled"),
                json!("<none>"),
                json!("10m"),
                json!(""),
                json!("<none>"),
                json!("<none>"),
                json!("<unknown>"),
                json!("<unknown>"),
                json!("<unknown>"),
            ]
        );
        let bare = cells(
            "",
            "Node",
            json!({"metadata": {"name": "x"}, "spec": {"unschedulable": false}}),
        );
        assert_eq!(bare[1], json!("Unknown"));
    }

    #[test]
    fn node_last_ready_condition_wins() {
        let n = json!({"metadata": {"name": "n"}, "status": {"conditions": [
            {"type": "Ready", "status": "False"}, {"type": "Ready", "status": "True"}]}});
        assert_eq!(cells("", "Node", n)[1], json!("Ready"));
    }

    // --- Namespace, ConfigMap, Secret, ServiceAccount, Lease -----------------

    #[test]
    fn simple_core_kinds() {
        let ns = json!({"metadata": meta("kube-system", 90), "status": {"phase": "Active"}});
        assert_eq!(
            cells("", "Namespace", ns),
            vec![json!("kube-system"), json!("Active"), json!("90s")]
        );

        let cm = json!({"metadata": meta("cfg", 4000), "data": {"a": "1", "b": "2"}, "binaryData": {"c": "AA=="}});
        assert_eq!(
            cells("", "ConfigMap", cm),
            vec![json!("cfg"), json!(3), json!("66m")]
        );

        let secret = json!({"metadata": meta("tls", 60), "type": "kubernetes.io/tls", "data": {"tls.crt": "", "tls.key": ""}});
        assert_eq!(
            cells("", "Secret", secret),
            vec![
                json!("tls"),
                json!("kubernetes.io/tls"),
                json!(2),
                json!("60s")
            ]
        );

        let sa = json!({"metadata": meta("default", 86400 * 30), "secrets": [{"name": "t"}]});
        assert_eq!(
            cells("", "ServiceAccount", sa),
            vec![json!("default"), json!(1), json!("30d")]
        );
        let sa = json!({"metadata": meta("builder", 5)});
        assert_eq!(
            cells("", "ServiceAccount", sa),
            vec![json!("builder"), json!(0), json!("5s")]
        );

        let lease = json!({"metadata": meta("node-1", 3600), "spec": {"holderIdentity": "node-1", "leaseDurationSeconds": 40}});
        assert_eq!(
            cells("coordination.k8s.io", "Lease", lease),
            vec![json!("node-1"), json!("node-1"), json!("60m")]
        );
        let free = json!({"metadata": meta("kube-scheduler", 3600), "spec": {}});
        assert_eq!(cells("coordination.k8s.io", "Lease", free)[1], json!(""));
    }

    // --- Service -------------------------------------------------------------

    fn svc(spec: Value, status: Value) -> Value {
        json!({"metadata": meta("web", 7200), "spec": spec, "status": status})
    }

    #[test]
    fn service_cluster_ip() {
        let s = svc(
            json!({"type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                   "selector": {"tier": "fe", "app": "web"},
                   "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080},
                             {"port": 53, "protocol": "UDP"}]}),
            json!({}),
        );
        assert_eq!(
            cells("", "Service", s),
            vec![
                json!("web"),
                json!("ClusterIP"),
                json!("10.96.0.10"),
                json!("<none>"),
                json!("80/TCP,53/UDP"),
                json!("120m"),
                json!("app=web,tier=fe")
            ]
        );
    }

    #[test]
    fn service_node_port_and_external_ips() {
        let s = svc(
            json!({"type": "NodePort", "clusterIP": "10.96.5.5", "externalIPs": ["198.51.100.1", "198.51.100.2"],
                   "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 443, "nodePort": 30443}]}),
            json!({}),
        );
        let c = cells("", "Service", s);
        assert_eq!(
            c[1..5],
            [
                json!("NodePort"),
                json!("10.96.5.5"),
                json!("198.51.100.1,198.51.100.2"),
                json!("80:30080/TCP,443:30443/TCP")
            ]
        );
        assert_eq!(c[6], json!("<none>"));
    }

    #[test]
    fn service_load_balancer_states() {
        let spec = json!({"type": "LoadBalancer", "clusterIPs": ["10.96.1.1"], "ports": [{"port": 443, "nodePort": 31443, "protocol": "TCP"}]});
        let pending = cells(
            "",
            "Service",
            svc(spec.clone(), json!({"loadBalancer": {}})),
        );
        assert_eq!(
            pending[2..5],
            [
                json!("10.96.1.1"),
                json!("<pending>"),
                json!("443:31443/TCP")
            ]
        );

        let ingress = json!({"loadBalancer": {"ingress": [
            {"ip": "203.0.113.7"}, {"hostname": "lb.example.com"}, {"ip": "203.0.113.7", "hostname": "dup"}, {}]}});
        let ready = cells("", "Service", svc(spec.clone(), ingress.clone()));
        assert_eq!(ready[3], json!("203.0.113.7,lb.example.com"));

        let mut with_ext = spec.clone();
        with_ext["externalIPs"] = json!(["198.51.100.9"]);
        assert_eq!(
            cells("", "Service", svc(with_ext.clone(), ingress))[3],
            json!("203.0.113.7,lb.example.com,198.51.100.9")
        );
        assert_eq!(
            cells("", "Service", svc(with_ext, json!({})))[3],
            json!("198.51.100.9")
        );
    }

    #[test]
    fn service_external_name_headless_and_odd_types() {
        let ext = cells(
            "",
            "Service",
            svc(
                json!({"type": "ExternalName", "externalName": "db.example.com"}),
                json!({}),
            ),
        );
        assert_eq!(
            ext[1..5],
            [
                json!("ExternalName"),
                json!("<none>"),
                json!("db.example.com"),
                json!("<none>")
            ]
        );

        let headless = cells(
            "",
            "Service",
            svc(
                json!({"clusterIP": "None", "clusterIPs": ["None"], "selector": {"app": "db"}}),
                json!({}),
            ),
        );
        assert_eq!(
            headless[1..5],
            [
                json!("ClusterIP"),
                json!("None"),
                json!("<none>"),
                json!("<none>")
            ]
        );

        let odd = cells("", "Service", svc(json!({"type": "Weird"}), json!({})));
        assert_eq!(odd[3], json!("<unknown>"));
    }

    // --- Endpoints, EndpointSlice ----------------------------------------------

    #[test]
    fn endpoints_formatting() {
        let ep = |subsets: Value| {
            cells(
                "",
                "Endpoints",
                json!({"metadata": meta("web", 30), "subsets": subsets}),
            )[1]
            .clone()
        };
        assert_eq!(ep(json!([])), json!("<none>"));
        assert_eq!(ep(Value::Null), json!("<none>"));
        assert_eq!(
            ep(json!([{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}])),
            json!("10.0.0.1:80")
        );
        assert_eq!(
            ep(
                json!([{"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}],
                       "ports": [{"name": "http", "port": 80}, {"name": "https", "port": 443}]}])
            ),
            json!("10.0.0.1:80,10.0.0.2:80,10.0.0.1:443 + 1 more...")
        );
        assert_eq!(
            ep(
                json!([{"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}, {"ip": "10.0.0.3"}], "ports": [{"port": 80}]}])
            ),
            json!("10.0.0.1:80,10.0.0.2:80,10.0.0.3:80")
        );
        assert_eq!(
            ep(json!([{"addresses": [{"ip": "10.0.0.1"}]},
                      {"addresses": [{"ip": "fd00::1"}], "ports": [{"port": 8080}]}])),
            json!("10.0.0.1,[fd00::1]:8080")
        );
        // Only not-ready addresses: nothing to list.
        assert_eq!(
            ep(json!([{"notReadyAddresses": [{"ip": "10.0.0.1"}], "ports": [{"port": 80}]}])),
            json!("")
        );
    }

    #[test]
    fn endpoint_slice_formatting() {
        let slice = json!({
            "metadata": meta("web-abc12", 200),
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "metrics"}, {}, {"port": 9000}],
            "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2", "10.0.0.3"]}, {"addresses": ["10.0.0.4"]}],
        });
        assert_eq!(
            cells("discovery.k8s.io", "EndpointSlice", slice),
            vec![
                json!("web-abc12"),
                json!("IPv4"),
                json!("80,metrics,* + 1 more..."),
                json!("10.0.0.1,10.0.0.2,10.0.0.3 + 1 more..."),
                json!("3m20s")
            ]
        );
        let empty = json!({"metadata": meta("web-empty", 200), "addressType": "IPv6", "ports": null, "endpoints": []});
        assert_eq!(
            cells("discovery.k8s.io", "EndpointSlice", empty)[1..4],
            [json!("IPv6"), json!("<unset>"), json!("<unset>")]
        );
    }

    #[test]
    fn endpoint_slice_exactly_three_has_no_more_suffix() {
        let slice = json!({
            "metadata": meta("s", 1),
            "addressType": "IPv4",
            "ports": [{"port": 1}, {"port": 2}, {"port": 3}],
            "endpoints": [{"addresses": ["10.0.0.1", "10.0.0.2"]}, {"addresses": ["10.0.0.3"]}],
        });
        let c = cells("discovery.k8s.io", "EndpointSlice", slice);
        assert_eq!(
            c[2..4],
            [json!("1,2,3"), json!("10.0.0.1,10.0.0.2,10.0.0.3")]
        );
    }

    // --- Events --------------------------------------------------------------

    #[test]
    fn core_event() {
        let ev = json!({
            "metadata": meta("web-0.17c", 600),
            "involvedObject": {"kind": "Pod", "name": "web-0", "namespace": "default", "fieldPath": "spec.containers{web}"},
            "reason": "BackOff", "type": "Warning",
            "message": "Back-off restarting failed container\n",
            "source": {"component": "kubelet", "host": "node-1"},
            "firstTimestamp": ago(600), "lastTimestamp": ago(30), "count": 12,
        });
        assert_eq!(
            cells("", "Event", ev),
            vec![
                json!("30s"),
                json!("Warning"),
                json!("BackOff"),
                json!("pod/web-0"),
                json!("spec.containers{web}"),
                json!("kubelet, node-1"),
                json!("Back-off restarting failed container"),
                json!("10m"),
                json!(12),
                json!("web-0.17c")
            ]
        );
    }

    #[test]
    fn core_event_new_style_singleton_and_series() {
        let ev = json!({
            "metadata": meta("n.1", 60),
            "involvedObject": {"kind": "Node", "name": ""},
            "reason": "Starting", "type": "Normal", "message": "Starting kubelet.",
            "eventTime": "2024-05-01T11:58:00.123456Z",
            "reportingComponent": "kubelet", "reportingInstance": "node-1",
        });
        let c = cells("", "Event", ev.clone());
        assert_eq!(c[0], json!("119s"));
        assert_eq!(c[3], json!("node"));
        assert_eq!(c[5], json!("kubelet, node-1"));
        assert_eq!(c[7], json!("119s"));
        assert_eq!(c[8], json!(1));

        let mut series = ev;
        series["series"] = json!({"count": 4, "lastObservedTime": "2024-05-01T11:59:55.000000Z"});
        let c = cells("", "Event", series);
        assert_eq!(
            (c[0].clone(), c[7].clone(), c[8].clone()),
            (json!("5s"), json!("119s"), json!(4))
        );

        let nothing = cells("", "Event", json!({"metadata": {"name": "e"}}));
        assert_eq!(nothing[0], json!("<unknown>"));
        assert_eq!(nothing[7], json!("<unknown>"));
        assert_eq!(nothing[5], json!(""));
    }

    #[test]
    fn events_k8s_io_event() {
        let ev = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": meta("web.1", 300),
            "regarding": {"kind": "Deployment", "name": "web", "namespace": "default"},
            "reason": "ScalingReplicaSet", "type": "Normal", "action": "Scale",
            "note": "  Scaled up replica set web-7d9c to 3 ",
            "eventTime": ago(300),
            "reportingController": "deployment-controller", "reportingInstance": "",
            "deprecatedFirstTimestamp": ago(300), "deprecatedLastTimestamp": ago(100), "deprecatedCount": 2,
        });
        assert_eq!(
            cells("events.k8s.io", "Event", ev),
            vec![
                json!("100s"),
                json!("Normal"),
                json!("ScalingReplicaSet"),
                json!("deployment/web"),
                json!(""),
                json!("deployment-controller"),
                json!("Scaled up replica set web-7d9c to 3"),
                json!("5m"),
                json!(2),
                json!("web.1")
            ]
        );
    }

    // --- apps ----------------------------------------------------------------

    fn template() -> Value {
        json!({"metadata": {"labels": {"app": "web"}},
               "spec": {"nodeSelector": {"kubernetes.io/os": "linux", "disk": "ssd"},
                        "containers": [{"name": "web", "image": "nginx:1.27"}, {"name": "log", "image": "busybox"}]}})
    }

    #[test]
    fn deployment() {
        let d = json!({
            "metadata": meta("web", 86400 * 10),
            "spec": {"replicas": 3, "template": template(),
                     "selector": {"matchLabels": {"app": "web"},
                                  "matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe", "be"]},
                                                       {"key": "canary", "operator": "DoesNotExist"},
                                                       {"key": "env", "operator": "NotIn", "values": ["dev"]},
                                                       {"key": "zone", "operator": "Exists"}]}},
            "status": {"replicas": 3, "updatedReplicas": 3, "readyReplicas": 2, "availableReplicas": 2},
        });
        assert_eq!(
            cells("apps", "Deployment", d),
            vec![
                json!("web"),
                json!("2/3"),
                json!(3),
                json!(2),
                json!("10d"),
                json!("web,log"),
                json!("nginx:1.27,busybox"),
                json!("app=web,!canary,env notin (dev),tier in (be,fe),zone")
            ]
        );
        let fresh = cells(
            "apps",
            "Deployment",
            json!({"metadata": meta("new", 1), "spec": {"selector": {}}}),
        );
        assert_eq!(fresh[1..4], [json!("0/0"), json!(0), json!(0)]);
        assert_eq!(fresh[5..], [json!(""), json!(""), json!("")]);
        let bad = cells(
            "apps",
            "Deployment",
            json!({"metadata": meta("bad", 1),
            "spec": {"selector": {"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}}}),
        );
        assert_eq!(bad[7], json!("<invalid>"));
    }

    #[test]
    fn replica_set() {
        let rs = json!({
            "metadata": meta("web-7d9c", 3600 * 5),
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web", "pod-template-hash": "7d9c"}}, "template": template()},
            "status": {"replicas": 3, "readyReplicas": 1},
        });
        assert_eq!(
            cells("apps", "ReplicaSet", rs),
            vec![
                json!("web-7d9c"),
                json!(3),
                json!(3),
                json!(1),
                json!("5h"),
                json!("web,log"),
                json!("nginx:1.27,busybox"),
                json!("app=web,pod-template-hash=7d9c")
            ]
        );
        let empty = cells(
            "apps",
            "ReplicaSet",
            json!({"metadata": meta("x", 1), "spec": {"selector": {}}}),
        );
        assert_eq!(empty[7], json!("<none>"));
        let bad = cells(
            "apps",
            "ReplicaSet",
            json!({"metadata": meta("x", 1),
            "spec": {"selector": {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}}}),
        );
        assert_eq!(bad[7], json!("<error>"));
    }

    #[test]
    fn daemon_set() {
        let ds = json!({
            "metadata": meta("kube-proxy", 86400 * 400),
            "spec": {"selector": {"matchLabels": {"k8s-app": "kube-proxy"}}, "template": template()},
            "status": {"desiredNumberScheduled": 3, "currentNumberScheduled": 3, "numberReady": 2,
                       "updatedNumberScheduled": 1, "numberAvailable": 2},
        });
        assert_eq!(
            cells("apps", "DaemonSet", ds),
            vec![
                json!("kube-proxy"),
                json!(3),
                json!(3),
                json!(2),
                json!(1),
                json!(2),
                json!("disk=ssd,kubernetes.io/os=linux"),
                json!("400d"),
                json!("web,log"),
                json!("nginx:1.27,busybox"),
                json!("k8s-app=kube-proxy")
            ]
        );
        let bare = cells("apps", "DaemonSet", json!({"metadata": meta("x", 1)}));
        assert_eq!(bare[6], json!("<none>"));
    }

    #[test]
    fn labels_sort_as_pairs_not_keys() {
        // "a.b=1" sorts before "a=1" because '.' < '='.
        assert_eq!(
            format_labels(J(Some(&json!({"a": "1", "a.b": "1"})))),
            "a.b=1,a=1"
        );
    }

    #[test]
    fn stateful_set() {
        let sts = json!({
            "metadata": meta("db", 3600 * 24 * 3 + 3600 * 4),
            "spec": {"replicas": 3, "serviceName": "db", "template": template()},
            "status": {"replicas": 3, "readyReplicas": 3},
        });
        assert_eq!(
            cells("apps", "StatefulSet", sts),
            vec![
                json!("db"),
                json!("3/3"),
                json!("3d4h"),
                json!("web,log"),
                json!("nginx:1.27,busybox")
            ]
        );
    }

    #[test]
    fn controller_revision() {
        let owner = |api_version: &str, kind: &str| {
            json!({"metadata": {"name": "web-6b8f", "creationTimestamp": ago(86400 * 3),
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "not-controller"},
                    {"apiVersion": api_version, "kind": kind, "name": "web", "controller": true}]},
                "revision": 2, "data": {}})
        };
        assert_eq!(
            cells(
                "apps",
                "ControllerRevision",
                owner("apps/v1", "StatefulSet")
            ),
            vec![
                json!("web-6b8f"),
                json!("statefulset.apps/web"),
                json!(2),
                json!("3d")
            ]
        );
        assert_eq!(
            cells("apps", "ControllerRevision", owner("v1", "Pod"))[1],
            json!("pod/web")
        );
        assert_eq!(
            cells("apps", "ControllerRevision", owner("a/b/c", "X"))[1],
            json!("<invalid>")
        );
        let orphan = json!({"metadata": meta("rev", 5), "revision": 1});
        assert_eq!(
            cells("apps", "ControllerRevision", orphan)[1],
            json!("<none>")
        );
    }

    // --- Fallback and odd input --------------------------------------------------

    #[test]
    fn unknown_kind_gets_name_and_age() {
        let obj =
            json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": meta("w", 45)});
        assert_eq!(
            cells("example.com", "Widget", obj),
            vec![json!("w"), json!("45s")]
        );
    }

    #[test]
    fn odd_input_never_panics_and_keeps_one_cell_per_column() {
        let kinds = [
            ("", "Pod"),
            ("", "Node"),
            ("", "Namespace"),
            ("", "Service"),
            ("", "Endpoints"),
            ("discovery.k8s.io", "EndpointSlice"),
            ("", "ConfigMap"),
            ("", "Secret"),
            ("", "ServiceAccount"),
            ("", "Event"),
            ("events.k8s.io", "Event"),
            ("coordination.k8s.io", "Lease"),
            ("apps", "Deployment"),
            ("apps", "ReplicaSet"),
            ("apps", "DaemonSet"),
            ("apps", "StatefulSet"),
            ("apps", "ControllerRevision"),
            ("x", "Y"),
        ];
        let odd = [
            Value::Null,
            json!("string"),
            json!([1, 2]),
            json!({}),
            json!({"metadata": "nope", "spec": 7, "status": [true]}),
            json!({
                "metadata": {"name": 5, "creationTimestamp": false, "labels": [1], "deletionTimestamp": {},
                             "ownerReferences": {"controller": true}},
                "spec": {"containers": "a", "initContainers": [null, 3], "ports": [null, {"port": "80", "nodePort": -1}],
                         "selector": {"matchLabels": {"a": 1}}, "readinessGates": [7], "type": 3,
                         "template": {"spec": {"containers": [7]}}, "replicas": 1.5e300, "externalIPs": [1]},
                "status": {"conditions": [null], "containerStatuses": [null, {"restartCount": 18446744073709551615u64,
                           "state": {"terminated": "x", "waiting": {"reason": 1}},
                           "lastState": {"terminated": {"finishedAt": "garbage"}}}],
                           "initContainerStatuses": [{"state": null}], "podIPs": "x", "addresses": [3],
                           "loadBalancer": {"ingress": "x"}},
                "subsets": [{"addresses": [null], "ports": [null]}],
                "endpoints": [{"addresses": [1]}], "data": "x", "series": {"count": "3"},
                "involvedObject": 3,
            }),
        ];
        for (group, kind) in kinds {
            let t = render(group, kind, &odd, json!(["not", "an", "object"]), now());
            let columns = t["columnDefinitions"].as_array().unwrap().len();
            let rows = t["rows"].as_array().unwrap();
            assert_eq!(rows.len(), odd.len());
            for row in rows {
                assert_eq!(
                    row["cells"].as_array().unwrap().len(),
                    columns,
                    "{group}/{kind}"
                );
                assert_eq!(row["object"]["kind"], "PartialObjectMetadata");
                assert!(row["object"]["metadata"].is_object());
            }
        }
    }

    #[test]
    fn odd_pod_values_read_as_zero_values() {
        let p = json!({"metadata": {"name": "p", "deletionTimestamp": null},
            "spec": {"containers": [{"name": "a"}]},
            "status": {"phase": "Running", "containerStatuses": [{"name": "a", "ready": "yes",
                "restartCount": "9", "state": {"running": {}}}]}});
        assert_eq!(pod_summary(p), (json!("0/1"), json!("Running"), json!("0")));
    }
}
