//! Circuit breakers, one per provider: a provider that fails every call
//! (5xx, timeouts, connect errors) is skipped for a while, then probed by
//! one request, and trusted again when the probe answers. Bounded by the
//! number of providers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// When a circuit opens and for how long.
#[derive(Debug, Clone, Copy)]
pub struct CircuitPolicy {
    /// Consecutive failures that open it (0: never).
    pub failures: u32,
    /// How long it stays open before a probe.
    pub open_for: Duration,
    /// How long a probe may take before another request may probe instead.
    pub probe_for: Duration,
}

/// What a provider's circuit says about a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    /// Requests go through.
    Closed,
    /// This request is the one that probes a provider that was failing.
    Probe,
    /// Skip the provider until then.
    Open {
        /// When a probe may go.
        until: Instant,
    },
}

/// What an attempt's result did to a circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitChange {
    /// It opened (or opened again after a failed probe).
    Opened,
    /// A probe answered: it closed.
    Closed,
}

#[derive(Debug, Clone, Copy)]
enum Breaker {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe is out until `until`.
    Probing {
        until: Instant,
    },
}

/// Every provider's breaker.
#[derive(Default)]
pub struct Circuits {
    breakers: Mutex<HashMap<Arc<str>, Breaker>>,
    /// Breakers that are not closed with no failures: while none is, a
    /// request's check and a success's record take no lock (the common
    /// case, paid by every attempt).
    troubled: AtomicUsize,
}

impl Breaker {
    fn troubled(self) -> bool {
        !matches!(self, Self::Closed { failures: 0 })
    }
}

impl Circuits {
    /// Whether a request may go to `provider` at `now`.
    pub fn check(&self, provider: &Arc<str>, now: Instant, policy: &CircuitPolicy) -> Circuit {
        if policy.failures == 0 || self.troubled.load(Ordering::Acquire) == 0 {
            return Circuit::Closed;
        }
        let mut breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        let Some(breaker) = breakers.get_mut(provider) else { return Circuit::Closed };
        match *breaker {
            Breaker::Closed { .. } => Circuit::Closed,
            Breaker::Open { until } | Breaker::Probing { until } if now < until => Circuit::Open { until },
            // Open long enough, or a probe that never reported back.
            Breaker::Open { .. } | Breaker::Probing { .. } => {
                *breaker = Breaker::Probing { until: now.checked_add(policy.probe_for).unwrap_or(now) };
                Circuit::Probe
            }
        }
    }

    /// Records an attempt at `provider`: `up` when the provider answered
    /// (even with an error of the request's own), not when it failed.
    pub fn record(&self, provider: &Arc<str>, up: bool, now: Instant, policy: &CircuitPolicy) -> Option<CircuitChange> {
        if policy.failures == 0 || (up && self.troubled.load(Ordering::Acquire) == 0) {
            return None;
        }
        let mut breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        let breaker = breakers.entry(provider.clone()).or_insert(Breaker::Closed { failures: 0 });
        let was = breaker.troubled();
        let change = Self::step(breaker, up, now, policy);
        match (was, breaker.troubled()) {
            (false, true) => {
                self.troubled.fetch_add(1, Ordering::AcqRel);
            }
            (true, false) => {
                self.troubled.fetch_sub(1, Ordering::AcqRel);
            }
            _ => {}
        }
        change
    }

    fn step(breaker: &mut Breaker, up: bool, now: Instant, policy: &CircuitPolicy) -> Option<CircuitChange> {
        let open = Breaker::Open { until: now.checked_add(policy.open_for).unwrap_or(now) };
        match (*breaker, up) {
            (Breaker::Closed { .. }, true) => {
                *breaker = Breaker::Closed { failures: 0 };
                None
            }
            (Breaker::Closed { failures }, false) => {
                let failures = failures.saturating_add(1);
                if failures >= policy.failures {
                    *breaker = open;
                    Some(CircuitChange::Opened)
                } else {
                    *breaker = Breaker::Closed { failures };
                    None
                }
            }
            (Breaker::Probing { .. } | Breaker::Open { .. }, true) => {
                *breaker = Breaker::Closed { failures: 0 };
                Some(CircuitChange::Closed)
            }
            (Breaker::Probing { .. }, false) => {
                *breaker = open;
                Some(CircuitChange::Opened)
            }
            // Requests already under way when it opened: nothing new.
            (Breaker::Open { .. }, false) => None,
        }
    }

    /// Providers whose circuit is open or probing, for metrics.
    pub fn open(&self) -> Vec<Arc<str>> {
        let breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        breakers.iter().filter(|(_, b)| !matches!(b, Breaker::Closed { .. })).map(|(p, _)| p.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_provider_opens_then_one_probe_closes_it() {
        let c = Circuits::default();
        let p: Arc<str> = Arc::from("p");
        let policy =
            CircuitPolicy { failures: 3, open_for: Duration::from_secs(30), probe_for: Duration::from_secs(5) };
        let t0 = Instant::now();
        assert_eq!(c.record(&p, false, t0, &policy), None);
        assert_eq!(c.record(&p, true, t0, &policy), None, "a success resets the count");
        for _ in 0..2 {
            assert_eq!(c.record(&p, false, t0, &policy), None);
        }
        assert_eq!(c.record(&p, false, t0, &policy), Some(CircuitChange::Opened));
        assert_eq!(
            c.check(&p, t0 + Duration::from_secs(10), &policy),
            Circuit::Open { until: t0 + Duration::from_secs(30) }
        );
        let later = t0 + Duration::from_secs(31);
        assert_eq!(c.check(&p, later, &policy), Circuit::Probe);
        assert!(matches!(c.check(&p, later, &policy), Circuit::Open { .. }), "one probe at a time");
        assert_eq!(c.record(&p, false, later, &policy), Some(CircuitChange::Opened), "a failed probe opens it again");
        let again = later + Duration::from_secs(31);
        assert_eq!(c.check(&p, again, &policy), Circuit::Probe);
        assert_eq!(c.record(&p, true, again, &policy), Some(CircuitChange::Closed));
        assert_eq!(c.check(&p, again, &policy), Circuit::Closed);
    }

    #[test]
    fn a_probe_that_never_reports_back_lets_another_request_probe() {
        let c = Circuits::default();
        let p: Arc<str> = Arc::from("p");
        let policy = CircuitPolicy { failures: 1, open_for: Duration::from_secs(1), probe_for: Duration::from_secs(5) };
        let t0 = Instant::now();
        c.record(&p, false, t0, &policy);
        assert_eq!(c.check(&p, t0 + Duration::from_secs(2), &policy), Circuit::Probe);
        assert!(matches!(c.check(&p, t0 + Duration::from_secs(3), &policy), Circuit::Open { .. }));
        assert_eq!(c.check(&p, t0 + Duration::from_secs(8), &policy), Circuit::Probe);
    }

    #[test]
    fn zero_failures_turns_it_off() {
        let c = Circuits::default();
        let p: Arc<str> = Arc::from("p");
        let policy = CircuitPolicy { failures: 0, open_for: Duration::from_secs(1), probe_for: Duration::from_secs(1) };
        for _ in 0..10 {
            assert_eq!(c.record(&p, false, Instant::now(), &policy), None);
        }
        assert_eq!(c.check(&p, Instant::now(), &policy), Circuit::Closed);
    }
}
