//! Retrying infrastructure calls. A Redis or MongoDB error is never fatal to a worker: the call
//! is repeated with growing pauses until it succeeds or the worker gives up at shutdown.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// First pause after a failure.
const FIRST: Duration = Duration::from_millis(50);
/// Longest pause.
const MAX: Duration = Duration::from_secs(5);

/// Run `f` until it succeeds. Returns `None` only if `give_up` fires first.
pub async fn until_ok<T, E, F, Fut>(what: &str, give_up: &CancellationToken, mut f: F) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut pause = FIRST;
    let mut failures = 0u32;
    loop {
        match f().await {
            Ok(v) => {
                if failures > 0 {
                    tracing::info!(what, failures, "recovered");
                }
                return Some(v);
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(20) {
                    tracing::warn!(what, failures, error = %e, "failed; retrying");
                }
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = give_up.cancelled() => return None,
                }
                pause = (pause * 2).min(MAX);
            }
        }
    }
}
