//! Shared informers: one watch per resource type per process, its cache
//! shared by every consumer, its changes fanned out to every subscriber
//! (client-go's `SharedInformerFactory`).
//!
//! [`Informers`] is the factory. [`Informers::get`] returns the
//! [`Informer`] of a resource type, starting its watch the first time the
//! type is asked for; every later caller gets the same one. An informer
//! keeps a [`Cache`] (all objects of the type, by namespace and name) and
//! hands out [`Subscription`]s. A subscriber receives, in order:
//!
//! - an [`Event::Added`] for every object already in the cache, then
//!   [`Event::Synced`] if the first list has completed (a late subscriber
//!   starts from the same state as an early one);
//! - from then on every change as it happens: `Added`, `Updated` (with the
//!   old and the new object), `Deleted` (the last state seen), and `Synced`
//!   after each complete (re)list. A relist after a watch error is turned
//!   into the changes it implies (objects gone are `Deleted`, changed ones
//!   `Updated`), so subscribers never see the watch's internal phases.
//!
//! The cache is updated before an event is sent: a subscriber that reads
//! the cache on an event sees at least the state the event carries.
//! Delivery is through an unbounded queue per subscriber (as client-go's
//! listeners), so a slow subscriber never holds up the watch or the others.
//!
//! The garbage collector, which looks at every resource type the API
//! serves, subscribes to object metadata through [`Informers::metadata`]: a
//! type some other consumer watches typed (the types in [`SHARED_TYPES`])
//! is served by that typed informer, any other by a `DynamicObject`
//! informer, so there is still one watch per type.
//!
//! Dropping the last handle to the factory stops its watches.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt::{self, Debug, Display};
use std::sync::{Arc, Mutex, RwLock};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

/// The namespace and name of an object (empty namespace: cluster-scoped).
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

    /// A cluster-scoped object's key.
    pub fn cluster(name: &str) -> Key {
        Key::new("", name)
    }

    pub fn of<K: Resource>(obj: &K) -> Key {
        let m = obj.meta();
        Key::new(
            m.namespace.as_deref().unwrap_or_default(),
            m.name.as_deref().unwrap_or_default(),
        )
    }
}

impl Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// A change a subscriber sees.
#[derive(Debug)]
pub enum Event<K> {
    /// An object appeared (or was there when the subscription began).
    Added(Arc<K>),
    Updated {
        old: Arc<K>,
        new: Arc<K>,
    },
    /// An object went; its last state seen.
    Deleted(Arc<K>),
    /// The cache holds a complete list (after the first list, and after
    /// every relist).
    Synced,
}

impl<K> Clone for Event<K> {
    fn clone(&self) -> Self {
        match self {
            Event::Added(o) => Event::Added(o.clone()),
            Event::Updated { old, new } => Event::Updated {
                old: old.clone(),
                new: new.clone(),
            },
            Event::Deleted(o) => Event::Deleted(o.clone()),
            Event::Synced => Event::Synced,
        }
    }
}

impl<K> Event<K> {
    /// The object as it is now (the last state seen, for a deletion).
    pub fn object(&self) -> Option<&Arc<K>> {
        match self {
            Event::Added(o) | Event::Deleted(o) | Event::Updated { new: o, .. } => Some(o),
            Event::Synced => None,
        }
    }

    /// The object before the change, for an update.
    pub fn old(&self) -> Option<&Arc<K>> {
        match self {
            Event::Updated { old, .. } => Some(old),
            _ => None,
        }
    }
}

/// The objects of one type, by key, as the informer's watch last saw them.
pub struct Cache<K> {
    objects: Arc<RwLock<HashMap<Key, Arc<K>>>>,
    ready: tokio::sync::watch::Receiver<bool>,
}

impl<K> Clone for Cache<K> {
    fn clone(&self) -> Self {
        Cache {
            objects: self.objects.clone(),
            ready: self.ready.clone(),
        }
    }
}

impl<K> Cache<K> {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Key, Arc<K>>> {
        self.objects.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, key: &Key) -> Option<Arc<K>> {
        self.read().get(key).cloned()
    }

    /// Every object.
    pub fn state(&self) -> Vec<Arc<K>> {
        self.read().values().cloned().collect()
    }

    /// The objects `f` accepts.
    pub fn filter(&self, mut f: impl FnMut(&K) -> bool) -> Vec<Arc<K>> {
        self.read().values().filter(|o| f(o)).cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the first list has completed.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Turns true when the first list has completed.
    pub fn ready_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.ready.clone()
    }

    /// Wait until the first list has completed; false if the informer
    /// stopped before that.
    pub async fn wait_until_ready(&self) -> bool {
        self.ready.clone().wait_for(|r| *r).await.is_ok()
    }
}

type Handler<K> = Box<dyn FnMut(&Event<K>) -> bool + Send>;

struct Subscribers<K> {
    handlers: Vec<Handler<K>>,
    synced: bool,
}

struct Shared<K> {
    what: String,
    objects: Arc<RwLock<HashMap<Key, Arc<K>>>>,
    ready_tx: tokio::sync::watch::Sender<bool>,
    ready_rx: tokio::sync::watch::Receiver<bool>,
    subscribers: Mutex<Subscribers<K>>,
}

impl<K> Shared<K> {
    fn new(what: String) -> Shared<K> {
        let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
        Shared {
            what,
            objects: Arc::new(RwLock::new(HashMap::new())),
            ready_tx,
            ready_rx,
            subscribers: Mutex::new(Subscribers {
                handlers: Vec::new(),
                synced: false,
            }),
        }
    }

    fn subscribers(&self) -> std::sync::MutexGuard<'_, Subscribers<K>> {
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Key, Arc<K>>> {
        self.objects.write().unwrap_or_else(|e| e.into_inner())
    }

    fn dispatch(subs: &mut Subscribers<K>, events: &[Event<K>]) {
        subs.handlers.retain_mut(|h| events.iter().all(&mut *h));
    }

    /// Apply a change seen by the watch, then tell the subscribers. The
    /// subscribers' lock is held across both, so that a subscription that
    /// begins meanwhile gets either the old state and the event, or the
    /// new state and no event.
    fn apply(&self, key: Key, obj: Arc<K>) {
        let mut subs = self.subscribers();
        let old = self.write().insert(key, obj.clone());
        let ev = match old {
            Some(old) => Event::Updated { old, new: obj },
            None => Event::Added(obj),
        };
        Self::dispatch(&mut subs, &[ev]);
    }

    fn delete(&self, key: &Key, obj: Arc<K>) {
        let mut subs = self.subscribers();
        self.write().remove(key);
        Self::dispatch(&mut subs, &[Event::Deleted(obj)]);
    }

    /// A complete list replaces the cache: the differences become events.
    fn replace(&self, list: HashMap<Key, Arc<K>>, rv: impl Fn(&K) -> Option<String>) {
        let mut subs = self.subscribers();
        let mut events = Vec::new();
        {
            let mut objects = self.write();
            for (k, new) in &list {
                match objects.get(k) {
                    None => events.push(Event::Added(new.clone())),
                    Some(old) if rv(old) != rv(new) || rv(new).is_none() => {
                        events.push(Event::Updated {
                            old: old.clone(),
                            new: new.clone(),
                        })
                    }
                    Some(_) => {}
                }
            }
            for (k, old) in objects.iter() {
                if !list.contains_key(k) {
                    events.push(Event::Deleted(old.clone()));
                }
            }
            *objects = list;
        }
        events.push(Event::Synced);
        subs.synced = true;
        self.ready_tx.send_replace(true);
        Self::dispatch(&mut subs, &events);
    }
}

/// The shared informer of one resource type. Cheap to clone.
pub struct Informer<K> {
    shared: Arc<Shared<K>>,
}

impl<K> Clone for Informer<K> {
    fn clone(&self) -> Self {
        Informer {
            shared: self.shared.clone(),
        }
    }
}

impl<K: Send + Sync + 'static> Informer<K> {
    pub fn cache(&self) -> Cache<K> {
        Cache {
            objects: self.shared.objects.clone(),
            ready: self.shared.ready_rx.clone(),
        }
    }

    /// Call `handler` with every event, beginning with the cache's current
    /// state (see the module documentation), until it returns false. It
    /// runs on the informer's task with the informer's lock held: it must
    /// be quick and must not block (send to a queue, add to a work queue).
    pub fn subscribe_with(&self, mut handler: impl FnMut(&Event<K>) -> bool + Send + 'static) {
        let mut subs = self.shared.subscribers();
        let current: Vec<Arc<K>> = self
            .shared
            .objects
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for o in current {
            if !handler(&Event::Added(o)) {
                return;
            }
        }
        if subs.synced && !handler(&Event::Synced) {
            return;
        }
        subs.handlers.push(Box::new(handler));
    }

    /// A queue of every event (see [`Informer::subscribe_with`]).
    pub fn subscribe(&self) -> Subscription<K> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribe_with(move |ev| tx.send(ev.clone()).is_ok());
        Subscription(rx)
    }

    /// What the informer watches (for logs).
    pub fn what(&self) -> &str {
        &self.shared.what
    }
}

/// The events of one subscriber, in order.
pub struct Subscription<K>(mpsc::UnboundedReceiver<Event<K>>);

impl<K> Subscription<K> {
    /// The next event; `None` once the informer has stopped.
    pub async fn recv(&mut self) -> Option<Event<K>> {
        self.0.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<Event<K>> {
        self.0.try_recv().ok()
    }
}

/// Keep `api`'s watch running, feeding `shared`, until the task is aborted.
async fn run_watch<K>(shared: Arc<Shared<K>>, api: Api<K>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut relist: Option<HashMap<Key, Arc<K>>> = None;
    let mut failures = 0u32;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(ev) => {
                failures = 0;
                match ev {
                    watcher::Event::Init => relist = Some(HashMap::new()),
                    watcher::Event::InitApply(o) => {
                        relist
                            .get_or_insert_with(HashMap::new)
                            .insert(Key::of(&o), Arc::new(o));
                    }
                    watcher::Event::InitDone => shared
                        .replace(relist.take().unwrap_or_default(), |o: &K| {
                            o.resource_version()
                        }),
                    watcher::Event::Apply(o) => shared.apply(Key::of(&o), Arc::new(o)),
                    watcher::Event::Delete(o) => shared.delete(&Key::of(&o), Arc::new(o)),
                }
            }
            Err(e) => {
                failures += 1;
                // The watcher retries with backoff; say so once, then quietly.
                if failures == 1 {
                    tracing::warn!(watch = %shared.what, error = %e, "informer: watch failed; retrying");
                } else {
                    tracing::debug!(watch = %shared.what, error = %e, "informer: watch failed again");
                }
            }
        }
    }
}

/// A change as the metadata subscribers ([`Informers::metadata`]) see it.
#[derive(Debug)]
pub enum MetaEvent<'a> {
    Added(&'a ObjectMeta),
    Updated {
        old: &'a ObjectMeta,
        new: &'a ObjectMeta,
    },
    Deleted(&'a ObjectMeta),
    Synced,
}

type MetaHandler = Box<dyn FnMut(MetaEvent<'_>) -> bool + Send>;

/// An informer of any type, seen through its objects' metadata.
trait MetaInformer: Send + Sync {
    fn subscribe_meta(&self, handler: MetaHandler);
}

impl<K: Resource + Send + Sync + 'static> MetaInformer for Informer<K> {
    fn subscribe_meta(&self, mut handler: MetaHandler) {
        self.subscribe_with(move |ev| {
            handler(match ev {
                Event::Added(o) => MetaEvent::Added(o.meta()),
                Event::Updated { old, new } => MetaEvent::Updated {
                    old: old.meta(),
                    new: new.meta(),
                },
                Event::Deleted(o) => MetaEvent::Deleted(o.meta()),
                Event::Synced => MetaEvent::Synced,
            })
        });
    }
}

/// A resource type by API group and plural name.
type ResourceId = (String, String);

struct Inner {
    typed: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
    by_resource: HashMap<ResourceId, Arc<dyn MetaInformer>>,
    watches: Vec<tokio::task::AbortHandle>,
}

/// The informer factory: one informer, and one watch, per resource type.
pub struct Informers {
    client: kube::Client,
    inner: Mutex<Inner>,
}

impl Drop for Informers {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        for w in &inner.watches {
            w.abort();
        }
    }
}

/// A type the factory can watch typed.
pub trait Watchable:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}

impl<K> Watchable for K where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}

macro_rules! shared_types {
    ($($t:ty),* $(,)?) => {
        /// The types consumers in this crate watch typed; the garbage
        /// collector's metadata subscriptions to them share those watches.
        pub const SHARED_TYPES: &[&str] = &[$(stringify!($t)),*];

        fn typed_for(informers: &Informers, id: &ResourceId) -> Option<Arc<dyn MetaInformer>> {
            $(
                if <$t as Resource>::group(&()) == id.0.as_str()
                    && <$t as Resource>::plural(&()) == id.1.as_str()
                {
                    return Some(Arc::new(informers.get::<$t>()));
                }
            )*
            None
        }

        fn is_shared_type(t: TypeId) -> bool {
            false $(|| t == TypeId::of::<$t>())*
        }
    };
}

shared_types!(
    k8s_openapi::api::core::v1::Pod,
    k8s_openapi::api::core::v1::Node,
    k8s_openapi::api::core::v1::Namespace,
    k8s_openapi::api::core::v1::Service,
    k8s_openapi::api::core::v1::Endpoints,
    k8s_openapi::api::core::v1::ServiceAccount,
    k8s_openapi::api::core::v1::ConfigMap,
    k8s_openapi::api::apps::v1::Deployment,
    k8s_openapi::api::apps::v1::ReplicaSet,
    k8s_openapi::api::apps::v1::DaemonSet,
    k8s_openapi::api::batch::v1::Job,
    k8s_openapi::api::discovery::v1::EndpointSlice,
    k8s_openapi::api::coordination::v1::Lease,
);

impl Informers {
    pub fn new(client: kube::Client) -> Arc<Informers> {
        Arc::new(Informers {
            client,
            inner: Mutex::new(Inner {
                typed: HashMap::new(),
                by_resource: HashMap::new(),
                watches: Vec::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The informer of `K` (all namespaces), started on first use.
    pub fn get<K: Watchable>(&self) -> Informer<K> {
        debug_assert!(
            is_shared_type(TypeId::of::<K>()),
            "{} is watched typed: add it to SHARED_TYPES so that metadata subscribers share its watch",
            K::kind(&())
        );
        let mut inner = self.lock();
        if let Some(i) = inner
            .typed
            .get(&TypeId::of::<K>())
            .and_then(|b| b.downcast_ref::<Informer<K>>())
        {
            return i.clone();
        }
        let id = (K::group(&()).into_owned(), K::plural(&()).into_owned());
        let informer = Informer {
            shared: Arc::new(Shared::new(format!("{}", K::plural(&())))),
        };
        let api: Api<K> = Api::all(self.client.clone());
        let task = tokio::spawn(run_watch(informer.shared.clone(), api));
        inner.watches.push(task.abort_handle());
        inner
            .typed
            .insert(TypeId::of::<K>(), Box::new(informer.clone()));
        inner
            .by_resource
            .insert(id, Arc::new(informer.clone()) as Arc<dyn MetaInformer>);
        tracing::debug!(resource = %K::plural(&()), "informer started");
        informer
    }

    /// Subscribe to the metadata of every object of `ar`'s type: through
    /// the typed informer when the type is one of [`SHARED_TYPES`], else
    /// through a `DynamicObject` informer (started on first use).
    pub fn metadata(
        &self,
        ar: &ApiResource,
        handler: impl FnMut(MetaEvent<'_>) -> bool + Send + 'static,
    ) {
        let id: ResourceId = (ar.group.clone(), ar.plural.clone());
        let existing = self.lock().by_resource.get(&id).cloned();
        let informer = match existing.or_else(|| typed_for(self, &id)) {
            Some(i) => i,
            None => {
                let mut inner = self.lock();
                match inner.by_resource.get(&id) {
                    Some(i) => i.clone(),
                    None => {
                        let informer: Informer<DynamicObject> = Informer {
                            shared: Arc::new(Shared::new(ar.plural.clone())),
                        };
                        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), ar);
                        let task = tokio::spawn(run_watch(informer.shared.clone(), api));
                        inner.watches.push(task.abort_handle());
                        let i: Arc<dyn MetaInformer> = Arc::new(informer);
                        inner.by_resource.insert(id, i.clone());
                        tracing::debug!(resource = %ar.plural, group = %ar.group, "metadata informer started");
                        i
                    }
                }
            }
        };
        informer.subscribe_meta(Box::new(handler));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    fn pod(name: &str, rv: &str) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": name, "namespace": "ns", "resourceVersion": rv}}),
            )
            .unwrap(),
        )
    }

    fn informer() -> Informer<Pod> {
        Informer {
            shared: Arc::new(Shared::new("pods".into())),
        }
    }

    fn summary(ev: &Event<Pod>) -> String {
        let name = |p: &Arc<Pod>| p.metadata.name.clone().unwrap_or_default();
        let rv = |p: &Arc<Pod>| p.metadata.resource_version.clone().unwrap_or_default();
        match ev {
            Event::Added(p) => format!("+{}@{}", name(p), rv(p)),
            Event::Updated { old, new } => format!("~{}@{}->{}", name(new), rv(old), rv(new)),
            Event::Deleted(p) => format!("-{}@{}", name(p), rv(p)),
            Event::Synced => "synced".into(),
        }
    }

    fn drain(s: &mut Subscription<Pod>) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(ev) = s.try_recv() {
            out.push(summary(&ev));
        }
        out.sort();
        out
    }

    fn list(pods: &[Arc<Pod>]) -> HashMap<Key, Arc<Pod>> {
        pods.iter()
            .map(|p| (Key::of(p.as_ref()), p.clone()))
            .collect()
    }

    fn rv(p: &Pod) -> Option<String> {
        p.metadata.resource_version.clone()
    }

    #[test]
    fn subscribers_see_changes_and_late_ones_the_state() {
        let i = informer();
        let mut early = i.subscribe();
        let cache = i.cache();
        assert!(!cache.is_ready());
        i.shared.replace(list(&[pod("a", "1"), pod("b", "1")]), rv);
        assert!(cache.is_ready());
        assert_eq!(drain(&mut early), ["+a@1", "+b@1", "synced"]);
        i.shared.apply(Key::new("ns", "a"), pod("a", "2"));
        i.shared.apply(Key::new("ns", "c"), pod("c", "3"));
        i.shared.delete(&Key::new("ns", "b"), pod("b", "4"));
        assert_eq!(drain(&mut early), ["+c@3", "-b@4", "~a@1->2"]);
        // A late subscriber starts from the cache as it is.
        let mut late = i.subscribe();
        assert_eq!(drain(&mut late), ["+a@2", "+c@3", "synced"]);
        assert_eq!(cache.len(), 2);
        assert_eq!(
            cache.get(&Key::new("ns", "a")).and_then(|p| rv(&p)),
            Some("2".into())
        );
        // A subscriber that goes away is dropped.
        drop(late);
        i.shared.apply(Key::new("ns", "d"), pod("d", "5"));
        assert_eq!(i.shared.subscribers().handlers.len(), 1);
        assert_eq!(drain(&mut early), ["+d@5"]);
    }

    /// A relist replaces the cache (what the garbage collector's own graph
    /// did before): objects not listed again go as deletions, changed ones
    /// are updates, unchanged ones say nothing, and the old state stays
    /// until the list is complete.
    #[test]
    fn relist_becomes_the_changes_it_implies() {
        let i = informer();
        let mut s = i.subscribe();
        i.shared
            .replace(list(&[pod("a", "1"), pod("b", "1"), pod("c", "1")]), rv);
        drain(&mut s);
        i.shared
            .replace(list(&[pod("b", "1"), pod("c", "7"), pod("d", "8")]), rv);
        assert_eq!(drain(&mut s), ["+d@8", "-a@1", "synced", "~c@1->7"]);
        let mut names: Vec<String> = i
            .cache()
            .state()
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        names.sort();
        assert_eq!(names, ["b", "c", "d"]);
    }

    #[tokio::test]
    async fn wait_until_ready_resolves_on_the_first_list() {
        let i = informer();
        let cache = i.cache();
        let waiter = tokio::spawn(async move { cache.wait_until_ready().await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        i.shared.replace(HashMap::new(), rv);
        assert!(waiter.await.unwrap());
    }

    #[test]
    fn metadata_events_follow_the_typed_ones() {
        let i = informer();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        i.subscribe_meta(Box::new(move |ev| {
            let m = match ev {
                MetaEvent::Added(m) => format!("+{}", m.name.as_deref().unwrap_or_default()),
                MetaEvent::Updated { new, .. } => {
                    format!("~{}", new.name.as_deref().unwrap_or_default())
                }
                MetaEvent::Deleted(m) => format!("-{}", m.name.as_deref().unwrap_or_default()),
                MetaEvent::Synced => "synced".into(),
            };
            s.lock().unwrap().push(m);
            true
        }));
        i.shared.replace(list(&[pod("a", "1")]), rv);
        i.shared.apply(Key::new("ns", "a"), pod("a", "2"));
        i.shared.delete(&Key::new("ns", "a"), pod("a", "3"));
        assert_eq!(*seen.lock().unwrap(), ["+a", "synced", "~a", "-a"]);
    }

    #[test]
    fn keys() {
        assert_eq!(Key::new("ns", "a").to_string(), "ns/a");
        assert_eq!(Key::cluster("n1").to_string(), "n1");
        assert_eq!(Key::of(pod("a", "1").as_ref()), Key::new("ns", "a"));
    }
}
