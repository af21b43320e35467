//! The coordinator on virtual time (wall-clock milliseconds passed in).

use super::*;

const PLANTS: [&str; 4] = ["a", "b", "c", "d"];

fn cfg() -> CoordinatorConfig {
    let plants = [("a", 1, None), ("b", 2, Some(1_000_000)), ("c", 2, None), ("d", 3, None)]
        .into_iter()
        .map(|(p, priority, deadline_ms)| (p.to_owned(), PlantSpec { priority, deadline_ms }))
        .collect();
    CoordinatorConfig {
        gates: GateConfig { window_ms: 5_000, samples_min: 5, ..GateConfig::default() },
        drain: DrainConfig { window_ms: 1_000, ..DrainConfig::default() },
        soak_ms: 3_000,
        wave_plants_max: 16,
        canary_plant: Some("a".into()),
        plants,
        ..CoordinatorConfig::default()
    }
}

/// A coordinator and its clock, with Odoo's canary answering in `canary_ms`.
struct Run {
    c: Coordinator,
    now: i64,
    canary_ms: f64,
    actions: Vec<Action>,
}

impl Run {
    fn new() -> Self {
        let mut r = Run { c: Coordinator::new(cfg()), now: 0, canary_ms: 5.0, actions: Vec::new() };
        for p in PLANTS {
            r.c.handle_heard(0, p);
            r.c.handle_backlog(0, p, 0);
        }
        r.c.handle_probe(0, true, "reachable");
        r
    }

    /// Moves the clock by `ms`, with a canary every 200 ms and the heartbeats, answering the
    /// preflight and the webhooks at once.
    fn advance(&mut self, ms: i64) {
        let end = self.now + ms;
        while self.now < end {
            self.now += 200;
            let now = self.now;
            self.c.handle_canary(now, self.canary_ms, Ended::Ok);
            // The applier has more than the limit lets it send (no serial tails).
            if let Some(limit) = self.c.limit() {
                self.c.handle_in_flight(limit);
            }
            if now % 5_000 == 0 {
                for p in PLANTS {
                    self.c.handle_heard(now, p);
                }
            }
            if self.c.poll_timeout().is_some_and(|t| t <= now) {
                self.c.handle_timeout(now);
            }
            self.take();
        }
    }

    fn take(&mut self) {
        while let Some(a) = self.c.poll_action() {
            match &a {
                Action::Preflight => self.c.handle_preflight(self.now, Ok("checked".into())),
                Action::OpenWave { index, .. } => self.c.handle_wave_opened(self.now, *index, Ok(())),
                _ => {}
            }
            self.actions.push(a);
        }
    }

    fn state(&self, p: &str) -> PlantState {
        self.c.plant(p).unwrap().state
    }

    fn stage(&self) -> String {
        self.c.plan().map_or("none".into(), |p| p.stage.name())
    }

    fn paused(&self) -> Option<String> {
        self.c.plan().and_then(|p| p.paused.as_ref()).map(|p| p.reason.clone())
    }

    /// An outage the hub's probe sees, then its end: a plan armed over every plant.
    fn outage(&mut self) {
        self.advance(6_000); // baselines
        self.c.handle_probe(self.now, false, "database down");
        self.take();
        for p in PLANTS {
            self.c.handle_backlog(self.now, p, 100);
        }
        self.canary_ms = 5.0;
        self.c.handle_probe(self.now + 1, true, "reachable");
        self.advance(600);
    }
}

#[test]
fn a_platform_wide_incident_holds_every_plant_and_its_end_arms_a_plan() {
    let mut r = Run::new();
    r.advance(6_000);
    assert_eq!(r.c.durable().baselines.canary_p95_ms, Some(5.0), "measured while healthy");
    r.c.handle_probe(r.now, false, "database down");
    r.take();
    assert!(PLANTS.iter().all(|p| r.state(p) == PlantState::Held));
    assert!(!r.c.applies("a") && !r.c.applies("a-plant-never-seen"), "a platform-wide incident holds everyone");
    assert!(
        r.actions.iter().any(|a| matches!(a, Action::Alarm { name, on: true, .. } if name == "incident_platform_wide"))
    );
    assert!(r.actions.iter().any(|a| matches!(a, Action::Audit { action, .. } if action == "incident_opened")));
    r.c.handle_probe(r.now, true, "reachable");
    r.take();
    assert_eq!(r.stage(), "armed");
    let waves: Vec<Vec<String>> = r.c.plan().unwrap().waves.iter().map(|w| w.plants.clone()).collect();
    assert_eq!(waves, [vec!["a"], vec!["b", "c"], vec!["d"]], "the canary, then tiers; b's deadline first");
    assert!(PLANTS.iter().all(|p| r.state(p) == PlantState::Held), "nothing reopens by itself");
    assert_eq!(r.c.start(r.now, "alice", " "), Err(VerbError::ReasonRequired));
}

#[test]
fn the_plan_runs_its_waves_in_order_behind_the_gates_to_completion() {
    let mut r = Run::new();
    r.outage();
    r.c.start(r.now, "alice", "Odoo is back").unwrap();
    r.take();
    assert_eq!(r.stage(), "preflight");
    r.advance(1_200);
    assert_eq!(r.stage(), "wave 1: draining", "the gates judged what came since Odoo recovered");
    assert_eq!(r.state("a"), PlantState::Draining);
    assert!(r.c.applies("a") && !r.c.applies("b"));
    assert_eq!(r.c.limit(), Some(2));
    r.c.handle_backlog(r.now, "a", 0);
    r.take();
    assert_eq!(r.stage(), "wave 1: baking");
    assert_eq!(r.state("a"), PlantState::CaughtUp);
    r.advance(3_000);
    assert_eq!(r.stage(), "wave 2: draining");
    assert_eq!(r.state("a"), PlantState::Live);
    assert_eq!(
        (r.state("b"), r.state("c"), r.state("d")),
        (PlantState::Draining, PlantState::Draining, PlantState::Held)
    );
    for p in ["b", "c"] {
        r.c.handle_backlog(r.now, p, 0);
    }
    r.advance(3_200);
    assert_eq!(r.stage(), "wave 3: draining");
    r.c.handle_backlog(r.now, "d", 0);
    r.advance(3_200);
    assert_eq!(r.stage(), "completed");
    assert!(PLANTS.iter().all(|p| r.state(p) == PlantState::Live));
    assert_eq!(r.c.limit(), None, "no limit outside a plan");
    let decision = r.c.plan().unwrap().decision.clone().unwrap();
    assert_eq!(decision.verdict(), Verdict::Pass);
    assert!(decision.summary().contains("canary_latency p95 5.0 ms of"), "{}", decision.summary());
    assert!(r.actions.iter().any(|a| matches!(a, Action::Audit { action, .. } if action == "plan_completed")));
}

#[test]
fn an_inconclusive_gate_pauses_and_never_passes() {
    let mut r = Run::new();
    r.outage();
    r.c.start(r.now, "alice", "go").unwrap();
    r.advance(1_200);
    assert_eq!(r.stage(), "wave 1: draining");
    // The canary stops answering at all: no samples.
    let end = r.now + 6_000;
    while r.now < end && r.paused().is_none() {
        r.now += 200;
        r.c.handle_in_flight(r.c.limit().unwrap());
        r.c.handle_timeout(r.now);
        r.take();
    }
    let why = r.paused().expect("paused");
    assert!(why.starts_with("gates inconclusive: canary_latency: "), "{why}");
    assert!(!r.c.applies("a"), "a paused plan drains nothing");
    assert!(r.actions.iter().any(|a| matches!(a, Action::Alarm { name, on: true, .. } if name == ALARM_PLAN_PAUSED)));
    assert_eq!(
        r.c.promote(r.now, "alice", "push on"),
        Err(VerbError::NotNow { stage: "wave 1: draining (paused)".into(), verb: "promote" })
    );
    r.c.resume(r.now, "alice", "canary fixed").unwrap();
    assert!(r.c.applies("a"));
}

#[test]
fn a_failing_latency_gate_slows_the_drain_then_pauses_at_its_floor() {
    let mut r = Run::new();
    r.outage();
    r.c.start(r.now, "alice", "go").unwrap();
    r.advance(1_200);
    for _ in 0..3 {
        r.c.handle_in_flight(r.c.limit().unwrap());
        r.advance(1_000);
    }
    assert_eq!(r.c.limit(), Some(4), "slow start up to half of 8 workers");
    r.canary_ms = 30.0; // 6x the baseline
    let mut limits = Vec::new();
    while r.paused().is_none() && r.now < 60_000 {
        r.advance(1_000);
        limits.push(r.c.limit().unwrap());
    }
    assert_eq!(&limits[..2], [2, 1], "halved each window");
    let why = r.paused().expect("paused at the floor");
    assert!(why.contains("with the limit at its floor of 1 for 3 windows"), "{why}");
    assert!(why.contains("canary_latency p95 30.0 ms"), "the values behind it: {why}");
    let history = &r.c.plan().unwrap().history;
    assert!(history.iter().any(|s| s.what.starts_with("drain limit 4 → 2: canary p95 at 6.00x")), "{history:?}");
}

#[test]
fn a_plan_comes_back_paused_with_every_plant_where_it_was_from_a_restart_in_any_state() {
    let mut r = Run::new();
    r.outage();
    let mut seen = Vec::new();
    let mut check = |r: &Run| {
        let saved = serde_json::to_string(r.c.durable()).unwrap();
        let d: Durable = serde_json::from_str(&saved).unwrap();
        let back = Coordinator::restore(cfg(), d, r.now + 10);
        let plan = back.plan().unwrap();
        assert_eq!(plan.stage, r.c.plan().unwrap().stage);
        for p in PLANTS {
            assert_eq!(back.plant(p).unwrap().state, r.state(p), "{p} where it was");
        }
        if plan.running() {
            let why = &plan.paused.as_ref().expect("paused").reason;
            match &r.c.plan().unwrap().paused {
                Some(p) => assert_eq!(why, &p.reason, "paused before: its reason stays"),
                None => assert_eq!(why, &format!("the hub restarted while the plan was {}", plan.stage.name())),
            }
            for p in PLANTS {
                if back.plant(p).unwrap().state == PlantState::Draining {
                    assert!(!back.applies(p), "{p} drains nothing until resumed");
                }
            }
        } else {
            assert!(plan.paused.is_none(), "{:?}", plan.stage);
        }
        seen.push(plan.stage.name());
    };
    check(&r); // armed
    r.c.start(r.now, "alice", "go").unwrap();
    r.c.poll_action();
    check(&r); // preflight
    r.take();
    r.advance(1_200);
    check(&r); // wave 1 draining
    r.c.handle_backlog(r.now, "a", 0);
    r.take();
    check(&r); // wave 1 baking
    r.advance(3_000);
    check(&r); // wave 2 draining
    r.c.pause(r.now, "alice", "lunch").unwrap();
    check(&r); // paused
    r.c.abort(r.now, "alice", "no").unwrap();
    check(&r); // aborted
    assert_eq!(
        seen,
        ["armed", "preflight", "wave 1: draining", "wave 1: baking", "wave 2: draining", "wave 2: draining", "aborted"]
    );
    assert!(PLANTS.iter().all(|p| r.state(p) == PlantState::Held), "abort: every plant of the plan held");
}

#[test]
fn plant_its_manual_state_wins_and_the_plan_says_it_skipped_the_plant() {
    let mut r = Run::new();
    r.outage();
    r.c.handle_manual(r.now, "a", true);
    r.c.start(r.now, "alice", "go").unwrap();
    r.advance(1_200);
    assert_eq!(r.stage(), "wave 1: baking", "nothing to drain in wave 1 but the skipped canary");
    let history = &r.c.plan().unwrap().history;
    assert!(history.iter().any(|s| s.what == "plant a skipped: plant IT switched it to manual offline"), "{history:?}");
    assert!(!r.c.applies("a"));
    r.c.handle_manual(r.now, "a", false);
    assert_eq!(r.state("a"), PlantState::Draining, "it rejoins its opened wave");
    assert_eq!(r.stage(), "wave 1: draining");
    // An operator's hold too, and its release.
    r.c.hold(r.now, "bob", "b", "dock flooded").unwrap();
    r.c.handle_backlog(r.now, "a", 0);
    r.advance(3_200);
    assert_eq!(r.stage(), "wave 2: draining");
    assert!(!r.c.applies("b") && r.c.applies("c"));
    assert_eq!(r.c.release(r.now, "bob", "x", "?"), Err(VerbError::UnknownPlant("x".into())));
    r.c.release(r.now, "bob", "b", "dry again").unwrap();
    assert!(r.c.applies("b"));
}

#[test]
fn a_wave_projected_past_its_deadline_raises_an_alarm() {
    let mut r = Run::new();
    r.outage();
    r.c.start(r.now, "alice", "go").unwrap();
    r.advance(1_200);
    r.c.handle_backlog(r.now, "a", 0);
    r.advance(3_200);
    assert_eq!(r.stage(), "wave 2: draining");
    // Wave 2 (b's deadline, 1,000 s) holds 10,000 and applies 5 a second.
    r.c.handle_backlog(r.now, "b", 5_000);
    r.c.handle_backlog(r.now, "c", 5_000);
    for _ in 0..5 {
        r.c.handle_call(r.now, 5.0, Ended::Ok, &[("stock.quant.write".into(), true)]);
        r.advance(1_000);
    }
    let alarm = r.actions.iter().find_map(|a| match a {
        Action::Alarm { name, on: true, message } if name == ALARM_DEADLINE => Some(message.clone()),
        _ => None,
    });
    let alarm = alarm.expect("the deadline alarm");
    assert!(
        alarm.starts_with("wave 2 projected to catch up ") && alarm.contains("after its deadline (10000 left at "),
        "{alarm}"
    );
    assert_eq!(r.c.move_plant(r.now, "alice", "d", 2, "it ships too"), Err(VerbError::BadWave(2)), "wave 2 has opened");
    r.c.move_plant(r.now, "alice", "d", 3, "stays").unwrap();
}

#[test]
fn odoo_failing_again_mid_plan_ends_that_plan_and_its_return_arms_a_new_one() {
    let mut r = Run::new();
    r.outage();
    r.c.start(r.now, "alice", "go").unwrap();
    r.advance(1_200);
    assert_eq!(r.stage(), "wave 1: draining");
    r.c.handle_probe(r.now, false, "database down again");
    r.take();
    assert_eq!(r.stage(), "aborted");
    assert!(PLANTS.iter().all(|p| r.state(p) == PlantState::Held));
    assert_eq!(r.c.limit(), None);
    r.c.handle_probe(r.now + 1, true, "reachable");
    r.take();
    assert_eq!(r.stage(), "armed", "a new plan for the new incident");
    assert_eq!(r.c.plan().unwrap().id, 2);
}

#[test]
fn a_failover_fences_the_old_endpoint_holds_everyone_and_replays_before_the_first_wave() {
    let mut r = Run::new();
    r.advance(6_000);
    r.c.handle_probe(r.now, false, "unreachable");
    r.take();
    for p in PLANTS {
        r.c.handle_backlog(r.now, p, 10);
    }
    assert_eq!(
        r.c.failover(r.now, "root", "http://primary", "http://primary/", 1_000, 0, "lost"),
        Err(VerbError::Invalid("http://primary is already the active endpoint".into()))
    );
    assert_eq!(
        r.c.failover(r.now, "root", "http://primary", "http://dr", r.now + 1, 0, "lost"),
        Err(VerbError::Invalid("the recovery point is in the future".into()))
    );
    let epoch = r.c.failover(r.now, "root", "http://primary", "http://dr", 4_000, 1_000, "primary lost").unwrap();
    r.take();
    assert_eq!(epoch, 1);
    let e = r.c.durable().endpoint.clone().unwrap();
    assert_eq!(
        (e.url.as_str(), e.replay_from_ms, e.fenced.clone()),
        ("http://dr", 3_000, vec!["http://primary".to_owned()])
    );
    assert!(r.actions.contains(&Action::Retarget { url: "http://dr".into(), epoch: 1 }));
    assert!(r.actions.iter().any(
        |a| matches!(a, Action::Audit { action, target, .. } if action == "failover" && target == "odoo epoch 1")
    ));
    assert_eq!(r.stage(), "armed");
    assert!(r.c.plan().unwrap().replay);
    // The recovered Odoo answers: start, preflight, then the replay before any wave.
    r.c.handle_probe(r.now + 1, true, "reachable");
    r.advance(600);
    r.c.start(r.now, "root", "DR up").unwrap();
    r.advance(1_200);
    assert_eq!(r.stage(), "replaying");
    assert!(r.actions.contains(&Action::Replay { from_ms: 3_000 }));
    assert!(PLANTS.iter().all(|p| r.state(p) == PlantState::Held), "nothing opens before the replay is through");
    r.c.handle_replay_done(r.now, Err("the recovered Odoo refused 1".into()));
    assert!(r.paused().unwrap().starts_with("the replay needs an operator: "));
    r.c.promote(r.now, "root", "checked by hand").unwrap();
    r.take();
    assert_eq!(r.stage(), "wave 1: draining");
    // A second failover back to the first endpoint (a failback) raises the epoch again.
    let epoch = r.c.failover(r.now, "root", "http://dr", "http://primary", r.now - 1, 0, "failback").unwrap();
    assert_eq!(epoch, 2);
    assert_eq!(r.c.durable().endpoint.as_ref().unwrap().fenced, ["http://dr"]);
}

#[test]
fn a_soak_interrupted_by_a_pause_is_observed_again_in_full() {
    let mut r = Run::new();
    r.outage();
    r.c.start(r.now, "alice", "go").unwrap();
    r.advance(1_200);
    r.c.handle_backlog(r.now, "a", 0);
    r.take();
    assert_eq!(r.stage(), "wave 1: baking");
    r.advance(2_000);
    r.c.pause(r.now, "alice", "look").unwrap();
    r.advance(5_000);
    assert_eq!(r.stage(), "wave 1: baking", "paused: nothing moves");
    r.c.resume(r.now, "alice", "go on").unwrap();
    let Stage::Wave { phase: Phase::Baking { until_ms }, .. } = r.c.plan().unwrap().stage else { panic!() };
    assert_eq!(until_ms, r.now + 3_000);
    r.advance(2_800);
    assert_eq!(r.stage(), "wave 1: baking");
    r.advance(400);
    assert_eq!(r.stage(), "wave 2: draining");
}

/// Found by schemathesis: an operator arming and starting a plan while no plant is held (so
/// it has no waves) brought the hub down (the first wave was looked up and was not there).
#[test]
fn a_plan_armed_with_nothing_held_completes_with_nothing_to_reopen() {
    let mut r = Run::new();
    r.advance(6_000);
    assert!(PLANTS.iter().all(|p| r.state(p) == PlantState::Live));
    r.c.arm(r.now, "alice", "a drill", false).unwrap();
    assert!(r.c.plan().unwrap().waves.is_empty());
    r.c.start(r.now, "alice", "a drill").unwrap();
    r.take();
    r.advance(3_000);
    assert_eq!(r.stage(), "completed");
    let last = r.c.plan().unwrap().history.last().unwrap().what.clone();
    assert_eq!(last, "no plant left to reopen");
    assert!(PLANTS.iter().all(|p| r.state(p) == PlantState::Live));
}
