//! Manifests, indexes and image configs: parsing, platform selection and the
//! container-facing config fields. Pure: bytes in, values out.

use serde::Deserialize;

use crate::ImageConfig;
use crate::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// What `Accept` lists when fetching a manifest.
pub const ACCEPTED: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

/// A manifest document: an image manifest or an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
    Index {
        manifests: Vec<(Descriptor, Option<Platform>)>,
    },
}

/// An index entry's platform.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: i64,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<RawDescriptor>,
    #[serde(default)]
    layers: Option<Vec<RawDescriptor>>,
    #[serde(default)]
    manifests: Option<Vec<RawDescriptor>>,
}

fn descriptor(d: RawDescriptor) -> Result<(Descriptor, Option<Platform>), String> {
    let digest = Digest::parse(&d.digest)?;
    let size = u64::try_from(d.size).map_err(|_| format!("{digest}: negative size"))?;
    Ok((
        Descriptor {
            media_type: d.media_type,
            digest,
            size,
        },
        d.platform,
    ))
}

impl Manifest {
    /// Parses a manifest or index.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        let raw: RawManifest =
            serde_json::from_slice(bytes).map_err(|e| format!("parse manifest: {e}"))?;
        if raw.schema_version != 2 {
            return Err(format!(
                "unsupported manifest schemaVersion {} (need 2)",
                raw.schema_version
            ));
        }
        if let Some(mt) = &raw.media_type
            && !ACCEPTED.contains(&mt.as_str())
        {
            return Err(format!("unsupported manifest media type {mt}"));
        }
        if let Some(ms) = raw.manifests {
            let manifests = ms.into_iter().map(descriptor).collect::<Result<_, _>>()?;
            return Ok(Manifest::Index { manifests });
        }
        match (raw.config, raw.layers) {
            (Some(c), layers) => Ok(Manifest::Image {
                config: descriptor(c)?.0,
                layers: layers
                    .unwrap_or_default()
                    .into_iter()
                    .map(|l| descriptor(l).map(|d| d.0))
                    .collect::<Result<_, _>>()?,
            }),
            (None, _) => Err("manifest has neither config nor manifests".to_string()),
        }
    }
}

/// The GOARCH name of this machine's architecture.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Picks the index entry for `os`/`arch`: an exact match, preferring one
/// without a variant (or `v8` for arm64). `None` if nothing fits.
pub fn select_platform<'a>(
    manifests: &'a [(Descriptor, Option<Platform>)],
    os: &str,
    arch: &str,
) -> Option<&'a Descriptor> {
    let mut best: Option<(&Descriptor, u8)> = None;
    for (d, p) in manifests {
        let Some(p) = p else { continue };
        if p.os != os || p.architecture != arch {
            continue;
        }
        let score = match p.variant.as_deref() {
            None | Some("") => 2,
            Some("v8") if arch == "arm64" => 2,
            Some(_) => 1,
        };
        if best.is_none_or(|(_, s)| score > s) {
            best = Some((d, score));
        }
    }
    best.map(|(d, _)| d)
}

/// How to decompress a layer: from its media type, else from its first bytes.
pub fn layer_compression(media_type: &str, head: &[u8]) -> Result<Compression, String> {
    if media_type.ends_with("+zstd") || media_type.ends_with(".zstd") {
        return Err(format!(
            "layer media type {media_type}: zstd is not supported"
        ));
    }
    if head.starts_with(&[0x1f, 0x8b]) {
        return Ok(Compression::Gzip);
    }
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err("layer is zstd-compressed: not supported".to_string());
    }
    if media_type.ends_with("+gzip") || media_type.ends_with(".gzip") {
        return Err(format!("layer media type {media_type} but no gzip header"));
    }
    Ok(Compression::None)
}

/// The parts of an image config that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedConfig {
    pub config: ImageConfig,
    pub os: String,
    pub architecture: String,
    /// rootfs.diff_ids: the digests of the uncompressed layers.
    pub diff_ids: Vec<Digest>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawContainerConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Deserialize)]
struct RawRootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    config: Option<RawContainerConfig>,
    rootfs: RawRootfs,
}

/// Parses an image config blob.
pub fn parse_config(bytes: &[u8]) -> Result<ParsedConfig, String> {
    let raw: RawConfig =
        serde_json::from_slice(bytes).map_err(|e| format!("parse image config: {e}"))?;
    let c = raw.config.unwrap_or_default();
    let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
    Ok(ParsedConfig {
        config: ImageConfig {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: non_empty(c.working_dir),
            user: non_empty(c.user),
        },
        os: raw.os,
        architecture: raw.architecture,
        diff_ids: raw
            .rootfs
            .diff_ids
            .iter()
            .map(|d| Digest::parse(d))
            .collect::<Result<_, _>>()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn parses_image_manifest() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":7}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":9}}]}}"#,
            d('a'),
            d('b')
        );
        let Manifest::Image { config, layers } = Manifest::parse(m.as_bytes()).unwrap() else {
            panic!("not an image manifest")
        };
        assert_eq!(config.digest.as_str(), d('a'));
        assert_eq!(config.size, 7);
        assert_eq!(layers.len(), 1);
        assert_eq!(layers[0].digest.as_str(), d('b'));
    }

    #[test]
    fn rejects_bad_manifests() {
        for bad in [
            "not json".to_string(),
            r#"{"schemaVersion":1,"fsLayers":[]}"#.to_string(),
            r#"{"schemaVersion":2}"#.to_string(),
            format!(
                r#"{{"schemaVersion":2,"mediaType":"text/plain","config":{{"digest":"{}","size":1}}}}"#,
                d('a')
            ),
            r#"{"schemaVersion":2,"config":{"digest":"sha256:xyz","size":1}}"#.to_string(),
            format!(
                r#"{{"schemaVersion":2,"config":{{"digest":"{}","size":-1}}}}"#,
                d('a')
            ),
        ] {
            assert!(Manifest::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn selects_platform() {
        let idx = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
            {{"digest":"{}","size":1,"platform":{{"os":"linux","architecture":"arm","variant":"v7"}}}},
            {{"digest":"{}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
            {{"digest":"{}","size":1,"platform":{{"os":"windows","architecture":"amd64"}}}},
            {{"digest":"{}","size":1,"platform":{{"os":"linux","architecture":"amd64","variant":"v3"}}}},
            {{"digest":"{}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}},
            {{"digest":"{}","size":1}}]}}"#,
            d('1'),
            d('2'),
            d('3'),
            d('4'),
            d('5'),
            d('6')
        );
        let Manifest::Index { manifests } = Manifest::parse(idx.as_bytes()).unwrap() else {
            panic!("not an index")
        };
        let pick = |os, arch| select_platform(&manifests, os, arch).map(|d| d.digest.to_string());
        assert_eq!(pick("linux", "amd64"), Some(d('5')));
        assert_eq!(pick("linux", "arm64"), Some(d('2')));
        assert_eq!(pick("linux", "arm"), Some(d('1')));
        assert_eq!(pick("windows", "amd64"), Some(d('3')));
        assert_eq!(pick("linux", "s390x"), None);
        // Only a variant: still chosen.
        let only_v3 = vec![manifests[3].clone()];
        assert_eq!(
            select_platform(&only_v3, "linux", "amd64").map(|d| d.digest.to_string()),
            Some(d('4'))
        );
    }

    #[test]
    fn compression() {
        let cases = [
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                &[0x1f, 0x8b, 8][..],
                Ok(Compression::Gzip),
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                &[0x1f, 0x8b][..],
                Ok(Compression::Gzip),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar",
                b"etc/",
                Ok(Compression::None),
            ),
            ("", &[0x1f, 0x8b][..], Ok(Compression::Gzip)),
            ("", b"bin/", Ok(Compression::None)),
        ];
        for (mt, head, want) in cases {
            assert_eq!(layer_compression(mt, head), want, "{mt}");
        }
        assert!(layer_compression("application/vnd.oci.image.layer.v1.tar+zstd", b"").is_err());
        assert!(layer_compression("", &[0x28, 0xb5, 0x2f, 0xfd]).is_err());
        assert!(layer_compression("application/vnd.oci.image.layer.v1.tar+gzip", b"bin/").is_err());
    }

    #[test]
    fn parses_config() {
        let c = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Entrypoint":["/bin/sh","-c"],"Cmd":["echo hi"],
            "Env":["PATH=/bin","A=b"],"WorkingDir":"/srv","User":"1000:1000"}},
            "rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
            d('c')
        );
        let p = parse_config(c.as_bytes()).unwrap();
        assert_eq!(p.config.entrypoint, ["/bin/sh", "-c"]);
        assert_eq!(p.config.cmd, ["echo hi"]);
        assert_eq!(p.config.env, ["PATH=/bin", "A=b"]);
        assert_eq!(p.config.working_dir.as_deref(), Some("/srv"));
        assert_eq!(p.config.user.as_deref(), Some("1000:1000"));
        assert_eq!(p.os, "linux");
        assert_eq!(p.diff_ids.len(), 1);

        // Nulls and empties: defaults.
        let c = r#"{"config":{"Entrypoint":null,"Cmd":null,"WorkingDir":"","User":""},"rootfs":{"diff_ids":[]}}"#;
        let p = parse_config(c.as_bytes()).unwrap();
        assert_eq!(p.config, ImageConfig::default());
        let c = r#"{"rootfs":{"diff_ids":[]}}"#;
        assert_eq!(
            parse_config(c.as_bytes()).unwrap().config,
            ImageConfig::default()
        );
        assert!(parse_config(b"{}").is_err());
    }
}
