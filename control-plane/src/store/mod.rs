//! Storage with etcd's semantics: one global revision, per-key create and mod
//! revisions, compare-and-swap writes, watches from a revision, compaction.
//!
//! Two backends implement [`Store`]: [`sqlite::SqliteStore`] (embedded, the
//! default, modelled on k3s's kine) and [`etcd::EtcdStore`]. Both pass the same
//! conformance suite (`control-plane/tests/store_conformance.rs`).
//!
//! Keys are plain strings (`/registry/pods/default/web-0`); values are opaque
//! bytes. A revision is an `i64` that grows by one per write (create, update or
//! delete). The embedded store starts at 1 for its first write; an empty etcd
//! is already at revision 1, so its first write is revision 2 (the etcd backend
//! reports etcd's revisions unchanged, as kube-apiserver does, and an etcd
//! shared with other clients also counts their writes).

use std::fmt;

use async_trait::async_trait;
use futures::stream::BoxStream;

pub mod etcd;
pub mod sqlite;

/// A revision of the whole store. 0 means "before any write".
pub type Revision = i64;

/// One key at one revision.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created this key (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the last write to this key. For a value carried by a
    /// [`EventKind::Delete`] event, this is the revision of the deletion.
    pub mod_revision: Revision,
}

impl fmt::Debug for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyValue")
            .field("key", &self.key)
            .field("value", &String::from_utf8_lossy(&self.value))
            .field("create_revision", &self.create_revision)
            .field("mod_revision", &self.mod_revision)
            .finish()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A create or an update. `Event::prev` is `None` for a create.
    Put,
    /// A deletion. `Event::kv.value` is the last value the key had, and
    /// `Event::kv.mod_revision` is the revision of the deletion.
    Delete,
}

/// One change, as seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    /// The value before this change (for a Put that updated a key, and for a
    /// Delete; `None` for a Put that created the key).
    pub prev: Option<KeyValue>,
}

impl Event {
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// The result of [`Store::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListResult {
    /// Keys in ascending byte order.
    pub kvs: Vec<KeyValue>,
    /// The store revision the list was read at.
    pub revision: Revision,
    /// True when `limit` cut the result short: more keys follow the last one.
    pub more: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key {key} already exists")]
    AlreadyExists { key: String },
    #[error("key {key} not found")]
    NotFound { key: String },
    /// A compare-and-swap failed: the key's mod revision is not the expected one.
    #[error("conflict on key {key}: expected mod revision {expected}, found {}", .current.as_ref().map_or(0, |kv| kv.mod_revision))]
    Conflict {
        key: String,
        expected: Revision,
        /// The key as it is now (`None` if it does not exist).
        current: Option<KeyValue>,
    },
    #[error("revision {requested} has been compacted (compacted up to {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    #[error("revision {requested} is newer than the store's revision {current}")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    /// The watch fell too far behind the writers and was dropped; start a new one.
    #[error("watch on {prefix} fell behind and was closed")]
    WatchLagged { prefix: String },
    #[error("storage backend {operation}: {message}")]
    Backend {
        operation: &'static str,
        message: String,
    },
}

impl StoreError {
    pub fn backend(operation: &'static str, err: impl fmt::Display) -> Self {
        StoreError::Backend {
            operation,
            message: err.to_string(),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A stream of events in revision order. It ends with `Err` if the watch
/// cannot continue (compaction, lag, backend failure).
pub type WatchStream = BoxStream<'static, Result<Event>>;

/// Storage with etcd's semantics. All methods are safe to call concurrently.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short name for logs and metrics ("sqlite", "etcd").
    fn backend_name(&self) -> &'static str;

    /// The current value of `key`, and the store revision it was read at.
    async fn get(&self, key: &str) -> Result<(Option<KeyValue>, Revision)>;

    /// Current keys starting with `prefix` (`""` lists everything), in
    /// ascending order, strictly after `start_after` when given, at most
    /// `limit` of them when `limit > 0`.
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListResult>;

    /// How many keys start with `prefix`.
    async fn count(&self, prefix: &str) -> Result<u64>;

    /// Create `key`; fails with [`StoreError::AlreadyExists`] if it exists.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue>;

    /// Replace `key`'s value if its mod revision is `expected` (compare-and-swap).
    /// Fails with [`StoreError::NotFound`] if the key does not exist and
    /// [`StoreError::Conflict`] if its mod revision differs.
    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<KeyValue>;

    /// Delete `key`, if `expected` is given only when its mod revision matches.
    /// Returns the deleted value with `mod_revision` set to the deletion's
    /// revision. Fails with [`StoreError::NotFound`] if the key does not exist.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue>;

    /// The store's current revision (the revision of the last write).
    async fn current_revision(&self) -> Result<Revision>;

    /// The revision up to which history has been compacted (0 if never).
    async fn compacted_revision(&self) -> Result<Revision>;

    /// Forget history up to and including `revision`. Current values are kept.
    /// Watches can no longer start before `revision` (`watch(prefix, after)`
    /// needs `after >= revision`). Compacting at or below the compacted
    /// revision does nothing; compacting beyond the current revision fails with
    /// [`StoreError::FutureRevision`].
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// Every change to keys under `prefix` with a revision strictly greater
    /// than `after`, in order: first the history, then live changes, with no
    /// gap and no duplicate. Fails with [`StoreError::Compacted`] if
    /// `after < compacted_revision()` (history is gone) and with
    /// [`StoreError::FutureRevision`] if `after` is newer than the store; both
    /// are checked before this returns, but a compaction that races with a
    /// watch can still end its stream with [`StoreError::Compacted`].
    /// `prefix` is matched byte-wise (no wildcards); `""` watches everything.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream>;
}

/// The smallest key greater than every key starting with `prefix`, or `None`
/// if there is none (empty prefix, or only 0xFF bytes). Used as the exclusive
/// end of a prefix range.
pub(crate) fn prefix_range_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let last = prefix.iter().rposition(|&b| b < 0xFF)?;
    let mut end = prefix[..=last].to_vec();
    end[last] += 1;
    Some(end)
}

#[cfg(test)]
mod tests {
    use super::prefix_range_end;

    #[test]
    fn prefix_range_end_increments_the_last_byte_below_0xff() {
        assert_eq!(prefix_range_end(b"/a/"), Some(b"/a0".to_vec()));
        assert_eq!(prefix_range_end(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_range_end(b""), None);
        assert_eq!(prefix_range_end(b"\xff"), None);
    }
}
