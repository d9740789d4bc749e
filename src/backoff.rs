//! The retry delay shared by the controller (between passes of an object) and the CLI (between
//! attempts of a step): exponential from `base`, capped, with ±20 % jitter so that many clients
//! do not retry in step, and never shorter than the server's `Retry-After`.

use std::time::Duration;

/// The wait before retry number `attempt` (1 = the first retry).
pub fn delay(
    base: Duration,
    cap: Duration,
    attempt: u32,
    retry_after: Option<Duration>,
) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let jitter = rand::random_range(0.8..1.2);
    let at_least = retry_after.unwrap_or_default();
    exp.min(cap)
        .mul_f64(jitter)
        .max(at_least)
        .min(cap.max(at_least))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_is_capped_and_honours_retry_after() {
        let s = Duration::from_secs;
        let d1 = delay(s(1), s(300), 1, None);
        assert!(d1 >= Duration::from_millis(800) && d1 <= Duration::from_millis(1200));
        let d4 = delay(s(1), s(300), 4, None);
        assert!(d4 >= Duration::from_millis(6400) && d4 <= Duration::from_millis(9600));
        assert!(delay(s(1), s(10), 30, None) <= s(10));
        assert!(delay(s(1), s(10), 1, Some(s(7))) >= s(7));
        // Retry-After beyond the cap wins: the server knows when it is back.
        assert_eq!(delay(s(1), s(10), 1, Some(s(60))), s(60));
    }
}
