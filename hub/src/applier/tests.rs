//! The applier on virtual time.
// Virtual time starts at an arbitrary real instant and only moves when a test moves it.
#![allow(clippy::disallowed_methods)]

use super::*;
use crate::policy::LivePolicies;
use holdfast_protocol::SourceKind;
use serde_json::json;

fn cfg() -> ApplierConfig {
    ApplierConfig {
        calls_max: 2,
        batch_max: 3,
        retry_initial: Duration::from_millis(500),
        retry_max: Duration::from_secs(4),
        retry_budget: 3,
        queued_max: 100,
        policies: LivePolicies::new(everything_for(&["p", "q"])),
    }
}

/// A policy letting `plants` make the call these tests use.
fn everything_for(plants: &[&str]) -> crate::policy::Policies {
    let plants = plants
        .iter()
        .map(|p| {
            (
                p.to_string(),
                crate::policy::PlantPolicy { allow: vec!["res.users:context_get".into()], company_id: None },
            )
        })
        .collect();
    crate::policy::Policies::new(&plants).unwrap()
}

const J: Uuid = Uuid::from_u128(1);

fn record(plant: &str, seq: u64, order_key: &str) -> Record {
    record_of(plant, seq, order_key, "res.users", "context_get", json!([]))
}

/// A transaction of `plant` on key `order_key` calling `model.method(args)`, as record `seq`.
fn record_of(plant: &str, seq: u64, order_key: &str, model: &str, method: &str, args: serde_json::Value) -> Record {
    Transaction {
        id: Uuid::from_u128(seq as u128),
        plant: plant.into(),
        source: SourceKind::Mes,
        device: "d".into(),
        key: None,
        order_key: order_key.into(),
        received_at_ms: 0,
        occurred_at_ms: None,
        op: Operation::OdooCall(OdooCall {
            model: model.into(),
            method: method.into(),
            args,
            kwargs: Default::default(),
        }),
    }
    .to_record(seq)
    .unwrap()
}

/// Loads `(plant, seq, key)` rows with lsn = seq.
fn load(a: &mut Applier, rows: &[(&str, u64, &str)]) {
    for (plant, seq, key) in rows {
        a.handle_pending(*seq, plant, J, &record(plant, *seq, key));
    }
}

fn lsns(call: &Call) -> Vec<u64> {
    call.items.iter().map(|i| i.lsn).collect()
}

fn applied(n: usize) -> CallOutcome {
    CallOutcome::Items((0..n).map(|_| ItemOutcome::Applied { result: json!(true) }).collect())
}

fn events(a: &mut Applier) -> Vec<ApplierEvent> {
    std::iter::from_fn(|| a.poll_event()).collect()
}

#[test]
fn one_call_per_key_in_order_within_the_limits() {
    let now = Instant::now();
    let mut a = Applier::new(cfg());
    load(&mut a, &[("p", 1, "a"), ("p", 2, "a"), ("p", 3, "b"), ("p", 4, "a"), ("p", 5, "a"), ("q", 6, "a")]);
    let c1 = a.poll_call(now).unwrap();
    assert_eq!((c1.plant.as_str(), lsns(&c1)), ("p", vec![1, 2, 4]), "key a's first three fill the batch");
    let c2 = a.poll_call(now).unwrap();
    assert_eq!((c2.plant.as_str(), lsns(&c2)), ("q", vec![6]), "plant q's turn in this round before p's again");
    assert_eq!(a.poll_call(now), None, "calls_max is 2");
    a.handle_outcome(now, c1.id, applied(3));
    let c3 = a.poll_call(now).unwrap();
    assert_eq!(lsns(&c3), vec![3, 5], "a new round: p's keys b and a (a's next, after its call finished)");
    a.handle_outcome(now, c2.id, applied(1));
    a.handle_outcome(now, c3.id, applied(2));
    assert_eq!(a.poll_call(now), None, "nothing left");
    let done: Vec<u64> = events(&mut a)
        .into_iter()
        .filter_map(|e| if let ApplierEvent::Applied { lsn, .. } = e { Some(lsn) } else { None })
        .collect();
    assert_eq!(done, vec![1, 2, 4, 6, 3, 5]);
}

#[test]
fn a_refusal_quarantines_and_blocks_only_its_key() {
    let now = Instant::now();
    let mut a = Applier::new(ApplierConfig { batch_max: 10, ..cfg() });
    load(&mut a, &[("p", 1, "a"), ("p", 2, "a"), ("p", 3, "a"), ("p", 4, "b")]);
    let c = a.poll_call(now).unwrap();
    assert_eq!(lsns(&c), vec![1, 2, 3, 4]);
    let refusal = OdooError { name: "odoo.exceptions.UserError".into(), message: "Not enough stock".into() };
    a.handle_outcome(
        now,
        c.id,
        CallOutcome::Items(vec![
            ItemOutcome::Applied { result: json!(41) },
            ItemOutcome::Failed(refusal.clone()),
            ItemOutcome::NotExecuted,
            ItemOutcome::Applied { result: json!(null) },
        ]),
    );
    assert_eq!(
        events(&mut a),
        vec![
            ApplierEvent::Applied { lsn: 1, result: json!(41) },
            ApplierEvent::Quarantined { lsn: 2, error: refusal },
            ApplierEvent::Applied { lsn: 4, result: json!(null) },
        ]
    );
    assert_eq!(a.poll_call(now), None, "key a is blocked; its seq 3 stays pending in the ledger");
    assert_eq!(a.wants(), 100, "nothing is held in memory for a blocked key");
}

#[test]
fn unknown_outcomes_are_resent_with_exponential_backoff_on_virtual_time() {
    let t0 = Instant::now();
    let mut a = Applier::new(cfg());
    load(&mut a, &[("p", 1, "a")]);
    let mut now = t0;
    let mut delays = Vec::new();
    for _ in 0..5 {
        let c = a.poll_call(now).expect("ready");
        a.handle_outcome(now, c.id, CallOutcome::Failed(CallFailure::Unknown("timed out after 150s".into())));
        let wake = a.poll_timeout().unwrap();
        assert_eq!(a.poll_call(wake - Duration::from_millis(1)), None, "not before the backoff");
        delays.push(wake - now);
        now = wake;
    }
    let ms: Vec<u128> = delays.iter().map(|d| d.as_millis()).collect();
    assert_eq!(ms, vec![500, 1000, 2000, 4000, 4000]);
    let c = a.poll_call(now).unwrap();
    assert_eq!(lsns(&c), vec![1], "the same transaction is resent: the inbox skips it if it landed");
    a.handle_outcome(now, c.id, CallOutcome::Items(vec![ItemOutcome::AlreadyApplied { result: json!(true) }]));
    assert!(events(&mut a).contains(&ApplierEvent::Applied { lsn: 1, result: json!(true) }));
    assert_eq!(a.poll_timeout(), None);
}

#[test]
fn conflicts_inside_a_batch_retry_only_their_key() {
    let now = Instant::now();
    let mut a = Applier::new(ApplierConfig { batch_max: 10, ..cfg() });
    load(&mut a, &[("p", 1, "a"), ("p", 2, "b")]);
    let c = a.poll_call(now).unwrap();
    let conflict =
        OdooError { name: "psycopg2.errors.SerializationFailure".into(), message: "could not serialize access".into() };
    a.handle_outcome(
        now,
        c.id,
        CallOutcome::Items(vec![ItemOutcome::Failed(conflict), ItemOutcome::Applied { result: json!(1) }]),
    );
    let evs = events(&mut a);
    assert!(matches!(&evs[0], ApplierEvent::Applied { lsn: 2, .. }), "{evs:?}");
    assert!(
        matches!(&evs[1], ApplierEvent::Retrying { order_key, after, .. } if order_key == "a" && *after == Duration::from_millis(500)),
        "{evs:?}"
    );
    assert_eq!(a.poll_call(now), None);
    let c = a.poll_call(now + Duration::from_millis(500)).unwrap();
    assert_eq!(lsns(&c), vec![1]);
}

#[test]
fn refused_credentials_halt_everything_with_an_alarm() {
    let now = Instant::now();
    let mut a = Applier::new(cfg());
    load(&mut a, &[("p", 1, "a"), ("q", 2, "a")]);
    let c = a.poll_call(now).unwrap();
    let denied = OdooError { name: "odoo.exceptions.AccessDenied".into(), message: "Access Denied".into() };
    a.handle_outcome(now, c.id, CallOutcome::Failed(CallFailure::Odoo(denied)));
    assert_eq!(
        events(&mut a),
        vec![ApplierEvent::Halted {
            reason: "Odoo refused the hub's credentials (odoo.exceptions.AccessDenied: Access Denied)".into()
        }]
    );
    assert_eq!(a.poll_call(now + Duration::from_secs(3600)), None);
    assert_eq!(a.wants(), 0);
    assert!(a.is_halted().is_some());
}

#[test]
fn corrupted_records_and_untemplated_scans_are_quarantined_never_applied() {
    let mut a = Applier::new(cfg());
    let mut bad = record("p", 1, "a");
    bad.body[5] ^= 0xff;
    a.handle_pending(1, "p", J, &bad);
    let scan = Transaction {
        op: Operation::Scan(holdfast_protocol::Scan { code: "590123".into() }),
        ..record("p", 2, "a").verify().unwrap()
    }
    .to_record(2)
    .unwrap();
    a.handle_pending(2, "p", J, &scan);
    a.handle_pending(3, "other", J, &record("p", 3, "a"));
    let evs = events(&mut a);
    let names: Vec<&str> = evs
        .iter()
        .map(|e| if let ApplierEvent::Quarantined { error, .. } = e { error.name.as_str() } else { "" })
        .collect();
    assert_eq!(names, vec!["holdfast.Corrupted", "holdfast.UntemplatedScan", "holdfast.WrongPlant"]);
    assert_eq!(a.poll_call(Instant::now()), None);
}

#[test]
fn error_names_are_classified_by_name_only() {
    assert_eq!(classify("odoo.exceptions.AccessDenied"), ErrorClass::Credentials);
    for refusal in [
        "odoo.exceptions.AccessError",
        "odoo.exceptions.UserError",
        "odoo.exceptions.ValidationError",
        "odoo.exceptions.MissingError",
        "odoo.exceptions.RedirectWarning",
    ] {
        assert_eq!(classify(refusal), ErrorClass::Refusal, "{refusal}");
    }
    for conflict in
        ["psycopg2.errors.SerializationFailure", "psycopg2.errors.DeadlockDetected", "psycopg2.errors.LockNotAvailable"]
    {
        assert_eq!(classify(conflict), ErrorClass::Conflict, "{conflict}");
    }
    assert_eq!(classify("psycopg2.OperationalError"), ErrorClass::Outage);
    assert_eq!(classify("werkzeug.exceptions.NotFound"), ErrorClass::NotFound);
}

#[test]
fn a_key_with_several_transactions_in_a_failed_batch_backs_off_once() {
    let now = Instant::now();
    let mut a = Applier::new(ApplierConfig { batch_max: 10, ..cfg() });
    load(&mut a, &[("p", 1, "a"), ("p", 2, "a"), ("p", 3, "a")]);
    let c = a.poll_call(now).unwrap();
    let conflict = OdooError { name: "psycopg2.errors.SerializationFailure".into(), message: "conflict".into() };
    a.handle_outcome(
        now,
        c.id,
        CallOutcome::Items(vec![ItemOutcome::Failed(conflict), ItemOutcome::NotExecuted, ItemOutcome::NotExecuted]),
    );
    let retries: Vec<Duration> = events(&mut a)
        .into_iter()
        .filter_map(|e| if let ApplierEvent::Retrying { after, .. } = e { Some(after) } else { None })
        .collect();
    assert_eq!(retries, vec![Duration::from_millis(500)], "one retry for the key, at the first backoff step");
    let c = a.poll_call(now + Duration::from_millis(500)).unwrap();
    assert_eq!(lsns(&c), vec![1, 2, 3]);
    a.handle_outcome(now, c.id, CallOutcome::Failed(CallFailure::Unknown("timeout".into())));
    let retries: Vec<Duration> = events(&mut a)
        .into_iter()
        .filter_map(|e| if let ApplierEvent::Retrying { after, .. } = e { Some(after) } else { None })
        .collect();
    assert_eq!(retries, vec![Duration::from_secs(1)]);
}

#[test]
fn loading_again_from_an_earlier_position_doubles_nothing() {
    let now = Instant::now();
    let mut a = Applier::new(cfg());
    load(&mut a, &[("p", 1, "a"), ("p", 2, "a"), ("p", 3, "a"), ("p", 4, "a")]);
    let c1 = a.poll_call(now).unwrap();
    assert_eq!(lsns(&c1), vec![1, 2, 3]);
    // The shell rescans (a plant came back from manual offline): 1 to 3 in flight, 4 queued.
    load(&mut a, &[("p", 1, "a"), ("p", 2, "a"), ("p", 3, "a"), ("p", 4, "a")]);
    assert_eq!(a.poll_call(now), None, "key a is busy");
    a.handle_outcome(now, c1.id, applied(3));
    assert_eq!(events(&mut a).len(), 3);
    let c2 = a.poll_call(now).unwrap();
    assert_eq!(lsns(&c2), vec![4], "nothing was queued twice");
    a.handle_outcome(now, c2.id, applied(1));
    assert_eq!(events(&mut a).len(), 1);
    // Once its outcome is taken, a row the store still lists as pending may come again (the
    // shell records outcomes before it loads).
    load(&mut a, &[("p", 1, "a")]);
    assert_eq!(a.poll_call(now).map(|c| lsns(&c)), Some(vec![1]));
}

#[test]
fn a_held_plant_gets_nothing_more_and_frees_its_queue_for_the_others() {
    let now = Instant::now();
    let mut a = Applier::new(cfg());
    load(&mut a, &[("p", 1, "a"), ("p", 2, "a"), ("q", 3, "a")]);
    let queued = a.wants();
    a.set_held("p", true);
    assert_eq!(a.wants(), queued + 2, "p's queued transactions are let go");
    let c = a.poll_call(now).unwrap();
    assert_eq!((c.plant.as_str(), lsns(&c)), ("q", vec![3]));
    load(&mut a, &[("p", 4, "b")]);
    assert_eq!(a.poll_call(now), None, "nothing is sent for a held plant, even if loaded");
    a.set_held("p", false);
    load(&mut a, &[("p", 1, "a"), ("p", 2, "a"), ("p", 4, "b")]);
    let c = a.poll_call(now).unwrap();
    assert_eq!((c.plant.as_str(), lsns(&c)), ("p", vec![1, 2, 4]), "loaded again after the release");
}

#[test]
fn a_call_the_plants_policy_does_not_allow_is_quarantined_and_holds_back_only_its_key() {
    let now = Instant::now();
    let mut a = Applier::new(ApplierConfig { batch_max: 10, ..cfg() });
    let mut forbidden = record("p", 2, "a").verify().unwrap();
    forbidden.op = Operation::OdooCall(OdooCall {
        model: "res.partner".into(),
        method: "write".into(),
        args: json!([[1], {"name": "x"}]),
        kwargs: Default::default(),
    });
    load(&mut a, &[("p", 1, "a")]);
    a.handle_pending(2, "p", J, &forbidden.to_record(2).unwrap());
    load(&mut a, &[("p", 3, "a"), ("p", 4, "b"), ("z", 5, "a")]);
    let quarantined: Vec<(u64, String, String)> = events(&mut a)
        .into_iter()
        .filter_map(|e| match e {
            ApplierEvent::Quarantined { lsn, error } => Some((lsn, error.name, error.message)),
            _ => None,
        })
        .collect();
    assert_eq!(
        quarantined,
        vec![
            (
                2,
                "holdfast.NotPermitted".into(),
                "plant \"p\" may not call res.partner.write (its policy allows res.users:context_get)".into()
            ),
            (
                5,
                "holdfast.NotPermitted".into(),
                "plant \"z\" has no policy in the hub's config ([plants.z] allow = [...]), so it may make no Odoo call"
                    .into()
            ),
        ]
    );
    let c = a.poll_call(now).unwrap();
    assert_eq!(
        lsns(&c),
        vec![1, 4],
        "what came before the refusal in key a goes, 3 waits behind it, and key b is not held back"
    );
    assert_eq!(a.poll_call(now), None);
}

#[test]
fn a_result_reference_names_the_keyed_transaction_of_the_same_source_and_device() {
    let id_of = |k: &str| Transaction::keyed_id("p", SourceKind::Mes, "d", k);
    let args = json!([[{"$result": "new-mo"}], {"origin": {"$result": {"key": "new-mo", "path": [0]}}, "n": {"$ref": {"model": "m"}}}]);
    assert_eq!(
        name_results(args, &id_of),
        json!([[{"$result": {"id": id_of("new-mo").to_string()}}],
               {"origin": {"$result": {"id": id_of("new-mo").to_string(), "path": [0]}}, "n": {"$ref": {"model": "m"}}}])
    );
    assert_eq!(
        name_results(json!({"$result": 5}), &id_of),
        json!({"$result": 5}),
        "not a key: left for the inbox to refuse"
    );
}

#[test]
fn a_wizard_or_an_unknown_action_is_quarantined_naming_it_while_closing_and_notifications_are_success() {
    let now = Instant::now();
    let mut a = Applier::new(ApplierConfig { batch_max: 10, ..cfg() });
    load(&mut a, &[("p", 1, "a"), ("p", 2, "a"), ("p", 3, "b"), ("p", 4, "c"), ("p", 5, "d"), ("p", 6, "e")]);
    let c = a.poll_call(now).unwrap();
    let conflict = json!({"name": "Conflict in Inventory Adjustment", "type": "ir.actions.act_window",
                          "res_model": "stock.inventory.conflict", "target": "new", "context": {}});
    let form = json!({"type": "ir.actions.act_window", "res_model": "stock.picking", "res_id": 42});
    let close = json!({"type": "ir.actions.act_window_close"});
    let note = json!({"type": "ir.actions.client", "tag": "display_notification", "params": {}});
    let load_refused = json!({"ids": false, "messages": [{"type": "error", "message": "No matching record"}, {"type": "warning", "message": "w"}]});
    let outcomes = [conflict, json!(true), form.clone(), close.clone(), note.clone(), load_refused];
    a.handle_outcome(
        now,
        c.id,
        CallOutcome::Items(outcomes.into_iter().map(|result| ItemOutcome::Applied { result }).collect()),
    );
    let wizard = OdooError {
        name: "holdfast.Wizard".into(),
        message:
            "Odoo asks a person to decide in the stock.inventory.conflict wizard (Conflict in Inventory Adjustment)"
                .into(),
    };
    let unknown = OdooError { name: "holdfast.UnknownAction".into(), message: form.to_string() };
    let refused = OdooError { name: "holdfast.LoadRefused".into(), message: "No matching record".into() };
    assert_eq!(
        events(&mut a),
        vec![
            ApplierEvent::Quarantined { lsn: 1, error: wizard },
            ApplierEvent::Quarantined { lsn: 3, error: unknown },
            ApplierEvent::Applied { lsn: 4, result: close },
            ApplierEvent::Applied { lsn: 5, result: note },
            ApplierEvent::Quarantined { lsn: 6, error: refused },
        ],
        "lsn 2 waits behind its key's wizard"
    );
    assert_eq!(a.poll_call(now), None);
}

/// A transaction on key `order_key` writing the records `ids` of mrp.production.
fn writing(plant: &str, seq: u64, order_key: &str, ids: serde_json::Value) -> Record {
    record_of(plant, seq, order_key, "mrp.production", "write", json!([ids, {"qty_producing": 1.0}]))
}

#[test]
fn two_keys_writing_the_same_record_never_have_calls_in_flight_at_once() {
    let now = Instant::now();
    let plants = ["p", "q"].map(|p| {
        let allow = vec!["mrp.production:write".to_owned()];
        (p.to_owned(), crate::policy::PlantPolicy { allow, company_id: None })
    });
    let policies = crate::policy::Policies::new(&plants.into_iter().collect()).unwrap();
    let mut a =
        Applier::new(ApplierConfig { calls_max: 4, batch_max: 1, policies: LivePolicies::new(policies), ..cfg() });
    let mo7 = json!({"$ref": {"model": "mrp.production", "domain": [["name", "=", "WH/MO/00007"]]}});
    a.handle_pending(1, "p", J, &writing("p", 1, "line-1", json!([7])));
    a.handle_pending(2, "q", J, &writing("q", 2, "line-2", json!([7, 8])));
    a.handle_pending(3, "p", J, &writing("p", 3, "line-3", json!([9])));
    a.handle_pending(4, "p", J, &writing("p", 4, "line-4", json!([mo7.clone()])));
    a.handle_pending(5, "q", J, &writing("q", 5, "line-5", json!([mo7])));
    let first: Vec<Call> = std::iter::from_fn(|| a.poll_call(now)).collect();
    assert_eq!(
        first.iter().map(lsns).collect::<Vec<_>>(),
        vec![vec![1], vec![5], vec![3]],
        "2 waits for record 7, 4 for the same reference as 5"
    );
    a.handle_outcome(now, first[0].id, applied(1));
    let c = a.poll_call(now).unwrap();
    assert_eq!(lsns(&c), vec![2], "record 7 is free again");
    assert_eq!(a.poll_call(now), None, "4 still waits for the reference");
    a.handle_outcome(now, first[1].id, applied(1));
    let c4 = a.poll_call(now).unwrap();
    assert_eq!(lsns(&c4), vec![4], "the reference is free again");
    a.handle_pending(6, "q", J, &writing("q", 6, "line-6", json!([mo7_again()])));
    assert_eq!(a.poll_call(now), None, "6 waits for the reference 4 holds");
    a.handle_outcome(now, c4.id, CallOutcome::Failed(CallFailure::Unknown("timeout".into())));
    assert_eq!(lsns(&a.poll_call(now).unwrap()), vec![6], "a failed call frees its records too");
}

fn mo7_again() -> serde_json::Value {
    json!({"$ref": {"model": "mrp.production", "domain": [["name", "=", "WH/MO/00007"]]}})
}

#[test]
fn in_one_batch_a_key_stops_at_a_record_another_call_writes() {
    let now = Instant::now();
    let allow = vec!["mrp.production:write".to_owned()];
    let plants = [("p".to_owned(), crate::policy::PlantPolicy { allow, company_id: None })];
    let policies = crate::policy::Policies::new(&plants.into_iter().collect()).unwrap();
    let mut a =
        Applier::new(ApplierConfig { calls_max: 4, batch_max: 10, policies: LivePolicies::new(policies), ..cfg() });
    a.handle_pending(1, "p", J, &writing("p", 1, "a", json!([7])));
    let c1 = a.poll_call(now).unwrap();
    a.handle_pending(2, "p", J, &writing("p", 2, "b", json!([8])));
    a.handle_pending(3, "p", J, &writing("p", 3, "b", json!([7])));
    a.handle_pending(4, "p", J, &writing("p", 4, "c", json!(8)));
    let c2 = a.poll_call(now).unwrap();
    assert_eq!(lsns(&c2), vec![2, 4], "3 waits for the call writing 7; 4 shares record 8 with 2 inside one batch");
    a.handle_outcome(now, c1.id, applied(1));
    a.handle_outcome(now, c2.id, applied(2));
    assert_eq!(lsns(&a.poll_call(now).unwrap()), vec![3]);
}

#[test]
fn a_key_that_keeps_conflicting_spends_its_retry_budget_then_is_quarantined_while_outages_retry_forever() {
    let mut now = Instant::now();
    let mut a = Applier::new(ApplierConfig { batch_max: 10, ..cfg() });
    load(&mut a, &[("p", 1, "a"), ("p", 2, "a"), ("p", 3, "b")]);
    let conflict = OdooError {
        name: "psycopg2.errors.SerializationFailure".into(),
        message: "could not serialize access due to concurrent update".into(),
    };
    let outage = OdooError { name: "psycopg2.OperationalError".into(), message: "connection refused".into() };
    for round in 0..4 {
        let c = a.poll_call(now).unwrap();
        assert_eq!(lsns(&c), vec![1, 2, 3], "round {round}");
        let outcomes =
            vec![ItemOutcome::Failed(conflict.clone()), ItemOutcome::NotExecuted, ItemOutcome::Failed(outage.clone())];
        a.handle_outcome(now, c.id, CallOutcome::Items(outcomes));
        now += Duration::from_secs(5);
    }
    let quarantined: Vec<ApplierEvent> =
        events(&mut a).into_iter().filter(|e| matches!(e, ApplierEvent::Quarantined { .. })).collect();
    let exhausted = OdooError {
        name: conflict.name.clone(),
        message: "could not serialize access due to concurrent update (still failing after 4 tries)".into(),
    };
    assert_eq!(quarantined, vec![ApplierEvent::Quarantined { lsn: 1, error: exhausted }], "budget 3: the 4th conflict");
    // Key a is blocked (2 waits in the ledger); key b's outage goes on being retried.
    for _ in 0..6 {
        let c = a.poll_call(now).unwrap();
        assert_eq!(lsns(&c), vec![3]);
        a.handle_outcome(now, c.id, CallOutcome::Items(vec![ItemOutcome::Failed(outage.clone())]));
        now += Duration::from_secs(5);
    }
    assert!(events(&mut a).iter().all(|e| !matches!(e, ApplierEvent::Quarantined { .. })));
}

#[test]
fn a_success_restores_the_retry_budget() {
    let mut now = Instant::now();
    let mut a = Applier::new(cfg());
    load(&mut a, &[("p", 1, "a"), ("p", 2, "a")]);
    let conflict = OdooError { name: "psycopg2.errors.DeadlockDetected".into(), message: "deadlock".into() };
    let fail = CallOutcome::Failed(CallFailure::Odoo(conflict));
    for _ in 0..3 {
        let c = a.poll_call(now).unwrap();
        a.handle_outcome(now, c.id, fail.clone());
        now += Duration::from_secs(5);
    }
    let c = a.poll_call(now).unwrap();
    assert_eq!(lsns(&c), vec![1, 2]);
    a.handle_outcome(
        now,
        c.id,
        CallOutcome::Items(vec![
            ItemOutcome::Applied { result: json!(1) },
            ItemOutcome::Failed(OdooError {
                name: "psycopg2.errors.DeadlockDetected".into(),
                message: "deadlock".into(),
            }),
        ]),
    );
    now += Duration::from_secs(5);
    for _ in 0..2 {
        let c = a.poll_call(now).unwrap();
        a.handle_outcome(now, c.id, fail.clone());
        now += Duration::from_secs(5);
    }
    assert!(
        events(&mut a).iter().all(|e| !matches!(e, ApplierEvent::Quarantined { .. })),
        "lsn 2's three conflicts after lsn 1 applied are within its own budget"
    );
    let c = a.poll_call(now).unwrap();
    a.handle_outcome(now, c.id, fail);
    assert!(events(&mut a).iter().any(|e| matches!(e, ApplierEvent::Quarantined { lsn: 2, .. })));
}

#[test]
fn plants_are_served_by_priority_one_batch_each_per_round() {
    let now = Instant::now();
    let policies = everything_for(&["a", "b", "c"]);
    let mut a =
        Applier::new(ApplierConfig { calls_max: 100, batch_max: 1, policies: LivePolicies::new(policies), ..cfg() });
    load(&mut a, &[("a", 1, "x"), ("a", 2, "y"), ("b", 3, "x"), ("b", 4, "y"), ("c", 5, "x"), ("c", 6, "y")]);
    a.set_priority("a", 2);
    a.set_priority("b", 1);
    a.set_priority("c", 3);
    let plants: Vec<String> = std::iter::from_fn(|| a.poll_call(now)).map(|c| c.plant).collect();
    assert_eq!(plants, ["b", "a", "c", "b", "a", "c"], "each round in priority order, each plant once");
}

#[test]
fn the_coordinators_limit_caps_calls_in_flight_below_calls_max() {
    let now = Instant::now();
    let policies = everything_for(&["a", "b", "c"]);
    let mut a =
        Applier::new(ApplierConfig { calls_max: 2, batch_max: 1, policies: LivePolicies::new(policies), ..cfg() });
    load(&mut a, &[("a", 1, "x"), ("b", 2, "x"), ("c", 3, "x")]);
    a.set_limit(1);
    let first = a.poll_call(now).unwrap();
    assert_eq!(a.poll_call(now), None, "the limit is 1");
    assert_eq!(a.poll_timeout(), None, "at the limit only an outcome frees a slot");
    a.set_limit(5);
    assert!(a.poll_call(now).is_some());
    assert_eq!(a.poll_call(now), None, "calls_max (2) stays the ceiling");
    a.handle_outcome(now, first.id, applied(1));
    assert!(a.poll_call(now).is_some());
}

#[test]
fn a_rate_cap_spaces_a_plants_batches() {
    let now = Instant::now();
    let mut a = Applier::new(ApplierConfig { calls_max: 10, batch_max: 5, ..cfg() });
    let rows: Vec<(&str, u64, &str)> = (1..=20).map(|i| ("p", i, if i % 2 == 0 { "x" } else { "y" })).collect();
    load(&mut a, &rows);
    a.set_rate_cap("p", Some(10.0));
    let c1 = a.poll_call(now).unwrap();
    assert_eq!(c1.items.len(), 5);
    assert_eq!(a.poll_call(now), None, "5 transactions at 10/s: the next batch in 500 ms");
    assert_eq!(a.poll_timeout(), Some(now + Duration::from_millis(500)));
    assert!(a.poll_call(now + Duration::from_millis(499)).is_none());
    assert!(a.poll_call(now + Duration::from_millis(500)).is_some());
    a.set_rate_cap("p", None);
    assert!(a.poll_call(now + Duration::from_millis(500)).is_none(), "both keys busy");
}
