//! PATCH bodies: JSON patch, JSON merge patch and strategic merge patch
//! applied to an object, then the patched object through the server's
//! admission checks (as `Registry::patch` does).
//!
//! Input: one byte (low two bits: the patch type; the rest: the kind whose
//! strategic-merge metadata is used), then the object JSON, a NUL, and the
//! patch JSON.

#![no_main]

use keelson_control_plane::api::patch;
use keelson_control_plane::api::resources;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Kinds with strategic-merge metadata, and one without (ConfigMap).
const KINDS: &[(&str, &str)] = &[
    ("", "Pod"),
    ("apps", "Deployment"),
    ("", "Service"),
    ("", "Node"),
    ("", "ConfigMap"),
    ("apps", "StatefulSet"),
    ("batch", "Job"),
    ("", "Endpoints"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Some(parts) = keelson_fuzz::fields(rest, 2) else {
        return;
    };
    let (Ok(target), Ok(p)) = (
        serde_json::from_slice::<Value>(parts[0]),
        serde_json::from_slice::<Value>(parts[1]),
    ) else {
        return;
    };
    let (group, kind) = KINDS[usize::from(which >> 2) % KINDS.len()];
    let result = match which & 3 {
        0 => patch::apply_json_patch(&target, &p),
        1 => {
            let once = patch::apply_json_merge_patch(&target, &p);
            if let Ok(once) = &once {
                // RFC 7386: a merge patch applied twice is applied once.
                let twice = patch::apply_json_merge_patch(once, &p).expect("applied once");
                assert_eq!(&twice, once, "merge patch is not idempotent");
            }
            once
        }
        _ => patch::apply_strategic_merge_patch(&target, &p, patch::schema_for_kind(group, kind)),
    };
    match result {
        Ok(patched) => {
            let rt = resources::find_kind(group, kind).expect("a built-in kind");
            let _ = keelson_fuzz::admit(rt, patched);
        }
        Err(e) => {
            // Every failure maps to the status the server answers with.
            assert!(matches!(e.status_code(), 400 | 413 | 422), "{e}");
            let _ = e.reason();
        }
    }
});
