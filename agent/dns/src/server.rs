//! The DNS sockets: UDP and TCP on one address, answers from the current
//! [`Zone`], other names forwarded to upstream resolvers over UDP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

use crate::DnsError;
use crate::records::{Answer, QType, Rec, TTL, Zone};

/// How long an upstream has to answer a forwarded query.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// UDP payload we answer with when the client sends EDNS.
const EDNS_PAYLOAD: u16 = 1232;

/// The zone shared between the watcher (writer) and the sockets (readers).
#[derive(Debug, Clone, Default)]
pub struct ZoneHandle(Arc<RwLock<Arc<Zone>>>);

impl ZoneHandle {
    pub fn new(zone: Zone) -> Self {
        ZoneHandle(Arc::new(RwLock::new(Arc::new(zone))))
    }

    pub fn get(&self) -> Arc<Zone> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, zone: Zone) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(zone);
    }
}

/// Bound sockets, ready to serve.
pub struct DnsServer {
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
    zone: ZoneHandle,
    upstreams: Arc<Vec<SocketAddr>>,
}

impl DnsServer {
    /// Binds UDP and TCP on `addr` (port 0: one free port for both).
    pub async fn bind(
        addr: SocketAddr,
        zone: ZoneHandle,
        upstreams: Vec<SocketAddr>,
    ) -> Result<DnsServer, DnsError> {
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|source| DnsError::Bind {
                proto: "udp",
                addr,
                source,
            })?;
        let bound = udp.local_addr().map_err(|source| DnsError::Bind {
            proto: "udp",
            addr,
            source,
        })?;
        let tcp = TcpListener::bind(bound)
            .await
            .map_err(|source| DnsError::Bind {
                proto: "tcp",
                addr: bound,
                source,
            })?;
        Ok(DnsServer {
            udp: Arc::new(udp),
            tcp,
            zone,
            upstreams: Arc::new(upstreams),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.udp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))
    }

    /// Serves until dropped.
    pub async fn serve(self) {
        let DnsServer {
            udp,
            tcp,
            zone,
            upstreams,
        } = self;
        let udp_loop = {
            let zone = zone.clone();
            let upstreams = upstreams.clone();
            async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    let (n, peer) = match udp.recv_from(&mut buf).await {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!("DNS udp receive: {e}");
                            continue;
                        }
                    };
                    let query = buf[..n].to_vec();
                    let udp = udp.clone();
                    let zone = zone.get();
                    let upstreams = upstreams.clone();
                    tokio::spawn(async move {
                        if let Some(reply) = answer(&zone, &query, &upstreams, true).await {
                            let _ = udp.send_to(&reply, peer).await;
                        }
                    });
                }
            }
        };
        let tcp_loop = async move {
            loop {
                let Ok((mut conn, _)) = tcp.accept().await else {
                    continue;
                };
                let zone = zone.clone();
                let upstreams = upstreams.clone();
                tokio::spawn(async move {
                    // Length-prefixed messages until the client closes.
                    loop {
                        let mut len = [0u8; 2];
                        if conn.read_exact(&mut len).await.is_err() {
                            return;
                        }
                        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
                        if conn.read_exact(&mut query).await.is_err() {
                            return;
                        }
                        let Some(reply) = answer(&zone.get(), &query, &upstreams, false).await
                        else {
                            return;
                        };
                        let Ok(len) = u16::try_from(reply.len()) else {
                            return;
                        };
                        if conn.write_all(&len.to_be_bytes()).await.is_err()
                            || conn.write_all(&reply).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        };
        tokio::join!(udp_loop, tcp_loop);
    }
}

/// What to do with one query (pure): reply with these bytes, or forward it.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Local(Vec<u8>),
    Forward,
    Drop,
}

/// Answers one query from the zone (pure).
pub fn reply(zone: &Zone, query: &[u8], udp: bool) -> Reply {
    let req = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) if query.len() >= 2 => {
            let id = u16::from_be_bytes([query[0], query[1]]);
            return encode(Message::error_msg(id, OpCode::Query, ResponseCode::FormErr));
        }
        Err(_) => return Reply::Drop,
    };
    if req.metadata.message_type != MessageType::Query {
        return Reply::Drop;
    }
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    if req.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        resp.edns = Some(edns);
    }
    if req.metadata.op_code != OpCode::Query {
        resp.metadata.response_code = ResponseCode::NotImp;
        return encode(resp);
    }
    let [q] = req.queries.as_slice() else {
        resp.metadata.response_code = ResponseCode::FormErr;
        return encode(resp);
    };
    resp.add_query(q.clone());
    let qtype = match q.query_type() {
        RecordType::A => QType::A,
        RecordType::AAAA => QType::Aaaa,
        RecordType::SRV => QType::Srv,
        RecordType::CNAME => QType::Cname,
        _ => QType::Other,
    };
    match zone.lookup(&q.name().to_ascii(), qtype) {
        Answer::NotOurs => return Reply::Forward,
        Answer::NxDomain => resp.metadata.response_code = ResponseCode::NXDomain,
        Answer::Records {
            answers,
            additional,
        } => {
            resp.metadata.authoritative = true;
            for r in &answers {
                if let Some(rec) = record(r) {
                    resp.add_answer(rec);
                }
            }
            for r in &additional {
                if let Some(rec) = record(r) {
                    resp.additionals.push(rec);
                }
            }
        }
    }
    let limit = if !udp {
        usize::from(u16::MAX)
    } else if req.edns.is_some() {
        usize::from(EDNS_PAYLOAD)
    } else {
        512
    };
    match resp.to_vec() {
        Ok(bytes) if bytes.len() <= limit => Reply::Local(bytes),
        Ok(_) => {
            // Too big for this transport: the header and question with TC
            // set, so the client retries over TCP.
            let mut t = resp.truncate();
            t.answers.clear();
            t.additionals.clear();
            t.metadata.truncation = true;
            encode(t)
        }
        Err(e) => {
            tracing::warn!("encode DNS answer for {}: {e}", q.name());
            Reply::Drop
        }
    }
}

fn encode(m: Message) -> Reply {
    m.to_vec().map(Reply::Local).unwrap_or(Reply::Drop)
}

fn fqdn(name: &str) -> Option<Name> {
    Name::from_ascii(format!("{}.", name.trim_end_matches('.'))).ok()
}

fn record(r: &Rec) -> Option<Record> {
    Some(match r {
        Rec::A(n, ip) => Record::from_rdata(fqdn(n)?, TTL, RData::A(A(*ip))),
        Rec::Aaaa(n, ip) => Record::from_rdata(fqdn(n)?, TTL, RData::AAAA(AAAA(*ip))),
        Rec::Cname(n, target) => {
            Record::from_rdata(fqdn(n)?, TTL, RData::CNAME(CNAME(fqdn(target)?)))
        }
        Rec::Srv {
            name,
            priority,
            weight,
            port,
            target,
        } => Record::from_rdata(
            fqdn(name)?,
            TTL,
            RData::SRV(SRV::new(*priority, *weight, *port, fqdn(target)?)),
        ),
    })
}

/// The bytes to send back for `query`, forwarding when the zone says so.
async fn answer(zone: &Zone, query: &[u8], upstreams: &[SocketAddr], udp: bool) -> Option<Vec<u8>> {
    match reply(zone, query, udp) {
        Reply::Local(bytes) => Some(bytes),
        Reply::Drop => None,
        Reply::Forward => match forward(query, upstreams).await {
            Some(bytes) => Some(bytes),
            None => {
                let id = u16::from_be_bytes([query[0], query[1]]);
                let mut m = Message::error_msg(id, OpCode::Query, ResponseCode::ServFail);
                if let Ok(req) = Message::from_vec(query) {
                    m.metadata.recursion_desired = req.metadata.recursion_desired;
                    m.add_queries(req.queries);
                }
                m.to_vec().ok()
            }
        },
    }
}

/// Sends the query as it is to each upstream in turn; the first answer wins.
async fn forward(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for up in upstreams {
        let local: SocketAddr = match up {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let Ok(sock) = UdpSocket::bind(local).await else {
            continue;
        };
        if sock.connect(up).await.is_err() || sock.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        match tokio::time::timeout(FORWARD_TIMEOUT, sock.recv(&mut buf)).await {
            Ok(Ok(n)) if n >= 2 && buf[..2] == query[..2] => {
                buf.truncate(n);
                return Some(buf);
            }
            Ok(Ok(_)) | Ok(Err(_)) | Err(_) => {
                tracing::debug!("DNS upstream {up} did not answer");
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 4242;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    fn zone() -> Zone {
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
        }))
        .unwrap();
        Zone::build("cluster.local", [&svc], [])
    }

    fn parse(r: Reply) -> Message {
        match r {
            Reply::Local(b) => Message::from_vec(&b).unwrap(),
            other => panic!("expected a local reply, got {other:?}"),
        }
    }

    #[test]
    fn answers_and_errors() {
        let z = zone();
        let m = parse(reply(
            &z,
            &query("web.default.svc.cluster.local.", RecordType::A),
            true,
        ));
        assert_eq!(m.metadata.id, 4242);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(
            m.answers[0].data,
            RData::A(A("10.96.0.20".parse().unwrap()))
        );
        assert_eq!(m.answers[0].ttl, TTL);

        let m = parse(reply(
            &z,
            &query("nope.default.svc.cluster.local.", RecordType::A),
            true,
        ));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(m.answers.is_empty());

        let m = parse(reply(
            &z,
            &query("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV),
            true,
        ));
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.additionals.len(), 1);

        assert_eq!(
            reply(&z, &query("example.org.", RecordType::A), true),
            Reply::Forward
        );
        // Garbage with an ID gets FORMERR; a single byte is dropped.
        let m = parse(reply(&z, &[0x12, 0x34, 0xff], true));
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(reply(&z, &[1], true), Reply::Drop);
    }
}
