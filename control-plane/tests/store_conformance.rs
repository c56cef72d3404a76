//! One conformance suite for every [`Store`] backend.
//!
//! Each case in `cases` runs against a fresh SQLite file (`sqlite::*`) and a
//! fresh etcd started by the test on loopback (`etcd::*`; skipped with a
//! message when etcd is not installed, unless `KEELSON_REQUIRE_ALL=1`).
//! Cases read revisions relative to the store's current one, as an empty etcd
//! is at revision 1 where an empty SQLite store is at 0.
//!
//! SQLite-only tests at the bottom: reopening, lagging watches, and writes
//! that survive `kill -9` (a child process re-executes this binary to run the
//! ignored `crash_writer_child` test).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use keelson_control_plane::store::etcd::EtcdStore;
use keelson_control_plane::store::sqlite::{SqliteOptions, SqliteStore};
use keelson_control_plane::store::{
    Event, EventKind, KeyValue, Revision, Store, StoreError, WatchStream,
};
use keelson_e2e::EtcdProcess;

/// Longest wait for anything a store should do promptly.
const PATIENCE: Duration = Duration::from_secs(30);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {PATIENCE:?}: {what}"))
}

/// The next event of a watch; panics on an error or the end of the stream.
async fn next_event(watch: &mut WatchStream) -> Event {
    match within("waiting for a watch event", watch.next()).await {
        Some(Ok(event)) => event,
        Some(Err(err)) => panic!("watch failed: {err}"),
        None => panic!("watch ended"),
    }
}

async fn next_events(watch: &mut WatchStream, n: usize) -> Vec<Event> {
    let mut events = Vec::with_capacity(n);
    for _ in 0..n {
        events.push(next_event(watch).await);
    }
    events
}

/// Asserts that a watch delivers nothing for a little while.
async fn assert_quiet(watch: &mut WatchStream) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(300), watch.next()).await {
        panic!("expected no event, got {item:?}");
    }
}

fn put(kv: KeyValue, prev: Option<KeyValue>) -> Event {
    Event {
        kind: EventKind::Put,
        kv,
        prev,
    }
}

fn kv(key: &str, value: &str, create_revision: Revision, mod_revision: Revision) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value.into(),
        create_revision,
        mod_revision,
    }
}

/// Asserts that a watch from `after` delivered `expected`, with a readable
/// account of the difference.
fn assert_exactly_once_in_order(after: Revision, got: &[Revision], expected: &[Revision]) {
    if got == expected {
        return;
    }
    let wanted: BTreeSet<Revision> = expected.iter().copied().collect();
    let mut seen = BTreeSet::new();
    let missing: Vec<Revision> = expected
        .iter()
        .filter(|r| !got.contains(r))
        .copied()
        .collect();
    let unexpected: Vec<Revision> = got
        .iter()
        .filter(|r| !wanted.contains(r) || !seen.insert(**r))
        .copied()
        .collect();
    let in_order = got.windows(2).all(|w| w[0] < w[1]);
    panic!(
        "watch from {after}: missing {missing:?}, unexpected or repeated {unexpected:?}, \
         in order: {in_order} ({} events, {} expected)",
        got.len(),
        expected.len()
    );
}

/// The conformance cases. Each gets a fresh store of its own.
mod cases {
    use super::*;

    pub async fn revisions_increase_by_one_per_write(store: Arc<dyn Store>) {
        let r0 = store.current_revision().await.unwrap();
        let a = store.create("/rev/a", b"1".to_vec()).await.unwrap();
        assert_eq!(a, kv("/rev/a", "1", r0 + 1, r0 + 1));
        let a2 = store
            .update("/rev/a", b"2".to_vec(), a.mod_revision)
            .await
            .unwrap();
        assert_eq!(a2, kv("/rev/a", "2", r0 + 1, r0 + 2));
        let b = store.create("/rev/b", b"b".to_vec()).await.unwrap();
        assert_eq!(b.mod_revision, r0 + 3);
        let deleted = store.delete("/rev/a", None).await.unwrap();
        assert_eq!(deleted, kv("/rev/a", "2", r0 + 1, r0 + 4));
        assert_eq!(store.current_revision().await.unwrap(), r0 + 4);

        // Failed writes do not move the revision.
        assert!(matches!(
            store.create("/rev/b", vec![]).await,
            Err(StoreError::AlreadyExists { .. })
        ));
        assert!(matches!(
            store.update("/rev/b", vec![], 1).await,
            Err(StoreError::Conflict { .. })
        ));
        assert!(matches!(
            store.delete("/rev/a", None).await,
            Err(StoreError::NotFound { .. })
        ));
        assert_eq!(store.current_revision().await.unwrap(), r0 + 4);

        // Reads report the revision they were made at.
        let (got, at) = store.get("/rev/b").await.unwrap();
        assert_eq!(got, Some(b));
        assert_eq!(at, r0 + 4);
        let (missing, at) = store.get("/rev/a").await.unwrap();
        assert_eq!(missing, None);
        assert_eq!(at, r0 + 4);
        assert_eq!(store.list("/rev/", None, 0).await.unwrap().revision, r0 + 4);

        // A re-created key starts a new life.
        let again = store.create("/rev/a", b"3".to_vec()).await.unwrap();
        assert_eq!(again, kv("/rev/a", "3", r0 + 5, r0 + 5));
    }

    pub async fn create_twice_is_already_exists(store: Arc<dyn Store>) {
        let first = store.create("/dup/k", b"one".to_vec()).await.unwrap();
        match store.create("/dup/k", b"two".to_vec()).await {
            Err(StoreError::AlreadyExists { key }) => assert_eq!(key, "/dup/k"),
            other => panic!("expected AlreadyExists, got {other:?}"),
        }
        assert_eq!(store.get("/dup/k").await.unwrap().0, Some(first));
    }

    pub async fn update_is_compare_and_swap(store: Arc<dyn Store>) {
        let v1 = store.create("/cas/k", b"v1".to_vec()).await.unwrap();
        let v2 = store
            .update("/cas/k", b"v2".to_vec(), v1.mod_revision)
            .await
            .unwrap();
        assert_eq!(v2.value, b"v2");
        assert_eq!(v2.create_revision, v1.create_revision);
        assert!(v2.mod_revision > v1.mod_revision);

        // Stale: the conflict carries the key as it is now.
        match store
            .update("/cas/k", b"v3".to_vec(), v1.mod_revision)
            .await
        {
            Err(StoreError::Conflict {
                key,
                expected,
                current,
            }) => {
                assert_eq!(key, "/cas/k");
                assert_eq!(expected, v1.mod_revision);
                assert_eq!(current, Some(v2.clone()));
            }
            other => panic!("expected Conflict, got {other:?}"),
        }
        assert_eq!(store.get("/cas/k").await.unwrap().0, Some(v2.clone()));

        // A revision from the future is a conflict too, not a blind write.
        assert!(matches!(
            store
                .update("/cas/k", b"v3".to_vec(), v2.mod_revision + 100)
                .await,
            Err(StoreError::Conflict { .. })
        ));

        match store.update("/cas/missing", b"x".to_vec(), 0).await {
            Err(StoreError::NotFound { key }) => assert_eq!(key, "/cas/missing"),
            other => panic!("expected NotFound, got {other:?}"),
        }
        match store
            .update("/cas/missing", b"x".to_vec(), v2.mod_revision)
            .await
        {
            Err(StoreError::NotFound { .. }) => {}
            other => panic!("expected NotFound, got {other:?}"),
        }
        assert_eq!(store.get("/cas/missing").await.unwrap().0, None);
    }

    pub async fn delete_checks_existence_and_revision(store: Arc<dyn Store>) {
        match store.delete("/del/missing", None).await {
            Err(StoreError::NotFound { key }) => assert_eq!(key, "/del/missing"),
            other => panic!("expected NotFound, got {other:?}"),
        }
        assert!(matches!(
            store.delete("/del/missing", Some(3)).await,
            Err(StoreError::NotFound { .. })
        ));

        let v1 = store.create("/del/k", b"v1".to_vec()).await.unwrap();
        let v2 = store
            .update("/del/k", b"v2".to_vec(), v1.mod_revision)
            .await
            .unwrap();
        match store.delete("/del/k", Some(v1.mod_revision)).await {
            Err(StoreError::Conflict {
                key,
                expected,
                current,
            }) => {
                assert_eq!(key, "/del/k");
                assert_eq!(expected, v1.mod_revision);
                assert_eq!(current, Some(v2.clone()));
            }
            other => panic!("expected Conflict, got {other:?}"),
        }
        assert_eq!(store.get("/del/k").await.unwrap().0, Some(v2.clone()));

        let deleted = store.delete("/del/k", Some(v2.mod_revision)).await.unwrap();
        let now = store.current_revision().await.unwrap();
        assert_eq!(deleted, kv("/del/k", "v2", v1.create_revision, now));
        assert_eq!(now, v2.mod_revision + 1);
        assert_eq!(store.get("/del/k").await.unwrap().0, None);
        assert!(matches!(
            store.delete("/del/k", None).await,
            Err(StoreError::NotFound { .. })
        ));

        // Unconditional delete.
        store.create("/del/u", b"u".to_vec()).await.unwrap();
        assert_eq!(store.delete("/del/u", None).await.unwrap().value, b"u");
    }

    pub async fn concurrent_writers_race_cleanly(store: Arc<dyn Store>) {
        // Ten creates of one key: exactly one wins.
        let creates = (0..10).map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.create("/race/k", vec![i]).await })
        });
        let results = futures::future::join_all(creates).await;
        let won: Vec<_> = results
            .into_iter()
            .map(|r| r.unwrap())
            .filter(Result::is_ok)
            .collect();
        assert_eq!(won.len(), 1, "exactly one create must win");
        let base = store.get("/race/k").await.unwrap().0.unwrap();

        // Ten compare-and-swaps from the same revision: exactly one wins, the
        // others see a conflict carrying the winner's write.
        let updates = (0..10).map(|i| {
            let store = store.clone();
            let expected = base.mod_revision;
            tokio::spawn(async move { store.update("/race/k", vec![100 + i], expected).await })
        });
        let results: Vec<_> = futures::future::join_all(updates)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        let winners: Vec<&KeyValue> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1, "exactly one update must win: {results:?}");
        for result in &results {
            if let Err(err) = result {
                match err {
                    StoreError::Conflict {
                        current: Some(current),
                        ..
                    } => {
                        assert_eq!(current, winners[0]);
                    }
                    other => panic!("expected Conflict, got {other:?}"),
                }
            }
        }
    }

    pub async fn values_and_keys_round_trip(store: Arc<dyn Store>) {
        let binary: Vec<u8> = (0..=255u8).chain([0, 0, 0xff, 0xfe]).collect();
        let big: Vec<u8> = (0..512 * 1024).map(|i| (i % 251) as u8).collect();
        let keys = [
            "/rt/100%_done",
            "/rt/snow\u{2603}",
            "/rt/sp ace",
            "/rt/quote'\"",
        ];
        for key in keys {
            store.create(key, binary.clone()).await.unwrap();
            assert_eq!(store.get(key).await.unwrap().0.unwrap().value, binary);
        }
        store.create("/rt/big", big.clone()).await.unwrap();
        assert_eq!(store.get("/rt/big").await.unwrap().0.unwrap().value, big);
        store.create("/rt/empty", Vec::new()).await.unwrap();
        assert_eq!(store.get("/rt/empty").await.unwrap().0.unwrap().value, b"");
        assert_eq!(store.count("/rt/").await.unwrap(), keys.len() as u64 + 2);
    }

    pub async fn list_orders_and_isolates_prefixes(store: Arc<dyn Store>) {
        let keys = [
            "/a/2",
            "/ab",
            "/a/10",
            "/a",
            "/b/x",
            "/a/%",
            "/a0",
            "/a/1",
            "/a/_x",
            "/a/\u{e9}",
            "/a/",
            "/a/1/deep",
        ];
        for key in keys {
            store.create(key, key.as_bytes().to_vec()).await.unwrap();
        }
        let names = |kvs: &[KeyValue]| kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>();

        let under_a = store.list("/a/", None, 0).await.unwrap();
        assert_eq!(
            names(&under_a.kvs),
            [
                "/a/",
                "/a/%",
                "/a/1",
                "/a/1/deep",
                "/a/10",
                "/a/2",
                "/a/_x",
                "/a/\u{e9}"
            ]
        );
        assert!(!under_a.more);
        assert_eq!(under_a.revision, store.current_revision().await.unwrap());
        for kv in &under_a.kvs {
            assert_eq!(kv.value, kv.key.as_bytes());
            assert_eq!(kv.create_revision, kv.mod_revision);
        }

        let all = store.list("", None, 0).await.unwrap();
        let mut sorted: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        sorted.sort();
        assert_eq!(names(&all.kvs), sorted);

        assert_eq!(
            names(&store.list("/a", None, 0).await.unwrap().kvs).len(),
            11
        );
        assert_eq!(
            names(&store.list("/b/", None, 0).await.unwrap().kvs),
            ["/b/x"]
        );
        assert_eq!(
            names(&store.list("/a/1", None, 0).await.unwrap().kvs),
            ["/a/1", "/a/1/deep", "/a/10"]
        );
        // No wildcard meaning for % and _.
        assert_eq!(
            names(&store.list("/a/%", None, 0).await.unwrap().kvs),
            ["/a/%"]
        );
        assert_eq!(
            names(&store.list("/a/_", None, 0).await.unwrap().kvs),
            ["/a/_x"]
        );
        assert!(store.list("/zz", None, 0).await.unwrap().kvs.is_empty());

        assert_eq!(store.count("/a/").await.unwrap(), 8);
        assert_eq!(store.count("/a").await.unwrap(), 11);
        assert_eq!(store.count("").await.unwrap(), keys.len() as u64);
        assert_eq!(store.count("/a/%").await.unwrap(), 1);
        assert_eq!(store.count("/zz").await.unwrap(), 0);

        store.delete("/a/10", None).await.unwrap();
        assert_eq!(store.count("/a/").await.unwrap(), 7);
        assert!(!names(&store.list("/a/", None, 0).await.unwrap().kvs).contains(&"/a/10".into()));
    }

    pub async fn list_pages_with_limit_and_start_after(store: Arc<dyn Store>) {
        let keys: Vec<String> = (0..50).map(|i| format!("/page/{i:03}")).collect();
        // Neighbours that must never show up.
        store.create("/pagf", vec![]).await.unwrap();
        store.create("/page", vec![]).await.unwrap();
        for key in keys.iter().rev() {
            store.create(key, key.as_bytes().to_vec()).await.unwrap();
        }

        for limit in [1, 7, 10, 49] {
            let mut seen = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let page = store.list("/page/", after.as_deref(), limit).await.unwrap();
                assert!(page.kvs.len() <= limit);
                seen.extend(page.kvs.iter().map(|kv| kv.key.clone()));
                if !page.more {
                    break;
                }
                assert_eq!(page.kvs.len(), limit, "a page with more must be full");
                after = page.kvs.last().map(|kv| kv.key.clone());
            }
            assert_eq!(seen, keys, "paging with limit {limit}");
        }

        let exact = store.list("/page/", None, 50).await.unwrap();
        assert_eq!(exact.kvs.len(), 50);
        assert!(!exact.more);
        let short = store.list("/page/", None, 49).await.unwrap();
        assert!(short.more);

        // start_after need not be an existing key, nor inside the prefix.
        let mid = store.list("/page/", Some("/page/0245"), 3).await.unwrap();
        assert_eq!(
            mid.kvs.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(),
            ["/page/025", "/page/026", "/page/027"]
        );
        assert!(mid.more);
        let before = store.list("/page/", Some("/a"), 2).await.unwrap();
        assert_eq!(before.kvs[0].key, "/page/000");
        let last = store.list("/page/", Some("/page/048"), 5).await.unwrap();
        assert_eq!(last.kvs.len(), 1);
        assert!(!last.more);
        let past = store.list("/page/", Some("/page/049"), 5).await.unwrap();
        assert!(past.kvs.is_empty());
        assert!(!past.more);
        let beyond = store.list("/page/", Some("/zzz"), 0).await.unwrap();
        assert!(beyond.kvs.is_empty());

        assert_eq!(store.count("/page/").await.unwrap(), 50);
        assert_eq!(store.count("/page").await.unwrap(), 51);
    }

    pub async fn watch_replays_history_then_follows(store: Arc<dyn Store>) {
        let a1 = store.create("/w/a", b"1".to_vec()).await.unwrap();
        let a2 = store
            .update("/w/a", b"2".to_vec(), a1.mod_revision)
            .await
            .unwrap();
        store.create("/w0", b"outside".to_vec()).await.unwrap();
        let b = store.create("/w/b", b"b".to_vec()).await.unwrap();
        let a_gone = store.delete("/w/a", None).await.unwrap();

        let mut watch = store.watch("/w/", 0).await.unwrap();
        let history = next_events(&mut watch, 4).await;
        assert_eq!(
            history,
            [
                put(a1.clone(), None),
                put(a2.clone(), Some(a1.clone())),
                put(b.clone(), None),
                Event {
                    kind: EventKind::Delete,
                    kv: a_gone.clone(),
                    prev: Some(a2.clone())
                },
            ]
        );
        assert_quiet(&mut watch).await;

        // Live: only keys under the prefix.
        store.create("/wx", b"outside".to_vec()).await.unwrap();
        store.create("/w", b"outside".to_vec()).await.unwrap();
        let c = store.create("/w/c", b"c".to_vec()).await.unwrap();
        let b2 = store
            .update("/w/b", b"b2".to_vec(), b.mod_revision)
            .await
            .unwrap();
        let live = next_events(&mut watch, 2).await;
        assert_eq!(live, [put(c.clone(), None), put(b2, Some(b.clone()))]);
        assert_quiet(&mut watch).await;

        // The empty prefix watches everything.
        let mut everything = store.watch("", a1.mod_revision - 1).await.unwrap();
        let events = next_events(&mut everything, 9).await;
        let keys: Vec<&str> = events.iter().map(|e| e.kv.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "/w/a", "/w/a", "/w0", "/w/b", "/w/a", "/wx", "/w", "/w/c", "/w/b"
            ]
        );
        let revs: Vec<Revision> = events.iter().map(Event::revision).collect();
        let expected: Vec<Revision> = (a1.mod_revision..a1.mod_revision + 9).collect();
        assert_eq!(revs, expected);
    }

    pub async fn watch_from_a_middle_revision(store: Arc<dyn Store>) {
        let mut written = Vec::new();
        for i in 0..10 {
            written.push(store.create(&format!("/mid/{i}"), vec![i]).await.unwrap());
        }
        let after = written[4].mod_revision;
        let mut watch = store.watch("/mid/", after).await.unwrap();
        let events = next_events(&mut watch, 5).await;
        assert_eq!(
            events,
            written[5..]
                .iter()
                .map(|kv| put(kv.clone(), None))
                .collect::<Vec<_>>()
        );
        assert_quiet(&mut watch).await;

        // Watching from the current revision: live events only.
        let now = store.current_revision().await.unwrap();
        let mut live = store.watch("/mid/", now).await.unwrap();
        assert_quiet(&mut live).await;
        let next = store.create("/mid/x", vec![]).await.unwrap();
        assert_eq!(next_event(&mut live).await, put(next.clone(), None));
        assert_eq!(next_event(&mut watch).await, put(next, None));
    }

    /// Watches started at many points while writers are busy each see every
    /// later write exactly once, in order: no gap between history and live
    /// events, no duplicate. The history is longer than one replay page.
    pub async fn watch_has_no_gap_or_duplicate_under_concurrent_writes(store: Arc<dyn Store>) {
        const WRITERS: usize = 4;
        const PER_WRITER: usize = 200;
        const TOTAL: usize = WRITERS * PER_WRITER;
        let start = store.current_revision().await.unwrap();
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut revs = Vec::new();
                    for i in 0..PER_WRITER {
                        let key = format!("/gap/{w}/{i:04}");
                        let kv = store.create(&key, key.clone().into_bytes()).await.unwrap();
                        revs.push(kv.mod_revision);
                        // Some writes outside the prefix, to be filtered out.
                        if i % 10 == 0 {
                            store
                                .create(&format!("/gaq/{w}/{i}"), vec![])
                                .await
                                .unwrap();
                        }
                    }
                    revs
                })
            })
            .collect();

        // Start watches while the writers run, from wherever the store is.
        let mut watches = vec![(start, store.watch("/gap/", start).await.unwrap())];
        let mut last_start = start;
        while watches.len() < 16 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let now = store.current_revision().await.unwrap();
            if now != last_start {
                watches.push((now, store.watch("/gap/", now).await.unwrap()));
                last_start = now;
            }
            if writers.iter().all(|w| w.is_finished()) {
                break;
            }
        }
        let mut written = BTreeSet::new();
        for writer in writers {
            written.extend(within("writers", writer).await.unwrap());
        }
        assert_eq!(written.len(), TOTAL);
        // A watch from the middle of the finished history, too.
        let middle = *written.iter().nth(TOTAL / 2).unwrap();
        watches.push((middle, store.watch("/gap/", middle).await.unwrap()));
        assert!(
            watches.len() >= 3,
            "too few watches started during the writes"
        );

        let last = *written.last().unwrap();
        for (after, mut watch) in watches {
            let expected: Vec<Revision> = written.range(after + 1..).copied().collect();
            // Read up to the last write, so that a gap fails with a diff
            // rather than a timeout.
            let mut events = Vec::new();
            while after < last && events.last().is_none_or(|e: &Event| e.revision() < last) {
                events.push(next_event(&mut watch).await);
            }
            let revs: Vec<Revision> = events.iter().map(Event::revision).collect();
            assert_exactly_once_in_order(after, &revs, &expected);
            for event in &events {
                assert!(event.kv.key.starts_with("/gap/"));
                assert_eq!(event.kv.value, event.kv.key.as_bytes());
            }
            assert_quiet(&mut watch).await;
        }
    }

    pub async fn delete_events_carry_the_previous_value(store: Arc<dyn Store>) {
        let v1 = store.create("/dv/k", b"v1".to_vec()).await.unwrap();
        let v2 = store
            .update("/dv/k", b"v2".to_vec(), v1.mod_revision)
            .await
            .unwrap();
        let mut watch = store.watch("/dv/", v2.mod_revision).await.unwrap();
        let deleted = store.delete("/dv/k", Some(v2.mod_revision)).await.unwrap();
        let event = next_event(&mut watch).await;
        assert_eq!(event.kind, EventKind::Delete);
        assert_eq!(event.kv, deleted);
        assert_eq!(
            event.kv,
            kv("/dv/k", "v2", v1.create_revision, v2.mod_revision + 1)
        );
        assert_eq!(event.prev, Some(v2.clone()));
        assert_eq!(event.revision(), deleted.mod_revision);

        // Re-created: a create event again, no previous value.
        let again = store.create("/dv/k", b"v3".to_vec()).await.unwrap();
        assert_eq!(next_event(&mut watch).await, put(again, None));

        // The same events replayed from history.
        let mut replay = store.watch("/dv/", v2.mod_revision).await.unwrap();
        assert_eq!(next_event(&mut replay).await, event);
    }

    pub async fn compaction_forgets_history(store: Arc<dyn Store>) {
        assert_eq!(store.compacted_revision().await.unwrap(), 0);
        let mut written = Vec::new();
        for i in 0..10 {
            written.push(store.create(&format!("/cmp/{i}"), vec![i]).await.unwrap());
        }
        let v = store
            .update("/cmp/0", b"new".to_vec(), written[0].mod_revision)
            .await
            .unwrap();
        // A live watch is not affected by a compaction.
        let mut live = store.watch("/cmp/", v.mod_revision).await.unwrap();

        let at = written[5].mod_revision;
        store.compact(at).await.unwrap();
        assert_eq!(store.compacted_revision().await.unwrap(), at);

        for after in [0, at - 1] {
            match store.watch("/cmp/", after).await {
                Err(StoreError::Compacted {
                    requested,
                    compacted,
                }) => {
                    assert_eq!(requested, after);
                    assert_eq!(compacted, at);
                }
                Err(other) => panic!("watch from {after}: expected Compacted, got {other}"),
                Ok(_) => panic!("watch from {after}: expected Compacted, got a stream"),
            }
        }
        // From the compacted revision on, history is all there.
        let mut watch = store.watch("/cmp/", at).await.unwrap();
        let events = next_events(&mut watch, 5).await;
        let revs: Vec<Revision> = events.iter().map(Event::revision).collect();
        let expected: Vec<Revision> = written[6..]
            .iter()
            .map(|kv| kv.mod_revision)
            .chain([v.mod_revision])
            .collect();
        assert_eq!(revs, expected);
        assert_eq!(events[4].prev.as_ref(), Some(&written[0]));

        // Current values are kept.
        assert_eq!(store.count("/cmp/").await.unwrap(), 10);
        assert_eq!(store.get("/cmp/0").await.unwrap().0, Some(v.clone()));
        assert_eq!(
            store.get("/cmp/1").await.unwrap().0,
            Some(written[1].clone())
        );

        // Compacting again lower is a no-op; beyond the store is an error.
        store.compact(at - 2).await.unwrap();
        assert_eq!(store.compacted_revision().await.unwrap(), at);
        let now = store.current_revision().await.unwrap();
        match store.compact(now + 5).await {
            Err(StoreError::FutureRevision { requested, current }) => {
                assert_eq!(requested, now + 5);
                assert_eq!(current, now);
            }
            other => panic!("expected FutureRevision, got {other:?}"),
        }

        let after_compaction = store.create("/cmp/new", vec![]).await.unwrap();
        assert_eq!(
            next_event(&mut live).await,
            put(after_compaction.clone(), None)
        );
        assert_eq!(
            next_events(&mut watch, 1).await,
            [put(after_compaction, None)]
        );

        // Everything up to now.
        let now = store.current_revision().await.unwrap();
        store.compact(now).await.unwrap();
        assert_eq!(store.compacted_revision().await.unwrap(), now);
        assert!(matches!(
            store.watch("", now - 1).await,
            Err(StoreError::Compacted { .. })
        ));
        let mut tail = store.watch("", now).await.unwrap();
        assert_quiet(&mut tail).await;
    }

    pub async fn watch_from_the_future_fails(store: Arc<dyn Store>) {
        store.create("/fut/a", vec![]).await.unwrap();
        let now = store.current_revision().await.unwrap();
        match store.watch("/fut/", now + 1).await {
            Err(StoreError::FutureRevision { requested, current }) => {
                assert_eq!(requested, now + 1);
                assert_eq!(current, now);
            }
            Err(other) => panic!("expected FutureRevision, got {other}"),
            Ok(_) => panic!("expected FutureRevision, got a stream"),
        }
        assert!(matches!(
            store.watch("/fut/", now + 1000).await,
            Err(StoreError::FutureRevision { .. })
        ));
    }
}

fn open_sqlite() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("db/store.sqlite")).unwrap();
    (Arc::new(store), dir)
}

async fn start_etcd() -> Option<(Arc<dyn Store>, EtcdProcess)> {
    let etcd = tokio::task::spawn_blocking(EtcdProcess::start_or_skip)
        .await
        .unwrap()?;
    let store = EtcdStore::connect(std::slice::from_ref(&etcd.endpoint))
        .await
        .unwrap();
    Some((Arc::new(store), etcd))
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let (store, _dir) = super::open_sqlite();
                    assert_eq!(store.backend_name(), "sqlite");
                    super::cases::$case(store).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some((store, _etcd)) = super::start_etcd().await else { return };
                    assert_eq!(store.backend_name(), "etcd");
                    super::cases::$case(store).await;
                }
            )*
        }
    };
}

conformance!(
    revisions_increase_by_one_per_write,
    create_twice_is_already_exists,
    update_is_compare_and_swap,
    delete_checks_existence_and_revision,
    concurrent_writers_race_cleanly,
    values_and_keys_round_trip,
    list_orders_and_isolates_prefixes,
    list_pages_with_limit_and_start_after,
    watch_replays_history_then_follows,
    watch_from_a_middle_revision,
    watch_has_no_gap_or_duplicate_under_concurrent_writes,
    delete_events_carry_the_previous_value,
    compaction_forgets_history,
    watch_from_the_future_fails,
);

#[tokio::test]
async fn sqlite_starts_at_revision_zero_and_etcd_at_one() {
    let (store, _dir) = open_sqlite();
    assert_eq!(store.current_revision().await.unwrap(), 0);
    assert_eq!(store.create("/k", vec![]).await.unwrap().mod_revision, 1);
    let Some((store, _etcd)) = start_etcd().await else {
        return;
    };
    assert_eq!(store.current_revision().await.unwrap(), 1);
    assert_eq!(store.create("/k", vec![]).await.unwrap().mod_revision, 2);
}

/// etcd does not tell its compacted revision; a client must notice a
/// compaction made by another one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_sees_compaction_by_another_client() {
    let Some((first, etcd)) = start_etcd().await else {
        return;
    };
    let second = EtcdStore::connect(std::slice::from_ref(&etcd.endpoint))
        .await
        .unwrap();
    let mut written = Vec::new();
    for i in 0..40 {
        written.push(first.create(&format!("/other/{i}"), vec![i]).await.unwrap());
    }
    assert_eq!(second.compacted_revision().await.unwrap(), 0);
    let at = written[25].mod_revision;
    first.compact(at).await.unwrap();
    assert_eq!(second.compacted_revision().await.unwrap(), at);
    match second.watch("/other/", at - 1).await {
        Err(StoreError::Compacted { compacted, .. }) => assert_eq!(compacted, at),
        Err(other) => panic!("expected Compacted, got {other}"),
        Ok(_) => panic!("expected Compacted, got a stream"),
    }
    // And again, further on.
    let at = written[33].mod_revision;
    first.compact(at).await.unwrap();
    assert_eq!(second.compacted_revision().await.unwrap(), at);
    let mut watch = second.watch("/other/", at).await.unwrap();
    let revs: Vec<Revision> = next_events(&mut watch, 6)
        .await
        .iter()
        .map(Event::revision)
        .collect();
    assert_eq!(
        revs,
        written[34..]
            .iter()
            .map(|kv| kv.mod_revision)
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_reopen_continues_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dirs/store.sqlite");
    let mut written = Vec::new();
    {
        let store = SqliteStore::open(&path).unwrap();
        for i in 0..5u8 {
            written.push(store.create(&format!("/re/{i}"), vec![i]).await.unwrap());
        }
        written[1] = store
            .update("/re/1", b"one".to_vec(), written[1].mod_revision)
            .await
            .unwrap();
        store.delete("/re/4", None).await.unwrap();
        store.compact(2).await.unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.current_revision().await.unwrap(), 7);
    assert_eq!(store.compacted_revision().await.unwrap(), 2);
    assert_eq!(
        store.get("/re/1").await.unwrap(),
        (Some(written[1].clone()), 7)
    );
    assert_eq!(store.count("/re/").await.unwrap(), 4);
    let next = store.create("/re/5", vec![]).await.unwrap();
    assert_eq!(next.mod_revision, 8);

    // History survives too, from the compacted revision on.
    assert!(matches!(
        store.watch("/re/", 1).await,
        Err(StoreError::Compacted { .. })
    ));
    let mut watch = store.watch("/re/", 2).await.unwrap();
    let revs: Vec<Revision> = next_events(&mut watch, 6)
        .await
        .iter()
        .map(Event::revision)
        .collect();
    assert_eq!(revs, [3, 4, 5, 6, 7, 8]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_lagging_watch_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions {
        watch_buffer: 8,
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open_with(&dir.path().join("s.db"), options).unwrap();
    let mut watch = store.watch("/lag/", 0).await.unwrap();
    for i in 0..50 {
        store.create(&format!("/lag/{i:02}"), vec![]).await.unwrap();
    }
    let mut delivered = 0;
    loop {
        match within("lagging watch", watch.next()).await {
            Some(Ok(event)) => {
                delivered += 1;
                assert!(event.revision() <= 50);
            }
            Some(Err(StoreError::WatchLagged { prefix })) => {
                assert_eq!(prefix, "/lag/");
                break;
            }
            other => panic!("expected WatchLagged, got {other:?}"),
        }
    }
    assert!(delivered < 50);
    assert!(
        within("end of watch", watch.next()).await.is_none(),
        "the stream ends after lagging"
    );
    // A new watch catches up from history.
    let mut again = store.watch("/lag/", 0).await.unwrap();
    assert_eq!(next_events(&mut again, 50).await.len(), 50);
}

const CRASH_DB_ENV: &str = "KEELSON_TEST_CRASH_DB";
const CRASH_ROUND_ENV: &str = "KEELSON_TEST_CRASH_ROUND";

/// One acknowledged write, as printed by the child: `ACK rev kind key value`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ack {
    revision: Revision,
    kind: EventKind,
    key: String,
    value: String,
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut parts = line.strip_prefix("ACK ")?.split(' ');
    let revision = parts.next()?.parse().ok()?;
    let kind = match parts.next()? {
        "put" => EventKind::Put,
        "delete" => EventKind::Delete,
        _ => return None,
    };
    Some(Ack {
        revision,
        kind,
        key: parts.next()?.into(),
        value: parts.next()?.into(),
    })
}

/// Not a test: the writer that `sqlite_survives_kill_9` runs in a child
/// process and kills. Writes until killed, printing each acknowledged write.
#[test]
#[ignore = "helper process for sqlite_survives_kill_9"]
fn crash_writer_child() {
    let Some(path) = std::env::var_os(CRASH_DB_ENV) else {
        return;
    };
    let round = std::env::var(CRASH_ROUND_ENV).unwrap_or_default();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = SqliteStore::open(Path::new(&path)).unwrap();
        let mut created: Vec<KeyValue> = Vec::new();
        for i in 0usize.. {
            let key = format!("/crash/{round}/{i:06}");
            let value = format!("v{i}");
            let kv = store
                .create(&key, value.clone().into_bytes())
                .await
                .unwrap();
            println!("ACK {} put {key} {value}", kv.mod_revision);
            created.push(kv);
            if i % 3 == 2 {
                let target = &created[i - 1];
                let value = format!("u{i}");
                let kv = store
                    .update(&target.key, value.clone().into_bytes(), target.mod_revision)
                    .await
                    .unwrap();
                println!("ACK {} put {} {value}", kv.mod_revision, kv.key);
                created[i - 1] = kv;
            }
            if i % 5 == 4 {
                let target = &created[i - 2];
                let kv = store.delete(&target.key, None).await.unwrap();
                println!(
                    "ACK {} delete {} {}",
                    kv.mod_revision,
                    kv.key,
                    String::from_utf8_lossy(&kv.value)
                );
            }
        }
    });
}

/// A child process writes as fast as it can and is killed with SIGKILL at a
/// random moment, several times over one database. After each kill every
/// write the child acknowledged must be in the history, exactly as
/// acknowledged, and the history must agree with the live keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_survives_kill_9() {
    use rand::Rng;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.sqlite");
    let exe = std::env::current_exe().unwrap();
    let mut acked: Vec<Ack> = Vec::new();
    for round in 0..5 {
        let mut child = Command::new(&exe)
            .args([
                "crash_writer_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_DB_ENV, &db)
            .env(CRASH_ROUND_ENV, round.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut acks = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(ack) = parse_ack(&line) {
                    if acks.is_empty() {
                        let _ = first_tx.send(());
                    }
                    acks.push(ack);
                }
            }
            acks
        });
        first_rx
            .recv_timeout(PATIENCE)
            .expect("the writer acknowledged nothing");
        let pause = rand::rng().random_range(20..400);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "the writer must have been killed, not exited"
        );
        let acks = reader.join().unwrap();
        eprintln!(
            "round {round}: killed after {pause} ms and {} acknowledged writes",
            acks.len()
        );
        assert!(acks.windows(2).all(|w| w[1].revision == w[0].revision + 1));
        acked.extend(acks);

        let store = SqliteStore::open(&db).unwrap();
        let current = store.current_revision().await.unwrap();
        let last = acked.last().unwrap().revision;
        assert!(
            current >= last,
            "revision {current} is behind acknowledged {last}"
        );

        // The whole history: contiguous revisions, every acknowledged write.
        let mut watch = store.watch("", 0).await.unwrap();
        let history = next_events(&mut watch, current as usize).await;
        let revs: Vec<Revision> = history.iter().map(Event::revision).collect();
        assert_eq!(revs, (1..=current).collect::<Vec<_>>());
        for ack in &acked {
            let event = &history[(ack.revision - 1) as usize];
            assert_eq!(
                (event.kind, event.kv.key.as_str(), event.kv.value.as_slice()),
                (ack.kind, ack.key.as_str(), ack.value.as_bytes()),
                "acknowledged write at revision {} is not in the history",
                ack.revision
            );
        }
        // Replaying the history gives the live keys.
        let mut replayed: BTreeMap<String, KeyValue> = BTreeMap::new();
        for event in history {
            match event.kind {
                EventKind::Put => replayed.insert(event.kv.key.clone(), event.kv),
                EventKind::Delete => replayed.remove(&event.kv.key),
            };
        }
        let live = store.list("", None, 0).await.unwrap();
        assert_eq!(live.revision, current);
        assert_eq!(live.kvs, replayed.into_values().collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn etcd_connect_to_nothing_fails_naming_the_endpoint() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let err = within(
        "connect",
        EtcdStore::connect(std::slice::from_ref(&endpoint)),
    )
    .await
    .expect_err("nothing listens there");
    assert!(err.to_string().contains(&endpoint), "{err}");
    eprintln!("{err} (after {:?})", started.elapsed());
}
