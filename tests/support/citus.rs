//! The Citus cluster `make test` starts (scripts/citus.sh): whether there is one, and a fresh
//! database of its own on it per test — created on the coordinator and both workers, with the
//! extension, and the workers registered — migrated (which distributes it).

use crate::TestDb;
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// The coordinator's URL from `HOOKRELAY_CITUS_URL`, or `None` to skip: without a cluster the
/// suite skips, unless `HOOKRELAY_CITUS_TEST=required` (what `make test` sets once it has one).
pub fn cluster_url() -> Option<String> {
    match std::env::var("HOOKRELAY_CITUS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert_ne!(
                std::env::var("HOOKRELAY_CITUS_TEST").as_deref(),
                Ok("required"),
                "HOOKRELAY_CITUS_TEST=required but HOOKRELAY_CITUS_URL is not set"
            );
            eprintln!(
                "citus: skipped: HOOKRELAY_CITUS_URL is not set (scripts/citus.sh provides it)"
            );
            None
        }
    }
}

fn with_port_and_database(url: &str, host: &str, port: i32, db: &str) -> String {
    let (scheme_user, _) = url.split_once('@').expect("URL has user@host");
    format!("{scheme_user}@{host}:{port}/{db}")
}

async fn exec(conn: &mut PgConnection, sql: String) {
    sqlx::raw_sql(AssertSqlSafe(sql.clone()))
        .execute(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Holds the cluster to one test setting up at a time, until dropped (its connection closes).
/// Registering workers and distributing a schema write cluster-wide catalogs on the workers
/// (roles, and the metadata Citus syncs to them): done by several databases at once they fail
/// now and then with Citus's "failure on connection marked as essential".
struct SetupLock(PgConnection);

impl SetupLock {
    async fn take(coordinator: &str) -> SetupLock {
        // An advisory lock is held per database: every test takes it in the same one.
        let (scheme_user, rest) = coordinator.split_once('@').expect("URL has user@host");
        let host_port = rest.split('/').next().unwrap();
        let mut conn = PgConnection::connect(&format!("{scheme_user}@{host_port}/postgres"))
            .await
            .expect("connect to the coordinator's postgres database");
        exec(&mut conn, "SELECT pg_advisory_lock(18)".into()).await;
        SetupLock(conn)
    }

    async fn release(self) {
        self.0.close().await.ok();
    }
}

/// A database of its own on every node of the cluster at `coordinator`, not migrated.
pub async fn empty_db(coordinator: &str) -> TestDb {
    let lock = SetupLock::take(coordinator).await;
    let db = empty_db_locked(coordinator).await;
    lock.release().await;
    db
}

async fn empty_db_locked(coordinator: &str) -> TestDb {
    let mut meta = PgConnection::connect(coordinator)
        .await
        .expect("connect to the Citus coordinator");
    let workers: Vec<(String, i32)> = sqlx::query_as(
        "SELECT nodename::text, nodeport FROM pg_dist_node WHERE groupid <> 0 AND noderole = 'primary' ORDER BY nodeid",
    )
    .fetch_all(&mut meta)
    .await
    .unwrap();
    let (coordinator_host, coordinator_port): (String, i32) =
        sqlx::query_as("SELECT nodename::text, nodeport FROM pg_dist_node WHERE groupid = 0")
            .fetch_one(&mut meta)
            .await
            .expect("the coordinator is registered (citus_set_coordinator_host)");
    meta.close().await.ok();

    let name = format!("hr_test_{}", uuid::Uuid::new_v4().simple());
    let nodes =
        std::iter::once((coordinator_host.clone(), coordinator_port)).chain(workers.clone());
    for (host, port) in nodes {
        let mut admin = PgConnection::connect(&with_port_and_database(
            coordinator,
            &host,
            port,
            "postgres",
        ))
        .await
        .unwrap();
        exec(&mut admin, format!("CREATE DATABASE {name}")).await;
        admin.close().await.ok();
        let mut db =
            PgConnection::connect(&with_port_and_database(coordinator, &host, port, &name))
                .await
                .unwrap();
        exec(
            &mut db,
            "SET client_min_messages = warning; CREATE EXTENSION citus".into(),
        )
        .await;
        db.close().await.ok();
    }
    let url = with_port_and_database(coordinator, &coordinator_host, coordinator_port, &name);
    let mut db = PgConnection::connect(&url).await.unwrap();
    exec(
        &mut db,
        format!("SELECT citus_set_coordinator_host('{coordinator_host}', {coordinator_port})"),
    )
    .await;
    for (host, port) in &workers {
        exec(&mut db, format!("SELECT citus_add_node('{host}', {port})")).await;
    }
    db.close().await.ok();
    let pool = PgPoolOptions::new()
        .max_connections(5)
        .connect(&url)
        .await
        .expect("connect to the Citus test database");
    TestDb { url, pool }
}

/// A database of its own on the cluster, migrated and so distributed.
pub async fn migrated_db(coordinator: &str) -> TestDb {
    let lock = SetupLock::take(coordinator).await;
    let db = empty_db_locked(coordinator).await;
    hookrelay_storage::migrate(&db.pool)
        .await
        .expect("migrations apply and distribute on Citus");
    lock.release().await;
    db
}
