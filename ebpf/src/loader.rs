//! Loading, attaching and pinning with aya, and the aya implementation of
//! [`LbMaps`]. Pin layout under the pin directory (default
//! [`DEFAULT_PIN_DIR`]):
//!
//! ```text
//! <pin dir>/maps/klb_*            the maps (pinned by name by the loader)
//! <pin dir>/links/<hook>          one bpf_link per attached program:
//!     connect4 sendmsg4 recvmsg4 getpeer4     (cgroup2 socket hooks)
//!     tc-ingress-<ifname> tc-egress-<ifname>  (tcx on node interfaces)
//! ```
//!
//! A link pin keeps its program attached while no process holds it, so a
//! restarted agent adopts the pinned links (it never attaches twice) and
//! reopens the pinned maps with their contents.

use std::fs::File;
use std::io;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, Map, MapData, MapError};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{
    CgroupAttachMode, CgroupSockAddr, ProgramError, SchedClassifier, TcAttachType,
};
use aya::{Ebpf, EbpfLoader};

use crate::layout::{
    AffKey, AffVal, Backend, BeKey, BeVal, CtKey, CtVal, Frontend, MAP_AFFINITY, MAP_BACKENDS,
    MAP_SERVICES, MAPS, RevNatKey, RevNatVal, ServiceEntry, SvcKey, SvcVal,
};
use crate::maps::{LbMaps, MapsError};

/// Where the agent pins its maps and links unless told otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/keelson";
/// Where bpffs is mounted when the pin directory is below it and missing.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";

static SOCK_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sock.o"));
static TC_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tc.o"));

/// (program name in sock.c, link pin name).
const SOCK_PROGRAMS: &[(&str, &str)] = &[
    ("klb_connect4", "connect4"),
    ("klb_sendmsg4", "sendmsg4"),
    ("klb_recvmsg4", "recvmsg4"),
    ("klb_getpeer4", "getpeer4"),
];

// SAFETY (all impls below): each type is #[repr(C)], built only from
// integer fields with explicit padding fields (layout.rs tests check sizes
// and offsets), so it has no implicit padding and every bit pattern is a
// valid value.
#[allow(unsafe_code)]
unsafe impl aya::Pod for SvcKey {}
#[allow(unsafe_code)]
unsafe impl aya::Pod for SvcVal {}
#[allow(unsafe_code)]
unsafe impl aya::Pod for BeKey {}
#[allow(unsafe_code)]
unsafe impl aya::Pod for BeVal {}
#[allow(unsafe_code)]
unsafe impl aya::Pod for RevNatKey {}
#[allow(unsafe_code)]
unsafe impl aya::Pod for RevNatVal {}
#[allow(unsafe_code)]
unsafe impl aya::Pod for AffKey {}
#[allow(unsafe_code)]
unsafe impl aya::Pod for AffVal {}
#[allow(unsafe_code)]
unsafe impl aya::Pod for CtKey {}
#[allow(unsafe_code)]
unsafe impl aya::Pod for CtVal {}

/// Errors of loading, attaching, pinning and removal.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "pin directory {0} is not on a bpffs (mount one there, or use a path below /sys/fs/bpf)"
    )]
    NotBpffs(PathBuf),
    #[error("load BPF object {object} (maps pinned in {pin_dir}): {source}")]
    Object {
        object: &'static str,
        pin_dir: PathBuf,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("{op} program {program}{target}: {source}")]
    Program {
        op: &'static str,
        program: &'static str,
        target: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("map {0} missing from the BPF object")]
    MissingMap(&'static str),
    #[error("open map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<MapError>,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LoadError + use<> {
    let path = path.to_path_buf();
    move |source| LoadError::Io { op, path, source }
}

/// What to load and where to attach it.
#[derive(Clone, Debug)]
pub struct LbConfig {
    /// bpffs directory for the pins (created; bpffs mounted at
    /// /sys/fs/bpf when the directory is below it and none is mounted).
    pub pin_dir: PathBuf,
    /// cgroup2 directory for the socket hooks; None: no socket balancing.
    pub cgroup: Option<PathBuf>,
    /// Node interfaces for the NodePort / external TC programs.
    pub tc_interfaces: Vec<String>,
}

impl LbConfig {
    pub fn new(pin_dir: impl Into<PathBuf>) -> LbConfig {
        LbConfig {
            pin_dir: pin_dir.into(),
            cgroup: None,
            tc_interfaces: Vec::new(),
        }
    }
}

/// The loaded load balancer: its maps and the links it attached or adopted.
/// Dropping it detaches nothing (the links are pinned); [`remove_all`] does.
#[derive(Debug)]
pub struct EbpfLb {
    maps: AyaMaps,
    links: Vec<PinnedLink>,
    attached: Vec<String>,
    adopted: Vec<String>,
}

impl EbpfLb {
    /// Loads (or re-opens) everything `cfg` asks for. Idempotent: a second
    /// call, from this or a later process, adopts the pinned links and maps.
    pub fn open(cfg: &LbConfig) -> Result<EbpfLb, LoadError> {
        ensure_bpffs(&cfg.pin_dir)?;
        let maps_dir = cfg.pin_dir.join("maps");
        let links_dir = cfg.pin_dir.join("links");
        for d in [&maps_dir, &links_dir] {
            std::fs::create_dir_all(d).map_err(io_err("create directory", d))?;
        }
        let mut attached = Vec::new();
        let mut adopted = Vec::new();
        let mut links = Vec::new();

        let mut sock = load_object("sock.o", SOCK_OBJ, &maps_dir)?;
        if let Some(cgroup) = &cfg.cgroup {
            let mut cg_file: Option<File> = None;
            for (prog_name, pin_name) in SOCK_PROGRAMS {
                let pin = links_dir.join(pin_name);
                if let Some(link) = adopt(&pin, prog_name)? {
                    links.push(link);
                    adopted.push(pin_name.to_string());
                    continue;
                }
                let cg = match &mut cg_file {
                    Some(f) => f,
                    None => {
                        cg_file.insert(File::open(cgroup).map_err(io_err("open cgroup", cgroup))?)
                    }
                };
                let target = format!(" to cgroup {}", cgroup.display());
                let perr = |op: &'static str| {
                    let target = target.clone();
                    move |e: ProgramError| LoadError::Program {
                        op,
                        program: prog_name,
                        target,
                        source: Box::new(e),
                    }
                };
                let prog: &mut CgroupSockAddr = sock
                    .program_mut(prog_name)
                    .ok_or_else(|| perr("find")(ProgramError::NotLoaded))?
                    .try_into()
                    .map_err(perr("convert"))?;
                prog.load().map_err(perr("load"))?;
                let id = prog
                    .attach(cg.as_fd(), CgroupAttachMode::Single)
                    .map_err(perr("attach"))?;
                let link = prog.take_link(id).map_err(perr("take link of"))?;
                let fd_link = FdLink::try_from(link).map_err(|e| LoadError::Program {
                    op: "get bpf_link of",
                    program: prog_name,
                    target: target.clone(),
                    source: Box::new(e),
                })?;
                links.push(pin_link(fd_link, &pin, prog_name)?);
                attached.push(pin_name.to_string());
            }
        }

        if !cfg.tc_interfaces.is_empty() {
            let mut tc = load_object("tc.o", TC_OBJ, &maps_dir)?;
            for (prog_name, dir, attach) in [
                ("klb_tc_ingress", "ingress", TcAttachType::Ingress),
                ("klb_tc_egress", "egress", TcAttachType::Egress),
            ] {
                for iface in &cfg.tc_interfaces {
                    let pin_name = format!("tc-{dir}-{iface}");
                    let pin = links_dir.join(&pin_name);
                    if let Some(link) = adopt(&pin, prog_name)? {
                        links.push(link);
                        adopted.push(pin_name);
                        continue;
                    }
                    let target = format!(" to {dir} of interface {iface}");
                    let perr = |op: &'static str| {
                        let target = target.clone();
                        move |e: ProgramError| LoadError::Program {
                            op,
                            program: prog_name,
                            target,
                            source: Box::new(e),
                        }
                    };
                    let prog: &mut SchedClassifier = tc
                        .program_mut(prog_name)
                        .ok_or_else(|| perr("find")(ProgramError::NotLoaded))?
                        .try_into()
                        .map_err(perr("convert"))?;
                    if prog.fd().is_err() {
                        prog.load().map_err(perr("load"))?;
                    }
                    let id = prog.attach(iface, attach).map_err(perr("attach"))?;
                    let link = prog.take_link(id).map_err(perr("take link of"))?;
                    let fd_link = FdLink::try_from(link).map_err(|e| LoadError::Program {
                        op: "get bpf_link (tcx, kernel 6.6+) of",
                        program: prog_name,
                        target: target.clone(),
                        source: Box::new(e),
                    })?;
                    links.push(pin_link(fd_link, &pin, prog_name)?);
                    attached.push(pin_name);
                }
            }
        }

        let maps = AyaMaps::take(&mut sock)?;
        Ok(EbpfLb {
            maps,
            links,
            attached,
            adopted,
        })
    }

    pub fn maps(&self) -> &AyaMaps {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut AyaMaps {
        &mut self.maps
    }

    pub fn into_maps(self) -> AyaMaps {
        self.maps
    }

    /// Link pins this call attached (new).
    pub fn attached(&self) -> &[String] {
        &self.attached
    }

    /// Link pins this call found and adopted.
    pub fn adopted(&self) -> &[String] {
        &self.adopted
    }

    /// Number of links held (attached + adopted).
    pub fn link_count(&self) -> usize {
        self.links.len()
    }
}

fn load_object(object: &'static str, bytes: &[u8], maps_dir: &Path) -> Result<Ebpf, LoadError> {
    EbpfLoader::new()
        .default_map_pin_directory(maps_dir)
        .load(bytes)
        .map_err(|e| LoadError::Object {
            object,
            pin_dir: maps_dir.to_path_buf(),
            source: Box::new(e),
        })
}

fn adopt(pin: &Path, program: &'static str) -> Result<Option<PinnedLink>, LoadError> {
    if !pin.exists() {
        return Ok(None);
    }
    PinnedLink::from_pin(pin)
        .map(Some)
        .map_err(|e| LoadError::Program {
            op: "adopt pinned link of",
            program,
            target: format!(" at {}", pin.display()),
            source: Box::new(e),
        })
}

fn pin_link(link: FdLink, pin: &Path, program: &'static str) -> Result<PinnedLink, LoadError> {
    link.pin(pin).map_err(|e| LoadError::Program {
        op: "pin link of",
        program,
        target: format!(" at {}", pin.display()),
        source: Box::new(e),
    })
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

/// Makes sure `pin_dir` can hold pins: its nearest existing ancestor must be
/// on bpffs; below /sys/fs/bpf a missing bpffs is mounted.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<(), LoadError> {
    let existing = pin_dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if is_bpffs(existing) {
        return Ok(());
    }
    let mount_point = Path::new(BPFFS_MOUNT);
    if !pin_dir.starts_with(mount_point) {
        return Err(LoadError::NotBpffs(pin_dir.to_path_buf()));
    }
    std::fs::create_dir_all(mount_point).map_err(io_err("create directory", mount_point))?;
    if !is_bpffs(mount_point) {
        nix::mount::mount(
            Some("bpf"),
            mount_point,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| LoadError::Io {
            op: "mount bpffs at",
            path: mount_point.to_path_buf(),
            source: io::Error::from(e),
        })?;
        tracing::info!(path = BPFFS_MOUNT, "mounted bpffs");
    }
    Ok(())
}

/// Detaches and deletes everything pinned under `pin_dir`: links first
/// (their programs go with them), then the maps. Idempotent: a missing
/// directory is success. Call it with no [`EbpfLb`] of that directory
/// alive in this process (its open link fds would keep the links).
pub fn remove_all(pin_dir: &Path) -> Result<(), LoadError> {
    let links_dir = pin_dir.join("links");
    let maps_dir = pin_dir.join("maps");
    remove_files_in(&links_dir)?;
    for name in MAPS {
        remove_file_if_present(&maps_dir.join(name))?;
    }
    // Anything else a later version pinned there.
    remove_files_in(&maps_dir)?;
    for d in [&links_dir, &maps_dir, &pin_dir.to_path_buf()] {
        match std::fs::remove_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove directory", d)(e)),
        }
    }
    Ok(())
}

fn remove_files_in(dir: &Path) -> Result<(), LoadError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("read directory", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err("read directory", dir))?;
        remove_file_if_present(&entry.path())?;
    }
    Ok(())
}

fn remove_file_if_present(path: &Path) -> Result<(), LoadError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove pin", path)(e)),
    }
}

/// The kernel maps behind [`LbMaps`] (plus the affinity map for dumps and
/// flushes).
#[derive(Debug)]
pub struct AyaMaps {
    services: HashMap<MapData, SvcKey, SvcVal>,
    backends: HashMap<MapData, BeKey, BeVal>,
    affinity: HashMap<MapData, AffKey, AffVal>,
}

fn take_map<K: aya::Pod, V: aya::Pod>(
    obj: &mut Ebpf,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, LoadError> {
    let map: Map = obj.take_map(name).ok_or(LoadError::MissingMap(name))?;
    HashMap::try_from(map).map_err(|e| LoadError::Map {
        name,
        source: Box::new(e),
    })
}

fn kernel_err(op: &'static str, object: String) -> impl FnOnce(MapError) -> MapsError {
    move |e| MapsError::Kernel {
        op,
        object,
        source: Box::new(e),
    }
}

fn is_not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

impl AyaMaps {
    fn take(obj: &mut Ebpf) -> Result<AyaMaps, LoadError> {
        Ok(AyaMaps {
            services: take_map(obj, MAP_SERVICES)?,
            backends: take_map(obj, MAP_BACKENDS)?,
            affinity: take_map(obj, MAP_AFFINITY)?,
        })
    }

    /// Opens the pinned maps of `pin_dir` alone (tools, dumps).
    pub fn open_pinned(pin_dir: &Path) -> Result<AyaMaps, LoadError> {
        fn open<K: aya::Pod, V: aya::Pod>(
            dir: &Path,
            name: &'static str,
        ) -> Result<HashMap<MapData, K, V>, LoadError> {
            let err = |e: MapError| LoadError::Map {
                name,
                source: Box::new(e),
            };
            let data = MapData::from_pin(dir.join("maps").join(name)).map_err(err)?;
            HashMap::try_from(Map::from_map_data(data).map_err(err)?).map_err(err)
        }
        Ok(AyaMaps {
            services: open(pin_dir, MAP_SERVICES)?,
            backends: open(pin_dir, MAP_BACKENDS)?,
            affinity: open(pin_dir, MAP_AFFINITY)?,
        })
    }

    /// Affinity entries: (client key, service id, backend).
    pub fn affinity(&self) -> Result<Vec<(AffKey, Backend)>, MapsError> {
        let mut out = Vec::new();
        for item in self.affinity.iter() {
            let (k, v) = item.map_err(kernel_err("read", MAP_AFFINITY.to_string()))?;
            out.push((k, v.backend()));
        }
        Ok(out)
    }

    /// Forgets every affinity entry of service `id` (its backends changed
    /// wholesale, or it was removed and the id may be reused).
    pub fn flush_affinity(&mut self, id: u32) -> Result<usize, MapsError> {
        let keys: Vec<AffKey> = self
            .affinity
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.id == id)
            .collect();
        for k in &keys {
            match self.affinity.remove(k) {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(kernel_err("delete", format!("{MAP_AFFINITY} id {id}"))(e)),
            }
        }
        Ok(keys.len())
    }
}

impl LbMaps for AyaMaps {
    fn services(&self) -> Result<Vec<(Frontend, ServiceEntry)>, MapsError> {
        let mut out = Vec::new();
        for item in self.services.iter() {
            let (k, v) = item.map_err(kernel_err("read", MAP_SERVICES.to_string()))?;
            if let Some(fe) = k.to_frontend() {
                out.push((fe, v.to_entry()));
            }
        }
        Ok(out)
    }

    fn set_service(&mut self, fe: &Frontend, entry: &ServiceEntry) -> Result<(), MapsError> {
        self.services
            .insert(SvcKey::from_frontend(fe), SvcVal::from_entry(entry), 0)
            .map_err(kernel_err("update service", fe.to_string()))
    }

    fn delete_service(&mut self, fe: &Frontend) -> Result<(), MapsError> {
        match self.services.remove(&SvcKey::from_frontend(fe)) {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(kernel_err("delete service", fe.to_string())(e)),
        }
    }

    fn backends(&self) -> Result<Vec<(u32, u32, Backend)>, MapsError> {
        let mut out = Vec::new();
        for item in self.backends.iter() {
            let (k, v) = item.map_err(kernel_err("read", MAP_BACKENDS.to_string()))?;
            out.push((k.id, k.slot, v.to_backend()));
        }
        Ok(out)
    }

    fn set_backend(&mut self, id: u32, slot: u32, be: &Backend) -> Result<(), MapsError> {
        self.backends
            .insert(BeKey { id, slot }, BeVal::from_backend(be), 0)
            .map_err(kernel_err(
                "update backend",
                format!("id {id} slot {slot} ({be})"),
            ))
    }

    fn delete_backend(&mut self, id: u32, slot: u32) -> Result<(), MapsError> {
        match self.backends.remove(&BeKey { id, slot }) {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(kernel_err("delete backend", format!("id {id} slot {slot}"))(e)),
        }
    }
}
