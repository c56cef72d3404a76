//! Image references as pod specs write them (`busybox`, `127.0.0.1:5000/a/b:tag`,
//! `repo@sha256:...`), parsed and normalised the way Docker and the kubelet do:
//! no registry means `docker.io`, a single-component name on Docker Hub gets
//! `library/`, and neither tag nor digest means `:latest`. Pure: no I/O.

use std::fmt;

use crate::digest::Digest;

/// The default registry for names without one.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// `host`, `host:port` or `[v6]:port`.
    pub registry: String,
    /// `library/busybox`, `keelson-test/busybox`.
    pub repository: String,
    /// The tag, if one was given (or `latest` when neither tag nor digest was).
    pub tag: Option<String>,
    /// The digest, if one was given; it wins over the tag when pulling.
    pub digest: Option<Digest>,
}

/// Why a reference does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError(msg.into()))
}

impl ImageRef {
    /// Parses `s`.
    pub fn parse(s: &str) -> Result<ImageRef, ParseError> {
        if s.is_empty() {
            return err("empty reference");
        }
        if s.len() > 4096 {
            return err("reference longer than 4096 bytes");
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return err("reference contains whitespace");
        }
        let (rest, digest) = match s.split_once('@') {
            Some((name, d)) => (
                name,
                Some(Digest::parse(d).map_err(|e| ParseError(format!("digest: {e}")))?),
            ),
            None => (s, None),
        };
        // A tag's ':' is after the last '/' (a registry's port is before it).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            validate_tag(t)?;
        }
        if name.is_empty() {
            return err("empty repository name");
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path)) if is_registry(first) => (first.to_string(), path.to_string()),
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        if registry != DEFAULT_REGISTRY {
            validate_registry(&registry)?;
        }
        let registry = if registry == "index.docker.io" || registry == "registry-1.docker.io" {
            DEFAULT_REGISTRY.to_string()
        } else {
            registry
        };
        for component in path.split('/') {
            validate_component(component)?;
        }
        let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if registry.len() + 1 + repository.len() > 255 {
            return err("repository name longer than 255 bytes");
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository`, the part before `:tag` or `@digest`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository@digest`: the repo digest for a manifest digest.
    pub fn repo_digest(&self, manifest: &Digest) -> String {
        format!("{}@{}", self.name(), manifest)
    }

    /// True if `registry` is on loopback or listed in `insecure` (by host or
    /// host:port): such registries are reached over plain HTTP.
    pub fn is_insecure(&self, insecure: &[String]) -> bool {
        let host = registry_host(&self.registry);
        matches!(host, "localhost" | "127.0.0.1" | "::1")
            || host.starts_with("127.")
            || insecure
                .iter()
                .any(|i| i == &self.registry || registry_host(i) == host && !i.contains(':'))
    }
}

/// The canonical form: `registry/repository[:tag][@digest]`, the key of the
/// store's index.
impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// The host of `host`, `host:port` or `[v6]:port` (brackets removed).
fn registry_host(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match registry.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => registry,
    }
}

/// Docker's rule: the first component names a registry if it has a '.' or a
/// ':', is `localhost`, or has upper-case letters (repositories cannot).
fn is_registry(first: &str) -> bool {
    first.contains(['.', ':'])
        || first.starts_with('[')
        || first == "localhost"
        || first.chars().any(|c| c.is_ascii_uppercase())
}

fn validate_registry(registry: &str) -> Result<(), ParseError> {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return err(format!("registry {registry:?}: unclosed '['"));
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return err(format!("registry {registry:?}: bad IPv6 address"));
        }
        match after {
            "" => (v6, None),
            p => match p.strip_prefix(':') {
                Some(p) => (v6, Some(p)),
                None => return err(format!("registry {registry:?}: junk after ']'")),
            },
        }
    } else {
        match registry.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (registry, None),
        }
    };
    if let Some(p) = port
        && p.parse::<u16>().is_err()
    {
        return err(format!("registry {registry:?}: bad port {p:?}"));
    }
    if !registry.starts_with('[') {
        let ok = !host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !ok {
            return err(format!("registry {registry:?}: bad host name"));
        }
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn validate_component(c: &str) -> Result<(), ParseError> {
    let bad = || {
        err(format!(
            "repository component {c:?}: must be lower-case letters, digits and separators (. _ __ -) between them"
        ))
    };
    if c.is_empty() {
        return bad();
    }
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return bad();
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return bad();
        }
    }
    Ok(())
}

/// `[\w][\w.-]{0,127}`
fn validate_tag(t: &str) -> Result<(), ParseError> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = t.chars();
    let ok = t.len() <= 128
        && chars.next().is_some_and(word)
        && chars.all(|c| word(c) || c == '.' || c == '-');
    if ok {
        Ok(())
    } else {
        err(format!(
            "tag {t:?}: must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_and_normalises() {
        let cases: &[(&str, &str, &str, Option<&str>, bool)] = &[
            (
                "busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                false,
            ),
            (
                "busybox:1.36",
                "docker.io",
                "library/busybox",
                Some("1.36"),
                false,
            ),
            ("user/app", "docker.io", "user/app", Some("latest"), false),
            (
                "docker.io/busybox",
                "docker.io",
                "library/busybox",
                Some("latest"),
                false,
            ),
            (
                "index.docker.io/library/busybox:x",
                "docker.io",
                "library/busybox",
                Some("x"),
                false,
            ),
            ("localhost/app", "localhost", "app", Some("latest"), false),
            (
                "localhost:5000/a/b:v1",
                "localhost:5000",
                "a/b",
                Some("v1"),
                false,
            ),
            (
                "127.0.0.1:5000/keelson-test/busybox:latest",
                "127.0.0.1:5000",
                "keelson-test/busybox",
                Some("latest"),
                false,
            ),
            ("[::1]:5000/a:t", "[::1]:5000", "a", Some("t"), false),
            ("quay.io/a/b/c", "quay.io", "a/b/c", Some("latest"), false),
            (
                "a__b/c.d/e--f_g",
                "docker.io",
                "a__b/c.d/e--f_g",
                Some("latest"),
                false,
            ),
            ("busybox@DIGEST", "docker.io", "library/busybox", None, true),
            ("r.io/x:tag@DIGEST", "r.io", "x", Some("tag"), true),
        ];
        for (input, reg, repo, tag, has_digest) in cases {
            let input = input.replace("DIGEST", D);
            let r = ImageRef::parse(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.registry, *reg, "{input}");
            assert_eq!(r.repository, *repo, "{input}");
            assert_eq!(r.tag.as_deref(), *tag, "{input}");
            assert_eq!(r.digest.is_some(), *has_digest, "{input}");
            // The canonical form parses to the same thing.
            assert_eq!(ImageRef::parse(&r.to_string()).unwrap(), r, "{input}");
        }
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            " busybox",
            "Busybox",
            "busybox:",
            "busybox:-tag",
            "busybox@sha256:abc",
            "busybox@md5:0123",
            "a//b",
            "a/",
            "/a",
            "a/-b",
            "a/b-",
            "a/b..c",
            "a/b___c",
            "localhost:port/a",
            "[::1/a",
            "[zz]:5000/a",
            "bad_host.io/a",
            "a:b:c",
            "UPPER.io/Repo",
            &format!("busybox:{}", "t".repeat(129)),
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn canonical_form() {
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.name(), "docker.io/library/busybox");
        let d = Digest::parse(D).unwrap();
        assert_eq!(r.repo_digest(&d), format!("docker.io/library/busybox@{D}"));
        let r = ImageRef::parse(&format!("busybox@{D}")).unwrap();
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{D}"));
    }

    #[test]
    fn insecure_registries() {
        let insecure = vec!["reg.internal".to_string(), "other.io:5000".to_string()];
        let cases = [
            ("127.0.0.1:5000/a", true),
            ("127.0.0.2/a", true),
            ("localhost:5000/a", true),
            ("localhost/a", true),
            ("[::1]:5000/a", true),
            ("reg.internal/a", true),
            ("reg.internal:443/a", true),
            ("other.io:5000/a", true),
            ("other.io/a", false),
            ("other.io:6000/a", false),
            ("quay.io/a", false),
            ("busybox", false),
        ];
        for (r, want) in cases {
            assert_eq!(
                ImageRef::parse(r).unwrap().is_insecure(&insecure),
                want,
                "{r}"
            );
        }
    }
}
