//! Two API servers on one etcd over TLS with client certificates, sharing
//! one identity (the cluster CA and the service account signing key, copied
//! before the second one's first start, as the README says): a service
//! account token issued by one is accepted by the other, and so is a client
//! certificate. A server without etcd's client certificate is refused by
//! etcd and says so.

use std::path::Path;
use std::process::Command;

use keelson_control_plane::server::pki::{self, CertPair};
use keelson_e2e::etcd::EtcdServerTls;
use keelson_e2e::{API_ONLY, EtcdProcess, ServerProcess, curl_k, keelson_bin};

fn write(dir: &Path, name: &str, pair: &CertPair) -> (String, String) {
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, &pair.cert_pem).unwrap();
    std::fs::write(&k, &pair.key_pem).unwrap();
    (c.display().to_string(), k.display().to_string())
}

#[test]
fn two_servers_on_one_tls_etcd_share_identity() {
    if !keelson_e2e::needs("two_servers_on_one_tls_etcd_share_identity")
        .keelson()
        .also(keelson_e2e::etcd::etcd_binary().is_some(), "etcd")
        .ok()
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // etcd's own CA, serving certificate and the API servers' client pair.
    let etcd_pki = pki::Pki::load_or_create(&tmp.path().join("etcd"), &[]).unwrap();
    let ca_file = tmp.path().join("etcd-ca.crt");
    std::fs::write(&ca_file, &etcd_pki.ca.cert_pem).unwrap();
    let sans = ["127.0.0.1".to_string(), "localhost".to_string()];
    let (server_cert, server_key) = write(
        tmp.path(),
        "etcd-server",
        &pki::issue(&etcd_pki.ca, "etcd", &[], &sans, true).unwrap(),
    );
    let (client_cert, client_key) = write(
        tmp.path(),
        "apiserver-etcd-client",
        &pki::issue(&etcd_pki.ca, "kube-apiserver-etcd-client", &[], &[], false).unwrap(),
    );
    let etcd = EtcdProcess::start_tls(&EtcdServerTls {
        cert: server_cert.into(),
        key: server_key.into(),
        client_ca: ca_file.clone(),
    })
    .expect("start etcd with TLS");
    assert!(etcd.endpoint.starts_with("https://"), "{}", etcd.endpoint);
    let ca_arg = format!("--etcd-cafile={}", ca_file.display());
    let cert_arg = format!("--etcd-certfile={client_cert}");
    let key_arg = format!("--etcd-keyfile={client_key}");
    let mut args: Vec<&str> = API_ONLY.to_vec();
    args.extend([ca_arg.as_str(), cert_arg.as_str(), key_arg.as_str()]);

    // A server without etcd's client certificate: refused, and it says why.
    let lone = tempfile::tempdir().unwrap();
    let out = Command::new(keelson_bin())
        .args(["server", "--data-dir"])
        .arg(lone.path())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--etcd-servers",
            &etcd.endpoint,
            &ca_arg,
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a server without a client certificate started"
    );
    assert!(
        err.contains("etcd") && err.contains(&etcd.endpoint),
        "{err}"
    );
    // An http:// endpoint with TLS options is a configuration error.
    let plain = etcd.endpoint.replace("https://", "http://");
    let out = Command::new(keelson_bin())
        .args(["server", "--data-dir"])
        .arg(lone.path())
        .args(["--listen", "127.0.0.1:0", "--etcd-servers", &plain, &ca_arg])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("must be https://"),
        "{err}"
    );

    let a = ServerProcess::start_with(Some(&etcd), &args);
    // The second server gets the first one's CA and signing key.
    let b = ServerProcess::start_prepared(Some(&etcd), &args, |dir| {
        let pki_dir = dir.join("pki");
        std::fs::create_dir_all(&pki_dir).unwrap();
        for f in ["ca.crt", "ca.key", "sa.key"] {
            std::fs::copy(a.data_dir.join("pki").join(f), pki_dir.join(f)).unwrap();
        }
    });

    // One store: what A writes, B reads.
    a.kubectl_ok(33, &["create", "serviceaccount", "robot"]);
    let token = a
        .kubectl_ok(33, &["create", "token", "robot"])
        .trim()
        .to_string();
    let whoami = |port: u16, auth: &[&str]| {
        let url =
            format!("https://127.0.0.1:{port}/apis/authentication.k8s.io/v1/selfsubjectreviews");
        let body = r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#;
        let mut args = vec![
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data",
            body,
        ];
        args.extend_from_slice(auth);
        args.push(&url);
        let (code, text, _) = curl_k(&args);
        (code, text)
    };
    let bearer = format!("Authorization: Bearer {token}");
    for s in [&a, &b] {
        let (code, text) = whoami(s.port, &["-H", &bearer]);
        assert_eq!(code, 201, "A's token at :{}: {text}", s.port);
        assert!(
            text.contains("system:serviceaccount:default:robot"),
            "{text}"
        );
    }
    // B's admin certificate (signed by the shared CA) works at A.
    let (cert, key) = (
        b.data_dir.join("pki/admin.crt"),
        b.data_dir.join("pki/admin.key"),
    );
    let (code, text) = whoami(
        a.port,
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 201, "{text}");
    assert!(text.contains("system:masters"), "{text}");
    // A token signed by another key is refused by both.
    let other = ServerProcess::start_with(None, API_ONLY);
    other.kubectl_ok(33, &["create", "serviceaccount", "robot"]);
    let foreign = other
        .kubectl_ok(33, &["create", "token", "robot"])
        .trim()
        .to_string();
    for s in [&a, &b] {
        let (code, _) = whoami(s.port, &["-H", &format!("Authorization: Bearer {foreign}")]);
        assert_eq!(code, 401, "a token from another cluster at :{}", s.port);
    }
}
