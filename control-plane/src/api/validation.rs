//! Validation of objects after defaulting, producing field-level causes for a
//! 422 Invalid. Only what clients and controllers depend on is checked.

use std::collections::HashSet;

use serde_json::Value;

use super::errors::Cause;
use super::resources::ResourceType;
use super::selectors::LabelSelector;

/// RFC 1123 label: lowercase alphanumerics and '-', starting and ending alphanumeric, ≤ 63.
pub fn is_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && is_label_shaped(s)
}

/// Lowercase alphanumerics and '-', starting and ending alphanumeric, any length.
fn is_label_shaped(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain as Kubernetes checks it: dot-separated parts shaped
/// like labels, ≤ 253 in all (a part may be longer than 63, as
/// apimachinery's IsDNS1123Subdomain allows).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_label_shaped)
}

/// RFC 1035 label: a DNS-1123 label that starts with a letter.
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if prefix.is_some_and(|p| !is_dns1123_subdomain(p)) {
        return false;
    }
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric())
}

const NAME_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";

/// Check an object name for resource type `rt`.
pub fn name_causes(rt: &ResourceType, name: &str) -> Vec<Cause> {
    if name.is_empty() {
        return vec![Cause::required("metadata.name")];
    }
    if rt.group == "rbac.authorization.k8s.io" {
        // RBAC names are path segments (system:node, system:basic-user).
        let bad = match name {
            "." => Some("may not be '.'"),
            ".." => Some("may not be '..'"),
            n if n.contains('/') => Some("may not contain '/'"),
            n if n.contains('%') => Some("may not contain '%'"),
            _ => None,
        };
        return bad
            .map(|why| vec![Cause::invalid("metadata.name", name, why)])
            .unwrap_or_default();
    }
    let ok = if rt.is("", "Service") {
        is_dns1035_label(name)
    } else if rt.label_names {
        is_dns1123_label(name)
    } else {
        is_dns1123_subdomain(name)
    };
    if ok {
        Vec::new()
    } else {
        let msg = if rt.label_names { LABEL_MSG } else { NAME_MSG };
        vec![Cause::invalid("metadata.name", name, msg)]
    }
}

fn metadata_causes(v: &Value, out: &mut Vec<Cause>) {
    if let Some(labels) = v.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, val) in labels {
            if !is_qualified_name(k) {
                out.push(Cause::invalid("metadata.labels", k, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
            }
            if !val.as_str().is_some_and(is_label_value) {
                out.push(Cause::invalid("metadata.labels", &val.to_string(), "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
            }
        }
    }
    if let Some(ann) = v
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        let mut total = 0;
        for (k, val) in ann {
            if !is_qualified_name(k) {
                out.push(Cause::invalid(
                    "metadata.annotations",
                    k,
                    "name part must consist of alphanumeric characters, '-', '_' or '.'",
                ));
            }
            total += k.len() + val.as_str().map_or(0, str::len);
        }
        if total > 256 * 1024 {
            out.push(Cause::new(
                "FieldValueTooLong",
                "metadata.annotations",
                "Too long: must have at most 262144 bytes",
            ));
        }
    }
}

/// apimachinery's IsValidSysctlName: at most 253 characters, dot- or
/// slash-separated parts of lowercase alphanumerics, '-' and '_', each
/// starting and ending alphanumeric.
pub fn is_sysctl_name(s: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && p.as_bytes()[0].is_ascii_alphanumeric()
            && p.as_bytes()[p.len() - 1].is_ascii_alphanumeric()
    };
    s.len() <= 253 && s.split(['.', '/']).all(part)
}

/// `spec.securityContext.sysctls`: valid, unique names.
fn sysctl_causes(spec: &Value, path: &str, out: &mut Vec<Cause>) {
    let mut seen = HashSet::new();
    for (i, s) in spec
        .pointer("/securityContext/sysctls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let p = format!("{path}.securityContext.sysctls[{i}].name");
        let name = s.get("name").and_then(Value::as_str).unwrap_or_default();
        if name.is_empty() {
            out.push(Cause::required(p));
        } else if !is_sysctl_name(name) {
            out.push(Cause::invalid(
                p,
                name,
                "must have at most 253 characters and match regex ^([a-z0-9]([-_a-z0-9]*[a-z0-9])?[\\./])*[a-z0-9]([-_a-z0-9]*[a-z0-9])?$",
            ));
        } else if !seen.insert(name.to_string()) {
            out.push(Cause::new(
                "FieldValueDuplicate",
                p,
                format!("Duplicate value: \"{name}\""),
            ));
        }
    }
}

fn pod_spec_causes(spec: Option<&Value>, path: &str, out: &mut Vec<Cause>) {
    let Some(spec) = spec else {
        out.push(Cause::required(path));
        return;
    };
    let containers = spec.get("containers").and_then(Value::as_array);
    if containers.is_none_or(|c| c.is_empty()) {
        out.push(Cause::required(format!("{path}.containers")));
    }
    sysctl_causes(spec, path, out);
    let mut names = HashSet::new();
    for list in ["initContainers", "containers"] {
        for (i, c) in spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let p = format!("{path}.{list}[{i}]");
            let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
            if !is_dns1123_label(name) {
                out.push(Cause::invalid(format!("{p}.name"), name, LABEL_MSG));
            } else if !names.insert(name.to_string()) {
                out.push(Cause::new(
                    "FieldValueDuplicate",
                    format!("{p}.name"),
                    format!("Duplicate value: \"{name}\""),
                ));
            }
            if c.get("image")
                .and_then(Value::as_str)
                .is_none_or(|s| s.trim().is_empty())
            {
                out.push(Cause::required(format!("{p}.image")));
            }
            for (j, port) in c
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let n = port
                    .get("containerPort")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                if !(1..=65535).contains(&n) {
                    out.push(Cause::invalid(
                        format!("{p}.ports[{j}].containerPort"),
                        &n.to_string(),
                        "must be between 1 and 65535, inclusive",
                    ));
                }
            }
        }
    }
    let rp = spec
        .get("restartPolicy")
        .and_then(Value::as_str)
        .unwrap_or("Always");
    if !["Always", "OnFailure", "Never"].contains(&rp) {
        out.push(Cause::new("FieldValueNotSupported", format!("{path}.restartPolicy"), format!("Unsupported value: \"{rp}\": supported values: \"Always\", \"OnFailure\", \"Never\"")));
    }
}

fn workload_causes(v: &Value, out: &mut Vec<Cause>, needs_template_restart_always: bool) {
    let spec = v.get("spec");
    if let Some(r) = spec.and_then(|s| s.get("replicas")).and_then(Value::as_i64)
        && r < 0
    {
        out.push(Cause::invalid(
            "spec.replicas",
            &r.to_string(),
            "must be greater than or equal to 0",
        ));
    }
    let Some(selector) = spec.and_then(|s| s.get("selector")) else {
        out.push(Cause::required("spec.selector"));
        return;
    };
    let sel = match LabelSelector::from_object(selector) {
        Ok(s) => s,
        Err(e) => {
            out.push(Cause::invalid("spec.selector", "", e));
            return;
        }
    };
    if sel.is_empty() {
        out.push(Cause::invalid(
            "spec.selector",
            "{}",
            "empty selector is invalid for deployment",
        ));
    }
    let template = spec.and_then(|s| s.get("template"));
    let tlabels = template.map(json_labels).unwrap_or_default();
    if !sel.is_empty() && !sel.matches(&tlabels) {
        out.push(Cause::invalid(
            "spec.template.metadata.labels",
            &format!("{tlabels:?}"),
            "`selector` does not match template `labels`",
        ));
    }
    pod_spec_causes(
        template.and_then(|t| t.get("spec")),
        "spec.template.spec",
        out,
    );
    if needs_template_restart_always
        && let Some(rp) = template
            .and_then(|t| t.pointer("/spec/restartPolicy"))
            .and_then(Value::as_str)
        && rp != "Always"
    {
        out.push(Cause::new(
            "FieldValueNotSupported",
            "spec.template.spec.restartPolicy",
            format!("Unsupported value: \"{rp}\": supported values: \"Always\""),
        ));
    }
}

fn json_labels(obj: &Value) -> std::collections::BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn service_causes(v: &Value, out: &mut Vec<Cause>) {
    let spec = v.get("spec");
    let ty = spec
        .and_then(|s| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&ty) {
        out.push(Cause::new(
            "FieldValueNotSupported",
            "spec.type",
            format!("Unsupported value: \"{ty}\""),
        ));
    }
    let ports = spec.and_then(|s| s.get("ports")).and_then(Value::as_array);
    let headless = spec
        .and_then(|s| s.get("clusterIP"))
        .and_then(Value::as_str)
        == Some("None");
    if ty != "ExternalName" && !headless && ports.is_none_or(|p| p.is_empty()) {
        out.push(Cause::required("spec.ports"));
    }
    let mut seen = HashSet::new();
    let multi = ports.is_some_and(|p| p.len() > 1);
    for (i, p) in ports.into_iter().flatten().enumerate() {
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&port) {
            out.push(Cause::invalid(
                format!("spec.ports[{i}].port"),
                &port.to_string(),
                "must be between 1 and 65535, inclusive",
            ));
        }
        let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
        if !["TCP", "UDP", "SCTP"].contains(&proto) {
            out.push(Cause::new(
                "FieldValueNotSupported",
                format!("spec.ports[{i}].protocol"),
                format!("Unsupported value: \"{proto}\""),
            ));
        }
        if !seen.insert((port, proto.to_string())) {
            out.push(Cause::new(
                "FieldValueDuplicate",
                format!("spec.ports[{i}]"),
                format!("Duplicate value: {port}/{proto}"),
            ));
        }
        let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
        if multi && name.is_empty() {
            out.push(Cause::required(format!("spec.ports[{i}].name")));
        }
        if !name.is_empty() && !is_dns1123_label(name) {
            out.push(Cause::invalid(
                format!("spec.ports[{i}].name"),
                name,
                LABEL_MSG,
            ));
        }
        if let Some(np) = p.get("nodePort").and_then(Value::as_i64)
            && np != 0
            && ty == "ClusterIP"
        {
            out.push(Cause::new(
                "FieldValueForbidden",
                format!("spec.ports[{i}].nodePort"),
                "Forbidden: may not be used when `type` is 'ClusterIP'",
            ));
        }
    }
    if ty == "ExternalName"
        && spec
            .and_then(|s| s.get("externalName"))
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
    {
        out.push(Cause::required("spec.externalName"));
    }
}

fn data_key_causes(v: &Value, out: &mut Vec<Cause>) {
    for field in ["data", "binaryData", "stringData"] {
        if let Some(m) = v.get(field).and_then(Value::as_object) {
            for k in m.keys() {
                let ok = !k.is_empty()
                    && k.len() <= 253
                    && k.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if !ok {
                    out.push(Cause::invalid(format!("{field}[{k}]"), k, "a valid config key must consist of alphanumeric characters, '-', '_' or '.'"));
                }
            }
        }
    }
}

/// Validate an object of type `rt` (already defaulted). Empty means valid.
pub fn validate(rt: &ResourceType, v: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    metadata_causes(v, &mut out);
    match (rt.group, rt.kind) {
        ("", "Pod") => pod_spec_causes(v.get("spec"), "spec", &mut out),
        ("", "Service") => service_causes(v, &mut out),
        ("", "ConfigMap") | ("", "Secret") => data_key_causes(v, &mut out),
        ("apps", "Deployment") | ("apps", "ReplicaSet") | ("apps", "StatefulSet") => {
            workload_causes(v, &mut out, rt.kind == "Deployment")
        }
        ("apps", "DaemonSet") => workload_causes(v, &mut out, true),
        ("batch", "Job") => job_causes(v, &mut out),
        (super::crd::GROUP, super::crd::KIND) => out.extend(super::crd::validate(v)),
        _ => {}
    }
    out
}

/// A Job: its selector and template as a workload's, a pod restart policy
/// of Never or OnFailure, counts not negative.
fn job_causes(v: &Value, out: &mut Vec<Cause>) {
    workload_causes(v, out, false);
    let spec = v.get("spec");
    match spec
        .and_then(|s| s.pointer("/template/spec/restartPolicy"))
        .and_then(Value::as_str)
    {
        Some("Never" | "OnFailure") => {}
        other => out.push(Cause::new(
            "FieldValueNotSupported",
            "spec.template.spec.restartPolicy",
            format!(
                "Unsupported value: \"{}\": supported values: \"OnFailure\", \"Never\"",
                other.unwrap_or_default()
            ),
        )),
    }
    for field in [
        "parallelism",
        "completions",
        "backoffLimit",
        "activeDeadlineSeconds",
    ] {
        if let Some(n) = spec.and_then(|s| s.get(field)).and_then(Value::as_i64)
            && n < 0
        {
            out.push(Cause::invalid(
                format!("spec.{field}"),
                &n.to_string(),
                "must be greater than or equal to 0",
            ));
        }
    }
}

/// Checks on an update: fields that may not change.
pub fn validate_update(rt: &ResourceType, old: &Value, new: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    let same = |ptr: &str| old.pointer(ptr) == new.pointer(ptr);
    match (rt.group, rt.kind) {
        ("apps", "Deployment")
        | ("apps", "ReplicaSet")
        | ("apps", "DaemonSet")
        | ("apps", "StatefulSet")
        | ("batch", "Job")
            if !same("/spec/selector") =>
        {
            out.push(Cause::invalid("spec.selector", "", "field is immutable"));
        }
        ("", "Pod") => {
            // Only images, activeDeadlineSeconds and tolerations may change on a pod's spec.
            let strip = |v: &Value| {
                let mut s = v.get("spec").cloned().unwrap_or(Value::Null);
                for list in ["containers", "initContainers"] {
                    if let Some(cs) = s.get_mut(list).and_then(Value::as_array_mut) {
                        for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                            c.remove("image");
                        }
                    }
                }
                if let Some(m) = s.as_object_mut() {
                    m.remove("activeDeadlineSeconds");
                    m.remove("tolerations");
                    m.remove("terminationGracePeriodSeconds");
                }
                s
            };
            if old
                .get("spec")
                .and_then(|s| s.get("nodeName"))
                .is_some_and(|n| !n.as_str().unwrap_or_default().is_empty())
                && strip(old) != strip(new)
            {
                out.push(Cause::new("FieldValueForbidden", "spec", "Forbidden: pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing tolerations) or `spec.terminationGracePeriodSeconds`"));
            }
        }
        ("", "Service") => {
            let old_ip = old
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let new_ip = new
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !old_ip.is_empty()
                && old_ip != new_ip
                && new.pointer("/spec/type").and_then(Value::as_str) != Some("ExternalName")
            {
                out.push(Cause::invalid(
                    "spec.clusterIPs[0]",
                    new_ip,
                    "may not change once set",
                ));
            }
        }
        (super::crd::GROUP, super::crd::KIND) => out.extend(super::crd::validate_update(old, new)),
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::find;
    use serde_json::json;

    #[test]
    fn names() {
        assert!(is_dns1123_subdomain("a.b-c"));
        // A name of 67 characters without dots (the e2e suite makes these).
        assert!(is_dns1123_subdomain(&format!(
            "projected-{}",
            "a".repeat(57)
        )));
        assert!(!is_dns1123_label(&format!("projected-{}", "a".repeat(57))));
        assert!(!is_dns1123_subdomain(&"a".repeat(254)));
        assert!(!is_dns1123_subdomain("A"));
        assert!(!is_dns1123_subdomain("-a"));
        assert!(!is_dns1123_label("a.b"));
        assert!(!is_dns1035_label("1abc"));
        let svc = find("", "v1", "services").unwrap();
        assert_eq!(name_causes(svc, "1web").len(), 1);
        assert!(name_causes(svc, "web").is_empty());
        assert_eq!(
            name_causes(find("", "v1", "pods").unwrap(), "Bad_Name")[0].field,
            "metadata.name"
        );
        // RBAC names are path segments.
        let roles = find("rbac.authorization.k8s.io", "v1", "clusterroles").unwrap();
        assert!(name_causes(roles, "system:node").is_empty());
        assert!(name_causes(roles, "Any_Name").is_empty());
        for bad in [".", "..", "a/b", "a%2f"] {
            assert_eq!(name_causes(roles, bad).len(), 1, "{bad}");
        }
    }

    #[test]
    fn deployment_selector_must_match() {
        let rt = find("apps", "v1", "deployments").unwrap();
        let d = json!({"spec": {"selector": {"matchLabels": {"app": "a"}}, "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let causes = validate(rt, &d);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec.template.metadata.labels");
    }

    #[test]
    fn sysctl_names_are_checked_as_apimachinery_does() {
        for ok in [
            "kernel.shmmax",
            "safe-and-unsafe",
            "net.ipv4.conf.eth0/1.rp_filter",
            "a_b",
        ] {
            assert!(is_sysctl_name(ok), "{ok}");
        }
        for bad in ["foo-", "bar..", "", ".a", "A.b", &"a".repeat(254)] {
            assert!(!is_sysctl_name(bad), "{bad}");
        }
        let spec = serde_json::json!({"securityContext": {"sysctls": [
            {"name": "foo-", "value": "bar"}, {"name": "kernel.shmmax", "value": "1"},
            {"name": "safe-and-unsafe", "value": "1"}, {"name": "bar..", "value": "42"},
            {"name": "kernel.shmmax", "value": "2"}]}});
        let mut out = Vec::new();
        sysctl_causes(&spec, "spec", &mut out);
        let text = format!("{out:?}");
        assert_eq!(out.len(), 3, "{text}");
        assert!(text.contains("foo-") && text.contains("bar..") && text.contains("Duplicate"));
        assert!(!text.contains("safe-and-unsafe"), "{text}");
    }

    #[test]
    fn pod_needs_containers_and_images() {
        let rt = find("", "v1", "pods").unwrap();
        let causes = validate(
            rt,
            &json!({"spec": {"containers": [{"name": "a"}, {"name": "a", "image": "x"}]}}),
        );
        let fields: Vec<_> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            vec!["spec.containers[0].image", "spec.containers[1].name"]
        );
    }

    #[test]
    fn bad_labels() {
        let rt = find("", "v1", "configmaps").unwrap();
        assert_eq!(
            validate(rt, &json!({"metadata": {"labels": {"a b": "c"}}})).len(),
            1
        );
        assert_eq!(
            validate(rt, &json!({"metadata": {"labels": {"a": "-c"}}})).len(),
            1
        );
        assert!(validate(rt, &json!({"metadata": {"labels": {"example.com/a": "c"}}})).is_empty());
    }
}
