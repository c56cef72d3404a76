//! Test helper for the proxy's netns tests (not shipped): a TCP and UDP
//! responder that answers with its name and the peer address it sees, and
//! a client that makes N attempts and prints one line per attempt.
//!
//! keelson-proxy-testsrv serve NAME ADDR:PORT
//! keelson-proxy-testsrv tcp ADDR:PORT COUNT [INTERVAL_MS]
//! keelson-proxy-testsrv udp ADDR:PORT COUNT [SRCPORT]

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: serve NAME ADDR:PORT | tcp ADDR:PORT COUNT [INTERVAL_MS] | udp ADDR:PORT COUNT [SRCPORT]";
    if args.len() < 4 {
        eprintln!("{usage}");
        std::process::exit(2);
    }
    let addr: SocketAddr = args[3 - usize::from(args[1] != "serve")]
        .parse()
        .expect("ADDR:PORT");
    match args[1].as_str() {
        "serve" => serve(args[2].clone(), addr),
        "tcp" | "udp" => {
            let count: usize = args[3].parse().expect("COUNT");
            let arg4: Option<u64> = args.get(4).map(|s| s.parse().expect("number"));
            let interval = match args[1].as_str() {
                "tcp" => Duration::from_millis(arg4.unwrap_or(0)),
                _ => Duration::ZERO,
            };
            let src_port = if args[1] == "udp" {
                arg4.unwrap_or(0) as u16
            } else {
                0
            };
            for _ in 0..count {
                let line = if args[1] == "tcp" {
                    tcp_once(addr)
                } else {
                    udp_once(addr, src_port)
                };
                println!("{line}");
                std::thread::sleep(interval);
            }
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}

fn serve(name: String, addr: SocketAddr) {
    let udp = UdpSocket::bind(addr).expect("bind udp");
    let n = name.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        loop {
            if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(format!("{n} {}", peer.ip()).as_bytes(), peer);
            }
        }
    });
    let tcp = TcpListener::bind(addr).expect("bind tcp");
    println!("ready");
    for conn in tcp.incoming() {
        let Ok(mut c) = conn else { continue };
        let peer = c
            .peer_addr()
            .map(|p| p.ip().to_string())
            .unwrap_or_default();
        let _ = c.write_all(format!("{name} {peer}\n").as_bytes());
    }
}

fn tcp_once(addr: SocketAddr) -> String {
    match TcpStream::connect_timeout(&addr, Duration::from_millis(1000)) {
        Ok(mut s) => {
            let _ = s.set_read_timeout(Some(Duration::from_millis(1000)));
            let mut out = String::new();
            match s.read_to_string(&mut out) {
                Ok(_) if !out.is_empty() => out.trim().to_string(),
                Ok(_) => "ERR empty".into(),
                Err(e) => format!("ERR read {:?}", e.kind()),
            }
        }
        Err(e) => format!("ERR connect {:?}", e.kind()),
    }
}

fn udp_once(addr: SocketAddr, src_port: u16) -> String {
    // A fresh socket per attempt: with port 0 a new source port (a new
    // conntrack flow); with a fixed port, the same flow every time.
    let s = UdpSocket::bind(("0.0.0.0", src_port)).expect("bind udp client");
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    // Connected: ICMP errors (port unreachable) surface as ECONNREFUSED.
    if let Err(e) = s.connect(addr).and_then(|()| s.send(b"hi")) {
        return format!("ERR send {:?}", e.kind());
    }
    let mut buf = [0u8; 1500];
    match s.recv(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).trim().to_string(),
        Err(e) => format!("ERR recv {:?}", e.kind()),
    }
}
