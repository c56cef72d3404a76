//! The Kubernetes API: resource types, REST semantics, patches, selectors,
//! defaulting, validation and Service allocation. No HTTP here.

pub mod alloc;
pub mod body;
pub mod convert;
pub mod crd;
pub mod custom;
pub mod defaults;
pub mod errors;
pub mod patch;
pub mod patch_meta;
pub mod protobuf;
pub mod registry;
pub mod resources;
pub mod schema;
pub mod selectors;
pub mod serviceaccount;
pub mod table;
pub mod validation;
