//! What a run measures: HDR histograms of accept and webhook-to-row latency (whole run and per
//! time window), request outcomes, and the ledger of accepted events the verification checks.
//!
//! Latencies are recorded in microseconds from each request's *intended* send time, so time a
//! request spent waiting because the system (or the generator) was slow is counted, never hidden.

use std::collections::{BTreeMap, VecDeque};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::payload::{EventMeta, SharedRequest};

/// Largest latency recorded, in microseconds (larger values are clamped): ten minutes.
pub const MAX_LATENCY_US: u64 = 600_000_000;
/// Accepted requests kept for redeliveries.
pub const REDELIVERY_RING: usize = 512;
/// Failed requests kept for the final redelivery sweep.
pub const MAX_FAILED_KEPT: usize = 20_000;

/// A histogram of microseconds with the given precision.
pub fn histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, sigfig).expect("valid bounds")
}

/// Records `us` (clamped into the histogram's range).
pub fn record(h: &mut Histogram<u64>, us: u64) {
    let _ = h.record(us.clamp(1, MAX_LATENCY_US));
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
}

impl Percentiles {
    /// The percentiles of `h`.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// One time window of the run.
#[derive(Debug, Clone)]
pub struct Window {
    /// Target rate at the window's start, messages per second.
    pub target_rate: f64,
    /// Events (messages and statuses) in requests intended in this window.
    pub events_sent: u64,
    /// Events accepted (answered 200) among them.
    pub events_accepted: u64,
    /// Requests intended in this window.
    pub requests: u64,
    /// Requests that failed (non-2xx or no answer).
    pub errors: u64,
    /// Accept latency of requests intended in this window.
    pub accept: Histogram<u64>,
    /// Webhook-to-row latency of samples intended in this window.
    pub e2e: Histogram<u64>,
}

impl Window {
    fn new(target_rate: f64) -> Window {
        Window {
            target_rate,
            events_sent: 0,
            events_accepted: 0,
            requests: 0,
            errors: 0,
            accept: histogram(2),
            e2e: histogram(2),
        }
    }
}

/// Per-tenant ledger of what was accepted, for the verification pass.
#[derive(Debug, Clone, Default)]
pub struct TenantLedger {
    /// Distinct inbound messages accepted.
    pub messages: u64,
    /// Distinct status events accepted.
    pub statuses: u64,
    /// Accepted messages whose text matches a keyword rule.
    pub keyword_messages: u64,
    /// Per contact: the intended send time (seconds since the start) of its first accepted
    /// message; negative when none was accepted yet, NaN when it was accepted only by the final
    /// resend (no time to measure the welcome reply from).
    pub first_accepted_at: Vec<f32>,
    /// Contacts with at least one accepted message.
    pub distinct_contacts: u64,
}

/// Everything recorded during a run; shared behind a mutex, never held across an await.
pub struct Recorder {
    /// Window length in seconds.
    pub window_secs: f64,
    /// Seconds at the start excluded from the whole-run histograms.
    pub warmup_secs: f64,
    /// Accept latency after warmup.
    pub accept: Histogram<u64>,
    /// Webhook-to-row latency after warmup.
    pub e2e: Histogram<u64>,
    /// Per window.
    pub windows: Vec<Window>,
    /// Requests sent, including redeliveries.
    pub requests: u64,
    /// Requests answered 2xx.
    pub requests_ok: u64,
    /// Failures by cause (`http_429`, `http_503`, `timeout`, `connect`, …).
    pub failures: BTreeMap<String, u64>,
    /// Redeliveries sent and answered 2xx.
    pub redeliveries: u64,
    /// Redeliveries answered 2xx.
    pub redeliveries_ok: u64,
    /// Per tenant.
    pub tenants: Vec<TenantLedger>,
    /// Recently accepted requests, for redeliveries.
    pub ring: VecDeque<SharedRequest>,
    /// Failed requests to resend at the end, as a provider would.
    pub failed: Vec<SharedRequest>,
    /// Failed requests not kept because `failed` was full (their events may be lost to the check).
    pub failed_dropped: u64,
    /// Requests still in flight.
    pub in_flight: u64,
}

impl Recorder {
    /// A recorder for `tenants` tenants with `contacts` contacts each.
    pub fn new(tenants: usize, contacts: usize, window_secs: f64, warmup_secs: f64) -> Recorder {
        Recorder {
            window_secs,
            warmup_secs,
            accept: histogram(3),
            e2e: histogram(3),
            windows: Vec::new(),
            requests: 0,
            requests_ok: 0,
            failures: BTreeMap::new(),
            redeliveries: 0,
            redeliveries_ok: 0,
            tenants: (0..tenants)
                .map(|_| TenantLedger {
                    first_accepted_at: vec![-1.0; contacts],
                    ..TenantLedger::default()
                })
                .collect(),
            ring: VecDeque::with_capacity(REDELIVERY_RING),
            failed: Vec::new(),
            failed_dropped: 0,
            in_flight: 0,
        }
    }

    /// The window of intended time `t` (seconds since start), created on demand.
    pub fn window(&mut self, t: f64, target_rate: f64) -> &mut Window {
        let i = (t / self.window_secs).max(0.0) as usize;
        while self.windows.len() <= i {
            self.windows.push(Window::new(target_rate));
        }
        &mut self.windows[i]
    }

    /// Books the acceptance of `req`'s events, intended at `t` seconds (none for the final resend).
    pub fn book_accepted(&mut self, req: &SharedRequest, t: Option<f64>) {
        let ledger = &mut self.tenants[req.tenant];
        for e in &req.events {
            match e {
                EventMeta::Message {
                    contact, keyword, ..
                } => {
                    ledger.messages += 1;
                    ledger.keyword_messages += u64::from(*keyword);
                    if let Some(first) = ledger.first_accepted_at.get_mut(*contact)
                        && *first < 0.0
                    {
                        *first = t.map_or(f32::NAN, |t| t as f32);
                        ledger.distinct_contacts += 1;
                    }
                }
                EventMeta::Status { .. } => ledger.statuses += 1,
            }
        }
    }

    /// Records the answer to a first delivery intended at `t` seconds.
    pub fn first_delivery(
        &mut self,
        req: &SharedRequest,
        t: f64,
        target_rate: f64,
        latency_us: u64,
        outcome: Result<(), String>,
    ) {
        self.requests += 1;
        let after_warmup = t >= self.warmup_secs;
        let n = req.events.len() as u64;
        let ok = outcome.is_ok();
        if after_warmup {
            record(&mut self.accept, latency_us);
        }
        {
            let w = self.window(t, target_rate);
            w.requests += 1;
            w.events_sent += n;
            record(&mut w.accept, latency_us);
            if ok {
                w.events_accepted += n;
            } else {
                w.errors += 1;
            }
        }
        match outcome {
            Ok(()) => {
                self.requests_ok += 1;
                self.book_accepted(req, Some(t));
                if self.ring.len() == REDELIVERY_RING {
                    self.ring.pop_front();
                }
                self.ring.push_back(req.clone());
            }
            Err(cause) => {
                *self.failures.entry(cause).or_default() += 1;
                if self.failed.len() < MAX_FAILED_KEPT {
                    self.failed.push(req.clone());
                } else {
                    self.failed_dropped += 1;
                }
            }
        }
    }

    /// Records the answer to a redelivery (its events were booked at the first delivery).
    pub fn redelivery(
        &mut self,
        t: f64,
        target_rate: f64,
        latency_us: u64,
        events: u64,
        ok: bool,
        cause: Option<String>,
    ) {
        self.requests += 1;
        self.redeliveries += 1;
        if t >= self.warmup_secs {
            record(&mut self.accept, latency_us);
        }
        let w = self.window(t, target_rate);
        w.requests += 1;
        // A redelivery is traffic the system handles at the target rate, though not new events.
        w.events_sent += events;
        if ok {
            w.events_accepted += events;
        }
        record(&mut w.accept, latency_us);
        if ok {
            self.requests_ok += 1;
            self.redeliveries_ok += 1;
        } else {
            w.errors += 1;
            if let Some(c) = cause {
                *self.failures.entry(format!("redelivery_{c}")).or_default() += 1;
            }
        }
    }

    /// Records a webhook-to-row sample intended at `t`.
    pub fn e2e_sample(&mut self, t: f64, latency_us: u64) {
        if t >= self.warmup_secs {
            record(&mut self.e2e, latency_us);
        }
        let rate = self.windows.last().map_or(0.0, |w| w.target_rate);
        record(&mut self.window(t, rate).e2e, latency_us);
    }

    /// Total failed first deliveries and redeliveries.
    pub fn errors(&self) -> u64 {
        self.failures.values().sum()
    }

    /// Totals over the ledger: messages, statuses, keyword messages, distinct contacts of
    /// tenants with a welcome reply.
    pub fn totals(&self, welcome: &[bool]) -> (u64, u64, u64, u64) {
        let mut t = (0, 0, 0, 0);
        for (i, l) in self.tenants.iter().enumerate() {
            t.0 += l.messages;
            t.1 += l.statuses;
            t.2 += l.keyword_messages;
            if welcome.get(i).copied().unwrap_or(false) {
                t.3 += l.distinct_contacts;
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::payload::{Provider, Request};

    fn req(events: Vec<EventMeta>) -> SharedRequest {
        Arc::new(Request {
            tenant: 0,
            provider: Provider::Meta,
            path: "/".into(),
            content_type: "application/json",
            signature: ("x", String::new()),
            body: bytes::Bytes::new(),
            events,
        })
    }

    #[test]
    fn ledger_counts_distinct_contacts_and_failures_are_kept() {
        let mut r = Recorder::new(1, 10, 1.0, 0.5);
        let m = |id: &str, contact| EventMeta::Message {
            id: id.into(),
            contact,
            keyword: contact == 1,
        };
        r.first_delivery(&req(vec![m("a", 0), m("b", 1)]), 0.1, 10.0, 1000, Ok(()));
        r.first_delivery(&req(vec![m("c", 1)]), 1.2, 10.0, 3000, Ok(()));
        r.first_delivery(
            &req(vec![m("d", 2)]),
            1.5,
            10.0,
            9000,
            Err("http_503".into()),
        );
        assert_eq!(r.totals(&[true]), (3, 0, 2, 2));
        assert_eq!(r.failed.len(), 1);
        assert_eq!(r.errors(), 1);
        // Warmup (0.5 s) excludes the first request from the whole-run histogram.
        assert_eq!(r.accept.len(), 2);
        assert_eq!(r.windows.len(), 2);
        assert_eq!(r.windows[1].errors, 1);
        assert_eq!(r.windows[0].events_accepted, 2);
        r.book_accepted(&r.failed[0].clone(), None);
        assert!(r.tenants[0].first_accepted_at[2].is_nan());
        assert_eq!(r.tenants[0].first_accepted_at[1], 0.1);
        assert_eq!(r.totals(&[true]).0, 4);
    }

    #[test]
    fn percentiles_are_in_milliseconds() {
        let mut h = histogram(3);
        for us in 1..=1000 {
            record(&mut h, us * 1000);
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        assert!((p.p50_ms - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99_ms - 990.0).abs() < 2.0, "{p:?}");
    }
}
