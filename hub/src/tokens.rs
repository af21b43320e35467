//! API tokens: who may change what through the hub's API. A token is 32 random bytes in hex,
//! shown once when made; the hub keeps only its SHA-256, with a name and a role, in a JSON file
//! (mode 0600) that it reads again whenever it changes, so a token made or removed takes effect
//! without a restart.
//!
//! Roles, each including the ones before: `viewer` (reads), `operator` (quarantine retry and
//! park, reopening verbs), `admin` (tokens, failover, revocation). The first admin token is made
//! with `holdfast-hub token create --bootstrap`, which works only while the file holds no admin
//! token; every later one through the API.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Self::Viewer),
            "operator" => Ok(Self::Operator),
            "admin" => Ok(Self::Admin),
            other => Err(format!("{other:?} is not a role: use viewer, operator or admin")),
        }
    }
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

/// One token as stored: never the token itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub name: String,
    pub role: Role,
    /// SHA-256 of the token, hex.
    pub sha256: String,
    pub created_at_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a token file: {detail}")]
    Format { path: String, detail: String },
    #[error("{0}")]
    Refused(String),
    #[error("no token is named {0:?}")]
    NotFound(String),
}

/// The token file.
#[derive(Debug)]
pub struct Tokens {
    path: PathBuf,
    cache: Mutex<(Option<SystemTime>, Vec<TokenEntry>)>,
}

/// A new token and its hash.
pub fn generate() -> Result<(String, String), TokenError> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| TokenError::Refused("the operating system's random generator failed".into()))?;
    let token = hex::encode(bytes);
    let hash = hash(&token);
    Ok((token, hash))
}

pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

impl Tokens {
    pub fn new(path: &Path) -> Self {
        Self { path: path.to_owned(), cache: Mutex::new((None, Vec::new())) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every token, read again when the file changed. A missing file holds none.
    pub fn entries(&self) -> Result<Vec<TokenEntry>, TokenError> {
        let modified = match std::fs::metadata(&self.path) {
            Ok(m) => m.modified().ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(TokenError::Io { path: self.path.display().to_string(), source: e }),
        };
        let mut cache = self.cache.lock().expect("tokens lock");
        if cache.0.is_none() || cache.0 != modified {
            let text = std::fs::read_to_string(&self.path)
                .map_err(|e| TokenError::Io { path: self.path.display().to_string(), source: e })?;
            let entries: Vec<TokenEntry> = if text.trim().is_empty() {
                Vec::new()
            } else {
                serde_json::from_str(&text)
                    .map_err(|e| TokenError::Format { path: self.path.display().to_string(), detail: e.to_string() })?
            };
            *cache = (modified, entries);
        }
        Ok(cache.1.clone())
    }

    /// The name and role of the token presented, if it is one.
    pub fn authenticate(&self, token: &str) -> Result<Option<(String, Role)>, TokenError> {
        let presented = hash(token);
        Ok(self
            .entries()?
            .into_iter()
            .find(|e| constant_time_eq(e.sha256.as_bytes(), presented.as_bytes()))
            .map(|e| (e.name, e.role)))
    }

    /// Adds a token; with `bootstrap`, only while there is none. Returns the token (shown once).
    pub fn create(&self, name: &str, role: Role, bootstrap: bool, now_ms: i64) -> Result<String, TokenError> {
        if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
        {
            return Err(TokenError::Refused(format!(
                "{name:?} is not a token name: 1 to 64 letters, digits and - _ . @"
            )));
        }
        let mut entries = self.entries()?;
        let admins = entries.iter().filter(|e| e.role == Role::Admin).count();
        if bootstrap && admins > 0 {
            return Err(TokenError::Refused(format!(
                "{} already holds {admins} admin token(s): --bootstrap makes only the first; make more through the API with an admin token",
                self.path.display(),
            )));
        }
        if entries.iter().any(|e| e.name == name) {
            return Err(TokenError::Refused(format!("a token named {name:?} exists")));
        }
        let (token, sha256) = generate()?;
        entries.push(TokenEntry { name: name.to_owned(), role, sha256, created_at_ms: now_ms });
        self.write(&entries)?;
        Ok(token)
    }

    /// Removes the token named `name` (it stops working at once); returns what it was.
    pub fn remove(&self, name: &str) -> Result<TokenEntry, TokenError> {
        let mut entries = self.entries()?;
        let Some(at) = entries.iter().position(|e| e.name == name) else {
            return Err(TokenError::NotFound(name.to_owned()));
        };
        let removed = entries.remove(at);
        if removed.role == Role::Admin && !entries.iter().any(|e| e.role == Role::Admin) {
            return Err(TokenError::Refused(format!(
                "{name:?} is the last admin token: make another admin first, so the hub stays manageable"
            )));
        }
        self.write(&entries)?;
        Ok(removed)
    }

    /// Writes the file whole: a temporary file (0600), fsynced, renamed into place.
    fn write(&self, entries: &[TokenEntry]) -> Result<(), TokenError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let io = |e| TokenError::Io { path: self.path.display().to_string(), source: e };
        let tmp = self.path.with_extension("tmp");
        let mut f =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io)?;
        let text = serde_json::to_string_pretty(entries).map_err(|e| TokenError::Refused(e.to_string()))?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        *self.cache.lock().expect("tokens lock") = (None, Vec::new());
        Ok(())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_makes_only_the_first_token_and_the_file_holds_only_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::new(&dir.path().join("api-tokens.json"));
        assert_eq!(tokens.authenticate("nothing").unwrap(), None);
        let admin = tokens.create("ops-lead", Role::Admin, true, 1).unwrap();
        assert_eq!(tokens.authenticate(&admin).unwrap(), Some(("ops-lead".into(), Role::Admin)));
        let err = tokens.create("second", Role::Admin, true, 2).unwrap_err().to_string();
        assert!(err.ends_with("already holds 1 admin token(s): --bootstrap makes only the first; make more through the API with an admin token"), "{err}");
        let operator = tokens.create("alice", Role::Operator, false, 3).unwrap();
        assert_eq!(tokens.authenticate(&operator).unwrap(), Some(("alice".into(), Role::Operator)));
        let text = std::fs::read_to_string(tokens.path()).unwrap();
        assert!(!text.contains(&admin) && !text.contains(&operator) && text.contains(&hash(&admin)));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(tokens.path()).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(
            tokens.create("alice", Role::Viewer, false, 4).unwrap_err().to_string(),
            "a token named \"alice\" exists"
        );
        assert_eq!(
            tokens.create("bad name", Role::Viewer, false, 4).unwrap_err().to_string(),
            "\"bad name\" is not a token name: 1 to 64 letters, digits and - _ . @"
        );
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        assert_eq!(tokens.remove("alice").unwrap().role, Role::Operator);
        assert_eq!(tokens.authenticate(&operator).unwrap(), None, "removed: refused at once");
        assert_eq!(tokens.remove("alice").unwrap_err().to_string(), "no token is named \"alice\"");
        assert_eq!(
            tokens.remove("ops-lead").unwrap_err().to_string(),
            "\"ops-lead\" is the last admin token: make another admin first, so the hub stays manageable"
        );
    }
}
