//! ClusterIP and NodePort allocation for Services.
//!
//! Each allocated IP or port is a key in the store
//! (`/registry/ranges/serviceips/<ip>`, `/registry/ranges/servicenodeports/<port>`)
//! whose value names its Service. Creating the key is the atomic claim, so no
//! two Services can hold the same IP or port, across restarts and across
//! several API servers sharing one etcd. A crash between the claim and the
//! Service write leaves a claim without a Service; [`ServiceAllocator::repair`]
//! releases those at start.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use rand::Rng;
use serde_json::{Value, json};

use super::errors::{ApiError, ApiResult, Cause};
use crate::store::{Store, StoreError};

const IP_PREFIX: &str = "/registry/ranges/serviceips/";
const PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";

pub struct ServiceAllocator {
    store: Arc<dyn Store>,
    cidr: ipnet::IpNet,
    ports: (u16, u16),
}

/// Claims made for one write; released by [`Allocation::rollback`] if the
/// write fails.
#[must_use]
pub struct Allocation<'a> {
    alloc: &'a ServiceAllocator,
    claimed: Vec<String>,
}

impl Allocation<'_> {
    pub fn commit(self) {}

    pub async fn rollback(self) {
        for key in self.claimed {
            if let Err(e) = self.alloc.store.delete(&key, None).await
                && !matches!(e, StoreError::NotFound { .. })
            {
                tracing::warn!(%key, error = %e, "release allocation after failed write");
            }
        }
    }
}

fn owner(svc: &Value) -> String {
    format!(
        "{}/{}",
        svc.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default(),
        svc.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
    )
}

fn svc_type(svc: &Value) -> &str {
    svc.pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
}

fn wants_node_ports(svc: &Value) -> bool {
    matches!(svc_type(svc), "NodePort" | "LoadBalancer")
}

fn cluster_ip(svc: &Value) -> Option<String> {
    svc.pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && *s != "None")
        .map(String::from)
}

fn node_ports(svc: &Value) -> Vec<u16> {
    svc.pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("nodePort").and_then(Value::as_u64))
        .filter(|p| *p > 0)
        .map(|p| p as u16)
        .collect()
}

impl ServiceAllocator {
    pub fn new(store: Arc<dyn Store>, cidr: ipnet::IpNet, ports: (u16, u16)) -> Self {
        ServiceAllocator { store, cidr, ports }
    }

    /// The first address of the range, reserved for the `kubernetes` Service.
    pub fn first_ip(&self) -> IpAddr {
        self.nth(1)
    }

    fn size(&self) -> u128 {
        let bits = self.cidr.max_prefix_len() - self.cidr.prefix_len();
        if bits >= 64 {
            u64::MAX as u128
        } else {
            1u128 << bits
        }
    }

    fn nth(&self, n: u128) -> IpAddr {
        match self.cidr.network() {
            IpAddr::V4(a) => {
                IpAddr::V4(std::net::Ipv4Addr::from((u32::from(a) as u128 + n) as u32))
            }
            IpAddr::V6(a) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(a) + n)),
        }
    }

    async fn claim(&self, key: String, owner: &str) -> Result<bool, StoreError> {
        match self.store.create(&key, owner.as_bytes().to_vec()).await {
            Ok(_) => Ok(true),
            Err(StoreError::AlreadyExists { .. }) => {
                // A claim left by this same Service (a crash between claim and
                // write, then a retry) is ours.
                let (kv, _) = self.store.get(&key).await?;
                Ok(kv.is_some_and(|kv| kv.value == owner.as_bytes()))
            }
            Err(e) => Err(e),
        }
    }

    /// Claim the ClusterIP and NodePorts `svc` needs (those `old` does not
    /// already hold), filling in the ones it leaves to the server.
    pub async fn allocate(
        &self,
        svc: &mut Value,
        old: Option<&Value>,
    ) -> ApiResult<Allocation<'_>> {
        let mut a = Allocation {
            alloc: self,
            claimed: Vec::new(),
        };
        match self.allocate_inner(svc, old, &mut a).await {
            Ok(()) => Ok(a),
            Err(e) => {
                a.rollback().await;
                Err(e)
            }
        }
    }

    async fn allocate_inner(
        &self,
        svc: &mut Value,
        old: Option<&Value>,
        a: &mut Allocation<'_>,
    ) -> ApiResult<()> {
        let name = svc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let who = owner(svc);
        let invalid = |field: &str, value: &str, detail: String| {
            ApiError::invalid(
                "",
                "Service",
                &name,
                vec![Cause::invalid(field, value, detail)],
            )
        };
        let ty = svc_type(svc).to_string();
        let old_ip = old.and_then(cluster_ip);
        let requested = svc
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if ty == "ExternalName" {
            // An ExternalName Service has no cluster IP: one it held as
            // another type is dropped (and released after the write), as
            // kube-apiserver drops type-dependent fields.
            if let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) {
                for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                    spec.remove(f);
                }
            }
        } else if requested != "None" {
            let ip = if !requested.is_empty() {
                let ip: IpAddr = requested.parse().map_err(|_| {
                    invalid(
                        "spec.clusterIPs",
                        &requested,
                        "must be a valid IP address".into(),
                    )
                })?;
                if !self.cidr.contains(&ip)
                    || ip == self.cidr.network()
                    || ip == self.cidr.broadcast()
                {
                    return Err(invalid(
                        "spec.clusterIPs",
                        &requested,
                        format!(
                            "failed to allocate IP {requested}: the provided IP ({requested}) is not in the valid range. The range of valid IPs is {}",
                            self.cidr
                        ),
                    ));
                }
                if old_ip.as_deref() != Some(requested.as_str()) {
                    let key = format!("{IP_PREFIX}{ip}");
                    if !self.claim(key.clone(), &who).await? {
                        return Err(invalid(
                            "spec.clusterIPs",
                            &requested,
                            format!(
                                "failed to allocate IP {requested}: provided IP is already allocated"
                            ),
                        ));
                    }
                    a.claimed.push(key);
                }
                ip
            } else {
                let size = self.size();
                if size < 4 {
                    return Err(ApiError::internal(format!(
                        "service IP range {} is too small",
                        self.cidr
                    )));
                }
                let start = rand::rng().random_range(2..size - 1);
                let mut found = None;
                for i in 0..(size - 3).min(1 << 20) {
                    let n = 2 + (start - 2 + i) % (size - 3);
                    let ip = self.nth(n);
                    let key = format!("{IP_PREFIX}{ip}");
                    if self.claim(key.clone(), &who).await? {
                        a.claimed.push(key);
                        found = Some(ip);
                        break;
                    }
                }
                found.ok_or_else(|| {
                    ApiError::internal(format!(
                        "failed to allocate a service IP: range {} is full",
                        self.cidr
                    ))
                })?
            };
            let spec = &mut svc["spec"];
            spec["clusterIP"] = ip.to_string().into();
            spec["clusterIPs"] = json!([ip.to_string()]);
            let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
            spec["ipFamilies"] = json!([family]);
            if spec.get("ipFamilyPolicy").is_none_or(Value::is_null) {
                spec["ipFamilyPolicy"] = "SingleStack".into();
            }
        }
        if wants_node_ports(svc) {
            let held: HashSet<u16> = old
                .map(node_ports)
                .unwrap_or_default()
                .into_iter()
                .collect();
            let mut taken: HashSet<u16> = HashSet::new();
            let count = svc
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            for i in 0..count {
                let want = svc["spec"]["ports"][i]
                    .get("nodePort")
                    .and_then(Value::as_u64)
                    .unwrap_or(0) as u16;
                let port = if want != 0 {
                    if want < self.ports.0 || want > self.ports.1 {
                        return Err(invalid(
                            &format!("spec.ports[{i}].nodePort"),
                            &want.to_string(),
                            format!(
                                "provided port is not in the valid range. The range of valid ports is {}-{}",
                                self.ports.0, self.ports.1
                            ),
                        ));
                    }
                    if !held.contains(&want) && !taken.contains(&want) {
                        let key = format!("{PORT_PREFIX}{want}");
                        if !self.claim(key.clone(), &who).await? {
                            return Err(invalid(
                                &format!("spec.ports[{i}].nodePort"),
                                &want.to_string(),
                                "provided port is already allocated".into(),
                            ));
                        }
                        a.claimed.push(key);
                    }
                    want
                } else {
                    let span = (self.ports.1 - self.ports.0) as u32 + 1;
                    let start = rand::rng().random_range(0..span);
                    let mut found = None;
                    for j in 0..span {
                        let p = self.ports.0 + ((start + j) % span) as u16;
                        if taken.contains(&p) || held.contains(&p) {
                            continue;
                        }
                        let key = format!("{PORT_PREFIX}{p}");
                        if self.claim(key.clone(), &who).await? {
                            a.claimed.push(key);
                            found = Some(p);
                            break;
                        }
                    }
                    found.ok_or_else(|| {
                        ApiError::internal("failed to allocate a node port: range is full")
                    })?
                };
                taken.insert(port);
                svc["spec"]["ports"][i]["nodePort"] = port.into();
            }
        } else if let Some(ports) = svc.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                p.remove("nodePort");
            }
        }
        Ok(())
    }

    /// On update, keep what the Service already holds when the new spec
    /// leaves it out (as `kubectl apply` of a manifest without them does).
    pub fn carry_over(&self, current: &Value, new: &mut Value) {
        if svc_type(new) != "ExternalName"
            && new
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            && let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut)
        {
            for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                if let Some(v) = current.pointer(&format!("/spec/{f}")) {
                    spec.insert(f.into(), v.clone());
                }
            }
        }
        if wants_node_ports(new) {
            let old_ports: Vec<Value> = current
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if let Some(ports) = new.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
                for p in ports.iter_mut() {
                    if p.get("nodePort").and_then(Value::as_u64).unwrap_or(0) != 0 {
                        continue;
                    }
                    let same = old_ports.iter().find(|o| {
                        o.get("port") == p.get("port")
                            && o.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
                                == p.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
                    });
                    if let Some(np) = same.and_then(|o| o.get("nodePort")) {
                        p["nodePort"] = np.clone();
                    }
                }
            }
        }
    }

    async fn release(&self, key: String, who: &str) {
        match self.store.get(&key).await {
            Ok((Some(kv), _)) if kv.value == who.as_bytes() => {
                if let Err(e) = self.store.delete(&key, Some(kv.mod_revision)).await {
                    tracing::warn!(%key, error = %e, "release service allocation");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(%key, error = %e, "read service allocation"),
        }
    }

    /// Release what `old` held that `new` no longer does.
    pub async fn release_unused(&self, old: &Value, new: &Value) {
        let who = owner(old);
        if let Some(ip) = cluster_ip(old)
            && cluster_ip(new).as_deref() != Some(ip.as_str())
        {
            self.release(format!("{IP_PREFIX}{ip}"), &who).await;
        }
        let keep: HashSet<u16> = node_ports(new).into_iter().collect();
        for p in node_ports(old) {
            if !keep.contains(&p) {
                self.release(format!("{PORT_PREFIX}{p}"), &who).await;
            }
        }
    }

    /// Release everything a deleted Service held.
    pub async fn release_all(&self, svc: &Value) {
        self.release_unused(svc, &json!({})).await;
    }

    /// Make claims and Services agree: release claims whose Service is gone
    /// or no longer holds them, re-claim what a Service holds without a claim.
    /// Returns (released, reclaimed).
    pub async fn repair(&self, services_prefix: &str) -> Result<(usize, usize), StoreError> {
        let services = self.store.list(services_prefix, None, 0).await?.kvs;
        let mut held: std::collections::HashMap<String, String> = std::collections::HashMap::new();
        for kv in &services {
            let Ok(svc) = serde_json::from_slice::<Value>(&kv.value) else {
                continue;
            };
            let who = owner(&svc);
            if let Some(ip) = cluster_ip(&svc) {
                held.insert(format!("{IP_PREFIX}{ip}"), who.clone());
            }
            for p in node_ports(&svc) {
                held.insert(format!("{PORT_PREFIX}{p}"), who.clone());
            }
        }
        let mut released = 0;
        let mut present = HashSet::new();
        for prefix in [IP_PREFIX, PORT_PREFIX] {
            for kv in self.store.list(prefix, None, 0).await?.kvs {
                let who = String::from_utf8_lossy(&kv.value).to_string();
                if held.get(&kv.key) == Some(&who) {
                    present.insert(kv.key);
                } else {
                    match self.store.delete(&kv.key, Some(kv.mod_revision)).await {
                        Ok(_) => released += 1,
                        Err(StoreError::NotFound { .. } | StoreError::Conflict { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        let mut reclaimed = 0;
        for (key, who) in held {
            if !present.contains(&key) {
                match self.store.create(&key, who.into_bytes()).await {
                    Ok(_) => reclaimed += 1,
                    Err(StoreError::AlreadyExists { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok((released, reclaimed))
    }
}
