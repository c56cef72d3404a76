//! `keelson-cni`: the CNI 1.1 plugin binary. The runtime sets `CNI_*` in the
//! environment and writes the network configuration to stdin; the result or
//! the spec's error JSON goes to stdout.

#![forbid(unsafe_code)]

use std::io::{Read, Write};

use keelson_cni::error::{CniError, code};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 3 && args[1] == "--delete-link" {
        std::process::exit(keelson_cni::plugin::delete_link_helper(&args[2]));
    }
    let helper = std::env::current_exe().ok();
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => {
            keelson_cni::plugin::run_with(|k| std::env::var(k).ok(), &stdin, helper.as_deref())
        }
        Err(e) => Err((
            CniError::new(
                code::IO,
                format!("read network configuration from stdin: {e}"),
            ),
            "1.1.0".to_string(),
        )),
    };
    let mut out = std::io::stdout().lock();
    let status = match outcome {
        Ok(None) => 0,
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
            0
        }
        Err((e, version)) => {
            let _ = writeln!(out, "{}", e.to_json(&version));
            eprintln!("keelson-cni: {}", e.msg);
            1
        }
    };
    let _ = out.flush();
    std::process::exit(status);
}
