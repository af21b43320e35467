//! Online backups of the hub's store, restores, and ledger retention.
//!
//! `backup` copies the store with SQLite's online backup API in one step: one read transaction,
//! so the copy is a consistent snapshot, taken while the hub keeps writing (WAL readers never
//! block the writer). The copy is checked, fsynced and renamed into place, so a file at the
//! target path is always a whole backup.
//!
//! `restore` puts a checked backup in the store's place while the hub is stopped, and records
//! that in the restored store's audit trail. A restored hub knows less than the gateways: each
//! agent resends what the hub no longer has (journals keep rows until Odoo has them and they are
//! past retention), and Odoo's inbox already knows the ids it applied, so nothing is applied
//! twice.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::audit::AuditEntry;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Database { path: PathBuf, source: rusqlite::Error },
    #[error("{path}: the copy failed its integrity check: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("{path}: the backup did not finish in one step ({detail}); try again")]
    Incomplete { path: PathBuf, detail: String },
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
}

/// What a backup or a restored store holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub bytes: u64,
    pub plants: u64,
    pub ledger_rows: u64,
    pub audit_entries: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} bytes: {} plants, {} ledger rows, {} audit entries",
            self.bytes, self.plants, self.ledger_rows, self.audit_entries
        )
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io { path: path.to_owned(), source }
}

fn db(path: &Path) -> impl FnOnce(rusqlite::Error) -> BackupError + '_ {
    move |source| BackupError::Database { path: path.to_owned(), source }
}

/// Copies the store at `store` into `to` while the hub runs.
pub fn backup(store: &Path, to: &Path) -> Result<Summary, BackupError> {
    let src = Connection::open_with_flags(store, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(db(store))?;
    src.busy_timeout(Duration::from_secs(10)).map_err(db(store))?;
    let partial = to.with_extension("partial");
    let _ = fs::remove_file(&partial);
    {
        let mut dst = Connection::open(&partial).map_err(db(&partial))?;
        let backup = rusqlite::backup::Backup::new(&src, &mut dst).map_err(db(&partial))?;
        match backup.step(-1).map_err(db(store))? {
            rusqlite::backup::StepResult::Done => {}
            other => return Err(BackupError::Incomplete { path: store.to_owned(), detail: format!("{other:?}") }),
        }
    }
    let summary = check(&partial)?;
    fs::File::open(&partial).and_then(|f| f.sync_all()).map_err(io(&partial))?;
    fs::rename(&partial, to).map_err(io(to))?;
    sync_dir(to)?;
    Ok(summary)
}

/// Checks a store file's integrity and counts what it holds.
pub fn check(path: &Path) -> Result<Summary, BackupError> {
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(db(path))?;
    let detail: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).map_err(db(path))?;
    if detail != "ok" {
        return Err(BackupError::Corrupt { path: path.to_owned(), detail });
    }
    let count = |sql: &str| -> Result<u64, BackupError> { c.query_row(sql, [], |r| r.get(0)).map_err(db(path)) };
    Ok(Summary {
        bytes: fs::metadata(path).map_err(io(path))?.len(),
        plants: count("SELECT COUNT(DISTINCT plant) FROM journals")?,
        ledger_rows: count("SELECT COUNT(*) FROM ledger")?,
        audit_entries: count("SELECT COUNT(*) FROM audit")?,
    })
}

/// Replaces the store at `store` with the backup `from` (the hub must be stopped), and audits
/// the restore in it.
pub async fn restore(from: &Path, store: &Path, actor: &str, now_ms: i64) -> Result<Summary, BackupError> {
    check(from)?;
    let restoring = store.with_extension("restoring");
    let _ = fs::remove_file(&restoring);
    fs::copy(from, &restoring).map_err(io(&restoring))?;
    fs::File::open(&restoring).and_then(|f| f.sync_all()).map_err(io(&restoring))?;
    {
        // Opening runs the integrity check and any migration; then the restore is recorded.
        use crate::store::Store;
        let restored = crate::store::sqlite::SqliteStore::open(&restoring)?;
        restored
            .append_audit(AuditEntry {
                at_ms: now_ms,
                actor: actor.to_owned(),
                action: "store_restored".into(),
                target: store.display().to_string(),
                reason: format!("restored from the backup {}", from.display()),
            })
            .await?;
    }
    // The old store's WAL belongs to the old file: it must not be applied to the restored one.
    for side in ["-wal", "-shm"] {
        let _ = fs::remove_file(sidecar(store, side));
    }
    fs::rename(&restoring, store).map_err(io(store))?;
    sync_dir(store)?;
    check(store)
}

/// `hub.db` → `hub.db-wal`: SQLite's names for a database's sidecar files.
fn sidecar(store: &Path, suffix: &str) -> PathBuf {
    let mut p = store.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

fn sync_dir(path: &Path) -> Result<(), BackupError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}
