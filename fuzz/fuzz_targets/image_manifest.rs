//! What a registry or an image archive hands the node before any layer is
//! unpacked: manifests and indexes, image configs, `docker save`'s
//! `manifest.json`, and the image references pod specs name.
//!
//! Input: one byte choosing the parser, then the document.

#![no_main]

use keelson_images::docker;
use keelson_images::manifest::{self, Manifest};
use keelson_images::reference::ImageRef;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, doc)) = data.split_first() else {
        return;
    };
    match which % 5 {
        0 => {
            if let Ok(Manifest::Index { manifests }) = Manifest::parse(doc) {
                let _ = manifest::select_platform(&manifests, "linux", manifest::host_arch());
                for (_, p) in manifests.iter() {
                    if let Some(p) = p {
                        let chosen = manifest::select_platform(&manifests, &p.os, &p.architecture)
                            .expect("an entry of this platform exists");
                        assert!(manifests.iter().any(|(d, _)| d == chosen));
                    }
                }
            }
        }
        1 => {
            let _ = manifest::parse_config(doc);
        }
        2 => {
            if let Ok(images) = docker::parse_manifest(doc) {
                for image in &images {
                    for path in std::iter::once(&image.config).chain(&image.layers) {
                        let p = keelson_images::archive::archive_path(path)
                            .expect("parse_manifest checked it");
                        assert!(p.is_relative(), "{path:?}");
                        let _ = docker::digest_in_name(path);
                    }
                    for tag in &image.repo_tags {
                        let _ = ImageRef::parse(tag);
                    }
                }
            }
        }
        3 => {
            let text = keelson_fuzz::text(doc);
            if let Ok(r) = ImageRef::parse(&text) {
                // The canonical form (the store's index key) parses back to
                // the same reference.
                let shown = r.to_string();
                assert_eq!(
                    ImageRef::parse(&shown).as_ref(),
                    Ok(&r),
                    "{text:?} -> {shown:?}"
                );
                let _ = r.is_insecure(&["registry.local:5000".to_string(), "10.0.0.1".into()]);
            }
        }
        _ => {
            let (media_type, head) = match doc.iter().position(|&b| b == 0) {
                Some(i) => (keelson_fuzz::text(&doc[..i]), &doc[i + 1..]),
                None => (String::new(), doc),
            };
            let _ = manifest::layer_compression(&media_type, head);
        }
    }
});
