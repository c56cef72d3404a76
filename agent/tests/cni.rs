//! The CNI runtime side against Debian's reference plugins (bridge +
//! host-local) in a network namespace this test creates: ADD, CHECK, DEL,
//! DEL again (idempotent) and a plugin error carried into the message.

use std::path::{Path, PathBuf};
use std::process::Command;

use keelson_agent::network::{Attachment, Cni};

struct Bridge(String);
impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

fn conf(dir: &Path, bridge: &str, subnet: &str, ipam_dir: &Path) {
    let c = serde_json::json!({
        "cniVersion": "1.0.0", "name": format!("net-{bridge}"),
        "plugins": [{"type": "bridge", "bridge": bridge, "isGateway": true,
                     "ipam": {"type": "host-local", "subnet": subnet, "dataDir": ipam_dir}}],
    });
    std::fs::write(dir.join("10-a.conflist"), serde_json::to_vec(&c).unwrap()).unwrap();
    std::fs::write(dir.join("README"), b"ignored").unwrap();
}

#[tokio::test]
async fn add_check_del_with_reference_plugins() {
    if !keelson_e2e::needs("add_check_del_with_reference_plugins")
        .root()
        .tool("/usr/lib/cni/bridge")
        .ok()
    {
        return;
    }
    let tag = format!("{:x}", std::process::id() & 0xffffff);
    let ns = keelson_e2e::Netns::new("kcni");
    let bridge = Bridge(format!("kc{tag}"));
    let tmp = tempfile::tempdir().unwrap();
    let ipam = tmp.path().join("ipam");
    let confdir = tmp.path().join("conf");
    std::fs::create_dir_all(&confdir).unwrap();
    let subnet = format!(
        "10.{}.{}.0/24",
        200 + (std::process::id() % 50),
        std::process::id() % 250
    );
    conf(&confdir, &bridge.0, &subnet, &ipam);
    let cni = Cni::new(
        confdir.clone(),
        vec![PathBuf::from("/nonexistent"), PathBuf::from("/usr/lib/cni")],
    );
    let list = cni.load().await.unwrap();
    let att = Attachment {
        container_id: format!("c-{tag}"),
        netns: PathBuf::from(format!("/run/netns/{}", ns.name)),
        ifname: "eth0".into(),
        args: keelson_agent::network::conf::k8s_args("default", "p", "u"),
    };
    let r = cni.add(&list, &att).await.unwrap();
    assert_eq!(r.ips.len(), 1);
    let ip = r.ips[0].to_string();
    assert!(
        ip.starts_with(&subnet[..subnet.len() - 5]),
        "{ip} in {subnet}"
    );
    let addr = Command::new("ip")
        .args(["-n", &ns.name, "-o", "addr", "show", "eth0"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&addr.stdout).contains(&ip),
        "eth0 lacks {ip}"
    );
    cni.check(&list, &att, &r.raw).await.unwrap();
    let alloc = std::fs::read_dir(ipam.join(&list.name)).unwrap().count();
    assert!(alloc >= 2, "host-local allocation file missing");
    cni.del(&list, &att, Some(&r.raw)).await.unwrap();
    cni.del(&list, &att, Some(&r.raw))
        .await
        .expect("DEL is idempotent");
    assert!(
        !ipam.join(&list.name).join(&ip).exists(),
        "IP {ip} still allocated"
    );
    let addr = Command::new("ip")
        .args(["-n", &ns.name, "link", "show", "eth0"])
        .output()
        .unwrap();
    assert!(!addr.status.success(), "eth0 still in the netns");

    // A plugin error: its JSON msg is in our error.
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    conf(&bad, &bridge.0, "not-a-subnet", &ipam);
    let cni = Cni::new(bad, vec![PathBuf::from("/usr/lib/cni")]);
    let list = cni.load().await.unwrap();
    let err = cni.add(&list, &att).await.unwrap_err().to_string();
    assert!(
        err.contains("CNI ADD for c-") && err.contains("plugin bridge failed"),
        "{err}"
    );
    assert!(
        err.to_lowercase().contains("invalid") || err.contains("not-a-subnet"),
        "{err}"
    );
    // No config at all.
    let none = Cni::new(tmp.path().join("empty"), vec![]);
    assert!(
        none.load()
            .await
            .unwrap_err()
            .to_string()
            .contains("load CNI config")
    );
}
