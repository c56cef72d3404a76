//! Stale UDP conntrack entries: deleted with the `conntrack` tool
//! (Debian package `conntrack`).

use std::process::Command;

use crate::plan::StaleFlow;

/// Errors deleting conntrack entries.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("run {command}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Deletes conntrack entries.
pub trait Conntrack: Send + Sync {
    fn delete_udp(&self, flow: &StaleFlow) -> Result<(), ConntrackError>;
}

/// The `conntrack` CLI, optionally behind a prefix (`ip netns exec X`).
#[derive(Clone, Debug)]
pub struct ConntrackCli {
    pub prefix: Vec<String>,
    /// The conntrack binary.
    pub conntrack: String,
}

impl Default for ConntrackCli {
    fn default() -> Self {
        ConntrackCli {
            prefix: Vec::new(),
            conntrack: keelson_host::tools::CONNTRACK.name.into(),
        }
    }
}

/// Arguments selecting the entries of `flow`.
pub fn delete_args(flow: &StaleFlow) -> Vec<String> {
    let mut a = vec!["-D".to_string(), "-p".into(), "udp".into()];
    if let Some(d) = flow.dst {
        a.extend(["--orig-dst".into(), d.to_string()]);
    }
    a.extend([
        "--orig-port-dst".into(),
        flow.port.to_string(),
        "--reply-src".into(),
        flow.endpoint.to_string(),
    ]);
    a
}

impl Conntrack for ConntrackCli {
    fn delete_udp(&self, flow: &StaleFlow) -> Result<(), ConntrackError> {
        let mut all: Vec<String> = self.prefix.clone();
        all.push(self.conntrack.clone());
        all.extend(delete_args(flow));
        let command = all.join(" ");
        let out = Command::new(&all[0])
            .args(&all[1..])
            .output()
            .map_err(|source| ConntrackError::Spawn {
                command: command.clone(),
                source,
            })?;
        // conntrack exits 1 with "0 flow entries have been deleted" when
        // nothing matched: that is success for us (idempotent).
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || stderr.contains("0 flow entries") {
            return Ok(());
        }
        Err(ConntrackError::Failed {
            command,
            status: out.status,
            stderr: stderr.into_owned(),
        })
    }
}
