//! The shipped example configs parse, and they work together: the agent reaches the hub where
//! the hub listens, the plant matches its certificate's file, and the hub's Odoo credentials are
//! the Odoo double's.

use std::path::Path;

use tests::odoo_sim::SimConfig;

fn read(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn examples_parse_and_fit_together() {
    let base = Path::new("/etc/holdfast");
    let hub = holdfast_hub::config::Config::parse(&read("hub.example.toml"), base).unwrap();
    let agent = holdfast_agent::config::Config::parse(&read("agent.example.toml"), base).unwrap();
    assert_eq!(agent.hub.addresses, [hub.sync.listen.to_string()], "the agent dials where the hub listens");
    assert_eq!(agent.hub.ca, hub.sync.ca, "one authority signs both");
    assert_eq!(agent.hub.cert, base.join(format!("certs/{}.pem", agent.plant)));
    assert_ne!(agent.http.listen, hub.api.listen);
    assert_eq!(agent.metrics.as_ref().map(|m| m.listen.port()), Some(9464));
    let sim = SimConfig::default();
    assert_eq!(
        (hub.odoo.database.as_str(), hub.odoo.login.as_str(), hub.odoo.api_key.as_str()),
        (sim.database.as_str(), sim.login.as_str(), sim.api_key.as_str())
    );
    assert_eq!(hub.odoo.url, "http://127.0.0.1:8069", "odoo-sim's default address");
    assert_eq!(
        agent.odoo.as_ref().map(|o| o.url.as_str()),
        Some(hub.odoo.url.as_str()),
        "the plant probes the hub's Odoo"
    );
    // The example plant may make the calls its example stations make.
    let policy = &hub.plants[&agent.plant];
    for st in &agent.stations {
        let pair = format!("{}:{}", st.template.model, st.template.method);
        assert!(policy.allow.contains(&pair), "station {} calls {pair}, which plant {} may not", st.name, agent.plant);
    }
}
