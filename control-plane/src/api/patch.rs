//! The three PATCH body types of the Kubernetes API, applied to JSON values:
//!
//! * JSON merge patch (RFC 7386, `application/merge-patch+json`);
//! * JSON patch (RFC 6902, `application/json-patch+json`);
//! * strategic merge patch (`application/strategic-merge-patch+json`), the
//!   server-side semantics of k8s.io/apimachinery/pkg/util/strategicpatch
//!   (`StrategicMergeMapPatch`: `mergeMap` with `MergeParallelList` and
//!   `IgnoreUnmatchedNulls`), driven by the static metadata in
//!   [`super::patch_meta`].
//!
//! Pure functions: no I/O. Nothing here panics on input; a malformed patch is
//! a [`PatchError`].
//!
//! Strategic merge patch, in short:
//! * objects merge key by key; `null` deletes a key;
//! * lists without a strategy are replaced; lists with `patchStrategy:merge`
//!   merge element by element on their merge key (primitive lists as sets);
//!   the result follows `$setElementOrder/<list>` when given; without it,
//!   the elements the patch names keep the patch's order and new ones land
//!   ahead of unmentioned stored ones (upstream's `normalizeElementOrder`);
//! * directives: `$patch: replace|delete|merge` on objects and in lists,
//!   `$setElementOrder/<list>`, `$deleteFromPrimitiveList/<list>`,
//!   `$retainKeys`. None of them is ever stored.
//!
//! Where this deliberately differs from upstream:
//! * `$patch: merge` is accepted (as the no-op it names) where upstream
//!   rejects it;
//! * a field the metadata does not describe is treated as upstream treats an
//!   unannotated field (objects merge, lists are replaced) rather than
//!   failing with "unable to find api field"; but when the client sent merge
//!   directives for such a list (`$setElementOrder/<list>` of single-key
//!   objects or primitives, or `{"<key>": …, "$patch": "delete"}` elements),
//!   the list is merged on the key those directives name instead of being
//!   replaced by a partial list;
//! * values new to the object are cleaned the same way as merged ones: nulls
//!   and directives are dropped and `$patch: replace` on a new object keeps
//!   its content (upstream drops the object);
//! * errors upstream reports as 500 (missing merge key, unknown `$patch`
//!   value, order mismatch) are 400 here.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::patch_meta::{FieldMeta, ListStrategy};
pub use super::patch_meta::{SchemaRef, schema_for_kind};

/// Kubernetes refuses JSON patches with more operations (413).
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;
/// Bytes a JSON patch may add by `copy` operations, as the apiserver's
/// default `--json-patch-max-copy-bytes` (3 MiB).
pub const MAX_JSON_PATCH_COPY_BYTES: usize = 3 * 1024 * 1024;
/// Nesting depth beyond which a strategic merge patch is refused rather
/// than recursed into.
const MAX_DEPTH: usize = 256;

const PATCH_DIRECTIVE: &str = "$patch";
const RETAIN_KEYS_DIRECTIVE: &str = "$retainKeys";
const SET_ELEMENT_ORDER_PREFIX: &str = "$setElementOrder";
const DELETE_FROM_PRIMITIVE_LIST_PREFIX: &str = "$deleteFromPrimitiveList";

/// A patch that could not be applied. [`PatchError::status_code`] gives the
/// HTTP status Kubernetes answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The JSON patch document is malformed (400).
    #[error("invalid JSON patch: {0}")]
    InvalidJsonPatch(String),
    /// More operations than Kubernetes accepts (413).
    #[error(
        "invalid JSON patch: the allowed maximum operations in a JSON patch is {max}, got {count}"
    )]
    TooManyOperations { count: usize, max: usize },
    /// A well-formed JSON patch operation failed against the object: a
    /// `test` that did not match, a path that does not exist (422).
    #[error("JSON patch operation {index} ({op} {path}) failed: {reason}")]
    JsonPatchFailed {
        index: usize,
        op: &'static str,
        path: String,
        reason: String,
    },
    /// The JSON merge patch document is malformed (400).
    #[error("invalid JSON merge patch: {0}")]
    InvalidMergePatch(String),
    /// The strategic merge patch is malformed (400). `path` is where in the
    /// object it went wrong, e.g. `spec.template.spec.containers[0]`.
    #[error("strategic merge patch{}: {message}", at(.path))]
    InvalidStrategicMergePatch { path: String, message: String },
    /// A well-formed strategic merge patch that cannot apply to this object,
    /// e.g. a list of lists, or a stored list whose elements lack the merge
    /// key (422).
    #[error("strategic merge patch cannot be applied{}: {message}", at(.path))]
    UnprocessableStrategicMergePatch { path: String, message: String },
}

fn at(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!(" at {path}")
    }
}

impl PatchError {
    /// The HTTP status Kubernetes answers with.
    pub fn status_code(&self) -> u16 {
        match self {
            PatchError::InvalidJsonPatch(_)
            | PatchError::InvalidMergePatch(_)
            | PatchError::InvalidStrategicMergePatch { .. } => 400,
            PatchError::TooManyOperations { .. } => 413,
            PatchError::JsonPatchFailed { .. }
            | PatchError::UnprocessableStrategicMergePatch { .. } => 422,
        }
    }

    /// The `Status` reason Kubernetes answers with.
    pub fn reason(&self) -> &'static str {
        match self.status_code() {
            400 => "BadRequest",
            413 => "RequestEntityTooLarge",
            _ => "Invalid",
        }
    }

    /// A malformed request (400, or 413 for an oversized JSON patch), as
    /// opposed to a patch that cannot apply to the object (422 Invalid).
    pub fn is_bad_request(&self) -> bool {
        self.status_code() != 422
    }
}

// ---------------------------------------------------------------------------
// JSON merge patch and JSON patch

/// Apply an RFC 7386 JSON merge patch. The patch must be an object (a
/// non-object patch would replace the whole resource).
pub fn apply_json_merge_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    if !patch.is_object() {
        return Err(PatchError::InvalidMergePatch(format!(
            "the patch must be a JSON object, got {}",
            type_name(patch)
        )));
    }
    let mut doc = target.clone();
    json_patch::merge(&mut doc, patch);
    Ok(doc)
}

/// Apply an RFC 6902 JSON patch (a list of operations), all or nothing.
pub fn apply_json_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    let Value::Array(raw_ops) = patch else {
        return Err(PatchError::InvalidJsonPatch(format!(
            "the patch must be a JSON array of operations, got {}",
            type_name(patch)
        )));
    };
    if raw_ops.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(PatchError::TooManyOperations {
            count: raw_ops.len(),
            max: MAX_JSON_PATCH_OPERATIONS,
        });
    }
    let mut ops = Vec::with_capacity(raw_ops.len());
    for (index, raw) in raw_ops.iter().enumerate() {
        let op = json_patch::PatchOperation::deserialize(raw)
            .map_err(|e| PatchError::InvalidJsonPatch(format!("operation {index}: {e}")))?;
        ops.push(op);
    }

    // Work on a copy: a failed patch leaves the target untouched, so the
    // crate's undo log is not needed.
    let mut doc = target.clone();
    let mut copied = 0usize;
    for (index, op) in ops.iter().enumerate() {
        let failed = |reason: String| PatchError::JsonPatchFailed {
            index,
            op: op_name(op),
            path: op.path().to_string(),
            reason,
        };
        if let json_patch::PatchOperation::Copy(copy) = op
            && let Some(source) = doc.pointer(copy.from.as_str())
        {
            copied = copied.saturating_add(encoded_len(source));
            if copied > MAX_JSON_PATCH_COPY_BYTES {
                return Err(failed(format!(
                    "copies add up to {copied} bytes, more than the limit of \
                     {MAX_JSON_PATCH_COPY_BYTES}"
                )));
            }
        }
        json_patch::patch_unsafe(&mut doc, std::slice::from_ref(op))
            .map_err(|e| failed(e.kind.to_string()))?;
    }
    Ok(doc)
}

fn op_name(op: &json_patch::PatchOperation) -> &'static str {
    use json_patch::PatchOperation as Op;
    match op {
        Op::Add(_) => "add",
        Op::Remove(_) => "remove",
        Op::Replace(_) => "replace",
        Op::Move(_) => "move",
        Op::Copy(_) => "copy",
        Op::Test(_) => "test",
    }
}

/// The length of `v` encoded as compact JSON, without allocating it.
fn encoded_len(v: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing a Value to a sink that never fails cannot fail; if it somehow
    // did, count what was written so far.
    let _ = serde_json::to_writer(&mut counter, v);
    counter.0
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

// ---------------------------------------------------------------------------
// Strategic merge patch

/// Apply a strategic merge patch to `target`, using `schema` (see
/// [`schema_for_kind`]) for list strategies. Both documents must be objects.
pub fn apply_strategic_merge_patch(
    target: &Value,
    patch: &Value,
    schema: SchemaRef,
) -> Result<Value, PatchError> {
    let root = Loc::ROOT;
    let Value::Object(patch) = patch else {
        return Err(root.invalid(format!(
            "the patch must be a JSON object, got {}",
            type_name(patch)
        )));
    };
    let Value::Object(target) = target else {
        return Err(root.unprocessable(format!(
            "the object must be a JSON object, got {}",
            type_name(target)
        )));
    };
    merge_map(target.clone(), patch, schema, &root).map(Value::Object)
}

/// Where in the document we are: for error messages and the depth bound.
#[derive(Clone, Copy)]
struct Loc<'a> {
    parent: Option<&'a Loc<'a>>,
    seg: Seg<'a>,
    depth: usize,
}

#[derive(Clone, Copy)]
enum Seg<'a> {
    Root,
    Field(&'a str),
    Index(usize),
}

impl<'a> Loc<'a> {
    const ROOT: Loc<'static> = Loc {
        parent: None,
        seg: Seg::Root,
        depth: 0,
    };

    fn field<'b>(&'b self, name: &'b str) -> Loc<'b> {
        Loc {
            parent: Some(self),
            seg: Seg::Field(name),
            depth: self.depth + 1,
        }
    }

    fn index(&self, i: usize) -> Loc<'_> {
        Loc {
            parent: Some(self),
            seg: Seg::Index(i),
            depth: self.depth + 1,
        }
    }

    fn render(&self) -> String {
        let mut segs = Vec::new();
        let mut cur = Some(self);
        while let Some(loc) = cur {
            segs.push(loc.seg);
            cur = loc.parent;
        }
        let mut out = String::new();
        for seg in segs.iter().rev() {
            match seg {
                Seg::Root => {}
                Seg::Field(f) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(f);
                }
                Seg::Index(i) => {
                    let _ = write!(out, "[{i}]");
                }
            }
        }
        out
    }

    fn invalid(&self, message: impl Into<String>) -> PatchError {
        PatchError::InvalidStrategicMergePatch {
            path: self.render(),
            message: message.into(),
        }
    }

    fn unprocessable(&self, message: impl Into<String>) -> PatchError {
        PatchError::UnprocessableStrategicMergePatch {
            path: self.render(),
            message: message.into(),
        }
    }

    fn check_depth(&self) -> Result<(), PatchError> {
        if self.depth > MAX_DEPTH {
            return Err(self.invalid(format!("nested more than {MAX_DEPTH} levels deep")));
        }
        Ok(())
    }
}

/// The list strategy in effect for one list, possibly inferred from the
/// directives the client sent (hence the borrowed key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Strategy<'p> {
    Replace,
    Set,
    Keyed(&'p str),
}

#[derive(Clone, Copy)]
struct ListMeta<'p> {
    strategy: Strategy<'p>,
    elem: SchemaRef,
}

/// `"$setElementOrder/containers"` with prefix `$setElementOrder` gives
/// `Some("containers")`; a key without the prefix gives `None`; a key with
/// the prefix but not of the form `prefix/field` is malformed.
fn directive_field<'k>(
    key: &'k str,
    prefix: &str,
    loc: &Loc<'_>,
) -> Result<Option<&'k str>, PatchError> {
    let Some(rest) = key.strip_prefix(prefix) else {
        return Ok(None);
    };
    match rest.strip_prefix('/') {
        Some(field) if !field.is_empty() => Ok(Some(field)),
        _ => Err(loc.invalid(format!(
            "malformed directive {key:?}: expected {prefix}/<field>"
        ))),
    }
}

fn is_directive_key(key: &str) -> bool {
    key == PATCH_DIRECTIVE
        || key == RETAIN_KEYS_DIRECTIVE
        || key.starts_with(SET_ELEMENT_ORDER_PREFIX)
        || key.starts_with(DELETE_FROM_PRIMITIVE_LIST_PREFIX)
}

/// The `$patch` directive of a patch object, if any.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Directive {
    Replace,
    Delete,
    Merge,
}

fn directive_of(m: &Map<String, Value>, loc: &Loc<'_>) -> Result<Option<Directive>, PatchError> {
    match m.get(PATCH_DIRECTIVE) {
        None => Ok(None),
        Some(Value::String(s)) if s == "replace" => Ok(Some(Directive::Replace)),
        Some(Value::String(s)) if s == "delete" => Ok(Some(Directive::Delete)),
        Some(Value::String(s)) if s == "merge" => Ok(Some(Directive::Merge)),
        Some(other) => Err(loc.invalid(format!(
            "unknown $patch directive {other}: expected \"replace\", \"delete\" or \"merge\""
        ))),
    }
}

/// Merge patch object `patch` into `original`.
fn merge_map(
    original: Map<String, Value>,
    patch: &Map<String, Value>,
    schema: SchemaRef,
    loc: &Loc<'_>,
) -> Result<Map<String, Value>, PatchError> {
    loc.check_depth()?;
    match directive_of(patch, loc)? {
        // The patch's content, cleaned of directives, replaces the object.
        Some(Directive::Replace) => merge_fields(Map::new(), patch, schema, loc),
        // As upstream: the object becomes empty (an absent one stays absent,
        // see `fresh_value`).
        Some(Directive::Delete) => Ok(Map::new()),
        Some(Directive::Merge) | None => merge_fields(original, patch, schema, loc),
    }
}

/// The body of `merge_map`, after the object's own `$patch` directive.
fn merge_fields(
    mut original: Map<String, Value>,
    patch: &Map<String, Value>,
    schema: SchemaRef,
    loc: &Loc<'_>,
) -> Result<Map<String, Value>, PatchError> {
    if let Some(retain) = patch.get(RETAIN_KEYS_DIRECTIVE) {
        apply_retain_keys(&mut original, patch, retain, loc)?;
    }

    // Lists with a $setElementOrder directive are merged and ordered first;
    // the main loop then skips them.
    let mut done: HashSet<&str> = HashSet::new();
    for (key, order) in patch {
        let Some(field) = directive_field(key, SET_ELEMENT_ORDER_PREFIX, loc)? else {
            continue;
        };
        done.insert(field);
        let floc = loc.field(field);
        if let Some(list) = merge_with_element_order(&original, patch, field, order, schema, &floc)?
        {
            original.insert(field.to_string(), Value::Array(list));
        }
    }

    for (key, patch_value) in patch {
        if key == PATCH_DIRECTIVE
            || key == RETAIN_KEYS_DIRECTIVE
            || key.starts_with(SET_ELEMENT_ORDER_PREFIX)
            || done.contains(key.as_str())
        {
            continue;
        }
        if let Some(field) = directive_field(key, DELETE_FROM_PRIMITIVE_LIST_PREFIX, loc)? {
            let floc = loc.field(field);
            let Value::Array(to_delete) = patch_value else {
                return Err(floc.invalid(format!("{key} must be a list")));
            };
            // Nothing to delete from an absent (or non-list) field.
            if let Some(Value::Array(current)) = original.get_mut(field) {
                *current = delete_from_primitive_list(std::mem::take(current), to_delete, &floc)?;
            }
            continue;
        }

        let floc = loc.field(key);
        if patch_value.is_null() {
            original.shift_remove(key);
            continue;
        }
        let meta = schema.field(key);
        match (original.get_mut(key), patch_value) {
            (Some(Value::Object(current)), Value::Object(patch_map)) => {
                *current = merge_map(std::mem::take(current), patch_map, meta.schema, &floc)?;
            }
            (Some(Value::Array(current)), Value::Array(patch_list)) => {
                let list_meta = resolve_list_meta(meta, None, patch_list, &floc)?;
                *current = merge_list(std::mem::take(current), patch_list, list_meta, &floc)?;
            }
            // Absent, null, a scalar, or a different type: the patch value,
            // cleaned, replaces it.
            _ => match fresh_value(patch_value, meta, &floc)? {
                Some(v) => {
                    original.insert(key.clone(), v);
                }
                None => {
                    original.shift_remove(key);
                }
            },
        }
    }
    Ok(original)
}

/// `$retainKeys`: drop every key of `original` the list does not name, after
/// checking that the patch sets no field outside the list.
fn apply_retain_keys(
    original: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    retain: &Value,
    loc: &Loc<'_>,
) -> Result<(), PatchError> {
    let malformed = || loc.invalid("$retainKeys must be a list of field names");
    let Value::Array(names) = retain else {
        return Err(malformed());
    };
    let mut keep = HashSet::with_capacity(names.len());
    for name in names {
        keep.insert(name.as_str().ok_or_else(malformed)?);
    }
    for (key, value) in patch {
        if !value.is_null() && !is_directive_key(key) && !keep.contains(key.as_str()) {
            return Err(loc.invalid(format!(
                "field {key:?} is set but not listed in $retainKeys"
            )));
        }
    }
    original.retain(|key, _| keep.contains(key.as_str()));
    Ok(())
}

/// A patch value for a field the object does not hold (or holds with a
/// different type): the value with nulls and directives removed. `None`
/// means the field ends up absent (`{"$patch": "delete"}`).
fn fresh_value(
    patch_value: &Value,
    meta: FieldMeta,
    loc: &Loc<'_>,
) -> Result<Option<Value>, PatchError> {
    match patch_value {
        Value::Object(m) => {
            if directive_of(m, loc)? == Some(Directive::Delete) {
                return Ok(None);
            }
            merge_map(Map::new(), m, meta.schema, loc).map(|m| Some(Value::Object(m)))
        }
        Value::Array(list) => clean_list(list, meta.schema, loc).map(|l| Some(Value::Array(l))),
        scalar => Ok(Some(scalar.clone())),
    }
}

/// A list taken from the patch as it is (replace strategy, or no stored
/// list): directive elements dropped, objects cleaned.
fn clean_list(list: &[Value], elem: SchemaRef, loc: &Loc<'_>) -> Result<Vec<Value>, PatchError> {
    loc.check_depth()?;
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        match item {
            Value::Object(m) => {
                let iloc = loc.index(i);
                match directive_of(m, &iloc)? {
                    Some(Directive::Delete | Directive::Replace) => {}
                    Some(Directive::Merge) | None => {
                        out.push(Value::Object(merge_map(Map::new(), m, elem, &iloc)?));
                    }
                }
            }
            other => out.push(other.clone()),
        }
    }
    Ok(out)
}

/// The strategy of a list field. A field the metadata describes uses its
/// metadata; for an undescribed one, the merge directives the client sent
/// name the merge key (a client only sends them for merge lists), else the
/// list is replaced.
fn resolve_list_meta<'p>(
    meta: FieldMeta,
    order: Option<&'p [Value]>,
    patch_list: &'p [Value],
    loc: &Loc<'_>,
) -> Result<ListMeta<'p>, PatchError> {
    let described = match meta.list {
        ListStrategy::Replace => Strategy::Replace,
        ListStrategy::MergeSet => Strategy::Set,
        ListStrategy::MergeByKey(key) => Strategy::Keyed(key),
    };
    if meta.described {
        return Ok(ListMeta {
            strategy: described,
            elem: meta.schema,
        });
    }
    if let Some(strategy) = order.and_then(infer_from_order) {
        return Ok(ListMeta {
            strategy,
            elem: SchemaRef::UNKNOWN,
        });
    }
    let mut inferred: Option<&'p str> = None;
    let mut has_delete = false;
    for item in patch_list {
        let Value::Object(m) = item else { continue };
        if m.get(PATCH_DIRECTIVE).and_then(Value::as_str) != Some("delete") {
            continue;
        }
        has_delete = true;
        let mut keys = m.keys().filter(|k| *k != PATCH_DIRECTIVE);
        match (keys.next(), keys.next()) {
            (Some(key), None) if inferred.is_none_or(|k| k == key) => inferred = Some(key),
            _ => {
                inferred = None;
                break;
            }
        }
    }
    match inferred {
        Some(key) => Ok(ListMeta {
            strategy: Strategy::Keyed(key),
            elem: SchemaRef::UNKNOWN,
        }),
        None if has_delete => {
            Err(loc
                .invalid("list has {\"$patch\": \"delete\"} elements but its merge key is unknown"))
        }
        None => Ok(ListMeta {
            strategy: Strategy::Replace,
            elem: SchemaRef::UNKNOWN,
        }),
    }
}

/// `$setElementOrder` entries of a merge list are either primitives or
/// objects holding only the merge key.
fn infer_from_order(order: &[Value]) -> Option<Strategy<'_>> {
    let first = order.first()?;
    match first {
        Value::Object(m) => {
            let (key, _) = m.iter().next()?;
            let single_key = |v: &Value| {
                v.as_object()
                    .is_some_and(|m| m.len() == 1 && m.contains_key(key.as_str()))
            };
            order
                .iter()
                .all(single_key)
                .then_some(Strategy::Keyed(key.as_str()))
        }
        Value::Array(_) => None,
        _ => order
            .iter()
            .all(|v| !v.is_object() && !v.is_array())
            .then_some(Strategy::Set),
    }
}

/// Merge list field `field` of `patch` (possibly absent) into `original`
/// and order the result by the `$setElementOrder/field` list `order`.
/// `None` leaves the field as it is.
fn merge_with_element_order(
    original: &Map<String, Value>,
    patch: &Map<String, Value>,
    field: &str,
    order: &Value,
    schema: SchemaRef,
    loc: &Loc<'_>,
) -> Result<Option<Vec<Value>>, PatchError> {
    let Value::Array(order) = order else {
        return Err(loc.invalid(format!("$setElementOrder/{field} must be a list")));
    };
    let patch_list: Option<&[Value]> = match patch.get(field) {
        None => None,
        Some(Value::Array(list)) => Some(list),
        Some(other) => {
            return Err(loc.invalid(format!(
                "{field} must be a list when $setElementOrder/{field} is given, got {}",
                type_name(other)
            )));
        }
    };
    let live: Option<&[Value]> = match original.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) => Some(list),
        Some(other) => {
            return Err(loc.unprocessable(format!(
                "$setElementOrder/{field} orders a list, but the object holds {}",
                type_name(other)
            )));
        }
    };
    let meta = resolve_list_meta(
        schema.field(field),
        Some(order),
        patch_list.unwrap_or(&[]),
        loc,
    )?;
    let key = match meta.strategy {
        // Order only means something for merge lists.
        Strategy::Replace => {
            return patch_list
                .map(|list| clean_list(list, meta.elem, loc))
                .transpose();
        }
        Strategy::Set => None,
        Strategy::Keyed(key) => Some(key),
    };
    if let Some(list) = patch_list {
        validate_against_order(list, order, key, loc)?;
    }
    let merged = match (live, patch_list) {
        (None, None) => return Ok(None),
        (Some(live), None) => live.to_vec(),
        (None, Some(list)) => clean_list(list, meta.elem, loc)?,
        (Some(live), Some(list)) => merge_list(live.to_vec(), list, meta, loc)?,
    };
    let order_pos = positions(order, key).map_err(|i| {
        loc.invalid(format!(
            "$setElementOrder/{field}[{i}] {}",
            missing_key_message(key)
        ))
    })?;
    let server_pos = positions(live.unwrap_or(&[]), key).map_err(|i| {
        loc.index(i)
            .unprocessable(format!("stored element {}", missing_key_message(key)))
    })?;
    order_items(merged, &order_pos, &server_pos, key, loc).map(Some)
}

fn missing_key_message(key: Option<&str>) -> String {
    match key {
        Some(key) => format!("has no merge key {key:?} holding a string, number or boolean"),
        None => "is not a string, number or boolean".to_string(),
    }
}

/// Upstream's `validatePatchWithSetOrderList`: the patch's elements (other
/// than directive elements) appear in `order`, in the same relative order.
fn validate_against_order(
    patch_list: &[Value],
    order: &[Value],
    key: Option<&str>,
    loc: &Loc<'_>,
) -> Result<(), PatchError> {
    if patch_list.is_empty() || order.is_empty() {
        return Ok(());
    }
    let mut remaining = order.iter().enumerate();
    for (i, item) in patch_list.iter().enumerate() {
        if item
            .as_object()
            .is_some_and(|m| m.contains_key(PATCH_DIRECTIVE))
        {
            continue;
        }
        let want = ident(item, key).ok_or_else(|| {
            loc.index(i)
                .invalid(format!("list element {}", missing_key_message(key)))
        })?;
        loop {
            let Some((j, entry)) = remaining.next() else {
                return Err(loc.invalid(
                    "the order of the patch list does not match its $setElementOrder list",
                ));
            };
            let got = ident(entry, key).ok_or_else(|| {
                loc.invalid(format!(
                    "$setElementOrder entry {j} {}",
                    missing_key_message(key)
                ))
            })?;
            if got == want {
                break;
            }
        }
    }
    Ok(())
}

/// Merge a patch list into a stored list of the same field.
fn merge_list(
    original: Vec<Value>,
    patch: &[Value],
    meta: ListMeta<'_>,
    loc: &Loc<'_>,
) -> Result<Vec<Value>, PatchError> {
    loc.check_depth()?;
    let key = match meta.strategy {
        Strategy::Replace => return clean_list(patch, meta.elem, loc),
        Strategy::Set => None,
        Strategy::Keyed(key) => Some(key),
    };
    match element_kind(&original, patch, loc)? {
        None => Ok(original),
        Some(ElementKind::Scalar) => merge_set(original, patch, loc),
        Some(ElementKind::Object) => match key {
            Some(key) => merge_keyed(original, patch, key, meta.elem, loc),
            None => Err(loc.invalid("a list of objects cannot be merged without a merge key")),
        },
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ElementKind {
    Object,
    Scalar,
}

/// Upstream's `sliceElementType`: all elements of both lists have one type;
/// lists of lists are not supported. `None` when both are empty.
fn element_kind(
    original: &[Value],
    patch: &[Value],
    loc: &Loc<'_>,
) -> Result<Option<ElementKind>, PatchError> {
    let mut first: Option<&Value> = None;
    for item in original.iter().chain(patch) {
        if item.is_array() {
            return Err(loc.unprocessable("lists of lists are not supported"));
        }
        match first {
            None => first = Some(item),
            Some(f) if std::mem::discriminant(f) == std::mem::discriminant(item) => {}
            Some(f) => {
                return Err(loc.invalid(format!(
                    "list elements are not all of one type: {} and {}",
                    type_name(f),
                    type_name(item)
                )));
            }
        }
    }
    Ok(first.map(|f| {
        if f.is_object() {
            ElementKind::Object
        } else {
            ElementKind::Scalar
        }
    }))
}

/// A list element's identity: the primitive itself, or the value of the
/// merge key. Only primitives identify (upstream compares with Go's `==`).
fn ident(item: &Value, key: Option<&str>) -> Option<String> {
    let v = match key {
        None => item,
        Some(key) => item.as_object()?.get(key)?,
    };
    match v {
        Value::Object(_) | Value::Array(_) => None,
        scalar => Some(scalar.to_string()),
    }
}

/// Identity → first position in `list`; `Err(i)` for an element without one.
fn positions(list: &[Value], key: Option<&str>) -> Result<HashMap<String, usize>, usize> {
    let mut out = HashMap::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        out.entry(ident(item, key).ok_or(i)?).or_insert(i);
    }
    Ok(out)
}

/// Upstream's `normalizeElementOrder`: elements named by the patch (or the
/// order list) come in that order; the others ("server-only") keep their
/// stored order and are slotted in before the first patch element that the
/// stored list has after them.
fn order_items(
    items: Vec<Value>,
    patch_pos: &HashMap<String, usize>,
    server_pos: &HashMap<String, usize>,
    key: Option<&str>,
    loc: &Loc<'_>,
) -> Result<Vec<Value>, PatchError> {
    let mut from_patch: Vec<(usize, Option<usize>, Value)> = Vec::new();
    let mut server_only: Vec<(Option<usize>, Value)> = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let id = ident(&item, key).ok_or_else(|| {
            loc.index(i)
                .invalid(format!("list element {}", missing_key_message(key)))
        })?;
        let in_server = server_pos.get(&id).copied();
        match patch_pos.get(&id) {
            Some(&p) => from_patch.push((p, in_server, item)),
            None => server_only.push((in_server, item)),
        }
    }
    from_patch.sort_by_key(|(p, _, _)| *p);
    server_only.sort_by_key(|(s, _)| s.unwrap_or(usize::MAX));

    let mut out = Vec::with_capacity(from_patch.len() + server_only.len());
    let mut left = server_only.into_iter().peekable();
    let mut right = from_patch.into_iter().peekable();
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (Some((Some(l), _)), Some((_, Some(r), _))) => l < r,
            (Some(_), Some(_)) => false,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        if take_left {
            out.extend(left.next().map(|(_, v)| v));
        } else {
            out.extend(right.next().map(|(_, _, v)| v));
        }
    }
    Ok(out)
}

/// A merge list of primitives: the union, without duplicates.
fn merge_set(
    original: Vec<Value>,
    patch: &[Value],
    loc: &Loc<'_>,
) -> Result<Vec<Value>, PatchError> {
    let bad = |i: usize| {
        loc.index(i)
            .invalid("list element is not a string, number or boolean")
    };
    let server_pos = positions(&original, None).map_err(bad)?;
    let patch_pos = positions(patch, None).map_err(bad)?;
    let mut seen = HashSet::new();
    let merged: Vec<Value> = original
        .into_iter()
        .chain(patch.iter().cloned())
        .filter(|v| ident(v, None).is_some_and(|id| seen.insert(id)))
        .collect();
    order_items(merged, &patch_pos, &server_pos, None, loc)
}

/// `$deleteFromPrimitiveList/<field>`: drop every occurrence of the listed
/// values, whatever the field's strategy.
fn delete_from_primitive_list(
    original: Vec<Value>,
    to_delete: &[Value],
    loc: &Loc<'_>,
) -> Result<Vec<Value>, PatchError> {
    if original.is_empty() && to_delete.is_empty() {
        return Ok(original);
    }
    if element_kind(&original, to_delete, loc)? == Some(ElementKind::Object) {
        return Err(loc.invalid("$deleteFromPrimitiveList applies only to lists of primitives"));
    }
    let doomed: HashSet<String> = to_delete.iter().filter_map(|v| ident(v, None)).collect();
    Ok(original
        .into_iter()
        .filter(|v| ident(v, None).is_none_or(|id| !doomed.contains(&id)))
        .collect())
}

/// A merge list of objects, matched on `key`.
fn merge_keyed(
    mut original: Vec<Value>,
    patch: &[Value],
    key: &str,
    elem: SchemaRef,
    loc: &Loc<'_>,
) -> Result<Vec<Value>, PatchError> {
    // Directive elements first (upstream's mergeSliceWithSpecialElements).
    let mut replace = false;
    let mut doomed: HashSet<String> = HashSet::new();
    let mut plain: Vec<(usize, &Map<String, Value>)> = Vec::with_capacity(patch.len());
    for (i, item) in patch.iter().enumerate() {
        let iloc = loc.index(i);
        let Value::Object(m) = item else {
            return Err(iloc.invalid("list element is not an object"));
        };
        match directive_of(m, &iloc)? {
            None | Some(Directive::Merge) => plain.push((i, m)),
            Some(Directive::Replace) => replace = true,
            Some(Directive::Delete) => {
                let id = ident(item, Some(key)).ok_or_else(|| {
                    iloc.invalid(format!(
                        "$patch: delete element {}",
                        missing_key_message(Some(key))
                    ))
                })?;
                doomed.insert(id);
            }
        }
    }
    if replace {
        // The list becomes the patch's other elements.
        return plain
            .into_iter()
            .map(|(i, m)| merge_map(Map::new(), m, elem, &loc.index(i)).map(Value::Object))
            .collect();
    }
    if !doomed.is_empty() {
        original.retain(|item| ident(item, Some(key)).is_none_or(|id| !doomed.contains(&id)));
    }

    let server_pos = positions(&original, Some(key)).map_err(|i| {
        loc.index(i)
            .unprocessable(format!("stored element {}", missing_key_message(Some(key))))
    })?;
    let mut lookup = server_pos.clone();
    let mut patch_pos: HashMap<String, usize> = HashMap::with_capacity(plain.len());
    for (n, (i, m)) in plain.into_iter().enumerate() {
        let iloc = loc.index(i);
        let id = ident(&patch[i], Some(key)).ok_or_else(|| {
            iloc.invalid(format!("list element {}", missing_key_message(Some(key))))
        })?;
        patch_pos.entry(id.clone()).or_insert(n);
        match lookup.get(&id).and_then(|&pos| original.get_mut(pos)) {
            Some(Value::Object(current)) => {
                *current = merge_map(std::mem::take(current), m, elem, &iloc)?;
            }
            Some(_) => return Err(iloc.unprocessable("stored list element is not an object")),
            None => {
                lookup.insert(id, original.len());
                original.push(Value::Object(merge_map(Map::new(), m, elem, &iloc)?));
            }
        }
    }
    order_items(original, &patch_pos, &server_pos, Some(key), loc)
}

#[cfg(test)]
mod tests {
    use super::super::patch_meta::{FieldDesc, TypeDesc};
    use super::*;
    use serde_json::json;

    fn deployment() -> SchemaRef {
        schema_for_kind("apps", "Deployment")
    }

    fn smp(target: Value, patch: Value, schema: SchemaRef) -> Value {
        match apply_strategic_merge_patch(&target, &patch, schema) {
            Ok(v) => v,
            Err(e) => panic!("patch {patch} failed: {e}"),
        }
    }

    fn smp_err(target: Value, patch: Value, schema: SchemaRef) -> PatchError {
        match apply_strategic_merge_patch(&target, &patch, schema) {
            Ok(v) => panic!("patch {patch} should fail, gave {v}"),
            Err(e) => e,
        }
    }

    /// A test type in the image of upstream's MergeItem.
    static MERGE_ITEM: TypeDesc = TypeDesc {
        name: "MergeItem",
        fields: &[
            FieldDesc::keyed("mergingList", "name", Some(&MERGE_ITEM)),
            FieldDesc::atomic("nonMergingList"),
            FieldDesc::set("mergingIntList"),
            FieldDesc::atomic("nonMergingIntList"),
            FieldDesc::object_retain_keys("retainKeysMap", &MERGE_ITEM),
            FieldDesc::keyed_retain_keys("retainKeysMergingList", "name", Some(&MERGE_ITEM)),
        ],
    };

    fn item() -> SchemaRef {
        SchemaRef::new(&MERGE_ITEM)
    }

    fn deployment_doc() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "web",
                "namespace": "default",
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"old\":true}"},
                "finalizers": ["a.example.com/x", "b.example.com/y"],
            },
            "spec": {
                "replicas": 2,
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
                },
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [{
                            "name": "web",
                            "image": "busybox:1",
                            "env": [{"name": "A", "value": "1"}],
                            "ports": [{"containerPort": 80, "protocol": "TCP"}],
                        }],
                        "tolerations": [{"key": "k1", "operator": "Exists"}],
                    },
                },
            },
        })
    }

    // --- kubectl apply shapes -------------------------------------------

    #[test]
    fn kubectl_apply_changes_image_and_adds_env() {
        let patch = json!({
            "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"new\":true}"}},
            "spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "web"}],
                "containers": [{
                    "$setElementOrder/env": [{"name": "A"}, {"name": "B"}],
                    "env": [{"name": "B", "value": "2"}],
                    "image": "busybox:2",
                    "name": "web",
                }],
            }}},
        });
        let mut want = deployment_doc();
        want["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] =
            json!("{\"new\":true}");
        want["spec"]["template"]["spec"]["containers"] = json!([{
            "name": "web",
            "image": "busybox:2",
            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
            "ports": [{"containerPort": 80, "protocol": "TCP"}],
        }]);
        assert_eq!(smp(deployment_doc(), patch, deployment()), want);
    }

    #[test]
    fn kubectl_apply_adds_container_in_set_element_order_position() {
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "web"}],
            "containers": [{"name": "sidecar", "image": "envoy:1"}],
        }}}});
        let got = smp(deployment_doc(), patch, deployment());
        assert_eq!(
            got["spec"]["template"]["spec"]["containers"],
            json!([
                {"name": "sidecar", "image": "envoy:1"},
                {
                    "name": "web",
                    "image": "busybox:1",
                    "env": [{"name": "A", "value": "1"}],
                    "ports": [{"containerPort": 80, "protocol": "TCP"}],
                },
            ])
        );
    }

    #[test]
    fn delete_container_with_patch_delete() {
        let target = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "a"},
            {"name": "sidecar", "image": "b"},
        ]}}}});
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "web"}],
            "containers": [{"$patch": "delete", "name": "sidecar"}],
        }}}});
        assert_eq!(
            smp(target, patch, deployment()),
            json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "a"}]}}}})
        );
    }

    #[test]
    fn remove_env_var_by_delete_and_value_by_null() {
        let target = json!({"spec": {"template": {"spec": {"containers": [{
            "name": "web",
            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}, {"name": "C", "value": "3"}],
        }]}}}});
        let patch = json!({"spec": {"template": {"spec": {"containers": [{
            "name": "web",
            "$setElementOrder/env": [{"name": "A"}, {"name": "C"}],
            "env": [{"$patch": "delete", "name": "B"}, {"name": "C", "value": null}],
        }]}}}});
        assert_eq!(
            smp(target, patch, deployment()),
            json!({"spec": {"template": {"spec": {"containers": [{
                "name": "web",
                "env": [{"name": "A", "value": "1"}, {"name": "C"}],
            }]}}}})
        );
    }

    #[test]
    fn null_removes_a_whole_list() {
        let target = json!({"spec": {"template": {"spec": {"containers": [{
            "name": "web", "env": [{"name": "A", "value": "1"}],
        }]}}}});
        let patch =
            json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "env": null}]}}}});
        assert_eq!(
            smp(target, patch, deployment()),
            json!({"spec": {"template": {"spec": {"containers": [{"name": "web"}]}}}})
        );
    }

    #[test]
    fn patch_replace_on_a_list() {
        let target = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a"},
            {"name": "b", "image": "b"},
        ]}}}});
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"$patch": "replace"},
            {"name": "c", "image": "c", "env": [{"name": "X", "value": null}]},
        ]}}}});
        assert_eq!(
            smp(target, patch, deployment()),
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "c", "image": "c", "env": [{"name": "X"}]},
            ]}}}})
        );
    }

    #[test]
    fn patch_replace_with_no_other_element_empties_the_list() {
        let target = json!({"mergingList": [{"name": "1"}, {"name": "2"}]});
        let patch = json!({"mergingList": [{"$patch": "replace"}]});
        assert_eq!(smp(target, patch, item()), json!({"mergingList": []}));
    }

    #[test]
    fn patch_replace_and_delete_on_maps() {
        let target =
            json!({"spec": {"selector": {"matchLabels": {"a": "1", "b": "2"}}, "replicas": 1}});
        let patch = json!({"spec": {"selector": {"matchLabels": {"$patch": "replace", "c": "3"}}}});
        assert_eq!(
            smp(target.clone(), patch, deployment()),
            json!({"spec": {"selector": {"matchLabels": {"c": "3"}}, "replicas": 1}})
        );
        // As upstream: "$patch: delete" empties a stored map and leaves an
        // absent one absent.
        let patch =
            json!({"spec": {"selector": {"$patch": "delete"}, "paused": {"$patch": "delete"}}});
        assert_eq!(
            smp(target.clone(), patch, deployment()),
            json!({"spec": {"selector": {}, "replicas": 1}})
        );
        let patch = json!({"$patch": "replace", "spec": {"replicas": 3}});
        assert_eq!(
            smp(target, patch, deployment()),
            json!({"spec": {"replicas": 3}})
        );
    }

    #[test]
    fn patch_merge_directive_is_the_default() {
        let target = json!({"metadata": {"labels": {"a": "1"}}});
        let patch = json!({"metadata": {"labels": {"$patch": "merge", "b": "2"}}});
        assert_eq!(
            smp(target, patch, deployment()),
            json!({"metadata": {"labels": {"a": "1", "b": "2"}}})
        );
    }

    #[test]
    fn delete_from_primitive_list_finalizers() {
        let patch = json!({"metadata": {
            "$deleteFromPrimitiveList/finalizers": ["a.example.com/x"],
            "$setElementOrder/finalizers": ["b.example.com/y"],
        }});
        let got = smp(deployment_doc(), patch, deployment());
        assert_eq!(got["metadata"]["finalizers"], json!(["b.example.com/y"]));
        let mut want = deployment_doc();
        want["metadata"]["finalizers"] = json!(["b.example.com/y"]);
        assert_eq!(got, want);
    }

    #[test]
    fn finalizers_merge_as_a_set() {
        let target = json!({"metadata": {"finalizers": ["a", "b"]}});
        let patch = json!({"metadata": {"finalizers": ["b", "c"]}});
        assert_eq!(
            smp(target, patch, deployment()),
            json!({"metadata": {"finalizers": ["a", "b", "c"]}})
        );
    }

    #[test]
    fn retain_keys_switches_rolling_update_to_recreate() {
        let patch = json!({"spec": {"strategy": {
            "$retainKeys": ["type"],
            "type": "Recreate",
        }}});
        let got = smp(deployment_doc(), patch, deployment());
        assert_eq!(got["spec"]["strategy"], json!({"type": "Recreate"}));
        let mut want = deployment_doc();
        want["spec"]["strategy"] = json!({"type": "Recreate"});
        assert_eq!(got, want);
    }

    #[test]
    fn retain_keys_rejects_fields_it_does_not_list() {
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {}}}});
        let err = smp_err(deployment_doc(), patch, deployment());
        assert_eq!(
            err,
            PatchError::InvalidStrategicMergePatch {
                path: "spec.strategy".into(),
                message: "field \"rollingUpdate\" is set but not listed in $retainKeys".into(),
            }
        );
        assert!(err.is_bad_request());
    }

    #[test]
    fn atomic_list_is_replaced() {
        let patch = json!({"spec": {"template": {"spec": {"tolerations": [{"key": "k2", "operator": "Exists"}]}}}});
        let got = smp(deployment_doc(), patch, deployment());
        assert_eq!(
            got["spec"]["template"]["spec"]["tolerations"],
            json!([{"key": "k2", "operator": "Exists"}])
        );
    }

    #[test]
    fn unknown_fields_fall_back_to_merge_maps_replace_lists() {
        let target = json!({"spec": {"custom": {"keep": 1, "list": [1, 2], "objs": [{"name": "a", "v": 1}]}}});
        let patch = json!({"spec": {"custom": {"list": [3], "objs": [{"name": "b"}], "added": {"x": null, "y": 2}}}});
        assert_eq!(
            smp(target, patch, deployment()),
            json!({"spec": {"custom": {"keep": 1, "list": [3], "objs": [{"name": "b"}], "added": {"y": 2}}}})
        );
    }

    #[test]
    fn unknown_kind_schema_merges_maps_and_replaces_lists() {
        let target = json!({"spec": {"a": [1, 2], "m": {"x": 1}}});
        let patch = json!({"spec": {"a": [3], "m": {"y": 2}}});
        assert_eq!(
            smp(target, patch, SchemaRef::UNKNOWN),
            json!({"spec": {"a": [3], "m": {"x": 1, "y": 2}}})
        );
    }

    #[test]
    fn undescribed_list_with_merge_directives_merges_on_the_named_key() {
        // Container.resources.claims is not described; a client that sends
        // $setElementOrder for it believes it is a merge list.
        let target = json!({"spec": {"x": {"items": [{"id": "a", "v": 1}, {"id": "b", "v": 2}]}}});
        let patch = json!({"spec": {"x": {
            "$setElementOrder/items": [{"id": "b"}, {"id": "a"}],
            "items": [{"id": "a", "v": 3}],
        }}});
        assert_eq!(
            smp(target.clone(), patch, deployment()),
            json!({"spec": {"x": {"items": [{"id": "b", "v": 2}, {"id": "a", "v": 3}]}}})
        );
        let patch = json!({"spec": {"x": {"items": [{"id": "a", "$patch": "delete"}]}}});
        assert_eq!(
            smp(target.clone(), patch, deployment()),
            json!({"spec": {"x": {"items": [{"id": "b", "v": 2}]}}})
        );
        let patch =
            json!({"spec": {"x": {"items": [{"id": "a", "other": 1, "$patch": "delete"}]}}});
        let err = smp_err(target, patch, deployment());
        assert!(err.is_bad_request(), "{err}");
    }

    #[test]
    fn merge_key_list_absent_from_target() {
        let target = json!({"spec": {"template": {"spec": {"containers": [{"name": "web"}]}}}});
        let patch = json!({"spec": {"template": {"spec": {"containers": [{
            "name": "web",
            "$setElementOrder/env": [{"name": "A"}],
            "env": [{"name": "A", "value": "1"}],
            "volumeMounts": [{"mountPath": "/data", "name": "data"}, {"mountPath": "/x", "$patch": "delete"}],
        }]}}}});
        assert_eq!(
            smp(target, patch, deployment()),
            json!({"spec": {"template": {"spec": {"containers": [{
                "name": "web",
                "env": [{"name": "A", "value": "1"}],
                "volumeMounts": [{"mountPath": "/data", "name": "data"}],
            }]}}}})
        );
    }

    #[test]
    fn new_subtrees_are_cleaned_of_directives_and_nulls() {
        let patch = json!({"spec": {"template": {"spec": {"initContainers": [{
            "name": "init",
            "$setElementOrder/env": [{"name": "A"}],
            "env": [{"name": "A", "value": "1", "valueFrom": null}],
            "securityContext": {"$retainKeys": ["runAsUser"], "runAsUser": 0},
        }]}}}});
        let got = smp(json!({"spec": {}}), patch, deployment());
        assert_eq!(
            got,
            json!({"spec": {"template": {"spec": {"initContainers": [{
                "name": "init",
                "env": [{"name": "A", "value": "1"}],
                "securityContext": {"runAsUser": 0},
            }]}}}})
        );
    }

    #[test]
    fn service_ports_merge_by_port_and_node_podcidrs_as_set() {
        let svc = json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}});
        let patch = json!({"spec": {"ports": [{"port": 443, "targetPort": 8443}]}});
        assert_eq!(
            smp(svc, patch, schema_for_kind("", "Service")),
            json!({"spec": {"ports": [
                {"port": 80, "name": "http"},
                {"port": 443, "name": "https", "targetPort": 8443},
            ]}})
        );
        let node = json!({"spec": {"podCIDRs": ["10.0.0.0/24"], "taints": [{"key": "a", "effect": "NoSchedule"}]}});
        let patch = json!({"spec": {"podCIDRs": ["fd00::/64"], "taints": [{"key": "b", "effect": "NoSchedule"}]}});
        assert_eq!(
            smp(node, patch, schema_for_kind("", "Node")),
            json!({"spec": {
                "podCIDRs": ["fd00::/64", "10.0.0.0/24"],
                "taints": [{"key": "b", "effect": "NoSchedule"}],
            }})
        );
    }

    #[test]
    fn pod_status_conditions_merge_by_type() {
        let pod = json!({"status": {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "False"},
        ], "containerStatuses": [{"name": "a", "ready": false}]}});
        let patch = json!({"status": {
            "$setElementOrder/conditions": [{"type": "PodScheduled"}, {"type": "Ready"}, {"type": "Initialized"}],
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "Initialized", "status": "True"}],
            "containerStatuses": [{"name": "a", "ready": true}],
            "phase": "Running",
        }});
        assert_eq!(
            smp(pod, patch, schema_for_kind("", "Pod")),
            json!({"status": {"phase": "Running", "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "True"},
                {"type": "Initialized", "status": "True"},
            ], "containerStatuses": [{"name": "a", "ready": true}]}})
        );
    }

    // --- upstream semantics (cases after strategicpatch's patch_test.go) ---

    #[test]
    fn upstream_table() {
        let cases: Vec<(&str, Value, Value, Value)> = vec![
            (
                "unique scalars when merging lists",
                json!({"mergingIntList": [1, 2]}),
                json!({"mergingIntList": [2, 3]}),
                json!({"mergingIntList": [1, 2, 3]}),
            ),
            (
                "delete all duplicate entries in a merging list",
                json!({"mergingList": [{"name": "1"}, {"name": "1"}, {"name": "2", "value": "a"}, {"name": "3"}, {"name": "3"}]}),
                json!({"mergingList": [{"name": "1", "$patch": "delete"}, {"name": "3", "$patch": "delete"}]}),
                json!({"mergingList": [{"name": "2", "value": "a"}]}),
            ),
            (
                "merge empty merging lists",
                json!({"mergingList": []}),
                json!({"mergingList": []}),
                json!({"mergingList": []}),
            ),
            (
                "an empty patch list leaves a merging list alone",
                json!({"mergingList": [{"name": "1"}]}),
                json!({"mergingList": []}),
                json!({"mergingList": [{"name": "1"}]}),
            ),
            (
                "preserve the order from the patch in a merging list",
                json!({"mergingList": [{"name": "1"}, {"name": "2", "value": "b"}, {"name": "3"}]}),
                json!({"mergingList": [{"name": "3", "value": "c"}, {"name": "1", "value": "a"}, {"name": "2", "other": "x"}]}),
                json!({"mergingList": [{"name": "3", "value": "c"}, {"name": "1", "value": "a"}, {"name": "2", "value": "b", "other": "x"}]}),
            ),
            (
                "preserve the order from the patch in a merging list 2",
                json!({"mergingList": [{"name": "1"}, {"name": "2", "value": "b"}, {"name": "3"}]}),
                json!({"mergingList": [{"name": "3", "value": "c"}, {"name": "1", "value": "a"}]}),
                json!({"mergingList": [{"name": "2", "value": "b"}, {"name": "3", "value": "c"}, {"name": "1", "value": "a"}]}),
            ),
            (
                "a new element without $setElementOrder goes before the stored ones",
                json!({"mergingList": [{"name": "1"}, {"name": "2"}]}),
                json!({"mergingList": [{"name": "3"}]}),
                json!({"mergingList": [{"name": "3"}, {"name": "1"}, {"name": "2"}]}),
            ),
            (
                "set elements order in a list with server-only items",
                json!({"mergingList": [{"name": "1", "other": "a"}, {"name": "3"}, {"name": "4"}, {"name": "2"}, {"name": "9"}]}),
                json!({"$setElementOrder/mergingList": [{"name": "4"}, {"name": "2"}, {"name": "3"}, {"name": "1"}]}),
                json!({"mergingList": [{"name": "4"}, {"name": "2"}, {"name": "3"}, {"name": "1", "other": "a"}, {"name": "9"}]}),
            ),
            (
                "add an item in a list and preserve order",
                json!({"mergingList": [{"name": "1", "other": "a"}, {"name": "2", "value": "2"}]}),
                json!({"$setElementOrder/mergingList": [{"name": "3"}, {"name": "1"}, {"name": "2"}], "mergingList": [{"name": "3", "value": "3"}]}),
                json!({"mergingList": [{"name": "3", "value": "3"}, {"name": "1", "other": "a"}, {"name": "2", "value": "2"}]}),
            ),
            (
                "set elements order in a list with server-only items 2",
                json!({"mergingList": [{"name": "1", "other": "a"}, {"name": "2", "value": "2"}, {"name": "9"}, {"name": "3", "value": "3"}, {"name": "4", "value": "4"}]}),
                json!({"$setElementOrder/mergingList": [{"name": "2"}, {"name": "1"}, {"name": "4"}, {"name": "3"}]}),
                json!({"mergingList": [{"name": "2", "value": "2"}, {"name": "1", "other": "a"}, {"name": "9"}, {"name": "4", "value": "4"}, {"name": "3", "value": "3"}]}),
            ),
            (
                "set elements order in a list with server-only items 3",
                json!({"mergingList": [{"name": "1"}, {"name": "2"}, {"name": "7"}, {"name": "9"}, {"name": "8"}, {"name": "3"}, {"name": "4"}]}),
                json!({"$setElementOrder/mergingList": [{"name": "2"}, {"name": "1"}, {"name": "4"}, {"name": "3"}]}),
                json!({"mergingList": [{"name": "2"}, {"name": "1"}, {"name": "7"}, {"name": "9"}, {"name": "8"}, {"name": "4"}, {"name": "3"}]}),
            ),
            (
                "set element order for a merging list with duplicates",
                json!({"mergingList": [{"name": "1"}, {"name": "2", "value": "dup1"}, {"name": "3"}, {"name": "2", "value": "dup2"}, {"name": "4"}]}),
                json!({"$setElementOrder/mergingList": [{"name": "2"}, {"name": "1"}, {"name": "4"}, {"name": "3"}, {"name": "2"}]}),
                json!({"mergingList": [{"name": "2", "value": "dup1"}, {"name": "2", "value": "dup2"}, {"name": "1"}, {"name": "4"}, {"name": "3"}]}),
            ),
            (
                "$setElementOrder contains an item not in the list",
                json!({"mergingList": [{"name": "1"}, {"name": "3"}]}),
                json!({"$setElementOrder/mergingList": [{"name": "3"}, {"name": "2"}, {"name": "1"}], "mergingList": [{"name": "3", "value": "3"}, {"name": "1", "value": "1"}]}),
                json!({"mergingList": [{"name": "3", "value": "3"}, {"name": "1", "value": "1"}]}),
            ),
            (
                "set elements order in an int list",
                json!({"mergingIntList": [1, 2, 3]}),
                json!({"$setElementOrder/mergingIntList": [3, 1, 2]}),
                json!({"mergingIntList": [3, 1, 2]}),
            ),
            (
                "$deleteFromPrimitiveList of a value not in the list",
                json!({"mergingIntList": [1, 2]}),
                json!({"$deleteFromPrimitiveList/mergingIntList": [3]}),
                json!({"mergingIntList": [1, 2]}),
            ),
            (
                "$deleteFromPrimitiveList on an absent list does not add it",
                json!({}),
                json!({"$deleteFromPrimitiveList/mergingIntList": [3]}),
                json!({}),
            ),
            (
                "$deleteFromPrimitiveList on a list without merge strategy",
                json!({"nonMergingIntList": [1, 2, 2]}),
                json!({"$deleteFromPrimitiveList/nonMergingIntList": [2]}),
                json!({"nonMergingIntList": [1]}),
            ),
            (
                "add key and delete all keys from map",
                json!({"name": "1", "value": "1"}),
                json!({"other": "a", "$patch": "replace"}),
                json!({"other": "a"}),
            ),
            (
                "retainKeys map can delete a field when no retainKeys directive present",
                json!({"retainKeysMap": {"name": "foo", "value": "a"}}),
                json!({"retainKeysMap": {"value": null}}),
                json!({"retainKeysMap": {"name": "foo"}}),
            ),
            (
                "retainKeys map clears fields not retained",
                json!({"retainKeysMap": {"name": "foo", "value": "a", "other": "b"}}),
                json!({"retainKeysMap": {"$retainKeys": ["name", "value"], "value": "c"}}),
                json!({"retainKeysMap": {"name": "foo", "value": "c"}}),
            ),
            (
                "retainKeys in merging list elements",
                json!({"retainKeysMergingList": [{"name": "foo", "value": "a", "other": "b"}, {"name": "bar"}]}),
                json!({"retainKeysMergingList": [{"name": "foo", "$retainKeys": ["name", "other"]}]}),
                json!({"retainKeysMergingList": [{"name": "foo", "other": "b"}, {"name": "bar"}]}),
            ),
            (
                "nested merging list in a merging list",
                json!({"mergingList": [{"name": "1", "mergingList": [{"name": "a", "value": "1"}]}]}),
                json!({"mergingList": [{"name": "1", "mergingList": [{"name": "b", "value": "2"}]}]}),
                json!({"mergingList": [{"name": "1", "mergingList": [{"name": "b", "value": "2"}, {"name": "a", "value": "1"}]}]}),
            ),
            (
                "non-merging list is replaced",
                json!({"nonMergingList": [{"name": "1"}, {"name": "2"}]}),
                json!({"nonMergingList": [{"name": "3"}]}),
                json!({"nonMergingList": [{"name": "3"}]}),
            ),
            (
                "type change takes the patch value",
                json!({"mergingList": "oops"}),
                json!({"mergingList": [{"name": "1", "value": null}]}),
                json!({"mergingList": [{"name": "1"}]}),
            ),
        ];
        for (name, target, patch, want) in cases {
            let got = apply_strategic_merge_patch(&target, &patch, item());
            assert_eq!(got, Ok(want), "{name}");
        }
    }

    #[test]
    fn upstream_error_table() {
        let cases: Vec<(&str, Value, Value, u16, &str)> = vec![
            (
                "order in $setElementOrder and patch list must match",
                json!({"mergingList": [{"name": "1"}, {"name": "3"}, {"name": "2"}]}),
                json!({"$setElementOrder/mergingList": [{"name": "1"}, {"name": "2"}, {"name": "3"}], "mergingList": [{"name": "3", "value": "3"}, {"name": "1", "value": "1"}]}),
                400,
                "strategic merge patch at mergingList: the order of the patch list does not match its $setElementOrder list",
            ),
            (
                "missing merge key",
                json!({"mergingList": [{"name": "1", "value": "a"}]}),
                json!({"mergingList": [{"value": "b"}]}),
                400,
                "strategic merge patch at mergingList[0]: list element has no merge key \"name\" holding a string, number or boolean",
            ),
            (
                "unknown $patch value",
                json!({"mergingList": [{"name": "1"}]}),
                json!({"mergingList": [{"name": "1", "$patch": "explode"}]}),
                400,
                "strategic merge patch at mergingList[0]: unknown $patch directive \"explode\": expected \"replace\", \"delete\" or \"merge\"",
            ),
            (
                "lists of lists",
                json!({"mergingIntList": [[1]]}),
                json!({"mergingIntList": [[2]]}),
                422,
                "strategic merge patch cannot be applied at mergingIntList: lists of lists are not supported",
            ),
            (
                "malformed $setElementOrder key",
                json!({}),
                json!({"$setElementOrder": []}),
                400,
                "strategic merge patch: malformed directive \"$setElementOrder\": expected $setElementOrder/<field>",
            ),
            (
                "$setElementOrder must be a list",
                json!({}),
                json!({"$setElementOrder/mergingList": {"name": "1"}}),
                400,
                "strategic merge patch at mergingList: $setElementOrder/mergingList must be a list",
            ),
            (
                "$deleteFromPrimitiveList must be a list",
                json!({"mergingIntList": [1]}),
                json!({"$deleteFromPrimitiveList/mergingIntList": 1}),
                400,
                "strategic merge patch at mergingIntList: $deleteFromPrimitiveList/mergingIntList must be a list",
            ),
            (
                "$retainKeys must be a list of names",
                json!({}),
                json!({"retainKeysMap": {"$retainKeys": "name"}}),
                400,
                "strategic merge patch at retainKeysMap: $retainKeys must be a list of field names",
            ),
            (
                "mixed element types",
                json!({"mergingIntList": [1]}),
                json!({"mergingIntList": ["a"]}),
                400,
                "strategic merge patch at mergingIntList: list elements are not all of one type: a number and a string",
            ),
            (
                "stored element lacking the merge key",
                json!({"mergingList": [{"value": "x"}]}),
                json!({"mergingList": [{"name": "1"}]}),
                422,
                "strategic merge patch cannot be applied at mergingList[0]: stored element has no merge key \"name\" holding a string, number or boolean",
            ),
            (
                "patch is not an object",
                json!({}),
                json!([1]),
                400,
                "strategic merge patch: the patch must be a JSON object, got a list",
            ),
        ];
        for (name, target, patch, status, message) in cases {
            let err = smp_err(target, patch, item());
            assert_eq!(
                (err.status_code(), err.to_string().as_str()),
                (status, message),
                "{name}"
            );
        }
    }

    #[test]
    fn directives_never_leak_into_results() {
        fn has_directive(v: &Value) -> bool {
            match v {
                Value::Object(m) => m
                    .iter()
                    .any(|(k, v)| is_directive_key(k) || has_directive(v)),
                Value::Array(l) => l.iter().any(has_directive),
                _ => false,
            }
        }
        let patches = [
            json!({"mergingList": [{"name": "9", "$setElementOrder/mergingList": [{"name": "x"}], "mergingList": [{"name": "x", "$retainKeys": ["name"]}]}]}),
            json!({"nonMergingList": [{"name": "1", "$patch": "merge", "mergingIntList": [1]}, {"$patch": "delete", "name": "2"}]}),
            json!({"retainKeysMap": {"$patch": "replace", "mergingList": [{"$patch": "replace"}, {"name": "q"}]}}),
            json!({"simple": {"$patch": "merge", "$deleteFromPrimitiveList/x": [1], "y": {"$retainKeys": []}}}),
        ];
        for patch in patches {
            let got = smp(
                json!({"mergingList": [{"name": "1"}]}),
                patch.clone(),
                item(),
            );
            assert!(!has_directive(&got), "{patch} gave {got}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let mut patch = json!(1);
        for _ in 0..(MAX_DEPTH + 10) {
            patch = json!({"a": patch});
        }
        let err = smp_err(json!({}), patch, SchemaRef::UNKNOWN);
        assert!(err.is_bad_request(), "{err}");
    }

    // --- JSON merge patch and JSON patch ---------------------------------

    #[test]
    fn json_merge_patch_basics() {
        let target =
            json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"ports": [1, 2]}});
        let patch = json!({"metadata": {"labels": {"a": null, "c": "3"}}, "spec": {"ports": [3]}});
        assert_eq!(
            apply_json_merge_patch(&target, &patch),
            Ok(json!({"metadata": {"labels": {"b": "2", "c": "3"}}, "spec": {"ports": [3]}}))
        );
        let err = apply_json_merge_patch(&target, &json!([1])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid JSON merge patch: the patch must be a JSON object, got a list"
        );
        assert_eq!(err.status_code(), 400);
    }

    #[test]
    fn json_patch_basics() {
        let target = json!({"spec": {"replicas": 1, "list": ["a"]}});
        let patch = json!([
            {"op": "test", "path": "/spec/replicas", "value": 1},
            {"op": "replace", "path": "/spec/replicas", "value": 3},
            {"op": "add", "path": "/spec/list/-", "value": "b"},
            {"op": "copy", "from": "/spec/list", "path": "/spec/copy"},
            {"op": "remove", "path": "/spec/list/0"},
        ]);
        assert_eq!(
            apply_json_patch(&target, &patch),
            Ok(json!({"spec": {"replicas": 3, "list": ["b"], "copy": ["a", "b"]}}))
        );
    }

    #[test]
    fn json_patch_failing_test_op_is_unprocessable() {
        let target = json!({"spec": {"replicas": 1}});
        let patch = json!([
            {"op": "replace", "path": "/spec/replicas", "value": 3},
            {"op": "test", "path": "/spec/replicas", "value": 1},
        ]);
        let err = apply_json_patch(&target, &patch).unwrap_err();
        assert_eq!(
            err,
            PatchError::JsonPatchFailed {
                index: 1,
                op: "test",
                path: "/spec/replicas".into(),
                reason: "value did not match".into(),
            }
        );
        assert_eq!(
            (err.status_code(), err.reason(), err.is_bad_request()),
            (422, "Invalid", false)
        );
    }

    #[test]
    fn json_patch_missing_path_is_unprocessable() {
        let target = json!({"spec": {}});
        for (op, path) in [
            (
                json!({"op": "remove", "path": "/spec/missing"}),
                "/spec/missing",
            ),
            (
                json!({"op": "replace", "path": "/spec/missing", "value": 1}),
                "/spec/missing",
            ),
            (
                json!({"op": "add", "path": "/nope/deeper", "value": 1}),
                "/nope/deeper",
            ),
        ] {
            let err = apply_json_patch(&target, &json!([op])).unwrap_err();
            match &err {
                PatchError::JsonPatchFailed {
                    index: 0, path: p, ..
                } if p == path => {}
                other => panic!("{op}: unexpected {other:?}"),
            }
            assert_eq!(err.status_code(), 422);
        }
    }

    #[test]
    fn json_patch_malformed_is_bad_request() {
        let target = json!({});
        for patch in [
            json!({"op": "add"}),
            json!([{"op": "frobnicate", "path": "/a"}]),
            json!([{"op": "add", "path": "no-slash", "value": 1}]),
            json!([{"op": "add", "value": 1}]),
        ] {
            let err = apply_json_patch(&target, &patch).unwrap_err();
            assert!(
                matches!(err, PatchError::InvalidJsonPatch(_)),
                "{patch}: {err:?}"
            );
            assert_eq!(err.status_code(), 400);
        }
        let many = Value::Array(vec![
            json!({"op": "test", "path": "", "value": {}});
            MAX_JSON_PATCH_OPERATIONS + 1
        ]);
        assert_eq!(
            apply_json_patch(&target, &many).unwrap_err().status_code(),
            413
        );
    }

    #[test]
    fn json_patch_copy_amplification_is_bounded() {
        let target = json!({"a": "x".repeat(1024 * 1024)});
        let patch = json!([
            {"op": "copy", "from": "/a", "path": "/b"},
            {"op": "copy", "from": "/a", "path": "/c"},
            {"op": "copy", "from": "/a", "path": "/d"},
        ]);
        let err = apply_json_patch(&target, &patch).unwrap_err();
        assert!(
            matches!(
                err,
                PatchError::JsonPatchFailed {
                    index: 2,
                    op: "copy",
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
