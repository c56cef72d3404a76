//! CustomResourceDefinitions (apiextensions.k8s.io/v1): defaulting and
//! validation of the definitions, and the plan the server makes of the
//! stored ones — which names each is granted, the status it should carry,
//! and the custom resource versions to serve — as apiextensions-apiserver's
//! naming and establishing controllers decide them. Pure: no I/O.

use std::cmp::Ordering;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionCondition, CustomResourceDefinitionNames,
};
use serde_json::{Value, json};

use super::errors::Cause;
use super::schema;
use super::validation::is_dns1035_label;

pub const GROUP: &str = "apiextensions.k8s.io";
pub const KIND: &str = "CustomResourceDefinition";
/// Held by a deleting definition until its custom resources are gone.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character";

/// Defaults of a definition (v1's `SetDefaults_CustomResourceDefinition`):
/// `names.singular` is the lowercased kind, `names.listKind` the kind
/// followed by "List", `conversion.strategy` is None.
pub fn set_defaults(crd: &mut Value) {
    let Some(spec) = crd.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if let Some(names) = spec.get_mut("names").and_then(Value::as_object_mut) {
        let kind = names
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let empty = |v: Option<&Value>| v.and_then(Value::as_str).is_none_or(str::is_empty);
        if !kind.is_empty() {
            if empty(names.get("singular")) {
                names.insert("singular".into(), kind.to_lowercase().into());
            }
            if empty(names.get("listKind")) {
                names.insert("listKind".into(), format!("{kind}List").into());
            }
        }
    }
    let conversion = spec.entry("conversion").or_insert_with(|| json!({}));
    if let Some(c) = conversion.as_object_mut()
        && c.get("strategy")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        c.insert("strategy".into(), "None".into());
    }
}

fn name_causes(field: &str, value: &str, out: &mut Vec<Cause>) {
    if !is_dns1035_label(value) {
        out.push(Cause::invalid(field, value, DNS1035_MSG));
    }
}

fn kind_causes(field: &str, value: &str, out: &mut Vec<Cause>) {
    if !is_dns1035_label(&value.to_lowercase()) {
        out.push(Cause::invalid(
            field,
            value,
            format!("may have mixed case, but should otherwise match: {DNS1035_MSG}"),
        ));
    }
}

/// Validate a (defaulted) definition; empty means valid.
pub fn validate(v: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    let crd: CustomResourceDefinition = match serde_json::from_value(v.clone()) {
        Ok(c) => c,
        Err(e) => {
            out.push(Cause::invalid("spec", "", e.to_string()));
            return out;
        }
    };
    let spec = &crd.spec;
    let n = &spec.names;
    let name = crd.metadata.name.as_deref().unwrap_or_default();
    if name != format!("{}.{}", n.plural, spec.group) {
        out.push(Cause::invalid(
            "metadata.name",
            name,
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    if spec.group.is_empty() {
        out.push(Cause::required("spec.group"));
    } else if !super::validation::is_dns1123_subdomain(&spec.group) {
        out.push(Cause::invalid("spec.group", &spec.group, "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"));
    } else if !spec.group.contains('.') {
        out.push(Cause::invalid(
            "spec.group",
            &spec.group,
            "should be a domain with at least one dot",
        ));
    }
    match spec.scope.as_str() {
        "Namespaced" | "Cluster" => {}
        "" => out.push(Cause::required("spec.scope")),
        other => out.push(Cause::not_supported(
            "spec.scope",
            &Value::String(other.into()),
            &["Cluster".into(), "Namespaced".into()],
        )),
    }
    names_causes(n, &mut out);
    versions_causes(v, &crd, &mut out);
    if let Some(c) = &spec.conversion {
        match c.strategy.as_str() {
            "None" => {}
            "Webhook" => out.push(Cause::not_supported(
                "spec.conversion.strategy",
                &Value::String("Webhook".into()),
                &["None".into()],
            )),
            other => out.push(Cause::not_supported(
                "spec.conversion.strategy",
                &Value::String(other.into()),
                &["None".into(), "Webhook".into()],
            )),
        }
    }
    if spec.preserve_unknown_fields == Some(true) {
        out.push(Cause::invalid_value(
            "spec.preserveUnknownFields",
            &Value::Bool(true),
            "must be false",
        ));
    }
    out
}

fn names_causes(n: &CustomResourceDefinitionNames, out: &mut Vec<Cause>) {
    if n.plural.is_empty() {
        out.push(Cause::required("spec.names.plural"));
    } else {
        name_causes("spec.names.plural", &n.plural, out);
    }
    match n.singular.as_deref() {
        None | Some("") => out.push(Cause::required("spec.names.singular")),
        Some(s) => name_causes("spec.names.singular", s, out),
    }
    if n.kind.is_empty() {
        out.push(Cause::required("spec.names.kind"));
    } else {
        kind_causes("spec.names.kind", &n.kind, out);
    }
    match n.list_kind.as_deref() {
        None | Some("") => out.push(Cause::required("spec.names.listKind")),
        Some(l) => {
            kind_causes("spec.names.listKind", l, out);
            if l == n.kind {
                out.push(Cause::invalid(
                    "spec.names.listKind",
                    l,
                    "kind and listKind may not be the same",
                ));
            }
        }
    }
    for (i, s) in n.short_names.iter().flatten().enumerate() {
        name_causes(&format!("spec.names.shortNames[{i}]"), s, out);
    }
    for (i, c) in n.categories.iter().flatten().enumerate() {
        name_causes(&format!("spec.names.categories[{i}]"), c, out);
    }
}

fn versions_causes(v: &Value, crd: &CustomResourceDefinition, out: &mut Vec<Cause>) {
    let versions = &crd.spec.versions;
    if versions.is_empty() {
        out.push(Cause::required("spec.versions"));
        return;
    }
    let raw = |i: usize| {
        v.pointer(&format!("/spec/versions/{i}"))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let mut seen = Vec::new();
    for (i, ver) in versions.iter().enumerate() {
        let path = format!("spec.versions[{i}]");
        if ver.name.is_empty() {
            out.push(Cause::required(format!("{path}.name")));
        } else {
            name_causes(&format!("{path}.name"), &ver.name, out);
        }
        if seen.contains(&ver.name) {
            out.push(Cause::invalid_value(
                "spec.versions",
                &raw(i),
                "must contain unique version names",
            ));
        }
        seen.push(ver.name.clone());
        let schema_path = format!("{path}.schema.openAPIV3Schema");
        match v.pointer(&format!("/spec/versions/{i}/schema/openAPIV3Schema")) {
            None | Some(Value::Null) => out.push(Cause::required(&schema_path)),
            Some(s) => {
                if s.get("type").and_then(Value::as_str) != Some("object") {
                    out.push(Cause::invalid_value(
                        format!("{schema_path}.type"),
                        s.get("type").unwrap_or(&Value::String(String::new())),
                        "must be object at the root",
                    ));
                }
                out.extend(schema::schema_causes(s, &schema_path));
            }
        }
        if let Some(scale) = ver.subresources.as_ref().and_then(|s| s.scale.as_ref()) {
            let sub = format!("{path}.subresources.scale");
            if !scale.spec_replicas_path.starts_with(".spec.") {
                out.push(Cause::invalid(
                    format!("{sub}.specReplicasPath"),
                    &scale.spec_replicas_path,
                    "should be a json path under .spec",
                ));
            }
            if !scale.status_replicas_path.starts_with(".status.") {
                out.push(Cause::invalid(
                    format!("{sub}.statusReplicasPath"),
                    &scale.status_replicas_path,
                    "should be a json path under .status",
                ));
            }
            if let Some(l) = scale.label_selector_path.as_deref()
                && !(l.starts_with(".spec.") || l.starts_with(".status."))
            {
                out.push(Cause::invalid(
                    format!("{sub}.labelSelectorPath"),
                    l,
                    "should be a json path under either .spec or .status",
                ));
            }
        }
        for (j, f) in ver.selectable_fields.iter().flatten().enumerate() {
            let fp = format!("{path}.selectableFields[{j}].jsonPath");
            let p = f.json_path.as_str();
            let simple = p.len() > 1
                && p.starts_with('.')
                && p[1..].split('.').all(|s| {
                    !s.is_empty()
                        && s.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                });
            if p.is_empty() {
                out.push(Cause::required(fp));
            } else if !simple {
                out.push(Cause::invalid(
                    fp,
                    p,
                    "is an invalid path: must be a simple path like .spec.field",
                ));
            } else if p.starts_with(".metadata") {
                out.push(Cause::invalid(
                    fp,
                    p,
                    "must not point to fields in metadata",
                ));
            }
        }
        for (j, col) in ver.additional_printer_columns.iter().flatten().enumerate() {
            let cp = format!("{path}.additionalPrinterColumns[{j}]");
            const TYPES: &[&str] = &["boolean", "date", "integer", "number", "string"];
            if col.name.is_empty() {
                out.push(Cause::required(format!("{cp}.name")));
            }
            if !TYPES.contains(&col.type_.as_str()) {
                out.push(Cause::not_supported(
                    format!("{cp}.type"),
                    &Value::String(col.type_.clone()),
                    &TYPES.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
                ));
            }
            if col.json_path.is_empty() {
                out.push(Cause::required(format!("{cp}.jsonPath")));
            }
        }
    }
    let storage = versions.iter().filter(|v| v.storage).count();
    if storage != 1 {
        out.push(Cause::invalid_value(
            "spec.versions",
            &Value::from(storage),
            "must have exactly one version marked as storage version",
        ));
    }
    if !versions.iter().any(|v| v.served) {
        out.push(Cause::invalid_value(
            "spec.versions",
            &Value::from(0),
            "must have at least one served version",
        ));
    }
}

/// Checks on an update: the scope may not change, and a version objects
/// may be stored in (`status.storedVersions`) may not leave `spec.versions`.
pub fn validate_update(old: &Value, new: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    let scope = |v: &Value| v.pointer("/spec/scope").cloned().unwrap_or(Value::Null);
    if scope(old) != scope(new) {
        out.push(Cause::invalid_value(
            "spec.scope",
            &scope(new),
            "field is immutable",
        ));
    }
    let versions: Vec<&str> = new
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .collect();
    let stored = new
        .pointer("/status/storedVersions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str);
    for (i, v) in stored.enumerate() {
        if !versions.contains(&v) {
            out.push(Cause::invalid(
                format!("status.storedVersions[{i}]"),
                v,
                format!("missing from spec.versions; {v} was previously a storage version, and must remain in spec.versions until a storage migration ensures no data remains persisted in {v} and removes {v} from status.storedVersions"),
            ));
        }
    }
    out
}

/// Kubernetes' version order (`version.CompareKubeAwareVersionStrings`):
/// GA before beta before alpha, higher numbers first, then other names
/// alphabetically.
pub fn version_priority(a: &str, b: &str) -> Ordering {
    fn parse(v: &str) -> Option<(u64, u8, u64)> {
        let rest = v.strip_prefix('v')?;
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let major: u64 = rest[..digits].parse().ok()?;
        let tail = &rest[digits..];
        if tail.is_empty() {
            return Some((major, 2, 0));
        }
        let (level, n) = if let Some(n) = tail.strip_prefix("beta") {
            (1, n)
        } else if let Some(n) = tail.strip_prefix("alpha") {
            (0, n)
        } else {
            return None;
        };
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((major, level, n.parse().ok()?))
    }
    match (parse(a), parse(b)) {
        (Some((ma, la, na)), Some((mb, lb, nb))) => lb.cmp(&la).then(mb.cmp(&ma)).then(nb.cmp(&na)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

/// The names a group's resources already use (built-in or granted to
/// another definition): resource names (plurals, singulars, short names)
/// and kinds (kinds, list kinds).
#[derive(Debug, Default, Clone)]
pub struct TakenNames {
    pub resources: Vec<String>,
    pub kinds: Vec<String>,
}

impl TakenNames {
    fn add(&mut self, n: &CustomResourceDefinitionNames) {
        for r in [Some(&n.plural), n.singular.as_ref()]
            .into_iter()
            .flatten()
            .chain(n.short_names.iter().flatten())
        {
            if !r.is_empty() {
                self.resources.push(r.clone());
            }
        }
        for k in [Some(&n.kind), n.list_kind.as_ref()].into_iter().flatten() {
            if !k.is_empty() {
                self.kinds.push(k.clone());
            }
        }
    }
}

/// The names the server's built-in resources use in `group`.
pub fn builtin_names(group: &str) -> TakenNames {
    let mut out = TakenNames::default();
    for r in super::resources::RESOURCES
        .iter()
        .filter(|r| r.group == group)
    {
        out.resources
            .extend([r.plural, r.singular].into_iter().map(String::from));
        out.resources
            .extend(r.short_names.iter().map(|s| s.to_string()));
        out.kinds.push(r.kind.to_string());
        out.kinds.push(r.list_kind());
    }
    out
}

/// One custom resource version the server serves.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedVersion {
    /// The definition's name (`<plural>.<group>`).
    pub crd: String,
    pub group: String,
    pub version: String,
    pub names: CustomResourceDefinitionNames,
    pub namespaced: bool,
    pub status: bool,
    pub scale: Option<ScalePaths>,
    pub schema: Option<Value>,
    pub storage_version: String,
    pub printer_columns: Vec<PrinterColumn>,
    /// Field selector labels (`selectableFields`, as `spec.color`).
    pub selectable_fields: Vec<String>,
    /// The definition is being deleted: no new objects.
    pub terminating: bool,
}

/// Where a custom resource keeps what its autoscaling/v1 Scale shows.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

/// An `additionalPrinterColumns` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct PrinterColumn {
    pub name: String,
    pub ty: String,
    pub format: String,
    pub description: String,
    pub priority: i32,
    pub json_path: String,
}

/// What the server makes of the stored definitions.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Plan {
    /// Custom resource versions to serve, in definition order.
    pub served: Vec<ServedVersion>,
    /// Definitions whose status differs from what it should be: (name, status).
    pub status: Vec<(String, Value)>,
    /// Deleting definitions whose custom resources must go, then their finalizer.
    pub cleanup: Vec<String>,
}

fn condition(
    ty: &str,
    ok: bool,
    reason: &str,
    message: &str,
    previous: &[CustomResourceDefinitionCondition],
    now: &str,
) -> Value {
    let status = if ok { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == ty && c.status == status)
        .and_then(|c| c.last_transition_time.as_ref())
        .and_then(|t| serde_json::to_value(t).ok())
        .unwrap_or_else(|| Value::String(now.to_string()));
    json!({"type": ty, "status": status, "lastTransitionTime": since, "reason": reason, "message": message})
}

fn creation_key(c: &CustomResourceDefinition) -> (String, String) {
    (
        c.metadata
            .creation_timestamp
            .as_ref()
            .and_then(|t| serde_json::to_value(t).ok())
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        c.metadata.name.clone().unwrap_or_default(),
    )
}

/// Plan over every stored definition. `builtin` gives the names the
/// server's own resources use in a group. `now` stamps new conditions.
pub fn plan(crds: &[Value], builtin: &dyn Fn(&str) -> TakenNames, now: &str) -> Plan {
    let mut parsed: Vec<(CustomResourceDefinition, &Value)> = crds
        .iter()
        .filter_map(|v| serde_json::from_value(v.clone()).ok().map(|c| (c, v)))
        .collect();
    // First come, first served.
    parsed.sort_by_key(|(c, _)| creation_key(c));
    let mut out = Plan::default();
    // Names granted in this pass, by group.
    let mut granted: Vec<(String, TakenNames)> = Vec::new();
    for (i, (crd, raw)) in parsed.iter().enumerate() {
        let group = crd.spec.group.clone();
        let mut taken = builtin(&group);
        for (j, (other, _)) in parsed.iter().enumerate() {
            if i != j
                && other.spec.group == group
                && let Some(a) = other
                    .status
                    .as_ref()
                    .and_then(|s| s.accepted_names.as_ref())
            {
                taken.add(a);
            }
        }
        for (g, t) in &granted {
            if *g == group {
                taken.resources.extend(t.resources.iter().cloned());
                taken.kinds.extend(t.kinds.iter().cloned());
            }
        }
        let (accepted, conflict) = accept_names(crd, &taken);
        let mut mine = TakenNames::default();
        mine.add(&accepted);
        granted.push((group.clone(), mine));
        let name = crd.metadata.name.clone().unwrap_or_default();
        let terminating = crd.metadata.deletion_timestamp.is_some();
        let established = !accepted.plural.is_empty() && !accepted.kind.is_empty();
        let status = desired_status(crd, raw, &accepted, conflict.as_ref(), established, now);
        if raw.get("status") != Some(&status) {
            out.status.push((name.clone(), status));
        }
        if terminating {
            out.cleanup.push(name.clone());
        }
        if !established {
            continue;
        }
        let storage_version = crd
            .spec
            .versions
            .iter()
            .find(|v| v.storage)
            .map(|v| v.name.clone())
            .unwrap_or_default();
        for (vi, v) in crd.spec.versions.iter().enumerate() {
            if !v.served {
                continue;
            }
            let sub = v.subresources.as_ref();
            out.served.push(ServedVersion {
                crd: name.clone(),
                group: group.clone(),
                version: v.name.clone(),
                names: accepted.clone(),
                namespaced: crd.spec.scope != "Cluster",
                status: sub.is_some_and(|s| s.status.is_some()),
                scale: sub.and_then(|s| s.scale.as_ref()).map(|s| ScalePaths {
                    spec_replicas: s.spec_replicas_path.clone(),
                    status_replicas: s.status_replicas_path.clone(),
                    label_selector: s.label_selector_path.clone(),
                }),
                schema: raw
                    .pointer(&format!("/spec/versions/{vi}/schema/openAPIV3Schema"))
                    .cloned(),
                storage_version: storage_version.clone(),
                printer_columns: v
                    .additional_printer_columns
                    .iter()
                    .flatten()
                    .map(|c| PrinterColumn {
                        name: c.name.clone(),
                        ty: c.type_.clone(),
                        format: c.format.clone().unwrap_or_default(),
                        description: c.description.clone().unwrap_or_default(),
                        priority: c.priority.unwrap_or(0),
                        json_path: c.json_path.clone(),
                    })
                    .collect(),
                selectable_fields: v
                    .selectable_fields
                    .iter()
                    .flatten()
                    .map(|f| f.json_path.trim_start_matches('.').to_string())
                    .collect(),
                terminating,
            });
        }
    }
    out
}

/// The names a definition is granted: each requested name unless another
/// resource of the group has it (a name granted before stays granted), and
/// the first conflict as (reason, message).
fn accept_names(
    crd: &CustomResourceDefinition,
    taken: &TakenNames,
) -> (CustomResourceDefinitionNames, Option<(String, String)>) {
    let want = &crd.spec.names;
    let had = crd
        .status
        .as_ref()
        .and_then(|s| s.accepted_names.clone())
        .unwrap_or_default();
    let mut conflict: Option<(String, String)> = None;
    let mut note = |reason: &str, name: &str| {
        if conflict.is_none() {
            conflict = Some((reason.to_string(), format!("{name:?} is already in use")));
        }
    };
    let free = |requested: &str, accepted: &str, pool: &[String]| {
        requested == accepted || !pool.iter().any(|t| t == requested)
    };
    let mut out = had.clone();
    if free(&want.plural, &had.plural, &taken.resources) {
        out.plural = want.plural.clone();
    } else {
        note("PluralConflict", &want.plural);
    }
    let singular = want.singular.clone().unwrap_or_default();
    if free(
        &singular,
        had.singular.as_deref().unwrap_or_default(),
        &taken.resources,
    ) {
        out.singular = Some(singular);
    } else {
        note("SingularConflict", &singular);
    }
    let mut shorts = Vec::new();
    let mut short_ok = true;
    for s in want.short_names.iter().flatten() {
        let had_it = had.short_names.iter().flatten().any(|h| h == s);
        if had_it || !taken.resources.contains(s) {
            shorts.push(s.clone());
        } else {
            short_ok = false;
            note("ShortNamesConflict", s);
        }
    }
    if short_ok {
        out.short_names = want.short_names.clone();
    } else if !shorts.is_empty() {
        out.short_names = Some(shorts);
    }
    if free(&want.kind, &had.kind, &taken.kinds) {
        out.kind = want.kind.clone();
    } else {
        note("KindConflict", &want.kind);
    }
    let list_kind = want.list_kind.clone().unwrap_or_default();
    if free(
        &list_kind,
        had.list_kind.as_deref().unwrap_or_default(),
        &taken.kinds,
    ) {
        out.list_kind = Some(list_kind);
    } else {
        note("ListKindConflict", &list_kind);
    }
    out.categories = want.categories.clone();
    (out, conflict)
}

fn desired_status(
    crd: &CustomResourceDefinition,
    raw: &Value,
    accepted: &CustomResourceDefinitionNames,
    conflict: Option<&(String, String)>,
    established: bool,
    now: &str,
) -> Value {
    let previous: Vec<CustomResourceDefinitionCondition> = crd
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let mut status = match raw.get("status") {
        Some(s @ Value::Object(_)) => s.clone(),
        _ => json!({}),
    };
    status["acceptedNames"] = serde_json::to_value(accepted).unwrap_or_default();
    let names = match conflict {
        None => condition(
            "NamesAccepted",
            true,
            "NoConflicts",
            "no conflicts found",
            &previous,
            now,
        ),
        Some((reason, message)) => {
            condition("NamesAccepted", false, reason, message, &previous, now)
        }
    };
    let est = if established {
        condition(
            "Established",
            true,
            "InitialNamesAccepted",
            "the initial names have been accepted",
            &previous,
            now,
        )
    } else {
        condition(
            "Established",
            false,
            "NotAccepted",
            "not all names are accepted",
            &previous,
            now,
        )
    };
    let mut owned = vec![names, est];
    if crd.metadata.deletion_timestamp.is_some() {
        owned.push(condition(
            "Terminating",
            true,
            "InstanceDeletionInProgress",
            "CustomResource deletion is in progress",
            &previous,
            now,
        ));
    }
    let mut conditions: Vec<Value> = status
        .get("conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for c in owned {
        match conditions
            .iter_mut()
            .find(|x| x.get("type") == c.get("type"))
        {
            Some(existing) => {
                // Keep a condition that says the same (its timestamp too).
                let same = ["status", "reason", "message"]
                    .iter()
                    .all(|k| existing.get(*k) == c.get(*k));
                if !same {
                    *existing = c;
                }
            }
            None => conditions.push(c),
        }
    }
    status["conditions"] = Value::Array(conditions);
    let mut stored: Vec<Value> = status
        .get("storedVersions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if let Some(v) = crd.spec.versions.iter().find(|v| v.storage) {
        let v = Value::String(v.name.clone());
        if !stored.contains(&v) {
            stored.push(v);
        }
    }
    status["storedVersions"] = Value::Array(stored);
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd(plural: &str, kind: &str, created: &str) -> Value {
        let mut v = json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": format!("{plural}.example.com"), "creationTimestamp": created},
            "spec": {
                "group": "example.com", "scope": "Namespaced",
                "names": {"plural": plural, "kind": kind, "shortNames": ["w"]},
                "versions": [
                    {"name": "v1beta1", "served": true, "storage": false,
                     "schema": {"openAPIV3Schema": {"type": "object"}}},
                    {"name": "v1", "served": true, "storage": true,
                     "schema": {"openAPIV3Schema": {"type": "object"}},
                     "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}}}
                ]
            }
        });
        set_defaults(&mut v);
        v
    }

    fn no_builtins(_: &str) -> TakenNames {
        TakenNames::default()
    }

    #[test]
    fn defaults_names_and_conversion() {
        let v = crd("widgets", "Widget", "2024-01-01T00:00:00Z");
        assert_eq!(v["spec"]["names"]["singular"], "widget");
        assert_eq!(v["spec"]["names"]["listKind"], "WidgetList");
        assert_eq!(v["spec"]["conversion"]["strategy"], "None");
        assert!(validate(&v).is_empty(), "{:?}", validate(&v));
    }

    #[test]
    fn invalid_definitions_name_their_fields() {
        let mut v = crd("widgets", "Widget", "2024-01-01T00:00:00Z");
        v["metadata"]["name"] = "gadgets.example.com".into();
        v["spec"]["group"] = "example".into();
        v["spec"]["scope"] = "Global".into();
        v["spec"]["versions"][0]["storage"] = true.into();
        v["spec"]["names"]["plural"] = "Widgets".into();
        v["spec"]["versions"][1]
            .as_object_mut()
            .unwrap()
            .remove("schema");
        let fields: Vec<String> = validate(&v).into_iter().map(|c| c.field).collect();
        assert_eq!(
            fields,
            vec![
                "metadata.name",
                "spec.group",
                "spec.scope",
                "spec.names.plural",
                "spec.versions[1].schema.openAPIV3Schema",
                "spec.versions"
            ]
        );
        let mut none_served = crd("widgets", "Widget", "2024-01-01T00:00:00Z");
        none_served["spec"]["versions"][0]["served"] = false.into();
        none_served["spec"]["versions"][1]["served"] = false.into();
        let causes = validate(&none_served);
        assert_eq!(causes.len(), 1);
        assert!(causes[0].message.contains("at least one served version"));
        assert_eq!(
            validate_update(&crd("widgets", "W", "2024-01-01T00:00:00Z"), &{
                let mut c = crd("widgets", "W", "2024-01-01T00:00:00Z");
                c["spec"]["scope"] = "Cluster".into();
                c
            })[0]
                .field,
            "spec.scope"
        );
    }

    #[test]
    fn a_stored_version_stays_in_the_spec() {
        let mut old = crd("widgets", "Widget", "2024-01-01T00:00:00Z");
        old["status"] = json!({"storedVersions": ["v1beta1", "v1"]});
        let mut new = old.clone();
        new["spec"]["versions"].as_array_mut().unwrap().remove(0);
        let causes = validate_update(&old, &new);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "status.storedVersions[0]");
        assert!(validate_update(&old, &old).is_empty());
    }

    #[test]
    fn plan_establishes_and_serves_every_served_version() {
        let p = plan(
            &[crd("widgets", "Widget", "2024-01-01T00:00:00Z")],
            &no_builtins,
            "now",
        );
        assert_eq!(p.served.len(), 2);
        assert_eq!(p.served[0].version, "v1beta1");
        assert_eq!(p.served[0].storage_version, "v1");
        assert!(p.served[1].status && p.served[1].scale.is_some());
        let (name, status) = &p.status[0];
        assert_eq!(name, "widgets.example.com");
        assert_eq!(status["acceptedNames"]["kind"], "Widget");
        assert_eq!(status["storedVersions"], json!(["v1"]));
        let conds = status["conditions"].as_array().unwrap();
        assert_eq!(conds[0]["type"], "NamesAccepted");
        assert_eq!(conds[0]["status"], "True");
        assert_eq!(conds[1]["type"], "Established");
        assert_eq!(conds[1]["status"], "True");
        // Applying the planned status makes the next plan change nothing.
        let mut stored = crd("widgets", "Widget", "2024-01-01T00:00:00Z");
        stored["status"] = status.clone();
        let again = plan(&[stored], &no_builtins, "later");
        assert!(again.status.is_empty(), "{:?}", again.status);
    }

    #[test]
    fn conflicting_names_are_not_accepted() {
        let first = crd("widgets", "Widget", "2024-01-01T00:00:00Z");
        let mut second = crd("gizmos", "Widget", "2024-01-02T00:00:00Z");
        second["spec"]["names"]["shortNames"] = json!(["g"]);
        second["spec"]["names"]["singular"] = "gizmo".into();
        let p = plan(&[second.clone(), first.clone()], &no_builtins, "now");
        let status_of = |n: &str| p.status.iter().find(|(x, _)| x == n).unwrap().1.clone();
        let s = status_of("gizmos.example.com");
        assert_eq!(s["conditions"][0]["status"], "False");
        assert_eq!(s["conditions"][0]["reason"], "KindConflict");
        assert_eq!(
            s["conditions"][0]["message"],
            "\"Widget\" is already in use"
        );
        assert_eq!(s["conditions"][1]["status"], "False");
        assert!(p.served.iter().all(|v| v.crd == "widgets.example.com"));
        // A built-in resource's names are taken too.
        let builtin = |g: &str| TakenNames {
            resources: if g == "example.com" {
                vec!["widgets".into()]
            } else {
                vec![]
            },
            kinds: vec![],
        };
        let p = plan(&[first], &builtin, "now");
        assert!(p.served.is_empty());
        assert_eq!(p.status[0].1["conditions"][0]["reason"], "PluralConflict");
    }

    #[test]
    fn deleting_definitions_are_cleaned_up_and_marked() {
        let mut c = crd("widgets", "Widget", "2024-01-01T00:00:00Z");
        c["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z".into();
        let p = plan(&[c], &no_builtins, "now");
        assert_eq!(p.cleanup, vec!["widgets.example.com"]);
        assert!(p.served.iter().all(|v| v.terminating));
        let conds = p.status[0].1["conditions"].as_array().unwrap();
        assert!(conds.iter().any(|c| c["type"] == "Terminating"));
    }

    #[test]
    fn versions_sort_as_kubernetes_sorts_them() {
        let mut v = vec![
            "v1alpha1", "foo", "v2", "v1beta2", "v1", "v1beta1", "v10", "bar",
        ];
        v.sort_by(|a, b| version_priority(a, b));
        assert_eq!(
            v,
            vec![
                "v10", "v2", "v1", "v1beta2", "v1beta1", "v1alpha1", "bar", "foo"
            ]
        );
    }
}
