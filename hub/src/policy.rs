//! Per-plant policy: the Odoo calls each plant may make, and optionally the company they run
//! in. The applier checks every transaction before it is sent; anything else is quarantined as
//! `holdfast.NotPermitted` (audited like every quarantine) and blocks only its ordering key.
//!
//! In the hub's config:
//!
//! ```toml
//! [plants.plant-a]
//! allow = ["mrp.production:write", "stock.move:write", "stock.quant:create"]
//! company_id = 3
//! ```
//!
//! A plant without a `[plants.<id>]` table may make no call at all: a gateway enrolled before its
//! policy was written has its transactions set aside, never applied by default.

use std::collections::{BTreeMap, BTreeSet};

use holdfast_protocol::OdooCall;
use serde::Deserialize;
use serde_json::{Value, json};

/// One plant's policy, as configured.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PlantPolicy {
    /// `model:method` pairs the plant may call.
    pub allow: Vec<String>,
    /// The plant's company in Odoo: its calls run with it as the only allowed company, and a
    /// call whose context names another is refused.
    #[serde(default)]
    pub company_id: Option<i64>,
}

/// Every plant's policy, checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policies {
    plants: BTreeMap<String, Checked>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Checked {
    allow: BTreeSet<(String, String)>,
    company_id: Option<i64>,
}

/// The policies in force, shared by every applier of the hub; a config reload replaces them.
#[derive(Clone, Debug, Default)]
pub struct LivePolicies(std::sync::Arc<std::sync::RwLock<Policies>>);

impl LivePolicies {
    pub fn new(policies: Policies) -> Self {
        Self(std::sync::Arc::new(std::sync::RwLock::new(policies)))
    }

    /// Puts `policies` in force: every call checked from now on is judged by them.
    pub fn replace(&self, policies: Policies) {
        *self.0.write().expect("policies lock") = policies;
    }

    /// [`Policies::admit`] by the policies in force.
    pub fn admit(&self, plant: &str, call: &mut OdooCall) -> Result<(), String> {
        self.0.read().expect("policies lock").admit(plant, call)
    }
}

impl Policies {
    /// Checks the configured tables; every problem is reported, named by its config path.
    pub fn new(plants: &BTreeMap<String, PlantPolicy>) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut checked = BTreeMap::new();
        for (plant, policy) in plants {
            let mut allow = BTreeSet::new();
            for entry in &policy.allow {
                match parse_pair(entry) {
                    Ok(pair) => {
                        allow.insert(pair);
                    }
                    Err(why) => problems.push(format!("plants.{plant}.allow: {entry:?} {why}")),
                }
            }
            if policy.company_id.is_some_and(|c| c <= 0) {
                problems.push(format!("plants.{plant}.company_id: must be a positive Odoo record id"));
            }
            checked.insert(plant.clone(), Checked { allow, company_id: policy.company_id });
        }
        if problems.is_empty() { Ok(Self { plants: checked }) } else { Err(problems) }
    }

    /// Whether `plant` may make `call`; when it may, the call is given the plant's company in
    /// its context. The refusal says why, in words for the operator.
    pub fn admit(&self, plant: &str, call: &mut OdooCall) -> Result<(), String> {
        let Some(policy) = self.plants.get(plant) else {
            return Err(format!(
                "plant {plant:?} has no policy in the hub's config ([plants.{plant}] allow = [...]), so it may make no Odoo call"
            ));
        };
        if !policy.allow.contains(&(call.model.clone(), call.method.clone())) {
            return Err(format!(
                "plant {plant:?} may not call {}.{} (its policy allows {})",
                call.model,
                call.method,
                if policy.allow.is_empty() {
                    "nothing".to_owned()
                } else {
                    policy.allow.iter().map(|(m, f)| format!("{m}:{f}")).collect::<Vec<_>>().join(", ")
                }
            ));
        }
        let Some(company) = policy.company_id else { return Ok(()) };
        let kwargs = &mut call.kwargs;
        let context = kwargs.entry("context").or_insert_with(|| json!({}));
        let Value::Object(context) = context else {
            return Err(format!("the call's context is not an object: {context}"));
        };
        for key in ["allowed_company_ids", "force_company", "company_id"] {
            if let Some(named) = context.get(key) {
                let named_ids: Vec<i64> = match named {
                    Value::Array(ids) => ids.iter().filter_map(Value::as_i64).collect(),
                    other => other.as_i64().into_iter().collect(),
                };
                if named_ids.iter().any(|id| *id != company) {
                    return Err(format!(
                        "the call's context names company {named} in {key:?}, but plant {plant:?} works in company {company}"
                    ));
                }
            }
        }
        context.insert("allowed_company_ids".into(), json!([company]));
        Ok(())
    }
}

/// `model:method`, as Odoo names them; private methods (a leading `_`) are never allowed.
fn parse_pair(entry: &str) -> Result<(String, String), &'static str> {
    let (model, method) = entry.split_once(':').ok_or("must be model:method, for example \"stock.move:write\"")?;
    let name_ok = |s: &str| {
        !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
    };
    if !name_ok(model) || model.starts_with('.') || model.ends_with('.') {
        return Err("has a model that is not an Odoo model name (lowercase, digits, '_' and '.')");
    }
    if !name_ok(method) || method.contains('.') {
        return Err("has a method that is not an Odoo method name (lowercase, digits and '_')");
    }
    if method.starts_with('_') {
        return Err("names a private method: Odoo refuses those over RPC");
    }
    Ok((model.to_owned(), method.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(model: &str, method: &str, kwargs: Value) -> OdooCall {
        OdooCall {
            model: model.into(),
            method: method.into(),
            args: json!([]),
            kwargs: serde_json::from_value(kwargs).unwrap(),
        }
    }

    fn policies() -> Policies {
        let mut plants = BTreeMap::new();
        plants.insert(
            "plant-a".to_owned(),
            PlantPolicy { allow: vec!["stock.move:write".into(), "mrp.production:write".into()], company_id: Some(3) },
        );
        plants.insert("plant-b".to_owned(), PlantPolicy { allow: vec!["stock.move:write".into()], company_id: None });
        Policies::new(&plants).unwrap()
    }

    #[test]
    fn allowed_pairs_pass_and_get_the_plants_company() {
        let p = policies();
        let mut c = call("stock.move", "write", json!({"context": {"lang": "de_DE"}}));
        p.admit("plant-a", &mut c).unwrap();
        assert_eq!(
            serde_json::to_value(&c.kwargs).unwrap(),
            json!({"context": {"lang": "de_DE", "allowed_company_ids": [3]}})
        );
        let mut c = call("stock.move", "write", json!({}));
        p.admit("plant-b", &mut c).unwrap();
        assert_eq!(serde_json::to_value(&c.kwargs).unwrap(), json!({}), "no company configured: the call is unchanged");
    }

    #[test]
    fn anything_else_is_refused_with_the_reason() {
        let p = policies();
        assert_eq!(
            p.admit("plant-b", &mut call("res.users", "write", json!({}))).unwrap_err(),
            "plant \"plant-b\" may not call res.users.write (its policy allows stock.move:write)"
        );
        assert_eq!(
            p.admit("plant-z", &mut call("stock.move", "write", json!({}))).unwrap_err(),
            "plant \"plant-z\" has no policy in the hub's config ([plants.plant-z] allow = [...]), so it may make no Odoo call"
        );
        assert_eq!(
            p.admit("plant-a", &mut call("stock.move", "write", json!({"context": {"allowed_company_ids": [3, 4]}})))
                .unwrap_err(),
            "the call's context names company [3,4] in \"allowed_company_ids\", but plant \"plant-a\" works in company 3"
        );
        let mut own = call("stock.move", "write", json!({"context": {"allowed_company_ids": [3]}}));
        p.admit("plant-a", &mut own).unwrap();
    }

    #[test]
    fn bad_entries_are_named_by_their_config_path() {
        let mut plants = BTreeMap::new();
        plants.insert(
            "plant-a".to_owned(),
            PlantPolicy {
                allow: vec![
                    "stock.move".into(),
                    "res.users:_sudo".into(),
                    "Stock.Move:write".into(),
                    "ok.model:write".into(),
                ],
                company_id: Some(0),
            },
        );
        assert_eq!(
            Policies::new(&plants).unwrap_err(),
            vec![
                "plants.plant-a.allow: \"stock.move\" must be model:method, for example \"stock.move:write\"".to_owned(),
                "plants.plant-a.allow: \"res.users:_sudo\" names a private method: Odoo refuses those over RPC".to_owned(),
                "plants.plant-a.allow: \"Stock.Move:write\" has a model that is not an Odoo model name (lowercase, digits, '_' and '.')"
                    .to_owned(),
                "plants.plant-a.company_id: must be a positive Odoo record id".to_owned(),
            ]
        );
    }
}
