//! The spec's error result: `{"cniVersion","code","msg","details"}` on stdout.

use serde_json::{Value, json};

/// Error codes: 1-99 are the spec's, 100 and up are this plugin's.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const CONTAINER_UNKNOWN: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure (reading stdin).
    pub const IO: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN: u32 = 11;
    /// STATUS: the plugin is not available.
    pub const NOT_AVAILABLE: u32 = 50;
    /// Kernel or filesystem operation failed (netlink, state directory).
    pub const INTERNAL: u32 = 100;
    /// No free address left in the subnet.
    pub const RANGE_EXHAUSTED: u32 = 101;
    /// CHECK found the attachment not as ADD left it.
    pub const CHECK_FAILED: u32 = 102;
}

/// A CNI error result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg} (CNI error {code})")]
pub struct CniError {
    /// Spec or plugin code.
    pub code: u32,
    /// One-line reason.
    pub msg: String,
    /// Longer detail (may be empty).
    pub details: String,
}

impl CniError {
    /// An error with `code` and `msg`.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// An internal (code 100) error.
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(code::INTERNAL, msg)
    }

    /// The JSON printed on stdout.
    pub fn to_json(&self, cni_version: &str) -> Value {
        json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        let e = CniError::new(code::RANGE_EXHAUSTED, "no address");
        assert_eq!(
            e.to_json("1.1.0"),
            json!({"cniVersion":"1.1.0","code":101,"msg":"no address","details":""})
        );
    }
}
