//! A small synchronous rtnetlink client: just the messages a routed veth,
//! the Service CIDR guard and cross-node routes need. Encoding and decoding
//! of links, addresses and routes are pure; [`Socket`] does the I/O over
//! [`crate::netlink`]'s framing. A socket belongs to the network namespace
//! it was created in, so one socket per namespace and no `setns` round
//! trips.

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::socket::SockProtocol;

use crate::netlink::{self, Options};
pub use crate::netlink::{Msg, NlError, parse_attrs};

/// rtnetlink constants used here (linux/rtnetlink.h, if_link.h, ...).
#[allow(missing_docs)]
pub mod c {
    pub const RTM_NEWLINK: u16 = 16;
    pub const RTM_DELLINK: u16 = 17;
    pub const RTM_GETLINK: u16 = 18;
    pub const RTM_SETLINK: u16 = 19;
    pub const RTM_NEWADDR: u16 = 20;
    pub const RTM_DELADDR: u16 = 21;
    pub const RTM_GETADDR: u16 = 22;
    pub const RTM_NEWROUTE: u16 = 24;
    pub const RTM_DELROUTE: u16 = 25;
    pub const RTM_GETROUTE: u16 = 26;
    pub use crate::netlink::{
        NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NLMSG_DONE,
        NLMSG_ERROR,
    };
    pub const AF_UNSPEC: u8 = 0;
    pub const AF_INET: u8 = 2;
    pub const IFLA_ADDRESS: u16 = 1;
    pub const IFLA_IFNAME: u16 = 3;
    pub const IFLA_MTU: u16 = 4;
    pub const IFLA_LINKINFO: u16 = 18;
    pub const IFLA_IFALIAS: u16 = 20;
    pub const IFLA_NET_NS_FD: u16 = 28;
    pub const IFLA_INFO_KIND: u16 = 1;
    pub const IFLA_INFO_DATA: u16 = 2;
    pub const VETH_INFO_PEER: u16 = 1;
    pub const IFF_UP: u32 = 1;
    pub const IFA_ADDRESS: u16 = 1;
    pub const IFA_LOCAL: u16 = 2;
    pub const RTA_DST: u16 = 1;
    pub const RTA_OIF: u16 = 4;
    pub const RTA_GATEWAY: u16 = 5;
    pub const RTA_PREFSRC: u16 = 7;
    pub const RTA_TABLE: u16 = 15;
    pub const RT_TABLE_MAIN: u8 = 254;
    pub const RTN_UNICAST: u8 = 1;
    pub const RTN_UNREACHABLE: u8 = 7;
    pub const RT_SCOPE_UNIVERSE: u8 = 0;
    pub const RT_SCOPE_LINK: u8 = 253;
    pub const RTPROT_STATIC: u8 = 4;
    pub const RTNH_F_ONLINK: u32 = 4;
}

/// Protocol tag of the routes this plugin's host side installs.
pub const RTPROT_KEELSON_CNI: u8 = 0x4b; // 'K'
/// Protocol tag of cross-node routes (keelson-cni's `routes`).
pub const RTPROT_KEELSON_NODES: u8 = 0x4c;
/// Protocol tag of the Service CIDR route the Service proxy owns.
pub const RTPROT_KEELSON_SERVICES: u8 = 0x4d;

/// ifinfomsg.
pub fn ifinfomsg(index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0] = c::AF_UNSPEC;
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

/// ifaddrmsg for IPv4.
pub fn ifaddrmsg(prefix: u8, scope: u8, index: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0] = c::AF_INET;
    b[1] = prefix;
    b[3] = scope;
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b
}

/// rtmsg for an IPv4 route of `kind` (`c::RTN_*`) in the main table.
pub fn rtmsg(dst_len: u8, protocol: u8, scope: u8, kind: u8, flags: u32) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0] = c::AF_INET;
    b[1] = dst_len;
    b[4] = c::RT_TABLE_MAIN;
    b[5] = protocol;
    b[6] = scope;
    b[7] = kind;
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b
}

fn attr_str(data: &[u8]) -> String {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).into_owned()
}

fn attr_ip(data: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(data).ok().map(Ipv4Addr::from)
}

/// A link as RTM_GETLINK reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// ifindex.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MAC address.
    pub mac: Option<[u8; 6]>,
    /// MTU.
    pub mtu: u32,
    /// Interface flags (IFF_UP, ...).
    pub flags: u32,
    /// IFLA_IFALIAS.
    pub alias: Option<String>,
    /// IFLA_INFO_KIND ("veth", "dummy", ...).
    pub kind: Option<String>,
}

impl Link {
    /// The MAC as aa:bb:cc:dd:ee:ff.
    pub fn mac_string(&self) -> String {
        self.mac
            .map(|m| {
                m.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":")
            })
            .unwrap_or_default()
    }

    fn parse(payload: &[u8]) -> Option<Self> {
        if payload.len() < 16 {
            return None;
        }
        let index = i32::from_ne_bytes(payload[4..8].try_into().ok()?) as u32;
        let flags = u32::from_ne_bytes(payload[8..12].try_into().ok()?);
        let mut l = Link {
            index,
            name: String::new(),
            mac: None,
            mtu: 0,
            flags,
            alias: None,
            kind: None,
        };
        for (ty, data) in parse_attrs(&payload[16..]) {
            match ty {
                c::IFLA_IFNAME => l.name = attr_str(data),
                c::IFLA_ADDRESS => l.mac = data.try_into().ok(),
                c::IFLA_MTU if data.len() == 4 => l.mtu = u32::from_ne_bytes(data.try_into().ok()?),
                c::IFLA_IFALIAS => l.alias = Some(attr_str(data)).filter(|s| !s.is_empty()),
                c::IFLA_LINKINFO => {
                    for (ity, idata) in parse_attrs(data) {
                        if ity == c::IFLA_INFO_KIND {
                            l.kind = Some(attr_str(idata));
                        }
                    }
                }
                _ => {}
            }
        }
        Some(l)
    }
}

/// An IPv4 address on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr {
    /// ifindex.
    pub index: u32,
    /// Address.
    pub addr: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

/// What a route does with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RouteKind {
    /// Forwards it (through `oif`, `gateway`).
    #[default]
    Unicast,
    /// Refuses it: a local sender gets EHOSTUNREACH, a forwarded packet's
    /// sender an ICMP host unreachable. Nothing leaves the host.
    Unreachable,
}

impl RouteKind {
    fn rtn(self) -> u8 {
        match self {
            RouteKind::Unicast => c::RTN_UNICAST,
            RouteKind::Unreachable => c::RTN_UNREACHABLE,
        }
    }
}

/// An IPv4 route of the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Unicast or unreachable.
    pub kind: RouteKind,
    /// Preferred source address for locally sent packets.
    pub prefsrc: Option<Ipv4Addr>,
    /// Destination (0.0.0.0 for default).
    pub dst: Ipv4Addr,
    /// Destination prefix length.
    pub dst_len: u8,
    /// Gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Output interface.
    pub oif: Option<u32>,
    /// rtm_protocol.
    pub protocol: u8,
    /// rtm_scope.
    pub scope: u8,
}

impl Default for Route {
    /// A unicast route to 0.0.0.0/0 with nothing else set.
    fn default() -> Self {
        Route {
            kind: RouteKind::Unicast,
            prefsrc: None,
            dst: Ipv4Addr::UNSPECIFIED,
            dst_len: 0,
            gateway: None,
            oif: None,
            protocol: 0,
            scope: c::RT_SCOPE_UNIVERSE,
        }
    }
}

/// A NETLINK_ROUTE socket in the namespace it was created in.
#[derive(Debug)]
pub struct Socket(netlink::Socket);

impl Socket {
    /// A socket in the calling thread's network namespace.
    pub fn new() -> Result<Self, NlError> {
        netlink::Socket::open(SockProtocol::NetlinkRoute, Options::default()).map(Socket)
    }

    /// A socket in the network namespace at `netns` (a /run/netns file or
    /// /proc/PID/ns/net), made on a short-lived thread so that the caller's
    /// namespace never changes.
    pub fn in_netns(netns: &Path) -> Result<Self, NlError> {
        netlink::Socket::open_in(netns, SockProtocol::NetlinkRoute, Options::default()).map(Socket)
    }

    /// Sends `msg` with ACK and waits for it.
    pub fn request(&self, msg: Msg, op: impl Fn() -> String) -> Result<(), NlError> {
        self.0.request(msg, op)
    }

    /// Sends a request whose answer is message(s) of data (GET or DUMP) and
    /// returns their payloads.
    pub fn fetch(&self, msg: Msg, op: impl Fn() -> String) -> Result<Vec<Vec<u8>>, NlError> {
        self.0.fetch(msg, op)
    }

    // ---- links ----

    /// Creates a veth pair: `host` here, `peer` in the namespace `peer_netns`.
    pub fn create_veth(
        &self,
        host: &str,
        peer: &str,
        mtu: Option<u32>,
        peer_netns: &impl AsFd,
    ) -> Result<(), NlError> {
        let mut m = Msg::new(
            c::RTM_NEWLINK,
            c::NLM_F_ACK | c::NLM_F_CREATE | c::NLM_F_EXCL,
            &ifinfomsg(0, 0, 0),
        )
        .attr_str(c::IFLA_IFNAME, host);
        if let Some(mtu) = mtu {
            m = m.attr_u32(c::IFLA_MTU, mtu);
        }
        m = m
            .begin(c::IFLA_LINKINFO)
            .attr_str(c::IFLA_INFO_KIND, "veth")
            .begin(c::IFLA_INFO_DATA)
            .begin(c::VETH_INFO_PEER)
            .raw(&ifinfomsg(0, 0, 0))
            .attr_str(c::IFLA_IFNAME, peer)
            .attr_u32(c::IFLA_NET_NS_FD, peer_netns.as_fd().as_raw_fd() as u32);
        if let Some(mtu) = mtu {
            m = m.attr_u32(c::IFLA_MTU, mtu);
        }
        m = m.end().end().end();
        self.request(m, || format!("create veth {host} (peer {peer})"))
    }

    /// Creates a link `name` that drops whatever is sent to it (one already
    /// there is success) and sets it up; returns its ifindex. A `dummy`
    /// link, or an `ifb` one where the kernel has no dummy driver (an ifb
    /// link drops what no traffic-control redirect brought to it).
    pub fn ensure_drop_link(&self, name: &str) -> Result<u32, NlError> {
        let create = |kind: &str| {
            let m = Msg::new(
                c::RTM_NEWLINK,
                c::NLM_F_ACK | c::NLM_F_CREATE | c::NLM_F_EXCL,
                &ifinfomsg(0, 0, 0),
            )
            .attr_str(c::IFLA_IFNAME, name)
            .begin(c::IFLA_LINKINFO)
            .attr_str(c::IFLA_INFO_KIND, kind)
            .end();
            match self.request(m, || format!("create {kind} link {name}")) {
                Err(e) if e.errno == Errno::EEXIST => Ok(()),
                r => r,
            }
        };
        match create("dummy") {
            Err(e) if e.errno == Errno::EOPNOTSUPP => create("ifb")?,
            r => r?,
        }
        let link = self.link_by_name(name)?.ok_or_else(|| NlError {
            op: format!("find link {name} after creating it"),
            errno: Errno::ENODEV,
        })?;
        self.set_up(link.index, name, None)?;
        Ok(link.index)
    }

    /// The link called `name`, or `None`.
    pub fn link_by_name(&self, name: &str) -> Result<Option<Link>, NlError> {
        let m = Msg::new(c::RTM_GETLINK, 0, &ifinfomsg(0, 0, 0)).attr_str(c::IFLA_IFNAME, name);
        match self.fetch(m, || format!("get link {name}")) {
            Ok(msgs) => Ok(msgs.first().and_then(|p| Link::parse(p))),
            Err(e) if e.errno == Errno::ENODEV => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link.
    pub fn links(&self) -> Result<Vec<Link>, NlError> {
        let m = Msg::new(c::RTM_GETLINK, c::NLM_F_DUMP, &ifinfomsg(0, 0, 0));
        Ok(self
            .fetch(m, || "list links".into())?
            .iter()
            .filter_map(|p| Link::parse(p))
            .collect())
    }

    /// Deletes the link `name`; `Ok(false)` when there is none.
    pub fn delete_link(&self, name: &str) -> Result<bool, NlError> {
        let m = Msg::new(c::RTM_DELLINK, c::NLM_F_ACK, &ifinfomsg(0, 0, 0))
            .attr_str(c::IFLA_IFNAME, name);
        match self.request(m, || format!("delete link {name}")) {
            Ok(()) => Ok(true),
            Err(e) if e.errno == Errno::ENODEV => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes the link with ifindex `index`; `Ok(false)` when there is none.
    pub fn delete_link_index(&self, index: u32) -> Result<bool, NlError> {
        let m = Msg::new(c::RTM_DELLINK, c::NLM_F_ACK, &ifinfomsg(index as i32, 0, 0));
        match self.request(m, || format!("delete link #{index}")) {
            Ok(()) => Ok(true),
            Err(e) if e.errno == Errno::ENODEV => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether a link with ifindex `index` is listed.
    pub fn link_index_exists(&self, index: u32) -> Result<bool, NlError> {
        let m = Msg::new(c::RTM_GETLINK, 0, &ifinfomsg(index as i32, 0, 0));
        match self.fetch(m, || format!("get link #{index}")) {
            Ok(msgs) => Ok(!msgs.is_empty()),
            Err(e) if e.errno == Errno::ENODEV => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sets the link up, and its alias if given.
    pub fn set_up(&self, index: u32, name: &str, alias: Option<&str>) -> Result<(), NlError> {
        let mut m = Msg::new(
            c::RTM_SETLINK,
            c::NLM_F_ACK,
            &ifinfomsg(index as i32, c::IFF_UP, c::IFF_UP),
        );
        if let Some(a) = alias {
            m = m.attr(c::IFLA_IFALIAS, a.as_bytes());
        }
        self.request(m, || format!("set link {name} up"))
    }

    // ---- addresses ----

    /// Adds `addr/prefix` to link `index` (an existing one is success).
    pub fn add_addr(
        &self,
        index: u32,
        name: &str,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NlError> {
        let m = Msg::new(
            c::RTM_NEWADDR,
            c::NLM_F_ACK | c::NLM_F_CREATE | c::NLM_F_REPLACE,
            &ifaddrmsg(prefix, c::RT_SCOPE_UNIVERSE, index),
        )
        .attr(c::IFA_LOCAL, &addr.octets())
        .attr(c::IFA_ADDRESS, &addr.octets());
        self.request(m, || format!("add address {addr}/{prefix} to {name}"))
    }

    /// Removes `addr/prefix` from link `index`; `Ok(false)` when it is not
    /// there.
    pub fn delete_addr(
        &self,
        index: u32,
        name: &str,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<bool, NlError> {
        let m = Msg::new(
            c::RTM_DELADDR,
            c::NLM_F_ACK,
            &ifaddrmsg(prefix, c::RT_SCOPE_UNIVERSE, index),
        )
        .attr(c::IFA_LOCAL, &addr.octets())
        .attr(c::IFA_ADDRESS, &addr.octets());
        match self.request(m, || format!("delete address {addr}/{prefix} from {name}")) {
            Ok(()) => Ok(true),
            Err(e) if e.errno == Errno::EADDRNOTAVAIL || e.errno == Errno::ENODEV => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The index of link `name`; `ENODEV` when there is none.
    pub fn link_index(&self, name: &str) -> Result<u32, NlError> {
        self.link_by_name(name)?
            .map(|l| l.index)
            .ok_or_else(|| NlError {
                op: format!("find link {name}"),
                errno: Errno::ENODEV,
            })
    }

    /// Every IPv4 address.
    pub fn addrs(&self) -> Result<Vec<Addr>, NlError> {
        let m = Msg::new(c::RTM_GETADDR, c::NLM_F_DUMP, &ifaddrmsg(0, 0, 0));
        let mut out = Vec::new();
        for p in self.fetch(m, || "list addresses".into())? {
            if p.len() < 8 || p[0] != c::AF_INET {
                continue;
            }
            let prefix = p[1];
            let index = u32::from_ne_bytes(p[4..8].try_into().unwrap_or([0; 4]));
            let mut local = None;
            let mut address = None;
            for (ty, d) in parse_attrs(&p[8..]) {
                match ty {
                    c::IFA_LOCAL => local = attr_ip(d),
                    c::IFA_ADDRESS => address = attr_ip(d),
                    _ => {}
                }
            }
            if let Some(addr) = local.or(address) {
                out.push(Addr {
                    index,
                    addr,
                    prefix,
                });
            }
        }
        Ok(out)
    }

    // ---- routes ----

    fn route_msg(ty: u16, flags: u16, r: &Route) -> Msg {
        let rflags = if r.gateway.is_some() && r.oif.is_some() {
            c::RTNH_F_ONLINK
        } else {
            0
        };
        let mut m = Msg::new(
            ty,
            flags,
            &rtmsg(r.dst_len, r.protocol, r.scope, r.kind.rtn(), rflags),
        )
        .attr_u32(c::RTA_TABLE, c::RT_TABLE_MAIN as u32);
        if r.dst_len > 0 {
            m = m.attr(c::RTA_DST, &r.dst.octets());
        }
        if let Some(gw) = r.gateway {
            m = m.attr(c::RTA_GATEWAY, &gw.octets());
        }
        if let Some(oif) = r.oif {
            m = m.attr_u32(c::RTA_OIF, oif);
        }
        if let Some(src) = r.prefsrc {
            m = m.attr(c::RTA_PREFSRC, &src.octets());
        }
        m
    }

    /// Adds or replaces `r` (a gateway together with an oif means onlink).
    pub fn replace_route(&self, r: &Route) -> Result<(), NlError> {
        let m = Self::route_msg(
            c::RTM_NEWROUTE,
            c::NLM_F_ACK | c::NLM_F_CREATE | c::NLM_F_REPLACE,
            r,
        );
        self.request(m, || {
            format!("replace route {}/{} ({r:?})", r.dst, r.dst_len)
        })
    }

    /// Deletes `r`; `Ok(false)` when it is not there.
    pub fn delete_route(&self, r: &Route) -> Result<bool, NlError> {
        let m = Self::route_msg(c::RTM_DELROUTE, c::NLM_F_ACK, r);
        match self.request(m, || format!("delete route {}/{}", r.dst, r.dst_len)) {
            Ok(()) => Ok(true),
            Err(e) if e.errno == Errno::ESRCH => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The IPv4 unicast and unreachable routes of the main table.
    pub fn routes(&self) -> Result<Vec<Route>, NlError> {
        let m = Msg::new(c::RTM_GETROUTE, c::NLM_F_DUMP, &rtmsg(0, 0, 0, 0, 0));
        let mut out = Vec::new();
        for p in self.fetch(m, || "list routes".into())? {
            if p.len() < 12 || p[0] != c::AF_INET {
                continue;
            }
            let mut table = p[4] as u32;
            let kind = match p[7] {
                c::RTN_UNICAST => RouteKind::Unicast,
                c::RTN_UNREACHABLE => RouteKind::Unreachable,
                _ => continue,
            };
            let mut r = Route {
                kind,
                prefsrc: None,
                dst: Ipv4Addr::UNSPECIFIED,
                dst_len: p[1],
                gateway: None,
                oif: None,
                protocol: p[5],
                scope: p[6],
            };
            for (ty, d) in parse_attrs(&p[12..]) {
                match ty {
                    c::RTA_DST => r.dst = attr_ip(d).unwrap_or(r.dst),
                    c::RTA_GATEWAY => r.gateway = attr_ip(d),
                    c::RTA_PREFSRC => r.prefsrc = attr_ip(d),
                    c::RTA_OIF if d.len() == 4 => {
                        r.oif = Some(u32::from_ne_bytes(d.try_into().unwrap_or([0; 4])))
                    }
                    c::RTA_TABLE if d.len() == 4 => {
                        table = u32::from_ne_bytes(d.try_into().unwrap_or([0; 4]))
                    }
                    _ => {}
                }
            }
            if table == c::RT_TABLE_MAIN as u32 {
                out.push(r);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_link_message() {
        let mut payload = ifinfomsg(5, c::IFF_UP, 0).to_vec();
        let m = Msg::new(0, 0, &[])
            .attr_str(c::IFLA_IFNAME, "eth0")
            .attr(c::IFLA_ADDRESS, &[2, 0, 0, 0, 0, 1])
            .attr_u32(c::IFLA_MTU, 1400)
            .attr(c::IFLA_IFALIAS, b"keelson-cni x")
            .finish(0);
        payload.extend_from_slice(&m[16..]);
        let l = Link::parse(&payload).unwrap();
        assert_eq!(l.index, 5);
        assert_eq!(l.name, "eth0");
        assert_eq!(l.mtu, 1400);
        assert_eq!(l.mac_string(), "02:00:00:00:00:01");
        assert_eq!(l.alias.as_deref(), Some("keelson-cni x"));
    }
}
