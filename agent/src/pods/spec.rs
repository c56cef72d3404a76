//! Pure container configuration from the pod spec and the image config:
//! process args (k8s command/args rules), environment (incl. fieldRef and
//! $(VAR) expansion), user, working dir. No I/O here.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use keelson_images::ImageConfig;

/// Whether the pod runs in the node's network namespace.
pub fn host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

/// Errors turning a spec into a container config (CreateContainerConfigError).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// Neither the spec nor the image gives a command.
    #[error("container {0}: no command specified (neither command/args nor image Entrypoint/Cmd)")]
    NoCommand(String),
    /// An env var source the agent cannot resolve.
    #[error("container {container}: env {var}: {reason}")]
    Env {
        /// Container.
        container: String,
        /// Variable.
        var: String,
        /// Why.
        reason: String,
    },
}

/// Process args by the Kubernetes rules: `command` replaces Entrypoint (and
/// drops Cmd), `args` replaces Cmd.
pub fn resolve_args(
    c: &Container,
    image: &ImageConfig,
    env: &BTreeMap<String, String>,
) -> Result<Vec<String>, SpecError> {
    let command = c.command.clone().unwrap_or_default();
    let args = c.args.clone().unwrap_or_default();
    let mut out = match (command.is_empty(), args.is_empty()) {
        (false, _) => [command, args].concat(),
        (true, false) => [image.entrypoint.clone(), args].concat(),
        (true, true) => [image.entrypoint.clone(), image.cmd.clone()].concat(),
    };
    if c.command.is_some() || c.args.is_some() {
        for a in &mut out {
            *a = expand(a, env);
        }
    }
    if out.is_empty() {
        return Err(SpecError::NoCommand(c.name.clone()));
    }
    Ok(out)
}

/// Kubernetes `$(VAR)` expansion: `$$` escapes, unknown references stay.
pub fn expand(s: &str, env: &BTreeMap<String, String>) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'('
                && let Some(end) = s[i + 2..].find(')')
            {
                let name = &s[i + 2..i + 2 + end];
                match env.get(name) {
                    Some(v) => out.push_str(v),
                    None => out.push_str(&s[i..i + 3 + end]),
                }
                i += 3 + end;
                continue;
            }
        }
        let ch = s[i..].chars().next().unwrap_or('?');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// Values a fieldRef can read.
#[derive(Debug, Clone, Default)]
pub struct FieldValues {
    /// status.podIP.
    pub pod_ip: String,
    /// status.hostIP.
    pub host_ip: String,
    /// spec.nodeName.
    pub node_name: String,
    /// The node's allocatable CPU in millicores (a limit not set reads this).
    pub node_cpu_millis: u64,
    /// The node's allocatable memory in bytes.
    pub node_memory_bytes: u64,
}

/// The value of a fieldRef path (the downward API's, for env and volumes).
pub fn field_ref(pod: &Pod, path: &str, f: &FieldValues) -> Option<String> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    Some(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "status.podIP" => f.pod_ip.clone(),
        "status.podIPs" => f.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => f.host_ip.clone(),
        "spec.nodeName" => f.node_name.clone(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        _ => {
            let (map, key) = if let Some(k) = path.strip_prefix("metadata.labels['") {
                (m.labels.as_ref(), k)
            } else if let Some(k) = path.strip_prefix("metadata.annotations['") {
                (m.annotations.as_ref(), k)
            } else {
                return None;
            };
            let key = key.strip_suffix("']")?;
            map.and_then(|m| m.get(key)).cloned().unwrap_or_default()
        }
    })
}

/// A resourceFieldRef's value (the kubelet's rules): the container's
/// limit or request of `resource`, divided by `divisor` (default 1) and
/// rounded up; an unset limit reads the node's allocatable amount, an unset
/// request reads 0 (ephemeral storage: 0 unless set).
pub fn resource_field(
    c: &Container,
    rf: &k8s_openapi::api::core::v1::ResourceFieldSelector,
    f: &FieldValues,
) -> Result<String, String> {
    const NANO: u64 = 1_000_000_000;
    let res = c.resources.as_ref();
    let (kind, name) = rf
        .resource
        .split_once('.')
        .ok_or_else(|| format!("resourceFieldRef: unsupported resource {:?}", rf.resource))?;
    let map = match kind {
        "limits" => res.and_then(|r| r.limits.as_ref()),
        "requests" => res.and_then(|r| r.requests.as_ref()),
        _ => {
            return Err(format!(
                "resourceFieldRef: unsupported resource {:?}",
                rf.resource
            ));
        }
    };
    let set = map.and_then(|m| m.get(name)).map(|q| q.0.clone());
    // In nano-units (of cores or bytes): exact for these magnitudes.
    let value: i128 = match (set, kind, name) {
        (Some(q), _, _) => keelson_rules::quantity::nano_value(&q).map_err(|e| e.to_string())?,
        (None, "limits", "cpu") => f.node_cpu_millis as i128 * 1_000_000,
        (None, "limits", "memory") => f.node_memory_bytes as i128 * NANO as i128,
        (None, _, "cpu" | "memory" | "ephemeral-storage") => 0,
        (None, _, other) => {
            return Err(format!("resourceFieldRef: unsupported resource {other:?}"));
        }
    };
    let divisor = rf.divisor.as_ref().map_or("1", |d| d.0.as_str());
    let mut d = keelson_rules::quantity::nano_value(divisor).map_err(|e| e.to_string())?;
    if d == 0 {
        // An unset Quantity reaches us as "0" from Go clients: the kubelet
        // divides by 1 then.
        d = NANO as i128;
    }
    if d < 0 {
        return Err(format!(
            "resourceFieldRef: divisor {divisor:?} must be positive"
        ));
    }
    Ok(((value + d - 1) / d).to_string())
}

/// What a container's environment reads besides the pod and the image.
#[derive(Debug, Clone, Copy)]
pub struct EnvSources<'a> {
    /// ConfigMaps, Secrets and field values.
    pub objects: &'a super::volumes::Sources,
    /// Services for the link variables: those of the pod's namespace, and
    /// the `kubernetes` Service of `default`.
    pub services: &'a [k8s_openapi::api::core::v1::Service],
}

/// Docker-link-style variables of one Service (the kubelet's
/// `FOO_SERVICE_HOST`, `FOO_SERVICE_PORT[_NAME]`, `FOO_PORT...`); nothing
/// for headless or IP-less Services.
pub fn service_link_env(svc: &k8s_openapi::api::core::v1::Service) -> Vec<(String, String)> {
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    let Some(ip) = spec
        .cluster_ip
        .as_deref()
        .filter(|ip| !ip.is_empty() && *ip != "None")
    else {
        return Vec::new();
    };
    let name = svc
        .metadata
        .name
        .as_deref()
        .unwrap_or_default()
        .to_uppercase()
        .replace('-', "_");
    let ports = spec.ports.as_deref().unwrap_or_default();
    let Some(first) = ports.first() else {
        return Vec::new();
    };
    let mut out = vec![
        (format!("{name}_SERVICE_HOST"), ip.to_string()),
        (format!("{name}_SERVICE_PORT"), first.port.to_string()),
    ];
    for p in ports {
        if let Some(pn) = p.name.as_deref().filter(|n| !n.is_empty()) {
            out.push((
                format!(
                    "{name}_SERVICE_PORT_{}",
                    pn.to_uppercase().replace('-', "_")
                ),
                p.port.to_string(),
            ));
        }
    }
    let proto = |p: &k8s_openapi::api::core::v1::ServicePort| {
        p.protocol.clone().unwrap_or_else(|| "TCP".into())
    };
    out.push((
        format!("{name}_PORT"),
        format!("{}://{ip}:{}", proto(first).to_lowercase(), first.port),
    ));
    for p in ports {
        let pr = proto(p);
        let base = format!("{name}_PORT_{}_{}", p.port, pr.to_uppercase());
        out.push((
            base.clone(),
            format!("{}://{ip}:{}", pr.to_lowercase(), p.port),
        ));
        out.push((format!("{base}_PROTO"), pr.to_lowercase()));
        out.push((format!("{base}_PORT"), p.port.to_string()));
        out.push((format!("{base}_ADDR"), ip.to_string()));
    }
    out
}

/// The container's environment as the kubelet builds it: the image's env;
/// the Service variables (`KUBERNETES_SERVICE_*` always, other Services of
/// the namespace with `enableServiceLinks`, the default); `envFrom` in
/// order (with `prefix`; keys that are not valid names are skipped); then
/// `env` in order (later wins), `$(VAR)` expanded against what came before.
pub fn env(
    pod: &Pod,
    c: &Container,
    image: &ImageConfig,
    src: EnvSources<'_>,
) -> Result<Vec<String>, SpecError> {
    let mut order: Vec<String> = Vec::new();
    let mut vals: BTreeMap<String, String> = BTreeMap::new();
    fn set(order: &mut Vec<String>, vals: &mut BTreeMap<String, String>, k: String, v: String) {
        if !vals.contains_key(&k) {
            order.push(k.clone());
        }
        vals.insert(k, v);
    }
    for kv in &image.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        set(&mut order, &mut vals, k.to_string(), v.to_string());
    }
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    let mut services: Vec<&k8s_openapi::api::core::v1::Service> = src
        .services
        .iter()
        .filter(|s| {
            let sns = s.metadata.namespace.as_deref().unwrap_or("default");
            let sname = s.metadata.name.as_deref().unwrap_or_default();
            (links && sns == ns) || (sns == "default" && sname == "kubernetes")
        })
        .collect();
    services.sort_by_key(|s| s.metadata.name.clone());
    for svc in services {
        for (k, v) in service_link_env(svc) {
            set(&mut order, &mut vals, k, v);
        }
    }
    let err = |var: &str, reason: String| SpecError::Env {
        container: c.name.clone(),
        var: var.to_string(),
        reason,
    };
    let objects = src.objects;
    let cm_data = |name: &str| {
        objects
            .config_maps
            .get(name)
            .and_then(|o| o.as_ref())
            .map(|cm| cm.data.clone().unwrap_or_default())
    };
    let secret_data = |name: &str| {
        objects.secrets.get(name).and_then(|o| o.as_ref()).map(|s| {
            s.data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
                .collect::<BTreeMap<_, _>>()
        })
    };
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (what, data, optional) = if let Some(r) = &from.config_map_ref {
            (
                format!("configmap {}", r.name),
                cm_data(&r.name),
                r.optional,
            )
        } else if let Some(r) = &from.secret_ref {
            (
                format!("secret {}", r.name),
                secret_data(&r.name),
                r.optional,
            )
        } else {
            continue;
        };
        match data {
            Some(data) => {
                for (k, v) in data {
                    let name = format!("{prefix}{k}");
                    if valid_env_name(&name) {
                        set(&mut order, &mut vals, name, v);
                    }
                }
            }
            None if optional == Some(true) => {}
            None => return Err(err("envFrom", format!("{what} not found"))),
        }
    }
    for e in c.env.iter().flatten() {
        let v = if let Some(vf) = &e.value_from {
            if let Some(fr) = &vf.field_ref {
                field_ref(pod, &fr.field_path, &objects.fields).ok_or_else(|| {
                    err(&e.name, format!("unsupported fieldPath {}", fr.field_path))
                })?
            } else if let Some(rf) = &vf.resource_field_ref {
                let target = match rf.container_name.as_deref().filter(|n| !n.is_empty()) {
                    None => c,
                    Some(n) => pod
                        .spec
                        .iter()
                        .flat_map(|s| {
                            s.containers
                                .iter()
                                .chain(s.init_containers.iter().flatten())
                        })
                        .find(|x| x.name == n)
                        .ok_or_else(|| err(&e.name, format!("no container {n:?}")))?,
                };
                resource_field(target, rf, &objects.fields).map_err(|r| err(&e.name, r))?
            } else if let Some(r) = &vf.config_map_key_ref {
                match cm_data(&r.name).as_ref().and_then(|d| d.get(&r.key)) {
                    Some(v) => v.clone(),
                    None if r.optional == Some(true) => continue,
                    None => {
                        return Err(err(
                            &e.name,
                            format!("configmap {} key {} not found", r.name, r.key),
                        ));
                    }
                }
            } else if let Some(r) = &vf.secret_key_ref {
                match secret_data(&r.name).as_ref().and_then(|d| d.get(&r.key)) {
                    Some(v) => v.clone(),
                    None if r.optional == Some(true) => continue,
                    None => {
                        return Err(err(
                            &e.name,
                            format!("secret {} key {} not found", r.name, r.key),
                        ));
                    }
                }
            } else {
                return Err(err(&e.name, "unsupported valueFrom".into()));
            }
        } else {
            expand(e.value.as_deref().unwrap_or(""), &vals)
        };
        set(&mut order, &mut vals, e.name.clone(), v);
    }
    Ok(order
        .iter()
        .map(|k| format!("{k}={}", vals.get(k).cloned().unwrap_or_default()))
        .collect())
}

/// A name `envFrom` may define (C identifier-ish, as the API validates:
/// letters, digits, `_`, `-`, `.`, not starting with a digit).
fn valid_env_name(n: &str) -> bool {
    !n.is_empty()
        && !n.starts_with(|c: char| c.is_ascii_digit())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

/// The env as a map (for `$(VAR)` in command and args).
pub fn env_map(env: &[String]) -> BTreeMap<String, String> {
    env.iter()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// uid and gid: securityContext (container over pod) over the image User.
/// A user name is looked up with `passwd(name) -> (uid, gid)`.
pub fn user(
    pod: &Pod,
    c: &Container,
    image: &ImageConfig,
    passwd: &dyn Fn(&str) -> Option<(u32, u32)>,
) -> (u32, u32) {
    let (mut uid, mut gid) = (0u32, 0u32);
    if let Some(u) = image.user.as_deref().filter(|u| !u.is_empty()) {
        let (us, gs) = u.split_once(':').unwrap_or((u, ""));
        match us.parse::<u32>() {
            Ok(n) => uid = n,
            Err(_) => {
                if let Some((pu, pg)) = passwd(us) {
                    uid = pu;
                    gid = pg;
                }
            }
        }
        if let Ok(n) = gs.parse::<u32>() {
            gid = n;
        }
    }
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let csc = c.security_context.as_ref();
    if let Some(u) = csc
        .and_then(|s| s.run_as_user)
        .or(psc.and_then(|s| s.run_as_user))
    {
        uid = u as u32;
    }
    if let Some(g) = csc
        .and_then(|s| s.run_as_group)
        .or(psc.and_then(|s| s.run_as_group))
    {
        gid = g as u32;
    }
    (uid, gid)
}

/// Looks a user name up in /etc/passwd text.
pub fn passwd_lookup(text: &str, name: &str) -> Option<(u32, u32)> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() >= 4 && f[0] == name {
            Some((f[2].parse().ok()?, f[3].parse().ok()?))
        } else {
            None
        }
    })
}

/// The /etc/hosts a pod gets.
pub fn hosts_file(pod_ip: Option<&str>, hostname: &str) -> String {
    let mut s = String::from(
        "# Kubernetes-managed hosts file (keelson).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    if let Some(ip) = pod_ip {
        s.push_str(&format!("{ip}\t{hostname}\n"));
    }
    s
}

/// The pod's fully qualified name when it has one (`hostname.subdomain.
/// namespace.svc.domain`, only with a subdomain), as the kubelet names it.
pub fn pod_fqdn(pod: &Pod, hostname: &str, domain: &str) -> Option<String> {
    let sub = pod
        .spec
        .as_ref()?
        .subdomain
        .as_deref()
        .filter(|s| !s.is_empty())?;
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    Some(format!("{hostname}.{sub}.{ns}.svc.{domain}"))
}

/// The pod's hostname: `spec.hostname` or its name (63 characters at most);
/// with `setHostnameAsFQDN` and a subdomain, its FQDN (64 at most).
pub fn pod_hostname(pod: &Pod, domain: &str) -> String {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let short: String = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .unwrap_or(name)
        .chars()
        .take(63)
        .collect();
    let fqdn_wanted = pod
        .spec
        .as_ref()
        .and_then(|s| s.set_hostname_as_fqdn)
        .unwrap_or(false);
    match pod_fqdn(pod, &short, domain) {
        Some(f) if fqdn_wanted => f.chars().take(64).collect(),
        _ => short,
    }
}

/// The pod's /etc/hosts as the kubelet writes it: the managed header and
/// the pod's own line (FQDN first when it has one) for a pod network; the
/// node's /etc/hosts (`node_hosts`) for a host-network pod; then the
/// `hostAliases`.
pub fn pod_hosts_file(
    pod: &Pod,
    pod_ip: Option<&str>,
    hostname: &str,
    domain: &str,
    node_hosts: Option<&str>,
) -> String {
    let short = hostname.split('.').next().unwrap_or(hostname);
    let mut s = match node_hosts {
        Some(h) => {
            let mut h = h.to_string();
            if !h.ends_with('\n') && !h.is_empty() {
                h.push('\n');
            }
            h
        }
        None => match pod_fqdn(pod, short, domain) {
            Some(fqdn) => hosts_file(pod_ip, &format!("{fqdn}\t{short}")),
            None => hosts_file(pod_ip, short),
        },
    };
    let aliases = pod.spec.as_ref().and_then(|s| s.host_aliases.as_ref());
    if let Some(aliases) = aliases.filter(|a| !a.is_empty()) {
        s.push_str("\n# Entries added by HostAliases.\n");
        for a in aliases {
            let names = a.hostnames.as_deref().unwrap_or_default().join("\t");
            s.push_str(&format!("{}\t{names}\n", a.ip));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::super::volumes::Sources;
    use super::*;
    use k8s_openapi::api::core::v1::{ConfigMap, Service};
    use serde_json::json;

    fn container(v: serde_json::Value) -> Container {
        serde_json::from_value(v).unwrap()
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/ep".into()],
            cmd: vec!["c1".into(), "c2".into()],
            env: vec!["PATH=/bin".into(), "A=img".into()],
            working_dir: Some("/w".into()),
            user: Some("1000:2000".into()),
        }
    }

    #[test]
    fn args_follow_kubernetes_rules() {
        let e = BTreeMap::from([("X".to_string(), "x".to_string())]);
        for (c, want) in [
            (json!({"name":"a"}), vec!["/ep", "c1", "c2"]),
            (json!({"name":"a","command":["/bin/sh"]}), vec!["/bin/sh"]),
            (json!({"name":"a","args":["z"]}), vec!["/ep", "z"]),
            (
                json!({"name":"a","command":["sh"],"args":["-c","$(X) $$(X) $(Y)"]}),
                vec!["sh", "-c", "x $(X) $(Y)"],
            ),
        ] {
            assert_eq!(
                resolve_args(&container(c.clone()), &image(), &e).unwrap(),
                want,
                "{c}"
            );
        }
        let empty = ImageConfig::default();
        assert_eq!(
            resolve_args(&container(json!({"name":"a"})), &empty, &e),
            Err(SpecError::NoCommand("a".into()))
        );
    }

    #[test]
    fn env_merges_and_resolves_field_refs() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"app": "web"}},
            "spec": {"containers": []}
        }))
        .unwrap();
        let c = container(json!({"name":"a","env":[
            {"name":"A","value":"mine"},
            {"name":"B","value":"$(A)-b"},
            {"name":"POD","valueFrom":{"fieldRef":{"fieldPath":"metadata.name"}}},
            {"name":"IP","valueFrom":{"fieldRef":{"fieldPath":"status.podIP"}}},
            {"name":"APP","valueFrom":{"fieldRef":{"fieldPath":"metadata.labels['app']"}}},
            {"name":"CM","valueFrom":{"configMapKeyRef":{"name":"cm","key":"k"}}},
        ]}));
        let mut objects = Sources {
            fields: FieldValues {
                pod_ip: "10.0.0.9".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        let cm = ConfigMap {
            data: Some([("k".to_string(), "configmap/cm/k".to_string())].into()),
            ..Default::default()
        };
        objects.config_maps.insert("cm".into(), Some(cm));
        let src = EnvSources {
            objects: &objects,
            services: &[],
        };
        let got = env(&pod, &c, &image(), src).unwrap();
        assert_eq!(
            got,
            vec![
                "PATH=/bin",
                "A=mine",
                "B=mine-b",
                "POD=p",
                "IP=10.0.0.9",
                "APP=web",
                "CM=configmap/cm/k"
            ]
        );
        let bad = container(
            json!({"name":"a","env":[{"name":"S","valueFrom":{"secretKeyRef":{"name":"s","key":"k"}}}]}),
        );
        assert!(
            env(&pod, &bad, &image(), src)
                .unwrap_err()
                .to_string()
                .contains("secret s key k not found")
        );
    }

    #[test]
    fn env_from_resource_fields_and_service_links() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"containers": [{"name": "a",
                "resources": {"limits": {"memory": "128Mi"}, "requests": {"cpu": "250m"}}}]}
        }))
        .unwrap();
        let c = container(json!({"name":"a",
        "resources": {"limits": {"memory": "128Mi"}, "requests": {"cpu": "250m"}},
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"},
                    {"secretRef": {"name": "gone", "optional": true}}],
        "env": [
            {"name":"MEM","valueFrom":{"resourceFieldRef":{"resource":"limits.memory","divisor":"1Mi"}}},
            {"name":"CPU_REQ","valueFrom":{"resourceFieldRef":{"resource":"requests.cpu","divisor":"1m"}}},
            {"name":"CPU_LIM","valueFrom":{"resourceFieldRef":{"resource":"limits.cpu"}}},
            // A Go client's unset divisor arrives as "0": divided by 1.
            {"name":"MEM_ZERO","valueFrom":{"resourceFieldRef":{"resource":"limits.memory","divisor":"0"}}},
            {"name":"CFG_A","value":"$(CFG_A)!"},
        ]}));
        let mut objects = Sources {
            fields: FieldValues {
                node_cpu_millis: 2000,
                ..Default::default()
            },
            ..Default::default()
        };
        let cm = ConfigMap {
            data: Some(
                [("A", "1"), ("9ok", "x"), ("bad key", "y")]
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .into(),
            ),
            ..Default::default()
        };
        objects.config_maps.insert("cfg".into(), Some(cm));
        objects.secrets.insert("gone".into(), None);
        let svc = |ns: &str, name: &str, ip: &str| -> Service {
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns},
                "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}))
            .unwrap()
        };
        let services = [
            svc("default", "kubernetes", "10.96.0.1"),
            svc("ns", "web-api", "10.96.0.7"),
            svc("ns", "headless", "None"),
            svc("other", "elsewhere", "10.96.0.9"),
        ];
        let src = EnvSources {
            objects: &objects,
            services: &services,
        };
        let got = env_map(&env(&pod, &c, &image(), src).unwrap());
        assert_eq!(got["CFG_A"], "1!");
        // The name checked is the prefixed one (the kubelet's rule).
        assert_eq!(got["CFG_9ok"], "x");
        assert!(!got.keys().any(|k| k.contains(' ')));
        assert_eq!(got["MEM"], "128");
        assert_eq!(got["CPU_REQ"], "250");
        // No CPU limit: the node's allocatable, in whole cores rounded up.
        assert_eq!(got["CPU_LIM"], "2");
        assert_eq!(got["MEM_ZERO"], (128 * 1024 * 1024).to_string());
        assert_eq!(got["KUBERNETES_SERVICE_HOST"], "10.96.0.1");
        assert_eq!(got["KUBERNETES_SERVICE_PORT"], "80");
        assert_eq!(got["WEB_API_SERVICE_HOST"], "10.96.0.7");
        assert_eq!(got["WEB_API_SERVICE_PORT_HTTP"], "80");
        assert_eq!(got["WEB_API_PORT"], "tcp://10.96.0.7:80");
        assert_eq!(got["WEB_API_PORT_80_TCP_ADDR"], "10.96.0.7");
        assert!(!got.contains_key("HEADLESS_SERVICE_HOST"));
        assert!(!got.contains_key("ELSEWHERE_SERVICE_HOST"));
        // enableServiceLinks: false keeps only the API server's.
        let mut quiet = pod.clone();
        quiet.spec.as_mut().unwrap().enable_service_links = Some(false);
        let got = env_map(&env(&quiet, &c, &image(), src).unwrap());
        assert!(got.contains_key("KUBERNETES_SERVICE_HOST"));
        assert!(!got.contains_key("WEB_API_SERVICE_HOST"));
        // A required envFrom source that is missing is an error naming it.
        let mut strict = c.clone();
        strict.env_from.as_mut().unwrap()[1]
            .secret_ref
            .as_mut()
            .unwrap()
            .optional = None;
        let e = env(&pod, &strict, &image(), src).unwrap_err().to_string();
        assert!(e.contains("secret gone not found"), "{e}");
    }

    #[test]
    fn user_from_image_and_security_context() {
        let pod: Pod = serde_json::from_value(
            json!({"metadata":{},"spec":{"containers":[],"securityContext":{"runAsUser":5}}}),
        )
        .unwrap();
        let nop = |_: &str| None;
        assert_eq!(
            user(&pod, &container(json!({"name":"a"})), &image(), &nop),
            (5, 2000)
        );
        let c = container(json!({"name":"a","securityContext":{"runAsUser":7,"runAsGroup":8}}));
        assert_eq!(user(&pod, &c, &image(), &nop), (7, 8));
        let img = ImageConfig {
            user: Some("nobody".into()),
            ..Default::default()
        };
        let pw = |n: &str| {
            passwd_lookup(
                "root:x:0:0::/:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
                n,
            )
        };
        let plain: Pod =
            serde_json::from_value(json!({"metadata":{},"spec":{"containers":[]}})).unwrap();
        assert_eq!(
            user(&plain, &container(json!({"name":"a"})), &img, &pw),
            (65534, 65534)
        );
    }

    #[test]
    fn hosts_aliases_fqdn_and_host_network() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web-0", "namespace": "shop"},
            "spec": {"containers": [], "subdomain": "web", "setHostnameAsFQDN": true,
                     "hostAliases": [{"ip": "10.9.9.9", "hostnames": ["db", "db.local"]}]}
        }))
        .unwrap();
        let host = pod_hostname(&pod, "cluster.local");
        assert_eq!(host, "web-0.web.shop.svc.cluster.local");
        let h = pod_hosts_file(&pod, Some("10.1.0.3"), &host, "cluster.local", None);
        assert!(
            h.contains("10.1.0.3\tweb-0.web.shop.svc.cluster.local\tweb-0\n"),
            "{h}"
        );
        assert!(
            h.ends_with("# Entries added by HostAliases.\n10.9.9.9\tdb\tdb.local\n"),
            "{h}"
        );
        // A host-network pod starts from the node's file.
        let h = pod_hosts_file(&pod, None, &host, "cluster.local", Some("127.0.0.1 node"));
        assert!(h.starts_with("127.0.0.1 node\n"), "{h}");
        assert!(h.contains("10.9.9.9\tdb"));
        // Without setHostnameAsFQDN the hostname stays short.
        let mut short = pod.clone();
        short.spec.as_mut().unwrap().set_hostname_as_fqdn = None;
        assert_eq!(pod_hostname(&short, "cluster.local"), "web-0");
    }

    #[test]
    fn hosts_file_names_the_pod() {
        let h = hosts_file(Some("10.1.0.3"), "web-0");
        assert!(h.contains("127.0.0.1\tlocalhost"));
        assert!(h.ends_with("10.1.0.3\tweb-0\n"));
    }
}

/// The cluster DNS a pod's resolv.conf points at (kubelet's --cluster-dns
/// and --cluster-domain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDns {
    pub server: std::net::IpAddr,
    pub domain: String,
}

/// A pod's /etc/resolv.conf from its dnsPolicy and dnsConfig (pure):
/// ClusterFirst (the default) points at the cluster DNS with the usual
/// search domains and `ndots:5`; ClusterFirstWithHostNet does the same for
/// host-network pods, which ClusterFirst gives the node's file; Default is
/// the node's file; None is only what dnsConfig says. dnsConfig's
/// nameservers, searches and options are merged in as the kubelet does.
pub fn resolv_conf(
    pod: &k8s_openapi::api::core::v1::Pod,
    host: &str,
    cluster: Option<&ClusterDns>,
) -> String {
    let spec = pod.spec.as_ref();
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let host_lines = |key: &str| -> Vec<String> {
        host.lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some(key)).then(|| w.map(str::to_string).collect::<Vec<_>>())
            })
            .flatten()
            .collect()
    };
    let (mut servers, mut searches, mut options): (Vec<String>, Vec<String>, Vec<String>) =
        match (policy, cluster) {
            ("ClusterFirst", Some(c)) if !host_network => cluster_first(ns, c, &host_lines),
            ("ClusterFirstWithHostNet", Some(c)) => cluster_first(ns, c, &host_lines),
            ("None", _) => (Vec::new(), Vec::new(), Vec::new()),
            _ => (
                host_lines("nameserver"),
                host_lines("search"),
                host_lines("options"),
            ),
        };
    if let Some(cfg) = spec.and_then(|s| s.dns_config.as_ref()) {
        servers.extend(cfg.nameservers.iter().flatten().cloned());
        searches.extend(cfg.searches.iter().flatten().cloned());
        for o in cfg.options.iter().flatten() {
            let Some(name) = &o.name else { continue };
            options.retain(|x| x.split(':').next() != Some(name.as_str()));
            options.push(match &o.value {
                Some(v) => format!("{name}:{v}"),
                None => name.clone(),
            });
        }
    }
    let mut seen = std::collections::HashSet::new();
    searches.retain(|s| seen.insert(s.clone()));
    servers.truncate(3);
    searches.truncate(32);
    let mut out = String::new();
    if !searches.is_empty() {
        out.push_str(&format!("search {}\n", searches.join(" ")));
    }
    for s in &servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

type ResolvParts = (Vec<String>, Vec<String>, Vec<String>);

fn cluster_first(
    ns: &str,
    c: &ClusterDns,
    host_lines: &dyn Fn(&str) -> Vec<String>,
) -> ResolvParts {
    let d = &c.domain;
    let mut searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()];
    searches.extend(host_lines("search"));
    (
        vec![c.server.to_string()],
        searches,
        vec!["ndots:5".to_string()],
    )
}

#[cfg(test)]
mod resolv_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resolv_conf_per_dns_policy() {
        let host = "search corp.example\nnameserver 10.0.0.2\noptions edns0\n";
        let dns = ClusterDns {
            server: "169.254.20.10".parse().unwrap(),
            domain: "cluster.local".into(),
        };
        let pod = |spec: serde_json::Value| -> k8s_openapi::api::core::v1::Pod {
            serde_json::from_value(
                json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": spec}),
            )
            .unwrap()
        };
        let cases = [
            (
                json!({}),
                Some(&dns),
                "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example\nnameserver 169.254.20.10\noptions ndots:5\n",
            ),
            // No cluster DNS configured: the node's file.
            (
                json!({}),
                None,
                "search corp.example\nnameserver 10.0.0.2\noptions edns0\n",
            ),
            (
                json!({"dnsPolicy": "Default"}),
                Some(&dns),
                "search corp.example\nnameserver 10.0.0.2\noptions edns0\n",
            ),
            // Host network with ClusterFirst: the node's file.
            (
                json!({"hostNetwork": true}),
                Some(&dns),
                "search corp.example\nnameserver 10.0.0.2\noptions edns0\n",
            ),
            (
                json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}),
                Some(&dns),
                "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example\nnameserver 169.254.20.10\noptions ndots:5\n",
            ),
            (
                json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["1.1.1.1"], "searches": ["a.b"], "options": [{"name": "ndots", "value": "2"}, {"name": "rotate"}]}}),
                Some(&dns),
                "search a.b\nnameserver 1.1.1.1\noptions ndots:2 rotate\n",
            ),
            // dnsConfig options override the defaults by name.
            (
                json!({"dnsConfig": {"options": [{"name": "ndots", "value": "1"}]}}),
                Some(&dns),
                "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example\nnameserver 169.254.20.10\noptions ndots:1\n",
            ),
        ];
        for (spec, cluster, want) in cases {
            assert_eq!(
                resolv_conf(&pod(spec.clone()), host, cluster),
                want,
                "{spec}"
            );
        }
    }
}
