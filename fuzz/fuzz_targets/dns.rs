//! Cluster DNS: a query off the wire answered from the zone
//! (`server::reply`, what the UDP and TCP sockets call for every packet), and
//! the zone's own name lookup with any string.
//!
//! Input: one byte (bit 0: UDP rather than TCP; bit 1: look the rest up as a
//! name instead), then the DNS message.

#![no_main]

use std::sync::OnceLock;

use hickory_proto::op::Message;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use keelson_dns::Zone;
use keelson_dns::records::QType;
use keelson_dns::server::{Reply, reply};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

/// A zone with each kind of Service: ClusterIP with named ports, headless
/// with endpoints (with and without hostnames, one not ready), ExternalName.
fn zone() -> &'static Zone {
    static Z: OnceLock<Zone> = OnceLock::new();
    Z.get_or_init(|| {
        let services: Vec<Service> = serde_json::from_value(json!([
            {"metadata": {"name": "web", "namespace": "default"},
             "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20", "fd00::20"],
                      "ports": [{"name": "http", "port": 80, "protocol": "TCP"},
                                {"name": "dns", "port": 53, "protocol": "UDP"}]}},
            {"metadata": {"name": "pg", "namespace": "db"},
             "spec": {"clusterIP": "None", "ports": [{"name": "sql", "port": 5432}]}},
            {"metadata": {"name": "ext", "namespace": "default"},
             "spec": {"type": "ExternalName", "externalName": "example.org"}}
        ]))
        .expect("services");
        let slices: Vec<EndpointSlice> = serde_json::from_value(json!([
            {"metadata": {"name": "pg-1", "namespace": "db",
                          "labels": {"kubernetes.io/service-name": "pg"}},
             "addressType": "IPv4",
             "ports": [{"name": "sql", "port": 5432, "protocol": "TCP"}],
             "endpoints": [
                {"addresses": ["10.1.0.5"], "hostname": "pg-0"},
                {"addresses": ["10.1.0.6"]},
                {"addresses": ["10.1.0.7"], "hostname": "pg-2", "conditions": {"ready": false}}
             ]}
        ]))
        .expect("slices");
        Zone::build("cluster.local", &services, &slices)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, msg)) = data.split_first() else {
        return;
    };
    let zone = zone();
    if which & 2 != 0 {
        let name = keelson_fuzz::text(msg);
        for qtype in [
            QType::A,
            QType::Aaaa,
            QType::Srv,
            QType::Cname,
            QType::Other,
        ] {
            let _ = zone.lookup(&name, qtype);
        }
        return;
    }
    let udp = which & 1 != 0;
    match reply(zone, msg, udp) {
        Reply::Local(bytes) => {
            // What is sent back is a DNS message, with the query's ID, that
            // fits the transport (the client's EDNS size at most over UDP).
            let answer = Message::from_vec(&bytes).expect("the reply parses");
            assert_eq!(answer.metadata.id, u16::from_be_bytes([msg[0], msg[1]]));
            if udp {
                let limit = match Message::from_vec(msg) {
                    Ok(q) if q.edns.is_some() => 1232,
                    _ => 512,
                };
                assert!(bytes.len() <= limit, "{} bytes over UDP", bytes.len());
            }
        }
        Reply::Forward => {
            assert!(
                Message::from_vec(msg).is_ok(),
                "forwarding an unparsed query"
            );
        }
        Reply::Drop => {}
    }
});
