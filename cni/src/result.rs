//! Rendering the ADD result (spec 1.1 shape; `"version":"4"` on IPs for
//! 0.3.x/0.4.0) and reading the addresses back out of a prevResult. Pure.

use std::net::Ipv4Addr;

use serde_json::{Value, json};

use crate::config::{GATEWAY, version_lt};

/// One interface of the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    /// Name.
    pub name: String,
    /// MAC address.
    pub mac: String,
    /// MTU.
    pub mtu: u32,
    /// Netns path for the container side, `None` for the host side.
    pub sandbox: Option<String>,
}

impl Iface {
    fn to_json(&self) -> Value {
        let mut v = json!({"name": self.name, "mac": self.mac, "mtu": self.mtu});
        if let Some(s) = &self.sandbox {
            v["sandbox"] = json!(s);
        }
        v
    }
}

/// What ADD made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// The host-side veth.
    pub host: Iface,
    /// The pod-side veth.
    pub pod: Iface,
    /// The pod's address (a /32).
    pub ip: Ipv4Addr,
}

/// The ADD result: `prev` (a previous plugin's result in a chain) with this
/// attachment appended, in the shape of `cni_version`.
pub fn render(cni_version: &str, prev: Option<&Value>, a: &Attached) -> Value {
    let mut interfaces: Vec<Value> = prev
        .and_then(|p| p.get("interfaces"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut ips: Vec<Value> = prev
        .and_then(|p| p.get("ips"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut routes: Vec<Value> = prev
        .and_then(|p| p.get("routes"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    interfaces.push(a.host.to_json());
    let pod_index = interfaces.len();
    interfaces.push(a.pod.to_json());
    let mut ip = json!({
        "address": format!("{}/32", a.ip),
        "gateway": GATEWAY.to_string(),
        "interface": pod_index,
    });
    if version_lt(cni_version, "1.0.0") {
        ip["version"] = json!("4");
    }
    ips.push(ip);
    routes.push(json!({"dst": "0.0.0.0/0", "gw": GATEWAY.to_string()}));
    let dns = prev
        .and_then(|p| p.get("dns"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    json!({
        "cniVersion": cni_version,
        "interfaces": interfaces,
        "ips": ips,
        "routes": routes,
        "dns": dns,
    })
}

/// IPv4 addresses a result gives the interface `ifname` in `sandbox`.
pub fn addresses_of(result: &Value, ifname: &str, sandbox: &str) -> Vec<Ipv4Addr> {
    let interfaces = result
        .get("interfaces")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::new();
    for ip in result
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let ours = ip
            .get("interface")
            .and_then(Value::as_u64)
            .and_then(|i| interfaces.get(i as usize))
            .is_some_and(|i| {
                i.get("name").and_then(Value::as_str) == Some(ifname)
                    && i.get("sandbox").and_then(Value::as_str) == Some(sandbox)
            });
        if !ours {
            continue;
        }
        if let Some(addr) = ip
            .get("address")
            .and_then(Value::as_str)
            .and_then(|s| s.split('/').next())
            .and_then(|s| s.parse().ok())
        {
            out.push(addr);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attached() -> Attached {
        Attached {
            host: Iface {
                name: "kc0123456789a".into(),
                mac: "02:00:00:00:00:01".into(),
                mtu: 1450,
                sandbox: None,
            },
            pod: Iface {
                name: "eth0".into(),
                mac: "02:00:00:00:00:02".into(),
                mtu: 1450,
                sandbox: Some("/run/netns/p".into()),
            },
            ip: "10.244.1.7".parse().unwrap(),
        }
    }

    #[test]
    fn renders_1_1_result() {
        let r = render("1.1.0", None, &attached());
        assert_eq!(
            r,
            json!({
                "cniVersion": "1.1.0",
                "interfaces": [
                    {"name": "kc0123456789a", "mac": "02:00:00:00:00:01", "mtu": 1450},
                    {"name": "eth0", "mac": "02:00:00:00:00:02", "mtu": 1450, "sandbox": "/run/netns/p"},
                ],
                "ips": [{"address": "10.244.1.7/32", "gateway": "169.254.1.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
                "dns": {},
            })
        );
        assert_eq!(
            addresses_of(&r, "eth0", "/run/netns/p"),
            vec!["10.244.1.7".parse::<Ipv4Addr>().unwrap()]
        );
        assert!(addresses_of(&r, "eth0", "/run/netns/other").is_empty());
    }

    #[test]
    fn appends_to_prev_result_and_old_versions_get_ip_version() {
        let prev = json!({
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "x"}],
            "ips": [{"version": "4", "address": "192.0.2.1/24", "interface": 0}],
            "dns": {"nameservers": ["192.0.2.53"]},
        });
        let r = render("0.4.0", Some(&prev), &attached());
        assert_eq!(r["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(r["ips"][1]["interface"], 2);
        assert_eq!(r["ips"][1]["version"], "4");
        assert_eq!(r["dns"]["nameservers"][0], "192.0.2.53");
    }
}
