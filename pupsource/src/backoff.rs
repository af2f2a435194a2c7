//! Waiting between attempts: one doubling backoff for every retry loop, and the retry of
//! operations that failed for a passing reason.

use std::future::Future;
use std::time::{Duration, Instant};

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

    /// The longest wait.
    pub(crate) fn max(&self) -> Duration {
        self.max
    }

    /// The next wait; the one after is twice as long.
    pub(crate) fn next(&mut self) -> Duration {
        let wait = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        wait
    }
}

/// An outage as the logs tell it: its first failure and its end are logged once each (at
/// `WARN`, with the cause and the retry schedule, then how long it lasted), the failures
/// between only at debug level. Each retry loop keeps one and logs with its own fields.
#[derive(Debug)]
pub(crate) struct Outage {
    /// Since when, and how many failures in a row.
    failing: Option<(Instant, u32)>,
    /// From which failure in a row on it is an outage.
    from: u32,
}

impl Default for Outage {
    /// Every failure is an outage.
    fn default() -> Self {
        Outage::from_failure(1)
    }
}

impl Outage {
    /// An outage from the `from`th failure in a row on: fewer are a passing fault (say, a
    /// pooled connection found cut and replaced), not logged as an outage.
    pub(crate) fn from_failure(from: u32) -> Self {
        Outage { failing: None, from: from.max(1) }
    }

    /// Counts a failure; `true` if the outage starts with it.
    pub(crate) fn failed(&mut self) -> bool {
        let (_, failures) = self.failing.get_or_insert((Instant::now(), 0));
        *failures += 1;
        *failures == self.from
    }

    /// Ends the failures in a row: how long the outage lasted and how many failures it saw,
    /// if they made one.
    pub(crate) fn ended(&mut self) -> Option<(Duration, u32)> {
        let (since, failures) = self.failing.take()?;
        (failures >= self.from).then(|| (since.elapsed(), failures))
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
///
/// An outage is logged once, with its cause and the retry schedule, and once again when `op`
/// succeeds; the attempts in between only at debug level.
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
    let mut outage = Outage::default();
    loop {
        match op().await {
            Ok(value) => {
                if let Some((down_for, failures)) = outage.ended() {
                    // At the outage's level, so that whoever saw it sees its end.
                    tracing::warn!(target: "pupsource::runner", failures, ?down_for, "the database is back: could {what} again");
                }
                return Ok(Some(value));
            }
            Err(err) if err.is_transient() => {
                let wait = backoff.next();
                if outage.failed() {
                    let max = backoff.max();
                    tracing::warn!(target: "pupsource::runner", error = %err, "cannot {what}; retrying in {wait:?}, then doubling up to every {max:?}, until the database answers");
                } else {
                    tracing::debug!(target: "pupsource::runner", error = %err, retry_in = ?wait, "still cannot {what}");
                }
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
    fn an_outage_is_logged_once_with_its_schedule_and_once_when_it_ends() {
        use std::sync::{Arc, Mutex};

        /// The log lines, shared with the test.
        #[derive(Clone, Default)]
        struct Logs(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Logs {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("logs").extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }

        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_max_level(tracing::Level::INFO)
            .without_time()
            .finish();
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
        let mut failures = 3;
        let result = tracing::subscriber::with_default(subscriber, || {
            runtime.block_on(retry_transient(&CancellationToken::new(), "read the log", || {
                failures -= 1;
                let outcome = match failures {
                    0 => Ok(42),
                    _ => Err(crate::Error::Connection(sqlx::Error::PoolTimedOut)),
                };
                async move { outcome }
            }))
        });
        assert_eq!(result.expect("no permanent error"), Some(42));
        let logs = String::from_utf8(logs.0.lock().expect("logs").clone()).expect("UTF-8");
        // The outage's length varies: compare up to it.
        let lines: Vec<&str> = logs
            .lines()
            .map(|line| line.split_once("down_for=").map_or(line, |(l, _)| l))
            .collect();
        assert_eq!(
            lines,
            [
                " WARN pupsource::runner: cannot read the log; retrying in 100ms, then doubling up \
                 to every 5s, until the database answers error=database unavailable: pool timed \
                 out while waiting for an open connection",
                " WARN pupsource::runner: the database is back: could read the log again \
                 failures=2 ",
            ]
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let waits: Vec<u128> = (0..5).map(|_| backoff.next().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
    }
}
