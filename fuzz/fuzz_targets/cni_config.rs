//! What a container runtime hands `keelson-cni`: the `CNI_*` environment and
//! the network configuration on stdin, parsed as the plugin parses them
//! before it touches the host; VERSION, which touches nothing, is run whole.
//!
//! Input: one byte choosing CNI_COMMAND, then the configuration JSON, and
//! NUL-separated CNI_CONTAINERID, CNI_IFNAME and CNI_NETNS.

#![no_main]

use std::path::Component;

use keelson_cni::config::{self, Attachment, Command, Env};
use libfuzzer_sys::fuzz_target;

const COMMANDS: &[&str] = &[
    "ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC", "", "BOGUS",
];

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(4, |&b| b == 0);
    let stdin = parts.next().unwrap_or_default();
    let container_id = keelson_fuzz::text(parts.next().unwrap_or_default());
    let ifname = keelson_fuzz::text(parts.next().unwrap_or_default());
    let netns = keelson_fuzz::text(parts.next().unwrap_or_default());
    let command = COMMANDS[usize::from(which) % COMMANDS.len()];
    let get = |k: &str| -> Option<String> {
        match k {
            "CNI_COMMAND" => Some(command.to_string()),
            "CNI_CONTAINERID" => Some(container_id.clone()),
            "CNI_IFNAME" => Some(ifname.clone()),
            "CNI_NETNS" => Some(netns.clone()),
            "CNI_PATH" => Some("/opt/cni/bin".to_string()),
            _ => None,
        }
    };

    let _ = config::parse_version(stdin);
    if let Ok(env) = Env::parse(get) {
        if let Some(a) = &env.attachment {
            check_attachment(a);
        }
        if env.command == Command::Version {
            // VERSION answers from stdin alone, with no host effect.
            let out = keelson_cni::plugin::run(get, stdin).expect("VERSION answers");
            assert!(out.is_some());
        }
    }
    let command = match which % 6 {
        0 => Command::Add,
        1 => Command::Del,
        2 => Command::Check,
        3 => Command::Status,
        4 => Command::Gc,
        _ => Command::Version,
    };
    if let Ok(conf) = config::parse(stdin, command) {
        // The network's state directory is one directory below dataDir.
        let state = conf.state_dir();
        let below = state
            .strip_prefix(&conf.data_dir)
            .expect("state dir is under dataDir");
        let comps: Vec<Component<'_>> = below.components().collect();
        assert!(
            matches!(comps.as_slice(), [Component::Normal(_)]),
            "network {:?} leaves dataDir: {}",
            conf.name,
            state.display()
        );
        for a in conf.valid_attachments.iter().flatten() {
            check_attachment(a);
        }
    }
});

/// An attachment's key is one safe file name that parses back to it, and
/// its host interface name fits the kernel's limit.
fn check_attachment(a: &Attachment) {
    let key = a.key();
    assert!(!key.contains('/') && key != "." && key != "..", "{key:?}");
    assert_eq!(Attachment::from_key(&key).as_ref(), Some(a));
    assert!(a.host_ifname().len() < 16);
}
