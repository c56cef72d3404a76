//! Entering a network namespace for real (root): a namespace held by a
//! child process (`unshare --net`, so no host-wide name is taken), its links
//! listed through the rtnetlink client opened inside it.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use keelson_host::{netns, rtnetlink};

struct Holder(Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A new network namespace, held by a sleeping child; its ns file.
fn new_netns() -> Option<(Holder, PathBuf)> {
    if !keelson_e2e::needs("keelson-host netns")
        .root()
        .tool("/usr/bin/unshare")
        .ok()
    {
        return None;
    }
    let child = Command::new("/usr/bin/unshare")
        .args(["--net", "sleep", "100"])
        .spawn()
        .unwrap();
    let holder = Holder(child);
    let path = PathBuf::from(format!("/proc/{}/ns/net", holder.0.id()));
    let own = std::fs::read_link("/proc/self/ns/net").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_link(&path).ok().as_ref() == Some(&own) || !path.exists() {
        assert!(
            Instant::now() < deadline,
            "unshare did not make a namespace"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Some((holder, path))
}

#[test]
fn in_netns_runs_inside_and_leaves_the_caller_where_it_was() {
    let Some((_holder, path)) = new_netns() else {
        return;
    };
    let before = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    let (inside, links) = netns::in_netns(&path, || {
        let ns = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let links = rtnetlink::Socket::new().unwrap().links().unwrap();
        (ns, links)
    })
    .unwrap();
    assert_eq!(inside, std::fs::read_link(&path).unwrap());
    assert_ne!(inside, before);
    let names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["lo"]);
    assert_eq!(
        std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
        before
    );
    // A socket opened there stays there.
    let sock = rtnetlink::Socket::in_netns(&path).unwrap();
    let lo = sock.link_index("lo").unwrap();
    sock.set_up(lo, "lo", None).unwrap();
    assert!(
        sock.links().unwrap()[0].flags & 1 != 0,
        "lo is up in the namespace"
    );
    assert_eq!(
        std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
        before
    );
}

#[test]
fn in_netns_here_returns_the_thread_to_its_namespace() {
    let Some((_holder, path)) = new_netns() else {
        return;
    };
    let before = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    let file = netns::open(&path).unwrap();
    let inside = netns::in_netns_here(&file, &path, || {
        std::fs::read_link("/proc/thread-self/ns/net").unwrap()
    })
    .unwrap();
    assert_eq!(inside, std::fs::read_link(&path).unwrap());
    assert_eq!(
        std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
        before
    );
}

#[test]
fn a_panic_inside_reaches_the_caller() {
    let Some((_holder, path)) = new_netns() else {
        return;
    };
    let r = std::panic::catch_unwind(|| netns::in_netns(&path, || panic!("boom inside")));
    let msg = r.unwrap_err();
    assert_eq!(msg.downcast_ref::<&str>(), Some(&"boom inside"));
}
