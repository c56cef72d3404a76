//! Leader election through a Lease (`kube-system/kube-controller-manager`), so
//! that several `keelson server` processes sharing one etcd run one
//! scheduler and one controller set at a time, and fail over when the
//! leader dies.
//!
//! As client-go's leaderelection: a candidate takes the Lease when it is
//! free or when its record has not changed for `lease_duration` as observed
//! on the candidate's own clock (no cross-machine clock comparison); the
//! leader renews every `retry_period` and steps down when it cannot renew
//! within `renew_deadline`. Every write is a compare-and-swap on the
//! Lease's resourceVersion.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};

use super::Context;

pub const LEASE_NAMESPACE: &str = "kube-system";
pub const LEASE_NAME: &str = "kube-controller-manager";

#[derive(Clone, Debug)]
pub struct Timing {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        // Takeover after a crash within lease_duration + retry_period (≤ 11 s).
        Timing {
            lease_duration: Duration::from_secs(10),
            renew_deadline: Duration::from_secs(7),
            retry_period: Duration::from_secs(1),
        }
    }
}

/// What a candidate does after looking at the Lease (pure).
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Write the Lease with us as holder (create if `create`).
    Acquire { create: bool, transition: bool },
    /// Someone else holds a live Lease.
    Wait,
}

/// Decide from the current Lease (if any), who we are, and how long its
/// record has stood unchanged as we observed it.
pub fn decide(
    lease: Option<&LeaseSpec>,
    me: &str,
    unchanged_for: Duration,
    timing: &Timing,
) -> Decision {
    let Some(spec) = lease else {
        return Decision::Acquire {
            create: true,
            transition: true,
        };
    };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder == me {
        return Decision::Acquire {
            create: false,
            transition: false,
        };
    }
    let duration = spec
        .lease_duration_seconds
        .map(|s| Duration::from_secs(s.max(1) as u64))
        .unwrap_or(timing.lease_duration);
    if holder.is_empty() || unchanged_for >= duration {
        Decision::Acquire {
            create: false,
            transition: true,
        }
    } else {
        Decision::Wait
    }
}

fn lease_for(me: &str, timing: &Timing, previous: Option<&Lease>, transition: bool) -> Lease {
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let prev = previous.and_then(|l| l.spec.clone()).unwrap_or_default();
    let transitions =
        prev.lease_transitions.unwrap_or(0) + i32::from(transition && previous.is_some());
    Lease {
        metadata: ObjectMeta {
            name: Some(LEASE_NAME.into()),
            namespace: Some(LEASE_NAMESPACE.into()),
            resource_version: previous.and_then(|l| l.metadata.resource_version.clone()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(me.to_string()),
            lease_duration_seconds: Some(timing.lease_duration.as_secs() as i32),
            acquire_time: if transition {
                Some(now.clone())
            } else {
                prev.acquire_time.clone()
            },
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }),
    }
}

/// One attempt to take or renew the Lease. `observed` tracks the record we
/// last saw and when it last changed. Returns true when we hold it.
async fn try_acquire(
    api: &Api<Lease>,
    me: &str,
    timing: &Timing,
    observed: &mut Option<(String, Instant)>,
) -> Result<bool, kube::Error> {
    let current = api.get_opt(LEASE_NAME).await?;
    let record = current
        .as_ref()
        .and_then(|l| l.metadata.resource_version.clone())
        .unwrap_or_default();
    let unchanged_for = match observed {
        Some((rv, since)) if *rv == record => since.elapsed(),
        _ => {
            *observed = Some((record, Instant::now()));
            Duration::ZERO
        }
    };
    match decide(
        current.as_ref().and_then(|l| l.spec.as_ref()),
        me,
        unchanged_for,
        timing,
    ) {
        Decision::Wait => Ok(false),
        Decision::Acquire { create, transition } => {
            let lease = lease_for(me, timing, current.as_ref(), transition);
            let res = if create {
                api.create(&PostParams::default(), &lease).await
            } else {
                api.replace(LEASE_NAME, &PostParams::default(), &lease)
                    .await
            };
            match res {
                Ok(l) => {
                    *observed = Some((
                        l.metadata.resource_version.unwrap_or_default(),
                        Instant::now(),
                    ));
                    Ok(true)
                }
                // Someone else wrote first: not ours this round.
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Run the controllers while this process holds the leader Lease, until `stop`.
pub async fn run_when_leader(ctx: Arc<Context>, stop: tokio::sync::watch::Receiver<bool>) {
    run_with_timing(ctx, stop, Timing::default()).await
}

pub async fn run_with_timing(
    ctx: Arc<Context>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    timing: Timing,
) {
    let api: Api<Lease> = Api::namespaced(ctx.client.clone(), LEASE_NAMESPACE);
    let me = ctx.config.identity.clone();
    let mut observed = None;
    loop {
        // Candidate: retry until we hold the Lease.
        loop {
            match try_acquire(&api, &me, &timing, &mut observed).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election: read or write the lease"),
            }
            tokio::select! {
                _ = tokio::time::sleep(timing.retry_period) => {}
                _ = stop.changed() => return,
            }
        }
        tracing::info!(identity = %me, "became leader: starting scheduler and controllers");
        let tasks = super::spawn_all(ctx.clone());
        let mut last_renew = Instant::now();
        // Leader: renew until we cannot.
        let stopped = loop {
            tokio::select! {
                _ = tokio::time::sleep(timing.retry_period) => {}
                _ = stop.changed() => break true,
            }
            match try_acquire(&api, &me, &timing, &mut observed).await {
                Ok(true) => last_renew = Instant::now(),
                Ok(false) => {
                    tracing::warn!(identity = %me, "leader election: lost the lease to another holder");
                    break false;
                }
                Err(e) => tracing::warn!(error = %e, "leader election: renew the lease"),
            }
            if last_renew.elapsed() > timing.renew_deadline {
                tracing::warn!(identity = %me, "leader election: could not renew within the deadline");
                break false;
            }
        };
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        tracing::info!(identity = %me, "stopped leading");
        if stopped {
            // Hand the Lease over at once instead of letting it expire.
            if let Ok(Some(mut l)) = api.get_opt(LEASE_NAME).await
                && l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(me.as_str())
            {
                if let Some(s) = l.spec.as_mut() {
                    s.holder_identity = None;
                }
                let _ = api.replace(LEASE_NAME, &PostParams::default(), &l).await;
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(secs),
            ..Default::default()
        }
    }

    #[test]
    fn decisions() {
        let t = Timing::default();
        let s = Duration::from_secs;
        assert_eq!(
            decide(None, "a", s(0), &t),
            Decision::Acquire {
                create: true,
                transition: true
            }
        );
        assert_eq!(
            decide(Some(&spec("a", 10)), "a", s(0), &t),
            Decision::Acquire {
                create: false,
                transition: false
            }
        );
        assert_eq!(decide(Some(&spec("b", 10)), "a", s(3), &t), Decision::Wait);
        assert_eq!(
            decide(Some(&spec("b", 10)), "a", s(10), &t),
            Decision::Acquire {
                create: false,
                transition: true
            }
        );
        assert_eq!(
            decide(Some(&spec("", 10)), "a", s(0), &t),
            Decision::Acquire {
                create: false,
                transition: true
            }
        );
        // The holder's declared duration wins over ours.
        assert_eq!(decide(Some(&spec("b", 30)), "a", s(15), &t), Decision::Wait);
    }

    #[test]
    fn transitions_count_only_on_change_of_holder() {
        let t = Timing::default();
        let first = lease_for("a", &t, None, true);
        assert_eq!(first.spec.as_ref().unwrap().lease_transitions, Some(0));
        let renewed = lease_for("a", &t, Some(&first), false);
        assert_eq!(renewed.spec.as_ref().unwrap().lease_transitions, Some(0));
        assert_eq!(
            renewed.spec.as_ref().unwrap().acquire_time,
            first.spec.as_ref().unwrap().acquire_time
        );
        let taken = lease_for("b", &t, Some(&renewed), true);
        assert_eq!(taken.spec.as_ref().unwrap().lease_transitions, Some(1));
        assert_eq!(
            taken.spec.as_ref().unwrap().holder_identity.as_deref(),
            Some("b")
        );
    }
}
