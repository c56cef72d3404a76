//! The generic REST semantics of the Kubernetes API over a [`Store`]: create,
//! get, list, update, patch, delete, deletecollection and watch for every
//! resource type, plus the subresources (status, scale, binding).
//!
//! Objects are stored as JSON without `metadata.resourceVersion`; on the way
//! out the resource version is the key's mod revision, as with etcd.

use std::sync::Arc;

use base64::Engine;
use futures::StreamExt;
use futures::stream::BoxStream;
use rand::Rng;
use serde_json::{Map, Value, json};

use super::alloc::ServiceAllocator;
use super::convert;
use super::crd;
use super::custom::{CustomTypes, CustomVersion};
use super::defaults;
use super::errors::{ApiError, ApiResult, Cause};
use super::patch::{self, PatchError};
use super::resources::{self, ResourceType, unknown_fields};
use super::selectors::{FieldSelector, LabelSelector};
use super::validation;
use crate::store::{EventKind, KeyValue, Revision, Store, StoreError};

/// How unknown fields in a request body are treated (`?fieldValidation=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FieldValidation {
    Ignore,
    #[default]
    Warn,
    Strict,
}

impl FieldValidation {
    pub fn parse(s: &str) -> ApiResult<Self> {
        match s {
            "" | "Warn" => Ok(FieldValidation::Warn),
            "Ignore" => Ok(FieldValidation::Ignore),
            "Strict" => Ok(FieldValidation::Strict),
            other => Err(ApiError::bad_request(format!(
                "fieldValidation {other:?} is invalid: must be one of Ignore, Warn, Strict"
            ))),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    pub dry_run: bool,
    pub field_validation: FieldValidation,
    /// The caller's check of the object about to be written, given the
    /// stored one on an update (admission that depends on who writes: RBAC
    /// escalation prevention, node restriction).
    pub check: Option<WriteCheck>,
}

/// A check of a write: (type, stored object on an update, new object).
pub type WriteCheckFn =
    dyn Fn(&ResourceType, Option<&Value>, &Value) -> ApiResult<()> + Send + Sync;

/// A [`WriteCheckFn`] the options carry.
#[derive(Clone)]
pub struct WriteCheck(pub Arc<WriteCheckFn>);

impl std::fmt::Debug for WriteCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteCheck")
    }
}

#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    pub label_selector: LabelSelector,
    pub field_selector: FieldSelector,
    pub limit: usize,
    pub continue_token: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct WatchOptions {
    pub label_selector: LabelSelector,
    pub field_selector: FieldSelector,
    /// `None` (or "0"): start with the current state as ADDED events.
    pub resource_version: Option<Revision>,
    /// `sendInitialEvents=true` (a streaming list, client-go's WatchList):
    /// the current state as ADDED events whatever the resource version,
    /// then [`WatchEvent::InitialEventsEnd`].
    pub send_initial_events: bool,
    /// The caller wants JSON event lines: live events of unfiltered watches
    /// come as [`WatchEvent::Line`], spliced from the stored bytes without
    /// decoding and re-encoding the object for every watcher.
    pub lines: bool,
}

#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_resource_version: Option<String>,
    pub dry_run: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
}

/// A watch event on the way to a client.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// The initial events of a `sendInitialEvents` watch are all sent: the
    /// state they describe is at this revision (a BOOKMARK annotated
    /// `k8s.io/initial-events-end` on the wire).
    InitialEventsEnd(Revision),
    Added(Value),
    Modified(Value),
    Deleted(Value),
    /// The last revision delivered, for bookmarks.
    Progress(Revision),
    Error(Value),
    /// A complete JSON watch event line (`{"type":..,"object":..}\n`) for
    /// the object at `revision`.
    Line {
        revision: Revision,
        line: bytes::Bytes,
    },
}

/// A write result: the object and warnings for the `Warning` header.
pub struct Written {
    pub object: Value,
    pub warnings: Vec<String>,
    pub created: bool,
}

/// Settings of the API layer.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub service_cidr: ipnet::IpNet,
    pub node_port_range: (u16, u16),
    /// Admission plugins turned off (kube-apiserver's
    /// `--disable-admission-plugins`); known: [`SERVICE_ACCOUNT_ADMISSION`].
    pub disabled_admission: Vec<String>,
}

/// The ServiceAccount admission plugin's name ([`super::serviceaccount`]).
pub const SERVICE_ACCOUNT_ADMISSION: &str = "ServiceAccount";

/// The admission plugins that can be turned off.
pub const ADMISSION_PLUGINS: &[&str] = &[SERVICE_ACCOUNT_ADMISSION];

impl ApiConfig {
    /// Whether the admission plugin `name` runs.
    pub fn admits(&self, name: &str) -> bool {
        !self.disabled_admission.iter().any(|d| d == name)
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            service_cidr: "10.96.0.0/12".parse().expect("valid CIDR"),
            node_port_range: (30000, 32767),
            disabled_admission: Vec::new(),
        }
    }
}

pub struct Registry {
    store: Arc<dyn Store>,
    pub config: ApiConfig,
    alloc: ServiceAllocator,
    custom: CustomTypes,
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn meta(v: &Value) -> &Value {
    v.get("metadata").unwrap_or(&Value::Null)
}

fn meta_mut(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = json!({});
    }
    let m = v.as_object_mut().expect("object");
    if !m.get("metadata").is_some_and(Value::is_object) {
        m.insert("metadata".into(), json!({}));
    }
    m.get_mut("metadata")
        .and_then(Value::as_object_mut)
        .expect("metadata object")
}

fn meta_str<'a>(v: &'a Value, field: &str) -> &'a str {
    meta(v)
        .get(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn finalizers(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = meta(v)
        .get("finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    // A namespace also waits for its spec finalizers.
    if v.get("kind").and_then(Value::as_str) == Some("Namespace") {
        out.extend(
            v.pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str().map(String::from)),
        );
    }
    out
}

/// Everything of an object except metadata.
fn content_part(v: &Value) -> Value {
    let mut c = v.clone();
    if let Some(m) = c.as_object_mut() {
        m.remove("metadata");
    }
    c
}

/// Everything of an object except metadata and status: what bumps generation.
fn spec_part(v: &Value) -> Value {
    let mut c = v.clone();
    if let Some(m) = c.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    c
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: Revision,
    start: String,
}

fn encode_continue(rv: Revision, start: &str) -> String {
    let t = serde_json::to_vec(&ContinueToken {
        rv,
        start: start.to_string(),
    })
    .unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(t)
}

fn decode_continue(token: &str) -> ApiResult<ContinueToken> {
    let bad = || ApiError::bad_request(format!("invalid continue token {token:?}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    serde_json::from_slice(&bytes).map_err(|_| bad())
}

impl Registry {
    pub fn new(store: Arc<dyn Store>, config: ApiConfig) -> Self {
        let alloc =
            ServiceAllocator::new(store.clone(), config.service_cidr, config.node_port_range);
        Registry {
            store,
            config,
            alloc,
            custom: CustomTypes::default(),
        }
    }

    /// The resource type served at `group/version/plural`: built in, or
    /// defined by a CustomResourceDefinition.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
        resources::find(group, version, plural)
            .or_else(|| self.custom.find(group, version, plural).map(|c| c.rt))
    }

    /// The custom resource versions served now.
    pub fn custom_types(&self) -> &CustomTypes {
        &self.custom
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn allocator(&self) -> &ServiceAllocator {
        &self.alloc
    }

    pub fn prefix(rt: &ResourceType, ns: Option<&str>) -> String {
        match ns {
            Some(ns) if rt.namespaced => format!("/registry/{}/{}/", rt.storage, ns),
            _ => format!("/registry/{}/", rt.storage),
        }
    }

    pub fn key(rt: &ResourceType, ns: Option<&str>, name: &str) -> String {
        format!("{}{}", Self::prefix(rt, ns), name)
    }

    /// Decode a stored value into the object clients see.
    pub fn decode(&self, rt: &ResourceType, kv: &KeyValue) -> ApiResult<Value> {
        decode_with(rt, self.custom.of(rt).as_deref(), kv)
    }

    fn encode(&self, rt: &ResourceType, v: &Value) -> ApiResult<Vec<u8>> {
        let mut v = match self.custom.of(rt) {
            Some(c) => c.to_storage(v.clone()),
            None => convert::to_storage(rt, v.clone()),
        };
        meta_mut(&mut v).remove("resourceVersion");
        serde_json::to_vec(&v).map_err(|e| ApiError::internal(format!("encode object: {e}")))
    }

    async fn get_kv(&self, rt: &ResourceType, ns: Option<&str>, name: &str) -> ApiResult<KeyValue> {
        let (kv, _) = self.store.get(&Self::key(rt, ns, name)).await?;
        kv.ok_or_else(|| {
            ApiError::not_found(&rt.qualified(), name).with_object(rt.group, rt.plural, name)
        })
    }

    pub async fn get(&self, rt: &ResourceType, ns: Option<&str>, name: &str) -> ApiResult<Value> {
        let kv = self.get_kv(rt, ns, name).await?;
        self.decode(rt, &kv)
    }

    /// List objects, honouring selectors and paging.
    pub async fn list(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> ApiResult<Value> {
        self.check_field_selector(rt, &opts.field_selector)?;
        let prefix = Self::prefix(rt, ns);
        let mut start = match &opts.continue_token {
            Some(t) if !t.is_empty() => Some(decode_continue(t)?.start),
            _ => None,
        };
        // A name selector turns into a get.
        let mut items = Vec::new();
        let mut revision;
        let mut next = None;
        let page = if opts.limit == 0 {
            0
        } else {
            opts.limit.max(100)
        };
        let custom = self.custom.of(rt);
        loop {
            let res = self.store.list(&prefix, start.as_deref(), page).await?;
            revision = res.revision;
            let mut last_key = None;
            for kv in &res.kvs {
                last_key = Some(kv.key.clone());
                let obj = decode_with(rt, custom.as_deref(), kv)?;
                if opts.label_selector.matches_object(&obj)
                    && opts.field_selector.matches_object(&obj)
                {
                    items.push(obj);
                    if opts.limit > 0 && items.len() >= opts.limit {
                        if kv.key != res.kvs.last().map(|k| k.key.clone()).unwrap_or_default()
                            || res.more
                        {
                            next = Some(kv.key.clone());
                        }
                        break;
                    }
                }
            }
            if next.is_some() || !res.more {
                break;
            }
            start = last_key;
        }
        let mut metadata = json!({"resourceVersion": revision.to_string()});
        if let Some(k) = next {
            metadata["continue"] = encode_continue(revision, &k).into();
        }
        Ok(list_object(rt, metadata, items))
    }

    /// Plain lists (no selectors, no conversion) as bytes: the stored JSON
    /// with `resourceVersion` spliced into each item's metadata, without
    /// decoding it. `None` when the fast path does not apply.
    pub async fn list_raw(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> ApiResult<Option<Vec<u8>>> {
        if !opts.label_selector.is_empty()
            || !opts.field_selector.is_empty()
            || rt.group == "events.k8s.io"
            || rt.custom
        {
            return Ok(None);
        }
        let start = match &opts.continue_token {
            Some(t) if !t.is_empty() => Some(decode_continue(t)?.start),
            _ => None,
        };
        let res = self
            .store
            .list(&Self::prefix(rt, ns), start.as_deref(), opts.limit)
            .await?;
        let mut items: Vec<u8> =
            Vec::with_capacity(res.kvs.iter().map(|kv| kv.value.len() + 40).sum());
        for (i, kv) in res.kvs.iter().enumerate() {
            let Some(spliced) = splice_resource_version(&kv.value, kv.mod_revision) else {
                return Ok(None);
            };
            if i > 0 {
                items.push(b',');
            }
            items.extend_from_slice(&spliced.0);
            items.extend_from_slice(spliced.1);
        }
        let mut metadata = json!({"resourceVersion": res.revision.to_string()});
        if res.more
            && let Some(last) = res.kvs.last()
        {
            metadata["continue"] = encode_continue(res.revision, &last.key).into();
        }
        let head =
            json!({"kind": rt.list_kind(), "apiVersion": rt.api_version(), "metadata": metadata});
        let mut out = serde_json::to_vec(&head)
            .map_err(|e| ApiError::internal(format!("encode list: {e}")))?;
        out.pop(); // the closing brace
        out.extend_from_slice(b",\"items\":[");
        out.extend_from_slice(&items);
        out.extend_from_slice(b"]}");
        Ok(Some(out))
    }

    fn check_field_selector(&self, rt: &ResourceType, fs: &FieldSelector) -> ApiResult<()> {
        for f in fs.fields() {
            if f != "metadata.name" && f != "metadata.namespace" && !rt.field_labels.contains(&f) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {f}"
                )));
            }
        }
        Ok(())
    }

    /// Defaulting, typed decoding (unknown fields per `fv`) and validation.
    fn admit(
        &self,
        rt: &ResourceType,
        mut obj: Value,
        fv: FieldValidation,
    ) -> ApiResult<(Value, Vec<String>)> {
        defaults::apply(rt, &mut obj);
        let custom = self.custom.of(rt);
        let mut unknown = Vec::new();
        if let Some(c) = &custom {
            unknown = custom_object_meta(&mut obj)?;
            unknown.extend(c.prune_and_default(&mut obj));
        }
        let typed = (rt.typed)(&obj).map_err(|e| {
            ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: {e}",
                rt.kind, rt.version, rt.kind
            ))
        })?;
        unknown.extend(unknown_fields(&obj, &typed));
        let mut warnings = Vec::new();
        if !unknown.is_empty() {
            match fv {
                FieldValidation::Strict => {
                    let detail = unknown
                        .iter()
                        .map(|f| format!("unknown field \"{f}\""))
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(ApiError::bad_request(format!(
                        "strict decoding error: {detail}"
                    )));
                }
                FieldValidation::Warn => {
                    warnings.extend(unknown.iter().map(|f| format!("unknown field \"{f}\"")));
                }
                FieldValidation::Ignore => {}
            }
        }
        let name = meta_str(&typed, "name").to_string();
        let mut causes = validation::validate(rt, &typed);
        if let Some(c) = &custom {
            causes.extend(c.validate(&typed));
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(rt.group, rt.kind, &name, causes));
        }
        Ok((typed, warnings))
    }

    fn check_type_meta(rt: &ResourceType, obj: &mut Value) -> ApiResult<()> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        let m = obj.as_object_mut().expect("checked");
        let api_version = rt.api_version();
        match m.get("apiVersion").and_then(Value::as_str) {
            None | Some("") => {
                m.insert("apiVersion".into(), api_version.clone().into());
            }
            Some(v) if v == api_version => {}
            Some(v) => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({v}) does not match the expected API version ({api_version})"
                )));
            }
        }
        match m.get("kind").and_then(Value::as_str) {
            None | Some("") => {
                m.insert("kind".into(), rt.kind.into());
            }
            Some(k) if k == rt.kind => {}
            Some(k) => {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    rt.kind
                )));
            }
        }
        if m.get("metadata")
            .is_some_and(|md| !md.is_object() && !md.is_null())
        {
            return Err(ApiError::bad_request("metadata must be an object"));
        }
        Ok(())
    }

    fn check_namespace(rt: &ResourceType, ns: Option<&str>, obj: &mut Value) -> ApiResult<()> {
        let md = meta_mut(obj);
        if rt.namespaced {
            let ns = ns.ok_or_else(|| {
                ApiError::bad_request("a namespace is required for namespaced resources")
            })?;
            match md.get("namespace").and_then(Value::as_str) {
                None | Some("") => {
                    md.insert("namespace".into(), ns.into());
                }
                Some(n) if n == ns => {}
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
            }
        } else {
            md.remove("namespace");
        }
        Ok(())
    }

    async fn namespace_open(&self, ns: &str) -> ApiResult<()> {
        let nsrt = resources::find("", "v1", "namespaces").expect("namespaces registered");
        let kv = self.store.get(&Self::key(nsrt, None, ns)).await?.0;
        match kv {
            None => Err(ApiError::not_found("namespaces", ns).with_object("", "namespaces", ns)),
            Some(kv) => {
                let v = self.decode(nsrt, &kv)?;
                if !meta_str(&v, "deletionTimestamp").is_empty() {
                    Err(ApiError::forbidden(format!(
                        "unable to create new content in namespace {ns} because it is being terminated"
                    )))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Create an object (POST).
    pub async fn create(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        mut obj: Value,
        opts: &WriteOptions,
    ) -> ApiResult<Written> {
        Self::check_type_meta(rt, &mut obj)?;
        Self::check_namespace(rt, ns, &mut obj)?;
        if let Some(c) = self.custom.of(rt) {
            if c.terminating {
                return Err(ApiError::method_not_allowed(format!(
                    "create not allowed while custom resource definition {} is terminating",
                    c.crd
                )));
            }
            // As for built-in types: a status subresource's is not the
            // creator's to set.
            if rt.has_status()
                && let Some(m) = obj.as_object_mut()
            {
                m.remove("status");
            }
        }
        {
            let md = meta_mut(&mut obj);
            let name = md
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let generate = md
                .get("generateName")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if name.is_empty() && !generate.is_empty() {
                md.insert(
                    "name".into(),
                    format!("{generate}{}", random_suffix()).into(),
                );
            }
            if md
                .get("resourceVersion")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
            {
                return Err(ApiError::bad_request(
                    "resourceVersion should not be set on objects to be created",
                ));
            }
            md.insert("uid".into(), uuid::Uuid::new_v4().to_string().into());
            md.insert("creationTimestamp".into(), now_rfc3339().into());
            for f in [
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "managedFields",
                "selfLink",
                "resourceVersion",
            ] {
                md.remove(f);
            }
        }
        let name = meta_str(&obj, "name").to_string();
        let causes = validation::name_causes(rt, &name);
        if !causes.is_empty() {
            return Err(ApiError::invalid(rt.group, rt.kind, &name, causes));
        }
        if obj.get("spec").is_some() || rt.custom {
            meta_mut(&mut obj).insert("generation".into(), 1.into());
        }
        let (mut obj, warnings) = self.admit(rt, obj, opts.field_validation)?;
        if let Some(check) = &opts.check {
            (check.0)(rt, None, &obj)?;
        }
        if rt.namespaced {
            self.namespace_open(ns.unwrap_or_default()).await?;
        }
        if rt.is("", "Pod") && self.config.admits(SERVICE_ACCOUNT_ADMISSION) {
            self.admit_service_account(ns.unwrap_or_default(), &mut obj, &random_suffix())
                .await?;
        }
        let key = Self::key(rt, ns, &name);
        if opts.dry_run {
            if self.store.get(&key).await?.0.is_some() {
                return Err(ApiError::already_exists(&rt.qualified(), &name)
                    .with_object(rt.group, rt.plural, &name));
            }
            return Ok(Written {
                object: obj,
                warnings,
                created: true,
            });
        }
        let allocation = if rt.is("", "Service") {
            Some(self.alloc.allocate(&mut obj, None).await?)
        } else {
            None
        };
        let bytes = self.encode(rt, &obj)?;
        match self.store.create(&key, bytes).await {
            Ok(kv) => {
                if let Some(a) = allocation {
                    a.commit();
                }
                self.after_write(rt).await;
                Ok(Written {
                    object: self.decode(rt, &kv)?,
                    warnings,
                    created: true,
                })
            }
            Err(StoreError::AlreadyExists { .. }) => {
                if let Some(a) = allocation {
                    a.rollback().await;
                }
                Err(ApiError::already_exists(&rt.qualified(), &name)
                    .with_object(rt.group, rt.plural, &name))
            }
            Err(e) => {
                if let Some(a) = allocation {
                    a.rollback().await;
                }
                Err(e.into())
            }
        }
    }

    /// Replace an object (PUT), the main resource or its status.
    pub async fn update(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        mut obj: Value,
        subresource: Option<&str>,
        opts: &WriteOptions,
    ) -> ApiResult<Written> {
        Self::check_type_meta(rt, &mut obj)?;
        Self::check_namespace(rt, ns, &mut obj)?;
        let body_name = meta_str(&obj, "name");
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        meta_mut(&mut obj).insert("name".into(), name.into());
        let wanted_rv = meta_str(&obj, "resourceVersion").to_string();
        loop {
            let kv = self.get_kv(rt, ns, name).await?;
            if !wanted_rv.is_empty() && wanted_rv != kv.mod_revision.to_string() {
                return Err(self.conflict(rt, name));
            }
            let current = self.decode(rt, &kv)?;
            match self
                .write_update(rt, ns, name, &kv, current, obj.clone(), subresource, opts)
                .await
            {
                Err(UpdateError::Conflict) if wanted_rv.is_empty() => continue,
                Err(UpdateError::Conflict) => return Err(self.conflict(rt, name)),
                Err(UpdateError::Api(e)) => return Err(e),
                Ok(w) => return Ok(w),
            }
        }
    }

    fn conflict(&self, rt: &ResourceType, name: &str) -> ApiError {
        ApiError::conflict(
            &rt.qualified(),
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
        .with_object(rt.group, rt.plural, name)
    }

    /// Merge `new` over `current` per the subresource rules, admit it and
    /// compare-and-swap it in. A finalized deleting object is removed.
    #[allow(clippy::too_many_arguments)]
    async fn write_update(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        kv: &KeyValue,
        current: Value,
        mut new: Value,
        subresource: Option<&str>,
        opts: &WriteOptions,
    ) -> Result<Written, UpdateError> {
        match subresource {
            Some("status") => {
                // Only the status changes.
                let status = new.get("status").cloned();
                new = current.clone();
                match status {
                    Some(s) => {
                        new["status"] = s;
                    }
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            Some("approval") => {
                // Only the approval conditions change (CSRs).
                let conditions = new.pointer("/status/conditions").cloned();
                new = current.clone();
                if !new["status"].is_object() {
                    new["status"] = serde_json::json!({});
                }
                match conditions {
                    Some(c) => new["status"]["conditions"] = c,
                    None => {
                        if let Some(m) = new["status"].as_object_mut() {
                            m.remove("conditions");
                        }
                    }
                }
            }
            Some("finalize") => {
                let spec = new.get("spec").cloned();
                new = current.clone();
                if let Some(s) = spec {
                    new["spec"] = s;
                }
            }
            _ => {
                if rt.has_status() {
                    match current.get("status") {
                        Some(s) => new["status"] = s.clone(),
                        None => {
                            if let Some(m) = new.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                }
            }
        }
        {
            let cur_md = meta(&current).clone();
            let md = meta_mut(&mut new);
            for f in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "namespace",
                "generation",
            ] {
                match cur_md.get(f) {
                    Some(v) => {
                        md.insert(f.into(), v.clone());
                    }
                    None => {
                        md.remove(f);
                    }
                }
            }
            md.remove("managedFields");
            md.remove("selfLink");
            md.remove("resourceVersion");
        }
        if rt.is("", "Service") {
            self.alloc.carry_over(&current, &mut new);
        }
        let (mut new, warnings) = self
            .admit(rt, new, opts.field_validation)
            .map_err(UpdateError::Api)?;
        if let Some(check) = &opts.check {
            (check.0)(rt, Some(&current), &new).map_err(UpdateError::Api)?;
        }
        // Compared after defaulting: a manifest that leaves out defaulted
        // fields (kubectl replace) is no spec change.
        let changed = if rt.custom && !rt.has_status() {
            // Without a status subresource, status is content like the rest.
            content_part(&new) != content_part(&current)
        } else {
            spec_part(&new) != spec_part(&current)
        };
        if (new.get("spec").is_some() || rt.custom) && changed {
            let g = meta(&current)
                .get("generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut new).insert("generation".into(), (g + 1).into());
        }
        let mut causes = validation::validate_update(rt, &current, &new);
        if !meta_str(&current, "deletionTimestamp").is_empty() {
            // As kube-apiserver: a deleting object may only lose finalizers.
            let added: Vec<String> = meta(&new)
                .get("finalizers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|f| {
                    !meta(&current)
                        .get("finalizers")
                        .and_then(Value::as_array)
                        .is_some_and(|old| old.contains(f))
                })
                .map(|f| f.as_str().unwrap_or_default().to_string())
                .collect();
            if !added.is_empty() {
                causes.push(Cause::new(
                    "FieldValueForbidden",
                    "metadata.finalizers",
                    format!(
                        "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"
                    ),
                ));
            }
        }
        if !causes.is_empty() {
            return Err(UpdateError::Api(ApiError::invalid(
                rt.group, rt.kind, name, causes,
            )));
        }
        let key = Self::key(rt, ns, name);
        let mut cur_cmp = current.clone();
        meta_mut(&mut cur_cmp).remove("resourceVersion");
        if new == cur_cmp {
            return Ok(Written {
                object: current,
                warnings,
                created: false,
            });
        }
        if opts.dry_run {
            meta_mut(&mut new).insert("resourceVersion".into(), kv.mod_revision.to_string().into());
            return Ok(Written {
                object: new,
                warnings,
                created: false,
            });
        }
        // A deleting object whose last finalizer went away is removed.
        if !meta_str(&new, "deletionTimestamp").is_empty() && finalizers(&new).is_empty() {
            return match self.store.delete(&key, Some(kv.mod_revision)).await {
                Ok(deleted) => {
                    self.after_delete(rt, &current).await;
                    let mut obj = new;
                    meta_mut(&mut obj).insert(
                        "resourceVersion".into(),
                        deleted.mod_revision.to_string().into(),
                    );
                    Ok(Written {
                        object: obj,
                        warnings,
                        created: false,
                    })
                }
                Err(StoreError::Conflict { .. }) | Err(StoreError::NotFound { .. }) => {
                    Err(UpdateError::Conflict)
                }
                Err(e) => Err(UpdateError::Api(e.into())),
            };
        }
        let allocation = if rt.is("", "Service") {
            Some(
                self.alloc
                    .allocate(&mut new, Some(&current))
                    .await
                    .map_err(UpdateError::Api)?,
            )
        } else {
            None
        };
        let bytes = self.encode(rt, &new).map_err(UpdateError::Api)?;
        match self.store.update(&key, bytes, kv.mod_revision).await {
            Ok(kv) => {
                if let Some(a) = allocation {
                    a.commit();
                    self.alloc.release_unused(&current, &new).await;
                }
                if subresource.is_none() {
                    self.after_write(rt).await;
                }
                Ok(Written {
                    object: self.decode(rt, &kv).map_err(UpdateError::Api)?,
                    warnings,
                    created: false,
                })
            }
            Err(e) => {
                if let Some(a) = allocation {
                    a.rollback().await;
                }
                match e {
                    StoreError::Conflict { .. } => Err(UpdateError::Conflict),
                    StoreError::NotFound { .. } => Err(UpdateError::Api(
                        ApiError::not_found(&rt.qualified(), name)
                            .with_object(rt.group, rt.plural, name),
                    )),
                    other => Err(UpdateError::Api(other.into())),
                }
            }
        }
    }

    /// Patch an object (PATCH), the main resource or its status.
    #[allow(clippy::too_many_arguments)]
    pub async fn patch(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        patch_type: PatchType,
        patch_body: &Value,
        subresource: Option<&str>,
        opts: &WriteOptions,
    ) -> ApiResult<Written> {
        loop {
            let kv = self.get_kv(rt, ns, name).await?;
            let current = self.decode(rt, &kv)?;
            let patched = apply_patch(rt, &current, patch_type, patch_body)?;
            let pinned = meta_str(&patched, "resourceVersion").to_string();
            let pinned_by_patch = pinned != kv.mod_revision.to_string();
            if pinned_by_patch && !pinned.is_empty() {
                return Err(self.conflict(rt, name));
            }
            let patched_name = meta_str(&patched, "name");
            if patched_name != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({patched_name}) does not match the name on the URL ({name})"
                )));
            }
            let mut patched = patched;
            Self::check_type_meta(rt, &mut patched)?;
            match self
                .write_update(rt, ns, name, &kv, current, patched, subresource, opts)
                .await
            {
                Err(UpdateError::Conflict) => continue,
                Err(UpdateError::Api(e)) => return Err(e),
                Ok(w) => return Ok(w),
            }
        }
    }

    /// Delete an object (DELETE): immediately, or by marking it for deletion
    /// when finalizers or a pod's grace period hold it.
    pub async fn delete(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> ApiResult<Value> {
        loop {
            let kv = self.get_kv(rt, ns, name).await?;
            let current = self.decode(rt, &kv)?;
            if let Some(uid) = &opts.precondition_uid
                && uid != meta_str(&current, "uid")
            {
                return Err(ApiError::conflict(
                    &rt.qualified(),
                    name,
                    format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta_str(&current, "uid")
                    ),
                ));
            }
            if let Some(rv) = &opts.precondition_resource_version
                && *rv != kv.mod_revision.to_string()
            {
                return Err(ApiError::conflict(
                    &rt.qualified(),
                    name,
                    format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                        kv.mod_revision
                    ),
                ));
            }
            let key = Self::key(rt, ns, name);
            let mut marked = current.clone();
            let mut fins = meta(&marked)
                .get("finalizers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let cleanup = json!(crd::CLEANUP_FINALIZER);
            if rt.is(crd::GROUP, crd::KIND)
                && meta_str(&current, "deletionTimestamp").is_empty()
                && !fins.contains(&cleanup)
            {
                // Its custom resources go first ([`Registry::reconcile_custom_resources`]).
                fins.push(cleanup);
            }
            match opts.propagation_policy.as_deref() {
                Some("Orphan") if !fins.contains(&json!("orphan")) => fins.push(json!("orphan")),
                Some("Foreground") if !fins.contains(&json!("foregroundDeletion")) => {
                    fins.push(json!("foregroundDeletion"))
                }
                _ => {}
            }
            let grace = self.grace_period(rt, &current, opts);
            let already = !meta_str(&current, "deletionTimestamp").is_empty();
            let has_fins = !fins.is_empty() || !finalizers(&current).is_empty();
            if grace > 0 || has_fins {
                // Mark for deletion; someone else (agent, controller) finishes it.
                let shorter = meta(&current)
                    .get("deletionGracePeriodSeconds")
                    .and_then(Value::as_i64)
                    .is_none_or(|g| grace < g);
                if already
                    && !shorter
                    && fins.len()
                        == meta(&current)
                            .get("finalizers")
                            .and_then(Value::as_array)
                            .map_or(0, Vec::len)
                {
                    return Ok(current);
                }
                let when = chrono::Utc::now() + chrono::Duration::seconds(grace);
                let md = meta_mut(&mut marked);
                if !already || shorter {
                    md.insert(
                        "deletionTimestamp".into(),
                        when.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                            .into(),
                    );
                    md.insert("deletionGracePeriodSeconds".into(), grace.into());
                }
                if !fins.is_empty() {
                    md.insert("finalizers".into(), Value::Array(fins));
                }
                if rt.is("", "Namespace") {
                    marked["status"]["phase"] = "Terminating".into();
                }
                if opts.dry_run {
                    return Ok(marked);
                }
                let bytes = self.encode(rt, &marked)?;
                match self.store.update(&key, bytes, kv.mod_revision).await {
                    Ok(kv) => {
                        self.after_write(rt).await;
                        return self.decode(rt, &kv);
                    }
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(StoreError::NotFound { .. }) => {
                        return Err(ApiError::not_found(&rt.qualified(), name)
                            .with_object(rt.group, rt.plural, name));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if opts.dry_run {
                return Ok(current);
            }
            match self.store.delete(&key, Some(kv.mod_revision)).await {
                Ok(deleted) => {
                    self.after_delete(rt, &current).await;
                    let mut obj = current;
                    meta_mut(&mut obj).insert(
                        "resourceVersion".into(),
                        deleted.mod_revision.to_string().into(),
                    );
                    return Ok(obj);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound { .. }) => {
                    return Err(ApiError::not_found(&rt.qualified(), name)
                        .with_object(rt.group, rt.plural, name));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Seconds of grace a deletion gets: pods bound to a node and still
    /// running wait for their agent; everything else goes at once.
    fn grace_period(&self, rt: &ResourceType, current: &Value, opts: &DeleteOptions) -> i64 {
        if !rt.is("", "Pod") {
            return 0;
        }
        let bound = current
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        let phase = current
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !bound || phase == "Succeeded" || phase == "Failed" {
            return 0;
        }
        let g = opts.grace_period_seconds.unwrap_or_else(|| {
            current
                .pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(30)
        });
        // An explicit 0 (kubectl delete --force --grace-period=0) deletes at once.
        g.max(0)
    }

    async fn after_delete(&self, rt: &ResourceType, obj: &Value) {
        if rt.is("", "Service") {
            self.alloc.release_all(obj).await;
        }
        self.after_write(rt).await;
    }

    /// A written CustomResourceDefinition changes what this server serves
    /// before the write is answered (other servers on the same store
    /// follow through [`Registry::reconcile_custom_resources`]).
    async fn after_write(&self, rt: &ResourceType) {
        if rt.is(crd::GROUP, crd::KIND)
            && let Err(e) = self.refresh_custom_types().await
        {
            tracing::warn!(error = %e, "refresh custom resource types");
        }
    }

    /// The stored CustomResourceDefinitions, as clients see them.
    async fn stored_definitions(&self) -> ApiResult<Vec<Value>> {
        let rt = crd_type();
        let res = self.store.list(&Self::prefix(rt, None), None, 0).await?;
        res.kvs.iter().map(|kv| self.decode(rt, kv)).collect()
    }

    /// Serve what the stored definitions define now.
    pub async fn refresh_custom_types(&self) -> ApiResult<crd::Plan> {
        let defs = self.stored_definitions().await?;
        let plan = crd::plan(&defs, &crd::builtin_names, &now_rfc3339());
        self.custom.replace(&plan.served);
        Ok(plan)
    }

    /// One pass of what apiextensions-apiserver's controllers do: serve
    /// the custom resource versions the stored definitions define, give
    /// each definition the status it should have (accepted names,
    /// NamesAccepted, Established, stored versions), and for a deleting
    /// one delete its custom resources, then release it. Level-triggered:
    /// a second pass with nothing changed writes nothing. Returns whether
    /// custom resources are still on their way out (look again soon).
    pub async fn reconcile_custom_resources(&self) -> ApiResult<bool> {
        let plan = self.refresh_custom_types().await?;
        let rt = crd_type();
        let opts = WriteOptions::default();
        for (name, status) in &plan.status {
            let mut current = match self.get(rt, None, name).await {
                Ok(c) => c,
                Err(e) if e.code == 404 => continue,
                Err(e) => return Err(e),
            };
            current["status"] = status.clone();
            match self
                .update(rt, None, name, current, Some("status"), &opts)
                .await
            {
                Ok(_) => {}
                // Changed meanwhile: the change brings another pass.
                Err(e) if e.code == 404 || e.code == 409 => {}
                Err(e) => {
                    tracing::warn!(crd = %name, error = %e, "write custom resource definition status")
                }
            }
        }
        let mut pending = false;
        for name in &plan.cleanup {
            if !self.delete_custom_resources(&plan, name).await? {
                pending = true;
                continue;
            }
            let mut current = match self.get(rt, None, name).await {
                Ok(c) => c,
                Err(e) if e.code == 404 => continue,
                Err(e) => return Err(e),
            };
            if let Some(fins) = current
                .pointer_mut("/metadata/finalizers")
                .and_then(Value::as_array_mut)
            {
                fins.retain(|f| f != crd::CLEANUP_FINALIZER);
            }
            match self.update(rt, None, name, current, None, &opts).await {
                Ok(_) => tracing::info!(crd = %name, "custom resources deleted"),
                Err(e) if e.code == 404 || e.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(pending)
    }

    /// Delete the custom resources of the deleting definition `name`;
    /// true when none is left.
    async fn delete_custom_resources(&self, plan: &crd::Plan, name: &str) -> ApiResult<bool> {
        let Some(rt) = plan
            .served
            .iter()
            .find(|s| s.crd == name)
            .and_then(|s| self.custom.find(&s.group, &s.version, &s.names.plural))
            .map(|c| c.rt)
        else {
            // Never served: nothing was stored.
            return Ok(true);
        };
        let list = self.list(rt, None, &ListOptions::default()).await?;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        for item in &items {
            if !meta_str(item, "deletionTimestamp").is_empty() {
                continue;
            }
            let ns = item.pointer("/metadata/namespace").and_then(Value::as_str);
            match self
                .delete(rt, ns, meta_str(item, "name"), &DeleteOptions::default())
                .await
            {
                Ok(_) => {}
                Err(e) if e.code == 404 || e.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        if items.is_empty() {
            return Ok(true);
        }
        let left = self.list(rt, None, &ListOptions::default()).await?;
        Ok(left["items"].as_array().is_none_or(Vec::is_empty))
    }

    /// Delete every object matching the selectors (DELETE on a collection).
    pub async fn delete_collection(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        list: &ListOptions,
        opts: &DeleteOptions,
    ) -> ApiResult<Value> {
        let objs = self.list(rt, ns, list).await?;
        let mut items = Vec::new();
        for item in objs["items"].as_array().into_iter().flatten() {
            let name = meta_str(item, "name");
            let item_ns = item.pointer("/metadata/namespace").and_then(Value::as_str);
            match self.delete(rt, item_ns.or(ns), name, opts).await {
                Ok(v) => items.push(v),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(list_object(rt, json!({}), items))
    }

    /// Bind a pod to a node (POST pods/{name}/binding).
    pub async fn bind(&self, ns: &str, name: &str, binding: &Value) -> ApiResult<Value> {
        let rt = resources::find("", "v1", "pods").expect("pods registered");
        let node = binding
            .pointer("/target/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if node.is_empty() {
            return Err(ApiError::invalid(
                "",
                "Binding",
                name,
                vec![Cause::required("target.name")],
            ));
        }
        loop {
            let kv = self.get_kv(rt, Some(ns), name).await?;
            let mut pod = self.decode(rt, &kv)?;
            if !meta_str(&pod, "deletionTimestamp").is_empty() {
                return Err(ApiError::conflict(
                    "pods",
                    name,
                    "pod is being deleted, cannot be assigned to a host",
                ));
            }
            let current = pod
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !current.is_empty() {
                return Err(ApiError::conflict(
                    "pods/binding",
                    name,
                    format!("pod {name} is already assigned to node \"{current}\""),
                ));
            }
            pod["spec"]["nodeName"] = node.clone().into();
            let cond = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now_rfc3339()});
            let conds = pod["status"]
                .as_object_mut()
                .map(|s| s.entry("conditions").or_insert_with(|| json!([])));
            if let Some(Value::Array(cs)) = conds {
                cs.retain(|c| c.get("type") != Some(&json!("PodScheduled")));
                cs.push(cond);
            }
            let bytes = self.encode(rt, &pod)?;
            match self.store.update(&kv.key, bytes, kv.mod_revision).await {
                Ok(_) => {
                    return Ok(
                        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                    );
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The autoscaling/v1 Scale of an object of `rt`: `spec.replicas`,
    /// `status.replicas` and `spec.selector` for the built-in types, the
    /// paths of its scale subresource for a custom resource.
    pub fn scale_of(&self, rt: &ResourceType, obj: &Value) -> Value {
        let paths = self.custom.of(rt).and_then(|c| c.scale.clone());
        let (spec, status, selector) = match &paths {
            Some(p) => (
                json_path_pointer(&p.spec_replicas),
                json_path_pointer(&p.status_replicas),
                p.label_selector
                    .as_deref()
                    .map(json_path_pointer)
                    .and_then(|ptr| obj.pointer(&ptr))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            ),
            None => (
                "/spec/replicas".to_string(),
                "/status/replicas".to_string(),
                Self::selector_string(obj),
            ),
        };
        json!({
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                "name": meta_str(obj, "name"),
                "namespace": meta_str(obj, "namespace"),
                "uid": meta_str(obj, "uid"),
                "resourceVersion": meta_str(obj, "resourceVersion"),
                "creationTimestamp": meta(obj).get("creationTimestamp").cloned().unwrap_or(Value::Null),
            },
            "spec": {"replicas": obj.pointer(&spec).cloned().unwrap_or(json!(0))},
            "status": {
                "replicas": obj.pointer(&status).cloned().unwrap_or(json!(0)),
                "selector": selector,
            },
        })
    }

    /// `spec.selector` as a label selector string.
    fn selector_string(obj: &Value) -> String {
        let sel = obj
            .pointer("/spec/selector")
            .cloned()
            .unwrap_or(Value::Null);
        LabelSelector::from_object(&sel)
            .map(|s| {
                s.0.iter()
                    .map(|r| match &r.op {
                        super::selectors::Op::Eq(v) => format!("{}={}", r.key, v),
                        super::selectors::Op::NotEq(v) => format!("{}!={}", r.key, v),
                        super::selectors::Op::In(vs) => format!("{} in ({})", r.key, vs.join(",")),
                        super::selectors::Op::NotIn(vs) => {
                            format!("{} notin ({})", r.key, vs.join(","))
                        }
                        super::selectors::Op::Exists => r.key.clone(),
                        super::selectors::Op::DoesNotExist => format!("!{}", r.key),
                        super::selectors::Op::Gt(n) => format!("{}>{n}", r.key),
                        super::selectors::Op::Lt(n) => format!("{}<{n}", r.key),
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    }

    /// Update the scale subresource: PUT (a Scale) or PATCH (against the Scale).
    pub async fn update_scale(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        change: ScaleChange<'_>,
        opts: &WriteOptions,
    ) -> ApiResult<Value> {
        loop {
            let kv = self.get_kv(rt, Some(ns), name).await?;
            let current = self.decode(rt, &kv)?;
            let scale = self.scale_of(rt, &current);
            let new_scale = match change {
                ScaleChange::Replace(s) => {
                    let rv = s
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if !rv.is_empty() && rv != kv.mod_revision.to_string() {
                        return Err(self.conflict(rt, name));
                    }
                    s.clone()
                }
                ScaleChange::Patch(t, p) => {
                    let scale_rt = ResourceType {
                        kind: "Scale",
                        group: "autoscaling",
                        custom: false,
                        ..*rt
                    };
                    apply_patch(&scale_rt, &scale, t, p)?
                }
            };
            // spec.replicas is a plain int32 in Go: absent (as a protobuf
            // body with 0 replicas decodes) or null reads as 0.
            let replicas = match new_scale.pointer("/spec/replicas") {
                None | Some(Value::Null) => 0,
                Some(v) => v.as_i64().ok_or_else(|| {
                    ApiError::invalid(
                        "autoscaling",
                        "Scale",
                        name,
                        vec![Cause::invalid(
                            "spec.replicas",
                            &v.to_string(),
                            "must be an integer",
                        )],
                    )
                })?,
            };
            if replicas < 0 {
                return Err(ApiError::invalid(
                    "autoscaling",
                    "Scale",
                    name,
                    vec![Cause::invalid(
                        "spec.replicas",
                        &replicas.to_string(),
                        "must be greater than or equal to 0",
                    )],
                ));
            }
            let mut new = current.clone();
            let spec_path = match self.custom.of(rt).and_then(|c| c.scale.clone()) {
                Some(p) => json_path_pointer(&p.spec_replicas),
                None => "/spec/replicas".to_string(),
            };
            set_pointer(&mut new, &spec_path, replicas.into());
            match self
                .write_update(rt, Some(ns), name, &kv, current, new, None, opts)
                .await
            {
                Ok(w) => return Ok(self.scale_of(rt, &w.object)),
                Err(UpdateError::Conflict) => continue,
                Err(UpdateError::Api(e)) => return Err(e),
            }
        }
    }

    /// Watch changes, filtered by selectors, as Kubernetes watch events.
    pub async fn watch(
        &self,
        rt: &'static ResourceType,
        ns: Option<String>,
        opts: WatchOptions,
    ) -> ApiResult<BoxStream<'static, WatchEvent>> {
        self.check_field_selector(rt, &opts.field_selector)?;
        let prefix = Self::prefix(rt, ns.as_deref());
        let name = opts
            .field_selector
            .required_value("metadata.name")
            .map(String::from);
        // Read through the version as it is now, for the watch's life.
        let custom = self.custom.of(rt);
        let (mut initial, from) = match opts.resource_version {
            Some(rv) if rv > 0 && !opts.send_initial_events => (Vec::new(), rv),
            _ => {
                let list = match &name {
                    Some(n) => {
                        let (kv, rev) = self.store.get(&format!("{prefix}{}", n)).await?;
                        (kv.into_iter().collect::<Vec<_>>(), rev)
                    }
                    None => {
                        let res = self.store.list(&prefix, None, 0).await?;
                        (res.kvs, res.revision)
                    }
                };
                let mut initial = Vec::new();
                for kv in &list.0 {
                    let obj = decode_with(rt, custom.as_deref(), kv)?;
                    if opts.label_selector.matches_object(&obj)
                        && opts.field_selector.matches_object(&obj)
                    {
                        initial.push(WatchEvent::Added(obj));
                    }
                }
                (initial, list.1)
            }
        };
        if opts.send_initial_events {
            initial.push(WatchEvent::InitialEventsEnd(from));
        }
        // Narrow the store watch to one key when a name is selected.
        let watch_prefix = match &name {
            Some(n) => format!("{prefix}{n}"),
            None => prefix.clone(),
        };
        let events = match self.store.watch(&watch_prefix, from).await {
            Ok(s) => s,
            Err(StoreError::Compacted {
                requested,
                compacted,
            }) => {
                let status = ApiError::gone(format!(
                    "too old resource version: {requested} ({compacted})"
                ))
                .to_status();
                return Ok(futures::stream::iter(vec![WatchEvent::Error(status)]).boxed());
            }
            Err(e) => return Err(e.into()),
        };
        let exact = name.clone().map(|n| format!("{prefix}{n}"));
        let raw_lines = opts.lines
            && opts.label_selector.is_empty()
            && opts.field_selector.is_empty()
            && rt.group != "events.k8s.io"
            && !rt.custom;
        let label = opts.label_selector;
        let field = opts.field_selector;
        let matches = move |v: &Value| label.matches_object(v) && field.matches_object(v);
        let live = events.filter_map(move |ev| {
            let out = match ev {
                Err(e) => {
                    let err: ApiError = match e {
                        StoreError::Compacted {
                            requested,
                            compacted,
                        } => ApiError::gone(format!(
                            "too old resource version: {requested} ({compacted})"
                        )),
                        other => ApiError::internal(other.to_string()),
                    };
                    Some(WatchEvent::Error(err.to_status()))
                }
                Ok(ev) => {
                    if exact.as_ref().is_some_and(|k| *k != ev.kv.key) {
                        None
                    } else if let Some(line) = raw_lines.then(|| event_line_raw(&ev)).flatten() {
                        Some(line)
                    } else {
                        translate(rt, custom.as_deref(), &ev, &matches)
                            .or(Some(WatchEvent::Progress(ev.revision())))
                    }
                }
            };
            futures::future::ready(out)
        });
        Ok(futures::stream::iter(initial).chain(live).boxed())
    }
}

fn crd_type() -> &'static ResourceType {
    resources::find(crd::GROUP, "v1", "customresourcedefinitions")
        .expect("customresourcedefinitions registered")
}

/// A scale subresource's path (`.spec.replicas`) as a JSON pointer.
fn json_path_pointer(path: &str) -> String {
    path.split('.')
        .filter(|s| !s.is_empty())
        .fold(String::new(), |acc, s| format!("{acc}/{s}"))
}

/// Set the value at a JSON pointer, making the objects on the way.
fn set_pointer(v: &mut Value, pointer: &str, value: Value) {
    let mut cur = v;
    let parts: Vec<&str> = pointer.split('/').filter(|s| !s.is_empty()).collect();
    for (i, p) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        let m = cur.as_object_mut().expect("made an object");
        if i == parts.len() - 1 {
            m.insert(p.to_string(), value);
            return;
        }
        cur = m.entry(p.to_string()).or_insert_with(|| json!({}));
    }
}

/// A custom resource's metadata as ObjectMeta has it (the schema does not
/// describe metadata): the paths of the fields that were dropped.
fn custom_object_meta(obj: &mut Value) -> ApiResult<Vec<String>> {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    let Some(md) = obj.get("metadata").cloned() else {
        return Ok(Vec::new());
    };
    let typed: ObjectMeta = serde_json::from_value(md.clone())
        .map_err(|e| ApiError::bad_request(format!("metadata: {e}")))?;
    let typed = serde_json::to_value(typed)
        .map_err(|e| ApiError::internal(format!("encode metadata: {e}")))?;
    let dropped = unknown_fields(&md, &typed)
        .into_iter()
        .map(|f| format!("metadata.{f}"))
        .collect();
    obj["metadata"] = typed;
    Ok(dropped)
}

/// Decode a stored value into the object clients see, through the custom
/// resource version `custom` when `rt` is one.
fn decode_with(
    rt: &ResourceType,
    custom: Option<&CustomVersion>,
    kv: &KeyValue,
) -> ApiResult<Value> {
    let mut v: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("decode stored object {}: {e}", kv.key)))?;
    meta_mut(&mut v).insert("resourceVersion".into(), kv.mod_revision.to_string().into());
    Ok(match custom {
        Some(c) => c.from_storage(v),
        None => convert::from_storage(rt, v),
    })
}

/// Split a stored object's JSON at its top-level `"metadata":{` and return
/// (head with `resourceVersion` added, rest). `None` if the object does not
/// have the shape we write (metadata after only scalar fields).
fn splice_resource_version(v: &[u8], rv: Revision) -> Option<(Vec<u8>, &[u8])> {
    const KEY: &[u8] = b"\"metadata\":{";
    let pos = v.windows(KEY.len()).position(|w| w == KEY)?;
    if v.first() != Some(&b'{') || v[1..pos].iter().any(|b| matches!(b, b'{' | b'[')) {
        return None;
    }
    let split = pos + KEY.len();
    let mut head = Vec::with_capacity(split + 32);
    head.extend_from_slice(&v[..split]);
    head.extend_from_slice(format!("\"resourceVersion\":\"{rv}\"").as_bytes());
    if v.get(split) != Some(&b'}') {
        head.push(b',');
    }
    Some((head, &v[split..]))
}

/// An unfiltered store event as a ready JSON watch line, or `None` when the
/// stored bytes do not have the shape the splice needs.
fn event_line_raw(ev: &crate::store::Event) -> Option<WatchEvent> {
    let kind: &[u8] = match ev.kind {
        EventKind::Put if ev.prev.is_none() => b"ADDED",
        EventKind::Put => b"MODIFIED",
        EventKind::Delete => b"DELETED",
    };
    let revision = ev.kv.mod_revision;
    let (head, rest) = splice_resource_version(&ev.kv.value, revision)?;
    let mut line = Vec::with_capacity(head.len() + rest.len() + 32);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(kind);
    line.extend_from_slice(b"\",\"object\":");
    line.extend_from_slice(&head);
    line.extend_from_slice(rest);
    line.extend_from_slice(b"}\n");
    Some(WatchEvent::Line {
        revision,
        line: line.into(),
    })
}

/// A list object. Built by moving `items` in: `json!` would deep-copy them,
/// which costs more than decoding them did for large lists.
fn list_object(rt: &ResourceType, metadata: Value, items: Vec<Value>) -> Value {
    let mut m = Map::new();
    m.insert("kind".into(), rt.list_kind().into());
    m.insert("apiVersion".into(), rt.api_version().into());
    m.insert("metadata".into(), metadata);
    m.insert("items".into(), Value::Array(items));
    Value::Object(m)
}

/// Turn a store event into a watch event for a filtered watch: objects that
/// move into the selection are ADDED, out of it DELETED.
fn translate(
    rt: &ResourceType,
    custom: Option<&CustomVersion>,
    ev: &crate::store::Event,
    matches: &impl Fn(&Value) -> bool,
) -> Option<WatchEvent> {
    let decode = |kv: &KeyValue| decode_with(rt, custom, kv).ok();
    match ev.kind {
        EventKind::Put => {
            let new = decode(&ev.kv)?;
            let old_matches = ev
                .prev
                .as_ref()
                .and_then(decode)
                .is_some_and(|o| matches(&o));
            match (old_matches, matches(&new)) {
                (false, true) if ev.prev.is_none() => Some(WatchEvent::Added(new)),
                (false, true) => Some(WatchEvent::Added(new)),
                (true, true) => Some(WatchEvent::Modified(new)),
                (true, false) => Some(WatchEvent::Deleted(new)),
                (false, false) => None,
            }
        }
        EventKind::Delete => {
            let old = decode(&ev.kv)?;
            matches(&old).then_some(WatchEvent::Deleted(old))
        }
    }
}

pub enum ScaleChange<'a> {
    Replace(&'a Value),
    Patch(PatchType, &'a Value),
}

enum UpdateError {
    Conflict,
    Api(ApiError),
}

fn apply_patch(rt: &ResourceType, current: &Value, t: PatchType, p: &Value) -> ApiResult<Value> {
    if rt.custom && t == PatchType::Strategic {
        // No Go struct, no patch strategy: as kube-apiserver, refused.
        let mut e = ApiError::unsupported_media_type("application/strategic-merge-patch+json");
        e.message = "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml".into();
        return Err(e);
    }
    let result = match t {
        PatchType::Json => patch::apply_json_patch(current, p),
        PatchType::Merge => patch::apply_json_merge_patch(current, p),
        PatchType::Strategic => patch::apply_strategic_merge_patch(
            current,
            p,
            patch::schema_for_kind(rt.group, rt.kind),
        ),
    };
    result.map_err(|e| patch_error(rt, e))
}

fn patch_error(rt: &ResourceType, e: PatchError) -> ApiError {
    match e.status_code() {
        413 => ApiError::too_large(e.to_string()),
        422 => ApiError::invalid(
            rt.group,
            rt.kind,
            "",
            vec![Cause::new("FieldValueInvalid", "", e.to_string())],
        ),
        _ => ApiError::bad_request(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_event_lines_match_decoded_events() {
        use crate::store::{Event, KeyValue};
        let kv = |v: &[u8], rev| KeyValue {
            key: "/registry/pods/default/a".into(),
            value: v.to_vec(),
            create_revision: 5,
            mod_revision: rev,
        };
        let pod = br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a"},"spec":{}}"#;
        let cases = [
            (EventKind::Put, None, "ADDED"),
            (EventKind::Put, Some(kv(pod, 5)), "MODIFIED"),
            (EventKind::Delete, Some(kv(pod, 6)), "DELETED"),
        ];
        for (kind, prev, want) in cases {
            let ev = Event {
                kind,
                kv: kv(pod, 9),
                prev,
            };
            let Some(WatchEvent::Line { revision, line }) = event_line_raw(&ev) else {
                panic!("no raw line for {want}");
            };
            assert_eq!(revision, 9);
            assert_eq!(line.last(), Some(&b'\n'));
            let parsed: Value = serde_json::from_slice(&line).unwrap();
            assert_eq!(parsed["type"], want);
            assert_eq!(parsed["object"]["metadata"]["resourceVersion"], "9");
            assert_eq!(parsed["object"]["metadata"]["name"], "a");
        }
        // Bytes without the expected shape fall back to the decoding path.
        let odd = Event {
            kind: EventKind::Put,
            kv: kv(br#"{"spec":{},"metadata":{}}"#, 3),
            prev: None,
        };
        assert!(event_line_raw(&odd).is_none());
    }

    #[test]
    fn splices_into_top_level_metadata() {
        let v = br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a"},"spec":{"template":{"metadata":{}}}}"#;
        let (head, rest) = splice_resource_version(v, 42).unwrap();
        let parsed: Value = serde_json::from_slice(&[head.as_slice(), rest].concat()).unwrap();
        assert_eq!(parsed["metadata"]["resourceVersion"], "42");
        assert_eq!(parsed["metadata"]["name"], "a");
        assert!(
            parsed["spec"]["template"]["metadata"]
                .get("resourceVersion")
                .is_none()
        );
        let empty = br#"{"kind":"X","metadata":{}}"#;
        let (head, rest) = splice_resource_version(empty, 7).unwrap();
        let parsed: Value = serde_json::from_slice(&[head.as_slice(), rest].concat()).unwrap();
        assert_eq!(parsed["metadata"], json!({"resourceVersion": "7"}));
        // Metadata after a nested object is not the shape we write: no fast path.
        assert!(splice_resource_version(br#"{"spec":{"a":1},"metadata":{}}"#, 1).is_none());
        assert!(splice_resource_version(br#"{"kind":"X"}"#, 1).is_none());
    }
}
