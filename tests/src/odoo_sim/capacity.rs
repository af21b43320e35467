//! The double's capacity model, as Odoo's prefork server behaves: a fixed pool of workers, each
//! serving one request at a time for a service time of `per_call + per_operation × operations`;
//! requests beyond the workers wait in one queue, first come first served. A request whose
//! service would run past `limit_time_real` is killed then: its effect stays recorded (it had
//! committed), and its client gets no reply.
//!
//! Pure: it plans each request from its arrival time; the HTTP layer waits the plan out.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

/// The model's parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct Capacity {
    pub workers: usize,
    #[serde(with = "humantime_serde")]
    pub per_call: Duration,
    #[serde(with = "humantime_serde")]
    pub per_operation: Duration,
    #[serde(with = "humantime_serde")]
    pub limit_time_real: Duration,
}

impl Capacity {
    /// Requests a second the pool serves at most, for calls of `operations` each.
    pub fn ceiling(&self, operations: u32) -> f64 {
        self.workers as f64 / (self.per_call + self.per_operation * operations).as_secs_f64()
    }
}

/// When a request is served, from the moment the double started (its clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// A worker takes it.
    pub start: Duration,
    /// Its effect is recorded and its answer sent (or, killed, the connection dropped).
    pub end: Duration,
    /// Past `limit_time_real`: no answer.
    pub killed: bool,
}

impl Plan {
    /// Time spent waiting for a worker.
    pub fn queued(&self, arrival: Duration) -> Duration {
        self.start.saturating_sub(arrival)
    }
}

/// The pool's state: when each worker is next free.
#[derive(Clone, Debug)]
pub struct Pool {
    cfg: Capacity,
    free_at: BinaryHeap<Reverse<Duration>>,
    /// Requests planned and not yet ended, at `now`: what is in the double at once.
    in_flight: BinaryHeap<Reverse<Duration>>,
}

impl Pool {
    pub fn new(cfg: Capacity) -> Self {
        Self {
            cfg,
            free_at: (0..cfg.workers.max(1)).map(|_| Reverse(Duration::ZERO)).collect(),
            in_flight: BinaryHeap::new(),
        }
    }

    pub fn config(&self) -> Capacity {
        self.cfg
    }

    /// Plans a request arriving at `arrival` (arrivals come in time order) of `operations`.
    pub fn plan(&mut self, arrival: Duration, operations: u32) -> Plan {
        let Reverse(free) = self.free_at.pop().expect("at least one worker");
        let start = free.max(arrival);
        let service = self.cfg.per_call + self.cfg.per_operation * operations;
        let killed = service > self.cfg.limit_time_real;
        let end = start + if killed { self.cfg.limit_time_real } else { service };
        self.free_at.push(Reverse(end));
        while self.in_flight.peek().is_some_and(|Reverse(e)| *e <= arrival) {
            self.in_flight.pop();
        }
        self.in_flight.push(Reverse(end));
        Plan { start, end, killed }
    }

    /// Requests inside the double (queued or served) as of the last arrival.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Capacity {
        Capacity {
            workers: 8,
            per_call: Duration::from_millis(4),
            per_operation: Duration::from_millis(1),
            limit_time_real: Duration::from_secs(120),
        }
    }

    #[test]
    fn offered_twice_its_capacity_it_serves_at_its_ceiling_and_the_queue_grows() {
        let mut pool = Pool::new(cfg());
        let ceiling = cfg().ceiling(1);
        assert_eq!(ceiling, 1600.0, "8 workers ÷ 5 ms");
        // Twice the ceiling, evenly, for 10 s.
        let gap = Duration::from_secs_f64(1.0 / (2.0 * ceiling));
        let plans: Vec<(Duration, Plan)> = (0..32_000u32)
            .map(|n| {
                let arrival = gap * n;
                (arrival, pool.plan(arrival, 1))
            })
            .collect();
        // Served in the last second of arrivals' service: throughput at the ceiling ±10%.
        let last_end = plans.last().unwrap().1.end;
        let window = Duration::from_secs(1);
        let served = plans.iter().filter(|(_, p)| p.end > last_end - window).count() as f64;
        assert!((served - ceiling).abs() <= ceiling * 0.1, "served {served}/s against {ceiling}/s");
        // The waiting grows as the offered load exceeds the pool.
        let waits: Vec<Duration> = plans.iter().map(|(a, p)| p.queued(*a)).collect();
        assert!(
            waits[1_000] < waits[10_000] && waits[10_000] < waits[31_999],
            "{:?}",
            (waits[1_000], waits[10_000], waits[31_999])
        );
        assert!(waits[31_999] > Duration::from_secs(9), "half the offered load waits: {:?}", waits[31_999]);
    }

    #[test]
    fn below_its_capacity_nothing_waits() {
        let mut pool = Pool::new(cfg());
        let gap = Duration::from_secs_f64(1.0 / (0.5 * cfg().ceiling(50)));
        for n in 0..1_000u32 {
            let arrival = gap * n;
            let plan = pool.plan(arrival, 50);
            assert_eq!(plan.queued(arrival), Duration::ZERO);
            assert_eq!(plan.end - plan.start, Duration::from_millis(54), "4 ms + 50 × 1 ms");
            assert!(pool.in_flight() <= 8);
        }
    }

    #[test]
    fn a_request_past_limit_time_real_is_killed_at_the_limit_and_frees_its_worker() {
        let mut pool = Pool::new(Capacity { workers: 1, limit_time_real: Duration::from_millis(100), ..cfg() });
        let long = pool.plan(Duration::ZERO, 200);
        assert_eq!(long, Plan { start: Duration::ZERO, end: Duration::from_millis(100), killed: true });
        let next = pool.plan(Duration::from_millis(10), 1);
        assert_eq!((next.start, next.killed), (Duration::from_millis(100), false));
    }
}
