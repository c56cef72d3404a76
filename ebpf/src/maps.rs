//! The narrow seam over the BPF maps ([`LbMaps`]), an in-memory fake with
//! fault injection, the programming logic on top ([`LbTable`]: service ids,
//! slot ordering, level-triggered full sync) and the text dump. No I/O here:
//! the aya implementation lives in `loader.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use crate::layout::{
    Backend, F_AFFINITY, F_EXT_LOCAL, F_EXTERNAL, F_NODEPORT, Frontend, MAX_BACKENDS, MAX_SERVICES,
    ServiceEntry,
};

/// Errors of map operations, naming the operation and the object.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("{op} {object}: {source}")]
    Kernel {
        op: &'static str,
        object: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("service {frontend}: {count} backends exceed the limit of 65535")]
    TooManyBackends { frontend: Frontend, count: usize },
    #[error("allocate service id for {0}: all ids in use")]
    IdsExhausted(Frontend),
    #[error("injected fault at {op} {object}")]
    Injected { op: &'static str, object: String },
}

/// One BPF map operation each. Deleting a missing key is success.
pub trait LbMaps {
    fn services(&self) -> Result<Vec<(Frontend, ServiceEntry)>, MapsError>;
    fn set_service(&mut self, fe: &Frontend, entry: &ServiceEntry) -> Result<(), MapsError>;
    fn delete_service(&mut self, fe: &Frontend) -> Result<(), MapsError>;
    /// Every backend slot: (service id, slot, backend).
    fn backends(&self) -> Result<Vec<(u32, u32, Backend)>, MapsError>;
    fn set_backend(&mut self, id: u32, slot: u32, be: &Backend) -> Result<(), MapsError>;
    fn delete_backend(&mut self, id: u32, slot: u32) -> Result<(), MapsError>;
}

/// In-memory [`LbMaps`] for unit tests, with an optional fault after N
/// successful writes (set_*/delete_*).
#[derive(Debug, Default, Clone)]
pub struct FakeMaps {
    pub services: BTreeMap<Frontend, ServiceEntry>,
    pub backends: BTreeMap<(u32, u32), Backend>,
    /// Writes performed so far.
    pub writes: usize,
    /// Fail every write once `writes` reaches this number.
    pub fail_at_write: Option<usize>,
}

impl FakeMaps {
    fn write(&mut self, op: &'static str, object: String) -> Result<(), MapsError> {
        if self.fail_at_write.is_some_and(|n| self.writes >= n) {
            return Err(MapsError::Injected { op, object });
        }
        self.writes += 1;
        Ok(())
    }
}

impl LbMaps for FakeMaps {
    fn services(&self) -> Result<Vec<(Frontend, ServiceEntry)>, MapsError> {
        Ok(self.services.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn set_service(&mut self, fe: &Frontend, entry: &ServiceEntry) -> Result<(), MapsError> {
        self.write("set service", fe.to_string())?;
        self.services.insert(*fe, *entry);
        Ok(())
    }

    fn delete_service(&mut self, fe: &Frontend) -> Result<(), MapsError> {
        self.write("delete service", fe.to_string())?;
        self.services.remove(fe);
        Ok(())
    }

    fn backends(&self) -> Result<Vec<(u32, u32, Backend)>, MapsError> {
        Ok(self
            .backends
            .iter()
            .map(|((i, s), b)| (*i, *s, *b))
            .collect())
    }

    fn set_backend(&mut self, id: u32, slot: u32, be: &Backend) -> Result<(), MapsError> {
        self.write("set backend", format!("{id}/{slot}"))?;
        self.backends.insert((id, slot), *be);
        Ok(())
    }

    fn delete_backend(&mut self, id: u32, slot: u32) -> Result<(), MapsError> {
        self.write("delete backend", format!("{id}/{slot}"))?;
        self.backends.remove(&(id, slot));
        Ok(())
    }
}

/// The desired state of one frontend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LbService {
    pub frontend: Frontend,
    /// `F_*` bits; [`F_AFFINITY`] is derived from `affinity_timeout`.
    pub flags: u16,
    /// sessionAffinity: ClientIP timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// Backends in slot order; empty: the frontend rejects.
    pub backends: Vec<Backend>,
}

impl LbService {
    fn entry(&self, id: u32) -> Result<ServiceEntry, MapsError> {
        let count = u16::try_from(self.backends.len()).map_err(|_| MapsError::TooManyBackends {
            frontend: self.frontend,
            count: self.backends.len(),
        })?;
        let mut flags = self.flags & !F_AFFINITY;
        if self.affinity_timeout.is_some() {
            flags |= F_AFFINITY;
        }
        Ok(ServiceEntry {
            id,
            count,
            flags,
            affinity_timeout: self.affinity_timeout.unwrap_or(0),
        })
    }
}

/// What a sync wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub services_written: usize,
    pub services_deleted: usize,
    pub backends_written: usize,
    pub backends_deleted: usize,
}

/// Programs [`LbService`]s into an [`LbMaps`]: allocates service ids, keeps
/// a shadow of what is programmed so that a change writes only what
/// differs, and orders writes so that a concurrent lookup never sees a
/// count larger than the slots present (slots are written before the count
/// grows, deleted after it shrinks).
#[derive(Debug)]
pub struct LbTable<M: LbMaps> {
    maps: M,
    /// Programmed entries by frontend.
    services: HashMap<Frontend, ServiceEntry>,
    /// Programmed slots by service id.
    slots: HashMap<u32, Vec<Backend>>,
    used_ids: BTreeSet<u32>,
    next_id: u32,
}

impl<M: LbMaps> LbTable<M> {
    /// A table that knows nothing yet: call [`LbTable::full_sync`] first.
    pub fn new(maps: M) -> LbTable<M> {
        LbTable {
            maps,
            services: HashMap::new(),
            slots: HashMap::new(),
            used_ids: BTreeSet::new(),
            next_id: 1,
        }
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    pub fn into_maps(self) -> M {
        self.maps
    }

    /// Programmed frontends.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    fn alloc_id(&mut self, fe: &Frontend) -> Result<u32, MapsError> {
        let limit = u32::try_from(MAX_BACKENDS).unwrap_or(u32::MAX);
        for _ in 0..=limit {
            let id = self.next_id;
            self.next_id = if self.next_id >= limit {
                1
            } else {
                self.next_id + 1
            };
            if self.used_ids.insert(id) {
                return Ok(id);
            }
        }
        Err(MapsError::IdsExhausted(*fe))
    }

    /// Reads what the maps hold (another process may have written them:
    /// the agent before a restart), keeps the ids of frontends still
    /// wanted, writes what differs and deletes everything else.
    pub fn full_sync(&mut self, desired: &[LbService]) -> Result<SyncStats, MapsError> {
        let mut stats = SyncStats::default();
        let existing = self.maps.services()?;
        let mut slots: HashMap<u32, Vec<Option<Backend>>> = HashMap::new();
        for (id, slot, be) in self.maps.backends()? {
            let v = slots.entry(id).or_default();
            let slot = slot as usize;
            if v.len() <= slot {
                v.resize(slot + 1, None);
            }
            v[slot] = Some(be);
        }
        self.services.clear();
        self.slots.clear();
        self.used_ids.clear();
        let wanted: BTreeSet<Frontend> = desired.iter().map(|s| s.frontend).collect();
        // Adopt entries still wanted, with their slots as they are.
        let mut stale_services = Vec::new();
        for (fe, entry) in existing {
            if wanted.contains(&fe) && !self.used_ids.contains(&entry.id) {
                self.used_ids.insert(entry.id);
                let present = slots.get(&entry.id).cloned().unwrap_or_default();
                // Slots up to the first hole are known; the rest are
                // rewritten below.
                let known: Vec<Backend> = present.iter().map_while(|b| *b).collect();
                self.slots.insert(entry.id, known);
                self.services.insert(fe, entry);
            } else {
                stale_services.push(fe);
            }
        }
        for fe in &stale_services {
            self.maps.delete_service(fe)?;
            stats.services_deleted += 1;
        }
        // Slots of ids no adopted service uses, and slots past a hole.
        for (id, present) in &slots {
            let keep = if self.used_ids.contains(id) {
                self.slots.get(id).map_or(0, Vec::len)
            } else {
                0
            };
            for (slot, be) in present.iter().enumerate().skip(keep) {
                if be.is_some() {
                    self.maps.delete_backend(*id, slot as u32)?;
                    stats.backends_deleted += 1;
                }
            }
        }
        let mut sorted: Vec<&LbService> = desired.iter().collect();
        sorted.sort_by_key(|s| s.frontend);
        for svc in sorted {
            let s = self.upsert(svc)?;
            stats.services_written += s.services_written;
            stats.backends_written += s.backends_written;
            stats.backends_deleted += s.backends_deleted;
        }
        Ok(stats)
    }

    /// Programs one frontend, writing only what differs from what is
    /// programmed.
    pub fn upsert(&mut self, svc: &LbService) -> Result<SyncStats, MapsError> {
        let mut stats = SyncStats::default();
        let old = self.services.get(&svc.frontend).copied();
        if old.is_none() && self.services.len() >= MAX_SERVICES {
            return Err(MapsError::IdsExhausted(svc.frontend));
        }
        let id = match old {
            Some(e) => e.id,
            None => self.alloc_id(&svc.frontend)?,
        };
        let entry = svc.entry(id)?;
        let programmed = self.slots.entry(id).or_default();
        // 1. Slots (the count in the kernel still covers only the old ones
        // that stay valid, or the new ones are not yet counted).
        for (slot, be) in svc.backends.iter().enumerate() {
            if programmed.get(slot) != Some(be) {
                self.maps.set_backend(id, slot as u32, be)?;
                stats.backends_written += 1;
                if slot < programmed.len() {
                    programmed[slot] = *be;
                } else {
                    programmed.push(*be);
                }
            }
        }
        // 2. The entry.
        if old != Some(entry) {
            self.maps.set_service(&svc.frontend, &entry)?;
            self.services.insert(svc.frontend, entry);
            stats.services_written += 1;
        }
        // 3. Slots past the new count.
        while programmed.len() > svc.backends.len() {
            let slot = programmed.len() - 1;
            self.maps.delete_backend(id, slot as u32)?;
            programmed.pop();
            stats.backends_deleted += 1;
        }
        Ok(stats)
    }

    /// Removes one frontend (success when it is not programmed).
    pub fn remove(&mut self, fe: &Frontend) -> Result<SyncStats, MapsError> {
        let mut stats = SyncStats::default();
        let Some(entry) = self.services.get(fe).copied() else {
            return Ok(stats);
        };
        self.maps.delete_service(fe)?;
        self.services.remove(fe);
        stats.services_deleted += 1;
        if let Some(programmed) = self.slots.get_mut(&entry.id) {
            while let Some(slot) = programmed.len().checked_sub(1) {
                self.maps.delete_backend(entry.id, slot as u32)?;
                programmed.pop();
                stats.backends_deleted += 1;
            }
        }
        self.slots.remove(&entry.id);
        self.used_ids.remove(&entry.id);
        Ok(stats)
    }

    /// True when the maps no longer hold what this table programmed.
    pub fn drifted(&self) -> Result<bool, MapsError> {
        let services: HashMap<Frontend, ServiceEntry> = self.maps.services()?.into_iter().collect();
        if services != self.services {
            return Ok(true);
        }
        let mut slots: HashMap<u32, BTreeMap<u32, Backend>> = HashMap::new();
        let mut n = 0;
        for (id, slot, be) in self.maps.backends()? {
            slots.entry(id).or_default().insert(slot, be);
            n += 1;
        }
        let expected: usize = self.slots.values().map(Vec::len).sum();
        if n != expected {
            return Ok(true);
        }
        for (id, programmed) in &self.slots {
            let Some(have) = slots.get(id) else {
                if programmed.is_empty() {
                    continue;
                }
                return Ok(true);
            };
            if have.values().ne(programmed.iter()) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

fn flag_names(flags: u16) -> String {
    let mut out = Vec::new();
    for (bit, name) in [
        (F_NODEPORT, "nodeport"),
        (F_EXTERNAL, "external"),
        (F_EXT_LOCAL, "ext-local"),
        (F_AFFINITY, "affinity"),
    ] {
        if flags & bit != 0 {
            out.push(name);
        }
    }
    if out.is_empty() {
        "-".to_string()
    } else {
        out.join(",")
    }
}

/// Renders map contents as stable text (sorted by frontend; service ids are
/// left out, as they depend on the order of past changes). Backend slots no
/// service refers to are listed last as orphans.
pub fn dump(services: &[(Frontend, ServiceEntry)], backends: &[(u32, u32, Backend)]) -> String {
    let mut by_id: BTreeMap<u32, BTreeMap<u32, Backend>> = BTreeMap::new();
    for (id, slot, be) in backends {
        by_id.entry(*id).or_default().insert(*slot, *be);
    }
    let mut sorted: Vec<&(Frontend, ServiceEntry)> = services.iter().collect();
    sorted.sort_by_key(|(fe, _)| *fe);
    let mut out = String::new();
    for (fe, e) in sorted {
        let _ = write!(out, "{fe} flags={} count={}", flag_names(e.flags), e.count);
        if e.flags & F_AFFINITY != 0 {
            let _ = write!(out, " affinity={}s", e.affinity_timeout);
        }
        out.push('\n');
        if e.count == 0 {
            out.push_str("  reject\n");
        }
        let slots = by_id.remove(&e.id).unwrap_or_default();
        for slot in 0..u32::from(e.count) {
            match slots.get(&slot) {
                Some(be) => {
                    let _ = writeln!(out, "  [{slot}] {be}");
                }
                None => {
                    let _ = writeln!(out, "  [{slot}] MISSING");
                }
            }
        }
        for (slot, be) in slots.range(u32::from(e.count)..) {
            let _ = writeln!(out, "  [{slot}] {be} (past count)");
        }
    }
    for (id, slots) in by_id {
        for (slot, be) in slots {
            let _ = writeln!(out, "orphan id={id} [{slot}] {be}");
        }
    }
    out
}

/// [`dump`] of what `maps` holds.
pub fn dump_maps(maps: &impl LbMaps) -> Result<String, MapsError> {
    Ok(dump(&maps.services()?, &maps.backends()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Proto;
    use std::net::Ipv4Addr;

    fn fe(last: u8, port: u16) -> Frontend {
        Frontend {
            proto: Proto::Tcp,
            addr: Ipv4Addr::new(10, 96, 0, last),
            port,
        }
    }

    fn be(last: u8) -> Backend {
        Backend {
            addr: Ipv4Addr::new(10, 244, 0, last),
            port: 8080,
        }
    }

    fn svc(last: u8, backends: &[u8]) -> LbService {
        LbService {
            frontend: fe(last, 80),
            flags: 0,
            affinity_timeout: None,
            backends: backends.iter().map(|b| be(*b)).collect(),
        }
    }

    #[test]
    fn full_sync_renders_and_is_idempotent() {
        let mut t = LbTable::new(FakeMaps::default());
        let mut aff = svc(2, &[5]);
        aff.affinity_timeout = Some(10800);
        let desired = vec![svc(1, &[1, 2]), aff, svc(3, &[])];
        let s = t.full_sync(&desired).unwrap();
        assert_eq!(s.services_written, 3);
        assert_eq!(s.backends_written, 3);
        let text = dump_maps(t.maps()).unwrap();
        assert_eq!(
            text,
            "tcp 10.96.0.1:80 flags=- count=2\n  [0] 10.244.0.1:8080\n  [1] 10.244.0.2:8080\n\
             tcp 10.96.0.2:80 flags=affinity count=1 affinity=10800s\n  [0] 10.244.0.5:8080\n\
             tcp 10.96.0.3:80 flags=- count=0\n  reject\n"
        );
        let writes = t.maps().writes;
        assert_eq!(t.full_sync(&desired).unwrap(), SyncStats::default());
        assert_eq!(t.maps().writes, writes);
        assert!(!t.drifted().unwrap());
    }

    #[test]
    fn restart_adopts_ids_and_removes_stale() {
        let mut t = LbTable::new(FakeMaps::default());
        t.full_sync(&[svc(1, &[1, 2]), svc(2, &[3])]).unwrap();
        let ids: Vec<u32> = t.maps().services.values().map(|e| e.id).collect();
        // A new process: fresh table over the same maps.
        let mut maps = t.into_maps();
        maps.backends.insert((999, 0), be(9)); // orphan left by a crash
        let mut t2 = LbTable::new(maps);
        let s = t2.full_sync(&[svc(1, &[1, 2])]).unwrap();
        assert_eq!(s.services_written, 0);
        assert_eq!(s.backends_written, 0);
        assert_eq!(s.services_deleted, 1);
        assert_eq!(s.backends_deleted, 2);
        assert_eq!(t2.maps().services[&fe(1, 80)].id, ids[0]);
        assert_eq!(t2.maps().backends.len(), 2);
    }

    #[test]
    fn shrinking_writes_count_before_deleting_slots() {
        let mut t = LbTable::new(FakeMaps::default());
        t.full_sync(&[svc(1, &[1, 2, 3])]).unwrap();
        let s = t.upsert(&svc(1, &[1, 3])).unwrap();
        // slot 1 rewritten to .3, count 3 -> 2, slot 2 deleted.
        assert_eq!(s.backends_written, 1);
        assert_eq!(s.services_written, 1);
        assert_eq!(s.backends_deleted, 1);
        let m = t.maps();
        assert_eq!(m.services[&fe(1, 80)].count, 2);
        assert_eq!(
            m.backends.values().copied().collect::<Vec<_>>(),
            vec![be(1), be(3)]
        );
    }

    #[test]
    fn growing_writes_slots_before_count() {
        let mut t = LbTable::new(FakeMaps::default());
        t.full_sync(&[svc(1, &[1])]).unwrap();
        // Fail on the service write: the new slot is written, count still 1.
        t.maps_mut().fail_at_write = Some(t.maps().writes + 1);
        assert!(t.upsert(&svc(1, &[1, 2])).is_err());
        assert_eq!(t.maps().services[&fe(1, 80)].count, 1);
        assert_eq!(t.maps().backends.len(), 2);
        // The next attempt converges.
        t.maps_mut().fail_at_write = None;
        t.upsert(&svc(1, &[1, 2])).unwrap();
        assert_eq!(t.maps().services[&fe(1, 80)].count, 2);
        assert!(!t.drifted().unwrap());
    }

    #[test]
    fn remove_is_idempotent_and_frees_the_id() {
        let mut t = LbTable::new(FakeMaps::default());
        t.full_sync(&[svc(1, &[1, 2])]).unwrap();
        let s = t.remove(&fe(1, 80)).unwrap();
        assert_eq!((s.services_deleted, s.backends_deleted), (1, 2));
        assert_eq!(t.remove(&fe(1, 80)).unwrap(), SyncStats::default());
        assert!(t.maps().services.is_empty() && t.maps().backends.is_empty());
        assert!(t.is_empty());
    }

    #[test]
    fn drift_is_detected() {
        let mut t = LbTable::new(FakeMaps::default());
        t.full_sync(&[svc(1, &[1, 2])]).unwrap();
        t.maps_mut().backends.clear();
        assert!(t.drifted().unwrap());
    }

    #[test]
    fn too_many_backends_is_an_error() {
        let mut t = LbTable::new(FakeMaps::default());
        let mut s = svc(1, &[]);
        s.backends = vec![be(1); 70_000];
        let err = t.upsert(&s).unwrap_err().to_string();
        assert!(err.contains("70000 backends"), "{err}");
    }

    #[test]
    fn dump_shows_orphans_and_missing_slots() {
        let services = vec![(
            fe(1, 80),
            ServiceEntry {
                id: 4,
                count: 2,
                flags: F_NODEPORT,
                affinity_timeout: 0,
            },
        )];
        let backends = vec![(4, 0, be(1)), (5, 0, be(2))];
        assert_eq!(
            dump(&services, &backends),
            "tcp 10.96.0.1:80 flags=nodeport count=2\n  [0] 10.244.0.1:8080\n  [1] MISSING\n\
             orphan id=5 [0] 10.244.0.2:8080\n"
        );
    }
}
