//! Defaulting, as the Kubernetes API server applies it on create and update,
//! for the fields clients and controllers rely on.

use keelson_rules::qos::{self, QosClass};
use serde_json::{Map, Value, json};

use super::resources::ResourceType;

fn obj(v: &mut Value) -> Option<&mut Map<String, Value>> {
    v.as_object_mut()
}

fn set_default(m: &mut Map<String, Value>, key: &str, value: Value) {
    if m.get(key).is_none_or(Value::is_null) {
        m.insert(key.to_string(), value);
    }
}

fn child<'a>(m: &'a mut Map<String, Value>, key: &str) -> &'a mut Value {
    if m.get(key).is_none_or(|v| !v.is_object()) {
        m.insert(key.to_string(), json!({}));
    }
    m.get_mut(key).expect("inserted above")
}

/// Apply defaults to a whole object of type `rt`.
pub fn apply(rt: &ResourceType, v: &mut Value) {
    match (rt.group, rt.kind) {
        (super::crd::GROUP, super::crd::KIND) => super::crd::set_defaults(v),
        ("", "Pod") => {
            if let Some(spec) = v.get_mut("spec") {
                pod_spec(spec);
            }
            let qos = qos_class(v.get("spec"));
            if let Some(m) = obj(v) {
                let status = child(m, "status");
                if let Some(s) = obj(status) {
                    set_default(s, "phase", json!("Pending"));
                    set_default(s, "qosClass", json!(qos));
                }
            }
        }
        ("", "Namespace") => {
            if let Some(m) = obj(v) {
                let spec = child(m, "spec");
                if let Some(s) = obj(spec) {
                    set_default(s, "finalizers", json!(["kubernetes"]));
                }
                let status = child(m, "status");
                if let Some(s) = obj(status) {
                    set_default(s, "phase", json!("Active"));
                }
            }
        }
        ("", "Service") => {
            if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) {
                service_spec(spec);
            }
        }
        ("", "Secret") => {
            if let Some(m) = obj(v) {
                set_default(m, "type", json!("Opaque"));
                // stringData is write-only: its keys go into data (base64),
                // over data's, as kube-apiserver stores them.
                if let Some(Value::Object(sd)) = m.remove("stringData") {
                    use base64::Engine as _;
                    let data = child(m, "data");
                    if let Some(d) = obj(data) {
                        for (k, val) in sd {
                            let text = val.as_str().unwrap_or_default();
                            d.insert(
                                k,
                                json!(base64::engine::general_purpose::STANDARD.encode(text)),
                            );
                        }
                    }
                }
            }
        }
        ("apps", "Deployment") => {
            if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) {
                set_default(spec, "replicas", json!(1));
                set_default(spec, "revisionHistoryLimit", json!(10));
                set_default(spec, "progressDeadlineSeconds", json!(600));
                let strategy = child(spec, "strategy");
                if let Some(s) = obj(strategy) {
                    set_default(s, "type", json!("RollingUpdate"));
                    if s.get("type") == Some(&json!("RollingUpdate")) {
                        let ru = child(s, "rollingUpdate");
                        if let Some(r) = obj(ru) {
                            set_default(r, "maxUnavailable", json!("25%"));
                            set_default(r, "maxSurge", json!("25%"));
                        }
                    }
                }
                template(spec);
            }
        }
        ("apps", "ReplicaSet") | ("apps", "StatefulSet") => {
            if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) {
                set_default(spec, "replicas", json!(1));
                template(spec);
            }
        }
        ("batch", "Job") => job(v),
        ("apps", "DaemonSet") => {
            if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) {
                set_default(spec, "revisionHistoryLimit", json!(10));
                let strategy = child(spec, "updateStrategy");
                if let Some(s) = obj(strategy) {
                    set_default(s, "type", json!("RollingUpdate"));
                    if s.get("type") == Some(&json!("RollingUpdate")) {
                        let ru = child(s, "rollingUpdate");
                        if let Some(r) = obj(ru) {
                            set_default(r, "maxUnavailable", json!(1));
                            set_default(r, "maxSurge", json!(0));
                        }
                    }
                }
                template(spec);
            }
        }
        _ => {}
    }
}

/// A Job's defaults as kube-apiserver sets them: one pod to one
/// completion, six retries, and (unless `manualSelector`) a selector on
/// the Job's uid that its template's labels carry.
fn job(v: &mut Value) {
    let uid = v
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let name = v
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if !spec.contains_key("parallelism") && !spec.contains_key("completions") {
        spec.insert("completions".into(), json!(1));
    }
    set_default(spec, "parallelism", json!(1));
    set_default(spec, "backoffLimit", json!(6));
    set_default(spec, "completionMode", json!("NonIndexed"));
    set_default(spec, "suspend", json!(false));
    set_default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    let manual = spec.get("manualSelector") == Some(&json!(true));
    if !manual && !uid.is_empty() && !spec.contains_key("selector") {
        spec.insert(
            "selector".into(),
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
        );
        let t = child(spec, "template");
        if let Some(t) = obj(t) {
            let md = child(t, "metadata");
            if let Some(md) = obj(md) {
                let labels = child(md, "labels");
                if let Some(l) = obj(labels) {
                    for (k, val) in [
                        ("batch.kubernetes.io/controller-uid", &uid),
                        ("batch.kubernetes.io/job-name", &name),
                        ("controller-uid", &uid),
                        ("job-name", &name),
                    ] {
                        set_default(l, k, json!(val));
                    }
                }
            }
        }
    }
    template(spec);
}

fn template(spec: &mut Map<String, Value>) {
    if let Some(ps) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
        pod_spec(ps);
    }
}

fn service_spec(spec: &mut Map<String, Value>) {
    set_default(spec, "type", json!("ClusterIP"));
    set_default(spec, "sessionAffinity", json!("None"));
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    if ty != "ExternalName" {
        set_default(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if ty == "NodePort" || ty == "LoadBalancer" {
        set_default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(p, "protocol", json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                set_default(p, "targetPort", port);
            }
        }
    }
}

/// Defaults for a PodSpec (pods and pod templates).
pub fn pod_spec(spec: &mut Value) {
    let Some(m) = obj(spec) else { return };
    set_default(m, "restartPolicy", json!("Always"));
    set_default(m, "terminationGracePeriodSeconds", json!(30));
    set_default(m, "dnsPolicy", json!("ClusterFirst"));
    set_default(m, "schedulerName", json!("default-scheduler"));
    set_default(m, "securityContext", json!({}));
    set_default(m, "enableServiceLinks", json!(true));
    if let Some(sa) = m.get("serviceAccount").cloned() {
        set_default(m, "serviceAccountName", sa);
    }
    for list in ["containers", "initContainers"] {
        if let Some(cs) = m.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                container(c);
            }
        }
    }
}

fn container(c: &mut Map<String, Value>) {
    let image = c
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let latest = image_is_latest(&image);
    set_default(
        c,
        "imagePullPolicy",
        json!(if latest { "Always" } else { "IfNotPresent" }),
    );
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    set_default(c, "resources", json!({}));
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(p, "protocol", json!("TCP"));
        }
    }
}

/// An image reference without a tag (or with `:latest`) and without a digest.
pub fn image_is_latest(image: &str) -> bool {
    if image.contains('@') {
        return false;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) => tag == "latest",
        None => true,
    }
}

/// The pod's QoS class (`keelson_rules::qos`), as the API names it.
pub fn qos_class(spec: Option<&Value>) -> &'static str {
    spec.map_or(QosClass::BestEffort, qos::pod_qos_json)
        .as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::find;

    #[test]
    fn deployment_defaults() {
        let mut d = json!({"spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}});
        apply(find("apps", "v1", "deployments").unwrap(), &mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "Always"
        );
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
    }

    #[test]
    fn recreate_gets_no_rolling_update() {
        let mut d = json!({"spec": {"strategy": {"type": "Recreate"}, "template": {"spec": {"containers": []}}}});
        apply(find("apps", "v1", "deployments").unwrap(), &mut d);
        assert!(d["spec"]["strategy"].get("rollingUpdate").is_none());
    }

    #[test]
    fn service_ports() {
        let mut s = json!({"spec": {"ports": [{"port": 80}]}});
        apply(find("", "v1", "services").unwrap(), &mut s);
        assert_eq!(
            s["spec"]["ports"][0],
            json!({"port": 80, "protocol": "TCP", "targetPort": 80})
        );
        assert_eq!(s["spec"]["type"], "ClusterIP");
    }

    #[test]
    fn image_tags() {
        assert!(image_is_latest("busybox"));
        assert!(image_is_latest("localhost:5000/busybox"));
        assert!(!image_is_latest("localhost:5000/busybox:1.36"));
        assert!(!image_is_latest("busybox@sha256:abc"));
    }

    #[test]
    fn secret_string_data_goes_into_data() {
        let rt = crate::api::resources::find("", "v1", "secrets").expect("secrets");
        let mut v = json!({"metadata": {"name": "s"},
            "data": {"a": "b2xk", "keep": "eA=="},
            "stringData": {"a": "new", "b": "plain"}});
        apply(rt, &mut v);
        assert_eq!(v["type"], "Opaque");
        assert!(v.get("stringData").is_none());
        assert_eq!(v["data"]["a"], "bmV3");
        assert_eq!(v["data"]["b"], "cGxhaW4=");
        assert_eq!(v["data"]["keep"], "eA==");
    }

    #[test]
    fn qos() {
        let g = json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]});
        let b = json!({"containers": [{"resources": {"requests": {"cpu": "1"}}}]});
        let e = json!({"containers": [{}]});
        assert_eq!(qos_class(Some(&g)), "Guaranteed");
        assert_eq!(qos_class(Some(&b)), "Burstable");
        assert_eq!(qos_class(Some(&e)), "BestEffort");
    }
}
