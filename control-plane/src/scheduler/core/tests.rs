//! Table tests of the filters, the scores and `schedule`. Pods and nodes
//! are written as Kubernetes JSON and go through the same conversion as
//! the watch events.

use super::*;
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{Value, json};

fn pod(spec: Value) -> PodInfo {
    pod_meta(json!({}), spec)
}

fn pod_meta(meta: Value, spec: Value) -> PodInfo {
    let mut m = json!({"name": "p", "namespace": "default", "uid": "uid-p"});
    merge(&mut m, meta);
    let mut s = json!({"containers": [{"name": "c", "image": "busybox"}]});
    merge(&mut s, spec);
    let p: Pod = serde_json::from_value(json!({"metadata": m, "spec": s})).expect("pod json");
    PodInfo::from_pod(&p)
}

/// A pod with one container requesting `cpu` and `memory` ("" = unset).
fn requesting(cpu: &str, memory: &str) -> PodInfo {
    let mut req = serde_json::Map::new();
    if !cpu.is_empty() {
        req.insert("cpu".into(), cpu.into());
    }
    if !memory.is_empty() {
        req.insert("memory".into(), memory.into());
    }
    pod(json!({"containers": [{"name": "c", "resources": {"requests": req}}]}))
}

fn merge(base: &mut Value, over: Value) {
    if let (Value::Object(b), Value::Object(o)) = (&mut *base, &over) {
        for (k, v) in o {
            merge(b.entry(k.clone()).or_insert(Value::Null), v.clone());
        }
    } else {
        *base = over;
    }
}

/// A Ready node with 4 cpu, 8Gi and 110 pods, overridden by `over`
/// (a partial Node object).
fn node(over: Value) -> NodeInfo {
    let mut n = json!({
        "metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}},
        "spec": {},
        "status": {
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    });
    merge(&mut n, over);
    let n: Node = serde_json::from_value(n).expect("node json");
    NodeInfo {
        spec: NodeSpec::from_node(&n),
        usage: Usage::default(),
    }
}

fn with_pods(mut n: NodeInfo, pods: &[PodInfo]) -> NodeInfo {
    for p in pods {
        n.usage.add(p);
    }
    n
}

fn taint_reason(key: &str, value: &str) -> Reason {
    Reason::UntoleratedTaint {
        key: key.into(),
        value: value.into(),
    }
}

// ---------------------------------------------------------------------------
// Requests

/// (case, pod spec, (milli cpu, memory), the same with scoring defaults)
type RequestCase = (&'static str, Value, (i64, i64), (i64, i64));
/// (case, already requested (cpu, memory), pod cpu, pod memory, node override, reasons)
type ResourceCase = (
    &'static str,
    (&'static str, &'static str),
    &'static str,
    &'static str,
    Value,
    Vec<Reason>,
);

#[test]
fn pod_requests_table() {
    let gi = 1i64 << 30;
    let mi = 1i64 << 20;
    let cases: Vec<RequestCase> = vec![
        (
            "nothing set: zero, scoring defaults",
            json!({}),
            (0, 0),
            (100, 200 * mi),
        ),
        (
            "sum of containers",
            json!({"containers": [
                {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "128Mi"}}},
                {"name": "b", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}},
            ]}),
            (1500, gi + 128 * mi),
            (1500, gi + 128 * mi),
        ),
        (
            "limits stand in for missing requests",
            json!({"containers": [{"name": "a", "resources": {"limits": {"cpu": "2", "memory": "1G"}}}]}),
            (2000, 1_000_000_000),
            (2000, 1_000_000_000),
        ),
        (
            "default only for the unset resource",
            json!({"containers": [{"name": "a", "resources": {"requests": {"cpu": "250m"}}}]}),
            (250, 0),
            (250, 200 * mi),
        ),
        (
            "largest init container wins over a smaller sum",
            json!({
                "initContainers": [
                    {"name": "i1", "resources": {"requests": {"cpu": "3", "memory": "64Mi"}}},
                    {"name": "i2", "resources": {"requests": {"cpu": "1", "memory": "2Gi"}}},
                ],
                "containers": [{"name": "a", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}],
            }),
            (3000, 2 * gi),
            (3000, 2 * gi),
        ),
        (
            "sidecars add to containers and to later init containers",
            json!({
                "initContainers": [
                    {"name": "side", "restartPolicy": "Always", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}},
                    {"name": "init", "resources": {"requests": {"cpu": "2", "memory": "1Gi"}}},
                ],
                "containers": [{"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}],
            }),
            (3000, 2 * gi),
            (3000, 2 * gi),
        ),
        (
            "overhead is added",
            json!({
                "overhead": {"cpu": "250m", "memory": "120Mi"},
                "containers": [{"name": "a", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}],
            }),
            (1250, gi + 120 * mi),
            (1250, gi + 120 * mi),
        ),
        (
            "pod-level requests replace the container sum",
            json!({
                "resources": {"requests": {"cpu": "2"}},
                "containers": [{"name": "a", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}],
            }),
            (2000, gi),
            (2000, gi),
        ),
        (
            "exponent and decimal suffixes",
            json!({"containers": [{"name": "a", "resources": {"requests": {"cpu": "0.1", "memory": "1e3"}}}]}),
            (100, 1000),
            (100, 1000),
        ),
    ];
    for (name, spec, want, want_nz) in cases {
        let p = pod(spec);
        assert_eq!((p.requests.milli_cpu, p.requests.memory), want, "{name}");
        assert_eq!(
            (p.non_zero.milli_cpu, p.non_zero.memory),
            want_nz,
            "{name} (non-zero)"
        );
    }
}

// ---------------------------------------------------------------------------
// Filters

#[test]
fn filter_unschedulable_table() {
    let cordoned = json!({"spec": {"unschedulable": true}});
    let cases = vec![
        ("schedulable node", json!({}), json!({}), Ok(())),
        (
            "cordoned node",
            cordoned.clone(),
            json!({}),
            Err(Reason::Unschedulable),
        ),
        (
            "tolerates the unschedulable taint",
            cordoned.clone(),
            json!({"tolerations": [{"key": TAINT_UNSCHEDULABLE, "operator": "Exists", "effect": "NoSchedule"}]}),
            Ok(()),
        ),
        (
            "tolerates everything",
            cordoned.clone(),
            json!({"tolerations": [{"operator": "Exists"}]}),
            Ok(()),
        ),
        (
            "a NoExecute toleration does not cover it",
            cordoned,
            json!({"tolerations": [{"key": TAINT_UNSCHEDULABLE, "operator": "Exists", "effect": "NoExecute"}]}),
            Err(Reason::Unschedulable),
        ),
    ];
    for (name, n, p, want) in cases {
        assert_eq!(filter_unschedulable(&pod(p), &node(n)), want, "{name}");
    }
}

#[test]
fn filter_node_name_table() {
    let cases = vec![
        ("no nodeName", json!({}), Ok(())),
        ("matching nodeName", json!({"nodeName": "n1"}), Ok(())),
        (
            "other nodeName",
            json!({"nodeName": "n2"}),
            Err(Reason::NodeName),
        ),
    ];
    for (name, p, want) in cases {
        assert_eq!(filter_node_name(&pod(p), &node(json!({}))), want, "{name}");
    }
}

#[test]
fn filter_taints_table() {
    let tainted = |effect: &str| json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": effect}]}});
    let not_ready = json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}});
    let unknown = json!({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}});
    let no_conditions =
        json!({"status": {"conditions": [{"type": "MemoryPressure", "status": "False"}]}});
    let dedicated = |op: &str, value: Option<&str>, effect: Option<&str>| {
        let mut t = json!({"key": "dedicated", "operator": op});
        if let Some(v) = value {
            t["value"] = v.into();
        }
        if let Some(e) = effect {
            t["effect"] = e.into();
        }
        json!({"tolerations": [t]})
    };
    let cases = vec![
        ("untainted", json!({}), json!({}), Ok(())),
        (
            "NoSchedule, no toleration",
            tainted("NoSchedule"),
            json!({}),
            Err(taint_reason("dedicated", "gpu")),
        ),
        (
            "NoExecute, no toleration",
            tainted("NoExecute"),
            json!({}),
            Err(taint_reason("dedicated", "gpu")),
        ),
        (
            "PreferNoSchedule does not filter",
            tainted("PreferNoSchedule"),
            json!({}),
            Ok(()),
        ),
        (
            "Equal with the value",
            tainted("NoSchedule"),
            dedicated("Equal", Some("gpu"), Some("NoSchedule")),
            Ok(()),
        ),
        (
            "operator unset means Equal",
            tainted("NoSchedule"),
            json!({"tolerations": [{"key": "dedicated", "value": "gpu"}]}),
            Ok(()),
        ),
        (
            "Equal with another value",
            tainted("NoSchedule"),
            dedicated("Equal", Some("fpga"), None),
            Err(taint_reason("dedicated", "gpu")),
        ),
        (
            "Exists, any effect",
            tainted("NoExecute"),
            dedicated("Exists", None, None),
            Ok(()),
        ),
        (
            "Exists, other effect",
            tainted("NoExecute"),
            dedicated("Exists", None, Some("NoSchedule")),
            Err(taint_reason("dedicated", "gpu")),
        ),
        (
            "other key",
            tainted("NoSchedule"),
            json!({"tolerations": [{"key": "zone", "operator": "Exists"}]}),
            Err(taint_reason("dedicated", "gpu")),
        ),
        (
            "empty key Exists tolerates all",
            tainted("NoSchedule"),
            json!({"tolerations": [{"operator": "Exists"}]}),
            Ok(()),
        ),
        (
            "unknown operator",
            tainted("NoSchedule"),
            dedicated("Bogus", Some("gpu"), None),
            Err(taint_reason("dedicated", "gpu")),
        ),
        (
            "Ready=False: implicit not-ready taint",
            not_ready.clone(),
            json!({}),
            Err(taint_reason(TAINT_NOT_READY, "")),
        ),
        (
            "Ready=Unknown: implicit unreachable taint",
            unknown,
            json!({}),
            Err(taint_reason(TAINT_UNREACHABLE, "")),
        ),
        (
            "no Ready condition: unreachable",
            no_conditions,
            json!({}),
            Err(taint_reason(TAINT_UNREACHABLE, "")),
        ),
        (
            "not-ready tolerated for NoSchedule",
            not_ready.clone(),
            json!({"tolerations": [{"key": TAINT_NOT_READY, "operator": "Exists", "effect": "NoSchedule"}]}),
            Ok(()),
        ),
        (
            "a NoExecute not-ready toleration (as every pod gets) does not cover it",
            not_ready,
            json!({"tolerations": [{"key": TAINT_NOT_READY, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]}),
            Err(taint_reason(TAINT_NOT_READY, "")),
        ),
    ];
    for (name, n, p, want) in cases {
        assert_eq!(filter_taints(&pod(p), &node(n)), want, "{name}");
    }
}

#[test]
fn filter_node_affinity_table() {
    let labels =
        json!({"metadata": {"name": "n1", "labels": {"disk": "ssd", "zone": "a", "cores": "8"}}});
    let expr = |key: &str, op: &str, values: &[&str]| json!({"key": key, "operator": op, "values": values});
    let required = |terms: Value| json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}});
    let exprs = |es: Vec<Value>| required(json!([{"matchExpressions": es}]));
    let cases: Vec<(&str, Value, bool)> = vec![
        ("no selector", json!({}), true),
        (
            "nodeSelector matches",
            json!({"nodeSelector": {"disk": "ssd"}}),
            true,
        ),
        (
            "nodeSelector all must match",
            json!({"nodeSelector": {"disk": "ssd", "zone": "b"}}),
            false,
        ),
        (
            "nodeSelector missing label",
            json!({"nodeSelector": {"gpu": "yes"}}),
            false,
        ),
        ("In", exprs(vec![expr("zone", "In", &["a", "b"])]), true),
        (
            "In, no match",
            exprs(vec![expr("zone", "In", &["b"])]),
            false,
        ),
        (
            "In, label missing",
            exprs(vec![expr("rack", "In", &["1"])]),
            false,
        ),
        ("NotIn", exprs(vec![expr("zone", "NotIn", &["b"])]), true),
        (
            "NotIn, excluded",
            exprs(vec![expr("zone", "NotIn", &["a"])]),
            false,
        ),
        (
            "NotIn, label missing",
            exprs(vec![expr("rack", "NotIn", &["1"])]),
            true,
        ),
        ("Exists", exprs(vec![expr("disk", "Exists", &[])]), true),
        (
            "Exists, missing",
            exprs(vec![expr("gpu", "Exists", &[])]),
            false,
        ),
        (
            "DoesNotExist",
            exprs(vec![expr("gpu", "DoesNotExist", &[])]),
            true,
        ),
        (
            "DoesNotExist, present",
            exprs(vec![expr("disk", "DoesNotExist", &[])]),
            false,
        ),
        ("Gt", exprs(vec![expr("cores", "Gt", &["4"])]), true),
        ("Gt, equal", exprs(vec![expr("cores", "Gt", &["8"])]), false),
        ("Lt", exprs(vec![expr("cores", "Lt", &["16"])]), true),
        (
            "Lt, not a number",
            exprs(vec![expr("zone", "Lt", &["16"])]),
            false,
        ),
        (
            "Gt, bad value",
            exprs(vec![expr("cores", "Gt", &["x"])]),
            false,
        ),
        (
            "unknown operator",
            exprs(vec![expr("zone", "Near", &["a"])]),
            false,
        ),
        (
            "expressions are ANDed",
            exprs(vec![
                expr("zone", "In", &["a"]),
                expr("disk", "In", &["hdd"]),
            ]),
            false,
        ),
        (
            "terms are ORed",
            required(json!([
                {"matchExpressions": [expr("zone", "In", &["b"])]},
                {"matchExpressions": [expr("disk", "In", &["ssd"])]},
            ])),
            true,
        ),
        (
            "an empty term matches nothing",
            required(json!([{}])),
            false,
        ),
        ("no terms match nothing", required(json!([])), false),
        (
            "matchFields metadata.name",
            required(json!([{"matchFields": [expr("metadata.name", "In", &["n1"])]}])),
            true,
        ),
        (
            "matchFields other name",
            required(json!([{"matchFields": [expr("metadata.name", "In", &["n2"])]}])),
            false,
        ),
        (
            "matchFields NotIn",
            required(json!([{"matchFields": [expr("metadata.name", "NotIn", &["n2"])]}])),
            true,
        ),
        (
            "matchFields unknown field",
            required(json!([{"matchFields": [expr("metadata.uid", "In", &["n1"])]}])),
            false,
        ),
        (
            "nodeSelector and affinity both apply",
            {
                let mut p = exprs(vec![expr("zone", "In", &["a"])]);
                p["nodeSelector"] = json!({"disk": "hdd"});
                p
            },
            false,
        ),
    ];
    let n = node(labels);
    for (name, p, fits) in cases {
        let want = if fits {
            Ok(())
        } else {
            Err(Reason::NodeAffinity)
        };
        assert_eq!(filter_node_affinity(&pod(p), &n), want, "{name}");
    }
}

#[test]
fn filter_host_ports_table() {
    let ports = |ps: Value| json!({"containers": [{"name": "c", "ports": ps}]});
    let used = pod(ports(json!([
        {"containerPort": 80, "hostPort": 8080},
        {"containerPort": 53, "hostPort": 53, "protocol": "UDP", "hostIP": "10.0.0.1"},
    ])));
    let busy = with_pods(node(json!({})), &[used]);
    let cases = vec![
        (
            "no host ports",
            ports(json!([{"containerPort": 8080}])),
            Ok(()),
        ),
        (
            "same port, TCP",
            ports(json!([{"containerPort": 1, "hostPort": 8080}])),
            Err(Reason::HostPorts),
        ),
        (
            "same port, UDP",
            ports(json!([{"containerPort": 1, "hostPort": 8080, "protocol": "UDP"}])),
            Ok(()),
        ),
        (
            "other port",
            ports(json!([{"containerPort": 1, "hostPort": 8081}])),
            Ok(()),
        ),
        (
            "specific IP vs wildcard",
            ports(json!([{"containerPort": 1, "hostPort": 8080, "hostIP": "10.0.0.2"}])),
            Err(Reason::HostPorts),
        ),
        (
            "wildcard vs specific IP",
            ports(json!([{"containerPort": 1, "hostPort": 53, "protocol": "UDP"}])),
            Err(Reason::HostPorts),
        ),
        (
            "same specific IP",
            ports(
                json!([{"containerPort": 1, "hostPort": 53, "protocol": "UDP", "hostIP": "10.0.0.1"}]),
            ),
            Err(Reason::HostPorts),
        ),
        (
            "other specific IP",
            ports(
                json!([{"containerPort": 1, "hostPort": 53, "protocol": "UDP", "hostIP": "10.0.0.2"}]),
            ),
            Ok(()),
        ),
        (
            "hostNetwork claims container ports",
            json!({"hostNetwork": true, "containers": [{"name": "c", "ports": [{"containerPort": 8080}]}]}),
            Err(Reason::HostPorts),
        ),
    ];
    for (name, p, want) in cases {
        assert_eq!(filter_host_ports(&pod(p), &busy), want, "{name}");
    }
    // Releasing the pod frees its ports.
    let mut n = busy;
    let used = pod(ports(json!([
        {"containerPort": 80, "hostPort": 8080},
        {"containerPort": 53, "hostPort": 53, "protocol": "UDP", "hostIP": "10.0.0.1"},
    ])));
    n.usage.remove(&used);
    assert!(n.usage.host_ports.is_empty());
}

#[test]
fn filter_resources_table() {
    // Node: 4 cpu, 8Gi, 110 pods; `used` already requested.
    let cases: Vec<ResourceCase> = vec![
        ("fits empty node", ("", ""), "1", "1Gi", json!({}), vec![]),
        ("fits exactly", ("3", "7Gi"), "1", "1Gi", json!({}), vec![]),
        (
            "cpu short by 1m",
            ("3001m", ""),
            "1",
            "",
            json!({}),
            vec![Reason::InsufficientCpu],
        ),
        (
            "memory short",
            ("", "7Gi"),
            "",
            "1025Mi",
            json!({}),
            vec![Reason::InsufficientMemory],
        ),
        (
            "both short",
            ("4", "8Gi"),
            "1m",
            "1",
            json!({}),
            vec![Reason::InsufficientCpu, Reason::InsufficientMemory],
        ),
        (
            "zero requests fit a full node",
            ("4", "8Gi"),
            "",
            "",
            json!({}),
            vec![],
        ),
        (
            "pod count",
            ("", ""),
            "",
            "",
            json!({"status": {"allocatable": {"pods": "1"}}}),
            vec![Reason::TooManyPods],
        ),
        (
            "all three",
            ("4", "8Gi"),
            "1",
            "1Gi",
            json!({"status": {"allocatable": {"pods": "1"}}}),
            vec![
                Reason::TooManyPods,
                Reason::InsufficientCpu,
                Reason::InsufficientMemory,
            ],
        ),
        (
            "capacity is used without allocatable",
            ("", ""),
            "3",
            "",
            json!({"status": {"allocatable": null, "capacity": {"cpu": "2", "memory": "1Gi", "pods": "10"}}}),
            vec![Reason::InsufficientCpu],
        ),
        (
            "no status: nothing fits",
            ("", ""),
            "1",
            "",
            json!({"status": null}),
            vec![Reason::TooManyPods, Reason::InsufficientCpu],
        ),
    ];
    for (name, (ucpu, umem), cpu, mem, over, want) in cases {
        let n = with_pods(node(over), &[requesting(ucpu, umem)]);
        let mut out = Vec::new();
        filter_resources(&requesting(cpu, mem), &n, &mut out);
        assert_eq!(out, want, "{name}");
    }
}

#[test]
fn filters_stop_at_the_first_failure() {
    let mut out = Vec::new();
    let cordoned_tainted = node(json!({"spec": {
        "unschedulable": true,
        "taints": [{"key": "k", "effect": "NoSchedule"}],
    }}));
    filter(&requesting("100", ""), &cordoned_tainted, &mut out);
    assert_eq!(out, vec![Reason::Unschedulable]);
    let tainted = node(json!({"spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}}));
    filter(&requesting("100", ""), &tainted, &mut out);
    assert_eq!(out, vec![taint_reason("k", "")]);
    filter(&requesting("100", ""), &node(json!({})), &mut out);
    assert_eq!(out, vec![Reason::InsufficientCpu]);
    filter(&requesting("1", ""), &node(json!({})), &mut out);
    assert!(out.is_empty());
}

// ---------------------------------------------------------------------------
// Scores

#[test]
fn score_least_allocated_table() {
    // Node: 4 cpu (4000m), 8Gi.
    let cases = vec![
        ("empty node, tiny pod", None, ("1m", "1"), 99),
        ("half of each", Some(("1", "2Gi")), ("1", "2Gi"), 50),
        (
            "cpu full, memory nearly empty",
            Some(("3", "1")),
            ("1", "1"),
            49,
        ),
        (
            "defaults count: 100m and 200Mi",
            None,
            ("", ""),
            (3900 * 100 / 4000 + (8192 - 200) * 100 / 8192) / 2,
        ),
        (
            "defaults of pods on the node count",
            Some(("", "")),
            ("1m", "1"),
            (3899 * 100 / 4000 + (8192 - 200) * 100 / 8192) / 2,
        ),
        (
            "over-committed scores 0",
            Some(("4", "8Gi")),
            ("1", "1Gi"),
            0,
        ),
    ];
    for (name, used, (cpu, mem), want) in cases {
        let mut n = node(json!({}));
        if let Some((ucpu, umem)) = used {
            n.usage.add(&requesting(ucpu, umem));
        }
        assert_eq!(
            score_least_allocated(&requesting(cpu, mem), &n),
            want,
            "{name}"
        );
    }
    let no_alloc = node(json!({"status": null}));
    assert_eq!(score_least_allocated(&requesting("1", "1"), &no_alloc), 0);
}

#[test]
fn score_balanced_table() {
    // Node: 4 cpu, 8Gi. Score = (1 - |cpu% - mem%| / 2) * 100.
    let cases = vec![
        ("nothing requested", ("", ""), 100),
        ("balanced 50/50", ("2", "4Gi"), 100),
        ("cpu 100%, memory 0%", ("4", ""), 50),
        ("cpu 50%, memory 0%", ("2", ""), 75),
        ("cpu 25%, memory 75%", ("1", "6Gi"), 75),
        ("over-committed caps at 100%", ("8", "8Gi"), 100),
    ];
    for (name, (cpu, mem), want) in cases {
        assert_eq!(
            score_balanced(&requesting(cpu, mem), &node(json!({}))),
            want,
            "{name}"
        );
    }
}

#[test]
fn spread_and_normalization_table() {
    let owned = |uid: &str| {
        pod_meta(
            json!({"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": uid, "controller": true}]}),
            json!({}),
        )
    };
    let not_controller = pod_meta(
        json!({"ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "cm", "uid": "rs-1"}]}),
        json!({}),
    );
    assert_eq!(not_controller.owner, None);
    let n = with_pods(
        node(json!({})),
        &[owned("rs-1"), owned("rs-1"), owned("rs-2"), not_controller],
    );
    let cases = vec![
        ("same owner", owned("rs-1"), 2),
        ("other owner", owned("rs-2"), 1),
        ("new owner", owned("rs-3"), 0),
        ("no owner", pod(json!({})), 0),
    ];
    for (name, p, want) in cases {
        assert_eq!(spread_count(&p, &n), want, "{name}");
    }
    let norm = vec![((0, 0), 100), ((0, 4), 100), ((1, 4), 75), ((4, 4), 0)];
    for ((raw, max), want) in norm {
        assert_eq!(
            normalize_fewer_is_better(raw, max),
            want,
            "fewer {raw}/{max}"
        );
    }
    let norm = vec![((0, 0), 0), ((0, 10), 0), ((5, 10), 50), ((10, 10), 100)];
    for ((raw, max), want) in norm {
        assert_eq!(normalize_more_is_better(raw, max), want, "more {raw}/{max}");
    }
}

#[test]
fn preferred_affinity_and_prefer_no_schedule_table() {
    let n = node(json!({
        "metadata": {"labels": {"zone": "a", "disk": "ssd"}},
        "spec": {"taints": [
            {"key": "soft", "effect": "PreferNoSchedule"},
            {"key": "soft2", "value": "x", "effect": "PreferNoSchedule"},
        ]},
    }));
    let pref = |terms: Value| json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": terms}}});
    let term = |w: i32, key: &str, v: &str| json!({"weight": w, "preference": {"matchExpressions": [{"key": key, "operator": "In", "values": [v]}]}});
    let cases = vec![
        ("none", json!({}), 0),
        ("one match", pref(json!([term(10, "zone", "a")])), 10),
        (
            "matches add up",
            pref(json!([
                term(10, "zone", "a"),
                term(5, "disk", "ssd"),
                term(50, "zone", "b")
            ])),
            15,
        ),
    ];
    for (name, p, want) in cases {
        assert_eq!(node_affinity_weight(&pod(p), &n), want, "{name}");
    }
    let cases = vec![
        ("no tolerations", json!({}), 2),
        (
            "one tolerated",
            json!({"tolerations": [{"key": "soft", "operator": "Exists"}]}),
            1,
        ),
        (
            "all tolerated",
            json!({"tolerations": [{"operator": "Exists", "effect": "PreferNoSchedule"}]}),
            0,
        ),
        (
            "NoSchedule toleration does not count",
            json!({"tolerations": [{"operator": "Exists", "effect": "NoSchedule"}]}),
            2,
        ),
    ];
    for (name, p, want) in cases {
        assert_eq!(intolerable_prefer_no_schedule(&pod(p), &n), want, "{name}");
    }
}

// ---------------------------------------------------------------------------
// schedule

fn named(name: &str, over: Value) -> NodeInfo {
    let mut o = json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}});
    merge(&mut o, over);
    node(o)
}

#[test]
fn schedule_picks_the_best_node() {
    let small = || {
        named(
            "small",
            json!({"status": {"allocatable": {"cpu": "2", "memory": "4Gi"}}}),
        )
    };
    let big = || {
        named(
            "big",
            json!({"status": {"allocatable": {"cpu": "16", "memory": "32Gi"}}}),
        )
    };
    let busy = || with_pods(named("busy", json!({})), &[requesting("3", "6Gi")]);
    let ssd = || named("ssd", json!({"metadata": {"labels": {"disk": "ssd"}}}));
    let tainted = || {
        named(
            "gpu",
            json!({"spec": {"taints": [{"key": "gpu", "effect": "NoSchedule"}]}}),
        )
    };
    let soft = || {
        named(
            "soft",
            json!({"spec": {"taints": [{"key": "soft", "effect": "PreferNoSchedule"}]}}),
        )
    };
    let plain = || named("plain", json!({}));
    let cases: Vec<(&str, Vec<NodeInfo>, PodInfo, &str)> = vec![
        (
            "least allocated wins",
            vec![busy(), plain()],
            requesting("500m", "512Mi"),
            "plain",
        ),
        (
            "bigger node is less allocated",
            vec![small(), big()],
            requesting("1", "1Gi"),
            "big",
        ),
        (
            "only the big node fits",
            vec![small(), plain(), big()],
            requesting("8", ""),
            "big",
        ),
        (
            "nodeSelector",
            vec![plain(), ssd(), big()],
            pod(json!({"nodeSelector": {"disk": "ssd"}})),
            "ssd",
        ),
        (
            "taint keeps pods off",
            vec![tainted(), plain()],
            pod(json!({})),
            "plain",
        ),
        (
            "tolerating pod with a selector lands on the tainted node",
            vec![plain(), tainted()],
            pod(
                json!({"nodeSelector": {"kubernetes.io/hostname": "gpu"}, "tolerations": [{"key": "gpu", "operator": "Exists"}]}),
            ),
            "gpu",
        ),
        (
            "PreferNoSchedule is avoided when possible",
            vec![soft(), plain()],
            pod(json!({})),
            "plain",
        ),
        (
            "preferred affinity wins over a small resource difference",
            vec![plain(), with_pods(ssd(), &[requesting("100m", "")])],
            pod(
                json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 100, "preference": {"matchExpressions": [{"key": "disk", "operator": "Exists"}]}},
                ]}}}),
            ),
            "ssd",
        ),
    ];
    for (name, nodes, p, want) in cases {
        for rotation in 0..nodes.len() {
            let i = schedule(&p, &nodes, rotation, &mut Scratch::default())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(nodes[i].name, want, "{name} (rotation {rotation})");
        }
    }
}

#[test]
fn schedule_spreads_pods_of_one_owner() {
    let owned = || {
        pod_meta(
            json!({"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "rs-1", "controller": true}]}),
            json!({}),
        )
    };
    // n1 holds two of the owner's pods but less in total than n2, which
    // holds a heavier unrelated pod: spreading (weight 2) beats the small
    // resource difference.
    let nodes = vec![
        with_pods(named("n1", json!({})), &[owned(), owned()]),
        with_pods(named("n2", json!({})), &[requesting("500m", "1Gi")]),
    ];
    let i = schedule(&owned(), &nodes, 0, &mut Scratch::default()).unwrap();
    assert_eq!(nodes[i].name, "n2");
}

#[test]
fn schedule_rotates_among_equal_nodes() {
    let mut nodes: Vec<NodeInfo> = (0..4).map(|i| named(&format!("n{i}"), json!({}))).collect();
    let mut scratch = Scratch::default();
    let mut placed = Vec::new();
    for rotation in 0..8 {
        let p = pod_meta(json!({"uid": format!("u{rotation}")}), json!({}));
        let i = schedule(&p, &nodes, rotation, &mut scratch).unwrap();
        nodes[i].usage.add(&p);
        placed.push(nodes[i].name.clone());
    }
    assert_eq!(placed, ["n0", "n1", "n2", "n3", "n0", "n1", "n2", "n3"]);
}

#[test]
fn schedule_explains_why_nothing_fits() {
    let nodes = vec![
        named("a", json!({"metadata": {"labels": {"disk": "ssd"}}})),
        named("b", json!({})),
        named("c", json!({"spec": {"unschedulable": true}})),
        named(
            "d",
            json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
        ),
        named(
            "e",
            json!({"spec": {"taints": [{"key": "gpu", "value": "a100", "effect": "NoSchedule"}]}}),
        ),
        named(
            "f",
            json!({"status": {"allocatable": {"cpu": "1", "memory": "1Mi"}}, "metadata": {"labels": {"disk": "ssd"}}}),
        ),
    ];
    let mut p = requesting("3", "1Gi");
    p.required.node_selector = vec![("disk".into(), "ssd".into())];
    // Reasons are counted per node and sorted as strings, as kube-scheduler does.
    let want = "0/6 nodes are available: 1 Insufficient memory, \
                1 node(s) didn't match Pod's node affinity/selector, \
                1 node(s) had untolerated taint {gpu: a100}, \
                1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, \
                1 node(s) were unschedulable, 2 Insufficient cpu.";
    let cases: Vec<(&str, PodInfo, &str)> = vec![("mixed reasons", p, want)];
    let mut nodes = nodes;
    // Node a is full of cpu; node f lacks both.
    nodes[0].usage.add(&requesting("3500m", ""));
    for (name, p, want) in cases {
        let err = schedule(&p, &nodes, 0, &mut Scratch::default()).expect_err(name);
        assert_eq!(err.to_string(), want, "{name}");
        assert_eq!(err.nodes, 6);
    }
    let err = schedule(&pod(json!({})), &[], 0, &mut Scratch::default()).unwrap_err();
    assert_eq!(err.to_string(), "no nodes available to schedule pods");
    let three = vec![
        named("x", json!({})),
        named("y", json!({})),
        named("z", json!({})),
    ];
    let err = schedule(&requesting("5", ""), &three, 0, &mut Scratch::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "0/3 nodes are available: 3 Insufficient cpu."
    );
}
