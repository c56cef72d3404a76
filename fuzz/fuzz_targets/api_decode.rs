//! API request bodies: JSON, YAML and Kubernetes protobuf, decoded as the
//! server decodes them (`api::body::decode`), then what a create does with
//! the object before the store: type metadata, names, defaults, the typed
//! round trip and validation.
//!
//! Input: one byte choosing the media type, then the body.

#![no_main]

use keelson_control_plane::api::body;
use keelson_control_plane::api::defaults;
use libfuzzer_sys::fuzz_target;

const MEDIA_TYPES: &[&str] = &[
    "application/json",
    "application/yaml",
    "application/vnd.kubernetes.protobuf",
];

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let media_type = MEDIA_TYPES[usize::from(which) % MEDIA_TYPES.len()];
    let Ok(obj) = body::decode(media_type, bytes) else {
        return;
    };
    let rt = keelson_fuzz::resource_type(&obj);
    if let Some(admitted) = keelson_fuzz::admit(rt, obj) {
        // Defaulting an admitted object again changes nothing: what the
        // server stores is a fixed point of its own defaults.
        let mut again = admitted.clone();
        defaults::apply(rt, &mut again);
        assert_eq!(
            again, admitted,
            "defaults are not idempotent for {}",
            rt.kind
        );
    }
});
