//! Pure parsing of what the runtime hands the plugin: the `CNI_*`
//! environment and the network configuration on stdin (CNI spec 1.1).
//! No I/O here: the caller passes the environment and the bytes in.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde_json::{Map, Value};

use crate::error::{CniError, code};

/// cniVersions this plugin speaks, oldest first. 0.1.0/0.2.0 results have
/// another shape and are not offered.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Default for `dataDir`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/keelson";

/// The pod's default gateway: link-local, carried by every host-side veth.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The six verbs of spec 1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container (idempotent).
    Del,
    /// Verify an attachment.
    Check,
    /// Report supported versions.
    Version,
    /// Is the plugin ready to ADD?
    Status,
    /// Release everything not in `cni.dev/valid-attachments`.
    Gc,
}

impl Command {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "VERSION" => Self::Version,
            "STATUS" => Self::Status,
            "GC" => Self::Gc,
            _ => return None,
        })
    }
}

/// One attachment: the key of every allocation and host interface.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attachment {
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_IFNAME.
    pub ifname: String,
}

impl Attachment {
    /// Validates both parts (spec rules for the container ID, the kernel's for
    /// interface names), so that `key()` is a safe single file name.
    pub fn new(container_id: &str, ifname: &str) -> Result<Self, CniError> {
        validate_container_id(container_id)?;
        validate_ifname(ifname)?;
        Ok(Self {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
        })
    }

    /// `CONTAINERID:IFNAME` — ':' occurs in neither part.
    pub fn key(&self) -> String {
        format!("{}:{}", self.container_id, self.ifname)
    }

    /// Inverse of [`Attachment::key`]; `None` for anything else.
    pub fn from_key(key: &str) -> Option<Self> {
        let (c, i) = key.split_once(':')?;
        Self::new(c, i).ok()
    }

    /// The host-side veth name: "kc" + 11 hex digits of
    /// sha256("CONTAINERID:IFNAME"). Deterministic, 13 bytes (< IFNAMSIZ).
    pub fn host_ifname(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.key().as_bytes());
        let mut s = String::from("kc");
        for b in digest.iter().take(6) {
            s.push_str(&format!("{b:02x}"));
        }
        s.truncate(13);
        s
    }
}

fn validate_container_id(id: &str) -> Result<(), CniError> {
    let ok = !id.is_empty()
        && id.len() <= 200
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "invalid CNI_CONTAINERID {id:?}: must be 1-200 characters of [A-Za-z0-9_.-], starting alphanumeric"
            ),
        ))
    }
}

fn validate_ifname(name: &str) -> Result<(), CniError> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "invalid CNI_IFNAME {name:?}: must be 1-15 characters without '/', ':' or whitespace"
            ),
        ))
    }
}

/// The `CNI_*` environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Env {
    /// CNI_COMMAND.
    pub command: Command,
    /// CNI_CONTAINERID and CNI_IFNAME (absent for VERSION, STATUS, GC).
    pub attachment: Option<Attachment>,
    /// CNI_NETNS (may be empty for DEL).
    pub netns: Option<PathBuf>,
}

impl Env {
    /// Parses the environment; `get` looks a variable up.
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let command_s = get("CNI_COMMAND")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set"))?;
        let command = Command::parse(&command_s).ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                format!(
                    "unknown CNI_COMMAND {command_s:?}: expected ADD, DEL, CHECK, VERSION, STATUS or GC"
                ),
            )
        })?;
        let netns = get("CNI_NETNS")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        let attachment = match command {
            Command::Add | Command::Del | Command::Check => {
                let cid = get("CNI_CONTAINERID")
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| {
                        CniError::new(
                            code::INVALID_ENV,
                            format!("CNI_CONTAINERID is not set (required for {command_s})"),
                        )
                    })?;
                let ifname = get("CNI_IFNAME").filter(|s| !s.is_empty()).ok_or_else(|| {
                    CniError::new(
                        code::INVALID_ENV,
                        format!("CNI_IFNAME is not set (required for {command_s})"),
                    )
                })?;
                Some(Attachment::new(&cid, &ifname)?)
            }
            _ => None,
        };
        if matches!(command, Command::Add | Command::Check) && netns.is_none() {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_NETNS is not set (required for {command_s})"),
            ));
        }
        Ok(Self {
            command,
            attachment,
            netns,
        })
    }
}

/// The plugin's network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// cniVersion asked for (one of [`SUPPORTED_VERSIONS`]).
    pub cni_version: String,
    /// Network name: names the IPAM state directory.
    pub name: String,
    /// The node's pod CIDR.
    pub subnet: Ipv4Net,
    /// Root of the IPAM state (one directory per network below it).
    pub data_dir: PathBuf,
    /// MTU of both veth ends; `None` keeps the kernel default (1500).
    pub mtu: Option<u32>,
    /// Sysctls set in the pod's network namespace (`net.*` only).
    pub sysctls: BTreeMap<String, String>,
    /// The previous plugin's result in a chain (ADD), or the chain's result (DEL, CHECK).
    pub prev_result: Option<Value>,
    /// GC: `cni.dev/valid-attachments`.
    pub valid_attachments: Option<Vec<Attachment>>,
}

impl NetConf {
    /// The state directory of this network: `dataDir/NAME`.
    pub fn state_dir(&self) -> PathBuf {
        self.data_dir.join(&self.name)
    }
}

/// Reads only `cniVersion` (VERSION needs nothing else); a missing one is "0.1.0"
/// per spec, and is reported by [`parse`] as unsupported.
pub fn parse_version(bytes: &[u8]) -> Result<String, CniError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| {
        CniError::new(
            code::DECODE,
            format!("decode network configuration from stdin: {e}"),
        )
    })?;
    Ok(v.get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or("0.1.0")
        .to_string())
}

/// Parses and validates the configuration on stdin for `command`.
pub fn parse(bytes: &[u8], command: Command) -> Result<NetConf, CniError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| {
        CniError::new(
            code::DECODE,
            format!("decode network configuration from stdin: {e}"),
        )
    })?;
    let obj = v.as_object().ok_or_else(|| {
        CniError::new(
            code::DECODE,
            "decode network configuration from stdin: not a JSON object",
        )
    })?;
    let bad = |msg: String| CniError::new(code::INVALID_CONFIG, msg);
    let cni_version = match obj.get("cniVersion") {
        None => return Err(bad("network configuration has no \"cniVersion\"".into())),
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(bad(format!("\"cniVersion\" must be a string, got {other}"))),
    };
    if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {cni_version:?} is not supported; supported: {}",
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    if matches!(command, Command::Status | Command::Gc) && version_lt(&cni_version, "1.1.0") {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("{command:?} needs cniVersion 1.1.0 or later, got {cni_version:?}"),
        ));
    }
    if command == Command::Check && version_lt(&cni_version, "0.4.0") {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("CHECK needs cniVersion 0.4.0 or later, got {cni_version:?}"),
        ));
    }
    let name = str_field(obj, "name")?
        .ok_or_else(|| bad("network configuration has no \"name\"".into()))?;
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.chars().any(char::is_control)
    {
        return Err(bad(format!(
            "network name {name:?} cannot name a directory: no '/', not '.' or '..'"
        )));
    }
    if let Some(ipam) = obj.get("ipam")
        && ipam.as_object().is_some_and(|m| !m.is_empty())
    {
        return Err(CniError::new(
            code::UNSUPPORTED_FIELD,
            "unsupported field \"ipam\": keelson-cni allocates addresses itself from \"subnet\"",
        ));
    }
    let subnet_s = str_field(obj, "subnet")?.ok_or_else(|| {
        bad(
            "network configuration has no \"subnet\" (the node's pod CIDR, e.g. \"10.244.1.0/24\")"
                .into(),
        )
    })?;
    let subnet: Ipv4Net = subnet_s.parse().map_err(|_| {
        if subnet_s.contains(':') {
            CniError::new(
                code::UNSUPPORTED_FIELD,
                format!("\"subnet\" {subnet_s:?}: IPv6 pod CIDRs are not supported yet"),
            )
        } else {
            bad(format!("\"subnet\" {subnet_s:?} is not an IPv4 CIDR"))
        }
    })?;
    if subnet.prefix_len() > 30 {
        return Err(bad(format!(
            "\"subnet\" {subnet_s:?} is too small: need at least a /30"
        )));
    }
    if subnet.trunc() != subnet {
        return Err(bad(format!(
            "\"subnet\" {subnet_s:?} has host bits set (did you mean {}?)",
            subnet.trunc()
        )));
    }
    let data_dir = PathBuf::from(str_field(obj, "dataDir")?.unwrap_or(DEFAULT_DATA_DIR.into()));
    if !data_dir.is_absolute() {
        return Err(bad(format!(
            "\"dataDir\" {} must be an absolute path",
            data_dir.display()
        )));
    }
    let mtu = match obj.get("mtu") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(m) if (68..=65535).contains(&m) => Some(m as u32),
            _ => return Err(bad(format!("\"mtu\" {n} is out of range 68-65535"))),
        },
        Some(other) => return Err(bad(format!("\"mtu\" must be a number, got {other}"))),
    };
    let mut sysctls = BTreeMap::new();
    match obj.get("sysctls") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let val = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    other => {
                        return Err(bad(format!(
                            "sysctl {k:?}: value {other} is not a string or number"
                        )));
                    }
                };
                let path = k.replace('.', "/");
                if !path.starts_with("net/") || path.contains("..") {
                    return Err(bad(format!(
                        "sysctl {k:?}: only net.* sysctls (scoped to the pod's network namespace) are allowed"
                    )));
                }
                sysctls.insert(k.clone(), val);
            }
        }
        Some(other) => return Err(bad(format!("\"sysctls\" must be an object, got {other}"))),
    }
    let prev_result = obj.get("prevResult").filter(|v| !v.is_null()).cloned();
    let valid_attachments = match obj.get("cni.dev/valid-attachments") {
        None => None,
        Some(Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                let cid = item.get("containerID").and_then(Value::as_str);
                let ifname = item.get("ifname").and_then(Value::as_str);
                match (cid, ifname) {
                    (Some(c), Some(i)) => out.push(
                        Attachment::new(c, i)
                            .map_err(|e| bad(format!("cni.dev/valid-attachments: {}", e.msg)))?,
                    ),
                    _ => {
                        return Err(bad(format!(
                            "cni.dev/valid-attachments: entry {item} lacks containerID or ifname"
                        )));
                    }
                }
            }
            Some(out)
        }
        Some(other) => {
            return Err(bad(format!(
                "cni.dev/valid-attachments must be an array, got {other}"
            )));
        }
    };
    if command == Command::Gc && valid_attachments.is_none() {
        return Err(bad(
            "GC needs \"cni.dev/valid-attachments\" in the configuration".into(),
        ));
    }
    Ok(NetConf {
        cni_version,
        name,
        subnet,
        data_dir,
        mtu,
        sysctls,
        prev_result,
        valid_attachments,
    })
}

fn str_field(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(CniError::new(
            code::INVALID_CONFIG,
            format!("{key:?} must be a string, got {other}"),
        )),
    }
}

/// Compares dotted versions numerically.
pub fn version_lt(a: &str, b: &str) -> bool {
    let p = |s: &str| -> Vec<u32> { s.split('.').map(|x| x.parse().unwrap_or(0)).collect() };
    p(a) < p(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Env, CniError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::parse(|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn env_table() {
        let ok = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap();
        assert_eq!(ok.command, Command::Add);
        assert_eq!(ok.attachment.unwrap().key(), "abc:eth0");
        let cases: &[(&[(&str, &str)], u32)] = &[
            (&[], code::INVALID_ENV),
            (&[("CNI_COMMAND", "FROB")], code::INVALID_ENV),
            (&[("CNI_COMMAND", "ADD")], code::INVALID_ENV),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "abc"),
                    ("CNI_IFNAME", "eth0"),
                ],
                code::INVALID_ENV,
            ),
            (
                &[
                    ("CNI_COMMAND", "DEL"),
                    ("CNI_CONTAINERID", "../etc"),
                    ("CNI_IFNAME", "eth0"),
                ],
                code::INVALID_ENV,
            ),
            (
                &[
                    ("CNI_COMMAND", "DEL"),
                    ("CNI_CONTAINERID", "abc"),
                    ("CNI_IFNAME", "a:b"),
                ],
                code::INVALID_ENV,
            ),
        ];
        for (vars, want) in cases {
            assert_eq!(env(vars).unwrap_err().code, *want, "{vars:?}");
        }
        // DEL without a netns is fine.
        let del = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap();
        assert!(del.netns.is_none());
        assert_eq!(env(&[("CNI_COMMAND", "GC")]).unwrap().command, Command::Gc);
    }

    #[test]
    fn config_table() {
        let good = r#"{"cniVersion":"1.1.0","name":"k","type":"keelson-cni","subnet":"10.244.1.0/24","mtu":1400,"sysctls":{"net.ipv4.conf.all.rp_filter":"0"}}"#;
        let c = parse(good.as_bytes(), Command::Add).unwrap();
        assert_eq!(c.subnet.to_string(), "10.244.1.0/24");
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.state_dir(), PathBuf::from("/var/lib/cni/keelson/k"));
        let cases: &[(&str, Command, u32)] = &[
            ("{", Command::Add, code::DECODE),
            ("[]", Command::Add, code::DECODE),
            (
                r#"{"name":"k","subnet":"10.0.0.0/24"}"#,
                Command::Add,
                code::INVALID_CONFIG,
            ),
            (
                r#"{"cniVersion":"9.9.9","name":"k","subnet":"10.0.0.0/24"}"#,
                Command::Add,
                code::INCOMPATIBLE_VERSION,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"k","subnet":"10.0.0.0/24"}"#,
                Command::Gc,
                code::INCOMPATIBLE_VERSION,
            ),
            (
                r#"{"cniVersion":"0.3.1","name":"k","subnet":"10.0.0.0/24"}"#,
                Command::Check,
                code::INCOMPATIBLE_VERSION,
            ),
            (
                r#"{"cniVersion":"1.1.0","subnet":"10.0.0.0/24"}"#,
                Command::Add,
                code::INVALID_CONFIG,
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"../x","subnet":"10.0.0.0/24"}"#,
                Command::Add,
                code::INVALID_CONFIG,
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"k"}"#,
                Command::Add,
                code::INVALID_CONFIG,
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"k","subnet":"10.0.0.1/24"}"#,
                Command::Add,
                code::INVALID_CONFIG,
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"k","subnet":"10.0.0.0/31"}"#,
                Command::Add,
                code::INVALID_CONFIG,
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"k","subnet":"fd00::/64"}"#,
                Command::Add,
                code::UNSUPPORTED_FIELD,
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"k","subnet":"bogus"}"#,
                Command::Add,
                code::INVALID_CONFIG,
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"k","subnet":"10.0.0.0/24","mtu":20}"#,
                Command::Add,
                code::INVALID_CONFIG,
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"k","subnet":"10.0.0.0/24","mtu":"x"}"#,
                Command::Add,
                code::INVALID_CONFIG,
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"k","subnet":"10.0.0.0/24","dataDir":"rel"}"#,
                Command::Add,
                code::INVALID_CONFIG,
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"k","subnet":"10.0.0.0/24","ipam":{"type":"host-local"}}"#,
                Command::Add,
                code::UNSUPPORTED_FIELD,
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"k","subnet":"10.0.0.0/24","sysctls":{"kernel.panic":"1"}}"#,
                Command::Add,
                code::INVALID_CONFIG,
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"k","subnet":"10.0.0.0/24"}"#,
                Command::Gc,
                code::INVALID_CONFIG,
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"k","subnet":"10.0.0.0/24","cni.dev/valid-attachments":[{"containerID":"a"}]}"#,
                Command::Gc,
                code::INVALID_CONFIG,
            ),
        ];
        for (text, cmd, want) in cases {
            let got = parse(text.as_bytes(), *cmd).unwrap_err();
            assert_eq!(got.code, *want, "{text}: {}", got.msg);
        }
        let gc = parse(
            br#"{"cniVersion":"1.1.0","name":"k","subnet":"10.0.0.0/24","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
            Command::Gc,
        )
        .unwrap();
        assert_eq!(
            gc.valid_attachments.unwrap(),
            vec![Attachment::new("a", "eth0").unwrap()]
        );
    }

    #[test]
    fn host_ifname_is_deterministic_and_short() {
        let a = Attachment::new("0123456789abcdef", "eth0").unwrap();
        let b = Attachment::new("0123456789abcdef", "eth1").unwrap();
        assert_eq!(a.host_ifname(), a.host_ifname());
        assert_ne!(a.host_ifname(), b.host_ifname());
        assert_eq!(a.host_ifname().len(), 13);
        assert!(a.host_ifname().starts_with("kc"));
        assert_eq!(Attachment::from_key(&a.key()), Some(a));
        assert_eq!(Attachment::from_key("nocolon"), None);
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(version_lt("0.4.0", "1.0.0"));
        assert!(version_lt("0.3.1", "0.4.0"));
        assert!(!version_lt("1.1.0", "1.0.0"));
        assert!(version_lt("0.10.0", "1.0.0"));
    }
}
