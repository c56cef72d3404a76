//! systemd's notify protocol: `READY=1` once serving, `WATCHDOG=1` pings at
//! half the unit's `WatchdogSec`, `STOPPING=1` on the way out. Without
//! `$NOTIFY_SOCKET` (not started by systemd) every call does nothing.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Sends one notify message (`READY=1`, `STOPPING=1`, ...). Returns whether
/// it was sent; errors are logged, not fatal: the service works without.
pub fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|addr| {
        let sock = UnixDatagram::unbound()?;
        sock.send_to_addr(state.as_bytes(), &addr)
    });
    match sent {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!("systemd notify {state:?} to {path}: {e}");
            false
        }
    }
}

/// The watchdog interval systemd asked for (`$WATCHDOG_USEC`, for this PID).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        && pid != std::process::id()
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Tells systemd the service is up and, if it asked for one, keeps its
/// watchdog fed from a tokio task for as long as the runtime lives.
pub fn ready() {
    notify("READY=1");
    if let Some(interval) = watchdog_interval() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval / 2);
            loop {
                tick.tick().await;
                notify("WATCHDOG=1");
            }
        });
    }
}

/// Tells systemd the service is stopping.
pub fn stopping() {
    notify("STOPPING=1");
}
