//! Byte layout of the BPF map keys and values: a field-for-field mirror of
//! `ebpf/lb.h` (whose `_Static_assert`s pin the same sizes), plus the typed
//! view the rest of the crate uses. Pure: no I/O, no aya.
//!
//! Addresses and ports are stored in network byte order, as the kernel
//! hands them to the programs: a raw `u32` address holds the four octets in
//! memory order (`u32::from_ne_bytes(octets)`), a raw `u16` port holds the
//! big-endian bytes (`port.to_be()`).

use std::fmt;
use std::net::Ipv4Addr;

/// Map names (pinned under `<pin dir>/maps/<name>`).
pub const MAP_SERVICES: &str = "klb_services";
pub const MAP_BACKENDS: &str = "klb_backends";
pub const MAP_REVNAT: &str = "klb_revnat";
pub const MAP_AFFINITY: &str = "klb_affinity";
pub const MAP_CT: &str = "klb_ct";
/// Every map, in the order `remove_all` deletes them.
pub const MAPS: &[&str] = &[MAP_SERVICES, MAP_BACKENDS, MAP_REVNAT, MAP_AFFINITY, MAP_CT];

/// `max_entries` of the maps (lb.h `KLB_MAX_*`).
pub const MAX_SERVICES: usize = 65536;
pub const MAX_BACKENDS: usize = 262_144;

/// `lb_svc_val.flags` bits (lb.h `KLB_F_*`).
pub const F_NODEPORT: u16 = 0x1;
pub const F_EXTERNAL: u16 = 0x2;
pub const F_EXT_LOCAL: u16 = 0x4;
pub const F_AFFINITY: u16 = 0x8;

/// The packet mark the TC program sets on the first packet of a NodePort /
/// external connection with externalTrafficPolicy: Cluster (lb.h
/// `KLB_MASQ_MARK`): the proxy masquerades packets carrying it.
pub const MASQ_MARK: u32 = 0x4000;

/// Transport protocol of a frontend (IP protocol numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
        }
    }

    pub fn from_number(n: u8) -> Option<Proto> {
        match n {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            132 => Some(Proto::Sctp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

/// A Service frontend: ClusterIP / external IP and port, or a NodePort
/// (`addr` unspecified, with [`F_NODEPORT`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub proto: Proto,
    pub addr: Ipv4Addr,
    pub port: u16,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}:{}", self.proto.name(), self.addr, self.port)
    }
}

/// One backend address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    pub addr: Ipv4Addr,
    pub port: u16,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.addr, self.port)
    }
}

/// The value of a services entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceEntry {
    pub id: u32,
    pub count: u16,
    pub flags: u16,
    pub affinity_timeout: u32,
}

fn addr_raw(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

fn raw_addr(r: u32) -> Ipv4Addr {
    Ipv4Addr::from(r.to_ne_bytes())
}

/// `struct lb_svc_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SvcKey {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub pad: u8,
}

/// `struct lb_svc_val`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SvcVal {
    pub id: u32,
    pub count: u16,
    pub flags: u16,
    pub affinity_timeout: u32,
}

/// `struct lb_be_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct BeKey {
    pub id: u32,
    pub slot: u32,
}

/// `struct lb_be_val`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct BeVal {
    pub addr: u32,
    pub port: u16,
    pub pad: u16,
}

/// `struct lb_revnat_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct RevNatKey {
    pub cookie: u64,
    pub addr: u32,
    pub port: u16,
    pub pad: u16,
}

/// `struct lb_revnat_val`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct RevNatVal {
    pub addr: u32,
    pub port: u16,
    pub pad: u16,
}

/// `struct lb_aff_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct AffKey {
    pub client: u64,
    pub id: u32,
    pub pad: u32,
}

/// `struct lb_aff_val`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct AffVal {
    pub addr: u32,
    pub port: u16,
    pub slot: u16,
    pub last_ns: u64,
}

/// `struct lb_ct_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtKey {
    pub client_addr: u32,
    pub addr: u32,
    pub client_port: u16,
    pub port: u16,
    pub proto: u8,
    pub dir: u8,
    pub pad: u16,
}

/// `struct lb_ct_val`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtVal {
    pub addr: u32,
    pub port: u16,
    pub pad: u16,
    pub last_ns: u64,
}

impl SvcKey {
    pub fn from_frontend(fe: &Frontend) -> SvcKey {
        SvcKey {
            addr: addr_raw(fe.addr),
            port: fe.port.to_be(),
            proto: fe.proto.number(),
            pad: 0,
        }
    }

    /// None for a protocol this crate never writes.
    pub fn to_frontend(self) -> Option<Frontend> {
        Some(Frontend {
            proto: Proto::from_number(self.proto)?,
            addr: raw_addr(self.addr),
            port: u16::from_be(self.port),
        })
    }

    /// The bytes as the kernel stores them.
    pub fn encode(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0..4].copy_from_slice(&self.addr.to_ne_bytes());
        b[4..6].copy_from_slice(&self.port.to_ne_bytes());
        b[6] = self.proto;
        b[7] = self.pad;
        b
    }
}

impl SvcVal {
    pub fn from_entry(e: &ServiceEntry) -> SvcVal {
        SvcVal {
            id: e.id,
            count: e.count,
            flags: e.flags,
            affinity_timeout: e.affinity_timeout,
        }
    }

    pub fn to_entry(self) -> ServiceEntry {
        ServiceEntry {
            id: self.id,
            count: self.count,
            flags: self.flags,
            affinity_timeout: self.affinity_timeout,
        }
    }

    pub fn encode(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[0..4].copy_from_slice(&self.id.to_ne_bytes());
        b[4..6].copy_from_slice(&self.count.to_ne_bytes());
        b[6..8].copy_from_slice(&self.flags.to_ne_bytes());
        b[8..12].copy_from_slice(&self.affinity_timeout.to_ne_bytes());
        b
    }
}

impl BeKey {
    pub fn encode(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0..4].copy_from_slice(&self.id.to_ne_bytes());
        b[4..8].copy_from_slice(&self.slot.to_ne_bytes());
        b
    }
}

impl BeVal {
    pub fn from_backend(be: &Backend) -> BeVal {
        BeVal {
            addr: addr_raw(be.addr),
            port: be.port.to_be(),
            pad: 0,
        }
    }

    pub fn to_backend(self) -> Backend {
        Backend {
            addr: raw_addr(self.addr),
            port: u16::from_be(self.port),
        }
    }

    pub fn encode(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0..4].copy_from_slice(&self.addr.to_ne_bytes());
        b[4..6].copy_from_slice(&self.port.to_ne_bytes());
        b[6..8].copy_from_slice(&self.pad.to_ne_bytes());
        b
    }
}

impl AffVal {
    pub fn backend(&self) -> Backend {
        Backend {
            addr: raw_addr(self.addr),
            port: u16::from_be(self.port),
        }
    }
}

impl AffKey {
    /// The client as the TC program writes it (an IPv4 source address);
    /// None for a netns cookie written by the socket programs.
    pub fn client_addr(&self) -> Option<Ipv4Addr> {
        u32::try_from(self.client).ok().map(raw_addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn masq_mark_matches_lb_h() {
        let lb_h = include_str!("../lb.h");
        assert!(
            lb_h.contains(&format!("#define KLB_MASQ_MARK {MASQ_MARK:#x}")),
            "KLB_MASQ_MARK in ebpf/lb.h differs from layout::MASQ_MARK"
        );
    }

    #[test]
    fn sizes_and_offsets_match_lb_h() {
        assert_eq!(size_of::<SvcKey>(), 8);
        assert_eq!(offset_of!(SvcKey, port), 4);
        assert_eq!(offset_of!(SvcKey, proto), 6);
        assert_eq!(size_of::<SvcVal>(), 12);
        assert_eq!(offset_of!(SvcVal, count), 4);
        assert_eq!(offset_of!(SvcVal, flags), 6);
        assert_eq!(offset_of!(SvcVal, affinity_timeout), 8);
        assert_eq!(size_of::<BeKey>(), 8);
        assert_eq!(size_of::<BeVal>(), 8);
        assert_eq!(size_of::<RevNatKey>(), 16);
        assert_eq!(offset_of!(RevNatKey, addr), 8);
        assert_eq!(offset_of!(RevNatKey, port), 12);
        assert_eq!(size_of::<RevNatVal>(), 8);
        assert_eq!(size_of::<AffKey>(), 16);
        assert_eq!(offset_of!(AffKey, id), 8);
        assert_eq!(size_of::<AffVal>(), 16);
        assert_eq!(offset_of!(AffVal, slot), 6);
        assert_eq!(offset_of!(AffVal, last_ns), 8);
        assert_eq!(size_of::<CtKey>(), 16);
        assert_eq!(offset_of!(CtKey, client_port), 8);
        assert_eq!(offset_of!(CtKey, port), 10);
        assert_eq!(offset_of!(CtKey, proto), 12);
        assert_eq!(offset_of!(CtKey, dir), 13);
        assert_eq!(size_of::<CtVal>(), 16);
        assert_eq!(offset_of!(CtVal, last_ns), 8);
    }

    #[test]
    fn service_key_is_network_order() {
        let fe = Frontend {
            proto: Proto::Udp,
            addr: Ipv4Addr::new(10, 96, 0, 10),
            port: 53,
        };
        let k = SvcKey::from_frontend(&fe);
        assert_eq!(k.encode(), [10, 96, 0, 10, 0, 53, 17, 0]);
        assert_eq!(k.to_frontend(), Some(fe));
    }

    #[test]
    fn service_value_is_host_order() {
        let v = SvcVal::from_entry(&ServiceEntry {
            id: 0x0102_0304,
            count: 3,
            flags: F_AFFINITY | F_EXTERNAL,
            affinity_timeout: 10800,
        });
        let b = v.encode();
        assert_eq!(&b[0..4], &0x0102_0304u32.to_ne_bytes());
        assert_eq!(&b[4..6], &3u16.to_ne_bytes());
        assert_eq!(&b[6..8], &0xau16.to_ne_bytes());
        assert_eq!(&b[8..12], &10800u32.to_ne_bytes());
        assert_eq!(v.to_entry().count, 3);
    }

    #[test]
    fn backend_roundtrip_and_bytes() {
        let be = Backend {
            addr: Ipv4Addr::new(192, 0, 2, 7),
            port: 8080,
        };
        let v = BeVal::from_backend(&be);
        assert_eq!(v.encode(), [192, 0, 2, 7, 0x1f, 0x90, 0, 0]);
        assert_eq!(v.to_backend(), be);
        let k = BeKey { id: 7, slot: 2 };
        assert_eq!(&k.encode()[4..8], &2u32.to_ne_bytes());
    }

    #[test]
    fn unknown_protocol_is_not_a_frontend() {
        let k = SvcKey {
            proto: 1,
            ..SvcKey::default()
        };
        assert_eq!(k.to_frontend(), None);
    }
}
