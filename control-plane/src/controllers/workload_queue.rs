//! The plumbing the workload controllers share: a work queue in the manner
//! of client-go's (a key queued twice is processed once; a key is never
//! processed by two workers at once; a key added while it is processed runs
//! again afterwards; failures back off per key), workers that drain it, and
//! reflectors whose events turn into keys only after the cache has applied
//! them, so a reconcile always sees at least the state that triggered it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::{Debug, Display};
use std::future::Future;
use std::hash::Hash;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinSet;

/// The namespace and name of an object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(namespace: &str, name: &str) -> Key {
        Key {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    pub fn of<K: Resource>(obj: &K) -> Key {
        let m = obj.meta();
        Key::new(
            m.namespace.as_deref().unwrap_or_default(),
            m.name.as_deref().unwrap_or_default(),
        )
    }

    pub fn obj_ref<K: Resource<DynamicType = ()>>(&self) -> reflector::ObjectRef<K> {
        reflector::ObjectRef::new(&self.name).within(&self.namespace)
    }
}

impl Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

struct State<K> {
    queue: VecDeque<K>,
    /// Keys waiting to be processed (in `queue`, or re-added while processing).
    dirty: HashSet<K>,
    processing: HashSet<K>,
    failures: HashMap<K, u32>,
}

pub struct WorkQueue<K> {
    state: Mutex<State<K>>,
    notify: Notify,
    base_backoff: Duration,
    max_backoff: Duration,
}

impl<K: Clone + Eq + Hash + Send + 'static> WorkQueue<K> {
    pub fn new() -> Arc<WorkQueue<K>> {
        Self::with_backoff(Duration::from_millis(50), Duration::from_secs(30))
    }

    pub fn with_backoff(base: Duration, max: Duration) -> Arc<WorkQueue<K>> {
        Arc::new(WorkQueue {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                failures: HashMap::new(),
            }),
            notify: Notify::new(),
            base_backoff: base,
            max_backoff: max,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add(&self, key: K) {
        let mut s = self.lock();
        if !s.dirty.insert(key.clone()) {
            return;
        }
        if s.processing.contains(&key) {
            return;
        }
        s.queue.push_back(key);
        drop(s);
        self.notify.notify_one();
    }

    pub fn add_after(self: &Arc<Self>, key: K, after: Duration) {
        if after.is_zero() {
            self.add(key);
            return;
        }
        let q = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            q.add(key);
        });
    }

    /// Re-add after this key's next backoff step.
    pub fn add_rate_limited(self: &Arc<Self>, key: K) {
        let delay = {
            let mut s = self.lock();
            let n = s.failures.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1);
            self.backoff(*n)
        };
        self.add_after(key, delay);
    }

    fn backoff(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(20);
        self.base_backoff
            .saturating_mul(1u32 << exp)
            .min(self.max_backoff)
    }

    /// Reset the key's backoff.
    pub fn forget(&self, key: &K) {
        self.lock().failures.remove(key);
    }

    /// The next key to process; call [`WorkQueue::done`] with it afterwards.
    pub async fn get(&self) -> K {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.lock();
                if let Some(k) = s.queue.pop_front() {
                    s.dirty.remove(&k);
                    s.processing.insert(k.clone());
                    let more = !s.queue.is_empty();
                    drop(s);
                    if more {
                        self.notify.notify_one();
                    }
                    return k;
                }
            }
            notified.await;
        }
    }

    pub fn done(&self, key: &K) {
        let mut s = self.lock();
        s.processing.remove(key);
        if s.dirty.contains(key) {
            s.queue.push_back(key.clone());
            drop(s);
            self.notify.notify_one();
        }
    }

    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An error a sync returns. Quiet errors (a conflict with a write the cache
/// has not shown yet) are retried like any other but logged at debug.
pub trait SyncError: Display {
    fn quiet(&self) -> bool {
        false
    }
}

impl SyncError for String {}

/// A kube error in a line: the API's message and code, not a Debug dump.
pub fn brief(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    }
}

/// Whether `e` is the API's answer with HTTP status `code`.
pub fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Drain `queue` with `workers` concurrent workers, forever. The handler
/// returns when to look at the key again (if ever); an error is logged and
/// the key retried with backoff; a panic is logged and treated as an error.
/// Dropping the returned future stops the workers (a controller task
/// aborted on leadership loss must not leave workers behind).
pub async fn run_workers<K, F, Fut, E>(
    controller: &'static str,
    queue: Arc<WorkQueue<K>>,
    workers: usize,
    handler: F,
) where
    K: Clone + Eq + Hash + Send + Sync + Display + 'static,
    F: Fn(K) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<Duration>, E>> + Send + 'static,
    E: SyncError + Send + 'static,
{
    let mut tasks = JoinSet::new();
    for _ in 0..workers.max(1) {
        let queue = queue.clone();
        let handler = handler.clone();
        tasks.spawn(async move {
            loop {
                let key = queue.get().await;
                let res = AssertUnwindSafe(handler(key.clone())).catch_unwind().await;
                match res {
                    Ok(Ok(None)) => queue.forget(&key),
                    Ok(Ok(Some(after))) => {
                        queue.forget(&key);
                        queue.add_after(key.clone(), after);
                    }
                    Ok(Err(e)) if e.quiet() => {
                        tracing::debug!(controller, key = %key, "sync retried: {e}");
                        queue.add_rate_limited(key.clone());
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(controller, key = %key, "sync failed: {e}");
                        queue.add_rate_limited(key.clone());
                    }
                    Err(_) => {
                        tracing::error!(controller, key = %key, "sync panicked");
                        queue.add_rate_limited(key.clone());
                    }
                }
                queue.done(&key);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// What a watched object's change means to a controller.
pub enum Change<'a, K> {
    /// Added, modified or deleted.
    Object(&'a K),
    /// The cache was (re)filled from a fresh list: events may have been missed.
    Resynced,
}

/// Keep a cache of `api`'s objects and call `on_change` (with the cache)
/// after each change has been applied to it. The watch runs in `tasks`
/// (and stops when they are dropped). Returns the cache; it is ready once
/// the first list has completed ([`Store::wait_until_ready`]).
pub fn spawn_reflector<K, F>(
    tasks: &mut JoinSet<()>,
    controller: &'static str,
    api: Api<K>,
    on_change: F,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    F: Fn(Change<'_, K>, &Store<K>) + Send + 'static,
{
    let (reader, writer) = reflector::store();
    let cache = reader.clone();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    );
    tasks.spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => {
                    on_change(Change::Object(&o), &cache)
                }
                Ok(watcher::Event::InitDone) => on_change(Change::Resynced, &cache),
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Err(e) => tracing::warn!(controller, kind = %K::kind(&()), "watch failed: {e}"),
            }
        }
    });
    reader
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dedups_and_serialises_a_key() {
        let q: Arc<WorkQueue<&'static str>> = WorkQueue::new();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        let a = q.get().await;
        assert_eq!(a, "a");
        // Re-added while processing: not handed out again until done.
        q.add("a");
        assert_eq!(q.get().await, "b");
        assert!(q.is_empty());
        q.done(&"b");
        q.done(&"a");
        assert_eq!(q.get().await, "a");
        q.done(&"a");
        assert!(q.is_empty());
    }

    // (tokio's paused clock needs its test-util feature, which this crate
    // does not enable: the delays here are real but short.)
    #[tokio::test]
    async fn backoff_grows_and_resets() {
        let q: Arc<WorkQueue<&'static str>> =
            WorkQueue::with_backoff(Duration::from_millis(20), Duration::from_millis(70));
        assert_eq!(q.backoff(1), Duration::from_millis(20));
        assert_eq!(q.backoff(2), Duration::from_millis(40));
        assert_eq!(q.backoff(3), Duration::from_millis(70));
        assert_eq!(q.backoff(40), Duration::from_millis(70));
        q.add_rate_limited("k");
        assert!(q.is_empty());
        let got = tokio::time::timeout(Duration::from_secs(5), q.get()).await;
        assert_eq!(got, Ok("k"));
        q.done(&"k");
        q.forget(&"k");
        assert!(!q.lock().failures.contains_key("k"));
    }

    #[tokio::test]
    async fn workers_retry_errors() {
        let q: Arc<WorkQueue<Key>> =
            WorkQueue::with_backoff(Duration::from_millis(1), Duration::from_millis(5));
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let c = calls.clone();
        let handler = move |k: Key| {
            let c = c.clone();
            let tx = tx.clone();
            async move {
                let n = c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if n < 2 {
                    return Err(format!("attempt {n} failed"));
                }
                let _ = tx.send(k);
                Ok(None)
            }
        };
        let run = tokio::spawn(run_workers("test", q.clone(), 2, handler));
        q.add(Key::new("ns", "x"));
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap();
        assert_eq!(got, Some(Key::new("ns", "x")));
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
        run.abort();
    }

    #[tokio::test]
    async fn aborting_the_runner_stops_its_workers() {
        let q: Arc<WorkQueue<Key>> = WorkQueue::new();
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let c = calls.clone();
        let handler = move |_: Key| {
            let c = c.clone();
            async move {
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok::<_, String>(None)
            }
        };
        let run = tokio::spawn(run_workers("test", q.clone(), 2, handler));
        q.add(Key::new("ns", "a"));
        tokio::time::timeout(Duration::from_secs(5), async {
            while calls.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        run.abort();
        let _ = run.await;
        q.add(Key::new("ns", "b"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(q.len(), 1, "nobody takes work any more");
    }
}
