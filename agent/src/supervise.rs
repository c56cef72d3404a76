//! Restarts a part of the agent that stops (the Service proxy, cluster DNS)
//! with back-off, and keeps its [`health`](crate::health) state current
//! while it is down: one restart loop for every part.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::health::{NodeHealth, Part, State};

/// First delay before a restart.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest delay before a restart.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A run that lasted this long starts the back-off over.
pub const BACKOFF_RESET: Duration = Duration::from_secs(120);

/// The delay before restart `n` (0-based) of a part that keeps failing:
/// 1 s, 2 s, 4 s, ... up to [`BACKOFF_MAX`].
pub fn backoff(n: u32) -> Duration {
    BACKOFF_MIN
        .saturating_mul(1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX))
        .min(BACKOFF_MAX)
}

/// Runs `start()` for ever: when its future ends (an error, or returning at
/// all), `part` is `Failed` with `reason` and the error, and it is started
/// again after [`backoff`]. Before each start `part` is `Starting`; the run
/// itself reports `Ready` (and failures it survives) through `health`.
pub async fn supervise<F, Fut>(
    health: NodeHealth,
    part: Part,
    reason: &'static str,
    mut start: F,
) -> std::convert::Infallible
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut failures: u32 = 0;
    loop {
        health.set(part, State::Starting);
        let began = Instant::now();
        let message = match start().await {
            Ok(()) => "stopped".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if began.elapsed() >= BACKOFF_RESET {
            failures = 0;
        }
        let delay = backoff(failures);
        failures = failures.saturating_add(1);
        tracing::error!(part = part.name(), "{message} (restarting in {delay:?})");
        health.set(
            part,
            State::Failed {
                reason: reason.into(),
                message,
            },
        );
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(32));
        assert_eq!(backoff(6), BACKOFF_MAX);
        assert_eq!(backoff(1000), BACKOFF_MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn restarts_with_backoff_and_shows_the_failure_meanwhile() {
        let health = NodeHealth::default();
        let starts: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let t0 = Instant::now();
        let s = starts.clone();
        let h = health.clone();
        let task = tokio::spawn(async move {
            supervise(
                h.clone(),
                Part::ServiceProxy,
                "ServiceProxyFailed",
                move || {
                    let s = s.clone();
                    let h = h.clone();
                    async move {
                        let n = {
                            let mut v = s.lock().unwrap();
                            v.push(Instant::now());
                            v.len()
                        };
                        if n < 4 {
                            anyhow::bail!("nft not found (attempt {n})");
                        }
                        h.set(Part::ServiceProxy, State::Ready);
                        std::future::pending::<anyhow::Result<()>>().await
                    }
                },
            )
            .await
        });
        let mut rx = health.subscribe();
        // Failed after the first attempt, with its error.
        rx.wait_for(|s| matches!(s.get(&Part::ServiceProxy), Some(State::Failed { .. })))
            .await
            .unwrap();
        match health.snapshot().get(&Part::ServiceProxy) {
            Some(State::Failed { reason, message }) => {
                assert_eq!(reason, "ServiceProxyFailed");
                assert_eq!(message, "nft not found (attempt 1)");
            }
            other => panic!("{other:?}"),
        }
        rx.wait_for(|s| s.get(&Part::ServiceProxy) == Some(&State::Ready))
            .await
            .unwrap();
        let at: Vec<Duration> = starts.lock().unwrap().iter().map(|t| *t - t0).collect();
        // Started at once, then after 1 s, 2 s and 4 s.
        assert_eq!(
            at,
            [0, 1, 3, 7].map(Duration::from_secs).to_vec(),
            "start times"
        );
        task.abort();
    }
}
