//! The seam between the sync loop and a dataplane. The nftables backend
//! implements it now; the eBPF backend will implement the same trait.

use crate::model::DesiredState;
use crate::plan::Changes;

/// Errors of any backend, naming the operation.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Nft(#[from] crate::nft::NftError),
    #[error(transparent)]
    Ebpf(#[from] crate::ebpf::EbpfError),
    #[error("incremental sync before a full sync")]
    NotSynced,
}

/// A dataplane that programs a [`DesiredState`]. Calls block (they run
/// processes or syscalls): the sync loop calls them from a blocking thread.
pub trait ProxyBackend: Send {
    /// Short name for logs and metrics ("nftables").
    fn name(&self) -> &'static str;
    /// Replaces everything this backend programmed with `desired`, atomically.
    fn full_sync(&mut self, desired: &DesiredState) -> Result<(), BackendError>;
    /// Applies `changes` (planned from the last programmed state to
    /// `desired`), touching only the changed Service ports.
    fn apply(&mut self, changes: &Changes, desired: &DesiredState) -> Result<(), BackendError>;
    /// True when the kernel state no longer matches what was programmed
    /// (someone flushed or replaced it): the next sync must be a full one.
    fn drifted(&mut self) -> Result<bool, BackendError>;
    /// Removes all state this backend ever programmed (idempotent).
    fn cleanup(&mut self) -> Result<(), BackendError>;
}
