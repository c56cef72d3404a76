//! nf_tables over netlink, for map and set elements: a pure encoder of
//! batches ([`Batch`]) and a thin synchronous socket ([`NetlinkSocket`]),
//! both on keelson-host's netlink framing (messages, attributes, the
//! send-and-collect-acks loop); only the nf_tables layouts live here.
//!
//! The `nft` CLI reads the table (all elements of its verdict maps, for loop
//! checks) and parses the script before each run: at 30k Services that costs
//! tens of milliseconds for one element. Element updates do not need either:
//! they are encoded here straight from the rendered [`Element`]s and sent as
//! one nfnetlink batch, which the kernel commits as one transaction, exactly
//! like one `nft -f` run.
//!
//! Layouts come from the uapi headers (linux/netfilter/nfnetlink.h,
//! nf_tables.h) and match what `nft --debug=netlink` shows for our maps: a
//! concatenated key puts every field in its own 4-byte register slot;
//! addresses and ports are in network byte order, protocols one byte, numgen
//! slots a host-order u32.

use std::net::Ipv4Addr;
use std::time::Duration;

use keelson_host::netlink::{
    self as nl, Msg, NLA_F_NESTED, NLM_F_ACK, NLM_F_CREATE, Options, Refused, begin_nest, end_nest,
    put_attr, put_attr_str,
};
#[cfg(test)]
use keelson_host::netlink::{NLM_F_REQUEST, NLMSG_ERROR};
use nix::sys::socket::SockProtocol;

use super::render::{Container, Element};

// linux/netfilter/nfnetlink.h
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10; // NLMSG_MIN_TYPE
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNETLINK_V0: u8 = 0;
const AF_UNSPEC: u8 = 0;
/// NFPROTO_IPV4: `table ip`.
pub const NFPROTO_IPV4: u8 = 2;
// linux/netfilter/nf_tables.h: enum nf_tables_msg_types
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
// enum nft_set_elem_list_attributes
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
// enum nft_list_attributes
const NFTA_LIST_ELEM: u16 = 1;
// enum nft_set_elem_attributes
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
// enum nft_data_attributes
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
// enum nft_verdict_attributes
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
// enum nft_verdicts
/// `jump CHAIN`.
pub const NFT_JUMP: i32 = -3;
/// `goto CHAIN`.
pub const NFT_GOTO: i32 = -4;

/// Room for one element list: its attribute length is a u16.
const MAX_LIST: usize = 60 * 1024;

/// An element that cannot be encoded (a renderer bug, not a kernel error).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("encode element {element:?} of {set}: {reason}")]
pub struct EncodeError {
    pub set: &'static str,
    pub element: String,
    pub reason: String,
}

/// Mapping data of an element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    /// A value (e.g. `ipv4_addr . inet_service` for DNAT maps).
    Value(Vec<u8>),
    /// A verdict with a chain (`NFT_GOTO` / `NFT_JUMP`).
    Verdict { code: i32, chain: String },
}

#[derive(Clone, Copy)]
enum Field {
    Ipv4,
    Proto,
    Port,
    Slot,
}

fn key_fields(c: Container) -> &'static [Field] {
    use Field::*;
    match c {
        Container::Services | Container::NoepServices => &[Ipv4, Proto, Port],
        Container::Backends => &[Ipv4, Proto, Port, Slot],
        Container::Nodeports | Container::NoepNodeports => &[Proto, Port],
        Container::NpBackends => &[Proto, Port, Slot],
        Container::Hairpin => &[Ipv4, Ipv4],
    }
}

/// Encodes `a . b . c` (nft syntax) into register slots.
fn encode_concat(fields: &[Field], text: &str) -> Result<Vec<u8>, String> {
    let parts: Vec<&str> = text.split(" . ").map(str::trim).collect();
    if parts.len() != fields.len() {
        return Err(format!("{} fields, expected {}", parts.len(), fields.len()));
    }
    let mut out = Vec::with_capacity(4 * fields.len());
    for (f, p) in fields.iter().zip(parts) {
        let slot: [u8; 4] = match f {
            Field::Ipv4 => p
                .parse::<Ipv4Addr>()
                .map_err(|_| format!("bad IPv4 address {p:?}"))?
                .octets(),
            Field::Proto => {
                let n: u8 = match p {
                    "tcp" => 6,
                    "udp" => 17,
                    "sctp" => 132,
                    _ => return Err(format!("bad protocol {p:?}")),
                };
                [n, 0, 0, 0]
            }
            Field::Port => {
                let n: u16 = p.parse().map_err(|_| format!("bad port {p:?}"))?;
                let b = n.to_be_bytes();
                [b[0], b[1], 0, 0]
            }
            Field::Slot => p
                .parse::<u32>()
                .map_err(|_| format!("bad slot {p:?}"))?
                .to_ne_bytes(),
        };
        out.extend_from_slice(&slot);
    }
    Ok(out)
}

/// The netlink key and data of a rendered element.
pub fn encode_element(e: &Element) -> Result<(Vec<u8>, Option<Data>), EncodeError> {
    let err = |reason: String| EncodeError {
        set: e.container.name(),
        element: match &e.value {
            Some(v) => format!("{} : {v}", e.key),
            None => e.key.clone(),
        },
        reason,
    };
    let key = encode_concat(key_fields(e.container), &e.key).map_err(err)?;
    let data = match (e.container, &e.value) {
        (Container::Services | Container::Nodeports, Some(v)) => {
            let (code, chain) = if let Some(c) = v.strip_prefix("goto ") {
                (NFT_GOTO, c)
            } else if let Some(c) = v.strip_prefix("jump ") {
                (NFT_JUMP, c)
            } else {
                return Err(err(format!("bad verdict {v:?}")));
            };
            Some(Data::Verdict {
                code,
                chain: chain.trim().to_string(),
            })
        }
        (Container::Backends | Container::NpBackends, Some(v)) => Some(Data::Value(
            encode_concat(&[Field::Ipv4, Field::Port], v).map_err(err)?,
        )),
        (Container::NoepServices | Container::NoepNodeports | Container::Hairpin, None) => None,
        (_, v) => return Err(err(format!("unexpected value {v:?}"))),
    };
    Ok((key, data))
}

/// Whether a batch message adds or deletes elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElemOp {
    Add,
    Delete,
}

/// One nfnetlink batch (one nf_tables transaction) under construction.
/// Pure bytes: sending is [`NetlinkSocket::send_batch`]'s business.
#[derive(Debug)]
pub struct Batch {
    buf: Vec<u8>,
    /// Sequence number of the next message.
    seq: u32,
    /// Sequence number of the last message that asks for an ack.
    last_seq: u32,
    messages: usize,
}

/// nfgenmsg: family, version, resource id (big-endian).
fn nfgenmsg(family: u8, res_id: u16) -> [u8; 4] {
    let r = res_id.to_be_bytes();
    [family, NFNETLINK_V0, r[0], r[1]]
}

/// Appends nested attribute `ty` whose payload `f` writes.
fn nested(buf: &mut Vec<u8>, ty: u16, f: impl FnOnce(&mut Vec<u8>)) {
    let at = begin_nest(buf, ty | NLA_F_NESTED);
    f(buf);
    end_nest(buf, at);
}

/// Appends one element (`NFTA_LIST_ELEM`) to an element list.
fn put_element(buf: &mut Vec<u8>, key: &[u8], data: Option<&Data>) {
    nested(buf, NFTA_LIST_ELEM, |b| {
        nested(b, NFTA_SET_ELEM_KEY, |b| put_attr(b, NFTA_DATA_VALUE, key));
        match data {
            None => {}
            Some(Data::Value(v)) => {
                nested(b, NFTA_SET_ELEM_DATA, |b| put_attr(b, NFTA_DATA_VALUE, v));
            }
            Some(Data::Verdict { code, chain }) => nested(b, NFTA_SET_ELEM_DATA, |b| {
                nested(b, NFTA_DATA_VERDICT, |b| {
                    // Verdict codes are big-endian on the wire.
                    put_attr(b, NFTA_VERDICT_CODE, &code.to_be_bytes());
                    put_attr_str(b, NFTA_VERDICT_CHAIN, chain);
                })
            }),
        }
    });
}

impl Batch {
    /// Starts a batch whose messages are numbered from `seq`.
    pub fn new(seq: u32) -> Batch {
        let mut b = Batch {
            buf: Vec::with_capacity(4096),
            seq,
            last_seq: seq,
            messages: 0,
        };
        b.push(Msg::new(
            NFNL_MSG_BATCH_BEGIN,
            0,
            &nfgenmsg(AF_UNSPEC, NFNL_SUBSYS_NFTABLES),
        ));
        b
    }

    /// Appends `m` with the next sequence number.
    fn push(&mut self, m: Msg) {
        self.buf.extend_from_slice(&m.finish(self.seq));
        self.seq = self.seq.wrapping_add(1);
    }

    /// Appends a request that asks for an ack.
    fn push_request(&mut self, m: Msg) {
        self.last_seq = self.seq;
        self.push(m);
        self.messages += 1;
    }

    /// Adds (or deletes) `elements` of set `set` in table `table`. Splits
    /// into several messages when one element list would pass 64 KiB.
    pub fn elements(
        &mut self,
        op: ElemOp,
        family: u8,
        table: &str,
        set: &str,
        elements: &[(Vec<u8>, Option<Data>)],
    ) {
        let (ty, flags) = match op {
            ElemOp::Add => (NFT_MSG_NEWSETELEM, NLM_F_CREATE),
            ElemOp::Delete => (NFT_MSG_DELSETELEM, 0),
        };
        let mut rest = elements;
        while !rest.is_empty() {
            let mut list = Vec::new();
            let mut n = 0;
            for (key, data) in rest {
                let before = list.len();
                put_element(&mut list, key, data.as_ref());
                // The list attribute: a 4-byte header and the elements.
                if 4 + list.len() > MAX_LIST && n > 0 {
                    list.truncate(before);
                    break;
                }
                n += 1;
            }
            let m = Msg::new(
                (NFNL_SUBSYS_NFTABLES << 8) | ty,
                flags | NLM_F_ACK,
                &nfgenmsg(family, 0),
            )
            .attr_str(NFTA_SET_ELEM_LIST_TABLE, table)
            .attr_str(NFTA_SET_ELEM_LIST_SET, set)
            .attr(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, &list);
            self.push_request(m);
            rest = &rest[n..];
        }
    }

    /// Removes every element of set `set` (a DELSETELEM without a list).
    pub fn flush(&mut self, family: u8, table: &str, set: &str) {
        let m = Msg::new(
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELSETELEM,
            NLM_F_ACK,
            &nfgenmsg(family, 0),
        )
        .attr_str(NFTA_SET_ELEM_LIST_TABLE, table)
        .attr_str(NFTA_SET_ELEM_LIST_SET, set);
        self.push_request(m);
    }

    /// Closes the batch: the bytes to send, the sequence number whose ack
    /// ends the reply, and the number of messages (0: nothing to send).
    pub fn end(mut self) -> (Vec<u8>, u32, usize) {
        self.push(Msg::new(
            NFNL_MSG_BATCH_END,
            0,
            &nfgenmsg(AF_UNSPEC, NFNL_SUBSYS_NFTABLES),
        ));
        (self.buf, self.last_seq, self.messages)
    }
}

/// Encodes element deletes, then adds, of table `table` (family ip) into
/// one batch. Elements are grouped per set, in [`Container::ALL`] order.
pub fn element_batch(
    seq: u32,
    table: &str,
    delete: &[&Element],
    add: &[&Element],
) -> Result<Batch, EncodeError> {
    let mut batch = Batch::new(seq);
    for (op, elements) in [(ElemOp::Delete, delete), (ElemOp::Add, add)] {
        for c in Container::ALL {
            let encoded = elements
                .iter()
                .filter(|e| e.container == c)
                .map(|e| {
                    let (key, data) = encode_element(e)?;
                    Ok((key, if op == ElemOp::Add { data } else { None }))
                })
                .collect::<Result<Vec<_>, EncodeError>>()?;
            if !encoded.is_empty() {
                batch.elements(op, NFPROTO_IPV4, table, c.name(), &encoded);
            }
        }
    }
    Ok(batch)
}

/// One batch that makes the element sets of table `table` hold exactly
/// `elements`: each [`Container`] flushed, then filled, and the `generation`
/// set's one element replaced by `generation` (a `type mark` element: four
/// bytes in host order). What a full sync sends when the table's structure
/// is already right.
pub fn replace_batch(
    seq: u32,
    table: &str,
    elements: &[&Element],
    generation: u32,
) -> Result<Batch, EncodeError> {
    let mut batch = Batch::new(seq);
    for c in Container::ALL {
        batch.flush(NFPROTO_IPV4, table, c.name());
    }
    batch.flush(NFPROTO_IPV4, table, "generation");
    batch.elements(
        ElemOp::Add,
        NFPROTO_IPV4,
        table,
        "generation",
        &[(generation.to_ne_bytes().to_vec(), None)],
    );
    for c in Container::ALL {
        let encoded = elements
            .iter()
            .filter(|e| e.container == c)
            .map(|e| encode_element(e))
            .collect::<Result<Vec<_>, EncodeError>>()?;
        if !encoded.is_empty() {
            batch.elements(ElemOp::Add, NFPROTO_IPV4, table, c.name(), &encoded);
        }
    }
    Ok(batch)
}

/// Errors of the netlink socket, naming the operation.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("open netlink socket (NETLINK_NETFILTER){}: {source}", netns_suffix(.netns))]
    Open {
        netns: Option<String>,
        #[source]
        source: std::io::Error,
    },
    #[error("send nf_tables batch ({bytes} bytes): {source}")]
    Send {
        bytes: usize,
        #[source]
        source: nl::NlError,
    },
    #[error("nf_tables rejected the batch: {0}")]
    Rejected(String),
}

fn netns_suffix(netns: &Option<String>) -> String {
    netns
        .as_ref()
        .map(|n| format!(" in netns {n}"))
        .unwrap_or_default()
}

/// A NETLINK_NETFILTER socket, optionally opened inside a named network
/// namespace (it stays bound to that namespace).
#[derive(Debug)]
pub struct NetlinkSocket {
    sock: nl::Socket,
    netns: Option<String>,
}

impl NetlinkSocket {
    /// Opens a socket in the current network namespace, or in
    /// `/run/netns/NAME` (entered on a short-lived thread).
    pub fn open(netns: Option<&str>) -> Result<NetlinkSocket, NetlinkError> {
        let opts = Options {
            // Replies to big batches: room for acks and error echoes.
            rcvbuf: Some(8 << 20),
            recv_timeout: Some(Duration::from_secs(30)),
            read_buffer: 1 << 20,
        };
        let proto = SockProtocol::NetlinkNetFilter;
        let sock = match netns {
            None => nl::Socket::open(proto, opts),
            Some(name) => nl::Socket::open_in(&keelson_host::netns::named(name), proto, opts),
        }
        .map_err(|e| NetlinkError::Open {
            netns: netns.map(str::to_string),
            source: std::io::Error::other(e),
        })?;
        // Numbered from the clock: a restarted proxy does not take its
        // predecessor's acks for its own.
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        sock.set_seq(seq);
        Ok(NetlinkSocket {
            sock,
            netns: netns.map(str::to_string),
        })
    }

    /// The next free sequence number (for [`Batch::new`]).
    pub fn next_seq(&self) -> u32 {
        self.sock.next_seq()
    }

    /// Sends a closed batch and waits for the kernel's verdict: Ok once the
    /// last message is acknowledged and nothing failed.
    pub fn send_batch(&mut self, batch: Batch) -> Result<(), NetlinkError> {
        let first = self.sock.next_seq();
        let (bytes, last_seq, messages) = batch.end();
        if messages == 0 {
            return Ok(());
        }
        // BEGIN .. END: END is numbered last_seq + 1.
        self.sock.set_seq(last_seq.wrapping_add(2));
        let send_err = |source| NetlinkError::Send {
            bytes: bytes.len(),
            source,
        };
        // The whole batch travels in one datagram: the kernel commits at
        // BATCH_END only when it arrives in the same skb.
        self.sock
            .reserve_send(bytes.len() + (64 << 10))
            .map_err(send_err)?;
        let refused = self
            .sock
            .transact(&bytes, first, last_seq, &|| {
                format!("nf_tables batch of {messages} messages")
            })
            .map_err(send_err)?;
        if refused.is_empty() {
            Ok(())
        } else {
            let errors: Vec<String> = refused.iter().map(|r| describe(r, first)).collect();
            Err(NetlinkError::Rejected(format!(
                "{}{}",
                errors.join("; "),
                netns_suffix(&self.netns)
            )))
        }
    }
}

/// "add elements (message 3): File exists".
fn describe(r: &Refused, first_seq: u32) -> String {
    let what = match r.request.map(|t| t & 0xff) {
        Some(NFT_MSG_NEWSETELEM) => "add elements",
        Some(NFT_MSG_DELSETELEM) => "delete elements",
        _ => "batch",
    };
    format!(
        "{what} (message {}): {}",
        r.seq.wrapping_sub(first_seq),
        std::io::Error::from_raw_os_error(r.errno as i32)
    )
}

/// Reads a datagram of replies: (saw the ack of `last_seq`, errors).
/// Replies to other sequence numbers (older batches) are ignored.
pub fn parse_replies(data: &[u8], first_seq: u32, last_seq: u32) -> (bool, Vec<String>) {
    let (done, refused) = nl::parse_acks(data, first_seq, last_seq);
    (
        done,
        refused.iter().map(|r| describe(r, first_seq)).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(c: Container, key: &str, value: Option<&str>) -> Element {
        Element {
            container: c,
            key: key.into(),
            value: value.map(str::to_string),
        }
    }

    #[test]
    fn keys_use_one_register_slot_per_field() {
        // As `nft --debug=netlink` shows them (words printed host-order):
        // element 6300600a 00000006 00005000 00000001 : 0501f40a 0000901f
        let (key, data) = encode_element(&el(
            Container::Backends,
            "10.96.0.99 . tcp . 80 . 1",
            Some("10.244.1.5 . 8080"),
        ))
        .unwrap();
        let mut want = vec![10, 96, 0, 99, 6, 0, 0, 0, 0, 80, 0, 0];
        want.extend_from_slice(&1u32.to_ne_bytes());
        assert_eq!(key, want);
        assert_eq!(
            data,
            Some(Data::Value(vec![10, 244, 1, 5, 0x1f, 0x90, 0, 0]))
        );
        let (key, data) = encode_element(&el(
            Container::Nodeports,
            "sctp . 30001",
            Some("goto npm_2"),
        ))
        .unwrap();
        assert_eq!(key, vec![132, 0, 0, 0, 0x75, 0x31, 0, 0]);
        assert_eq!(
            data,
            Some(Data::Verdict {
                code: NFT_GOTO,
                chain: "npm_2".into()
            })
        );
        let (key, data) =
            encode_element(&el(Container::Hairpin, "10.0.0.1 . 10.0.0.1", None)).unwrap();
        assert_eq!(key, vec![10, 0, 0, 1, 10, 0, 0, 1]);
        assert_eq!(data, None);
    }

    #[test]
    fn malformed_elements_are_errors_naming_the_set() {
        let e =
            encode_element(&el(Container::Services, "10.0.0.1 . tcp", Some("goto x"))).unwrap_err();
        assert_eq!(e.set, "services");
        assert!(e.reason.contains("2 fields"), "{e}");
        let e = encode_element(&el(
            Container::Services,
            "10.0.0.1 . icmp . 1",
            Some("goto x"),
        ))
        .unwrap_err();
        assert!(e.to_string().contains("bad protocol"), "{e}");
        assert!(encode_element(&el(Container::Services, "10.0.0.1 . tcp . 1", None)).is_err());
        assert!(
            encode_element(&el(
                Container::Services,
                "10.0.0.1 . tcp . 1",
                Some("accept")
            ))
            .is_err()
        );
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes(b[at..at + 2].try_into().unwrap())
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn batch_layout_matches_the_uapi_headers() {
        let add = el(
            Container::Services,
            "10.0.0.1 . tcp . 80",
            Some("goto lb_2"),
        );
        let (bytes, last, n) = element_batch(100, "kt", &[], &[&add]).unwrap().end();
        assert_eq!(n, 1);
        assert_eq!(last, 101);
        // BATCH_BEGIN: nlmsghdr(16) + nfgenmsg(4), res_id = subsystem 10 (BE).
        assert_eq!(u32_at(&bytes, 0), 20);
        assert_eq!(u16_at(&bytes, 4), 0x10);
        assert_eq!(u16_at(&bytes, 6), NLM_F_REQUEST);
        assert_eq!(u32_at(&bytes, 8), 100);
        assert_eq!(&bytes[16..20], &[0, 0, 0, 10]);
        // NEWSETELEM: type (10 << 8) | 12, REQUEST|CREATE|ACK, family ip.
        let m = 20;
        let len = u32_at(&bytes, m) as usize;
        assert_eq!(u16_at(&bytes, m + 4), (10 << 8) | 12);
        assert_eq!(u16_at(&bytes, m + 6), 0x1 | 0x400 | 0x4);
        assert_eq!(u32_at(&bytes, m + 8), 101);
        assert_eq!(&bytes[m + 16..m + 20], &[2, 0, 0, 0]);
        // NFTA_SET_ELEM_LIST_TABLE "kt\0" (len 7, padded to 8).
        let a = m + 20;
        assert_eq!((u16_at(&bytes, a), u16_at(&bytes, a + 2)), (7, 1));
        assert_eq!(&bytes[a + 4..a + 7], b"kt\0");
        // NFTA_SET_ELEM_LIST_SET "services\0" (len 13, padded to 16).
        let a = a + 8;
        assert_eq!((u16_at(&bytes, a), u16_at(&bytes, a + 2)), (13, 2));
        assert_eq!(&bytes[a + 4..a + 13], b"services\0");
        // ELEMENTS (nested) > LIST_ELEM (nested) > KEY (nested) > VALUE(12 bytes).
        let a = a + 16;
        assert_eq!(u16_at(&bytes, a + 2), 3 | NLA_F_NESTED);
        assert_eq!(u16_at(&bytes, a + 6), 1 | NLA_F_NESTED);
        assert_eq!(u16_at(&bytes, a + 10), 1 | NLA_F_NESTED);
        assert_eq!((u16_at(&bytes, a + 12), u16_at(&bytes, a + 14)), (16, 1));
        assert_eq!(
            &bytes[a + 16..a + 28],
            &[10, 0, 0, 1, 6, 0, 0, 0, 0, 80, 0, 0]
        );
        // DATA (nested) > VERDICT (nested) > CODE (BE -4) , CHAIN "lb_2\0".
        let d = a + 28;
        assert_eq!(u16_at(&bytes, d + 2), 2 | NLA_F_NESTED);
        assert_eq!(u16_at(&bytes, d + 6), 2 | NLA_F_NESTED);
        assert_eq!((u16_at(&bytes, d + 8), u16_at(&bytes, d + 10)), (8, 1));
        assert_eq!(&bytes[d + 12..d + 16], &(-4i32).to_be_bytes());
        assert_eq!((u16_at(&bytes, d + 16), u16_at(&bytes, d + 18)), (9, 2));
        assert_eq!(&bytes[d + 20..d + 25], b"lb_2\0");
        assert_eq!(d + 28, m + len);
        // Nested lengths add up.
        assert_eq!(u16_at(&bytes, d) as usize, 28);
        assert_eq!(u16_at(&bytes, a) as usize, m + len - a);
        // BATCH_END.
        let e = m + len;
        assert_eq!(u32_at(&bytes, e), 20);
        assert_eq!(u16_at(&bytes, e + 4), 0x11);
        assert_eq!(bytes.len(), e + 20);
    }

    #[test]
    fn deletes_carry_keys_only_and_come_first() {
        let a = el(
            Container::Backends,
            "10.0.0.1 . udp . 53 . 0",
            Some("1.2.3.4 . 53"),
        );
        let (bytes, _, n) = element_batch(1, "t", &[&a], &[&a]).unwrap().end();
        assert_eq!(n, 2);
        let m = 20;
        assert_eq!(u16_at(&bytes, m + 4), (10 << 8) | 14);
        let del_len = u32_at(&bytes, m) as usize;
        let m2 = m + del_len;
        assert_eq!(u16_at(&bytes, m2 + 4), (10 << 8) | 12);
        let add_len = u32_at(&bytes, m2) as usize;
        // The add has a DATA attribute of 4 + 4 + 8 bytes more.
        assert_eq!(add_len, del_len + 16);
    }

    #[test]
    fn big_lists_are_split_under_the_attribute_limit() {
        let els: Vec<Element> = (0..10_000u32)
            .map(|i| {
                el(
                    Container::Backends,
                    &format!(
                        "10.{}.{}.{} . tcp . 80 . 0",
                        i >> 16,
                        (i >> 8) & 255,
                        i & 255
                    ),
                    Some("10.1.1.1 . 80"),
                )
            })
            .collect();
        let refs: Vec<&Element> = els.iter().collect();
        let (bytes, last, n) = element_batch(7, "t", &[], &refs).unwrap().end();
        assert!(n > 1, "{n}");
        assert_eq!(last, 7 + n as u32);
        // Walk the messages: every one fits, and the elements add up.
        let mut at = 20;
        let mut elements = 0;
        for _ in 0..n {
            let len = u32_at(&bytes, at) as usize;
            assert!(len < 65_536);
            // Header, then "t\0" (8 bytes padded) and "backends\0" (16).
            let list = at + 20 + 8 + 16;
            let list_len = u16_at(&bytes, list) as usize;
            assert_eq!(list + list_len, at + len);
            let mut e = list + 4;
            while e < at + len {
                elements += 1;
                e += u16_at(&bytes, e) as usize;
            }
            at += len;
        }
        assert_eq!(elements, 10_000);
        assert_eq!(u16_at(&bytes, at + 4), 0x11);
    }

    #[test]
    fn replies_end_at_the_last_ack_and_collect_errors() {
        let mut d = Vec::new();
        // An error for message 5 (EEXIST), echoing a NEWSETELEM header.
        d.extend_from_slice(&36u32.to_ne_bytes());
        d.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        d.extend_from_slice(&0u16.to_ne_bytes());
        d.extend_from_slice(&5u32.to_ne_bytes());
        d.extend_from_slice(&0u32.to_ne_bytes());
        d.extend_from_slice(&(-17i32).to_ne_bytes());
        d.extend_from_slice(&36u32.to_ne_bytes());
        d.extend_from_slice(&((10u16 << 8) | 12).to_ne_bytes());
        d.extend_from_slice(&[0; 10]);
        assert_eq!(d.len(), 36);
        let (done, errs) = parse_replies(&d, 4, 6);
        assert!(!done);
        assert_eq!(errs.len(), 1);
        assert!(errs[0].contains("add elements (message 1)"), "{errs:?}");
        // The ack of the last message.
        let mut a = Vec::new();
        a.extend_from_slice(&36u32.to_ne_bytes());
        a.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        a.extend_from_slice(&0u16.to_ne_bytes());
        a.extend_from_slice(&6u32.to_ne_bytes());
        a.extend_from_slice(&[0; 24]);
        assert_eq!(a.len(), 36);
        let (done, errs) = parse_replies(&a, 4, 6);
        assert!(done);
        assert!(errs.is_empty());
        // Replies of another batch are not ours.
        let (done, _) = parse_replies(&a, 100, 110);
        assert!(!done);
    }
}
