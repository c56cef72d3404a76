//! Strategic-merge-patch metadata for the built-in types we serve.
//!
//! Kubernetes carries this metadata as Go struct tags (`patchStrategy`,
//! `patchMergeKey`) and publishes it as the OpenAPI extensions
//! `x-kubernetes-patch-strategy` / `x-kubernetes-patch-merge-key`. We keep a
//! compact static description of the type graph instead: for every type on
//! the way from a resource's root to a list, the fields that lead further
//! down, and for every list its strategy.
//!
//! A type lists only the fields that matter for patching: objects that contain
//! lists, and lists. A field that is not listed is *undescribed*: objects merge
//! key by key and lists are replaced wholesale, which is what an unannotated
//! field does in Kubernetes too (see `patch.rs` for how undescribed lists that
//! carry merge directives are handled). Every strategy below was checked
//! against the tags in k8s.io/api {core,apps,batch}/v1/types.go and
//! k8s.io/apimachinery/pkg/apis/meta/v1/types.go.
//!
//! `$retainKeys` is honoured wherever a patch carries it (as the apiserver
//! does); the `retain_keys` flags here record the upstream strategy for
//! completeness and for anyone generating patches.

use std::fmt;

/// How a list field is patched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// No `patchStrategy` (or `replace`): the patch's list replaces the
    /// stored one wholesale.
    Replace,
    /// `patchStrategy:"merge"` on a list of primitives: merged as a set
    /// (e.g. `metadata.finalizers`).
    MergeSet,
    /// `patchStrategy:"merge"` with `patchMergeKey`: objects are merged
    /// element by element, matched on the key.
    MergeByKey(&'static str),
}

/// One described type (a Go struct).
#[derive(Debug)]
pub struct TypeDesc {
    pub name: &'static str,
    pub fields: &'static [FieldDesc],
}

/// One described field of a [`TypeDesc`].
#[derive(Debug)]
pub struct FieldDesc {
    /// The JSON field name.
    pub name: &'static str,
    pub kind: FieldKind,
}

#[derive(Debug)]
pub enum FieldKind {
    /// A nested object. `retain_keys` is `patchStrategy:"retainKeys"`.
    Object {
        ty: &'static TypeDesc,
        retain_keys: bool,
    },
    /// A list. `elem` describes the elements when they are objects worth
    /// describing; `retain_keys` is the `retainKeys` half of
    /// `patchStrategy:"merge,retainKeys"`.
    List {
        strategy: ListStrategy,
        elem: Option<&'static TypeDesc>,
        retain_keys: bool,
    },
}

impl FieldDesc {
    /// A nested object.
    pub const fn object(name: &'static str, ty: &'static TypeDesc) -> Self {
        FieldDesc {
            name,
            kind: FieldKind::Object {
                ty,
                retain_keys: false,
            },
        }
    }
    /// A nested object with `patchStrategy:"retainKeys"`.
    pub const fn object_retain_keys(name: &'static str, ty: &'static TypeDesc) -> Self {
        FieldDesc {
            name,
            kind: FieldKind::Object {
                ty,
                retain_keys: true,
            },
        }
    }
    /// A list without a patch strategy: replaced wholesale.
    pub const fn atomic(name: &'static str) -> Self {
        FieldDesc {
            name,
            kind: FieldKind::List {
                strategy: ListStrategy::Replace,
                elem: None,
                retain_keys: false,
            },
        }
    }
    /// A list of primitives with `patchStrategy:"merge"`.
    pub const fn set(name: &'static str) -> Self {
        FieldDesc {
            name,
            kind: FieldKind::List {
                strategy: ListStrategy::MergeSet,
                elem: None,
                retain_keys: false,
            },
        }
    }
    /// A list of objects with `patchStrategy:"merge"` and `patchMergeKey:key`.
    pub const fn keyed(
        name: &'static str,
        key: &'static str,
        elem: Option<&'static TypeDesc>,
    ) -> Self {
        FieldDesc {
            name,
            kind: FieldKind::List {
                strategy: ListStrategy::MergeByKey(key),
                elem,
                retain_keys: false,
            },
        }
    }
    /// A list of objects with `patchStrategy:"merge,retainKeys"`.
    pub const fn keyed_retain_keys(
        name: &'static str,
        key: &'static str,
        elem: Option<&'static TypeDesc>,
    ) -> Self {
        FieldDesc {
            name,
            kind: FieldKind::List {
                strategy: ListStrategy::MergeByKey(key),
                elem,
                retain_keys: true,
            },
        }
    }
}

/// A node of the static type graph, or "unknown" (no metadata: objects
/// merge, lists are replaced).
#[derive(Clone, Copy)]
pub struct SchemaRef(Option<&'static TypeDesc>);

impl fmt::Debug for SchemaRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SchemaRef({})", self.type_name())
    }
}

/// What the schema says about one field of an object.
#[derive(Debug, Clone, Copy)]
pub struct FieldMeta {
    /// The field appears in the type's description. Undescribed fields of
    /// described types, and every field of an unknown type, are `false`.
    pub described: bool,
    /// The strategy if the field holds a list.
    pub list: ListStrategy,
    /// `retainKeys` is part of the field's strategy.
    pub retain_keys: bool,
    /// The field's own type (objects) or its element type (lists).
    pub schema: SchemaRef,
}

impl SchemaRef {
    /// No metadata.
    pub const UNKNOWN: SchemaRef = SchemaRef(None);

    pub const fn new(ty: &'static TypeDesc) -> Self {
        SchemaRef(Some(ty))
    }

    /// Whether this is a described type (false for [`SchemaRef::UNKNOWN`]).
    pub fn is_known(self) -> bool {
        self.0.is_some()
    }

    pub fn type_name(self) -> &'static str {
        self.0.map_or("unknown", |t| t.name)
    }

    /// The metadata of field `name` of this type.
    pub fn field(self, name: &str) -> FieldMeta {
        let undescribed = FieldMeta {
            described: false,
            list: ListStrategy::Replace,
            retain_keys: false,
            schema: SchemaRef::UNKNOWN,
        };
        let Some(desc) = self
            .0
            .and_then(|t| t.fields.iter().find(|f| f.name == name))
        else {
            return undescribed;
        };
        match desc.kind {
            FieldKind::Object { ty, retain_keys } => FieldMeta {
                described: true,
                list: ListStrategy::Replace,
                retain_keys,
                schema: SchemaRef::new(ty),
            },
            FieldKind::List {
                strategy,
                elem,
                retain_keys,
            } => FieldMeta {
                described: true,
                list: strategy,
                retain_keys,
                schema: SchemaRef(elem),
            },
        }
    }
}

/// The patch schema of a served kind, by API group ("" for core) and kind.
/// Unknown kinds (custom resources) get [`SchemaRef::UNKNOWN`]; note that
/// Kubernetes refuses strategic merge patches for custom resources (415), a
/// decision left to the caller.
pub fn schema_for_kind(group: &str, kind: &str) -> SchemaRef {
    let ty: &'static TypeDesc = match (group, kind) {
        ("", "Pod") => &POD,
        ("", "PodTemplate") => &POD_TEMPLATE,
        ("", "ReplicationController") => &REPLICATION_CONTROLLER,
        ("", "Service") => &SERVICE,
        ("", "Endpoints") => &ENDPOINTS,
        ("", "Node") => &NODE,
        ("", "Namespace") => &NAMESPACE,
        ("", "ConfigMap") => &CONFIG_MAP,
        ("", "Secret") => &SECRET,
        ("", "ServiceAccount") => &SERVICE_ACCOUNT,
        ("", "Event") => &CORE_EVENT,
        ("", "PersistentVolumeClaim") => &PERSISTENT_VOLUME_CLAIM,
        ("apps", "Deployment") => &DEPLOYMENT,
        ("apps", "ReplicaSet") => &REPLICA_SET,
        ("apps", "DaemonSet") => &DAEMON_SET,
        ("apps", "StatefulSet") => &STATEFUL_SET,
        ("apps", "ControllerRevision") => &CONTROLLER_REVISION,
        ("autoscaling", "Scale") => &SCALE,
        ("batch", "Job") => &JOB,
        ("batch", "CronJob") => &CRON_JOB,
        ("coordination.k8s.io", "Lease") => &LEASE,
        ("discovery.k8s.io", "EndpointSlice") => &ENDPOINT_SLICE,
        ("events.k8s.io", "Event") => &EVENTS_EVENT,
        _ => return SchemaRef::UNKNOWN,
    };
    SchemaRef::new(ty)
}

// ---- meta/v1 ----

pub static OBJECT_META: TypeDesc = TypeDesc {
    name: "ObjectMeta",
    fields: &[
        FieldDesc::set("finalizers"),
        FieldDesc::keyed("ownerReferences", "uid", None),
        FieldDesc::atomic("managedFields"),
    ],
};

const META_ONLY_FIELDS: &[FieldDesc] = &[FieldDesc::object("metadata", &OBJECT_META)];
const CONDITIONS_FIELDS: &[FieldDesc] = &[FieldDesc::keyed("conditions", "type", None)];
const TEMPLATE_FIELDS: &[FieldDesc] = &[FieldDesc::object("template", &POD_TEMPLATE_SPEC)];

/// A kind whose only patch-relevant part is its metadata.
const fn meta_only(name: &'static str) -> TypeDesc {
    TypeDesc {
        name,
        fields: META_ONLY_FIELDS,
    }
}

/// A status type whose only list is `conditions`, merged by `type`.
const fn conditions_status(name: &'static str) -> TypeDesc {
    TypeDesc {
        name,
        fields: CONDITIONS_FIELDS,
    }
}

// ---- core/v1: pods ----

/// The list fields of Container, shared with EphemeralContainer, which
/// inlines EphemeralContainerCommon whose list fields carry the same tags.
const CONTAINER_FIELDS: &[FieldDesc] = &[
    FieldDesc::atomic("command"),
    FieldDesc::atomic("args"),
    FieldDesc::keyed("ports", "containerPort", None),
    FieldDesc::atomic("envFrom"),
    FieldDesc::keyed("env", "name", None),
    FieldDesc::atomic("resizePolicy"),
    FieldDesc::atomic("restartPolicyRules"),
    FieldDesc::keyed("volumeMounts", "mountPath", None),
    FieldDesc::keyed("volumeDevices", "devicePath", None),
];

pub static CONTAINER: TypeDesc = TypeDesc {
    name: "Container",
    fields: CONTAINER_FIELDS,
};
pub static EPHEMERAL_CONTAINER: TypeDesc = TypeDesc {
    name: "EphemeralContainer",
    fields: CONTAINER_FIELDS,
};

pub static POD_SPEC: TypeDesc = TypeDesc {
    name: "PodSpec",
    fields: &[
        FieldDesc::keyed_retain_keys("volumes", "name", None),
        FieldDesc::keyed("initContainers", "name", Some(&CONTAINER)),
        FieldDesc::keyed("containers", "name", Some(&CONTAINER)),
        FieldDesc::keyed("ephemeralContainers", "name", Some(&EPHEMERAL_CONTAINER)),
        FieldDesc::keyed("imagePullSecrets", "name", None),
        FieldDesc::atomic("tolerations"),
        FieldDesc::keyed("hostAliases", "ip", None),
        FieldDesc::atomic("readinessGates"),
        FieldDesc::keyed("topologySpreadConstraints", "topologyKey", None),
        FieldDesc::keyed("schedulingGates", "name", None),
        FieldDesc::keyed_retain_keys("resourceClaims", "name", None),
        FieldDesc::keyed("evictionResponders", "name", None),
    ],
};

pub static POD_TEMPLATE_SPEC: TypeDesc = TypeDesc {
    name: "PodTemplateSpec",
    fields: &[
        FieldDesc::object("metadata", &OBJECT_META),
        FieldDesc::object("spec", &POD_SPEC),
    ],
};

pub static NODE_ALLOCATABLE_RESOURCE_CLAIM_STATUS: TypeDesc = TypeDesc {
    name: "NodeAllocatableResourceClaimStatus",
    fields: &[
        FieldDesc::keyed("mapping", "name", None),
        FieldDesc::keyed("overhead", "name", None),
    ],
};

pub static POD_STATUS: TypeDesc = TypeDesc {
    name: "PodStatus",
    fields: &[
        FieldDesc::keyed("conditions", "type", None),
        FieldDesc::keyed("hostIPs", "ip", None),
        FieldDesc::keyed("podIPs", "ip", None),
        FieldDesc::atomic("initContainerStatuses"),
        FieldDesc::atomic("containerStatuses"),
        FieldDesc::atomic("ephemeralContainerStatuses"),
        FieldDesc::keyed_retain_keys("resourceClaimStatuses", "name", None),
        FieldDesc::keyed(
            "nodeAllocatableResourceClaimStatuses",
            "resourceClaimName",
            Some(&NODE_ALLOCATABLE_RESOURCE_CLAIM_STATUS),
        ),
        FieldDesc::atomic("volumeHealth"),
    ],
};

pub static POD: TypeDesc = TypeDesc {
    name: "Pod",
    fields: &[
        FieldDesc::object("metadata", &OBJECT_META),
        FieldDesc::object("spec", &POD_SPEC),
        FieldDesc::object("status", &POD_STATUS),
    ],
};

pub static POD_TEMPLATE: TypeDesc = TypeDesc {
    name: "PodTemplate",
    fields: &[
        FieldDesc::object("metadata", &OBJECT_META),
        FieldDesc::object("template", &POD_TEMPLATE_SPEC),
    ],
};

/// A spec type whose only patch-relevant field is the pod template.
const fn template_spec(name: &'static str) -> TypeDesc {
    TypeDesc {
        name,
        fields: TEMPLATE_FIELDS,
    }
}

static REPLICATION_CONTROLLER_SPEC: TypeDesc = template_spec("ReplicationControllerSpec");
static REPLICATION_CONTROLLER_STATUS: TypeDesc = conditions_status("ReplicationControllerStatus");
pub static REPLICATION_CONTROLLER: TypeDesc = TypeDesc {
    name: "ReplicationController",
    fields: &[
        FieldDesc::object("metadata", &OBJECT_META),
        FieldDesc::object("spec", &REPLICATION_CONTROLLER_SPEC),
        FieldDesc::object("status", &REPLICATION_CONTROLLER_STATUS),
    ],
};

// ---- core/v1: services, endpoints ----

static SERVICE_SPEC: TypeDesc = TypeDesc {
    name: "ServiceSpec",
    fields: &[
        FieldDesc::keyed("ports", "port", None),
        FieldDesc::atomic("clusterIPs"),
        FieldDesc::atomic("externalIPs"),
        FieldDesc::atomic("loadBalancerSourceRanges"),
        FieldDesc::atomic("ipFamilies"),
    ],
};
static SERVICE_STATUS: TypeDesc = conditions_status("ServiceStatus");
pub static SERVICE: TypeDesc = TypeDesc {
    name: "Service",
    fields: &[
        FieldDesc::object("metadata", &OBJECT_META),
        FieldDesc::object("spec", &SERVICE_SPEC),
        FieldDesc::object("status", &SERVICE_STATUS),
    ],
};

pub static ENDPOINTS: TypeDesc = TypeDesc {
    name: "Endpoints",
    fields: &[
        FieldDesc::object("metadata", &OBJECT_META),
        FieldDesc::atomic("subsets"),
    ],
};

pub static SERVICE_ACCOUNT: TypeDesc = TypeDesc {
    name: "ServiceAccount",
    fields: &[
        FieldDesc::object("metadata", &OBJECT_META),
        FieldDesc::keyed("secrets", "name", None),
        FieldDesc::atomic("imagePullSecrets"),
    ],
};

// ---- core/v1: nodes, namespaces, volumes ----

static NODE_SPEC: TypeDesc = TypeDesc {
    name: "NodeSpec",
    fields: &[FieldDesc::set("podCIDRs"), FieldDesc::atomic("taints")],
};
static NODE_STATUS: TypeDesc = TypeDesc {
    name: "NodeStatus",
    fields: &[
        FieldDesc::keyed("conditions", "type", None),
        FieldDesc::keyed("addresses", "type", None),
        FieldDesc::atomic("images"),
        FieldDesc::atomic("volumesInUse"),
        FieldDesc::atomic("volumesAttached"),
        FieldDesc::atomic("runtimeHandlers"),
        FieldDesc::atomic("declaredFeatures"),
    ],
};
pub static NODE: TypeDesc = TypeDesc {
    name: "Node",
    fields: &[
        FieldDesc::object("metadata", &OBJECT_META),
        FieldDesc::object("spec", &NODE_SPEC),
        FieldDesc::object("status", &NODE_STATUS),
    ],
};

static NAMESPACE_SPEC: TypeDesc = TypeDesc {
    name: "NamespaceSpec",
    fields: &[FieldDesc::atomic("finalizers")],
};
static NAMESPACE_STATUS: TypeDesc = conditions_status("NamespaceStatus");
pub static NAMESPACE: TypeDesc = TypeDesc {
    name: "Namespace",
    fields: &[
        FieldDesc::object("metadata", &OBJECT_META),
        FieldDesc::object("spec", &NAMESPACE_SPEC),
        FieldDesc::object("status", &NAMESPACE_STATUS),
    ],
};

static PERSISTENT_VOLUME_CLAIM_SPEC: TypeDesc = TypeDesc {
    name: "PersistentVolumeClaimSpec",
    fields: &[FieldDesc::atomic("accessModes")],
};
static PERSISTENT_VOLUME_CLAIM_STATUS: TypeDesc = TypeDesc {
    name: "PersistentVolumeClaimStatus",
    fields: &[
        FieldDesc::atomic("accessModes"),
        FieldDesc::keyed("conditions", "type", None),
    ],
};
pub static PERSISTENT_VOLUME_CLAIM: TypeDesc = TypeDesc {
    name: "PersistentVolumeClaim",
    fields: &[
        FieldDesc::object("metadata", &OBJECT_META),
        FieldDesc::object("spec", &PERSISTENT_VOLUME_CLAIM_SPEC),
        FieldDesc::object("status", &PERSISTENT_VOLUME_CLAIM_STATUS),
    ],
};

// ---- core/v1 and friends: metadata-only kinds ----

pub static CONFIG_MAP: TypeDesc = meta_only("ConfigMap");
pub static SECRET: TypeDesc = meta_only("Secret");
pub static CORE_EVENT: TypeDesc = meta_only("Event");
pub static EVENTS_EVENT: TypeDesc = meta_only("events.k8s.io/Event");
pub static LEASE: TypeDesc = meta_only("Lease");
pub static CONTROLLER_REVISION: TypeDesc = meta_only("ControllerRevision");
pub static SCALE: TypeDesc = meta_only("Scale");

pub static ENDPOINT_SLICE: TypeDesc = TypeDesc {
    name: "EndpointSlice",
    fields: &[
        FieldDesc::object("metadata", &OBJECT_META),
        FieldDesc::atomic("endpoints"),
        FieldDesc::atomic("ports"),
    ],
};

// ---- apps/v1 ----

/// DeploymentStrategy: `type` plus the `rollingUpdate` union member.
static DEPLOYMENT_STRATEGY: TypeDesc = TypeDesc {
    name: "DeploymentStrategy",
    fields: &[],
};
static DEPLOYMENT_SPEC: TypeDesc = TypeDesc {
    name: "DeploymentSpec",
    fields: &[
        FieldDesc::object("template", &POD_TEMPLATE_SPEC),
        FieldDesc::object_retain_keys("strategy", &DEPLOYMENT_STRATEGY),
    ],
};
static DEPLOYMENT_STATUS: TypeDesc = conditions_status("DeploymentStatus");
pub static DEPLOYMENT: TypeDesc = TypeDesc {
    name: "Deployment",
    fields: &[
        FieldDesc::object("metadata", &OBJECT_META),
        FieldDesc::object("spec", &DEPLOYMENT_SPEC),
        FieldDesc::object("status", &DEPLOYMENT_STATUS),
    ],
};

static REPLICA_SET_SPEC: TypeDesc = template_spec("ReplicaSetSpec");
static REPLICA_SET_STATUS: TypeDesc = conditions_status("ReplicaSetStatus");
pub static REPLICA_SET: TypeDesc = TypeDesc {
    name: "ReplicaSet",
    fields: &[
        FieldDesc::object("metadata", &OBJECT_META),
        FieldDesc::object("spec", &REPLICA_SET_SPEC),
        FieldDesc::object("status", &REPLICA_SET_STATUS),
    ],
};

static DAEMON_SET_SPEC: TypeDesc = template_spec("DaemonSetSpec");
static DAEMON_SET_STATUS: TypeDesc = conditions_status("DaemonSetStatus");
pub static DAEMON_SET: TypeDesc = TypeDesc {
    name: "DaemonSet",
    fields: &[
        FieldDesc::object("metadata", &OBJECT_META),
        FieldDesc::object("spec", &DAEMON_SET_SPEC),
        FieldDesc::object("status", &DAEMON_SET_STATUS),
    ],
};

static STATEFUL_SET_SPEC: TypeDesc = TypeDesc {
    name: "StatefulSetSpec",
    fields: &[
        FieldDesc::object("template", &POD_TEMPLATE_SPEC),
        FieldDesc::atomic("volumeClaimTemplates"),
    ],
};
static STATEFUL_SET_STATUS: TypeDesc = conditions_status("StatefulSetStatus");
pub static STATEFUL_SET: TypeDesc = TypeDesc {
    name: "StatefulSet",
    fields: &[
        FieldDesc::object("metadata", &OBJECT_META),
        FieldDesc::object("spec", &STATEFUL_SET_SPEC),
        FieldDesc::object("status", &STATEFUL_SET_STATUS),
    ],
};

// ---- batch/v1 ----

static JOB_SCHEDULING_CONFIGURATION: TypeDesc = TypeDesc {
    name: "JobSchedulingConfiguration",
    fields: &[FieldDesc::keyed("resourceClaims", "name", None)],
};
static JOB_SPEC: TypeDesc = TypeDesc {
    name: "JobSpec",
    fields: &[
        FieldDesc::object("template", &POD_TEMPLATE_SPEC),
        FieldDesc::object("scheduling", &JOB_SCHEDULING_CONFIGURATION),
    ],
};
static JOB_STATUS: TypeDesc = conditions_status("JobStatus");
pub static JOB: TypeDesc = TypeDesc {
    name: "Job",
    fields: &[
        FieldDesc::object("metadata", &OBJECT_META),
        FieldDesc::object("spec", &JOB_SPEC),
        FieldDesc::object("status", &JOB_STATUS),
    ],
};

static JOB_TEMPLATE_SPEC: TypeDesc = TypeDesc {
    name: "JobTemplateSpec",
    fields: &[
        FieldDesc::object("metadata", &OBJECT_META),
        FieldDesc::object("spec", &JOB_SPEC),
    ],
};
static CRON_JOB_SPEC: TypeDesc = TypeDesc {
    name: "CronJobSpec",
    fields: &[FieldDesc::object("jobTemplate", &JOB_TEMPLATE_SPEC)],
};
pub static CRON_JOB: TypeDesc = TypeDesc {
    name: "CronJob",
    fields: &[
        FieldDesc::object("metadata", &OBJECT_META),
        FieldDesc::object("spec", &CRON_JOB_SPEC),
    ],
};

#[cfg(test)]
mod tests {
    use super::*;

    /// Follow a dotted path of field names from a kind's root.
    fn meta_at(group: &str, kind: &str, path: &str) -> FieldMeta {
        let (parents, last) = path.rsplit_once('.').unwrap_or(("", path));
        let mut schema = schema_for_kind(group, kind);
        for part in parents.split('.').filter(|p| !p.is_empty()) {
            let meta = schema.field(part);
            assert!(meta.described, "{kind}: {part} of {path} is not described");
            schema = meta.schema;
        }
        schema.field(last)
    }

    #[test]
    fn list_strategies_match_upstream_tags() {
        use ListStrategy::*;
        let cases: &[(&str, &str, &str, ListStrategy)] = &[
            ("", "Pod", "metadata.finalizers", MergeSet),
            ("", "Pod", "metadata.ownerReferences", MergeByKey("uid")),
            ("", "Pod", "metadata.managedFields", Replace),
            ("", "Pod", "spec.containers", MergeByKey("name")),
            ("", "Pod", "spec.initContainers", MergeByKey("name")),
            ("", "Pod", "spec.ephemeralContainers", MergeByKey("name")),
            (
                "",
                "Pod",
                "spec.ephemeralContainers.env",
                MergeByKey("name"),
            ),
            ("", "Pod", "spec.volumes", MergeByKey("name")),
            ("", "Pod", "spec.imagePullSecrets", MergeByKey("name")),
            ("", "Pod", "spec.hostAliases", MergeByKey("ip")),
            ("", "Pod", "spec.tolerations", Replace),
            (
                "",
                "Pod",
                "spec.topologySpreadConstraints",
                MergeByKey("topologyKey"),
            ),
            ("", "Pod", "spec.resourceClaims", MergeByKey("name")),
            ("", "Pod", "spec.schedulingGates", MergeByKey("name")),
            ("", "Pod", "spec.readinessGates", Replace),
            (
                "",
                "Pod",
                "spec.containers.ports",
                MergeByKey("containerPort"),
            ),
            ("", "Pod", "spec.containers.env", MergeByKey("name")),
            (
                "",
                "Pod",
                "spec.containers.volumeMounts",
                MergeByKey("mountPath"),
            ),
            (
                "",
                "Pod",
                "spec.containers.volumeDevices",
                MergeByKey("devicePath"),
            ),
            ("", "Pod", "spec.containers.resizePolicy", Replace),
            ("", "Pod", "spec.containers.args", Replace),
            ("", "Pod", "status.conditions", MergeByKey("type")),
            ("", "Pod", "status.podIPs", MergeByKey("ip")),
            ("", "Pod", "status.hostIPs", MergeByKey("ip")),
            ("", "Pod", "status.containerStatuses", Replace),
            ("", "Service", "spec.ports", MergeByKey("port")),
            ("", "Service", "status.conditions", MergeByKey("type")),
            ("", "Endpoints", "subsets", Replace),
            ("", "Node", "spec.podCIDRs", MergeSet),
            ("", "Node", "spec.taints", Replace),
            ("", "Node", "status.conditions", MergeByKey("type")),
            ("", "Node", "status.addresses", MergeByKey("type")),
            ("", "Node", "status.images", Replace),
            ("", "Namespace", "spec.finalizers", Replace),
            ("", "Namespace", "status.conditions", MergeByKey("type")),
            ("", "ServiceAccount", "secrets", MergeByKey("name")),
            (
                "apps",
                "Deployment",
                "spec.template.spec.containers.env",
                MergeByKey("name"),
            ),
            (
                "apps",
                "Deployment",
                "spec.template.metadata.finalizers",
                MergeSet,
            ),
            (
                "apps",
                "Deployment",
                "status.conditions",
                MergeByKey("type"),
            ),
            (
                "apps",
                "ReplicaSet",
                "spec.template.spec.volumes",
                MergeByKey("name"),
            ),
            (
                "apps",
                "DaemonSet",
                "spec.template.spec.containers",
                MergeByKey("name"),
            ),
            ("apps", "StatefulSet", "spec.volumeClaimTemplates", Replace),
            (
                "batch",
                "CronJob",
                "spec.jobTemplate.spec.template.spec.containers",
                MergeByKey("name"),
            ),
            ("batch", "Job", "status.conditions", MergeByKey("type")),
            ("discovery.k8s.io", "EndpointSlice", "endpoints", Replace),
        ];
        for (group, kind, path, want) in cases {
            let meta = meta_at(group, kind, path);
            assert!(meta.described, "{group}/{kind} {path} should be described");
            assert_eq!(meta.list, *want, "{group}/{kind} {path}");
        }
    }

    #[test]
    fn retain_keys_fields() {
        assert!(meta_at("apps", "Deployment", "spec.strategy").retain_keys);
        assert!(meta_at("", "Pod", "spec.volumes").retain_keys);
        assert!(meta_at("", "Pod", "spec.resourceClaims").retain_keys);
        assert!(!meta_at("", "Pod", "spec.containers").retain_keys);
    }

    #[test]
    fn undescribed_fields_and_kinds_are_unknown() {
        let labels = meta_at("", "ConfigMap", "metadata.labels");
        assert!(!labels.described);
        assert_eq!(labels.list, ListStrategy::Replace);
        assert!(!labels.schema.is_known());
        assert!(!schema_for_kind("example.com", "Widget").is_known());
        assert!(!schema_for_kind("apps", "Pod").is_known());
        assert_eq!(schema_for_kind("", "Pod").type_name(), "Pod");
    }
}
