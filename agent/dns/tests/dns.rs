//! Cluster DNS against the real API server: Services and EndpointSlices
//! created through the API are answered over UDP and TCP, changes show within
//! a second, and other names are forwarded to an upstream resolver (a small
//! one in this test, on loopback).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use keelson_dns::{DnsServer, Zone, ZoneHandle};
use keelson_e2e::ServerProcess;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

fn query(name: &str, t: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m.to_vec().unwrap()
}

async fn ask_udp(server: SocketAddr, name: &str, t: RecordType) -> Message {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(server).await.unwrap();
    let q = query(name, t);
    sock.send(&q).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
        .await
        .expect("DNS answer within 5 s")
        .unwrap();
    let m = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(m.metadata.id, u16::from_be_bytes([q[0], q[1]]));
    m
}

async fn ask_tcp(server: SocketAddr, name: &str, t: RecordType) -> Message {
    let mut conn = TcpStream::connect(server).await.unwrap();
    let q = query(name, t);
    conn.write_all(&(q.len() as u16).to_be_bytes())
        .await
        .unwrap();
    conn.write_all(&q).await.unwrap();
    let mut len = [0u8; 2];
    conn.read_exact(&mut len).await.unwrap();
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    conn.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

fn a_records(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

/// An upstream resolver on loopback answering every A query with 192.0.2.7.
async fn fake_upstream() -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
            let Ok(req) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
            for q in req.queries {
                resp.add_answer(Record::from_rdata(
                    q.name().clone(),
                    60,
                    RData::A(A("192.0.2.7".parse().unwrap())),
                ));
                resp.add_query(q);
            }
            let _ = sock.send_to(&resp.to_vec().unwrap(), peer).await;
        }
    });
    addr
}

async fn wait_for<F, Fut>(what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if check().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not within 10 s");
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_names_from_the_api_and_forwarding() {
    let api = ServerProcess::start_with(None, keelson_e2e::API_ONLY);
    let client = api.client().await;
    let upstream = fake_upstream().await;
    let zone = ZoneHandle::new(Zone::build("cluster.local", [], []));
    let server = DnsServer::bind("127.0.0.1:0".parse().unwrap(), zone.clone(), vec![upstream])
        .await
        .unwrap();
    let dns = server.local_addr();
    tokio::spawn(server.serve());
    let informers = keelson_informers::Informers::new(client.clone());
    tokio::spawn(async move {
        keelson_dns::keep_zone_current(&informers, "cluster.local".into(), zone).await
    });

    let services: kube::Api<Service> = kube::Api::namespaced(client.clone(), "default");
    let slices: kube::Api<EndpointSlice> = kube::Api::namespaced(client.clone(), "default");
    let web: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"ports": [{"name": "http", "port": 80}]}
    }))
    .unwrap();
    let web = services.create(&Default::default(), &web).await.unwrap();
    let ip = web.spec.unwrap().cluster_ip.unwrap();
    let headless: Service = serde_json::from_value(json!({
        "metadata": {"name": "db"},
        "spec": {"clusterIP": "None", "ports": [{"name": "sql", "port": 5432}]}
    }))
    .unwrap();
    services
        .create(&Default::default(), &headless)
        .await
        .unwrap();
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "db-1", "labels": {"kubernetes.io/service-name": "db"}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["10.1.0.5"], "hostname": "db-0", "conditions": {"ready": true}},
            {"addresses": ["10.1.0.6"], "conditions": {"ready": true}},
            {"addresses": ["10.1.0.7"], "conditions": {"ready": false}}
        ],
        "ports": [{"name": "sql", "port": 5432, "protocol": "TCP"}]
    }))
    .unwrap();
    slices.create(&Default::default(), &slice).await.unwrap();

    let name = "web.default.svc.cluster.local.";
    let took = wait_for("web's A record", || async {
        a_records(&ask_udp(dns, name, RecordType::A).await) == vec![ip.clone()]
    })
    .await;
    eprintln!("Service visible in DNS {took:?} after its create returned");
    assert_eq!(
        a_records(&ask_tcp(dns, name, RecordType::A).await),
        vec![ip.clone()]
    );
    wait_for("db's endpoints", || async {
        a_records(&ask_udp(dns, "db.default.svc.cluster.local.", RecordType::A).await)
            == vec!["10.1.0.5", "10.1.0.6"]
    })
    .await;
    assert_eq!(
        a_records(&ask_udp(dns, "db-0.db.default.svc.cluster.local.", RecordType::A).await),
        vec!["10.1.0.5"]
    );
    let srv = ask_udp(
        dns,
        "_sql._tcp.db.default.svc.cluster.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(srv.answers.len(), 2, "{srv:?}");
    let srv = ask_udp(
        dns,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    )
    .await;
    match &srv.answers[..] {
        [r] => match &r.data {
            RData::SRV(s) => {
                assert_eq!(s.port, 80);
                assert_eq!(s.target.to_ascii(), name);
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    let missing = ask_udp(dns, "nope.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
    // Outside the cluster domain: the upstream's answer.
    let out = ask_udp(dns, "example.org.", RecordType::A).await;
    assert_eq!(a_records(&out), vec!["192.0.2.7"]);

    // A readiness change and a deletion show within a second.
    let mut changed = slice.clone();
    changed.endpoints.as_mut().unwrap()[2]
        .conditions
        .as_mut()
        .unwrap()
        .ready = Some(true);
    changed.metadata.resource_version = None;
    slices
        .replace("db-1", &Default::default(), &{
            let mut s = changed;
            s.metadata.resource_version =
                slices.get("db-1").await.unwrap().metadata.resource_version;
            s
        })
        .await
        .unwrap();
    let took = wait_for("db's third endpoint", || async {
        a_records(&ask_udp(dns, "db.default.svc.cluster.local.", RecordType::A).await).len() == 3
    })
    .await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    services.delete("web", &Default::default()).await.unwrap();
    let took = wait_for("web gone", || async {
        ask_udp(dns, name, RecordType::A)
            .await
            .metadata
            .response_code
            == ResponseCode::NXDomain
    })
    .await;
    assert!(took < Duration::from_secs(1), "{took:?}");
}
