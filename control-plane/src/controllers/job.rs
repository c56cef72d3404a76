//! The Job controller: runs a Job's pods until enough of them succeed
//! (`spec.completions`, `spec.parallelism` at a time), or until too many
//! failed (`spec.backoffLimit`) or it ran too long
//! (`spec.activeDeadlineSeconds`), then marks it Complete or Failed (with
//! SuccessCriteriaMet / FailureTarget first, as kube-controller-manager
//! does) and stops what still runs. `spec.suspend` stops its pods.
//!
//! Not done (yet): Indexed completion mode, pod failure and success
//! policies, back-off delays between retries, `ttlSecondsAfterFinished`,
//! adopting orphan pods, CronJobs. Counts of finished pods are kept in the
//! status (never lowered), so pods deleted after they finished still count.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use keelson_rules::owners;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};

use super::runtime::{Controller, Key, SyncError, brief, is_status};
use super::workload_util as wu;
use crate::informers::{Cache, Informers};

const CONTROLLER: &str = "job";
const WORKERS: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} for job {key}: {}", brief(.error))]
    Api {
        op: String,
        key: Key,
        error: kube::Error,
    },
}

impl SyncError for Error {
    fn quiet(&self) -> bool {
        matches!(self, Error::Api { error, .. } if is_status(error, 409))
    }
}

/// What one sync does (pure: [`plan`]).
#[derive(Debug, Default, PartialEq)]
pub struct JobPlan {
    /// Pods to create.
    pub create: usize,
    /// Pods to delete (name, uid).
    pub delete: Vec<(String, String)>,
    /// The status to write.
    pub status: JobStatus,
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn has_condition(st: &JobStatus, type_: &str) -> bool {
    st.conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == type_ && c.status == "True")
}

fn condition(type_: &str, reason: &str, message: &str, now: Timestamp) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Plans one sync of `job` whose pods (those it controls) are `pods`.
pub fn plan(job: &Job, pods: &[Arc<Pod>], now: Timestamp) -> JobPlan {
    let spec = job.spec.clone().unwrap_or_default();
    let old = job.status.clone().unwrap_or_default();
    let mut st = old.clone();
    let live: Vec<&Arc<Pod>> = pods
        .iter()
        .filter(|p| !matches!(phase(p), "Succeeded" | "Failed"))
        .collect();
    let (terminating, active): (Vec<&Arc<Pod>>, Vec<&Arc<Pod>>) =
        live.iter().partition(|p| wu::is_terminating(&p.metadata));
    let count = |ph: &str| pods.iter().filter(|p| phase(p) == ph).count() as i32;
    let succeeded = count("Succeeded").max(old.succeeded.unwrap_or(0));
    let failed = count("Failed").max(old.failed.unwrap_or(0));
    st.succeeded = Some(succeeded);
    st.failed = Some(failed);
    st.terminating = Some(terminating.len() as i32);
    let mut p = JobPlan::default();
    let stop_all = |p: &mut JobPlan| {
        p.delete = active
            .iter()
            .map(|x| {
                (
                    wu::name(&x.metadata).to_string(),
                    wu::uid(&x.metadata).to_string(),
                )
            })
            .collect();
    };
    let finished = has_condition(&old, "Complete") || has_condition(&old, "Failed");
    if finished {
        stop_all(&mut p);
        st.active = Some(0);
        st.ready = Some(0);
        p.status = st;
        return p;
    }
    let suspended = spec.suspend == Some(true);
    if !suspended && st.start_time.is_none() {
        st.start_time = Some(Time(now));
    }
    let completions = spec.completions;
    let complete = match completions {
        Some(c) => succeeded >= c,
        None => succeeded > 0 && active.is_empty(),
    };
    let backoff_limit = spec.backoff_limit.unwrap_or(6);
    let deadline_passed = spec.active_deadline_seconds.is_some_and(|d| {
        st.start_time
            .as_ref()
            .is_some_and(|t| now.as_second() - t.0.as_second() >= d)
    });
    let mut conditions = old.conditions.clone().unwrap_or_default();
    if complete {
        conditions.push(condition(
            "SuccessCriteriaMet",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
            now,
        ));
        conditions.push(condition(
            "Complete",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
            now,
        ));
        st.completion_time = Some(Time(now));
        stop_all(&mut p);
    } else if failed > backoff_limit || deadline_passed {
        let (reason, message) = if deadline_passed {
            (
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            )
        } else {
            (
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            )
        };
        conditions.push(condition("FailureTarget", reason, message, now));
        conditions.push(condition("Failed", reason, message, now));
        stop_all(&mut p);
    } else if suspended {
        if !has_condition(&old, "Suspended") {
            conditions.push(condition("Suspended", "JobSuspended", "Job suspended", now));
        }
        stop_all(&mut p);
    } else {
        conditions.retain(|c| c.type_ != "Suspended");
        let parallelism = spec.parallelism.unwrap_or(1).max(0);
        let want = match completions {
            Some(c) => parallelism.min((c - succeeded).max(0)),
            None if succeeded > 0 => 0,
            None => parallelism,
        } as usize;
        if active.len() < want {
            p.create = want - active.len();
        } else if active.len() > want {
            // The newest go first.
            let mut extra: Vec<&&Arc<Pod>> = active.iter().collect();
            extra.sort_by_key(|x| {
                std::cmp::Reverse(x.metadata.creation_timestamp.clone().map(|t| t.0))
            });
            p.delete = extra
                .into_iter()
                .take(active.len() - want)
                .map(|x| {
                    (
                        wu::name(&x.metadata).to_string(),
                        wu::uid(&x.metadata).to_string(),
                    )
                })
                .collect();
        }
    }
    st.conditions = (!conditions.is_empty()).then_some(conditions);
    let remaining = active.len() - p.delete.len().min(active.len());
    st.active = Some((remaining + p.create) as i32);
    st.ready = Some(active.iter().filter(|x| is_ready(x)).count() as i32);
    p.status = st;
    p
}

/// A pod of `job`'s template.
fn pod_for(job: &Job) -> Option<Pod> {
    let t = job.spec.as_ref()?.template.clone();
    let tm = t.metadata.unwrap_or_default();
    Some(Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", wu::name(&job.metadata))),
            namespace: job.metadata.namespace.clone(),
            labels: tm.labels,
            annotations: tm.annotations,
            finalizers: tm.finalizers,
            owner_references: Some(vec![owners::controller_owner_ref(
                "batch/v1",
                "Job",
                &job.metadata,
            )]),
            ..Default::default()
        },
        spec: t.spec,
        status: None,
    })
}

struct Jc {
    client: kube::Client,
    jobs: Cache<Job>,
    pods: Cache<Pod>,
    /// Pods created whose arrival in the cache is awaited, per Job (until
    /// then the Job creates no more).
    pending: std::sync::Mutex<std::collections::HashMap<Key, (Vec<String>, std::time::Instant)>>,
}

pub async fn run(ctx: Arc<super::Context>, informers: Arc<Informers>) {
    let mut c: Controller<Key> = Controller::new(CONTROLLER);
    let jobs = c.watch(&informers.get::<Job>(), |ev, q| {
        if let Some(j) = ev.object() {
            q.add(Key::of(j.as_ref()));
        }
    });
    let pods = c.watch(&informers.get::<Pod>(), move |ev, q| {
        for pod in ev.old().into_iter().chain(ev.object()) {
            if let Some(r) = owners::controller_ref(&pod.metadata)
                && r.kind == "Job"
                && r.api_version.starts_with("batch/")
            {
                q.add(Key::new(wu::namespace(&pod.metadata), &r.name));
            }
        }
    });
    let jc = Arc::new(Jc {
        client: ctx.client_as(super::identity::JOB),
        jobs,
        pods,
        pending: Default::default(),
    });
    c.run(WORKERS, move |key: Key| {
        let jc = jc.clone();
        async move { sync(&jc, &key).await }
    })
    .await;
}

fn api_err(op: impl Into<String>, key: &Key) -> impl FnOnce(kube::Error) -> Error + '_ {
    let op = op.into();
    move |error| Error::Api {
        op,
        key: key.clone(),
        error,
    }
}

async fn sync(jc: &Jc, key: &Key) -> Result<Option<Duration>, Error> {
    let Some(job) = jc.jobs.get(key) else {
        jc.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
        return Ok(None);
    };
    let job_uid = wu::uid(&job.metadata).to_string();
    let pods: Vec<Arc<Pod>> = jc.pods.filter(|p| {
        wu::namespace(&p.metadata) == key.namespace && owners::controlled_by(&p.metadata, &job_uid)
    });
    // Wait for created pods to show in the cache (30 s at most).
    {
        let mut pending = jc.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((names, since)) = pending.get(key) {
            let seen = names
                .iter()
                .all(|n| pods.iter().any(|p| wu::name(&p.metadata) == n));
            if seen || since.elapsed() > Duration::from_secs(30) {
                pending.remove(key);
            } else {
                return Ok(Some(Duration::from_secs(1)));
            }
        }
    }
    let now = Timestamp::now();
    let plan = plan(&job, &pods, now);
    let pods_api: Api<Pod> = Api::namespaced(jc.client.clone(), &key.namespace);
    let mut first_error = None;
    if plan.create > 0
        && let Some(template) = pod_for(&job)
    {
        let pp = PostParams::default();
        let results = join_all((0..plan.create).map(|_| pods_api.create(&pp, &template))).await;
        let mut names = Vec::new();
        for r in results {
            match r {
                Ok(p) => names.push(wu::name(&p.metadata).to_string()),
                Err(e) if first_error.is_none() => {
                    first_error = Some(api_err("create pod", key)(e));
                }
                Err(_) => {}
            }
        }
        if !names.is_empty() {
            jc.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.clone(), (names, std::time::Instant::now()));
        }
    }
    for (name, uid) in &plan.delete {
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match pods_api.delete(name, &dp).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => {}
            Err(e) => {
                if first_error.is_none() {
                    first_error = Some(api_err(format!("delete pod {name}"), key)(e));
                }
            }
        }
    }
    if let Some(patch) = wu::status_patch(job.status.as_ref(), &plan.status) {
        let api: Api<Job> = Api::namespaced(jc.client.clone(), &key.namespace);
        match api
            .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => return Ok(None),
            Err(e) => return Err(api_err("update status", key)(e)),
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    // A deadline is checked again when it comes.
    let requeue = job
        .spec
        .as_ref()
        .and_then(|s| s.active_deadline_seconds)
        .filter(|_| {
            !has_condition(&plan.status, "Complete") && !has_condition(&plan.status, "Failed")
        })
        .map(|d| {
            let started = plan
                .status
                .start_time
                .as_ref()
                .map_or(now.as_second(), |t| t.0.as_second());
            Duration::from_secs((started + d - now.as_second()).max(1) as u64)
        });
    Ok(requeue)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(spec: serde_json::Value) -> Job {
        serde_json::from_value(json!({
            "metadata": {"name": "j", "namespace": "ns", "uid": "ju"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn pod(name: &str, phase: &str) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ns", "uid": format!("u-{name}"),
                             "creationTimestamp": "2026-01-01T00:00:00Z"},
                "status": {"phase": phase},
            }))
            .unwrap(),
        )
    }

    fn types(st: &JobStatus) -> Vec<String> {
        st.conditions
            .iter()
            .flatten()
            .map(|c| c.type_.clone())
            .collect()
    }

    #[test]
    fn runs_parallelism_pods_until_completions_succeed() {
        let now = Timestamp::now();
        let j = job(json!({"completions": 3, "parallelism": 2, "template": {}}));
        let p = plan(&j, &[], now);
        assert_eq!((p.create, p.status.active), (2, Some(2)));
        assert!(p.status.start_time.is_some());
        // One succeeded, one runs: one more (two left to succeed).
        let p = plan(&j, &[pod("a", "Succeeded"), pod("b", "Running")], now);
        assert_eq!((p.create, p.status.succeeded), (1, Some(1)));
        // Three succeeded: Complete, the completion time set.
        let pods = [
            pod("a", "Succeeded"),
            pod("b", "Succeeded"),
            pod("c", "Succeeded"),
        ];
        let p = plan(&j, &pods, now);
        assert_eq!(p.create, 0);
        assert_eq!(types(&p.status), ["SuccessCriteriaMet", "Complete"]);
        assert!(p.status.completion_time.is_some());
        // Deleted pods keep counting.
        let mut done = j.clone();
        done.status = Some(p.status);
        let p = plan(&done, &[], now);
        assert_eq!((p.create, p.status.succeeded), (0, Some(3)));
    }

    #[test]
    fn fails_past_the_backoff_limit_and_stops_what_runs() {
        let now = Timestamp::now();
        let j = job(json!({"completions": 1, "parallelism": 1, "backoffLimit": 1, "template": {}}));
        // One failure is within the limit: a retry.
        let p = plan(&j, &[pod("a", "Failed")], now);
        assert_eq!(p.create, 1);
        let p = plan(
            &j,
            &[pod("a", "Failed"), pod("b", "Failed"), pod("c", "Running")],
            now,
        );
        assert_eq!(p.create, 0);
        assert_eq!(types(&p.status), ["FailureTarget", "Failed"]);
        assert_eq!(
            p.status.conditions.as_ref().unwrap()[1].reason.as_deref(),
            Some("BackoffLimitExceeded")
        );
        assert_eq!(p.delete, [("c".to_string(), "u-c".to_string())]);
    }

    #[test]
    fn suspend_stops_and_a_work_queue_ends_with_its_first_success() {
        let now = Timestamp::now();
        let j = job(json!({"parallelism": 2, "suspend": true, "template": {}}));
        let p = plan(&j, &[pod("a", "Running")], now);
        assert_eq!((p.create, p.delete.len()), (0, 1));
        assert_eq!(types(&p.status), ["Suspended"]);
        // No completions: parallel workers until one succeeds and the rest end.
        let q = job(json!({"parallelism": 2, "template": {}}));
        assert_eq!(plan(&q, &[], now).create, 2);
        let p = plan(&q, &[pod("a", "Succeeded"), pod("b", "Running")], now);
        assert_eq!(p.create, 0);
        assert!(types(&p.status).is_empty());
        let p = plan(&q, &[pod("a", "Succeeded"), pod("b", "Succeeded")], now);
        assert!(types(&p.status).contains(&"Complete".to_string()));
    }
}
