//! The PostgreSQL store against the server the machine runs (`HOLDFAST_TEST_POSTGRES`, by
//! default `host=127.0.0.1 port=5432 user=postgres`): each test in a database of its own,
//! dropped at the end.

use super::*;
use crate::store::conformance::{Fixture, store_conformance};

/// The server the tests use, as a libpq connection string without a database.
pub(crate) fn server() -> String {
    std::env::var("HOLDFAST_TEST_POSTGRES").unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres".into())
}

/// A database of its own, dropped (with its connections) when this goes.
pub(crate) struct TestDb {
    pub name: String,
}

impl TestDb {
    pub async fn create() -> Self {
        let name = format!("holdfast_test_{}", Uuid::new_v4().simple());
        let (client, conn) = tokio_postgres::connect(&format!("{} dbname=postgres", server()), tokio_postgres::NoTls)
            .await
            .expect("the test PostgreSQL server answers (see HOLDFAST_TEST_POSTGRES)");
        tokio::spawn(conn);
        client.batch_execute(&format!("CREATE DATABASE {name}")).await.unwrap();
        Self { name }
    }

    pub fn options(&self) -> PgOptions {
        PgOptions { url: format!("{} dbname={}", server(), self.name), ca: None, password_file: None, connections: 4 }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // On a thread of its own: the test's runtime may be ending.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&format!("{} dbname=postgres", server()), tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
                }
            })
        })
        .join();
    }
}

struct PgFixture {
    db: TestDb,
    store: PgStore,
}

impl Fixture for PgFixture {
    type S = PgStore;

    async fn open() -> Self {
        let db = TestDb::create().await;
        let store = PgStore::connect(&db.options()).await.unwrap();
        Self { db, store }
    }

    fn store(&self) -> &PgStore {
        &self.store
    }

    async fn reopen(self) -> Self {
        let Self { db, store } = self;
        drop(store);
        let store = PgStore::connect(&db.options()).await.unwrap();
        Self { db, store }
    }

    async fn replica(&self) -> Option<PgStore> {
        Some(PgStore::connect(&self.db.options()).await.unwrap())
    }
}

store_conformance!(PgFixture);

#[tokio::test]
async fn replicas_starting_together_migrate_once_and_a_newer_schema_is_refused() {
    let db = TestDb::create().await;
    let opts = db.options();
    let starts: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn({
                let opts = opts.clone();
                async move { PgStore::connect(&opts).await.map(|_| ()) }
            })
        })
        .collect();
    for s in starts {
        s.await.unwrap().unwrap();
    }
    let (client, conn) = tokio_postgres::connect(&opts.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let versions: Vec<i64> =
        client.query("SELECT version FROM schema_version", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(versions, [1, 2, 3, 4, 5]);
    client.execute("INSERT INTO schema_version (version) VALUES (99)", &[]).await.unwrap();
    let err = PgStore::connect(&opts).await.unwrap_err();
    assert_eq!(err.to_string(), "store schema version 99 is newer than this hub understands (5)");
}

#[tokio::test]
async fn a_version_3_ledger_loses_its_foreign_keys_and_nothing_else() {
    use crate::store::conformance::{J1, rec};
    let db = TestDb::create().await;
    let opts = db.options();
    let (client, conn) = tokio_postgres::connect(&opts.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    // A database as a version 3 hub left it: a journal, a stored row and its duplicate (their
    // positions from the sequence's first block).
    client
        .batch_execute("CREATE TABLE schema_version (version BIGINT NOT NULL, at TIMESTAMPTZ NOT NULL DEFAULT now())")
        .await
        .unwrap();
    for (k, migration) in super::MIGRATIONS[..3].iter().enumerate() {
        client.batch_execute(migration).await.unwrap();
        client.execute("INSERT INTO schema_version (version) VALUES ($1)", &[&(k as i64 + 1)]).await.unwrap();
    }
    let foreign_keys =
        "SELECT conname::text FROM pg_constraint WHERE conrelid = 'ledger'::regclass AND contype = 'f' ORDER BY 1";
    let names = |rows: Vec<tokio_postgres::Row>| rows.iter().map(|r| r.get(0)).collect::<Vec<String>>();
    assert_eq!(
        names(client.query(foreign_keys, &[]).await.unwrap()),
        ["ledger_duplicate_of_fkey", "ledger_journal_fkey"]
    );
    client
        .batch_execute(&format!(
            "SELECT nextval('ledger_lsn');
             INSERT INTO journals (jn, plant, journal_id, epoch, created_at_ms, stored_seq) VALUES (1, 'plant-a', '{J1}', 1, 1, 2);
             INSERT INTO ledger (lsn, plant, journal, seq, id, dedup, order_key, body, crc, state, duplicate_of, stored_at_ms) VALUES
                 (1, 'plant-a', 1, 1, '{J1}', '\\x01', 'k', '\\x01', 0, 'pending', NULL, 1),
                 (2, 'plant-a', 1, 2, '{J1}', '\\x01', 'k', '\\x01', 0, 'duplicate', 1, 1);"
        ))
        .await
        .unwrap();

    let store = PgStore::connect(&opts).await.unwrap();
    assert!(client.query(foreign_keys, &[]).await.unwrap().is_empty());
    let pending = store.load_pending(Default::default(), 10).await.unwrap();
    assert_eq!(pending.iter().map(|p| (p.lsn, p.seq)).collect::<Vec<_>>(), [(1, 1)]);
    // The journal goes on where it was, and a transaction sent again is still a duplicate.
    let again = crate::store::NewRecord { dedup: vec![1], ..rec(3, 9, "k") };
    assert_eq!(store.store_records("plant-a", J1, vec![again], 2).await.unwrap().stored_seq, 3);
    let states: Vec<(i64, String, Option<i64>)> = client
        .query("SELECT seq, state, duplicate_of FROM ledger ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        states,
        [(1, "pending".into(), None), (2, "duplicate".into(), Some(1)), (3, "duplicate".into(), Some(1))]
    );
}

#[tokio::test]
async fn the_audit_trail_refuses_updates_and_deletes_in_the_database() {
    let db = TestDb::create().await;
    let store = PgStore::connect(&db.options()).await.unwrap();
    store
        .append_audit(crate::audit::AuditEntry {
            at_ms: 1,
            actor: "a".into(),
            action: "b".into(),
            target: "c".into(),
            reason: "d".into(),
        })
        .await
        .unwrap();
    let (client, conn) = tokio_postgres::connect(&db.options().url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    for sql in ["UPDATE audit SET reason = 'x'", "DELETE FROM audit"] {
        let err = client.execute(sql, &[]).await.unwrap_err();
        assert_eq!(err.as_db_error().unwrap().message(), "the audit trail is append-only", "{sql}");
    }
}

#[tokio::test]
async fn an_unreachable_server_is_a_typed_error() {
    let opts = PgOptions {
        url: "host=127.0.0.1 port=1 user=postgres dbname=x connect_timeout=2".into(),
        ca: None,
        password_file: None,
        connections: 2,
    };
    let err = PgStore::connect(&opts).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(err.to_string().starts_with("store unavailable: PostgreSQL"), "{err}");
}

#[tokio::test]
async fn a_heartbeat_heard_by_one_replica_is_read_by_another_and_an_older_one_changes_nothing() {
    let db = TestDb::create().await;
    let (a, b) = (PgStore::connect(&db.options()).await.unwrap(), PgStore::connect(&db.options()).await.unwrap());
    a.save_heartbeat("plant-a", 20, "{\"at_ms\":20}".into()).await.unwrap();
    b.save_heartbeat("plant-a", 10, "{\"at_ms\":10}".into()).await.unwrap();
    b.save_heartbeat("plant-b", 15, "{}".into()).await.unwrap();
    assert_eq!(
        b.heartbeats().await.unwrap(),
        [("plant-a".to_owned(), 20, "{\"at_ms\":20}".to_owned()), ("plant-b".to_owned(), 15, "{}".to_owned())]
    );
}
