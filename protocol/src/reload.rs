//! What a reload (SIGHUP) changes: the keys of a config file that differ between the text a
//! process runs with and the text on disk, split into those it takes while running and those
//! that wait for a restart. Both binaries use it, each with its own list of live keys.

use std::collections::BTreeMap;

/// The keys that changed, by dotted path (`journal.rows_max`, `plants.plant-a`), sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Taken at once by the running process.
    pub live: Vec<String>,
    /// Kept at their running values until the next restart.
    pub restart: Vec<String>,
}

/// Compares two config texts; `live` lists the keys (or whole tables) the running process
/// takes. Arrays count as one value: `[[stations]]` changed is `stations`.
pub fn changes(running: &str, on_disk: &str, live: &[&str]) -> Result<Changes, String> {
    let parse = |text: &str| -> Result<BTreeMap<String, toml::Value>, String> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.message().to_owned())?;
        let mut leaves = BTreeMap::new();
        flatten("", &toml::Value::Table(table), &mut leaves);
        Ok(leaves)
    };
    let (old, new) = (parse(running)?, parse(on_disk)?);
    let mut out = Changes::default();
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for key in keys {
        if old.get(key) == new.get(key) {
            continue;
        }
        let is_live = live.iter().any(|l| key == l || key.strip_prefix(l).is_some_and(|rest| rest.starts_with('.')));
        if is_live { &mut out.live } else { &mut out.restart }.push(key.clone());
    }
    Ok(out)
}

/// One line for the log and for systemd's status (`systemctl status`): what a reload did.
pub fn summary(result: &Result<Changes, String>) -> String {
    match result {
        // One line: systemd's STATUS= and a log line end at the first newline.
        Err(why) => {
            format!("config reload refused, nothing changed: {}", why.split_whitespace().collect::<Vec<_>>().join(" "))
        }
        Ok(c) => {
            let list = |keys: &[String]| if keys.is_empty() { "none".to_owned() } else { keys.join(", ") };
            format!(
                "config reloaded; changed since start and in force: {}; changed but waiting for a restart: {}",
                list(&c.live),
                list(&c.restart)
            )
        }
    }
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        leaf => {
            out.insert(prefix.to_owned(), leaf.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE: &[&str] = &["journal.rows_max", "plants"];

    #[test]
    fn changed_keys_are_split_into_live_and_restart() {
        let old = "plant = \"a\"\n[journal]\nrows_max = 10\npath = \"j.db\"\n[plants.a]\nallow = [\"x:y\"]\n";
        let new = "plant = \"a\"\n[journal]\nrows_max = 20\npath = \"k.db\"\n[plants.a]\nallow = [\"x:y\", \"x:z\"]\n[plants.b]\nallow = []\n";
        let c = changes(old, new, LIVE).unwrap();
        assert_eq!(c.live, ["journal.rows_max", "plants.a.allow", "plants.b.allow"]);
        assert_eq!(c.restart, ["journal.path"]);
    }

    #[test]
    fn a_prefix_of_a_live_key_is_not_live_and_removals_count() {
        let c = changes("[journal]\nrows_max_x = 1\nrows_max = 1\n", "[journal]\n", LIVE).unwrap();
        assert_eq!(c.live, ["journal.rows_max"]);
        assert_eq!(c.restart, ["journal.rows_max_x"]);
        assert_eq!(changes("a = 1\n", "a = 1\n", LIVE).unwrap(), Changes::default());
    }

    #[test]
    fn the_summary_names_every_key() {
        let c = Changes { live: vec!["a.b".into(), "c".into()], restart: vec![] };
        assert_eq!(
            summary(&Ok(c)),
            "config reloaded; changed since start and in force: a.b, c; changed but waiting for a restart: none"
        );
        assert_eq!(summary(&Err("x: bad".into())), "config reload refused, nothing changed: x: bad");
    }

    #[test]
    fn a_text_that_is_not_toml_is_an_error() {
        assert!(changes("a = 1\n", "a = \n", LIVE).is_err());
    }
}
