//! Authorization cost per request: what RBAC adds to every API call that is
//! not system:masters' (the API benchmark's admin client skips it).
//!
//! `cargo bench -p keelson-e2e --bench authz`. The policy is the default
//! one (every bootstrap role and binding, aggregated) plus, per namespace,
//! a Role and a RoleBinding to a service account, and extra
//! ClusterRoleBindings to other users, as a busy cluster has. Each case
//! derives the request's attributes from its method and path (as the
//! server does) and decides it; the numbers are medians of repeated runs,
//! in nanoseconds per request.
//!
//! Environment: `KEELSON_BENCH_NAMESPACES` (1000),
//! `KEELSON_BENCH_CLUSTER_BINDINGS` (200).

use std::time::Instant;

use keelson_control_plane::server::auth::UserInfo;
use keelson_control_plane::server::authz::attributes;
use keelson_control_plane::server::authz::policy;
use keelson_control_plane::server::authz::rbac::{Kind, Policy, aggregate_all};
use serde_json::json;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn build(namespaces: usize, cluster_bindings: usize) -> Policy {
    let mut p = Policy::default();
    for role in aggregate_all(&policy::cluster_roles()) {
        p.upsert(Kind::ClusterRole, &role);
    }
    for b in policy::cluster_role_bindings() {
        p.upsert(Kind::ClusterRoleBinding, &b);
    }
    for i in 0..namespaces {
        let ns = format!("ns-{i}");
        p.upsert(
            Kind::Role,
            &json!({"metadata": {"name": "app", "namespace": ns}, "rules": [
                {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "update"]},
                {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]},
            ]}),
        );
        p.upsert(
            Kind::RoleBinding,
            &json!({"metadata": {"name": "app", "namespace": ns},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "app"},
                "subjects": [{"kind": "ServiceAccount", "name": "app", "namespace": ns}]}),
        );
    }
    for i in 0..cluster_bindings {
        p.upsert(
            Kind::ClusterRoleBinding,
            &json!({"metadata": {"name": format!("user-{i}")},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": format!("user-{i}")}]}),
        );
    }
    p
}

/// Median nanoseconds per call of `f` over `rounds` rounds of `n` calls.
fn median_ns(rounds: usize, n: usize, mut f: impl FnMut() -> bool) -> (f64, bool) {
    let mut samples = Vec::with_capacity(rounds);
    let mut last = false;
    for _ in 0..rounds {
        let start = Instant::now();
        for _ in 0..n {
            last = std::hint::black_box(f());
        }
        samples.push(start.elapsed().as_nanos() as f64 / n as f64);
    }
    samples.sort_by(f64::total_cmp);
    (samples[samples.len() / 2], last)
}

fn main() {
    let namespaces = env("KEELSON_BENCH_NAMESPACES", 1000);
    let extra = env("KEELSON_BENCH_CLUSTER_BINDINGS", 200);
    let start = Instant::now();
    let p = build(namespaces, extra);
    println!(
        "keelson authorization benchmark: default policy + {namespaces} namespaces (a Role and a RoleBinding each) + {extra} ClusterRoleBindings, built in {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    let sa = |ns: &str| UserInfo {
        name: format!("system:serviceaccount:{ns}:app"),
        uid: String::new(),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".into(),
        ],
        extra: Default::default(),
    };
    let mid = format!("ns-{}", namespaces / 2);
    let user = sa(&mid);
    let viewer = UserInfo {
        name: format!("user-{}", extra.saturating_sub(1)),
        groups: vec!["system:authenticated".into()],
        ..sa(&mid)
    };
    let pods = format!("/api/v1/namespaces/{mid}/pods");
    let nodes = "/api/v1/nodes/n1".to_string();
    let cases: Vec<(&str, &UserInfo, &str, &str, bool)> = vec![
        (
            "service account, allowed by its RoleBinding (list pods)",
            &user,
            "GET",
            &pods,
            true,
        ),
        (
            "service account, denied (delete a node: every binding looked at)",
            &user,
            "DELETE",
            &nodes,
            false,
        ),
        (
            "user, allowed by the last ClusterRoleBinding (view: list pods)",
            &viewer,
            "GET",
            &pods,
            true,
        ),
        (
            "anyone, allowed by system:discovery (GET /api)",
            &user,
            "GET",
            "/api",
            true,
        ),
    ];
    println!("{:<70} {:>12}", "case", "ns/request");
    for (name, who, method, path, want) in cases {
        let (ns, allowed) = median_ns(11, 20_000, || {
            let a = attributes::of_request(who, method, path, None);
            p.allows(&a).is_some()
        });
        assert_eq!(allowed, want, "{name}");
        println!("{name:<70} {ns:>12.0}");
    }
    let (ns, _) = median_ns(11, 20_000, || {
        let a = attributes::of_request(&user, "GET", &pods, None);
        !a.verb.is_empty()
    });
    println!(
        "{:<70} {ns:>12.0}",
        "(of which: attributes from method and path alone)"
    );
}
