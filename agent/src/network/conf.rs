//! Pure CNI data handling (spec 1.1): network configuration lists, the
//! plugin's stdin, results and errors. No I/O here.

use std::net::IpAddr;

use serde_json::{Map, Value, json};

/// Errors parsing CNI configuration or plugin output.
#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    /// The configuration is not valid JSON or lacks a required field.
    #[error("parse CNI config {file}: {reason}")]
    Config {
        /// File the configuration came from.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// A plugin's stdout is not a CNI result.
    #[error("parse result of CNI plugin {plugin}: {reason}")]
    Result {
        /// Plugin type.
        plugin: String,
        /// What is wrong.
        reason: String,
    },
}

/// A network configuration list (a `.conflist`, or a `.conf` wrapped in one).
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    /// Network name.
    pub name: String,
    /// cniVersion of the list.
    pub cni_version: String,
    /// disableCheck.
    pub disable_check: bool,
    /// disableGC.
    pub disable_gc: bool,
    /// Plugin configurations, in order.
    pub plugins: Vec<Map<String, Value>>,
}

impl NetworkConfigList {
    /// Parses `bytes` from `file`; a `.conf` file (one plugin) is wrapped in a list.
    pub fn parse(file: &str, bytes: &[u8]) -> Result<Self, ConfError> {
        let bad = |reason: String| ConfError::Config {
            file: file.to_string(),
            reason,
        };
        let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad("not a JSON object".into()))?;
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("missing \"name\"".into()))?
            .to_string();
        let cni_version = obj
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("0.4.0")
            .to_string();
        let flag = |k: &str| obj.get(k).and_then(Value::as_bool).unwrap_or(false);
        let plugins = if let Some(list) = obj.get("plugins") {
            let list = list
                .as_array()
                .ok_or_else(|| bad("\"plugins\" is not an array".into()))?;
            let mut out = Vec::new();
            for (i, p) in list.iter().enumerate() {
                let p = p
                    .as_object()
                    .ok_or_else(|| bad(format!("plugins[{i}] is not an object")))?;
                if p.get("type").and_then(Value::as_str).is_none() {
                    return Err(bad(format!("plugins[{i}] has no \"type\"")));
                }
                out.push(p.clone());
            }
            out
        } else {
            if obj.get("type").and_then(Value::as_str).is_none() {
                return Err(bad("no \"plugins\" and no \"type\"".into()));
            }
            vec![obj.clone()]
        };
        if plugins.is_empty() {
            return Err(bad("no plugins".into()));
        }
        Ok(Self {
            name,
            cni_version,
            disable_check: flag("disableCheck"),
            disable_gc: flag("disableGC"),
            plugins,
        })
    }

    /// Whether this list's version supports GC (1.1.0 and later).
    pub fn supports_gc(&self) -> bool {
        version_at_least(&self.cni_version, (1, 1, 0))
    }

    /// Whether this list's version supports CHECK (0.4.0 and later).
    pub fn supports_check(&self) -> bool {
        version_at_least(&self.cni_version, (0, 4, 0))
    }
}

fn version_at_least(v: &str, min: (u32, u32, u32)) -> bool {
    let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let got = (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    );
    got >= min
}

/// The plugin type (binary name) of a plugin configuration.
pub fn plugin_type(plugin: &Map<String, Value>) -> &str {
    plugin.get("type").and_then(Value::as_str).unwrap_or("")
}

/// The configuration a plugin reads on stdin: its own object with the list's
/// `name` and `cniVersion`, plus `prevResult` when there is one.
pub fn plugin_stdin(
    list: &NetworkConfigList,
    plugin: &Map<String, Value>,
    prev_result: Option<&Value>,
) -> Vec<u8> {
    let mut obj = plugin.clone();
    obj.insert("name".into(), Value::String(list.name.clone()));
    obj.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    match prev_result {
        Some(r) => {
            obj.insert("prevResult".into(), r.clone());
        }
        None => {
            obj.remove("prevResult");
        }
    }
    serde_json::to_vec(&Value::Object(obj)).unwrap_or_default()
}

/// One attachment that GC must keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidAttachment {
    /// CNI_CONTAINERID it was added with.
    pub container_id: String,
    /// CNI_IFNAME it was added with.
    pub ifname: String,
}

/// The stdin of a GC call: the plugin config with `cni.dev/valid-attachments`.
pub fn gc_stdin(
    list: &NetworkConfigList,
    plugin: &Map<String, Value>,
    valid: &[ValidAttachment],
) -> Vec<u8> {
    let mut obj = plugin.clone();
    obj.insert("name".into(), Value::String(list.name.clone()));
    obj.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    obj.insert(
        "cni.dev/valid-attachments".into(),
        Value::Array(
            valid
                .iter()
                .map(|a| json!({"containerID": a.container_id, "ifname": a.ifname}))
                .collect(),
        ),
    );
    serde_json::to_vec(&Value::Object(obj)).unwrap_or_default()
}

/// The parts of a CNI result the agent uses, and the raw result (passed on
/// as prevResult and kept for DEL).
#[derive(Debug, Clone, PartialEq)]
pub struct CniResult {
    /// Assigned addresses (without prefix length), IPv4 first as listed.
    pub ips: Vec<IpAddr>,
    /// The result as the last plugin returned it.
    pub raw: Value,
}

/// Parses a plugin's stdout after ADD.
pub fn parse_result(plugin: &str, stdout: &[u8]) -> Result<CniResult, ConfError> {
    let bad = |reason: String| ConfError::Result {
        plugin: plugin.to_string(),
        reason,
    };
    let raw: Value = serde_json::from_slice(stdout).map_err(|e| bad(e.to_string()))?;
    if !raw.is_object() {
        return Err(bad("not a JSON object".into()));
    }
    let mut ips = Vec::new();
    if let Some(list) = raw.get("ips").and_then(Value::as_array) {
        for ip in list {
            let addr = ip
                .get("address")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("ips[] without \"address\"".into()))?;
            let host = addr.split('/').next().unwrap_or(addr);
            ips.push(
                host.parse::<IpAddr>()
                    .map_err(|e| bad(format!("ips[].address {addr:?}: {e}")))?,
            );
        }
    }
    Ok(CniResult { ips, raw })
}

/// The message of a plugin's error output (`{"code", "msg", "details"}`),
/// or the raw text when it is not CNI error JSON.
pub fn error_message(stdout: &[u8], stderr: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(stdout)
        && let Some(msg) = v.get("msg").and_then(Value::as_str)
    {
        let code = v.get("code").and_then(Value::as_u64).unwrap_or(0);
        return match v.get("details").and_then(Value::as_str) {
            Some(d) if !d.is_empty() => format!("{msg} (code {code}): {d}"),
            _ => format!("{msg} (code {code})"),
        };
    }
    let out = String::from_utf8_lossy(stdout);
    let err = String::from_utf8_lossy(stderr);
    let text = format!("{} {}", out.trim(), err.trim());
    text.trim().to_string()
}

/// Picks the configuration file to use from a directory listing: the first
/// `*.conflist`, `*.conf` or `*.json` in lexical order.
pub fn pick_config(mut names: Vec<String>) -> Option<String> {
    names.sort();
    names
        .into_iter()
        .find(|n| n.ends_with(".conflist") || n.ends_with(".conf") || n.ends_with(".json"))
}

/// The keelson-cni conflist for a node's pod CIDR (`keelson up`, `keelson
/// install` and the agent's own configuration write it): the plugin alone,
/// at CNI 1.1 so that GC runs. `ipam_dir` absent: the plugin's default.
pub fn keelson_conflist(pod_cidr: ipnet::Ipv4Net, ipam_dir: Option<&std::path::Path>) -> String {
    let mut plugin = json!({"type": "keelson-cni", "subnet": pod_cidr.to_string()});
    if let Some(dir) = ipam_dir {
        plugin["dataDir"] = json!(dir);
    }
    serde_json::to_string_pretty(&json!({
        "cniVersion": "1.1.0",
        "name": "keelson",
        "plugins": [plugin],
    }))
    .unwrap_or_default()
}

/// CNI_ARGS for a Kubernetes pod.
pub fn k8s_args(namespace: &str, name: &str, uid: &str) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID={uid};K8S_POD_UID={uid}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"{"cniVersion":"1.0.0","name":"k8s","plugins":[
        {"type":"bridge","bridge":"kb0","ipam":{"type":"host-local","subnet":"10.1.0.0/24"}},
        {"type":"portmap","capabilities":{"portMappings":true}}]}"#;

    #[test]
    fn parses_lists_and_single_configs() {
        let l = NetworkConfigList::parse("a.conflist", LIST.as_bytes()).unwrap();
        assert_eq!(l.name, "k8s");
        assert_eq!(l.cni_version, "1.0.0");
        assert_eq!(l.plugins.len(), 2);
        assert_eq!(plugin_type(&l.plugins[1]), "portmap");
        assert!(!l.supports_gc());
        assert!(l.supports_check());

        let c = NetworkConfigList::parse(
            "b.conf",
            br#"{"cniVersion":"1.1.0","name":"one","type":"ptp"}"#,
        )
        .unwrap();
        assert_eq!(c.plugins.len(), 1);
        assert_eq!(plugin_type(&c.plugins[0]), "ptp");
        assert!(c.supports_gc());
    }

    #[test]
    fn rejects_bad_configs() {
        for (input, want) in [
            ("{", "parse CNI config x"),
            (r#"{"plugins":[]}"#, "missing \"name\""),
            (r#"{"name":"n","plugins":[]}"#, "no plugins"),
            (r#"{"name":"n","plugins":[{"a":1}]}"#, "has no \"type\""),
            (r#"{"name":"n"}"#, "no \"plugins\" and no \"type\""),
            (r#"[1]"#, "not a JSON object"),
        ] {
            let err = NetworkConfigList::parse("x", input.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{input}: {err}");
        }
    }

    #[test]
    fn stdin_injects_name_version_and_prev_result() {
        let l = NetworkConfigList::parse("a", LIST.as_bytes()).unwrap();
        let prev = json!({"cniVersion":"1.0.0","ips":[{"address":"10.1.0.2/24"}]});
        let v: Value =
            serde_json::from_slice(&plugin_stdin(&l, &l.plugins[1], Some(&prev))).unwrap();
        assert_eq!(v["name"], "k8s");
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["type"], "portmap");
        assert_eq!(v["prevResult"], prev);
        let v: Value = serde_json::from_slice(&plugin_stdin(&l, &l.plugins[0], None)).unwrap();
        assert!(v.get("prevResult").is_none());
        assert_eq!(v["ipam"]["subnet"], "10.1.0.0/24");
    }

    #[test]
    fn gc_stdin_lists_valid_attachments() {
        let l = NetworkConfigList::parse("a", LIST.as_bytes()).unwrap();
        let v: Value = serde_json::from_slice(&gc_stdin(
            &l,
            &l.plugins[0],
            &[ValidAttachment {
                container_id: "c1".into(),
                ifname: "eth0".into(),
            }],
        ))
        .unwrap();
        assert_eq!(
            v["cni.dev/valid-attachments"],
            json!([{"containerID":"c1","ifname":"eth0"}])
        );
    }

    #[test]
    fn parses_results_and_errors() {
        let r = parse_result(
            "bridge",
            br#"{"cniVersion":"1.0.0","ips":[{"address":"10.1.0.5/24","gateway":"10.1.0.1"},{"address":"fd00::5/64"}]}"#,
        )
        .unwrap();
        assert_eq!(
            r.ips,
            vec![
                "10.1.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        assert!(parse_result("bridge", b"nope").is_err());
        assert!(
            parse_result("bridge", br#"{"ips":[{"address":"x/1"}]}"#)
                .unwrap_err()
                .to_string()
                .contains("ips[].address")
        );
        assert_eq!(
            error_message(
                br#"{"code":11,"msg":"no IP addresses available","details":"range full"}"#,
                b""
            ),
            "no IP addresses available (code 11): range full"
        );
        assert_eq!(error_message(b"", b"panic: x\n"), "panic: x");
    }

    #[test]
    fn picks_first_config_in_order() {
        let names = vec![
            "99-last.conflist".to_string(),
            "README".to_string(),
            "10-first.conf".to_string(),
        ];
        assert_eq!(pick_config(names).as_deref(), Some("10-first.conf"));
        assert_eq!(pick_config(vec!["x.txt".into()]), None);
    }
}
