//! The operator-login limiter: at most [`FAILURES_PER_WINDOW`] failed
//! attempts per client per [`WINDOW`], decided *before* the password is
//! hashed: an attempt in flight counts against the allowance until it
//! ends, and attempts beyond the allowance wait for one to end ([`Busy`])
//! or, once the failures alone use it up, are refused ([`Refused::Limited`]).
//! So a burst of concurrent wrong passwords costs at most that many hashes,
//! and concurrent right ones just queue. It tracks at most [`MAX_CLIENTS`] clients and evicts the
//! least recently seen one to make room for a new client (it never stops
//! counting new clients).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Failed (or pending) attempts a client may make per window.
pub const FAILURES_PER_WINDOW: u32 = 5;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Clients tracked at most.
pub const MAX_CLIENTS: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Attempts {
    window_start: Instant,
    failures: u32,
    in_flight: u32,
    last_seen: Instant,
}

/// Per-client attempt counts (see the module doc).
#[derive(Debug, Default)]
pub struct Limiter {
    by_client: HashMap<String, Attempts>,
}

/// Why an attempt may not start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Too many failures: retry after this long.
    Limited { retry_after: Duration },
    /// Other attempts of this client are in flight: wait for one to end.
    Busy,
}

pub use Refused::Busy;

impl Limiter {
    /// Reserves an attempt for `client` (call [`Limiter::finish`] with the
    /// result, also when the attempt is abandoned).
    pub fn begin(&mut self, client: &str, now: Instant) -> Result<(), Refused> {
        if !self.by_client.contains_key(client) && self.by_client.len() >= MAX_CLIENTS {
            self.evict(now);
        }
        let a = self.by_client.entry(client.to_owned()).or_insert(Attempts {
            window_start: now,
            failures: 0,
            in_flight: 0,
            last_seen: now,
        });
        a.last_seen = now;
        if now.saturating_duration_since(a.window_start) >= WINDOW {
            a.window_start = now;
            a.failures = 0;
        }
        if a.failures >= FAILURES_PER_WINDOW {
            return Err(Refused::Limited {
                retry_after: WINDOW.saturating_sub(now.saturating_duration_since(a.window_start))
                    + Duration::from_secs(1),
            });
        }
        if a.failures + a.in_flight >= FAILURES_PER_WINDOW {
            return Err(Busy);
        }
        a.in_flight += 1;
        Ok(())
    }

    /// Ends an attempt begun with [`Limiter::begin`]: `ok` clears nothing
    /// (a right password does not wipe earlier failures), a failure counts.
    pub fn finish(&mut self, client: &str, ok: bool) {
        if let Some(a) = self.by_client.get_mut(client) {
            a.in_flight = a.in_flight.saturating_sub(1);
            if !ok {
                a.failures += 1;
            }
        }
    }

    /// Makes room: drops every client whose window is over and who has
    /// nothing in flight; if none, the least recently seen idle one.
    fn evict(&mut self, now: Instant) {
        self.by_client.retain(|_, a| {
            a.in_flight > 0 || now.saturating_duration_since(a.window_start) < WINDOW
        });
        if self.by_client.len() < MAX_CLIENTS {
            return;
        }
        if let Some(oldest) = self
            .by_client
            .iter()
            .filter(|(_, a)| a.in_flight == 0)
            .min_by_key(|(_, a)| a.last_seen)
            .map(|(k, _)| k.clone())
        {
            self.by_client.remove(&oldest);
        }
    }

    pub fn tracked(&self) -> usize {
        self.by_client.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_attempts_count_before_any_hash_finishes() {
        let mut l = Limiter::default();
        let now = Instant::now();
        for _ in 0..FAILURES_PER_WINDOW {
            l.begin("10.0.0.1", now).expect("allowed");
        }
        // 195 more concurrent attempts from the same client: none may
        // hash before one of the first five ends.
        for _ in 0..195 {
            assert_eq!(l.begin("10.0.0.1", now), Err(Busy));
        }
        // The five fail: the rest are refused without hashing.
        for _ in 0..FAILURES_PER_WINDOW {
            l.finish("10.0.0.1", false);
        }
        assert!(matches!(
            l.begin("10.0.0.1", now),
            Err(Refused::Limited { .. })
        ));
        // Another client is not affected.
        l.begin("10.0.0.2", now).expect("allowed");
    }

    #[test]
    fn failures_expire_with_the_window_and_successes_free_the_slot() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        for _ in 0..FAILURES_PER_WINDOW {
            l.begin("c", t0).expect("allowed");
            l.finish("c", false);
        }
        let refused = l.begin("c", t0 + Duration::from_secs(10));
        assert_eq!(
            refused,
            Err(Refused::Limited {
                retry_after: Duration::from_secs(51)
            })
        );
        l.begin("c", t0 + WINDOW).expect("a new window");
        l.finish("c", true);
        l.begin("c", t0 + WINDOW).expect("a success does not count");
    }

    #[test]
    fn new_clients_are_tracked_when_full_by_evicting_the_oldest() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        for i in 0..MAX_CLIENTS {
            let c = format!("c{i}");
            l.begin(&c, t0 + Duration::from_millis(i as u64))
                .expect("allowed");
            l.finish(&c, false);
        }
        assert_eq!(l.tracked(), MAX_CLIENTS);
        // Before: the 4097th client was never counted, so it could fail
        // without limit. Now it is tracked and limited like any other.
        let late = t0 + Duration::from_secs(5);
        for _ in 0..FAILURES_PER_WINDOW {
            l.begin("newcomer", late).expect("allowed");
            l.finish("newcomer", false);
        }
        assert!(l.begin("newcomer", late).is_err());
        assert_eq!(l.tracked(), MAX_CLIENTS);
        // The least recently seen client made room.
        l.begin("c0", late)
            .expect("c0 was evicted, so it starts afresh");
    }
}
