//! Kubernetes-shaped errors: every failure the API returns is a `Status`
//! object with the HTTP code, a machine-readable reason and details.

use serde_json::{Value, json};

use crate::store::StoreError;

/// A `Status` failure. The details name the object concerned.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    details: Box<Details>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Details {
    pub group: String,
    pub kind: String,
    pub name: String,
    /// Field-level causes (for Invalid).
    pub causes: Vec<Cause>,
    /// Seconds a client should wait before retrying.
    pub retry_after: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cause {
    pub reason: &'static str,
    pub message: String,
    pub field: String,
}

impl Cause {
    pub fn new(reason: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Cause {
            reason,
            message: message.into(),
            field: field.into(),
        }
    }
    pub fn required(field: impl Into<String>) -> Self {
        Cause::new("FieldValueRequired", field, "Required value")
    }
    pub fn invalid(field: impl Into<String>, value: &str, detail: impl std::fmt::Display) -> Self {
        Cause::new(
            "FieldValueInvalid",
            field,
            format!("Invalid value: \"{value}\": {detail}"),
        )
    }
    /// Invalid, for a value of any JSON type (printed as [`field_value`]).
    pub fn invalid_value(
        field: impl Into<String>,
        value: &Value,
        detail: impl std::fmt::Display,
    ) -> Self {
        Cause::new(
            "FieldValueInvalid",
            field,
            format!("Invalid value: {}: {detail}", field_value(value)),
        )
    }
    /// A value of the wrong type (apimachinery's `field.TypeInvalid`).
    pub fn type_invalid(
        field: impl Into<String>,
        value: &Value,
        detail: impl std::fmt::Display,
    ) -> Self {
        Cause::new(
            "FieldValueTypeInvalid",
            field,
            format!("Invalid value: {}: {detail}", field_value(value)),
        )
    }
    /// A value outside an enumeration (`field.NotSupported`).
    pub fn not_supported(field: impl Into<String>, value: &Value, allowed: &[String]) -> Self {
        let quoted: Vec<String> = allowed
            .iter()
            .map(|a| Value::String(a.clone()).to_string())
            .collect();
        let mut message = format!("Unsupported value: {}", field_value(value));
        if !quoted.is_empty() {
            message.push_str(&format!(": supported values: {}", quoted.join(", ")));
        }
        Cause::new("FieldValueNotSupported", field, message)
    }
    /// A string longer than `max` bytes (`field.TooLong`).
    pub fn too_long(field: impl Into<String>, max: u64) -> Self {
        let unit = if max == 1 { "byte" } else { "bytes" };
        Cause::new(
            "FieldValueTooLong",
            field,
            format!("Too long: may not be more than {max} {unit}"),
        )
    }
    /// A list with more than `max` items (`field.TooMany`).
    pub fn too_many(field: impl Into<String>, actual: usize, max: u64) -> Self {
        let unit = if max == 1 { "item" } else { "items" };
        Cause::new(
            "FieldValueTooMany",
            field,
            format!("Too many: {actual}: must have at most {max} {unit}"),
        )
    }
    pub fn forbidden(field: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        Cause::new("FieldValueForbidden", field, format!("Forbidden: {detail}"))
    }
}

/// A value as apimachinery's field errors print it: strings quoted,
/// numbers and booleans bare, anything else as JSON.
pub fn field_value(v: &Value) -> String {
    v.to_string()
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: Box::default(),
        }
    }

    pub fn details(&self) -> &Details {
        &self.details
    }

    pub fn retry_after(&self) -> Option<u32> {
        self.details.retry_after
    }

    pub fn with_object(mut self, group: &str, kind: &str, name: &str) -> Self {
        self.details.group = group.to_string();
        self.details.kind = kind.to_string();
        self.details.name = name.to_string();
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }
    pub fn unauthorized() -> Self {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(403, "Forbidden", message)
    }
    /// `resource` is the plural ("pods", "deployments.apps").
    pub fn not_found(resource: &str, name: &str) -> Self {
        let mut e = ApiError::new(404, "NotFound", format!("{resource} \"{name}\" not found"));
        e.details.kind = resource.to_string();
        e.details.name = name.to_string();
        e
    }
    pub fn path_not_found(path: &str) -> Self {
        ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    }
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        ApiError::new(405, "MethodNotAllowed", message)
    }
    pub fn not_acceptable(message: impl Into<String>) -> Self {
        ApiError::new(406, "NotAcceptable", message)
    }
    pub fn already_exists(resource: &str, name: &str) -> Self {
        let mut e = ApiError::new(
            409,
            "AlreadyExists",
            format!("{resource} \"{name}\" already exists"),
        );
        e.details.kind = resource.to_string();
        e.details.name = name.to_string();
        e
    }
    pub fn conflict(resource: &str, name: &str, detail: impl std::fmt::Display) -> Self {
        let mut e = ApiError::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {resource} \"{name}\": {detail}"),
        );
        e.details.kind = resource.to_string();
        e.details.name = name.to_string();
        e
    }
    pub fn gone(message: impl Into<String>) -> Self {
        ApiError::new(410, "Expired", message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        ApiError::new(413, "RequestEntityTooLarge", message)
    }
    pub fn unsupported_media_type(content_type: &str) -> Self {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {content_type:?})"
            ),
        )
    }
    /// 422 Invalid: `kind "name" is invalid: causes`.
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> Self {
        let detail = causes
            .iter()
            .map(|c| {
                if c.field.is_empty() {
                    c.message.clone()
                } else {
                    format!("{}: {}", c.field, c.message)
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let qualified = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let mut e = ApiError::new(
            422,
            "Invalid",
            format!("{qualified} \"{name}\" is invalid: {detail}"),
        );
        e.details.group = group.to_string();
        e.details.kind = kind.to_string();
        e.details.name = name.to_string();
        e.details.causes = causes;
        e
    }
    /// 404 with a message of the caller's (e.g. relayed from a node).
    pub fn not_found_message(message: impl Into<String>) -> Self {
        ApiError::new(404, "NotFound", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(500, "InternalError", message)
    }
    pub fn timeout(message: impl Into<String>) -> Self {
        let mut e = ApiError::new(504, "Timeout", message);
        e.details.retry_after = Some(1);
        e
    }
    /// 429 TooManyRequests, with no `Retry-After`.
    pub fn too_many_requests(message: impl Into<String>) -> Self {
        ApiError::new(429, "TooManyRequests", message)
    }
    /// kube-apiserver's `NewTimeoutError(message, 0)`: 504 Timeout,
    /// "Timeout: {message}", with no `Retry-After`.
    pub fn timeout_no_retry(message: &str) -> Self {
        ApiError::new(504, "Timeout", format!("Timeout: {message}"))
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut e = ApiError::new(503, "ServiceUnavailable", message);
        e.details.retry_after = Some(1);
        e
    }

    /// The `Status` object for this error.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        let d = &self.details;
        let mut details = serde_json::Map::new();
        if !d.name.is_empty() {
            details.insert("name".into(), d.name.clone().into());
        }
        if !d.group.is_empty() {
            details.insert("group".into(), d.group.clone().into());
        }
        if !d.kind.is_empty() {
            details.insert("kind".into(), d.kind.clone().into());
        }
        if !d.causes.is_empty() {
            details.insert(
                "causes".into(),
                d.causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect(),
            );
        }
        if let Some(s) = d.retry_after {
            details.insert("retryAfterSeconds".into(), s.into());
        }
        if !details.is_empty() {
            status["details"] = Value::Object(details);
        }
        if self.reason == "BadRequest" || self.reason == "Unauthorized" {
            // Kubernetes omits the reason for plain bad requests; keep the shape close.
            if self.reason == "Unauthorized" {
                status["reason"] = "Unauthorized".into();
            }
        }
        status
    }
}

/// Map a storage failure that the caller did not handle itself.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Compacted {
                requested,
                compacted,
            } => ApiError::gone(format!(
                "too old resource version: {requested} ({compacted})"
            )),
            StoreError::FutureRevision { requested, current } => ApiError::timeout(format!(
                "Too large resource version: {requested}, current: {current}"
            )),
            other => ApiError::internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_status_carries_causes() {
        let e = ApiError::invalid(
            "apps",
            "Deployment",
            "web",
            vec![Cause::required("spec.selector")],
        );
        let s = e.to_status();
        assert_eq!(s["code"], 422);
        assert_eq!(s["reason"], "Invalid");
        assert_eq!(
            s["message"],
            "Deployment.apps \"web\" is invalid: spec.selector: Required value"
        );
        assert_eq!(s["details"]["causes"][0]["field"], "spec.selector");
        assert_eq!(s["details"]["kind"], "Deployment");
    }

    #[test]
    fn not_found_shape() {
        let s = ApiError::not_found("pods", "x").to_status();
        assert_eq!(s["message"], "pods \"x\" not found");
        assert_eq!(s["details"]["name"], "x");
        assert_eq!(s["code"], 404);
    }
}
