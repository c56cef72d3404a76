//! One watch per resource type per process, shared by every consumer, as
//! client-go's informer factory and kube-rs's shared reflector stores do.
//!
//! An [`Informer`] runs one kube-runtime watcher (with its default back-off),
//! keeps the objects in one reflector [`Store`], and fans every watch event
//! out to its subscribers. A subscriber first gets the current state as a
//! relist (`Init`, `InitApply` per object, `InitDone`), then every event
//! in order; one that falls behind gets a fresh relist of the store instead
//! of the events it missed, so a subscriber never misses a state.
//! [`Informers`] hands out one informer per resource type (and selector),
//! created on first use.

#![forbid(unsafe_code)]

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt::Debug;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

/// A watch event as subscribers see it: objects are shared, not copied.
#[derive(Debug, Clone)]
pub enum Event<K> {
    /// The object was added or changed.
    Apply(Arc<K>),
    /// The object was deleted.
    Delete(Arc<K>),
    /// A (re)list starts: the objects that follow, up to `InitDone`, are the
    /// whole state.
    Init,
    /// One object of a (re)list.
    InitApply(Arc<K>),
    /// The (re)list is complete.
    InitDone,
}

/// What a resource type needs to be informed on.
pub trait Object:
    Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static
{
}
impl<K> Object for K where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static
{
}

/// Events broadcast to subscribers; a lagging subscriber relists.
const BUFFER: usize = 4096;

struct Shared<K: Object> {
    writer: Writer<K>,
    tx: broadcast::Sender<Event<K>>,
    /// The first list is complete (the store holds a whole state).
    listed: bool,
}

/// The store and the fan-out, fed one watch event at a time (no I/O: the
/// informer's task feeds it; tests feed it by hand).
#[derive(Clone)]
pub struct Hub<K: Object> {
    store: Store<K>,
    shared: Arc<Mutex<Shared<K>>>,
}

impl<K: Object> Hub<K> {
    /// An empty hub whose subscribers may fall `buffer` events behind
    /// before they relist.
    pub fn new(buffer: usize) -> Hub<K> {
        let (store, writer) = reflector::store::<K>();
        let (tx, _) = broadcast::channel(buffer);
        Hub {
            store,
            shared: Arc::new(Mutex::new(Shared {
                writer,
                tx,
                listed: false,
            })),
        }
    }

    /// Applies one watch event to the store and sends it to subscribers.
    pub fn apply(&self, ev: watcher::Event<K>) {
        let mut sh = self.shared.lock().expect("informer lock");
        sh.writer.apply_watcher_event(&ev);
        if matches!(ev, watcher::Event::InitDone) {
            sh.listed = true;
        }
        let out = match ev {
            watcher::Event::Apply(o) => Event::Apply(Arc::new(o)),
            watcher::Event::Delete(o) => Event::Delete(Arc::new(o)),
            watcher::Event::Init => Event::Init,
            watcher::Event::InitApply(o) => Event::InitApply(Arc::new(o)),
            watcher::Event::InitDone => Event::InitDone,
        };
        // No subscriber yet is fine: they start from the store.
        let _ = sh.tx.send(out);
    }

    /// The objects as the events left them.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// See [`Informer::subscribe`].
    pub fn subscribe(&self) -> Subscription<K> {
        let sh = self.shared.lock().expect("informer lock");
        let rx = sh.tx.subscribe();
        // Taken under the lock events are applied under: the relist and
        // the events that follow it fit together.
        let pending = if sh.listed {
            relist(&self.store)
        } else {
            Vec::new()
        };
        drop(sh);
        Subscription {
            store: self.store.clone(),
            pending: pending.into(),
            rx: Box::pin(tokio_stream_like::BroadcastStream::new(rx)),
        }
    }
}

/// One watch of one resource type, its store, and its subscribers.
pub struct Informer<K: Object> {
    hub: Hub<K>,
    task: tokio::task::JoinHandle<()>,
}

impl<K: Object> Drop for Informer<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<K: Object> Informer<K> {
    /// Starts watching `api` with `config` (one watch for every
    /// subscriber). Watch errors are logged and retried with back-off.
    pub fn start(api: kube::Api<K>, config: watcher::Config) -> Arc<Informer<K>> {
        let hub = Hub::new(BUFFER);
        let h = hub.clone();
        let kind = K::kind(&()).to_string();
        let task = tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher(api, config).default_backoff());
            while let Some(ev) = events.next().await {
                match ev {
                    Ok(ev) => h.apply(ev),
                    Err(e) => tracing::warn!(kind, "watch: {e}"),
                }
            }
        });
        Arc::new(Informer { hub, task })
    }

    /// The objects as the watch last saw them.
    pub fn store(&self) -> Store<K> {
        self.hub.store()
    }

    /// Waits until the first list is complete.
    pub async fn wait_until_ready(&self) {
        // The store's own readiness: it is set at the first InitDone.
        let _ = self.hub.store.wait_until_ready().await;
    }

    /// Every state from now on: the current one as a relist (if the first
    /// list is complete), then each event.
    pub fn subscribe(&self) -> Subscription<K> {
        self.hub.subscribe()
    }
}

fn relist<K: Object>(store: &Store<K>) -> Vec<Event<K>> {
    let mut v = vec![Event::Init];
    v.extend(store.state().into_iter().map(Event::InitApply));
    v.push(Event::InitDone);
    v
}

/// A subscriber's events (see [`Informer::subscribe`]).
pub struct Subscription<K: Object> {
    store: Store<K>,
    pending: std::collections::VecDeque<Event<K>>,
    rx: Pin<Box<tokio_stream_like::BroadcastStream<Event<K>>>>,
}

impl<K: Object> Stream for Subscription<K> {
    type Item = Event<K>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event<K>>> {
        if let Some(ev) = self.pending.pop_front() {
            return Poll::Ready(Some(ev));
        }
        match self.rx.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(ev))) => Poll::Ready(Some(ev)),
            Poll::Ready(Some(Err(skipped))) => {
                tracing::debug!(kind = %K::kind(&()), skipped, "subscriber fell behind: relist");
                let mut events = relist(&self.store);
                let first = events.remove(0);
                self.pending.extend(events);
                Poll::Ready(Some(first))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A broadcast receiver as a stream that reports lag (what tokio-stream's
/// BroadcastStream does; kept here to keep the dependency list short).
mod tokio_stream_like {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures::Stream;
    use futures::future::BoxFuture;
    use tokio::sync::broadcast::{self, error::RecvError};

    type Recv<T> = BoxFuture<'static, (Result<T, RecvError>, broadcast::Receiver<T>)>;

    pub struct BroadcastStream<T: Clone + Send + 'static> {
        fut: Recv<T>,
    }

    async fn recv<T: Clone + Send + 'static>(
        mut rx: broadcast::Receiver<T>,
    ) -> (Result<T, RecvError>, broadcast::Receiver<T>) {
        let r = rx.recv().await;
        (r, rx)
    }

    impl<T: Clone + Send + 'static> BroadcastStream<T> {
        pub fn new(rx: broadcast::Receiver<T>) -> Self {
            BroadcastStream {
                fut: Box::pin(recv(rx)),
            }
        }
    }

    impl<T: Clone + Send + 'static> Stream for BroadcastStream<T> {
        /// `Err(n)`: `n` events were skipped.
        type Item = Result<T, u64>;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            let (r, rx) = futures::ready!(self.fut.as_mut().poll(cx));
            self.fut = Box::pin(recv(rx));
            match r {
                Ok(v) => Poll::Ready(Some(Ok(v))),
                Err(RecvError::Lagged(n)) => Poll::Ready(Some(Err(n))),
                Err(RecvError::Closed) => Poll::Ready(None),
            }
        }
    }
}

/// Informers by (resource type, field selector).
type InformerMap = HashMap<(TypeId, String), Arc<dyn Any + Send + Sync>>;

/// The process's informers: one per resource type and selector, created on
/// first use, shared by every consumer.
#[derive(Clone)]
pub struct Informers {
    client: kube::Client,
    map: Arc<Mutex<InformerMap>>,
}

impl Informers {
    /// Informers watching through `client`.
    pub fn new(client: kube::Client) -> Informers {
        Informers {
            client,
            map: Arc::default(),
        }
    }

    /// The client they watch through.
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// The informer of every `K` in the cluster.
    pub fn all<K>(&self) -> Arc<Informer<K>>
    where
        K: Object + Resource<Scope = kube::core::NamespaceResourceScope>,
    {
        self.get::<K>(String::new(), || kube::Api::all(self.client.clone()))
    }

    /// The informer of every `K` in the cluster, for cluster-scoped types.
    pub fn cluster<K>(&self) -> Arc<Informer<K>>
    where
        K: Object + Resource<Scope = kube::core::ClusterResourceScope>,
    {
        self.get::<K>(String::new(), || kube::Api::all(self.client.clone()))
    }

    /// The informer of the `K` matching `fields` (a field selector), for
    /// consumers that must not watch everything (an agent's own pods).
    pub fn with_fields<K>(&self, fields: &str) -> Arc<Informer<K>>
    where
        K: Object + Resource<Scope = kube::core::NamespaceResourceScope>,
    {
        self.get::<K>(fields.to_string(), || kube::Api::all(self.client.clone()))
    }

    fn get<K: Object>(
        &self,
        fields: String,
        api: impl FnOnce() -> kube::Api<K>,
    ) -> Arc<Informer<K>> {
        let mut map = self.map.lock().expect("informers lock");
        let key = (TypeId::of::<K>(), fields.clone());
        if let Some(i) = map
            .get(&key)
            .and_then(|a| a.clone().downcast::<Informer<K>>().ok())
        {
            return i;
        }
        let mut config = watcher::Config::default();
        if !fields.is_empty() {
            config = config.fields(&fields);
        }
        let i = Informer::start(api(), config);
        map.insert(key, i.clone());
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn cm(name: &str, v: &str) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.name = Some(name.into());
        c.metadata.namespace = Some("default".into());
        c.data = Some([("v".to_string(), v.to_string())].into());
        c
    }

    fn describe(ev: &Event<ConfigMap>) -> String {
        let n = |c: &ConfigMap| {
            format!(
                "{}={}",
                c.metadata.name.clone().unwrap_or_default(),
                c.data
                    .as_ref()
                    .and_then(|d| d.get("v"))
                    .cloned()
                    .unwrap_or_default()
            )
        };
        match ev {
            Event::Apply(c) => format!("apply {}", n(c)),
            Event::Delete(c) => format!("delete {}", n(c)),
            Event::Init => "init".into(),
            Event::InitApply(c) => format!("list {}", n(c)),
            Event::InitDone => "done".into(),
        }
    }

    fn drain(sub: &mut Subscription<ConfigMap>) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(Some(ev)) = sub.next().now_or_never() {
            out.push(describe(&ev));
        }
        out
    }

    use futures::FutureExt;

    #[tokio::test]
    async fn subscribers_get_the_state_then_every_event() {
        let hub: Hub<ConfigMap> = Hub::new(16);
        // Before the first list: nothing to replay, the list comes live.
        let mut early = hub.subscribe();
        hub.apply(watcher::Event::Init);
        hub.apply(watcher::Event::InitApply(cm("a", "1")));
        hub.apply(watcher::Event::InitDone);
        assert_eq!(drain(&mut early), ["init", "list a=1", "done"]);
        hub.apply(watcher::Event::Apply(cm("b", "1")));
        // A late subscriber starts from the store, then gets what follows.
        let mut late = hub.subscribe();
        hub.apply(watcher::Event::Delete(cm("a", "1")));
        let mut got = drain(&mut late);
        got[1..3].sort();
        assert_eq!(got, ["init", "list a=1", "list b=1", "done", "delete a=1"]);
        assert_eq!(drain(&mut early), ["apply b=1", "delete a=1"]);
        assert_eq!(hub.store().state().len(), 1);
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_relists_the_store() {
        let hub: Hub<ConfigMap> = Hub::new(2);
        hub.apply(watcher::Event::Init);
        hub.apply(watcher::Event::InitDone);
        let mut slow = hub.subscribe();
        assert_eq!(drain(&mut slow), ["init", "done"]);
        for i in 0..5 {
            hub.apply(watcher::Event::Apply(cm("a", &i.to_string())));
        }
        // Five events into a buffer of two: a relist of the latest state.
        assert_eq!(
            drain(&mut slow),
            ["init", "list a=4", "done", "apply a=3", "apply a=4"]
        );
    }
}
