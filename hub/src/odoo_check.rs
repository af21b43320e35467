//! `holdfast-hub odoo check`: what an operator runs against a real Odoo before (or instead of)
//! trusting the hub with it. It climbs ODOO.md's ladder with the hub's own configuration and
//! stops at the first rung that fails: the health route, `common.version`,
//! `common.authenticate`, the `holdfast_inbox` addon's module, and a harmless authenticated read
//! (`res.users` `context_get`), timing each call.
//!
//! Exit codes (sysexits): 0 usable; 69 unreachable or its database server down; 76 an answer
//! that is not Odoo's; 77 the credentials refused; 78 the addon missing for `mode = "inbox"`.

use std::time::Duration;

use holdfast_protocol::probe::error_chain;
use serde::Serialize;
use serde_json::{Value, json};

use crate::config::{DeliveryMode, OdooConfig};
use crate::odoo::{OdooClient, RpcError};

/// How one rung went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    /// Usable, but worth knowing (Odoo 16 does not report its database server).
    Warn,
    Fail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Step {
    pub name: &'static str,
    pub outcome: Outcome,
    pub detail: String,
    pub ms: u64,
}

/// The whole check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub url: String,
    pub database: String,
    pub login: String,
    pub steps: Vec<Step>,
    /// `usable`, or what stops the hub from using this Odoo.
    pub verdict: String,
    pub exit_code: u8,
}

pub const EXIT_UNAVAILABLE: u8 = 69;
pub const EXIT_PROTOCOL: u8 = 76;
pub const EXIT_NOPERM: u8 = 77;
pub const EXIT_CONFIG: u8 = 78;

/// Runs the ladder against the configured Odoo.
pub async fn check(cfg: &OdooConfig) -> Report {
    let mut report = Report {
        url: cfg.url.clone(),
        database: cfg.database.clone(),
        login: cfg.login.clone(),
        steps: Vec::new(),
        verdict: "usable".into(),
        exit_code: 0,
    };
    let timeout = cfg.timeout.min(Duration::from_secs(30));
    let http = match reqwest::Client::builder().timeout(timeout).build() {
        Ok(c) => c,
        Err(e) => return report.fail("reachable", format!("no HTTP client: {e}"), 0, EXIT_UNAVAILABLE),
    };
    let odoo = match OdooClient::new(&OdooConfig { timeout, ..cfg.clone() }) {
        Ok(c) => c,
        Err(e) => return report.fail("reachable", format!("no HTTP client: {e}"), 0, EXIT_UNAVAILABLE),
    };

    // 1. The health route, with the database server's state where the version reports it.
    let base = cfg.url.trim_end_matches('/');
    let (health, ms) = timed(http.get(format!("{base}/web/health?db_server_status=1")).send()).await;
    match health {
        Err(e) => {
            return report.fail("reachable", format!("GET /web/health: {}", error_chain(&e)), ms, EXIT_UNAVAILABLE);
        }
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body: Option<Value> = resp.json().await.ok();
            match (status, body.as_ref().and_then(|b| b.get("db_server_status")).and_then(Value::as_bool)) {
                (200, Some(true)) => report.ok("reachable", "GET /web/health: pass, database server reachable".into(), ms),
                (200, None) => report.step(
                    "reachable",
                    Outcome::Warn,
                    "GET /web/health: pass; this version does not report its database server (16.0), the login below tells".into(),
                    ms,
                ),
                (404, _) => report.step(
                    "reachable",
                    Outcome::Warn,
                    "GET /web/health: 404 (before Odoo 15.0 there is no health route), the calls below tell".into(),
                    ms,
                ),
                (_, Some(false)) => {
                    return report.fail(
                        "reachable",
                        format!("GET /web/health: {status}, Odoo answers but its database server is unreachable"),
                        ms,
                        EXIT_UNAVAILABLE,
                    );
                }
                (code, _) => {
                    return report.fail(
                        "reachable",
                        format!("GET /web/health answered HTTP {code}: not Odoo, or a proxy in front of it failing"),
                        ms,
                        EXIT_UNAVAILABLE,
                    );
                }
            }
        }
    }

    // 2. The version (parsed leniently: "saas~17", "17.0+e").
    let (version, ms) = timed(odoo.version()).await;
    match version {
        Ok(v) => match v.get("server_version").and_then(Value::as_str) {
            Some(s) => {
                let major = major_version(&v);
                let detail = match major {
                    Some(m) if (16..=18).contains(&m) => format!("Odoo {s}"),
                    Some(m) => format!("Odoo {s}: Holdfast is tested against 16.0 to 18.0 (this is {m})"),
                    None => format!("Odoo {s}: its major version could not be read"),
                };
                let outcome = if major.is_some_and(|m| (16..=18).contains(&m)) { Outcome::Ok } else { Outcome::Warn };
                report.step("version", outcome, detail, ms);
            }
            None => return report.fail("version", format!("common.version answered {v}"), ms, EXIT_PROTOCOL),
        },
        Err(e) => return report.fail_rpc("version", &e, ms),
    }

    // 3. The login, once (Odoo throttles failed logins per client address).
    let (uid, ms) = timed(odoo.uid()).await;
    let uid = match uid {
        Ok(uid) => uid,
        Err(e) => return report.fail_rpc("authentication", &e, ms),
    };
    report.ok("authentication", format!("login {:?} on database {:?} is uid {uid}", cfg.login, cfg.database), ms);

    // 4. The addon, which `inbox` mode needs.
    let (module, ms) = timed(odoo.execute_kw(
        "ir.module.module",
        "search_read",
        json!([[["name", "=", "holdfast_inbox"]]]),
        json!({"fields": ["state"]}),
    ))
    .await;
    let required = cfg.mode == DeliveryMode::Inbox;
    match module {
        Ok(rows) => {
            let state = rows.get(0).and_then(|r| r.get("state")).and_then(Value::as_str).map(str::to_owned);
            match (state.as_deref(), required) {
                (Some("installed"), _) => report.ok("addon", "holdfast_inbox is installed".into(), ms),
                (state, true) => {
                    let seen = state.map_or("not present".to_owned(), |s| format!("in state {s:?}"));
                    return report.fail(
                        "addon",
                        format!(
                            "holdfast_inbox is {seen}: install deploy/odoo/holdfast_inbox, or set odoo.mode = \"plain\""
                        ),
                        ms,
                        EXIT_CONFIG,
                    );
                }
                (state, false) => report.step(
                    "addon",
                    Outcome::Warn,
                    format!("holdfast_inbox is {}: not needed in this mode", state.unwrap_or("not present")),
                    ms,
                ),
            }
        }
        Err(e) => return report.fail_rpc("addon", &e, ms),
    }

    // 5. A harmless authenticated call: proves the key works for object calls too.
    let (read, ms) = timed(odoo.execute_kw("res.users", "context_get", json!([]), json!({}))).await;
    match read {
        Ok(ctx) if ctx.is_object() => report.ok("read", "res.users context_get answered".into(), ms),
        Ok(other) => return report.fail("read", format!("res.users context_get answered {other}"), ms, EXIT_PROTOCOL),
        Err(e) => return report.fail_rpc("read", &e, ms),
    }
    let mut times: Vec<u64> = report.steps.iter().map(|s| s.ms).collect();
    times.sort_unstable();
    report.verdict =
        format!("usable (median call {} ms, slowest {} ms)", times[times.len() / 2], times[times.len() - 1]);
    report
}

impl Report {
    fn step(&mut self, name: &'static str, outcome: Outcome, detail: String, ms: u64) {
        self.steps.push(Step { name, outcome, detail, ms });
    }

    fn ok(&mut self, name: &'static str, detail: String, ms: u64) {
        self.step(name, Outcome::Ok, detail, ms);
    }

    fn fail(mut self, name: &'static str, detail: String, ms: u64, exit_code: u8) -> Self {
        self.verdict = format!("not usable: {name}: {detail}");
        self.step(name, Outcome::Fail, detail, ms);
        self.exit_code = exit_code;
        self
    }

    fn fail_rpc(self, name: &'static str, e: &RpcError, ms: u64) -> Self {
        let code = match e {
            RpcError::Unknown(_) => EXIT_UNAVAILABLE,
            RpcError::CredentialsRefused(_) => EXIT_NOPERM,
            RpcError::Odoo(o) if o.name == "odoo.exceptions.AccessDenied" => EXIT_NOPERM,
            RpcError::Odoo(o) if o.name == "psycopg2.OperationalError" => EXIT_UNAVAILABLE,
            RpcError::Odoo(_) => EXIT_PROTOCOL,
        };
        self.fail(name, e.to_string(), ms, code)
    }

    /// The report as an operator reads it.
    pub fn text(&self) -> String {
        let mut out = format!("Odoo at {}, database {:?}, login {:?}\n", self.url, self.database, self.login);
        for s in &self.steps {
            let mark = match s.outcome {
                Outcome::Ok => "ok  ",
                Outcome::Warn => "warn",
                Outcome::Fail => "FAIL",
            };
            out.push_str(&format!("  {mark} {:<15} {} ({} ms)\n", s.name, s.detail, s.ms));
        }
        out.push_str(&format!("verdict: {}\n", self.verdict));
        out
    }
}

/// `server_version_info[0]`, an integer or a string such as `"saas~17"`.
fn major_version(v: &Value) -> Option<u64> {
    let first = v.get("server_version_info").and_then(|i| i.get(0))?;
    first.as_u64().or_else(|| {
        let s = first.as_str()?;
        s.rsplit(|c: char| !c.is_ascii_digit()).find(|p| !p.is_empty())?.parse().ok()
    })
}

async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, u64) {
    let start = tokio::time::Instant::now();
    let out = f.await;
    (out, start.elapsed().as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_versions_are_read_leniently() {
        for (info, want) in [
            (json!([17, 0, 0, "final", 0, ""]), Some(17)),
            (json!(["saas~17", 2, 0, "final", 0, "e"]), Some(17)),
            (json!(["x"]), None),
        ] {
            assert_eq!(major_version(&json!({"server_version_info": info})), want, "{info}");
        }
    }
}
