//! The six verbs, executed: environment and stdin in, JSON out.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::config::{self, Attachment, Command, Env, GATEWAY, NetConf, SUPPORTED_VERSIONS};
use crate::error::{CniError, code};
use crate::ipam::{IpamError, Locked, Store};
use crate::result::{self, Attached, Iface};
use keelson_host::rtnetlink::{NlError, RTPROT_KEELSON_CNI, Route, Socket, c};

/// How long an operation waits for the network's IPAM lock before "try again later".
const LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// Prefix of the alias set on every host-side veth: "keelson-cni NET CID:IFNAME".
pub const ALIAS_PREFIX: &str = "keelson-cni ";

/// Runs one plugin invocation. `Ok(Some(v))` prints `v`; errors carry the
/// cniVersion to answer with.
pub fn run(
    get_env: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> Result<Option<Value>, (CniError, String)> {
    run_with(get_env, stdin, None)
}

/// [`run`], with DEL handing the veth's final teardown to `link_helper`
/// (this binary, run as `keelson-cni --delete-link INDEX`; see
/// [`delete_link_helper`]).
pub fn run_with(
    get_env: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
    link_helper: Option<&Path>,
) -> Result<Option<Value>, (CniError, String)> {
    let fallback = || {
        config::parse_version(stdin)
            .ok()
            .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
            .unwrap_or_else(|| "1.1.0".into())
    };
    let env = Env::parse(get_env).map_err(|e| (e, fallback()))?;
    if env.command == Command::Version {
        return Ok(Some(json!({
            "cniVersion": fallback(),
            "supportedVersions": SUPPORTED_VERSIONS,
        })));
    }
    let conf = config::parse(stdin, env.command).map_err(|e| (e, fallback()))?;
    let version = conf.cni_version.clone();
    let out = match env.command {
        Command::Add => add(&env, &conf).map(Some),
        Command::Del => del(&env, &conf, link_helper).map(|()| None),
        Command::Check => check(&env, &conf).map(|()| None),
        Command::Status => status(&conf).map(|()| None),
        Command::Gc => gc(&conf).map(|()| None),
        Command::Version => unreachable!("handled above"),
    };
    out.map_err(|e| (e, version))
}

impl From<NlError> for CniError {
    fn from(e: NlError) -> Self {
        CniError::internal(e.to_string())
    }
}

impl From<IpamError> for CniError {
    fn from(e: IpamError) -> Self {
        let code = match e {
            IpamError::Exhausted { .. } => code::RANGE_EXHAUSTED,
            IpamError::Locked { .. } => code::TRY_AGAIN,
            IpamError::Io { .. } => code::INTERNAL,
        };
        CniError::new(code, e.to_string())
    }
}

/// Opens CNI_NETNS and checks that it is a network namespace.
fn open_netns(path: &Path) -> Result<File, CniError> {
    let f = File::open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            CniError::new(
                code::CONTAINER_UNKNOWN,
                format!("netns {} does not exist", path.display()),
            )
        } else {
            CniError::new(
                code::INVALID_ENV,
                format!("open CNI_NETNS {}: {e}", path.display()),
            )
        }
    })?;
    let is_ns = nix::sys::statfs::fstatfs(&f)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC);
    if !is_ns {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_NETNS {} is not a network namespace", path.display()),
        ));
    }
    Ok(f)
}

/// Enters `netns`, sets `sysctls` there and returns a netlink socket bound to
/// that namespace, then returns to the original namespace. The plugin is
/// single-threaded, so this runs on its one thread
/// ([`keelson_host::netns::in_netns_here`]): a helper thread's exit
/// measured ~4 ms here, more than the whole rest of an ADD.
fn container_socket(
    netns: &File,
    path: &Path,
    sysctls: &BTreeMap<String, String>,
) -> Result<Socket, CniError> {
    keelson_host::netns::in_netns_here(netns, path, || {
        for (k, v) in sysctls {
            write_sysctl(k, v).map_err(|e| {
                CniError::internal(format!(
                    "set sysctl {k}={v} in netns {}: {e}",
                    path.display()
                ))
            })?;
        }
        Ok(Socket::new()?)
    })
    .map_err(|e| match e {
        keelson_host::netns::NetnsError::Enter { .. } => {
            CniError::new(code::INVALID_ENV, e.to_string())
        }
        e => CniError::internal(e.to_string()),
    })?
}

fn write_sysctl(key: &str, value: &str) -> io::Result<()> {
    let path = Path::new("/proc/sys").join(key.replace('.', "/"));
    std::fs::write(path, value)
}

/// Turns on IPv4 forwarding in the host namespace unless it already is.
fn ensure_forwarding() -> Result<(), CniError> {
    let p = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(p)
        .map(|s| s.trim() == "1")
        .unwrap_or(false)
    {
        return Ok(());
    }
    std::fs::write(p, "1")
        .map_err(|e| CniError::internal(format!("enable IPv4 forwarding ({p}): {e}")))
}

/// Reverse-order rollback actions, run on drop unless disarmed.
struct Undo<'a>(Vec<Box<dyn FnOnce() + 'a>>);

impl<'a> Undo<'a> {
    fn push(&mut self, f: impl FnOnce() + 'a) {
        self.0.push(Box::new(f));
    }
    fn disarm(mut self) {
        self.0.clear();
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        while let Some(f) = self.0.pop() {
            f();
        }
    }
}

fn alias(conf: &NetConf, a: &Attachment) -> String {
    host_alias(&conf.name, a)
}

/// Parses a host veth alias into (network, attachment).
pub fn parse_alias(alias: &str) -> Option<(&str, Attachment)> {
    let rest = alias.strip_prefix(ALIAS_PREFIX)?;
    let (net, key) = rest.rsplit_once(' ')?;
    Some((net, Attachment::from_key(key)?))
}

fn add(env: &Env, conf: &NetConf) -> Result<Value, CniError> {
    let att = env.attachment.as_ref().expect("ADD has an attachment");
    let netns_path = env.netns.as_deref().expect("ADD has a netns");
    let netns = open_netns(netns_path)?;
    let host = Socket::new()?;
    let store = Store::new(conf.state_dir(), conf.subnet);
    let locked = store.lock(LOCK_TIMEOUT)?;
    let mut undo = Undo(Vec::new());

    let (ip, newly) = locked.allocate(att)?;
    if newly {
        let l = &locked;
        undo.push(move || {
            let _ = l.release(att);
        });
    }
    ensure_forwarding()?;

    // A host veth left by an earlier, interrupted ADD of this attachment goes
    // first (its peer goes with it).
    let host_name = att.host_ifname();
    host.delete_link(&host_name)?;
    host.create_veth(&host_name, &att.ifname, conf.mtu, &netns)
        .map_err(|e| {
            if e.errno == nix::errno::Errno::EEXIST {
                CniError::internal(format!(
                    "{e}: interface {} already exists in netns {}",
                    att.ifname,
                    netns_path.display()
                ))
            } else {
                e.into()
            }
        })?;
    {
        let (h, n) = (&host, host_name.clone());
        undo.push(move || {
            let _ = h.delete_link(&n);
        });
    }
    let hl = host
        .link_by_name(&host_name)?
        .ok_or_else(|| CniError::internal(format!("veth {host_name} vanished after creation")))?;
    host.set_up(hl.index, &host_name, Some(&alias(conf, att)))?;
    host.add_addr(hl.index, &host_name, GATEWAY, 32)?;
    host.replace_route(&Route {
        dst: ip,
        dst_len: 32,
        gateway: None,
        oif: Some(hl.index),
        protocol: RTPROT_KEELSON_CNI,
        scope: c::RT_SCOPE_LINK,
        ..Default::default()
    })?;

    let pod = container_socket(&netns, netns_path, &conf.sysctls)?;
    let pl = pod.link_by_name(&att.ifname)?.ok_or_else(|| {
        CniError::internal(format!(
            "veth peer {} not found in netns {}",
            att.ifname,
            netns_path.display()
        ))
    })?;
    pod.set_up(pl.index, &att.ifname, None)?;
    pod.add_addr(pl.index, &att.ifname, ip, 32)?;
    pod.replace_route(&Route {
        dst: std::net::Ipv4Addr::UNSPECIFIED,
        dst_len: 0,
        gateway: Some(GATEWAY),
        oif: Some(pl.index),
        protocol: c::RTPROT_STATIC,
        scope: c::RT_SCOPE_UNIVERSE,
        ..Default::default()
    })?;

    undo.disarm();
    drop(locked);
    Ok(result::render(
        &conf.cni_version,
        conf.prev_result.as_ref(),
        &Attached {
            host: Iface {
                name: host_name,
                mac: hl.mac_string(),
                mtu: hl.mtu,
                sandbox: None,
            },
            pod: Iface {
                name: att.ifname.clone(),
                mac: pl.mac_string(),
                mtu: pl.mtu,
                sandbox: Some(netns_path.display().to_string()),
            },
            ip,
        },
    ))
}

fn del(env: &Env, conf: &NetConf, link_helper: Option<&Path>) -> Result<(), CniError> {
    let att = env.attachment.as_ref().expect("DEL has an attachment");
    let host = Socket::new()?;
    let store = Store::new(conf.state_dir(), conf.subnet);
    if !store.dir().exists() {
        // Nothing was ever allocated in this network on this node; the veth
        // (if any) still goes.
        delete_veth(&host, &att.host_ifname(), link_helper)?;
        return Ok(());
    }
    let locked = store.lock(LOCK_TIMEOUT)?;
    // Interface first, address second: an address is never free while an
    // interface still routes it.
    delete_veth(&host, &att.host_ifname(), link_helper)?;
    locked.release(att)?;
    Ok(())
}

/// How long DEL waits for a helper to make the veth disappear before
/// deleting it itself.
const HELPER_WAIT: Duration = Duration::from_secs(5);

/// Deletes the veth `name` (both ends). With a helper, returns as soon as
/// the link is gone from the namespace (the kernel unlists it, sends
/// RTM_DELLINK and drops its routes first) and leaves the rest of the
/// kernel's teardown, an RCU barrier of 15-20 ms on a small VM that every
/// interface deletion waits for (`netdev_run_todo`), to the helper process,
/// instead of making the runtime wait for it. Without a helper, or when the
/// helper cannot run or is slow, deletes it here and waits.
fn delete_veth(host: &Socket, name: &str, link_helper: Option<&Path>) -> Result<(), CniError> {
    let Some(helper) = link_helper else {
        host.delete_link(name)?;
        return Ok(());
    };
    let Some(link) = host.link_by_name(name)? else {
        return Ok(());
    };
    let spawned = std::process::Command::new(helper)
        .arg("--delete-link")
        .arg(link.index.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Ok(child) = spawned {
        // Not waited for: its parent's exit hands it to init (or the
        // nearest subreaper), which reaps it.
        drop(child);
        let deadline = std::time::Instant::now() + HELPER_WAIT;
        let mut pause = Duration::from_micros(50);
        while std::time::Instant::now() < deadline {
            if !host.link_index_exists(link.index)? {
                return Ok(());
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(2));
        }
    }
    host.delete_link_index(link.index)?;
    Ok(())
}

/// The `--delete-link INDEX` helper: deletes the link and waits for the
/// kernel to finish with it. Exit code 0 when it is gone.
pub fn delete_link_helper(index: &str) -> i32 {
    let Ok(index) = index.parse::<u32>() else {
        return 2;
    };
    match Socket::new().and_then(|s| s.delete_link_index(index)) {
        Ok(_) => 0,
        Err(_) => 1,
    }
}

fn check_failed(msg: String) -> CniError {
    CniError::new(code::CHECK_FAILED, msg)
}

fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let att = env.attachment.as_ref().expect("CHECK has an attachment");
    let netns_path = env.netns.as_deref().expect("CHECK has a netns");
    let netns = open_netns(netns_path)?;
    let store = Store::new(conf.state_dir(), conf.subnet);
    let locked: Locked<'_> = store.lock(LOCK_TIMEOUT)?;
    let ip = locked.get(att)?.ok_or_else(|| {
        check_failed(format!(
            "no address is allocated to {} in network {}",
            att.key(),
            conf.name
        ))
    })?;
    drop(locked);
    if let Some(prev) = &conf.prev_result {
        let listed = result::addresses_of(prev, &att.ifname, &netns_path.display().to_string());
        if !listed.contains(&ip) {
            return Err(check_failed(format!(
                "prevResult gives {} in {} the addresses {listed:?}, but {ip} is allocated",
                att.ifname,
                netns_path.display()
            )));
        }
    }
    let host = Socket::new()?;
    let host_name = att.host_ifname();
    let hl = host
        .link_by_name(&host_name)?
        .ok_or_else(|| check_failed(format!("host veth {host_name} is missing")))?;
    if hl.flags & c::IFF_UP == 0 {
        return Err(check_failed(format!("host veth {host_name} is down")));
    }
    if !host
        .routes()?
        .iter()
        .any(|r| r.dst == ip && r.dst_len == 32 && r.oif == Some(hl.index))
    {
        return Err(check_failed(format!(
            "host route {ip}/32 dev {host_name} is missing"
        )));
    }
    let pod = container_socket(&netns, netns_path, &BTreeMap::new())?;
    let pl = pod.link_by_name(&att.ifname)?.ok_or_else(|| {
        check_failed(format!(
            "interface {} is missing in netns {}",
            att.ifname,
            netns_path.display()
        ))
    })?;
    if pl.flags & c::IFF_UP == 0 {
        return Err(check_failed(format!("interface {} is down", att.ifname)));
    }
    if let Some(mtu) = conf.mtu
        && pl.mtu != mtu
    {
        return Err(check_failed(format!(
            "interface {} has MTU {}, config says {mtu}",
            att.ifname, pl.mtu
        )));
    }
    if !pod
        .addrs()?
        .iter()
        .any(|a| a.index == pl.index && a.addr == ip && a.prefix == 32)
    {
        return Err(check_failed(format!(
            "interface {} in netns {} lacks {ip}/32",
            att.ifname,
            netns_path.display()
        )));
    }
    if !pod
        .routes()?
        .iter()
        .any(|r| r.dst_len == 0 && r.gateway == Some(GATEWAY) && r.oif == Some(pl.index))
    {
        return Err(check_failed(format!(
            "default route via {GATEWAY} dev {} is missing in netns {}",
            att.ifname,
            netns_path.display()
        )));
    }
    Ok(())
}

fn status(conf: &NetConf) -> Result<(), CniError> {
    let store = Store::new(conf.state_dir(), conf.subnet);
    let locked = store.lock(LOCK_TIMEOUT).map_err(|e| match e {
        IpamError::Io { .. } => CniError::new(code::NOT_AVAILABLE, e.to_string()),
        e => e.into(),
    })?;
    if locked.free()? == 0 {
        return Err(CniError::new(
            code::NOT_AVAILABLE,
            format!("no free address left in {}", conf.subnet),
        ));
    }
    Ok(())
}

fn gc(conf: &NetConf) -> Result<(), CniError> {
    let valid: HashSet<Attachment> = conf
        .valid_attachments
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let host = Socket::new()?;
    let store = Store::new(conf.state_dir(), conf.subnet);
    let locked = store.lock(LOCK_TIMEOUT)?;
    // Interfaces first (same order as DEL), from the state about to go.
    let had_state: HashSet<String> = locked
        .gc_preview(&valid)?
        .iter()
        .map(Attachment::host_ifname)
        .collect();
    for link in host.links()? {
        if !link.name.starts_with("kc") || link.kind.as_deref().is_some_and(|k| k != "veth") {
            continue;
        }
        let doomed = match link.alias.as_deref().and_then(parse_alias) {
            Some((net, a)) => net == conf.name && !valid.contains(&a),
            // An ADD killed between creating the veth and naming it.
            None => link.alias.is_none() && had_state.contains(&link.name),
        };
        if doomed {
            host.delete_link(&link.name)?;
        }
    }
    locked.gc(&valid)?;
    Ok(())
}

/// The alias a host veth of `network` carries.
pub fn host_alias(network: &str, a: &Attachment) -> String {
    format!("{ALIAS_PREFIX}{network} {}", a.key())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_round_trip() {
        let a = Attachment::new("abc", "eth0").unwrap();
        let s = host_alias("my net", &a);
        assert_eq!(parse_alias(&s), Some(("my net", a)));
        assert_eq!(parse_alias("something else"), None);
        assert_eq!(parse_alias("keelson-cni net garbage"), None);
    }

    #[test]
    fn version_needs_no_config() {
        let out = run(
            |k| (k == "CNI_COMMAND").then(|| "VERSION".into()),
            br#"{"cniVersion":"1.0.0"}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(out["cniVersion"], "1.0.0");
        assert_eq!(out["supportedVersions"].as_array().unwrap().len(), 5);
    }

    #[test]
    fn errors_carry_the_config_version() {
        let (e, v) = run(
            |k| (k == "CNI_COMMAND").then(|| "ADD".into()),
            br#"{"cniVersion":"1.0.0","name":"n","subnet":"10.0.0.0/24"}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert_eq!(v, "1.0.0");
        let (e, v) = run(
            |k| (k == "CNI_COMMAND").then(|| "STATUS".into()),
            b"not json",
        )
        .unwrap_err();
        assert_eq!(e.code, code::DECODE);
        assert_eq!(v, "1.1.0");
    }
}
