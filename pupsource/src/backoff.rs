//! Waiting between attempts: one doubling backoff for every retry loop, and the retry of
//! operations that failed for a passing reason.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::Result;

/// A wait that doubles after every use, up to a cap.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Waits of `first`, then twice as long each time, at most `max`.
    pub(crate) const fn new(first: Duration, max: Duration) -> Self {
        Backoff { next: first, max }
    }

    /// Waiting after a lost connection: 100 ms doubling up to 5 s.
    pub(crate) const fn reconnect() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// The next wait; the one after is twice as long.
    pub(crate) fn next(&mut self) -> Duration {
        let wait = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        wait
    }
}

/// Sleeps `wait`; returns false if cancelled first.
pub(crate) async fn sleep_or_cancel(cancel: &CancellationToken, wait: Duration) -> bool {
    tokio::select! {
        () = cancel.cancelled() => false,
        () = tokio::time::sleep(wait) => true,
    }
}

/// Runs `op` until it succeeds, retrying transient failures (a lost connection, a locked
/// database) with backoff; `None` if cancelled first. Any other error is returned.
pub(crate) async fn retry_transient<T, F, Fut>(
    cancel: &CancellationToken,
    what: &str,
    mut op: F,
) -> Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut backoff = Backoff::reconnect();
    loop {
        match op().await {
            Ok(value) => return Ok(Some(value)),
            Err(err) if err.is_transient() => {
                let wait = backoff.next();
                tracing::warn!(target: "pupsource::runner", error = %err, retry_in = ?wait, "cannot {what}; retrying");
                if !sleep_or_cancel(cancel, wait).await {
                    return Ok(None);
                }
            }
            Err(err) => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let waits: Vec<u128> = (0..5).map(|_| backoff.next().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
    }
}
