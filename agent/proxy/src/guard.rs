//! The Service CIDR guard: traffic to an address in the Service CIDR that
//! no rule load-balances is refused on the node, never routed out of it
//! (through the default route, to whatever answers there).
//!
//! The proxy owns one route for the whole Service CIDR, tagged
//! [`RTPROT_KEELSON_SERVICES`], in two states:
//!
//! - **refuse** (`unreachable`): from the proxy's first start until the
//!   nftables backend has programmed its table, and always with the eBPF
//!   backend (its socket programs rewrite the address before any route is
//!   looked up). A local `connect()` fails with EHOSTUNREACH; a pod's packet
//!   gets an ICMP host unreachable back. Needs no program but the kernel,
//!   so it holds while `nft` is missing or the proxy is down.
//! - **forward** (to the drop link [`DROP_LINK`], dummy or ifb): once the nftables table
//!   is programmed. A local sender's route lookup happens before the nat
//!   output hook, so it needs a usable route; DNAT then reroutes to the
//!   endpoint, the table's `noep` chain rejects whatever was not DNATed
//!   (`ip daddr <Service CIDR> goto reject_new`), and anything else would
//!   be dropped by that link.
//!
//! A restarted proxy keeps a forward route in place until it knows better
//! (the table it programmed stays in the kernel while it is down).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use keelson_host::rtnetlink::{NlError, RTPROT_KEELSON_SERVICES, Route, RouteKind, Socket, c};

/// The link the forward route points at: it drops what reaches it.
pub const DROP_LINK: &str = "keelson-svc";

/// What the guard's route does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardState {
    /// `unreachable`: refused on the node.
    Refuse,
    /// Through the drop link: the nftables table decides.
    Forward,
}

/// The route for one Service CIDR in one network namespace.
#[derive(Clone, Debug)]
pub struct ServiceCidrGuard {
    /// The Service CIDR.
    pub cidr: Ipv4Net,
    /// `/run/netns/NAME` (the proxy's `--netns`), or the current namespace.
    pub netns: Option<PathBuf>,
    /// Source address of locally sent packets on the forward route.
    pub prefsrc: Option<Ipv4Addr>,
}

impl ServiceCidrGuard {
    fn socket(&self) -> Result<Socket, NlError> {
        match &self.netns {
            Some(p) => Socket::in_netns(p),
            None => Socket::new(),
        }
    }

    fn route(&self, state: GuardState, oif: Option<u32>) -> Route {
        Route {
            kind: match state {
                GuardState::Refuse => RouteKind::Unreachable,
                GuardState::Forward => RouteKind::Unicast,
            },
            prefsrc: match state {
                GuardState::Refuse => None,
                GuardState::Forward => self.prefsrc,
            },
            dst: self.cidr.network(),
            dst_len: self.cidr.prefix_len(),
            gateway: None,
            oif,
            protocol: RTPROT_KEELSON_SERVICES,
            scope: match state {
                GuardState::Refuse => c::RT_SCOPE_UNIVERSE,
                GuardState::Forward => c::RT_SCOPE_LINK,
            },
        }
    }

    /// The state of the guard's route, if it is there.
    pub fn state(&self) -> Result<Option<GuardState>, NlError> {
        let routes = self.socket()?.routes()?;
        Ok(routes
            .iter()
            .find(|r| {
                r.protocol == RTPROT_KEELSON_SERVICES
                    && r.dst == self.cidr.network()
                    && r.dst_len == self.cidr.prefix_len()
            })
            .map(|r| match r.kind {
                RouteKind::Unreachable => GuardState::Refuse,
                RouteKind::Unicast => GuardState::Forward,
            }))
    }

    /// Puts the route in `state` (replacing what is there).
    pub fn set(&self, state: GuardState) -> Result<(), NlError> {
        let sock = self.socket()?;
        let oif = match state {
            GuardState::Refuse => None,
            GuardState::Forward => Some(sock.ensure_drop_link(DROP_LINK)?),
        };
        sock.replace_route(&self.route(state, oif))
    }

    /// At start: refuses unless a route of ours is there already.
    pub fn refuse_unless_present(&self) -> Result<(), NlError> {
        if self.state()?.is_none() {
            self.set(GuardState::Refuse)?;
        }
        Ok(())
    }
}

/// Removes every guard route (any CIDR) and the drop link in the current
/// namespace or `netns`. Idempotent.
pub fn remove(netns: Option<&std::path::Path>) -> Result<(), NlError> {
    let sock = match netns {
        Some(p) => Socket::in_netns(p)?,
        None => Socket::new()?,
    };
    for r in sock.routes()? {
        if r.protocol == RTPROT_KEELSON_SERVICES {
            sock.delete_route(&r)?;
        }
    }
    sock.delete_link(DROP_LINK)?;
    Ok(())
}
