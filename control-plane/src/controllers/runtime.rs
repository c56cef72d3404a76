//! The one controller idiom: every controller here is a work queue of
//! object keys fed by shared informers ([`crate::informers`]), drained by
//! workers that call a reconcile function, with failures retried per key
//! with backoff, and restarts handled by [`supervise`].
//!
//! - [`WorkQueue`], in the manner of client-go's: a key queued twice is
//!   processed once; a key is never processed by two workers at once; a key
//!   added while it is processed runs again afterwards; delayed adds are
//!   deduplicated (the earliest wins); failures back off per key.
//! - [`Controller`]: subscribes the queue to informers (each event turned
//!   into keys by the controller's own function, after the informer's cache
//!   has applied it, so a reconcile always sees at least the state that
//!   triggered it), waits for those caches to fill, then runs the workers.
//! - [`run_workers`]: a reconcile returns when to look at the key again (if
//!   ever); an error is retried with backoff (quiet errors, such as a
//!   conflict with a write the cache has not shown yet, are logged at
//!   debug); a panic is logged and treated as an error.
//! - [`supervise`]: runs a controller and starts it again (after a backoff)
//!   if it ever returns or panics.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Display;
use std::future::Future;
use std::hash::Hash;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::informers::{Cache, Event, Informer};

pub use crate::informers::Key;

struct State<K> {
    queue: VecDeque<K>,
    /// Keys waiting to be processed (in `queue`, or re-added while processing).
    dirty: HashSet<K>,
    processing: HashSet<K>,
    failures: HashMap<K, u32>,
    /// Delayed adds: when each key is due, and the keys due at each time.
    due: HashMap<K, Instant>,
    timers: BTreeMap<Instant, Vec<K>>,
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
                due: HashMap::new(),
                timers: BTreeMap::new(),
            }),
            notify: Notify::new(),
            base_backoff: base,
            max_backoff: max,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue `key` in `s`; true when a worker should be woken.
    fn add_locked(s: &mut State<K>, key: K) -> bool {
        if !s.dirty.insert(key.clone()) {
            return false;
        }
        if s.processing.contains(&key) {
            return false;
        }
        s.queue.push_back(key);
        true
    }

    pub fn add(&self, key: K) {
        if Self::add_locked(&mut self.lock(), key) {
            self.notify.notify_one();
        }
    }

    /// Add `key` once `after` has passed; a key already waiting keeps the
    /// earlier of its two times.
    pub fn add_after(&self, key: K, after: Duration) {
        if after.is_zero() {
            self.add(key);
            return;
        }
        let at = Instant::now() + after;
        let mut s = self.lock();
        if let Some(&old) = s.due.get(&key) {
            if old <= at {
                return;
            }
            if let Some(keys) = s.timers.get_mut(&old) {
                keys.retain(|k| k != &key);
                if keys.is_empty() {
                    s.timers.remove(&old);
                }
            }
        }
        s.due.insert(key.clone(), at);
        s.timers.entry(at).or_default().push(key);
        drop(s);
        // A worker waiting for a later timer must look again.
        self.notify.notify_waiters();
    }

    /// Re-add after this key's next backoff step.
    pub fn add_rate_limited(&self, key: K) {
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

    /// Move delayed keys that are due into the queue; the next time one is due.
    fn promote(s: &mut State<K>, now: Instant) -> Option<Instant> {
        while let Some(entry) = s.timers.first_entry() {
            if *entry.key() > now {
                return Some(*entry.key());
            }
            for k in entry.remove() {
                s.due.remove(&k);
                Self::add_locked(s, k);
            }
        }
        None
    }

    /// The next key to process; call [`WorkQueue::done`] with it afterwards.
    pub async fn get(&self) -> K {
        loop {
            let notified = self.notify.notified();
            let next_due = {
                let mut s = self.lock();
                let next_due = Self::promote(&mut s, Instant::now());
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
                next_due
            };
            match next_due {
                Some(at) => {
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
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

    /// Keys ready to be processed now (delayed ones not counted).
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

/// A controller being put together: its work queue, the informers feeding
/// it, and the caches it waits for before its workers start.
pub struct Controller<K> {
    name: &'static str,
    queue: Arc<WorkQueue<K>>,
    ready: Vec<(String, tokio::sync::watch::Receiver<bool>)>,
}

impl<K: Clone + Eq + Hash + Send + Sync + Display + 'static> Controller<K> {
    pub fn new(name: &'static str) -> Controller<K> {
        Controller {
            name,
            queue: WorkQueue::new(),
            ready: Vec::new(),
        }
    }

    pub fn queue(&self) -> &Arc<WorkQueue<K>> {
        &self.queue
    }

    /// Feed the queue from `informer`: `keys` gets every event (with the
    /// queue, to add the keys the event concerns). The subscription ends
    /// with the controller. Returns the informer's cache.
    pub fn watch<T: Send + Sync + 'static>(
        &mut self,
        informer: &Informer<T>,
        keys: impl Fn(&Event<T>, &WorkQueue<K>) + Send + 'static,
    ) -> Cache<T> {
        let queue: Weak<WorkQueue<K>> = Arc::downgrade(&self.queue);
        informer.subscribe_with(move |ev| match queue.upgrade() {
            Some(q) => {
                keys(ev, &q);
                true
            }
            None => false,
        });
        self.wait_for(informer.what().to_string(), informer.cache())
    }

    /// Wait for `cache` to fill before the workers start (a cache read by
    /// the reconcile function without feeding the queue).
    pub fn wait_for<T>(&mut self, what: String, cache: Cache<T>) -> Cache<T> {
        self.ready.push((what, cache.ready_signal()));
        cache
    }

    /// Wait for the caches, then work the queue until the task is aborted.
    /// Acting on a partial cache would, say, create pods that already exist.
    pub async fn run<F, Fut, E>(mut self, workers: usize, reconcile: F)
    where
        F: Fn(K) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<Duration>, E>> + Send + 'static,
        E: SyncError + Send + 'static,
    {
        for (what, ready) in &mut self.ready {
            if ready.wait_for(|r| *r).await.is_err() {
                tracing::error!(controller = self.name, watch = %what, "cache never filled");
                return;
            }
        }
        tracing::info!(controller = self.name, "started");
        run_workers(self.name, self.queue, workers, reconcile).await
    }
}

/// Run `start()`'s future, and start it again whenever it returns or
/// panics, after a backoff (1 s doubling to 30 s; back to 1 s after a run
/// of a minute or more). The one place controllers are restarted.
pub async fn supervise<F, Fut>(name: &'static str, mut start: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut backoff = Duration::from_secs(1);
    loop {
        let began = Instant::now();
        let outcome = AssertUnwindSafe(start()).catch_unwind().await;
        if began.elapsed() >= Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        match outcome {
            Ok(()) => tracing::warn!(controller = name, ?backoff, "stopped; restarting"),
            Err(_) => tracing::error!(controller = name, ?backoff, "panicked; restarting"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
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

    #[tokio::test(start_paused = true)]
    async fn delayed_adds_wait_and_keep_the_earliest_time() {
        let q: Arc<WorkQueue<&'static str>> = WorkQueue::new();
        q.add_after("a", Duration::from_secs(10));
        q.add_after("a", Duration::from_secs(3));
        q.add_after("a", Duration::from_secs(20));
        q.add_after("b", Duration::from_secs(5));
        assert!(q.is_empty());
        let start = Instant::now();
        assert_eq!(q.get().await, "a");
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        q.done(&"a");
        assert_eq!(q.get().await, "b");
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        q.done(&"b");
        // "a" was due once: nothing more comes.
        let more = tokio::time::timeout(Duration::from_secs(60), q.get()).await;
        assert!(more.is_err(), "{more:?}");
        // A worker waiting for nothing wakes for a delayed add.
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.get().await });
        tokio::task::yield_now().await;
        q.add_after("c", Duration::from_secs(1));
        assert_eq!(waiter.await.unwrap(), "c");
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
