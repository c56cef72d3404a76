//! The scheduler's view of the cluster: every node and every pod assigned
//! to one, including pods the scheduler has *assumed* onto a node before the
//! pod watch confirms the binding (kube-scheduler's assume cache), so that
//! the next pod is scheduled against resources already promised. Pure: fed
//! by the watch loop in `mod.rs`, read by [`super::core::schedule`].

use std::collections::HashMap;
use std::sync::Arc;

use super::core::{NodeInfo, NodeSpec, PodInfo, Usage};

/// Where an assigned pod's placement comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The pod watch shows `spec.nodeName`.
    Confirmed,
    /// We chose the node; the Binding request is in flight.
    Binding,
    /// The Binding succeeded; the watch has not shown it yet.
    Bound,
}

#[derive(Clone, Debug)]
pub struct Assigned {
    pub node: String,
    pub pod: Arc<PodInfo>,
    pub placement: Placement,
}

/// What a node update changed, for the retry queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeChange {
    Added,
    /// Labels, taints, readiness, schedulability or allocatable changed.
    Updated,
    /// Nothing the scheduler looks at changed (a heartbeat, an annotation).
    Unchanged,
}

#[derive(Default)]
pub struct Cache {
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// Usage of pods assigned to nodes not (or no longer) in `nodes`.
    orphans: HashMap<String, Usage>,
    pods: HashMap<String, Assigned>,
}

impl Cache {
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|&i| &self.nodes[i])
    }

    pub fn node_names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    pub fn pod(&self, uid: &str) -> Option<&Assigned> {
        self.pods.get(uid)
    }

    pub fn pod_uids(&self) -> Vec<String> {
        self.pods.keys().cloned().collect()
    }

    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// Add or update a node from its Node object.
    pub fn upsert_node(&mut self, spec: NodeSpec) -> NodeChange {
        if let Some(&i) = self.index.get(&spec.name) {
            if self.nodes[i].spec == spec {
                return NodeChange::Unchanged;
            }
            self.nodes[i].spec = spec;
            return NodeChange::Updated;
        }
        let usage = self.orphans.remove(&spec.name).unwrap_or_default();
        self.index.insert(spec.name.clone(), self.nodes.len());
        self.nodes.push(NodeInfo { spec, usage });
        NodeChange::Added
    }

    /// Forget a node; the usage of pods still assigned to it is kept in case
    /// it comes back.
    pub fn remove_node(&mut self, name: &str) -> bool {
        let Some(i) = self.index.remove(name) else {
            return false;
        };
        let node = self.nodes.swap_remove(i);
        if i < self.nodes.len() {
            self.index.insert(self.nodes[i].name.clone(), i);
        }
        if !node.usage.is_empty() {
            self.orphans.insert(node.spec.name, node.usage);
        }
        true
    }

    fn usage_mut(&mut self, node: &str) -> &mut Usage {
        match self.index.get(node) {
            Some(&i) => &mut self.nodes[i].usage,
            None => self.orphans.entry(node.to_string()).or_default(),
        }
    }

    fn release(&mut self, a: &Assigned) {
        let u = self.usage_mut(&a.node);
        u.remove(&a.pod);
        if u.is_empty() && !self.index.contains_key(&a.node) {
            self.orphans.remove(&a.node);
        }
    }

    fn insert(&mut self, a: Assigned) {
        self.usage_mut(&a.node).add(&a.pod);
        if let Some(old) = self.pods.insert(a.pod.uid.clone(), a) {
            self.release(&old);
        }
    }

    /// The watch shows `pod` on `node` (replacing an assumption, if any).
    /// True if this changed what the pod uses (its requests, ports, node).
    pub fn confirm(&mut self, pod: Arc<PodInfo>, node: &str) -> bool {
        let changed = match self.pods.get_mut(&pod.uid) {
            Some(old) if old.node == node && old.pod == pod => {
                old.placement = Placement::Confirmed;
                return false;
            }
            Some(_) => true,
            None => false,
        };
        self.insert(Assigned {
            node: node.to_string(),
            pod,
            placement: Placement::Confirmed,
        });
        changed
    }

    /// We chose `node` for `pod`; account it until the watch confirms.
    pub fn assume(&mut self, pod: Arc<PodInfo>, node: &str) {
        self.insert(Assigned {
            node: node.to_string(),
            pod,
            placement: Placement::Binding,
        });
    }

    /// The Binding for an assumed pod succeeded.
    pub fn bound(&mut self, uid: &str) {
        if let Some(a) = self.pods.get_mut(uid)
            && a.placement == Placement::Binding
        {
            a.placement = Placement::Bound;
        }
    }

    /// Drop an assumption (the Binding failed). False if the pod was not
    /// assumed (confirmed meanwhile, or deleted).
    pub fn forget(&mut self, uid: &str) -> bool {
        match self.pods.get(uid) {
            Some(a) if a.placement != Placement::Confirmed => {
                let a = self.pods.remove(uid).expect("present");
                self.release(&a);
                true
            }
            _ => false,
        }
    }

    /// The pod is gone or finished: release what it used. Returns it.
    pub fn remove_pod(&mut self, uid: &str) -> Option<Assigned> {
        let a = self.pods.remove(uid)?;
        self.release(&a);
        Some(a)
    }

    /// True while the pod is assumed (bind in flight or not yet confirmed).
    pub fn is_assumed(&self, uid: &str) -> bool {
        self.pods
            .get(uid)
            .is_some_and(|a| a.placement != Placement::Confirmed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::core::{Readiness, Resources};
    use std::collections::BTreeMap;

    fn spec(name: &str, cpu: i64) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            labels: BTreeMap::new(),
            taints: vec![],
            unschedulable: false,
            readiness: Readiness::Ready,
            allocatable: Resources {
                milli_cpu: cpu,
                memory: 1 << 30,
            },
            allowed_pods: 10,
        }
    }

    fn pod(uid: &str, cpu: i64) -> Arc<PodInfo> {
        Arc::new(PodInfo {
            uid: uid.into(),
            requests: Resources {
                milli_cpu: cpu,
                memory: 0,
            },
            ..PodInfo::default()
        })
    }

    fn used(c: &Cache, node: &str) -> (i64, i64) {
        let u = &c.node(node).unwrap().usage;
        (u.requested.milli_cpu, u.pods)
    }

    #[test]
    fn assume_confirm_forget() {
        let mut c = Cache::default();
        assert_eq!(c.upsert_node(spec("n1", 1000)), NodeChange::Added);
        assert_eq!(c.upsert_node(spec("n1", 1000)), NodeChange::Unchanged);
        assert_eq!(c.upsert_node(spec("n1", 2000)), NodeChange::Updated);

        c.assume(pod("a", 100), "n1");
        assert!(c.is_assumed("a"));
        assert_eq!(used(&c, "n1"), (100, 1));
        c.bound("a");
        assert_eq!(c.pod("a").unwrap().placement, Placement::Bound);
        // The watch confirms: same accounting, no longer assumed.
        assert!(!c.confirm(pod("a", 100), "n1"));
        assert!(!c.is_assumed("a"));
        assert_eq!(used(&c, "n1"), (100, 1));
        // A confirmed pod cannot be forgotten by a late bind failure.
        assert!(!c.forget("a"));
        assert_eq!(used(&c, "n1"), (100, 1));

        c.assume(pod("b", 300), "n1");
        assert_eq!(used(&c, "n1"), (400, 2));
        assert!(c.forget("b"));
        assert!(!c.forget("b"));
        assert_eq!(used(&c, "n1"), (100, 1));

        // A resize of a confirmed pod is a change.
        assert!(c.confirm(pod("a", 50), "n1"));
        assert_eq!(used(&c, "n1"), (50, 1));
        assert!(c.remove_pod("a").is_some());
        assert_eq!(used(&c, "n1"), (0, 0));
        assert!(c.remove_pod("a").is_none());
    }

    #[test]
    fn pods_on_unknown_nodes_are_kept_until_the_node_appears() {
        let mut c = Cache::default();
        c.confirm(pod("a", 100), "late");
        c.confirm(pod("b", 200), "late");
        assert!(c.node("late").is_none());
        c.upsert_node(spec("late", 1000));
        assert_eq!(used(&c, "late"), (300, 2));
        // Deleting the node keeps the usage; re-adding restores it.
        c.upsert_node(spec("other", 1000));
        assert!(c.remove_node("late"));
        assert!(!c.remove_node("late"));
        assert_eq!(c.nodes().len(), 1);
        assert_eq!(c.node("other").unwrap().name, "other");
        c.remove_pod("b");
        c.upsert_node(spec("late", 1000));
        assert_eq!(used(&c, "late"), (100, 1));
        c.remove_pod("a");
        assert!(c.orphans.is_empty());
    }

    #[test]
    fn remove_node_keeps_index_consistent() {
        let mut c = Cache::default();
        for n in ["a", "b", "c", "d"] {
            c.upsert_node(spec(n, 1000));
        }
        c.remove_node("a");
        c.remove_node("c");
        let mut names = c.node_names();
        names.sort();
        assert_eq!(names, ["b", "d"]);
        for n in ["b", "d"] {
            assert_eq!(c.node(n).unwrap().name, n);
        }
    }
}
