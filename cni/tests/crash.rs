//! Must-show 3: kill -9 of the plugin at random points during 200 ADDs, then
//! GC with the true attachments: every allocation and interface not listed is
//! gone, and the listed ones work.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// xorshift64: random kill points without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn kill_9_during_adds_then_gc_restores_truth() {
    if !can_run("kill_9_gc", &["/usr/bin/ping", "/usr/sbin/ip"]) {
        return;
    }
    let n: usize = std::env::var("KEELSON_CNI_CRASH_ADDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let host = Netns::new("kc-crash");
    host.ip(&["addr", "add", "198.18.0.1/32", "dev", "lo"]);
    let data = tempfile::tempdir().unwrap();
    let c = conf("crash", "198.19.6.0/23", data.path());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill -9 seed {seed}");
    let mut rng = Rng(seed);

    // How long an ADD takes here, to spread the kill points over it.
    let probe = Netns::new("kc-cprobe");
    let t = Instant::now();
    assert!(cni(&host, "ADD", "probe", Some(&probe), &c).ok);
    let add_time = t.elapsed().max(Duration::from_millis(1));
    eprintln!("one ADD takes {add_time:?}");

    let pods: Vec<Netns> = (0..n).map(|_| Netns::new("kc-cp")).collect();
    let mut completed = Vec::new();
    let mut killed = 0;
    for (i, pod) in pods.iter().enumerate() {
        let cid = format!("crash-{i}");
        let mut cmd = plugin_cmd(PLUGIN, "ADD", &cid, Some(&pod.path), "eth0");
        cmd.stdin(std::process::Stdio::piped());
        let mut child = host.spawn(&mut cmd);
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(c.to_string().as_bytes())
            .unwrap();
        // Kill points uniformly over 0..1.5x an ADD's duration; a third of
        // the runs are left alone.
        if !rng.next().is_multiple_of(3) {
            let us = rng.next() % (add_time.as_micros() as u64 * 3 / 2).max(1);
            std::thread::sleep(Duration::from_micros(us));
            let _ = child.kill(); // SIGKILL
        }
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            completed.push((
                cid,
                pod,
                serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
            ));
        } else {
            killed += 1;
        }
    }
    eprintln!("{} ADDs completed, {killed} killed", completed.len());
    assert!(killed > 0, "no ADD was killed: the test shows nothing");

    // The truth: every other completed attachment (the rest were, say, pods
    // that died meanwhile) plus the probe.
    let valid: Vec<_> = completed.iter().step_by(2).collect();
    let mut attachments = vec![json!({"containerID": "probe", "ifname": "eth0"})];
    attachments.extend(
        valid
            .iter()
            .map(|(cid, _, _)| json!({"containerID": cid, "ifname": "eth0"})),
    );
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!(attachments);
    let r = cni(&host, "GC", "", None, &gc);
    assert!(r.ok, "GC: {r:?}");

    let valid_ids: HashSet<String> = valid
        .iter()
        .map(|(cid, _, _)| format!("{cid}:eth0"))
        .chain(["probe:eth0".to_string()])
        .collect();
    let state = data.path().join("crash");
    let att: HashSet<String> = entries(&state.join("att")).into_iter().collect();
    assert_eq!(att, valid_ids, "attachment entries after GC");
    assert_eq!(
        entries(&state.join("ips")).len(),
        valid_ids.len(),
        "allocations after GC"
    );
    assert_eq!(
        host.kc_links().len(),
        valid_ids.len(),
        "host veths after GC"
    );
    // Unlisted pods have no interface left; listed ones work and CHECK passes.
    let valid_pods: HashSet<&str> = valid.iter().map(|(_, p, _)| p.name.as_str()).collect();
    for pod in &pods {
        if !valid_pods.contains(pod.name.as_str()) {
            assert_eq!(pod.links(), ["lo"], "{} still has interfaces", pod.name);
        }
    }
    for (cid, pod, result) in &valid {
        assert!(
            pod.ping("198.18.0.1".parse().unwrap()),
            "{cid} cannot reach the host"
        );
        let mut chk = c.clone();
        chk["prevResult"] = result.clone();
        let ck = cni(&host, "CHECK", cid, Some(pod), &chk);
        assert!(ck.ok, "CHECK {cid}: {ck:?}");
    }
    // A second GC with the same list changes nothing.
    assert!(cni(&host, "GC", "", None, &gc).ok);
    assert_eq!(host.kc_links().len(), valid_ids.len());
}
