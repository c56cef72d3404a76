//! Netlink framing, and a synchronous socket that speaks it: the one
//! implementation under the rtnetlink client ([`crate::rtnetlink`]) and the
//! Service proxy's nf_tables batches.
//!
//! Pure: [`Msg`] (a message under construction: header, family header,
//! attributes, nests), [`put_attr`] and friends (attributes into a buffer),
//! [`parse_attrs`], [`messages`] (a datagram split into messages) and
//! [`parse_acks`] (what the kernel said about a range of requests). I/O:
//! [`Socket`], bound to the network namespace it was opened in, with two
//! loops: [`Socket::transact`] (send requests, wait for their acks) and
//! [`Socket::fetch`] (send a GET or DUMP, collect the answers).

use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    setsockopt, socket, sockopt,
};

/// linux/netlink.h.
pub const NLMSG_ERROR: u16 = 2;
/// End of a multipart answer.
pub const NLMSG_DONE: u16 = 3;
/// A request.
pub const NLM_F_REQUEST: u16 = 1;
/// Part of a multipart answer.
pub const NLM_F_MULTI: u16 = 2;
/// Ask for an ack.
pub const NLM_F_ACK: u16 = 4;
/// Replace an existing object.
pub const NLM_F_REPLACE: u16 = 0x100;
/// Fail if it exists.
pub const NLM_F_EXCL: u16 = 0x200;
/// Create if missing.
pub const NLM_F_CREATE: u16 = 0x400;
/// Dump everything.
pub const NLM_F_DUMP: u16 = 0x300;
/// Attribute type flag: the payload is attributes.
pub const NLA_F_NESTED: u16 = 1 << 15;
/// nlmsghdr.
pub const HEADER_LEN: usize = 16;

/// A netlink operation that failed, with what it was doing.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {errno}")]
pub struct NlError {
    /// Operation and object, e.g. "create veth kc123 (peer eth0)".
    pub op: String,
    /// The kernel's answer.
    pub errno: Errno,
}

fn pad(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// Appends attribute `ty` with `data` (padded to 4 bytes).
pub fn put_attr(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let at = begin_nest(buf, ty);
    buf.extend_from_slice(data);
    end_nest(buf, at);
    pad(buf);
}

/// Appends a NUL-terminated string attribute.
pub fn put_attr_str(buf: &mut Vec<u8>, ty: u16, s: &str) {
    let at = begin_nest(buf, ty);
    buf.extend_from_slice(s.as_bytes());
    buf.push(0);
    end_nest(buf, at);
    pad(buf);
}

/// Writes the header of attribute `ty` whose payload follows; returns its
/// offset for [`end_nest`].
pub fn begin_nest(buf: &mut Vec<u8>, ty: u16) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&0u16.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    at
}

/// Sets the length of the attribute begun at `at` to reach the end of `buf`.
///
/// # Panics
///
/// If the attribute passes 64 KiB (its length is a u16): an encoder bug.
pub fn end_nest(buf: &mut [u8], at: usize) {
    let len = u16::try_from(buf.len() - at).expect("netlink attribute over 64 KiB");
    buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

/// A netlink message under construction.
#[derive(Debug, Clone)]
pub struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Msg {
    /// Header for `ty` with `flags` (REQUEST is added); `body` is the fixed
    /// family header (ifinfomsg, rtmsg, nfgenmsg, ...).
    pub fn new(ty: u16, flags: u16, body: &[u8]) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // seq, set by finish
        buf.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
        buf.extend_from_slice(body);
        pad(&mut buf);
        Self {
            buf,
            nests: Vec::new(),
        }
    }

    /// Appends an attribute.
    pub fn attr(mut self, ty: u16, data: &[u8]) -> Self {
        put_attr(&mut self.buf, ty, data);
        self
    }

    /// A NUL-terminated string attribute.
    pub fn attr_str(mut self, ty: u16, s: &str) -> Self {
        put_attr_str(&mut self.buf, ty, s);
        self
    }

    /// A u32 attribute (host order).
    pub fn attr_u32(self, ty: u16, v: u32) -> Self {
        self.attr(ty, &v.to_ne_bytes())
    }

    /// Opens a nested attribute; close with [`Msg::end`].
    pub fn begin(mut self, ty: u16) -> Self {
        let at = begin_nest(&mut self.buf, ty);
        self.nests.push(at);
        self
    }

    /// Raw bytes (e.g. the peer's ifinfomsg inside a nest), padded.
    pub fn raw(mut self, data: &[u8]) -> Self {
        self.buf.extend_from_slice(data);
        pad(&mut self.buf);
        self
    }

    /// Closes the innermost nest.
    pub fn end(mut self) -> Self {
        let at = self.nests.pop().expect("end without begin");
        end_nest(&mut self.buf, at);
        self
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing is there (never: a message has a header).
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The finished message with sequence number `seq`.
    pub fn finish(mut self, seq: u32) -> Vec<u8> {
        assert!(self.nests.is_empty(), "unclosed nest");
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

/// Splits `buf` into (type, payload) attributes; the type without the
/// NESTED and byte-order flags.
pub fn parse_attrs(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((ty, &buf[4..len]));
        let adv = (len + 3) & !3;
        buf = &buf[adv.min(buf.len())..];
    }
    out
}

/// One message of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    /// nlmsg_type.
    pub ty: u16,
    /// nlmsg_flags.
    pub flags: u16,
    /// nlmsg_seq.
    pub seq: u32,
    /// What follows the header.
    pub payload: &'a [u8],
}

impl Message<'_> {
    /// For an NLMSG_ERROR: the error code (0: an ack) and the type of the
    /// request it answers, when the kernel echoed its header.
    pub fn error(&self) -> Option<(i32, Option<u16>)> {
        if self.ty != NLMSG_ERROR || self.payload.len() < 4 {
            return None;
        }
        let code = i32::from_ne_bytes(self.payload[0..4].try_into().ok()?);
        let request = self
            .payload
            .get(8..10)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]));
        Some((code, request))
    }
}

/// Splits a datagram into its messages (a truncated tail is dropped).
pub fn messages(mut buf: &[u8]) -> Vec<Message<'_>> {
    let mut out = Vec::new();
    while buf.len() >= HEADER_LEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap_or([0; 4])) as usize;
        if len < HEADER_LEN || len > buf.len() {
            break;
        }
        out.push(Message {
            ty: u16::from_ne_bytes([buf[4], buf[5]]),
            flags: u16::from_ne_bytes([buf[6], buf[7]]),
            seq: u32::from_ne_bytes(buf[8..12].try_into().unwrap_or([0; 4])),
            payload: &buf[HEADER_LEN..len],
        });
        let adv = (len + 3) & !3;
        buf = &buf[adv.min(buf.len())..];
    }
    out
}

/// A request the kernel refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Its sequence number.
    pub seq: u32,
    /// The type of the request, when echoed.
    pub request: Option<u16>,
    /// Why.
    pub errno: Errno,
}

/// Reads a datagram of replies to the requests numbered `first..=last`
/// (plus `last + 1`, a batch's END): (saw the answer that ends the
/// exchange, the refusals). The exchange ends with the ack (or error) of
/// `last`, or a DONE numbered `last`. Replies to other numbers (older
/// exchanges) are ignored.
pub fn parse_acks(data: &[u8], first: u32, last: u32) -> (bool, Vec<Refused>) {
    let mut done = false;
    let mut refused = Vec::new();
    let ours = |seq: u32| seq.wrapping_sub(first) <= last.wrapping_sub(first) + 1;
    for m in messages(data) {
        match m.error() {
            Some((code, request)) if ours(m.seq) => {
                if code != 0 {
                    refused.push(Refused {
                        seq: m.seq,
                        request,
                        errno: Errno::from_raw(-code),
                    });
                }
                if m.seq == last {
                    done = true;
                }
            }
            None if m.ty == NLMSG_DONE && m.seq == last => done = true,
            _ => {}
        }
    }
    (done, refused)
}

/// How a [`Socket`] is set up.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Receive buffer forced to this size (SO_RCVBUFFORCE), for replies to
    /// big batches.
    pub rcvbuf: Option<usize>,
    /// A receive that waits longer fails (EAGAIN).
    pub recv_timeout: Option<Duration>,
    /// Size of the buffer one datagram is read into.
    pub read_buffer: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            rcvbuf: None,
            recv_timeout: None,
            read_buffer: 64 << 10,
        }
    }
}

/// A netlink socket of one protocol, in the network namespace it was
/// created in.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    seq: Cell<u32>,
    buf: RefCell<Vec<u8>>,
}

impl Socket {
    /// A socket in the calling thread's network namespace.
    pub fn open(protocol: SockProtocol, opts: Options) -> Result<Socket, NlError> {
        let err = |errno| NlError {
            op: format!("open netlink socket ({protocol:?})"),
            errno,
        };
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            protocol,
        )
        .map_err(err)?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(err)?;
        if let Some(n) = opts.rcvbuf {
            setsockopt(&fd, sockopt::RcvBufForce, &n).map_err(err)?;
        }
        if let Some(t) = opts.recv_timeout {
            let tv = nix::sys::time::TimeVal::new(t.as_secs() as _, t.subsec_micros() as _);
            setsockopt(&fd, sockopt::ReceiveTimeout, &tv).map_err(err)?;
        }
        Ok(Socket {
            fd,
            seq: Cell::new(1),
            buf: RefCell::new(vec![0u8; opts.read_buffer.max(8192)]),
        })
    }

    /// A socket in the network namespace at `netns` (a /run/netns file or
    /// /proc/PID/ns/net), made on a short-lived thread
    /// ([`crate::netns::in_netns`]).
    pub fn open_in(netns: &Path, protocol: SockProtocol, opts: Options) -> Result<Socket, NlError> {
        crate::netns::in_netns(netns, || Socket::open(protocol, opts)).map_err(|e| NlError {
            op: e.to_string(),
            errno: Errno::from_raw(e.io().raw_os_error().unwrap_or(0)),
        })?
    }

    /// The next sequence number [`Socket::transact`] or [`Socket::request`]
    /// would use.
    pub fn next_seq(&self) -> u32 {
        self.seq.get()
    }

    /// Takes `n` sequence numbers; returns the first.
    pub fn take_seqs(&self, n: u32) -> u32 {
        let s = self.seq.get();
        self.seq.set(s.wrapping_add(n));
        s
    }

    /// Starts the sequence numbers at `seq` (a process restarted within a
    /// second would otherwise reuse its predecessor's).
    pub fn set_seq(&self, seq: u32) {
        self.seq.set(seq);
    }

    fn recv_into<R>(
        &self,
        op: &dyn Fn() -> String,
        mut f: impl FnMut(&[u8]) -> Option<R>,
    ) -> Result<R, NlError> {
        let mut buf = self.buf.borrow_mut();
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())
                .map_err(|errno| NlError { op: op(), errno })?;
            if let Some(r) = f(&buf[..n]) {
                return Ok(r);
            }
        }
    }

    /// Sends `bytes` (one message or a batch of them, numbered `first` to
    /// `last`, in one datagram) and waits until the kernel has answered
    /// `last`. Returns every refusal among them; `Err` only for the socket
    /// itself failing.
    pub fn transact(
        &self,
        bytes: &[u8],
        first: u32,
        last: u32,
        op: &dyn Fn() -> String,
    ) -> Result<Vec<Refused>, NlError> {
        send(self.fd.as_raw_fd(), bytes, MsgFlags::empty())
            .map_err(|errno| NlError { op: op(), errno })?;
        let mut refused = Vec::new();
        self.recv_into(op, |data| {
            let (done, r) = parse_acks(data, first, last);
            refused.extend(r);
            done.then_some(())
        })?;
        Ok(refused)
    }

    /// Lets one datagram of `len` bytes through (SO_SNDBUFFORCE): a batch
    /// must travel in one datagram for the kernel to commit it as one.
    pub fn reserve_send(&self, len: usize) -> Result<(), NlError> {
        setsockopt(&self.fd, sockopt::SndBufForce, &len).map_err(|errno| NlError {
            op: format!("set the send buffer to {len} bytes"),
            errno,
        })
    }

    /// Sends `msg` with ACK and waits for it.
    pub fn request(&self, msg: Msg, op: impl Fn() -> String) -> Result<(), NlError> {
        let seq = self.take_seqs(1);
        let bytes = msg.finish(seq);
        match self.transact(&bytes, seq, seq, &op)?.first() {
            None => Ok(()),
            Some(r) => Err(NlError {
                op: op(),
                errno: r.errno,
            }),
        }
    }

    /// Sends a request whose answer is message(s) of data (GET or DUMP) and
    /// returns their payloads.
    pub fn fetch(&self, msg: Msg, op: impl Fn() -> String) -> Result<Vec<Vec<u8>>, NlError> {
        let seq = self.take_seqs(1);
        let bytes = msg.finish(seq);
        send(self.fd.as_raw_fd(), &bytes, MsgFlags::empty())
            .map_err(|errno| NlError { op: op(), errno })?;
        let mut out = Vec::new();
        self.recv_into(&op, |data| {
            let (mut got, mut multi) = (false, false);
            for m in messages(data) {
                if m.seq != seq {
                    continue;
                }
                match m.error() {
                    Some((0, _)) => return Some(Ok(())),
                    Some((code, _)) => {
                        return Some(Err(NlError {
                            op: op(),
                            errno: Errno::from_raw(-code),
                        }));
                    }
                    None if m.ty == NLMSG_DONE => return Some(Ok(())),
                    None => {
                        out.push(m.payload.to_vec());
                        got = true;
                        multi |= m.flags & NLM_F_MULTI != 0;
                    }
                }
            }
            // A plain GET answers with one message and no DONE.
            (got && !multi).then_some(Ok(()))
        })??;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(seq: u32, code: i32, request: u16) -> Vec<u8> {
        let mut d = Vec::new();
        d.extend_from_slice(&36u32.to_ne_bytes());
        d.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        d.extend_from_slice(&0u16.to_ne_bytes());
        d.extend_from_slice(&seq.to_ne_bytes());
        d.extend_from_slice(&0u32.to_ne_bytes());
        d.extend_from_slice(&code.to_ne_bytes());
        d.extend_from_slice(&36u32.to_ne_bytes());
        d.extend_from_slice(&request.to_ne_bytes());
        d.extend_from_slice(&[0; 10]);
        d
    }

    #[test]
    fn encodes_nested_attributes_with_lengths_and_padding() {
        use crate::rtnetlink::{c, ifinfomsg};
        let m = Msg::new(c::RTM_NEWLINK, c::NLM_F_ACK, &ifinfomsg(0, 0, 0))
            .attr_str(c::IFLA_IFNAME, "kc1")
            .begin(c::IFLA_LINKINFO)
            .attr_str(c::IFLA_INFO_KIND, "veth")
            .end()
            .finish(7);
        assert_eq!(m.len() % 4, 0);
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), c::RTM_NEWLINK);
        assert_eq!(
            u16::from_ne_bytes([m[6], m[7]]),
            c::NLM_F_ACK | c::NLM_F_REQUEST
        );
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        let attrs = parse_attrs(&m[32..]);
        assert_eq!(attrs.len(), 2);
        assert_eq!(attrs[0], (c::IFLA_IFNAME, &b"kc1\0"[..]));
        assert_eq!(attrs[1].0, c::IFLA_LINKINFO);
        let inner = parse_attrs(attrs[1].1);
        assert_eq!(inner, vec![(c::IFLA_INFO_KIND, &b"veth\0"[..])]);
    }

    #[test]
    fn a_datagram_splits_into_its_messages() {
        let mut d = Msg::new(16, NLM_F_ACK, &[0; 16]).attr_str(3, "a").finish(7);
        d.extend(Msg::new(NLMSG_DONE, NLM_F_MULTI, &[]).finish(8));
        let msgs = messages(&d);
        assert_eq!(msgs.len(), 2);
        assert_eq!((msgs[0].ty, msgs[0].seq), (16, 7));
        assert_eq!(msgs[0].flags, NLM_F_ACK | NLM_F_REQUEST);
        assert_eq!(parse_attrs(&msgs[0].payload[16..]), vec![(3, &b"a\0"[..])]);
        assert_eq!((msgs[1].ty, msgs[1].seq), (NLMSG_DONE, 8));
    }

    #[test]
    fn acks_end_the_exchange_at_the_last_request_and_refusals_are_kept() {
        let mut d = ack(5, -17, 0x0a0c);
        let (done, refused) = parse_acks(&d, 4, 6);
        assert!(!done);
        assert_eq!(
            refused,
            vec![Refused {
                seq: 5,
                request: Some(0x0a0c),
                errno: Errno::EEXIST
            }]
        );
        d.extend(ack(6, 0, 0));
        let (done, refused) = parse_acks(&d, 4, 6);
        assert!(done);
        assert_eq!(refused.len(), 1);
        // Another exchange's replies are not ours.
        assert_eq!(parse_acks(&d, 100, 110), (false, vec![]));
    }
}
