//! etcd backend, through `etcd-client` (etcd's v3 gRPC API).
//!
//! Every write is one etcd transaction that checks the key's create or mod
//! revision and, when the check fails, reads the key in the same transaction so
//! that a conflict reports the key as it is. Revisions are etcd's own: an empty
//! etcd is at revision 1, so the first write is revision 2.
//!
//! etcd does not say up to where it has been compacted. [`EtcdStore`] keeps the
//! highest compacted revision it knows of (its own compactions, and compactions
//! reported by etcd to a watch), and [`Store::compacted_revision`] checks it
//! against etcd: one range read at that revision, which etcd refuses when a
//! later compaction (by another client or by etcd's auto-compaction) has gone
//! past it, followed then by a binary search for the new boundary.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, GetResponse,
    PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
};
use futures::StreamExt;

use super::{
    Event, EventKind, KeyValue, ListResult, Result, Revision, Store, StoreError, WatchStream,
    prefix_range_end,
};

/// TLS towards etcd (PEM): the CA that signed etcd's serving certificate,
/// and the client certificate and key etcd checks (`--client-cert-auth`).
#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub ca_pem: String,
    pub cert_pem: Option<String>,
    pub key_pem: Option<String>,
}

/// The key range `[start, end)` of every key under `prefix`, in etcd's terms:
/// an end of `"\0"` means "to the end of the keyspace", and the empty key is
/// not allowed, so the empty prefix starts at `"\0"`.
fn etcd_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let start = if prefix.is_empty() {
        vec![0]
    } else {
        prefix.as_bytes().to_vec()
    };
    let end = prefix_range_end(prefix.as_bytes()).unwrap_or_else(|| vec![0]);
    (start, end)
}

/// etcd's error for a read or watch at a revision below its compaction.
fn is_compacted(err: &etcd_client::Error) -> bool {
    matches!(err, etcd_client::Error::GRpcStatus(s)
        if s.message().contains("required revision has been compacted"))
}

/// etcd's error for a read or compaction at a revision it has not reached.
fn is_future_revision(err: &etcd_client::Error) -> bool {
    matches!(err, etcd_client::Error::GRpcStatus(s)
        if s.message().contains("required revision is a future revision"))
}

/// An error naming the operation and the key or prefix it was about.
fn etcd_error(operation: &'static str, subject: &str, err: etcd_client::Error) -> StoreError {
    StoreError::backend(operation, format!("{subject}: {err}"))
}

fn convert_kv(operation: &'static str, kv: &etcd_client::KeyValue) -> Result<KeyValue> {
    let key = kv.key_str().map_err(|e| {
        StoreError::backend(operation, format!("key {:?} is not UTF-8: {e}", kv.key()))
    })?;
    Ok(KeyValue {
        key: key.to_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    })
}

fn header_revision(
    operation: &'static str,
    header: Option<&etcd_client::ResponseHeader>,
) -> Result<Revision> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| StoreError::backend(operation, "etcd response without a header"))
}

/// The key read by the `or_else` branch of a failed transaction.
fn txn_failure_kv(operation: &'static str, resp: &TxnResponse) -> Result<Option<KeyValue>> {
    for op in resp.op_responses() {
        if let TxnOpResponse::Get(get) = op {
            return get
                .kvs()
                .first()
                .map(|kv| convert_kv(operation, kv))
                .transpose();
        }
    }
    Err(StoreError::backend(
        operation,
        "failed etcd transaction without its read",
    ))
}

/// Largest response accepted from etcd (a list of every pod in a big
/// cluster is tens of MiB; gRPC's default is 4 MiB).
const MAX_MESSAGE: usize = 1 << 30;

/// The store on an etcd cluster.
pub struct EtcdStore {
    client: Client,
    endpoints: Vec<String>,
    /// The highest revision etcd is known to be compacted at.
    compacted: Arc<AtomicI64>,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to etcd at `endpoints` (`http://host:port`) and checks that it
    /// answers.
    pub async fn connect(endpoints: &[String]) -> Result<Self> {
        Self::connect_with(endpoints, None).await
    }

    /// Connect, over TLS when `tls` is given (`https://` endpoints; the
    /// server checked against `tls.ca_pem`, this client presenting
    /// `tls.cert_pem`), as kube-apiserver's `--etcd-cafile/certfile/keyfile`.
    pub async fn connect_with(endpoints: &[String], tls: Option<&EtcdTls>) -> Result<Self> {
        let joined = endpoints.join(",");
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(30), Duration::from_secs(10));
        if let Some(t) = tls {
            if let Some(plain) = endpoints.iter().find(|e| e.starts_with("http://")) {
                return Err(StoreError::backend(
                    "connect",
                    format!("{plain}: TLS options are given, so the endpoint must be https://"),
                ));
            }
            let mut o = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(&t.ca_pem));
            if let (Some(cert), Some(key)) = (&t.cert_pem, &t.key_pem) {
                o = o.identity(etcd_client::Identity::from_pem(cert, key));
            }
            options = options.with_tls(o);
        }
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| etcd_error("connect", &format!("etcd {joined}"), e))?;
        let store = EtcdStore {
            client,
            endpoints: endpoints.to_vec(),
            compacted: Arc::new(AtomicI64::new(0)),
        };
        // The connection is made lazily: fail here, not at the first request.
        store
            .client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE)
            .get(vec![0], Some(GetOptions::new().with_count_only()))
            .await
            .map_err(|e| etcd_error("connect", &format!("etcd {joined}"), e))?;
        Ok(store)
    }

    /// The current revision, from the header of a cheap linearizable read.
    async fn revision_header(&self, operation: &'static str) -> Result<Revision> {
        let resp = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE)
            .get(vec![0], Some(GetOptions::new().with_count_only()))
            .await
            .map_err(|e| etcd_error(operation, "current revision", e))?;
        header_revision(operation, resp.header())
    }

    /// Whether etcd can still serve a read at `revision` (not compacted).
    async fn readable_at(&self, revision: Revision) -> Result<bool> {
        let opts = GetOptions::new().with_count_only().with_revision(revision);
        match self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE)
            .get(vec![0], Some(opts))
            .await
        {
            Ok(_) => Ok(true),
            Err(err) if is_compacted(&err) => Ok(false),
            Err(err) => Err(etcd_error(
                "compacted revision",
                &format!("revision {revision}"),
                err,
            )),
        }
    }

    /// The revision etcd is compacted at: the smallest revision it can still
    /// read. Revision 1 (an empty etcd) readable means "never compacted".
    async fn probe_compacted(&self) -> Result<Revision> {
        let known = self.compacted.load(Ordering::Acquire);
        if self.readable_at(known.max(1)).await? {
            return Ok(known);
        }
        // Compacted past `known` by someone else: the boundary is in
        // (known, current], where the current revision is always readable.
        let (mut lo, mut hi) = (
            known.max(1),
            self.revision_header("compacted revision").await?,
        );
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.readable_at(mid).await? {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        self.compacted.fetch_max(hi, Ordering::AcqRel);
        Ok(self.compacted.load(Ordering::Acquire))
    }

    async fn txn(&self, operation: &'static str, key: &str, txn: Txn) -> Result<TxnResponse> {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE)
            .txn(txn)
            .await
            .map_err(|e| etcd_error(operation, key, e))
    }
}

fn empty_key(operation: &'static str, key: &str) -> Result<()> {
    if key.is_empty() {
        Err(StoreError::backend(operation, "empty key"))
    } else {
        Ok(())
    }
}

#[async_trait]
impl Store for EtcdStore {
    fn backend_name(&self) -> &'static str {
        "etcd"
    }

    async fn get(&self, key: &str) -> Result<(Option<KeyValue>, Revision)> {
        if key.is_empty() {
            return Ok((None, self.current_revision().await?));
        }
        let resp = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE)
            .get(key, None)
            .await
            .map_err(|e| etcd_error("get", key, e))?;
        let revision = header_revision("get", resp.header())?;
        let kv = resp
            .kvs()
            .first()
            .map(|kv| convert_kv("get", kv))
            .transpose()?;
        Ok((kv, revision))
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<ListResult> {
        let (mut start, end) = etcd_range(prefix);
        if let Some(after) = start_after {
            // The first key strictly greater than `after`.
            let mut next = after.as_bytes().to_vec();
            next.push(0);
            if next > start {
                start = next;
            }
        }
        // An empty range (start past the end of the prefix): nothing to read,
        // but etcd needs `start < end` unless the end is "\0".
        if end != [0] && start >= end {
            let revision = self.current_revision().await?;
            return Ok(ListResult {
                kvs: Vec::new(),
                revision,
                more: false,
            });
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let resp: GetResponse = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE)
            .get(
                start,
                Some(GetOptions::new().with_range(end).with_limit(limit)),
            )
            .await
            .map_err(|e| etcd_error("list", prefix, e))?;
        let revision = header_revision("list", resp.header())?;
        let kvs = resp
            .kvs()
            .iter()
            .map(|kv| convert_kv("list", kv))
            .collect::<Result<_>>()?;
        Ok(ListResult {
            kvs,
            revision,
            more: resp.more(),
        })
    }

    async fn count(&self, prefix: &str) -> Result<u64> {
        let (start, end) = etcd_range(prefix);
        let resp = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE)
            .get(
                start,
                Some(GetOptions::new().with_range(end).with_count_only()),
            )
            .await
            .map_err(|e| etcd_error("count", prefix, e))?;
        Ok(resp.count().unsigned_abs())
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue> {
        empty_key("create", key)?;
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value.clone(), None)]);
        let resp = self.txn("create", key, txn).await?;
        if !resp.succeeded() {
            return Err(StoreError::AlreadyExists {
                key: key.to_owned(),
            });
        }
        let revision = header_revision("create", resp.header())?;
        Ok(KeyValue {
            key: key.to_owned(),
            value,
            create_revision: revision,
            mod_revision: revision,
        })
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<KeyValue> {
        empty_key("update", key)?;
        // A missing key has mod revision 0 for etcd: check that it exists too.
        let txn = Txn::new()
            .when([
                Compare::create_revision(key, CompareOp::Greater, 0),
                Compare::mod_revision(key, CompareOp::Equal, expected),
            ])
            .and_then([TxnOp::put(
                key,
                value.clone(),
                Some(PutOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.txn("update", key, txn).await?;
        if !resp.succeeded() {
            return match txn_failure_kv("update", &resp)? {
                None => Err(StoreError::NotFound {
                    key: key.to_owned(),
                }),
                Some(current) => Err(StoreError::Conflict {
                    key: key.to_owned(),
                    expected,
                    current: Some(current),
                }),
            };
        }
        let revision = header_revision("update", resp.header())?;
        let create_revision = resp
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Put(put) => put.prev_key().map(|kv| kv.create_revision()),
                _ => None,
            })
            .ok_or_else(|| StoreError::backend("update", format!("{key}: no previous value")))?;
        Ok(KeyValue {
            key: key.to_owned(),
            value,
            create_revision,
            mod_revision: revision,
        })
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue> {
        empty_key("delete", key)?;
        let mut compares = vec![Compare::create_revision(key, CompareOp::Greater, 0)];
        if let Some(expected) = expected {
            compares.push(Compare::mod_revision(key, CompareOp::Equal, expected));
        }
        let txn = Txn::new()
            .when(compares)
            .and_then([TxnOp::delete(
                key,
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(key, None)]);
        let resp = self.txn("delete", key, txn).await?;
        if !resp.succeeded() {
            return match (txn_failure_kv("delete", &resp)?, expected) {
                (Some(current), Some(expected)) => Err(StoreError::Conflict {
                    key: key.to_owned(),
                    expected,
                    current: Some(current),
                }),
                _ => Err(StoreError::NotFound {
                    key: key.to_owned(),
                }),
            };
        }
        // The header revision of a transaction that deleted a key is the
        // deletion's revision.
        let revision = header_revision("delete", resp.header())?;
        let prev = resp
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Delete(del) => del.prev_kvs().first().cloned(),
                _ => None,
            })
            .ok_or_else(|| StoreError::backend("delete", format!("{key}: no previous value")))?;
        let mut kv = convert_kv("delete", &prev)?;
        kv.mod_revision = revision;
        Ok(kv)
    }

    async fn current_revision(&self) -> Result<Revision> {
        self.revision_header("current revision").await
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        self.probe_compacted().await
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        if revision <= self.compacted.load(Ordering::Acquire) {
            return Ok(());
        }
        let subject = format!("revision {revision}");
        match self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE)
            .compact(revision, None)
            .await
        {
            Ok(_) => {}
            // Already compacted further, by us or another client.
            Err(err) if is_compacted(&err) => {}
            Err(err) if is_future_revision(&err) => {
                let current = self.revision_header("compact").await?;
                return Err(StoreError::FutureRevision {
                    requested: revision,
                    current,
                });
            }
            Err(err) => return Err(etcd_error("compact", &subject, err)),
        }
        self.compacted.fetch_max(revision, Ordering::AcqRel);
        Ok(())
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let after = after.max(0);
        let current = self.revision_header("watch").await?;
        if after > current {
            return Err(StoreError::FutureRevision {
                requested: after,
                current,
            });
        }
        let compacted = self.probe_compacted().await?;
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        let (start, end) = etcd_range(prefix);
        let options = WatchOptions::new()
            .with_range(end)
            .with_start_revision(after + 1)
            .with_prev_key();
        let stream = self
            .client
            .watch_client()
            .max_decoding_message_size(MAX_MESSAGE)
            .watch(start, Some(options))
            .await
            .map_err(|e| etcd_error("watch", prefix, e))?;
        let state = EtcdWatch {
            stream,
            prefix: prefix.to_owned(),
            requested: after,
            compacted: self.compacted.clone(),
            buffered: VecDeque::new(),
            done: false,
        };
        Ok(futures::stream::unfold(state, |mut state| async move {
            let item = state.next().await?;
            Some((item, state))
        })
        .boxed())
    }
}

struct EtcdWatch {
    stream: etcd_client::WatchStream,
    prefix: String,
    requested: Revision,
    compacted: Arc<AtomicI64>,
    buffered: VecDeque<Event>,
    done: bool,
}

impl EtcdWatch {
    fn fail(&mut self, err: StoreError) -> Option<Result<Event>> {
        self.done = true;
        Some(Err(err))
    }

    async fn next(&mut self) -> Option<Result<Event>> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            let resp = match self.stream.message().await {
                Ok(Some(resp)) => resp,
                Ok(None) => {
                    let err = StoreError::backend(
                        "watch",
                        format!("{}: etcd closed the watch", self.prefix),
                    );
                    return self.fail(err);
                }
                Err(err) => return self.fail(etcd_error("watch", &self.prefix, err)),
            };
            if resp.compact_revision() != 0 {
                let compacted = resp.compact_revision();
                self.compacted.fetch_max(compacted, Ordering::AcqRel);
                return self.fail(StoreError::Compacted {
                    requested: self.requested,
                    compacted,
                });
            }
            if resp.canceled() {
                let err = StoreError::backend(
                    "watch",
                    format!(
                        "{}: etcd canceled the watch: {}",
                        self.prefix,
                        resp.cancel_reason()
                    ),
                );
                return self.fail(err);
            }
            for event in resp.events() {
                match convert_event(event) {
                    Ok(event) => self.buffered.push_back(event),
                    Err(err) => {
                        self.buffered.clear();
                        return self.fail(err);
                    }
                }
            }
            if let Some(last) = self.buffered.back() {
                self.requested = last.revision();
            }
        }
    }
}

fn convert_event(event: &etcd_client::Event) -> Result<Event> {
    let kv = event
        .kv()
        .ok_or_else(|| StoreError::backend("watch", "etcd event without a key"))?;
    let kv = convert_kv("watch", kv)?;
    let prev = event
        .prev_kv()
        .map(|p| convert_kv("watch", p))
        .transpose()?;
    Ok(match event.event_type() {
        EventType::Put => {
            // A put that re-creates a deleted key has no previous value of its
            // own life.
            let prev = prev.filter(|p| p.create_revision == kv.create_revision);
            Event {
                kind: EventKind::Put,
                kv,
                prev,
            }
        }
        EventType::Delete => {
            // etcd's delete event carries the key and the deletion's revision
            // only; the value and create revision come from the previous kv
            // (absent only if etcd has compacted it away).
            let (value, create_revision) = prev
                .as_ref()
                .map_or((Vec::new(), 0), |p| (p.value.clone(), p.create_revision));
            Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: kv.key,
                    value,
                    create_revision,
                    mod_revision: kv.mod_revision,
                },
                prev,
            }
        }
    })
}
