//! The queue of pods waiting for a node. Pure: time comes in as arguments.
//!
//! A pod is *active* (ready to be tried) or *backing off* after a failed
//! attempt: 1 s after the first failure, doubling up to 10 s. A change in
//! the cluster that could make room (a node added or changed, an assigned
//! pod gone) or a change to the pod itself cuts every backoff short: the
//! pod is tried again [`INITIAL_BACKOFF`] after its last attempt, or at
//! once if that has passed, so that a busy cluster cannot make a pod
//! that fits nowhere spin.

use std::cmp::Reverse;
use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::core::PodInfo;

pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The backoff after `attempts` failed attempts (1 s, 2 s, 4 s, 8 s, 10 s, ...).
pub fn backoff(attempts: u32) -> Duration {
    let shift = attempts.saturating_sub(1).min(16);
    (INITIAL_BACKOFF * (1u32 << shift)).min(MAX_BACKOFF)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Active,
    Backoff(Instant),
    /// Handed out by [`Queue::pop`]; the caller reports the outcome.
    Popped,
}

#[derive(Debug)]
struct Entry {
    pod: Arc<PodInfo>,
    state: State,
    attempts: u32,
    last_attempt: Option<Instant>,
    observed: Observed,
}

/// What the watch last showed of a queued pod's status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// The message of its PodScheduled=False condition, if it has one.
    pub condition: Option<String>,
    pub resource_version: Option<String>,
}

#[derive(Default)]
pub struct Queue {
    entries: HashMap<String, Entry>,
    active: VecDeque<String>,
    /// Backoff deadlines; an item whose entry no longer waits for exactly
    /// that deadline is stale and skipped.
    deadlines: BinaryHeap<Reverse<(Instant, String)>>,
    backing_off: HashSet<String>,
}

impl Queue {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, uid: &str) -> bool {
        self.entries.contains_key(uid)
    }

    pub fn uids(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    pub fn attempts(&self, uid: &str) -> u32 {
        self.entries.get(uid).map_or(0, |e| e.attempts)
    }

    pub fn observed(&self, uid: &str) -> Option<&Observed> {
        self.entries.get(uid).map(|e| &e.observed)
    }

    /// Record the condition we are about to write, so that retries with
    /// the same outcome do not write it again.
    pub fn set_condition(&mut self, uid: &str, message: Option<String>) {
        if let Some(e) = self.entries.get_mut(uid) {
            e.observed.condition = message;
        }
    }

    fn activate(&mut self, uid: &str) {
        if let Some(e) = self.entries.get_mut(uid)
            && e.state != State::Active
        {
            e.state = State::Active;
            self.backing_off.remove(uid);
            self.active.push_back(uid.to_string());
        }
    }

    fn wait_until(&mut self, uid: &str, until: Instant) {
        if let Some(e) = self.entries.get_mut(uid) {
            e.state = State::Backoff(until);
            self.backing_off.insert(uid.to_string());
            self.deadlines.push(Reverse((until, uid.to_string())));
        }
    }

    /// Add a pod that waits for a node, or update one already queued. A
    /// change to the pod's scheduling inputs cuts its backoff short.
    pub fn upsert(&mut self, pod: Arc<PodInfo>, observed: Observed, now: Instant) {
        let uid = pod.uid.clone();
        match self.entries.entry(uid.clone()) {
            MapEntry::Vacant(v) => {
                v.insert(Entry {
                    pod,
                    state: State::Popped,
                    attempts: 0,
                    last_attempt: None,
                    observed,
                });
                self.activate(&uid);
            }
            MapEntry::Occupied(mut o) => {
                let e = o.get_mut();
                e.observed = observed;
                if *e.pod != *pod {
                    e.pod = pod;
                    self.expedite(&uid, now);
                }
            }
        }
    }

    pub fn remove(&mut self, uid: &str) -> bool {
        self.backing_off.remove(uid);
        self.entries.remove(uid).is_some()
    }

    /// Something changed that may let waiting pods fit: retry each one
    /// `INITIAL_BACKOFF` after its last attempt at the latest.
    pub fn cluster_changed(&mut self, now: Instant) {
        let waiting: Vec<String> = self.backing_off.iter().cloned().collect();
        for uid in waiting {
            self.expedite(&uid, now);
        }
    }

    fn expedite(&mut self, uid: &str, now: Instant) {
        let Some(e) = self.entries.get(uid) else {
            return;
        };
        let State::Backoff(until) = e.state else {
            return;
        };
        let soon = e.last_attempt.map_or(now, |t| t + INITIAL_BACKOFF);
        if soon <= now {
            self.activate(uid);
        } else if soon < until {
            self.wait_until(uid, soon);
        }
    }

    /// Move pods whose backoff has expired to the active queue.
    fn promote(&mut self, now: Instant) {
        while let Some(Reverse((t, _))) = self.deadlines.peek() {
            if *t > now {
                break;
            }
            let Reverse((t, uid)) = self.deadlines.pop().expect("peeked");
            if self
                .entries
                .get(&uid)
                .is_some_and(|e| e.state == State::Backoff(t))
            {
                self.activate(&uid);
            }
        }
    }

    /// The next pod to try, if any is active at `now`. The caller reports
    /// [`Queue::scheduled`] or [`Queue::failed`].
    pub fn pop(&mut self, now: Instant) -> Option<Arc<PodInfo>> {
        self.promote(now);
        while let Some(uid) = self.active.pop_front() {
            if let Some(e) = self.entries.get_mut(&uid)
                && e.state == State::Active
            {
                e.state = State::Popped;
                return Some(e.pod.clone());
            }
        }
        None
    }

    /// True if [`Queue::pop`] may return a pod at `now` without waiting.
    pub fn has_ready(&mut self, now: Instant) -> bool {
        self.promote(now);
        // Stale items are dropped lazily by pop; an occasional false
        // positive costs one empty pop.
        !self.active.is_empty()
    }

    /// When the earliest backoff ends.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((t, uid))) = self.deadlines.peek() {
            if self
                .entries
                .get(uid)
                .is_some_and(|e| e.state == State::Backoff(*t))
            {
                return Some(*t);
            }
            self.deadlines.pop();
        }
        None
    }

    /// The pod got a node: it leaves the queue.
    pub fn scheduled(&mut self, uid: &str) {
        self.remove(uid);
    }

    /// The attempt failed: back off. Returns the backoff.
    pub fn failed(&mut self, uid: &str, now: Instant) -> Option<Duration> {
        let e = self.entries.get_mut(uid)?;
        e.attempts += 1;
        e.last_attempt = Some(now);
        let d = backoff(e.attempts);
        self.wait_until(uid, now + d);
        Some(d)
    }

    /// Put back a pod whose binding failed, backing off as after a failure.
    pub fn requeue_failed(&mut self, pod: Arc<PodInfo>, now: Instant) -> Duration {
        let uid = pod.uid.clone();
        let attempts = self.entries.remove(&uid).map_or(0, |e| e.attempts);
        self.entries.insert(
            uid.clone(),
            Entry {
                pod,
                state: State::Popped,
                attempts,
                last_attempt: None,
                observed: Observed::default(),
            },
        );
        self.failed(&uid, now).expect("just inserted")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str) -> Arc<PodInfo> {
        Arc::new(PodInfo {
            uid: uid.into(),
            ..PodInfo::default()
        })
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn backoff_doubles_to_ten_seconds() {
        let table = [
            (0, 1),
            (1, 1),
            (2, 2),
            (3, 4),
            (4, 8),
            (5, 10),
            (6, 10),
            (100, 10),
        ];
        for (attempts, want) in table {
            assert_eq!(
                backoff(attempts),
                Duration::from_secs(want),
                "attempts {attempts}"
            );
        }
    }

    #[test]
    fn fifo_and_pop_marks_popped() {
        let t0 = Instant::now();
        let mut q = Queue::default();
        q.upsert(pod("a"), Observed::default(), t0);
        q.upsert(pod("b"), Observed::default(), t0);
        q.upsert(pod("a"), Observed::default(), t0); // unchanged: still once
        assert_eq!(q.pop(t0).unwrap().uid, "a");
        assert_eq!(q.pop(t0).unwrap().uid, "b");
        assert!(q.pop(t0).is_none());
        q.scheduled("a");
        assert!(!q.contains("a"));
        assert!(q.contains("b"));
    }

    #[test]
    fn failures_back_off_then_retry() {
        let t0 = Instant::now();
        let mut q = Queue::default();
        q.upsert(pod("a"), Observed::default(), t0);
        // (time of the attempt, backoff it earns)
        let steps = [
            (0.0, 1.0),
            (1.0, 2.0),
            (3.0, 4.0),
            (7.0, 8.0),
            (15.0, 10.0),
            (25.0, 10.0),
        ];
        for (at, d) in steps {
            let now = t0 + secs(at);
            assert_eq!(
                q.pop(now).map(|p| p.uid.clone()).as_deref(),
                Some("a"),
                "at {at}"
            );
            assert_eq!(q.failed("a", now), Some(secs(d)));
            assert!(
                q.pop(now + secs(d) - secs(0.001)).is_none(),
                "too early at {at}"
            );
            assert_eq!(q.next_deadline(), Some(now + secs(d)));
        }
        assert_eq!(q.attempts("a"), 6);
    }

    #[test]
    fn cluster_change_cuts_backoff_short() {
        // (seconds since the last attempt when the change happens, seconds
        // since the last attempt when the pod is active again)
        let table = [(0.2, 1.0), (0.99, 1.0), (1.0, 1.0), (3.0, 3.0), (7.9, 7.9)];
        for (change_at, ready_at) in table {
            let t0 = Instant::now();
            let mut q = Queue::default();
            q.upsert(pod("a"), Observed::default(), t0);
            q.pop(t0);
            for _ in 0..4 {
                q.failed("a", t0); // backoff now 8 s
            }
            q.cluster_changed(t0 + secs(change_at));
            if ready_at > change_at {
                assert!(
                    q.pop(t0 + secs(ready_at) - secs(0.001)).is_none(),
                    "change at {change_at}"
                );
            }
            assert!(
                q.pop(t0 + secs(ready_at)).is_some(),
                "change at {change_at}"
            );
        }
    }

    #[test]
    fn pod_change_cuts_its_backoff_short() {
        let t0 = Instant::now();
        let mut q = Queue::default();
        q.upsert(pod("a"), Observed::default(), t0);
        q.pop(t0);
        q.failed("a", t0);
        q.failed("a", t0); // 2 s
        // Same pod: nothing changes.
        let seen = Observed {
            condition: Some("msg".into()),
            resource_version: None,
        };
        q.upsert(pod("a"), seen, t0 + secs(1.5));
        assert!(q.pop(t0 + secs(1.5)).is_none());
        assert_eq!(q.observed("a").unwrap().condition.as_deref(), Some("msg"));
        // New tolerations: retried now (a second has passed).
        let mut changed = PodInfo {
            uid: "a".into(),
            ..PodInfo::default()
        };
        changed.node_name = "n1".into();
        q.upsert(Arc::new(changed), Observed::default(), t0 + secs(1.5));
        assert_eq!(q.pop(t0 + secs(1.5)).unwrap().node_name, "n1");
    }

    #[test]
    fn removed_pods_are_not_returned() {
        let t0 = Instant::now();
        let mut q = Queue::default();
        q.upsert(pod("a"), Observed::default(), t0);
        q.upsert(pod("b"), Observed::default(), t0);
        q.remove("a");
        assert_eq!(q.pop(t0).unwrap().uid, "b");
        q.failed("b", t0);
        q.remove("b");
        assert!(q.next_deadline().is_none());
        assert!(q.pop(t0 + secs(60.0)).is_none());
        assert!(q.is_empty());
        // Re-added after removal: active again, attempts reset.
        q.upsert(pod("b"), Observed::default(), t0);
        assert_eq!(q.attempts("b"), 0);
        assert!(q.pop(t0).is_some());
    }

    #[test]
    fn requeue_after_bind_failure_backs_off() {
        let t0 = Instant::now();
        let mut q = Queue::default();
        q.upsert(pod("a"), Observed::default(), t0);
        q.pop(t0);
        q.failed("a", t0);
        q.pop(t0 + secs(1.0)).unwrap();
        q.scheduled("a");
        assert_eq!(q.requeue_failed(pod("a"), t0 + secs(2.0)), secs(1.0));
        assert!(q.pop(t0 + secs(2.5)).is_none());
        assert!(q.pop(t0 + secs(3.0)).is_some());
    }
}
