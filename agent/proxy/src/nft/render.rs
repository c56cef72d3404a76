//! nftables ruleset rendering (text for `nft -f -`). Pure: no I/O.
//!
//! Layout (see README.md): one `table ip keelson`; Services are map
//! elements, not chains, so a steady-state change is a handful of element
//! updates. Chains exist per distinct endpoint count ("families", shared by
//! every Service with that many endpoints) and per Service only for
//! sessionAffinity: ClientIP.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::model::{DesiredState, Endpoint, ServicePort, ServicePortName};
use crate::plan::Changes;

/// Settings of the rendered ruleset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftConfig {
    /// Table name (family `ip`).
    pub table: String,
    /// Packet mark bit asking postrouting to masquerade.
    pub masq_mark: u32,
    /// Traffic to ClusterIPs from outside this range is masqueraded.
    pub cluster_cidr: Option<Ipv4Net>,
    /// New connections to this range that no Service rule DNATed are
    /// rejected (see `guard`).
    pub service_cidr: Option<Ipv4Net>,
    /// Addresses NodePorts answer on; empty: every local address but 127/8.
    pub nodeport_addresses: Vec<Ipv4Net>,
    /// Family chains for endpoint counts 1..=this are created by every full
    /// sync, used or not, so that incremental syncs rarely need a new one
    /// (a new one forces a full sync, see [`render_changes`]).
    pub prealloc_families: usize,
}

impl Default for NftConfig {
    fn default() -> Self {
        NftConfig {
            table: "keelson".into(),
            masq_mark: 0x4000,
            cluster_cidr: None,
            service_cidr: None,
            nodeport_addresses: Vec::new(),
            prealloc_families: 32,
        }
    }
}

/// The maps and sets whose elements carry Services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Container {
    /// `ipv4_addr . inet_proto . inet_service : verdict`
    Services,
    /// `ipv4_addr . inet_proto . inet_service . slot : ipv4_addr . inet_service`
    Backends,
    /// `inet_proto . inet_service : verdict`
    Nodeports,
    /// `inet_proto . inet_service . slot : ipv4_addr . inet_service`
    NpBackends,
    /// `ipv4_addr . inet_proto . inet_service` (Service without endpoints)
    NoepServices,
    /// `inet_proto . inet_service` (NodePort without endpoints)
    NoepNodeports,
    /// `ipv4_addr . ipv4_addr` (local endpoint . same endpoint)
    Hairpin,
}

impl Container {
    pub const ALL: [Container; 7] = [
        Container::Services,
        Container::Backends,
        Container::Nodeports,
        Container::NpBackends,
        Container::NoepServices,
        Container::NoepNodeports,
        Container::Hairpin,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Container::Services => "services",
            Container::Backends => "backends",
            Container::Nodeports => "nodeports",
            Container::NpBackends => "np_backends",
            Container::NoepServices => "noep_services",
            Container::NoepNodeports => "noep_nodeports",
            Container::Hairpin => "hairpin",
        }
    }

    fn definition(self) -> &'static str {
        match self {
            Container::Services => {
                "map services {\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n\t}"
            }
            Container::Backends => {
                "map backends {\n\t\ttypeof ip daddr . meta l4proto . th dport . numgen random mod 2 : ip daddr . th dport\n\t}"
            }
            Container::Nodeports => {
                "map nodeports {\n\t\ttype inet_proto . inet_service : verdict\n\t}"
            }
            Container::NpBackends => {
                "map np_backends {\n\t\ttypeof meta l4proto . th dport . numgen random mod 2 : ip daddr . th dport\n\t}"
            }
            Container::NoepServices => {
                "set noep_services {\n\t\ttype ipv4_addr . inet_proto . inet_service\n\t}"
            }
            Container::NoepNodeports => {
                "set noep_nodeports {\n\t\ttype inet_proto . inet_service\n\t}"
            }
            Container::Hairpin => "set hairpin {\n\t\ttype ipv4_addr . ipv4_addr\n\t}",
        }
    }
}

/// One set or map element.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Element {
    pub container: Container,
    pub key: String,
    pub value: Option<String>,
}

/// Shared load-balancing chains, one per endpoint count and flavour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// `lb_N`: DNAT a VIP to one of N slots of `backends`.
    Lb(usize),
    /// `lbm_N`: mark for masquerade, then `lb_N`.
    LbMasq(usize),
    /// `lbc_N`: mark when the source is outside the cluster CIDR, then `lb_N`.
    LbCidr(usize),
    /// `np_N`: DNAT a NodePort to one of N slots of `np_backends`.
    Np(usize),
    /// `npm_N`: mark for masquerade, then `np_N`.
    NpMasq(usize),
}

impl Family {
    pub fn name(self) -> String {
        match self {
            Family::Lb(n) => format!("lb_{n}"),
            Family::LbMasq(n) => format!("lbm_{n}"),
            Family::LbCidr(n) => format!("lbc_{n}"),
            Family::Np(n) => format!("np_{n}"),
            Family::NpMasq(n) => format!("npm_{n}"),
        }
    }

    fn rules(self, cfg: &NftConfig) -> Vec<String> {
        let mark = format!("meta mark set meta mark | {:#x}", cfg.masq_mark);
        match self {
            Family::Lb(n) => vec![format!(
                "dnat to ip daddr . meta l4proto . th dport . numgen random mod {n} map @backends"
            )],
            Family::LbMasq(n) => vec![format!("{mark} goto lb_{n}")],
            Family::LbCidr(n) => {
                let mut v = Vec::new();
                if let Some(c) = cfg.cluster_cidr {
                    v.push(format!("ip saddr != {c} {mark}"));
                }
                v.push(format!("goto lb_{n}"));
                v
            }
            Family::Np(n) => vec![format!(
                "dnat to meta l4proto . th dport . numgen random mod {n} map @np_backends"
            )],
            Family::NpMasq(n) => vec![format!("{mark} goto np_{n}")],
        }
    }

    /// The family this one jumps to, if any.
    fn base(self) -> Option<Family> {
        match self {
            Family::LbMasq(n) | Family::LbCidr(n) => Some(Family::Lb(n)),
            Family::NpMasq(n) => Some(Family::Np(n)),
            Family::Lb(_) | Family::Np(_) => None,
        }
    }
}

/// What one Service port contributes to the table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Objects {
    pub elements: BTreeSet<Element>,
    pub families: BTreeSet<Family>,
    /// Per-Service chains (affinity only): name -> rules.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Per-Service sets (affinity only): name -> definition body.
    pub sets: BTreeMap<String, String>,
}

impl Objects {
    fn merge(&mut self, o: Objects) {
        self.elements.extend(o.elements);
        self.families.extend(o.families);
        self.chains.extend(o.chains);
        self.sets.extend(o.sets);
    }

    fn add_family(&mut self, f: Family) {
        self.families.insert(f);
        if let Some(b) = f.base() {
            self.families.insert(b);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Masq {
    Never,
    Always,
    OutsideClusterCidr,
}

/// 64-bit FNV-1a: stable short names for per-Service objects.
fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn vip_key(ip: Ipv4Addr, sp: &ServicePort) -> String {
    format!("{ip} . {} . {}", sp.protocol.nft(), sp.port)
}

fn np_key(np: u16, sp: &ServicePort) -> String {
    format!("{} . {np}", sp.protocol.nft())
}

fn el(container: Container, key: String, value: Option<String>) -> Element {
    Element {
        container,
        key,
        value,
    }
}

/// Objects for one traffic scope (internal: ClusterIPs; external: external
/// IPs and the NodePort) of one Service port.
#[allow(clippy::too_many_arguments)] // one call site per scope; a struct would only rename them
fn scope_objects(
    name: &ServicePortName,
    sp: &ServicePort,
    cfg: &NftConfig,
    scope: &str,
    vips: &[Ipv4Addr],
    node_port: Option<u16>,
    eps: &[Endpoint],
    masq: Masq,
) -> Objects {
    let mut o = Objects::default();
    if vips.is_empty() && node_port.is_none() {
        return o;
    }
    if eps.is_empty() {
        for ip in vips {
            o.elements
                .insert(el(Container::NoepServices, vip_key(*ip, sp), None));
        }
        if let Some(np) = node_port {
            o.elements
                .insert(el(Container::NoepNodeports, np_key(np, sp), None));
        }
        return o;
    }
    let n = eps.len();
    if let Some(timeout) = sp.affinity_timeout {
        let id = format!("{:012x}", fnv(&format!("{name}|{scope}")) >> 16);
        let chain = format!("aff_{id}");
        let mut rules = Vec::new();
        let mark = format!("meta mark set meta mark | {:#x}", cfg.masq_mark);
        match masq {
            Masq::Never => {}
            Masq::Always => rules.push(mark),
            Masq::OutsideClusterCidr => {
                if let Some(c) = cfg.cluster_cidr {
                    rules.push(format!("ip saddr != {c} {mark}"));
                }
            }
        }
        let mut slots = Vec::new();
        for (i, ep) in eps.iter().enumerate() {
            let eid = format!("{:08x}", fnv(&format!("{}:{}", ep.ip, ep.port)) >> 32);
            let set = format!("affs_{id}_{eid}");
            let echain = format!("affe_{id}_{eid}");
            o.sets.insert(
                set.clone(),
                format!("type ipv4_addr; flags dynamic,timeout; timeout {timeout}s;"),
            );
            o.chains.insert(
                echain.clone(),
                vec![
                    format!("update @{set} {{ ip saddr }}"),
                    format!(
                        "meta l4proto {} dnat to {}:{}",
                        sp.protocol.nft(),
                        ep.ip,
                        ep.port
                    ),
                ],
            );
            rules.push(format!("ip saddr @{set} goto {echain}"));
            slots.push(format!("{i} : goto {echain}"));
        }
        rules.push(format!(
            "numgen random mod {n} vmap {{ {} }}",
            slots.join(", ")
        ));
        o.chains.insert(chain.clone(), rules);
        for ip in vips {
            o.elements.insert(el(
                Container::Services,
                vip_key(*ip, sp),
                Some(format!("goto {chain}")),
            ));
        }
        if let Some(np) = node_port {
            o.elements.insert(el(
                Container::Nodeports,
                np_key(np, sp),
                Some(format!("goto {chain}")),
            ));
        }
        return o;
    }
    if !vips.is_empty() {
        let fam = match masq {
            Masq::Never => Family::Lb(n),
            Masq::Always => Family::LbMasq(n),
            Masq::OutsideClusterCidr if cfg.cluster_cidr.is_some() => Family::LbCidr(n),
            Masq::OutsideClusterCidr => Family::Lb(n),
        };
        o.add_family(fam);
        for ip in vips {
            let key = vip_key(*ip, sp);
            o.elements.insert(el(
                Container::Services,
                key.clone(),
                Some(format!("goto {}", fam.name())),
            ));
            for (slot, ep) in eps.iter().enumerate() {
                o.elements.insert(el(
                    Container::Backends,
                    format!("{key} . {slot}"),
                    Some(format!("{} . {}", ep.ip, ep.port)),
                ));
            }
        }
    }
    if let Some(np) = node_port {
        let fam = if masq == Masq::Never {
            Family::Np(n)
        } else {
            Family::NpMasq(n)
        };
        o.add_family(fam);
        let key = np_key(np, sp);
        o.elements.insert(el(
            Container::Nodeports,
            key.clone(),
            Some(format!("goto {}", fam.name())),
        ));
        for (slot, ep) in eps.iter().enumerate() {
            o.elements.insert(el(
                Container::NpBackends,
                format!("{key} . {slot}"),
                Some(format!("{} . {}", ep.ip, ep.port)),
            ));
        }
    }
    o
}

/// Everything one Service port puts in the table (hairpin elements aside:
/// they are shared, see [`hairpin_elements`]).
pub fn service_objects(name: &ServicePortName, sp: &ServicePort, cfg: &NftConfig) -> Objects {
    let mut o = scope_objects(
        name,
        sp,
        cfg,
        "internal",
        &sp.cluster_ips,
        None,
        &sp.internal_endpoints,
        Masq::OutsideClusterCidr,
    );
    let ext_masq = if sp.external_local {
        Masq::Never
    } else {
        Masq::Always
    };
    o.merge(scope_objects(
        name,
        sp,
        cfg,
        "external",
        &sp.external_ips,
        sp.node_port,
        &sp.external_endpoints,
        ext_masq,
    ));
    o
}

/// `ep . ep` for every endpoint on this node: a packet from an endpoint
/// DNATed back to itself is masqueraded (hairpin).
pub fn hairpin_elements(state: &DesiredState) -> BTreeSet<Element> {
    let mut out = BTreeSet::new();
    for sp in state.services.values() {
        out.extend(service_hairpin(sp));
    }
    out
}

/// The hairpin elements one Service port needs (one per local endpoint).
fn service_hairpin(sp: &ServicePort) -> impl Iterator<Item = Element> + '_ {
    sp.internal_endpoints
        .iter()
        .chain(&sp.external_endpoints)
        .filter(|ep| ep.local)
        .map(|ep| el(Container::Hairpin, format!("{} . {}", ep.ip, ep.ip), None))
}

/// All objects of a state (what a full sync programs).
pub fn state_objects(state: &DesiredState, cfg: &NftConfig) -> Objects {
    let mut o = Objects::default();
    for (name, sp) in &state.services {
        o.merge(service_objects(name, sp, cfg));
    }
    o.elements.extend(hairpin_elements(state));
    for n in 1..=cfg.prealloc_families {
        o.families.extend([
            Family::Lb(n),
            Family::LbMasq(n),
            Family::Np(n),
            Family::NpMasq(n),
        ]);
        if cfg.cluster_cidr.is_some() {
            o.families.insert(Family::LbCidr(n));
        }
    }
    o
}

/// Names of the chains that always exist.
pub const BASE_CHAINS: [&str; 9] = [
    "services",
    "noep",
    "reject_new",
    "nat_prerouting",
    "nat_output",
    "nat_postrouting",
    "filter_input",
    "filter_forward",
    "filter_output",
];

fn nodeport_match(cfg: &NftConfig) -> String {
    if cfg.nodeport_addresses.is_empty() {
        "fib daddr type local ip daddr != 127.0.0.0/8".into()
    } else {
        "ip daddr @nodeport_addresses".into()
    }
}

fn base_chain_bodies(cfg: &NftConfig) -> Vec<(&'static str, Vec<String>)> {
    let np = nodeport_match(cfg);
    let m = cfg.masq_mark;
    vec![
        (
            "services",
            vec![
                "ip daddr . meta l4proto . th dport vmap @services".into(),
                format!("{np} meta l4proto . th dport vmap @nodeports"),
            ],
        ),
        ("noep", {
            let mut rules = vec![
                "ip daddr . meta l4proto . th dport @noep_services goto reject_new".into(),
                format!("{np} meta l4proto . th dport @noep_nodeports goto reject_new"),
            ];
            // In the filter hooks, after DNAT: what still goes to the Service
            // CIDR matched no Service.
            if let Some(cidr) = cfg.service_cidr {
                rules.push(format!("ip daddr {cidr} goto reject_new"));
            }
            rules
        }),
        (
            "reject_new",
            vec![
                "meta l4proto tcp reject with tcp reset".into(),
                "reject with icmp type port-unreachable".into(),
            ],
        ),
        (
            "nat_prerouting",
            vec![
                "type nat hook prerouting priority dstnat - 1; policy accept;".into(),
                "jump services".into(),
            ],
        ),
        (
            "nat_output",
            vec![
                "type nat hook output priority -101; policy accept;".into(),
                "jump services".into(),
            ],
        ),
        (
            "nat_postrouting",
            vec![
                "type nat hook postrouting priority srcnat - 1; policy accept;".into(),
                format!(
                    "meta mark & {m:#x} == {m:#x} meta mark set meta mark & {:#x} masquerade fully-random",
                    !m
                ),
                "ct status dnat ip saddr . ip daddr @hairpin masquerade fully-random".into(),
            ],
        ),
        (
            "filter_input",
            vec![
                "type filter hook input priority filter - 1; policy accept;".into(),
                "ct state new jump noep".into(),
            ],
        ),
        (
            "filter_forward",
            vec![
                "type filter hook forward priority filter - 1; policy accept;".into(),
                "ct state new jump noep".into(),
            ],
        ),
        (
            "filter_output",
            vec![
                "type filter hook output priority filter - 1; policy accept;".into(),
                "ct state new jump noep".into(),
            ],
        ),
    ]
}

fn write_chain(out: &mut String, name: &str, rules: &[String]) {
    let _ = writeln!(out, "\tchain {name} {{");
    for r in rules {
        let _ = writeln!(out, "\t\t{r}");
    }
    out.push_str("\t}\n");
}

/// Element statements, one per container; `add` renders values, `delete`
/// only keys.
fn write_elements<'a>(
    out: &mut String,
    table: &str,
    verb: &str,
    elements: impl IntoIterator<Item = &'a Element>,
) {
    let mut by: BTreeMap<Container, Vec<&Element>> = BTreeMap::new();
    for e in elements {
        by.entry(e.container).or_default().push(e);
    }
    for (c, els) in by {
        let _ = write!(out, "{verb} element ip {table} {} {{", c.name());
        for (i, e) in els.iter().enumerate() {
            out.push_str(if i == 0 { "\n\t" } else { ",\n\t" });
            out.push_str(&e.key);
            if let (Some(v), "add") = (&e.value, verb) {
                out.push_str(" : ");
                out.push_str(v);
            }
        }
        out.push_str("\n}\n");
    }
}

/// A full sync: replace the table atomically (creating it first makes the
/// delete succeed when it is missing). `generation` marks this sync so that
/// drift (someone else replacing the table) is detectable.
pub fn render_full(objects: &Objects, cfg: &NftConfig, generation: u32) -> String {
    let mut out = render_structure(objects, cfg, generation);
    write_elements(&mut out, &cfg.table, "add", &objects.elements);
    out
}

/// [`render_full`] without the elements of the [`Container`] sets: the
/// table, its chains and rules, set definitions, the `generation` element
/// and the `structure` element (see [`structure`]).
pub fn render_structure(objects: &Objects, cfg: &NftConfig, generation: u32) -> String {
    let t = &cfg.table;
    let (body, fingerprint) = structure(objects, cfg);
    let mut out = String::with_capacity(256 + body.len() + objects.elements.len() * 48);
    let _ = writeln!(
        out,
        "add table ip {t}\ndelete table ip {t}\ntable ip {t} {{"
    );
    let _ = writeln!(
        out,
        "\tset generation {{\n\t\ttype mark\n\t\telements = {{ {generation:#x} }}\n\t}}"
    );
    let _ = writeln!(
        out,
        "\tset structure {{\n\t\ttype mark\n\t\telements = {{ {fingerprint:#010x} }}\n\t}}"
    );
    out.push_str(&body);
    out.push_str("}\n");
    out
}

/// The body of the table for `objects` (set definitions, chains, rules:
/// everything a full sync writes but the elements of the [`Container`]
/// sets and the generation), and its fingerprint (32-bit FNV-1a), which the
/// table carries in its `structure` set. A full sync that finds the same
/// fingerprint in the kernel only has elements to replace.
pub fn structure(objects: &Objects, cfg: &NftConfig) -> (String, u32) {
    let mut out = String::with_capacity(4096);
    for c in Container::ALL {
        let _ = writeln!(out, "\t{}", c.definition());
    }
    if !cfg.nodeport_addresses.is_empty() {
        let addrs: Vec<String> = cfg
            .nodeport_addresses
            .iter()
            .map(|n| n.to_string())
            .collect();
        let _ = writeln!(
            out,
            "\tset nodeport_addresses {{\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = {{ {} }}\n\t}}",
            addrs.join(", ")
        );
    }
    for (name, body) in &objects.sets {
        let _ = writeln!(out, "\tset {name} {{ {body} }}");
    }
    // Chains a rule jumps to come first.
    for f in objects.families.iter().filter(|f| f.base().is_none()) {
        write_chain(&mut out, &f.name(), &f.rules(cfg));
    }
    for f in objects.families.iter().filter(|f| f.base().is_some()) {
        write_chain(&mut out, &f.name(), &f.rules(cfg));
    }
    for (name, rules) in objects
        .chains
        .iter()
        .filter(|(n, _)| n.starts_with("affe_"))
    {
        write_chain(&mut out, name, rules);
    }
    for (name, rules) in objects
        .chains
        .iter()
        .filter(|(n, _)| !n.starts_with("affe_"))
    {
        write_chain(&mut out, name, rules);
    }
    for (name, rules) in base_chain_bodies(cfg) {
        write_chain(&mut out, name, &rules);
    }
    let mut h: u32 = 0x811c_9dc5;
    for b in out.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    (out, h)
}

/// Names of every chain a full sync of `objects` creates.
pub fn chain_names(objects: &Objects) -> BTreeSet<String> {
    let mut s: BTreeSet<String> = BASE_CHAINS.iter().map(|c| c.to_string()).collect();
    s.extend(objects.families.iter().map(|f| f.name()));
    s.extend(objects.chains.keys().cloned());
    s
}

/// What an incremental sync needs to know about the programmed table
/// beyond the Service ports themselves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Programmed {
    pub families: BTreeSet<Family>,
    pub hairpin: BTreeSet<Element>,
    /// Per-Service chains (to know the full chain list for drift checks).
    pub chains: BTreeSet<String>,
}

impl Programmed {
    pub fn from_objects(o: &Objects) -> Programmed {
        Programmed {
            families: o.families.clone(),
            hairpin: o
                .elements
                .iter()
                .filter(|e| e.container == Container::Hairpin)
                .cloned()
                .collect(),
            chains: o.chains.keys().cloned().collect(),
        }
    }
}

/// An incremental sync, structured: element deletes, then other statements
/// (chains and sets of affinity Services), then element adds — in this order
/// in one transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeSet {
    pub delete: Vec<Element>,
    /// `nft` statements between the deletes and the adds ("" when the change
    /// is elements only: then it can go through netlink).
    pub statements: String,
    pub add: Vec<Element>,
}

impl ChangeSet {
    pub fn is_empty(&self) -> bool {
        self.delete.is_empty() && self.statements.is_empty() && self.add.is_empty()
    }

    /// The change as one `nft -f` script.
    pub fn script(&self, table: &str) -> String {
        let mut out = String::new();
        write_elements(&mut out, table, "delete", &self.delete);
        out.push_str(&self.statements);
        write_elements(&mut out, table, "add", &self.add);
        out
    }
}

/// An incremental sync: element updates for the changed Service ports only
/// (plus shared family chains that did not exist yet, and the chains and
/// sets of affinity Services). Returns the script ("" when nothing to do)
/// and the new [`Programmed`]; `None` when the change needs a family chain
/// that does not exist yet: then only a full sync will do, because nft 1.0.6
/// fails ("conflicting protocols specified: ip vs. th") to add a rule that
/// looks up a `typeof ... numgen` map already in the kernel, while it loads
/// the same rule fine together with the map.
pub fn render_changes(
    changes: &Changes,
    desired: &DesiredState,
    programmed: &Programmed,
    cfg: &NftConfig,
) -> Option<(String, Programmed)> {
    let (set, next) = plan_changes(changes, desired, programmed, cfg)?;
    Some((set.script(&cfg.table), next))
}

/// [`render_changes`] without the final rendering to text.
pub fn plan_changes(
    changes: &Changes,
    desired: &DesiredState,
    programmed: &Programmed,
    cfg: &NftConfig,
) -> Option<(ChangeSet, Programmed)> {
    let t = &cfg.table;
    let mut old = Objects::default();
    let mut new = Objects::default();
    for c in &changes.services {
        if let Some(sp) = &c.old {
            old.merge(service_objects(&c.name, sp, cfg));
        }
        if let Some(sp) = &c.new {
            new.merge(service_objects(&c.name, sp, cfg));
        }
    }
    if !new.families.is_subset(&programmed.families) {
        return None;
    }
    // Hairpin elements are shared by every Service port with that local
    // endpoint: computed from the changed ports only, and one is removed
    // only when no port of the whole state still needs it (the O(n) scan
    // runs only when some port lost a local endpoint).
    let old_h: BTreeSet<Element> = changes
        .services
        .iter()
        .filter_map(|c| c.old.as_ref())
        .flat_map(service_hairpin)
        .collect();
    let new_h: BTreeSet<Element> = changes
        .services
        .iter()
        .filter_map(|c| c.new.as_ref())
        .flat_map(service_hairpin)
        .collect();
    let mut gone: BTreeSet<Element> = old_h
        .difference(&new_h)
        .filter(|e| programmed.hairpin.contains(*e))
        .cloned()
        .collect();
    if !gone.is_empty() {
        let still = hairpin_elements(desired);
        gone.retain(|e| !still.contains(e));
    }
    let fresh: Vec<Element> = new_h
        .into_iter()
        .filter(|e| !programmed.hairpin.contains(e))
        .collect();
    let mut hairpin = programmed.hairpin.clone();
    for e in &gone {
        hairpin.remove(e);
    }
    hairpin.extend(fresh.iter().cloned());
    let mut del: Vec<Element> = old.elements.difference(&new.elements).cloned().collect();
    del.extend(gone);
    let mut add: Vec<Element> = new.elements.difference(&old.elements).cloned().collect();
    add.extend(fresh);

    let mut out = String::new();
    let mut next = programmed.clone();
    // Per-Service chains: flush changed ones, delete gone ones (dispatch
    // chains before the endpoint chains they jump to), then sets.
    for (name, rules) in &old.chains {
        if new.chains.get(name) != Some(rules) {
            let _ = writeln!(out, "flush chain ip {t} {name}");
        }
    }
    for name in old.chains.keys().filter(|n| !new.chains.contains_key(*n)) {
        let _ = writeln!(out, "delete chain ip {t} {name}");
        next.chains.remove(name);
    }
    for (name, body) in &old.sets {
        if new.sets.get(name) != Some(body) {
            let _ = writeln!(out, "delete set ip {t} {name}");
        }
    }
    for (name, body) in &new.sets {
        if old.sets.get(name) != Some(body) {
            let _ = writeln!(out, "add set ip {t} {name} {{ {body} }}");
        }
    }
    let changed: Vec<(&String, &Vec<String>)> = new
        .chains
        .iter()
        .filter(|(n, r)| old.chains.get(*n) != Some(*r))
        .collect();
    for (name, _) in &changed {
        let _ = writeln!(out, "add chain ip {t} {name}");
        next.chains.insert((*name).clone());
    }
    for (name, rules) in changed
        .iter()
        .filter(|(n, _)| n.starts_with("affe_"))
        .chain(changed.iter().filter(|(n, _)| !n.starts_with("affe_")))
    {
        for r in *rules {
            let _ = writeln!(out, "add rule ip {t} {name} {r}");
        }
    }
    next.hairpin = hairpin;
    Some((
        ChangeSet {
            delete: del,
            statements: out,
            add,
        },
        next,
    ))
}

/// Deletes the table (idempotent).
pub fn render_delete(cfg: &NftConfig) -> String {
    format!("add table ip {0}\ndelete table ip {0}\n", cfg.table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_cidr_is_rejected_after_dnat_only_when_set() {
        let objects = state_objects(&DesiredState::default(), &NftConfig::default());
        let plain = render_full(&objects, &NftConfig::default(), 1);
        assert!(!plain.contains("10.96.0.0/12"), "{plain}");
        let cfg = NftConfig {
            service_cidr: Some("10.96.0.0/12".parse().unwrap()),
            ..Default::default()
        };
        let guarded = render_full(&objects, &cfg, 1);
        let noep = guarded
            .split("chain noep {")
            .nth(1)
            .and_then(|c| c.split('}').next())
            .expect("a noep chain");
        let rules: Vec<&str> = noep
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        // Last, after the per-Service rejects; noep is jumped to from the
        // filter hooks, which run after the nat hooks' DNAT.
        assert_eq!(
            rules.last(),
            Some(&"ip daddr 10.96.0.0/12 goto reject_new"),
            "{noep}"
        );
        // A different ruleset structure: a full sync rebuilds the table.
        assert_ne!(
            structure(&objects, &cfg).0,
            structure(&objects, &NftConfig::default()).0
        );
    }
}
