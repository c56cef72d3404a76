//! The ReplicaSet controller's pure half: which pods a ReplicaSet claims
//! (adopting matching orphans, releasing pods it no longer selects), how
//! many pods to create, which pods to delete (upstream's ranking), and the
//! status it reports. The executor in `replicaset.rs` applies the plan.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use keelson_rules::{owners, readiness};

use super::workload_util as wu;

/// When a ready pod became ready (a Ready condition without a time counts
/// from the epoch), for ranking.
fn ready_since(pod: &Pod) -> Option<Timestamp> {
    readiness::ready_since(pod).map(|t| t.unwrap_or(Timestamp::UNIX_EPOCH))
}

/// At most this many pods are created or deleted in one sync (upstream's
/// burstReplicas).
pub const BURST_REPLICAS: usize = 500;

/// A pod the plan acts on, with the version it was planned against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    pub name: String,
    pub uid: String,
    pub resource_version: String,
}

impl PodRef {
    fn of(p: &Pod) -> PodRef {
        PodRef {
            name: wu::name(&p.metadata).to_string(),
            uid: wu::uid(&p.metadata).to_string(),
            resource_version: p.metadata.resource_version.clone().unwrap_or_default(),
        }
    }
}

pub struct RsInput<'a> {
    pub rs: &'a ReplicaSet,
    /// Every cached pod in the ReplicaSet's namespace.
    pub pods: &'a [Arc<Pod>],
    /// Active pods of this ReplicaSet and its siblings (same controller):
    /// pods sharing a node with many of them go first on scale-down.
    pub related: &'a [Arc<Pod>],
    /// Earlier creations and deletions have all shown up in the cache.
    pub expectations_satisfied: bool,
    pub now: Timestamp,
}

#[derive(Debug, Default)]
pub struct RsPlan {
    /// Orphans that match: become ours (before anything else).
    pub adopt: Vec<PodRef>,
    /// Ours but no longer selected: let go.
    pub release: Vec<PodRef>,
    pub create: usize,
    pub delete: Vec<PodRef>,
    /// The pods the ReplicaSet owns after adoption and release (active or not).
    pub claimed: Vec<Arc<Pod>>,
    /// Look again then (a ready pod becomes available after minReadySeconds).
    pub requeue_after: Option<Duration>,
}

fn replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.replicas.unwrap_or(1)
}

fn min_ready_seconds(rs: &ReplicaSet) -> i32 {
    rs.spec.min_ready_seconds.unwrap_or(0)
}

/// Plan one sync of a ReplicaSet.
pub fn plan(input: &RsInput<'_>) -> RsPlan {
    let rs = input.rs;
    let rs_uid = wu::uid(&rs.metadata);
    let sel = wu::selector(&rs.spec.selector);
    let deleting = wu::is_terminating(&rs.metadata);
    let mut out = RsPlan::default();
    for p in input.pods {
        let matches = wu::selects(sel.as_ref(), &p.metadata);
        match owners::controller_ref(&p.metadata) {
            Some(r) if r.uid == rs_uid => {
                if matches {
                    out.claimed.push(p.clone());
                } else if !wu::is_terminating(&p.metadata) {
                    out.release.push(PodRef::of(p));
                }
            }
            Some(_) => {}
            None => {
                if matches && !deleting && !wu::is_terminating(&p.metadata) {
                    out.adopt.push(PodRef::of(p));
                    out.claimed.push(p.clone());
                }
            }
        }
    }
    let active: Vec<&Pod> = out
        .claimed
        .iter()
        .map(|p| p.as_ref())
        .filter(|p| readiness::is_pod_active(p))
        .collect();
    let want = usize::try_from(replicas(rs).max(0)).unwrap_or(0);
    if input.expectations_satisfied && !deleting {
        if active.len() < want {
            let has_template = rs.spec.template.is_some();
            if has_template {
                out.create = (want - active.len()).min(BURST_REPLICAS);
            }
        } else if active.len() > want {
            let n = (active.len() - want).min(BURST_REPLICAS);
            let related: Vec<&Pod> = input.related.iter().map(|p| p.as_ref()).collect();
            out.delete = rank_for_deletion(active.clone(), &related, input.now)
                .into_iter()
                .take(n)
                .map(PodRef::of)
                .collect();
        }
    }
    // A ready pod that is not available yet becomes available later: look again then.
    let min_ready = min_ready_seconds(rs);
    if min_ready > 0 {
        out.requeue_after = active
            .iter()
            .filter_map(|p| readiness::available_at(p, min_ready))
            .filter(|at| *at >= input.now)
            .map(|at| {
                let d = at.duration_since(input.now);
                Duration::from_secs(u64::try_from(d.as_secs()).unwrap_or(0) + 1)
            })
            .min();
    }
    out
}

/// The status a ReplicaSet reports for its claimed pods. `failure` is the
/// error of this sync's creations or deletions, reported as a
/// ReplicaFailure condition.
pub fn status(
    rs: &ReplicaSet,
    claimed: &[Arc<Pod>],
    now: Timestamp,
    failure: Option<(&str, &str)>,
) -> ReplicaSetStatus {
    let min_ready = min_ready_seconds(rs);
    let template_labels = rs
        .spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .map(wu::labels)
        .cloned()
        .unwrap_or_default();
    let active: Vec<&Pod> = claimed
        .iter()
        .map(|p| p.as_ref())
        .filter(|p| readiness::is_pod_active(p))
        .collect();
    let count = |f: &dyn Fn(&Pod) -> bool| -> i32 {
        i32::try_from(active.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let fully_labeled = count(&|p| {
        let l = wu::labels(&p.metadata);
        template_labels.iter().all(|(k, v)| l.get(k) == Some(v))
    });
    let old = rs.status.clone().unwrap_or_default();
    let mut conditions: Vec<ReplicaSetCondition> = old
        .conditions
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.type_.as_deref() != Some("ReplicaFailure"))
        .collect();
    if let Some((reason, message)) = failure {
        let prev = old.conditions.as_ref().and_then(|c| {
            c.iter()
                .find(|c| c.type_.as_deref() == Some("ReplicaFailure"))
        });
        conditions.push(ReplicaSetCondition {
            type_: Some("ReplicaFailure".into()),
            status: Some("True".into()),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_transition_time: prev
                .and_then(|c| c.last_transition_time.clone())
                .or(Some(Time(wu::whole_seconds(now)))),
        });
    }
    ReplicaSetStatus {
        replicas: i32::try_from(active.len()).unwrap_or(i32::MAX),
        fully_labeled_replicas: Some(fully_labeled),
        ready_replicas: Some(count(&|p| readiness::is_pod_ready(p))),
        available_replicas: Some(count(&|p| readiness::is_pod_available(p, min_ready, now))),
        observed_generation: rs.metadata.generation,
        conditions: (!conditions.is_empty()).then_some(conditions),
        terminating_replicas: old.terminating_replicas,
    }
}

/// The pod a ReplicaSet creates from its template.
pub fn pod_from_template(rs: &ReplicaSet) -> Option<Pod> {
    let t = rs.spec.template.clone()?;
    let tm = t.metadata.unwrap_or_default();
    Some(Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", wu::name(&rs.metadata))),
            namespace: rs.metadata.namespace.clone(),
            labels: tm.labels,
            annotations: tm.annotations,
            finalizers: tm.finalizers,
            owner_references: Some(vec![owners::controller_owner_ref(
                "apps/v1",
                "ReplicaSet",
                &rs.metadata,
            )]),
            ..Default::default()
        },
        spec: t.spec,
        status: None,
    })
}

fn phase_ordinal(p: &Pod) -> u8 {
    match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 0,
    }
}

fn node(p: &Pod) -> &str {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default()
}

fn deletion_cost(p: &Pod) -> i32 {
    wu::annotation(&p.metadata, wu::POD_DELETION_COST)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn max_restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().map(|c| c.restart_count).max())
        .unwrap_or(0)
}

/// Log2 of how long ago `t` was, in nanoseconds (-1 for the future): times
/// within the same power of two count as equally old, so scale-down does not
/// always pick the very newest pod (upstream's LogarithmicScaleDown).
fn log_age(t: Timestamp, now: Timestamp) -> i64 {
    let d = now.duration_since(t).as_nanos();
    if d <= 0 {
        -1
    } else {
        i64::from(127 - (d as u128).leading_zeros() as i32)
    }
}

/// Compare `a` and `b` by age buckets; `Less` means `a` is newer.
fn cmp_age(a: Option<Timestamp>, b: Option<Timestamp>, now: Timestamp) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(a), Some(b)) => log_age(a, now).cmp(&log_age(b, now)),
    }
}

/// `pods` in the order a ReplicaSet deletes them when it has too many:
/// unscheduled before scheduled, Pending before Unknown before Running,
/// not ready before ready, lower pod-deletion-cost first, pods on nodes
/// crowded with related pods first, recently ready before long ready, more
/// restarts first, newer before older (upstream's ActivePodsWithRanks).
pub fn rank_for_deletion<'a>(pods: Vec<&'a Pod>, related: &[&Pod], now: Timestamp) -> Vec<&'a Pod> {
    let mut on_node: HashMap<&str, usize> = HashMap::new();
    for p in related.iter().filter(|p| readiness::is_pod_active(p)) {
        *on_node.entry(node(p)).or_default() += 1;
    }
    let rank = |p: &Pod| on_node.get(node(p)).copied().unwrap_or(0);
    let mut pods = pods;
    pods.sort_by(|a, b| {
        let (na, nb) = (node(a), node(b));
        if na != nb && (na.is_empty() || nb.is_empty()) {
            return if na.is_empty() {
                Ordering::Less
            } else {
                Ordering::Greater
            };
        }
        phase_ordinal(a)
            .cmp(&phase_ordinal(b))
            .then_with(|| readiness::is_pod_ready(a).cmp(&readiness::is_pod_ready(b)))
            .then_with(|| deletion_cost(a).cmp(&deletion_cost(b)))
            .then_with(|| rank(b).cmp(&rank(a)))
            .then_with(|| {
                if readiness::is_pod_ready(a) && readiness::is_pod_ready(b) {
                    cmp_age(ready_since(a), ready_since(b), now)
                } else {
                    Ordering::Equal
                }
            })
            .then_with(|| max_restarts(b).cmp(&max_restarts(a)))
            .then_with(|| {
                cmp_age(
                    a.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    b.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    now,
                )
            })
            .then_with(|| wu::uid(&a.metadata).cmp(wu::uid(&b.metadata)))
    });
    pods
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_000_000;

    fn ts(s: i64) -> String {
        Timestamp::from_second(s).unwrap().to_string()
    }

    fn rs(replicas: i32, min_ready: i32) -> ReplicaSet {
        serde_json::from_value(json!({
            "metadata": {"name": "web-abc", "namespace": "ns", "uid": "rs-uid", "generation": 4},
            "spec": {
                "replicas": replicas, "minReadySeconds": min_ready,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web", "tier": "fe"}},
                             "spec": {"containers": [{"name": "c", "image": "i"}]}}
            }
        }))
        .unwrap()
    }

    /// A pod: `owner` "rs-uid", "other" or "" (orphan); `node` "" for
    /// unscheduled; `ready_at` seconds; `created` seconds.
    fn pod(
        name: &str,
        owner: &str,
        node: &str,
        phase: &str,
        ready_at: Option<i64>,
        created: i64,
    ) -> Arc<Pod> {
        let owners = if owner.is_empty() {
            json!([])
        } else {
            json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": owner, "uid": owner, "controller": true}])
        };
        let conditions = match ready_at {
            Some(t) => json!([{"type": "Ready", "status": "True", "lastTransitionTime": ts(t)}]),
            None => json!([{"type": "Ready", "status": "False"}]),
        };
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "resourceVersion": "7",
                             "labels": {"app": "web", "tier": "fe"}, "ownerReferences": owners,
                             "creationTimestamp": ts(created)},
                "spec": {"nodeName": node, "containers": [{"name": "c"}]},
                "status": {"phase": phase, "conditions": conditions}
            }))
            .unwrap(),
        )
    }

    fn names(refs: &[PodRef]) -> Vec<&str> {
        refs.iter().map(|r| r.name.as_str()).collect()
    }

    fn plan_for(rs: &ReplicaSet, pods: &[Arc<Pod>], satisfied: bool) -> RsPlan {
        plan(&RsInput {
            rs,
            pods,
            related: pods,
            expectations_satisfied: satisfied,
            now: Timestamp::from_second(NOW).unwrap(),
        })
    }

    #[test]
    fn plans_creations_deletions_and_claims() {
        struct Case {
            name: &'static str,
            replicas: i32,
            pods: Vec<Arc<Pod>>,
            satisfied: bool,
            create: usize,
            delete: Vec<&'static str>,
            adopt: Vec<&'static str>,
            claimed: usize,
        }
        let running =
            |n: &'static str, owner| pod(n, owner, "n1", "Running", Some(NOW - 100), NOW - 200);
        let cases = vec![
            Case {
                name: "empty creates all",
                replicas: 3,
                pods: vec![],
                satisfied: true,
                create: 3,
                delete: vec![],
                adopt: vec![],
                claimed: 0,
            },
            Case {
                name: "waits for expectations",
                replicas: 3,
                pods: vec![],
                satisfied: false,
                create: 0,
                delete: vec![],
                adopt: vec![],
                claimed: 0,
            },
            Case {
                name: "steady",
                replicas: 2,
                pods: vec![running("a", "rs-uid"), running("b", "rs-uid")],
                satisfied: true,
                create: 0,
                delete: vec![],
                adopt: vec![],
                claimed: 2,
            },
            Case {
                name: "adopts orphan instead of creating",
                replicas: 2,
                pods: vec![running("a", "rs-uid"), running("o", "")],
                satisfied: true,
                create: 0,
                delete: vec![],
                adopt: vec!["o"],
                claimed: 2,
            },
            Case {
                name: "ignores pods of other controllers",
                replicas: 1,
                pods: vec![running("x", "other")],
                satisfied: true,
                create: 1,
                delete: vec![],
                adopt: vec![],
                claimed: 0,
            },
            Case {
                name: "terminating and finished pods do not count",
                replicas: 2,
                pods: vec![
                    running("a", "rs-uid"),
                    {
                        let mut p = (*running("t", "rs-uid")).clone();
                        p.metadata.deletion_timestamp =
                            Some(Time(Timestamp::from_second(NOW).unwrap()));
                        Arc::new(p)
                    },
                    pod("f", "rs-uid", "n1", "Failed", None, NOW - 10),
                ],
                satisfied: true,
                create: 1,
                delete: vec![],
                adopt: vec![],
                claimed: 3,
            },
            Case {
                name: "deletes surplus, unscheduled and unready first",
                replicas: 1,
                pods: vec![
                    running("a", "rs-uid"),
                    pod("u", "rs-uid", "", "Pending", None, NOW - 300),
                    pod("nr", "rs-uid", "n1", "Running", None, NOW - 300),
                ],
                satisfied: true,
                create: 0,
                delete: vec!["u", "nr"],
                adopt: vec![],
                claimed: 3,
            },
            Case {
                name: "scale to zero",
                replicas: 0,
                pods: vec![running("a", "rs-uid")],
                satisfied: true,
                create: 0,
                delete: vec!["a"],
                adopt: vec![],
                claimed: 1,
            },
        ];
        for c in cases {
            let r = rs(c.replicas, 0);
            let p = plan_for(&r, &c.pods, c.satisfied);
            assert_eq!(p.create, c.create, "{}: create", c.name);
            assert_eq!(names(&p.delete), c.delete, "{}: delete", c.name);
            assert_eq!(names(&p.adopt), c.adopt, "{}: adopt", c.name);
            assert_eq!(p.claimed.len(), c.claimed, "{}: claimed", c.name);
        }
    }

    #[test]
    fn releases_pods_it_no_longer_selects() {
        let r = rs(1, 0);
        let mut p = (*pod("a", "rs-uid", "n1", "Running", Some(NOW - 5), NOW - 10)).clone();
        p.metadata.labels = Some([("app".to_string(), "other".to_string())].into());
        let plan = plan_for(&r, &[Arc::new(p)], true);
        assert_eq!(names(&plan.release), vec!["a"]);
        assert_eq!(plan.create, 1);
    }

    #[test]
    fn a_deleting_replicaset_neither_adopts_nor_creates() {
        let mut r = rs(3, 0);
        r.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(NOW).unwrap()));
        let p = plan_for(&r, &[pod("o", "", "n1", "Running", None, NOW)], true);
        assert_eq!(p.create, 0);
        assert!(p.adopt.is_empty());
    }

    #[test]
    fn deletion_ranking() {
        let now = Timestamp::from_second(NOW).unwrap();
        // (name, node, phase, ready at, created)
        let pods = [
            pod(
                "old-ready",
                "rs-uid",
                "n1",
                "Running",
                Some(NOW - 100_000),
                NOW - 200_000,
            ),
            pod(
                "new-ready",
                "rs-uid",
                "n2",
                "Running",
                Some(NOW - 10),
                NOW - 20,
            ),
            pod("unready", "rs-uid", "n3", "Running", None, NOW - 200_000),
            pod("pending", "rs-uid", "n3", "Pending", None, NOW - 200_000),
            pod("unscheduled", "rs-uid", "", "Pending", None, NOW - 200_000),
        ];
        let refs: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
        let order: Vec<&str> = rank_for_deletion(refs.clone(), &[], now)
            .into_iter()
            .map(|p| wu::name(&p.metadata))
            .collect();
        assert_eq!(
            order,
            [
                "unscheduled",
                "pending",
                "unready",
                "new-ready",
                "old-ready"
            ]
        );

        // Doubled-up pods go before lone ones, other things equal.
        let a = pod("alone", "rs-uid", "n1", "Running", Some(NOW - 50), NOW - 60);
        let b = pod(
            "crowded",
            "rs-uid",
            "n2",
            "Running",
            Some(NOW - 50),
            NOW - 60,
        );
        let c = pod(
            "crowded2",
            "rs-uid",
            "n2",
            "Running",
            Some(NOW - 50),
            NOW - 60,
        );
        let related = [a.as_ref(), b.as_ref(), c.as_ref()];
        let first = rank_for_deletion(vec![a.as_ref(), b.as_ref()], &related, now)[0];
        assert_eq!(wu::name(&first.metadata), "crowded");

        // Lower deletion cost first.
        let mut cheap =
            (*pod("cheap", "rs-uid", "n1", "Running", Some(NOW - 10), NOW - 20)).clone();
        cheap.metadata.annotations =
            Some([(wu::POD_DELETION_COST.to_string(), "-5".to_string())].into());
        let pricey = pod(
            "pricey",
            "rs-uid",
            "n1",
            "Running",
            Some(NOW - 100_000),
            NOW - 200_000,
        );
        let first = rank_for_deletion(vec![pricey.as_ref(), &cheap], &[], now)[0];
        assert_eq!(wu::name(&first.metadata), "cheap");
    }

    #[test]
    fn status_counts() {
        let r = rs(4, 30);
        let mut unlabeled =
            (*pod("u", "rs-uid", "n1", "Running", Some(NOW - 100), NOW - 200)).clone();
        unlabeled.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        let claimed = vec![
            pod(
                "avail",
                "rs-uid",
                "n1",
                "Running",
                Some(NOW - 100),
                NOW - 200,
            ),
            pod(
                "ready-not-avail",
                "rs-uid",
                "n1",
                "Running",
                Some(NOW - 10),
                NOW - 20,
            ),
            pod("unready", "rs-uid", "n1", "Running", None, NOW - 20),
            Arc::new(unlabeled),
            pod("done", "rs-uid", "n1", "Succeeded", None, NOW - 20),
        ];
        let now = Timestamp::from_second(NOW).unwrap();
        let s = status(&r, &claimed, now, None);
        assert_eq!(s.replicas, 4);
        assert_eq!(s.fully_labeled_replicas, Some(3));
        assert_eq!(s.ready_replicas, Some(3));
        assert_eq!(s.available_replicas, Some(2));
        assert_eq!(s.observed_generation, Some(4));
        assert!(s.conditions.is_none());
        let failed = status(&r, &claimed, now, Some(("FailedCreate", "quota")));
        let c = &failed.conditions.unwrap()[0];
        assert_eq!(c.type_.as_deref(), Some("ReplicaFailure"));
        assert_eq!(c.reason.as_deref(), Some("FailedCreate"));

        // The ready-but-not-available pod is due in 20 s: look again then.
        let p = plan(&RsInput {
            rs: &r,
            pods: &claimed,
            related: &claimed,
            expectations_satisfied: true,
            now,
        });
        assert_eq!(p.requeue_after, Some(Duration::from_secs(21)));
    }

    #[test]
    fn pods_from_template() {
        let r = rs(1, 0);
        let p = pod_from_template(&r).unwrap();
        assert_eq!(p.metadata.generate_name.as_deref(), Some("web-abc-"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(
            wu::labels(&p.metadata).get("tier").map(String::as_str),
            Some("fe")
        );
        let owner = owners::controller_ref(&p.metadata).unwrap();
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("ReplicaSet", "rs-uid")
        );
        assert_eq!(owner.block_owner_deletion, Some(true));
    }
}
