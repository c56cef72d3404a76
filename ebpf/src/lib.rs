//! Keelson's eBPF Service load balancer: the C programs in `ebpf/`
//! (socket-level cgroup hooks and a TC NodePort program, compiled by
//! build.rs), loaded and pinned with aya.
//!
//! - [`layout`]: byte layout of map keys and values (mirror of `ebpf/lb.h`); pure.
//! - [`maps`]: the [`LbMaps`] seam, its fake, [`LbTable`] (programming logic) and [`dump`]; pure.
//! - [`loader`]: [`EbpfLb`] (load, attach, pin, adopt), [`remove_all`], [`AyaMaps`].
//! - [`probe`]: can this kernel run it, and if not, why.

// `unsafe` only for aya's `Pod` impls in loader.rs (see its SAFETY comment).
#![deny(unsafe_code)]

pub mod layout;
pub mod loader;
pub mod maps;
pub mod probe;

pub use layout::{Backend, Frontend, Proto, ServiceEntry};
pub use loader::{AyaMaps, DEFAULT_PIN_DIR, EbpfLb, LbConfig, LoadError, ensure_bpffs, remove_all};
pub use maps::{FakeMaps, LbMaps, LbService, LbTable, MapsError, SyncStats, dump, dump_maps};
pub use probe::{Unsupported, find_cgroup2, probe};
