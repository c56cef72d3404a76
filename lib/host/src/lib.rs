//! Host plumbing shared by the node agent, the CNI plugin, the Service proxy
//! and the control plane: one implementation of each.
//!
//! - [`tools`]: every external program Keelson runs, the Debian package that
//!   provides it, and one lookup that fails with that package's name.
//! - [`netlink`]: netlink framing (messages, attributes, acks) and a
//!   synchronous socket; [`rtnetlink`] builds links, addresses and routes on
//!   it, the Service proxy its nf_tables batches.
//! - [`netns`]: entering a network namespace, on a short-lived thread.
//! - [`fs`]: one atomic, fsync'd file write.
//! - [`cgroup`]: which cgroup layout the machine has.
//! - `serve` (cargo feature `serve`): the one TLS serving loop (rustls,
//!   HTTP/1.1 and HTTP/2, limits on slow and greedy clients) of the API
//!   server and the node API. Off by default, so that the CNI plugin pulls no async runtime.
//! - [`mounts`]: tmpfs mounts and unmounting what is left under a directory.
//!
//! `unsafe` is denied (workspace lint); nothing here needs it.

#![forbid(unsafe_code)]

#[cfg(feature = "serve")]
pub mod certfile;
pub mod cgroup;
pub mod fs;
pub mod mounts;
pub mod netlink;
pub mod netns;
pub mod rtnetlink;
#[cfg(feature = "serve")]
pub mod serve;
pub mod tools;
