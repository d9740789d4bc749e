//! Retrying a step of the CLI that failed transiently (429, 5xx, a dropped connection, a
//! timeout): the controller's backoff (`crate::backoff`) with a bounded number of retries, each
//! announced on stdout, honouring `Retry-After` up to `MAX_RETRY_AFTER`.

use std::future::Future;
use std::time::Duration;

use super::progress::Out;
use crate::error::Error;

/// Longest `Retry-After` waited for; a server asking for more is reported instead.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug)]
pub struct Policy {
    retries: u32,
    base: Duration,
    cap: Duration,
}

impl Policy {
    pub fn new(retries: u32) -> Policy {
        Policy {
            retries,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(30),
        }
    }

    /// The wait before retry number `attempt` after `e`, announced; `None` when `e` is not
    /// worth retrying or the retries are used up. `first_contact`: a service never reached
    /// yet that refuses connections is a wrong URL more often than a restart, so it is not
    /// retried.
    pub fn wait(
        &self,
        out: &Out,
        e: &Error,
        attempt: u32,
        first_contact: bool,
    ) -> Option<Duration> {
        let retryable = match e {
            Error::Transient { .. } => true,
            Error::Unreachable { .. } => !first_contact,
            _ => false,
        };
        if !retryable || attempt > self.retries {
            return None;
        }
        if e.retry_after().is_some_and(|r| r > MAX_RETRY_AFTER) {
            return None;
        }
        let wait = crate::backoff::delay(self.base, self.cap, attempt, e.retry_after());
        out.line(format!(
            "{}; retrying in {:.1}s (retry {attempt} of {})",
            super::cli_wording(&e.to_string()),
            wait.as_secs_f64(),
            self.retries
        ));
        Some(wait)
    }

    /// Runs `f` until it succeeds, fails in a way retrying will not fix, or the retries are
    /// used up (the last error is returned).
    pub async fn run<T, F, Fut>(&self, out: &Out, first_contact: bool, mut f: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let mut attempt = 0;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    attempt += 1;
                    match self.wait(out, &e, attempt, first_contact) {
                        Some(wait) => tokio::time::sleep(wait).await,
                        None => return Err(e),
                    }
                }
            }
        }
    }
}
