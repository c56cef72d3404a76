//! SQLite backend, modelled on k3s's kine but simpler.
//!
//! One database file in WAL mode with three tables, all updated in one
//! transaction:
//!
//! - `log`: one row per write (`rev` is the store revision), carrying the new
//!   value and the previous one, so that a watch can replay history without
//!   looking anything else up. Compaction deletes rows from the front.
//! - `current`: the live keys (get, list and count never touch `log`).
//! - `meta`: the current revision, the compacted revision and the schema
//!   version.
//!
//! Keys are stored as BLOBs so that SQLite compares them byte by byte, and a
//! prefix is matched as the key range `[prefix, successor(prefix))`; no LIKE,
//! as keys may contain `%` or `_`.
//!
//! Writes: one thread owns the only write connection and takes requests from
//! a queue. It applies every request waiting in the queue (up to
//! [`MAX_BATCH`]) in one transaction, each with its own revision, commits once
//! (group commit: one fsync for the lot), then publishes the events on a
//! broadcast channel in revision order and answers the callers. A write is
//! acknowledged only after its commit. A database error fails the whole batch.
//!
//! Reads use a small pool of read-only connections on tokio's blocking pool;
//! WAL lets them run while a write is in progress, each inside a read
//! transaction so that a result and the revision it reports come from one
//! snapshot. A third thread checkpoints the WAL, so that commits never do.
//!
//! Durability: `synchronous=FULL` by default, so an acknowledged write survives
//! a power loss, not only a crash of the process (see [`Synchronous`]).

use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak, mpsc};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{broadcast, mpsc as queue, oneshot};

use super::{
    Event, EventKind, KeyValue, ListResult, Result, Revision, Store, StoreError, WatchStream,
    prefix_range_end,
};

/// How hard SQLite works to put each commit on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Synchronous {
    /// The WAL is fsynced at checkpoints only: acknowledged writes survive a
    /// crash of the process but the last ones may be lost on a power loss.
    Normal,
    /// The WAL is fsynced at every commit: acknowledged writes survive a power
    /// loss too. The default.
    Full,
}

impl Synchronous {
    fn pragma_value(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

/// Tuning knobs of [`SqliteStore::open_with`]. The defaults suit a server.
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    pub synchronous: Synchronous,
    /// How many events a live watch may fall behind the writers before it is
    /// closed with [`StoreError::WatchLagged`].
    pub watch_buffer: usize,
    /// How many idle read connections are kept open.
    pub max_idle_readers: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous: Synchronous::Full,
            watch_buffer: 16 * 1024,
            max_idle_readers: 8,
        }
    }
}

/// How many log rows a watch reads from the database at a time while it
/// replays history.
const REPLAY_PAGE: usize = 512;

/// How many log rows one compaction transaction deletes, so that writes are
/// not held up for long by a large compaction.
const COMPACT_BATCH: i64 = 10_000;

/// The most writes committed together.
const MAX_BATCH: usize = 256;

/// How many writes may wait for the writer thread before callers wait to
/// queue theirs.
const QUEUE_DEPTH: usize = 4096;

/// How often the background thread copies the WAL into the database file.
/// Writes never checkpoint themselves: a checkpoint on the commit path costs
/// the write that triggers it extra fsyncs and makes the p99 write latency
/// many times the p50.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS log (
    rev          INTEGER PRIMARY KEY,
    key          BLOB NOT NULL,
    kind         INTEGER NOT NULL,   -- 0 put, 1 delete
    create_rev   INTEGER NOT NULL,
    value        BLOB NOT NULL,      -- the new value; for a delete, the deleted one
    prev_value   BLOB,               -- the value an update replaced; NULL otherwise
    prev_mod_rev INTEGER             -- mod revision before this write; NULL for a create
);
CREATE TABLE IF NOT EXISTS current (
    key        BLOB PRIMARY KEY,
    create_rev INTEGER NOT NULL,
    mod_rev    INTEGER NOT NULL,
    value      BLOB NOT NULL
);
INSERT OR IGNORE INTO meta (name, value) VALUES ('schema_version', 1);
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 0);
INSERT OR IGNORE INTO meta (name, value) VALUES ('compacted', 0);
";

const KIND_PUT: i64 = 0;
const KIND_DELETE: i64 = 1;

/// The embedded store: one SQLite database file.
pub struct SqliteStore {
    inner: Arc<Inner>,
}

/// What the store's handle, the writer thread and watches share.
struct Inner {
    path: PathBuf,
    readers: Mutex<Vec<Connection>>,
    max_idle_readers: usize,
    /// The revision of the last committed write; set by the writer thread.
    revision: Arc<AtomicI64>,
    /// The last compacted revision; set by the writer thread.
    compacted: Arc<AtomicI64>,
    events: broadcast::Sender<Arc<Event>>,
    /// Dropping it (with the store) stops the writer thread.
    requests: queue::Sender<Request>,
    /// Dropping it (with the store) stops the checkpoint thread.
    _stop_checkpoints: mpsc::Sender<()>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .field("revision", &self.inner.revision.load(Ordering::Acquire))
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens the database at `path`, creating it and its parent directories if
    /// needed. Revisions continue from where the last process left them.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, SqliteOptions::default())
    }

    pub fn open_with(path: &Path, options: SqliteOptions) -> Result<Self> {
        let fail = |what: &str, err: &dyn fmt::Display| {
            StoreError::backend("open", format!("{what} {}: {err}", path.display()))
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail("create the directory of", &e))?;
        }
        let mut conn = Connection::open(path).map_err(|e| fail("open", &e))?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(|e| fail("configure", &e))?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(|e| fail("enable WAL on", &e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(fail("enable WAL on", &format!("journal mode is {mode}")));
        }
        conn.pragma_update(None, "synchronous", options.synchronous.pragma_value())
            .map_err(|e| fail("configure", &e))?;
        // Checkpoints run on their own thread (see CHECKPOINT_INTERVAL).
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|e| fail("configure", &e))?;
        conn.set_prepared_statement_cache_capacity(32);

        let (revision, compacted) = {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| fail("initialise", &e))?;
            tx.execute_batch(SCHEMA)
                .map_err(|e| fail("create the schema in", &e))?;
            let version = meta_value(&tx, "schema_version").map_err(|e| fail("read", &e))?;
            if version != SCHEMA_VERSION {
                return Err(fail(
                    "open",
                    &format!("schema version {version}, this build knows {SCHEMA_VERSION}"),
                ));
            }
            let revision = meta_value(&tx, "revision").map_err(|e| fail("read", &e))?;
            let compacted = meta_value(&tx, "compacted").map_err(|e| fail("read", &e))?;
            tx.commit().map_err(|e| fail("initialise", &e))?;
            (revision, compacted)
        };

        // A compaction interrupted by a crash left rows that no watch can reach
        // any more: the writer finishes it.
        let compacting = (compacted > 0).then_some(compacted);
        let revision = Arc::new(AtomicI64::new(revision));
        let compacted = Arc::new(AtomicI64::new(compacted));
        let (events, _) = broadcast::channel(options.watch_buffer.max(1));
        let (requests, queued) = queue::channel(QUEUE_DEPTH);
        let stop_checkpoints =
            spawn_checkpointer(path).map_err(|e| fail("start checkpoints on", &e))?;
        let writer = Writer {
            compacting,
            conn,
            queued,
            revision: revision.clone(),
            compacted: compacted.clone(),
            events: events.clone(),
            path: path.display().to_string(),
        };
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| fail("start the writer of", &e))?;

        let store = SqliteStore {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                readers: Mutex::new(Vec::new()),
                max_idle_readers: options.max_idle_readers,
                revision,
                compacted,
                events,
                requests,
                _stop_checkpoints: stop_checkpoints,
            }),
        };
        // Fail now, not at the first read, if readers cannot open the file.
        let reader = store.inner.take_reader("open")?;
        store.inner.put_reader(reader);
        Ok(store)
    }

    /// The path of the database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn submit<T>(
        &self,
        operation: &'static str,
        subject: &str,
        request: impl FnOnce(oneshot::Sender<Result<T>>) -> Request,
    ) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        let stopped =
            || StoreError::backend(operation, format!("{subject}: the writer has stopped"));
        self.inner
            .requests
            .send(request(reply))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    async fn write(&self, key: &str, value: Vec<u8>, op: WriteOp) -> Result<KeyValue> {
        let operation = op.name();
        if key.is_empty() {
            return Err(StoreError::backend(operation, "empty key"));
        }
        self.submit(operation, key, |reply| {
            Request::Write(
                Write {
                    key: key.to_owned(),
                    value,
                    op,
                },
                reply,
            )
        })
        .await
    }
}

/// Starts the thread that checkpoints the WAL every [`CHECKPOINT_INTERVAL`]
/// on a connection of its own, until the returned sender is dropped. Passive
/// checkpoints wait for nobody: readers and the writer go on meanwhile.
fn spawn_checkpointer(path: &Path) -> std::io::Result<mpsc::Sender<()>> {
    let conn = Connection::open(path).map_err(std::io::Error::other)?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(std::io::Error::other)?;
    let (stop, stopped) = mpsc::channel::<()>();
    let db_path = path.display().to_string();
    std::thread::Builder::new().name("sqlite-checkpoint".into()).spawn(move || {
        while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_INTERVAL)
        {
            if let Err(err) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                tracing::warn!(db = %db_path, error = %err, "checkpoint of the SQLite WAL failed");
            }
        }
    })?;
    Ok(stop)
}

fn meta_value(conn: &Connection, name: &str) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT value FROM meta WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
}

fn set_meta_value(conn: &Connection, name: &str, value: i64) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE meta SET value = ?2 WHERE name = ?1")?
        .execute(params![name, value])?;
    Ok(())
}

/// The key range `[lo, hi)` holding every key that starts with `prefix`.
/// Keys are UTF-8, which never contains the byte 0xFF, so `[0xFF]` bounds
/// everything when the prefix has no successor (the empty prefix).
fn key_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let hi = prefix_range_end(prefix.as_bytes()).unwrap_or_else(|| vec![0xFF]);
    (prefix.as_bytes().to_vec(), hi)
}

fn key_from_blob(blob: Vec<u8>) -> rusqlite::Result<String> {
    String::from_utf8(blob).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, Box::new(e))
    })
}

/// Reads one row of `current` (key, create_rev, mod_rev, value).
fn current_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<KeyValue> {
    Ok(KeyValue {
        key: key_from_blob(row.get(0)?)?,
        create_revision: row.get(1)?,
        mod_revision: row.get(2)?,
        value: row.get(3)?,
    })
}

/// Reads one row of `log` (rev, key, kind, create_rev, value, prev_value,
/// prev_mod_rev) as the event it records.
fn log_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    let rev: Revision = row.get(0)?;
    let key = key_from_blob(row.get(1)?)?;
    let kind: i64 = row.get(2)?;
    let create_revision: Revision = row.get(3)?;
    let value: Vec<u8> = row.get(4)?;
    let prev_value: Option<Vec<u8>> = row.get(5)?;
    let prev_mod_rev: Option<Revision> = row.get(6)?;
    let event = if kind == KIND_DELETE {
        let prev = prev_mod_rev.map(|mod_revision| KeyValue {
            key: key.clone(),
            value: value.clone(),
            create_revision,
            mod_revision,
        });
        Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key,
                value,
                create_revision,
                mod_revision: rev,
            },
            prev,
        }
    } else {
        let prev = match (prev_value, prev_mod_rev) {
            (Some(value), Some(mod_revision)) => Some(KeyValue {
                key: key.clone(),
                value,
                create_revision,
                mod_revision,
            }),
            _ => None,
        };
        Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key,
                value,
                create_revision,
                mod_revision: rev,
            },
            prev,
        }
    };
    Ok(event)
}

fn db_error(operation: &'static str, subject: &str, err: rusqlite::Error) -> StoreError {
    StoreError::backend(operation, format!("{subject}: {err}"))
}

enum WriteOp {
    Create,
    Update { expected: Revision },
    Delete { expected: Option<Revision> },
}

impl WriteOp {
    fn name(&self) -> &'static str {
        match self {
            WriteOp::Create => "create",
            WriteOp::Update { .. } => "update",
            WriteOp::Delete { .. } => "delete",
        }
    }
}

/// One write for the writer thread.
struct Write {
    key: String,
    value: Vec<u8>,
    op: WriteOp,
}

/// Work for the writer thread.
enum Request {
    Write(Write, oneshot::Sender<Result<KeyValue>>),
    Compact {
        revision: Revision,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// The thread that owns the write connection.
struct Writer {
    conn: Connection,
    queued: queue::Receiver<Request>,
    revision: Arc<AtomicI64>,
    compacted: Arc<AtomicI64>,
    events: broadcast::Sender<Arc<Event>>,
    /// Log rows at or below this revision are still to be deleted.
    compacting: Option<Revision>,
    path: String,
}

impl Writer {
    fn run(mut self) {
        loop {
            // While a compaction is under way, its batches go between the
            // writes instead of waiting for the queue.
            let first = if self.compacting.is_some() {
                match self.queued.try_recv() {
                    Ok(request) => Some(request),
                    Err(queue::error::TryRecvError::Empty) => None,
                    Err(queue::error::TryRecvError::Disconnected) => return,
                }
            } else {
                match self.queued.blocking_recv() {
                    Some(request) => Some(request),
                    None => return,
                }
            };
            if let Some(first) = first {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match self.queued.try_recv() {
                        Ok(request) => batch.push(request),
                        Err(_) => break,
                    }
                }
                self.handle(batch);
            }
            if let Some(revision) = self.compacting {
                self.compact_step(revision);
            }
        }
    }

    fn handle(&mut self, batch: Vec<Request>) {
        let mut writes = Vec::with_capacity(batch.len());
        let mut compactions = Vec::new();
        for request in batch {
            match request {
                Request::Write(write, reply) => writes.push((write, reply)),
                Request::Compact { revision, reply } => compactions.push((revision, reply)),
            }
        }
        if !writes.is_empty() {
            self.commit_writes(writes);
        }
        for (revision, reply) in compactions {
            let _ = reply.send(self.start_compaction(revision));
        }
    }

    /// Applies `writes` in one transaction and answers each.
    fn commit_writes(&mut self, writes: Vec<(Write, oneshot::Sender<Result<KeyValue>>)>) {
        let mut replies = Vec::with_capacity(writes.len());
        let mut ops = Vec::with_capacity(writes.len());
        for (write, reply) in writes {
            replies.push((write.op.name(), write.key.clone(), reply));
            ops.push(write);
        }
        match self.apply(ops) {
            Ok(outcomes) => {
                for (outcome, (_, _, reply)) in outcomes.into_iter().zip(replies) {
                    let answer = outcome.map(|event| {
                        let kv = event.kv.clone();
                        // Published by this thread alone, in revision order.
                        // An error only means that nobody is watching.
                        let _ = self.events.send(Arc::new(event));
                        kv
                    });
                    // The caller may have gone away; the write stands.
                    let _ = reply.send(answer);
                }
            }
            Err(err) => {
                for (operation, key, reply) in replies {
                    let _ =
                        reply.send(Err(StoreError::backend(operation, format!("{key}: {err}"))));
                }
            }
        }
    }

    /// One transaction for all `ops`: each gets the next revision or a
    /// logical error (conflict, not found...). A database error rolls back
    /// everything.
    fn apply(&mut self, ops: Vec<Write>) -> rusqlite::Result<Vec<Result<Event>>> {
        let start = self.revision.load(Ordering::Acquire);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut rev = start;
        let mut outcomes = Vec::with_capacity(ops.len());
        for write in ops {
            let outcome = apply_one(&tx, write, rev + 1)?;
            if outcome.is_ok() {
                rev += 1;
            }
            outcomes.push(outcome);
        }
        if rev != start {
            set_meta_value(&tx, "revision", rev)?;
            tx.commit()?;
            self.revision.store(rev, Ordering::Release);
        }
        Ok(outcomes)
    }

    fn start_compaction(&mut self, revision: Revision) -> Result<()> {
        let current = self.revision.load(Ordering::Acquire);
        if revision > current {
            return Err(StoreError::FutureRevision {
                requested: revision,
                current,
            });
        }
        if revision <= self.compacted.load(Ordering::Acquire) {
            return Ok(());
        }
        // Recorded first: from now on no watch starts below `revision`, and a
        // watch replaying history sees the change before rows disappear under
        // it. The rows go in batches, between writes.
        set_meta_value(&self.conn, "compacted", revision)
            .map_err(|e| db_error("compact", &format!("revision {revision}"), e))?;
        self.compacted.store(revision, Ordering::Release);
        self.compacting = Some(revision);
        Ok(())
    }

    fn compact_step(&mut self, revision: Revision) {
        let deleted = self
            .conn
            .prepare_cached(
                "DELETE FROM log WHERE rev IN
                 (SELECT rev FROM log WHERE rev <= ?1 ORDER BY rev LIMIT ?2)",
            )
            .and_then(|mut stmt| stmt.execute(params![revision, COMPACT_BATCH]));
        match deleted {
            Ok(0) => self.compacting = None,
            Ok(_) => {}
            Err(err) => {
                // Retried at the next open; the rows are unreachable anyway.
                tracing::warn!(db = %self.path, error = %err, revision, "SQLite compaction failed");
                self.compacting = None;
            }
        }
    }
}

/// Applies one write inside the batch transaction at revision `rev`.
fn apply_one(
    tx: &rusqlite::Transaction<'_>,
    Write { key, value, op }: Write,
    rev: Revision,
) -> rusqlite::Result<Result<Event>> {
    let existing = tx
        .prepare_cached("SELECT key, create_rev, mod_rev, value FROM current WHERE key = ?1")?
        .query_row([key.as_bytes()], current_row)
        .optional()?;
    let event = match (op, existing) {
        (WriteOp::Create, Some(_)) => return Ok(Err(StoreError::AlreadyExists { key })),
        (WriteOp::Create, None) => Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key,
                value,
                create_revision: rev,
                mod_revision: rev,
            },
            prev: None,
        },
        (WriteOp::Update { .. } | WriteOp::Delete { .. }, None) => {
            return Ok(Err(StoreError::NotFound { key }));
        }
        (WriteOp::Update { expected }, Some(cur))
        | (
            WriteOp::Delete {
                expected: Some(expected),
            },
            Some(cur),
        ) if cur.mod_revision != expected => {
            return Ok(Err(StoreError::Conflict {
                key,
                expected,
                current: Some(cur),
            }));
        }
        (WriteOp::Update { .. }, Some(cur)) => Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key,
                value,
                create_revision: cur.create_revision,
                mod_revision: rev,
            },
            prev: Some(cur),
        },
        (WriteOp::Delete { .. }, Some(cur)) => Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key,
                value: cur.value.clone(),
                create_revision: cur.create_revision,
                mod_revision: rev,
            },
            prev: Some(cur),
        },
    };
    let kv = &event.kv;
    let (kind, prev_value) = match event.kind {
        EventKind::Put => (KIND_PUT, event.prev.as_ref().map(|p| p.value.as_slice())),
        // The deleted value is the row's value; no need to store it twice.
        EventKind::Delete => (KIND_DELETE, None),
    };
    tx.prepare_cached(
        "INSERT INTO log (rev, key, kind, create_rev, value, prev_value, prev_mod_rev)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        rev,
        kv.key.as_bytes(),
        kind,
        kv.create_revision,
        kv.value,
        prev_value,
        event.prev.as_ref().map(|p| p.mod_revision),
    ])?;
    match event.kind {
        EventKind::Put => tx
            .prepare_cached(
                "INSERT INTO current (key, create_rev, mod_rev, value) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (key) DO UPDATE SET create_rev = excluded.create_rev,
                     mod_rev = excluded.mod_rev, value = excluded.value",
            )?
            .execute(params![
                kv.key.as_bytes(),
                kv.create_revision,
                rev,
                kv.value
            ])?,
        EventKind::Delete => tx
            .prepare_cached("DELETE FROM current WHERE key = ?1")?
            .execute([kv.key.as_bytes()])?,
    };
    Ok(Ok(event))
}

/// Where a watch reads next.
enum Phase {
    /// Replaying `log` rows with a revision above this one.
    Replay(Revision),
    /// Following the broadcast, skipping events at or below this revision
    /// (already replayed).
    Live(Revision),
    Done,
}

/// One page of history read by a watch.
struct ReplayPage {
    events: Vec<Event>,
    /// Where the next page starts (the last row's revision).
    last: Revision,
    /// The store revision of the snapshot the page was read from.
    snapshot: Revision,
    /// True when the page reached the end of the log in its snapshot.
    complete: bool,
}

impl Inner {
    fn take_reader(&self, operation: &'static str) -> Result<Connection> {
        let idle = self.readers.lock().ok().and_then(|mut pool| pool.pop());
        if let Some(conn) = idle {
            return Ok(conn);
        }
        let fail = |e: rusqlite::Error| {
            StoreError::backend(
                operation,
                format!("open reader on {}: {e}", self.path.display()),
            )
        };
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(fail)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(fail)?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(conn)
    }

    fn put_reader(&self, conn: Connection) {
        if let Ok(mut pool) = self.readers.lock()
            && pool.len() < self.max_idle_readers
        {
            pool.push(conn);
        }
    }

    /// Runs `f` in a read transaction on a pooled connection. `f` gets the
    /// store revision of the transaction's snapshot.
    fn read<T>(
        &self,
        operation: &'static str,
        subject: &str,
        f: impl FnOnce(&rusqlite::Transaction<'_>, Revision) -> Result<T>,
    ) -> Result<T> {
        let mut conn = self.take_reader(operation)?;
        let result = (|| {
            let db = |e: rusqlite::Error| db_error(operation, subject, e);
            let tx = conn.transaction().map_err(db)?;
            let revision = meta_value(&tx, "revision").map_err(db)?;
            let out = f(&tx, revision)?;
            tx.commit().map_err(db)?;
            Ok(out)
        })();
        self.put_reader(conn);
        result
    }

    /// Reads the log rows after `after` under `prefix`. On the first page
    /// (`first`) the revision bounds of the watch are checked too.
    fn replay_page(&self, prefix: &str, after: Revision, first: bool) -> Result<ReplayPage> {
        let (lo, hi) = key_range(prefix);
        self.read("watch", prefix, |tx, snapshot| {
            let db = |e: rusqlite::Error| db_error("watch", prefix, e);
            let compacted = meta_value(tx, "compacted").map_err(db)?;
            if after < compacted {
                return Err(StoreError::Compacted {
                    requested: after,
                    compacted,
                });
            }
            if first && after > snapshot {
                return Err(StoreError::FutureRevision {
                    requested: after,
                    current: snapshot,
                });
            }
            let mut stmt = tx
                .prepare_cached(
                    "SELECT rev, key, kind, create_rev, value, prev_value, prev_mod_rev FROM log
                     WHERE rev > ?1 AND key >= ?2 AND key < ?3 ORDER BY rev LIMIT ?4",
                )
                .map_err(db)?;
            let events = stmt
                .query_map(params![after, lo, hi, REPLAY_PAGE as i64], log_row)
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(db)?;
            let complete = events.len() < REPLAY_PAGE;
            let last = events.last().map_or(snapshot, Event::revision);
            Ok(ReplayPage {
                events,
                last,
                snapshot,
                complete,
            })
        })
    }
}

/// Runs blocking database work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    operation: &'static str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::backend(operation, e))?
}

struct WatchState {
    /// Weak, so that a forgotten watch does not keep the database open.
    inner: Weak<Inner>,
    prefix: String,
    buffered: VecDeque<Event>,
    phase: Phase,
    live: broadcast::Receiver<Arc<Event>>,
}

impl WatchState {
    /// Applies a replayed page: buffer its events and decide what comes next.
    fn take_page(&mut self, page: ReplayPage) {
        self.buffered.extend(page.events);
        self.phase = if page.complete {
            Phase::Live(page.snapshot)
        } else {
            Phase::Replay(page.last)
        };
    }

    fn fail(&mut self, err: StoreError) -> Option<Result<Event>> {
        self.phase = Phase::Done;
        self.buffered.clear();
        Some(Err(err))
    }

    async fn next(&mut self) -> Option<Result<Event>> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                return Some(Ok(event));
            }
            match self.phase {
                Phase::Done => return None,
                Phase::Replay(after) => {
                    let Some(inner) = self.inner.upgrade() else {
                        return self.fail(StoreError::backend("watch", "the store was closed"));
                    };
                    let prefix = self.prefix.clone();
                    let page =
                        blocking("watch", move || inner.replay_page(&prefix, after, false)).await;
                    match page {
                        Ok(page) => self.take_page(page),
                        Err(err) => return self.fail(err),
                    }
                }
                Phase::Live(after) => match self.live.recv().await {
                    Ok(event) => {
                        if event.revision() > after && event.kv.key.starts_with(&self.prefix) {
                            self.phase = Phase::Live(event.revision());
                            return Some(Ok(Event::clone(&event)));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let prefix = self.prefix.clone();
                        return self.fail(StoreError::WatchLagged { prefix });
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return self.fail(StoreError::backend("watch", "the store was closed"));
                    }
                },
            }
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend_name(&self) -> &'static str {
        "sqlite"
    }

    async fn get(&self, key: &str) -> Result<(Option<KeyValue>, Revision)> {
        let inner = self.inner.clone();
        let key = key.to_owned();
        blocking("get", move || {
            inner.read("get", &key, |tx, revision| {
                let kv = tx
                    .prepare_cached(
                        "SELECT key, create_rev, mod_rev, value FROM current WHERE key = ?1",
                    )
                    .and_then(|mut stmt| stmt.query_row([key.as_bytes()], current_row).optional())
                    .map_err(|e| db_error("get", &key, e))?;
                Ok((kv, revision))
            })
        })
        .await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListResult> {
        let inner = self.inner.clone();
        let prefix = prefix.to_owned();
        let start_after = start_after.map(str::to_owned);
        blocking("list", move || {
            let (lo, hi) = key_range(&prefix);
            // Every key is greater than the empty blob.
            let after = start_after.map(String::into_bytes).unwrap_or_default();
            // One more than asked, to learn whether more keys follow.
            let sql_limit = match i64::try_from(limit) {
                Ok(0) | Err(_) => -1,
                Ok(n) => n.saturating_add(1),
            };
            inner.read("list", &prefix, |tx, revision| {
                let db = |e: rusqlite::Error| db_error("list", &prefix, e);
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT key, create_rev, mod_rev, value FROM current
                         WHERE key >= ?1 AND key < ?2 AND key > ?3 ORDER BY key LIMIT ?4",
                    )
                    .map_err(db)?;
                let mut kvs = stmt
                    .query_map(params![lo, hi, after, sql_limit], current_row)
                    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                    .map_err(db)?;
                let more = limit > 0 && kvs.len() > limit;
                if more {
                    kvs.truncate(limit);
                }
                Ok(ListResult {
                    kvs,
                    revision,
                    more,
                })
            })
        })
        .await
    }

    async fn count(&self, prefix: &str) -> Result<u64> {
        let inner = self.inner.clone();
        let prefix = prefix.to_owned();
        blocking("count", move || {
            let (lo, hi) = key_range(&prefix);
            inner.read("count", &prefix, |tx, _| {
                let n: i64 = tx
                    .prepare_cached("SELECT count(*) FROM current WHERE key >= ?1 AND key < ?2")
                    .and_then(|mut stmt| stmt.query_row(params![lo, hi], |r| r.get(0)))
                    .map_err(|e| db_error("count", &prefix, e))?;
                Ok(n.unsigned_abs())
            })
        })
        .await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue> {
        self.write(key, value, WriteOp::Create).await
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<KeyValue> {
        self.write(key, value, WriteOp::Update { expected }).await
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue> {
        self.write(key, Vec::new(), WriteOp::Delete { expected })
            .await
    }

    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.inner.revision.load(Ordering::Acquire))
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        Ok(self.inner.compacted.load(Ordering::Acquire))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let subject = format!("revision {revision}");
        self.submit("compact", &subject, |reply| Request::Compact {
            revision,
            reply,
        })
        .await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        // Subscribe before reading history: every write committed after the
        // history snapshot is then in the channel, and the rest is in the
        // snapshot. Revisions already replayed are skipped.
        let live = self.inner.events.subscribe();
        let after = after.max(0);
        let inner = self.inner.clone();
        let owned_prefix = prefix.to_owned();
        let first = blocking("watch", move || {
            inner.replay_page(&owned_prefix, after, true)
        })
        .await?;
        let mut state = WatchState {
            inner: Arc::downgrade(&self.inner),
            prefix: prefix.to_owned(),
            buffered: VecDeque::new(),
            phase: Phase::Done,
            live,
        };
        state.take_page(first);
        Ok(futures::stream::unfold(state, |mut state| async move {
            let item = state.next().await?;
            Some((item, state))
        })
        .boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_range_of_empty_prefix_covers_every_utf8_key() {
        let (lo, hi) = key_range("");
        assert!(lo.is_empty());
        assert!("\u{10FFFF}".as_bytes() < hi.as_slice());
    }

    #[test]
    fn key_range_excludes_siblings() {
        let (lo, hi) = key_range("/a/");
        assert_eq!(lo, b"/a/");
        assert_eq!(hi, b"/a0");
        assert!(b"/a/\xf4\x8f\xbf\xbf".as_slice() < hi.as_slice());
    }
}
