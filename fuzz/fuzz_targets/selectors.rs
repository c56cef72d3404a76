//! Label and field selectors as `?labelSelector=` and `?fieldSelector=`
//! carry them, `LabelSelector` objects (`matchLabels`, `matchExpressions`),
//! and their matching against an object.
//!
//! Input: the label selector, a NUL, the field selector, a NUL, then a JSON
//! document used both as a `LabelSelector` object and as the object matched.

#![no_main]

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use keelson_control_plane::api::selectors::{FieldSelector, LabelSelector, field_value};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some(parts) = keelson_fuzz::fields(data, 3) else {
        return;
    };
    let labels = keelson_fuzz::text(parts[0]);
    let fields = keelson_fuzz::text(parts[1]);
    let obj: Value = serde_json::from_slice(parts[2]).unwrap_or(Value::Null);

    if let Ok(sel) = LabelSelector::parse(&labels) {
        // The query-string form it prints is one that parses back to it.
        let shown = sel.to_string();
        assert_eq!(
            LabelSelector::parse(&shown).as_ref(),
            Ok(&sel),
            "{labels:?} printed as {shown:?}"
        );
        let _ = sel.matches_object(&obj);
    }
    if let Ok(sel) = FieldSelector::parse(&fields) {
        let _ = sel.matches_object(&obj);
        for f in sel.fields() {
            let _ = field_value(&obj, f);
            let _ = sel.required_value(f);
        }
    }
    if let Ok(sel) = LabelSelector::from_object(&obj) {
        let _ = sel.matches_object(&obj);
        // The typed form, where the document is a valid one, selects the same.
        if let Ok(typed) = serde_json::from_value::<meta::LabelSelector>(obj.clone())
            && let Ok(from_api) = LabelSelector::from_api(&typed)
        {
            let mut a: Vec<String> = sel.0.iter().map(|r| format!("{r:?}")).collect();
            let mut b: Vec<String> = from_api.0.iter().map(|r| format!("{r:?}")).collect();
            a.sort();
            b.sort();
            assert_eq!(a, b, "from_object and from_api differ on {obj}");
        }
    }
});
