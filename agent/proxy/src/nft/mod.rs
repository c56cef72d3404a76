//! The nftables backend: renders with [`render`], applies one `nft -f -`
//! transaction per sync through an [`NftRunner`]; element-only changes go
//! through an [`ElementWriter`] (nf_tables netlink, see [`netlink`]) when
//! one is set, skipping the CLI's parser and cache.

pub mod netlink;
pub mod render;

use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::backend::{BackendError, ProxyBackend};
use crate::model::DesiredState;
use crate::plan::Changes;
use render::{Element, NftConfig, Programmed};

/// Errors of the nftables backend.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
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
    #[error(transparent)]
    Encode(#[from] netlink::EncodeError),
    #[error("table {table}: {source}")]
    Netlink {
        table: String,
        #[source]
        source: netlink::NetlinkError,
    },
}

/// Writes set and map elements of a table in one transaction: deletes,
/// then adds. The real one talks netlink ([`netlink::NetlinkSocket`]).
pub trait ElementWriter: Send {
    fn write(&mut self, table: &str, delete: &[Element], add: &[Element]) -> Result<(), NftError>;
    /// One transaction: every element set of `table` (and its generation)
    /// holds exactly `elements` (and `generation`) afterwards.
    fn replace(
        &mut self,
        table: &str,
        elements: &[&Element],
        generation: u32,
    ) -> Result<(), NftError>;
}

impl ElementWriter for netlink::NetlinkSocket {
    fn write(&mut self, table: &str, delete: &[Element], add: &[Element]) -> Result<(), NftError> {
        let del: Vec<&Element> = delete.iter().collect();
        let add: Vec<&Element> = add.iter().collect();
        let batch = netlink::element_batch(self.next_seq(), table, &del, &add)?;
        self.send_batch(batch).map_err(|source| NftError::Netlink {
            table: table.to_string(),
            source,
        })
    }

    fn replace(
        &mut self,
        table: &str,
        elements: &[&Element],
        generation: u32,
    ) -> Result<(), NftError> {
        let batch = netlink::replace_batch(self.next_seq(), table, elements, generation)?;
        self.send_batch(batch).map_err(|source| NftError::Netlink {
            table: table.to_string(),
            source,
        })
    }
}

/// Runs `nft`. The real one spawns the CLI (optionally behind a prefix such
/// as `ip netns exec NAME`); tests use a recording fake.
pub trait NftRunner: Send {
    /// `nft -f -` with `script` on stdin: one atomic transaction.
    fn apply(&self, script: &str) -> Result<(), NftError>;
    /// `nft ARGS...`, returning stdout.
    fn query(&self, args: &[&str]) -> Result<String, NftError>;
}

/// The `nft` command line tool.
#[derive(Clone, Debug)]
pub struct NftCli {
    /// Program and arguments put before `nft` (e.g. `ip netns exec X`).
    pub prefix: Vec<String>,
    /// The nft binary.
    pub nft: String,
}

impl Default for NftCli {
    fn default() -> Self {
        NftCli {
            prefix: Vec::new(),
            nft: keelson_host::tools::NFT.name.into(),
        }
    }
}

impl NftCli {
    /// Runs nft inside the named network namespace (`ip netns exec`).
    pub fn in_netns(netns: &str) -> NftCli {
        NftCli {
            prefix: crate::netns_prefix(keelson_host::tools::IP.name, netns),
            nft: keelson_host::tools::NFT.name.into(),
        }
    }

    fn command(&self, args: &[&str]) -> (Command, String) {
        let mut all: Vec<&str> = self.prefix.iter().map(String::as_str).collect();
        all.push(&self.nft);
        all.extend(args);
        let mut c = Command::new(all[0]);
        c.args(&all[1..]);
        (c, all.join(" "))
    }
}

impl NftRunner for NftCli {
    fn apply(&self, script: &str) -> Result<(), NftError> {
        let (mut cmd, command) = self.command(&["-f", "-"]);
        let spawn = |source| NftError::Spawn {
            command: command.clone(),
            source,
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn)?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        // A write error means nft exited early; its status says why.
        let _ = stdin.write_all(script.as_bytes());
        drop(stdin);
        let out = child.wait_with_output().map_err(spawn)?;
        if !out.status.success() {
            let mut stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            stderr.truncate(4000);
            return Err(NftError::Failed {
                command,
                status: out.status,
                stderr,
            });
        }
        Ok(())
    }

    fn query(&self, args: &[&str]) -> Result<String, NftError> {
        let (mut cmd, command) = self.command(args);
        let out = cmd.output().map_err(|source| NftError::Spawn {
            command: command.clone(),
            source,
        })?;
        if !out.status.success() {
            return Err(NftError::Failed {
                command,
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The nftables dataplane.
pub struct NftBackend<R: NftRunner> {
    runner: R,
    cfg: NftConfig,
    generation: u32,
    programmed: Option<Programmed>,
    elements: Option<Box<dyn ElementWriter>>,
    /// The next full sync rebuilds the table even when its structure
    /// fingerprint matches (set when drift was seen).
    rebuild: bool,
    last_full: FullSyncKind,
}

/// How a full sync wrote the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FullSyncKind {
    /// None yet.
    None,
    /// The structure was right: one netlink transaction replaced every
    /// element.
    Elements,
    /// No table: the structure by `nft -f`, then the elements by netlink.
    Created,
    /// One `nft -f` transaction replaced the whole table.
    Rebuilt,
}

impl<R: NftRunner> NftBackend<R> {
    pub fn new(runner: R, cfg: NftConfig) -> Self {
        NftBackend {
            runner,
            cfg,
            generation: 0,
            programmed: None,
            elements: None,
            rebuild: false,
            last_full: FullSyncKind::None,
        }
    }

    fn check_drift(&mut self) -> Result<bool, BackendError> {
        if self.programmed.is_none() {
            return Ok(true);
        }
        // Both listings are cheap even at 30k Services (no elements of the
        // big maps are read): the generation marker and the chain names.
        let gen_listing =
            match self
                .runner
                .query(&["list", "set", "ip", &self.cfg.table, "generation"])
            {
                Ok(s) => s,
                Err(NftError::Failed { .. }) => return Ok(true),
                Err(e) => return Err(e.into()),
            };
        if !gen_listing.contains(&format!("{:#010x}", self.generation))
            && !gen_listing.contains(&format!("{:#x}", self.generation))
        {
            return Ok(true);
        }
        let chains = self.runner.query(&["list", "chains", "ip"])?;
        Ok(parse_chain_names(&chains, &self.cfg.table) != self.expected_chains())
    }

    /// How the last full sync wrote the table.
    pub fn last_full_sync(&self) -> FullSyncKind {
        self.last_full
    }

    /// Whether the table `self.cfg.table` exists, and its structure
    /// fingerprint if it has one.
    fn kernel_structure(&self) -> Result<(bool, Option<u32>), NftError> {
        let t = &self.cfg.table;
        match self.runner.query(&["list", "set", "ip", t, "structure"]) {
            Ok(listing) => Ok((true, parse_mark_element(&listing))),
            Err(NftError::Failed { .. }) => {
                let chains = self.runner.query(&["list", "chains", "ip"])?;
                Ok((!parse_chain_names(&chains, t).is_empty(), None))
            }
            Err(e) => Err(e),
        }
    }

    /// Sends element-only changes through `writer` instead of `nft -f`.
    pub fn with_element_writer(mut self, writer: Box<dyn ElementWriter>) -> Self {
        self.elements = Some(writer);
        self
    }

    pub fn config(&self) -> &NftConfig {
        &self.cfg
    }

    fn next_generation(&mut self) -> u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
            .unwrap_or(0);
        self.generation = (nanos ^ std::process::id().rotate_left(16)) | 1;
        self.generation
    }

    fn expected_chains(&self) -> std::collections::BTreeSet<String> {
        let mut s: std::collections::BTreeSet<String> =
            render::BASE_CHAINS.iter().map(|c| c.to_string()).collect();
        if let Some(p) = &self.programmed {
            s.extend(p.families.iter().map(|f| f.name()));
            s.extend(p.chains.iter().cloned());
        }
        s
    }
}

/// The one element of a `type mark` set in an `nft list set` listing.
fn parse_mark_element(listing: &str) -> Option<u32> {
    let rest = listing.split("elements = {").nth(1)?;
    let value = rest.split('}').next()?.trim();
    let hex = value.strip_prefix("0x")?;
    u32::from_str_radix(hex, 16).ok()
}

/// Chain names of table `table` in `nft list chains ip` output.
fn parse_chain_names(listing: &str, table: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut inside = false;
    for line in listing.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("table ") {
            inside = rest.trim_end_matches('{').trim() == format!("ip {table}");
        } else if inside && let Some(rest) = l.strip_prefix("chain ") {
            out.insert(rest.trim_end_matches('{').trim().to_string());
        }
    }
    out
}

impl<R: NftRunner> ProxyBackend for NftBackend<R> {
    fn name(&self) -> &'static str {
        "nftables"
    }

    /// Three ways, each leaving the same table: when the kernel's table has
    /// this structure (same fingerprint: a restart, a periodic resync), one
    /// netlink transaction replaces the elements; with no table, `nft -f`
    /// writes the structure and netlink the elements (nothing to keep
    /// consistent in between); otherwise (another structure, a table
    /// changed behind our back, no netlink writer) one `nft -f` transaction
    /// replaces the whole table.
    /// nft's parser is the slow part at scale (~1 s for 30k Services).
    fn full_sync(&mut self, desired: &DesiredState) -> Result<(), BackendError> {
        let objects = render::state_objects(desired, &self.cfg);
        let generation = self.next_generation();
        self.programmed = None;
        let rebuild = std::mem::take(&mut self.rebuild);
        let kind = if self.elements.is_some() {
            let (exists, fingerprint) = self.kernel_structure()?;
            let (_, want) = render::structure(&objects, &self.cfg);
            match (exists, fingerprint) {
                // A missing table (also one deleted behind our back) has
                // nothing to keep consistent.
                (false, _) => FullSyncKind::Created,
                (true, Some(f)) if f == want && !rebuild => FullSyncKind::Elements,
                _ => FullSyncKind::Rebuilt,
            }
        } else {
            FullSyncKind::Rebuilt
        };
        let elements: Vec<&Element> = objects.elements.iter().collect();
        match (kind, &mut self.elements) {
            (FullSyncKind::Elements, Some(w)) => {
                w.replace(&self.cfg.table, &elements, generation)?
            }
            (FullSyncKind::Created, Some(w)) => {
                self.runner
                    .apply(&render::render_structure(&objects, &self.cfg, generation))?;
                w.replace(&self.cfg.table, &elements, generation)?;
            }
            _ => self
                .runner
                .apply(&render::render_full(&objects, &self.cfg, generation))?,
        }
        self.last_full = kind;
        self.programmed = Some(Programmed::from_objects(&objects));
        Ok(())
    }

    fn apply(&mut self, changes: &Changes, desired: &DesiredState) -> Result<(), BackendError> {
        let Some(programmed) = &self.programmed else {
            return Err(BackendError::NotSynced);
        };
        let Some((set, next)) = render::plan_changes(changes, desired, programmed, &self.cfg)
        else {
            tracing::info!("a new endpoint count needs a new family chain: full sync");
            return self.full_sync(desired);
        };
        if set.is_empty() {
            return Ok(());
        }
        // On failure the table is in an unknown state: force a full sync.
        self.programmed = None;
        match &mut self.elements {
            Some(w) if set.statements.is_empty() => {
                w.write(&self.cfg.table, &set.delete, &set.add)?
            }
            _ => self.runner.apply(&set.script(&self.cfg.table))?,
        }
        self.programmed = Some(next);
        Ok(())
    }

    fn drifted(&mut self) -> Result<bool, BackendError> {
        let drifted = self.check_drift()?;
        // Someone changed the table: rebuild it whole, not only its elements.
        self.rebuild |= drifted;
        Ok(drifted)
    }

    fn cleanup(&mut self) -> Result<(), BackendError> {
        self.programmed = None;
        self.runner.apply(&render::render_delete(&self.cfg))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mark_elements_are_parsed() {
        let listing = "table ip keelson {\n\tset structure {\n\t\ttype mark\n\t\telements = { 0x0badf00d }\n\t}\n}\n";
        assert_eq!(parse_mark_element(listing), Some(0x0bad_f00d));
        assert_eq!(parse_mark_element("set x {\n type mark\n}"), None);
    }

    #[test]
    fn chain_names_are_parsed_per_table() {
        let listing = "table ip other {\n\tchain x {\n\t}\n}\ntable ip keelson {\n\tchain services {\n\t}\n\tchain nat_output {\n\t\ttype nat hook output priority dstnat - 1; policy accept;\n\t}\n}\n";
        let names = parse_chain_names(listing, "keelson");
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            vec!["nat_output".to_string(), "services".to_string()]
        );
    }
}
