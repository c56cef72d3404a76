//! Request bodies: the media types the API server reads (JSON and the three
//! patch types, YAML, Kubernetes protobuf) decoded into the one JSON form the
//! rest of the API works on. Pure: bytes in, a value or a 400/415 out.
//!
//! The HTTP layer takes the media type from `Content-Type` and calls
//! [`decode`]; the fuzz target `api_decode` calls it with hostile bodies.

use serde_json::Value;

use super::errors::{ApiError, ApiResult};
use super::protobuf::{self, ProtoError};

/// The media type of a `Content-Type` value: parameters dropped, lower case
/// (`application/json; charset=utf-8` -> `application/json`).
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// Decodes a request body of media type `media_type` (as [`media_type`]
/// returns it). An empty body, a malformed one or one of a media type the
/// server does not read is an error, never a panic.
pub fn decode(media_type: &str, body: &[u8]) -> ApiResult<Value> {
    if body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty"));
    }
    match media_type {
        "application/json"
        | "application/json-patch+json"
        | "application/merge-patch+json"
        | "application/strategic-merge-patch+json"
        | ""
        | "*/*" => serde_json::from_slice::<Value>(body).map_err(|e| {
            ApiError::bad_request(format!("error decoding request body as JSON: {e}"))
        }),
        "application/yaml" | "application/x-yaml" | "text/yaml" => {
            let text = std::str::from_utf8(body)
                .map_err(|_| ApiError::bad_request("the YAML body is not UTF-8"))?;
            decode_yaml(text)
        }
        protobuf::CONTENT_TYPE => protobuf::decode_object(body).map_err(|e| match e {
            ProtoError::Unsupported { .. }
            | ProtoError::UnsupportedEncoding { .. }
            | ProtoError::UnsupportedContentType { .. } => {
                let mut err = ApiError::unsupported_media_type(protobuf::CONTENT_TYPE);
                err.message = e.to_string();
                err
            }
            other => {
                ApiError::bad_request(format!("error decoding protobuf request body: {other}"))
            }
        }),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

/// A YAML body as JSON, with what it may expand to bounded by its size:
/// aliases may not make it more than about twice as many nodes, or twice
/// as many scalar bytes, as its text holds (a "billion laughs" document is
/// refused before it is built, not after).
pub fn decode_yaml(text: &str) -> ApiResult<Value> {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = 1000 + text.len() / 2;
    budget.max_total_scalar_bytes = 4096 + text.len() * 2;
    budget.max_recorded_anchor_bytes = 4096 + text.len() * 2;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    serde_saphyr::from_str_with_options::<Value>(text, options)
        .map_err(|e| ApiError::bad_request(format!("error decoding request body as YAML: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_bodies_may_not_expand_past_their_size() {
        let doc = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, labels: &l {x: z}}\ndata: {k: v}\nextra: *l\n";
        let v = decode_yaml(doc).unwrap();
        assert_eq!(v["extra"]["x"], "z", "a small alias is fine");
        let mut bomb = String::from("a0: &a0 [x,x,x,x,x,x,x,x,x]\n");
        for i in 1..9 {
            let refs = vec![format!("*a{}", i - 1); 9].join(",");
            bomb.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let e = decode_yaml(&bomb).unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.message.contains("budget"), "{}", e.message);
        // A large plain document is still read whole.
        let big: String = (0..20_000).map(|i| format!("k{i}: v{i}\n")).collect();
        assert_eq!(
            decode_yaml(&big).unwrap().as_object().unwrap().len(),
            20_000
        );
    }

    #[test]
    fn media_types_choose_the_decoder() {
        assert_eq!(
            media_type("Application/JSON; charset=utf-8"),
            "application/json"
        );
        let v = decode("application/json", br#"{"kind":"Pod"}"#).unwrap();
        assert_eq!(v["kind"], "Pod");
        let v = decode("application/yaml", b"kind: Pod\n").unwrap();
        assert_eq!(v["kind"], "Pod");
        assert_eq!(decode("application/json", b"").unwrap_err().code, 400);
        assert_eq!(decode("application/yaml", b"\xff").unwrap_err().code, 400);
        assert_eq!(
            decode(protobuf::CONTENT_TYPE, b"k8s").unwrap_err().code,
            400
        );
        assert_eq!(
            decode("application/apply-patch+yaml", b"kind: Pod")
                .unwrap_err()
                .code,
            415
        );
        assert_eq!(decode("text/plain", b"x").unwrap_err().code, 415);
    }
}
