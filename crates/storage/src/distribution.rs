//! Distribution on Citus (CONTRACT §8, issue 18): when the `citus` extension is present in the
//! database, every tenant table is distributed by `org_id`, co-located, and the few tables read
//! without an organization are reference tables. On plain PostgreSQL this does nothing.

use sqlx::PgPool;

/// Tables copied to every node: organizations and the lookups that find an organization from a
/// value that arrives alone (a bearer token, an ingest URL's source id). Every other table of
/// the schema is a tenant table and carries `org_id`.
pub const REFERENCE_TABLES: &[&str] = &["organizations", "api_key_tokens", "source_routes"];

/// The tenant table every other one is co-located with.
pub const COLOCATION_ANCHOR: &str = "webhooks";

/// Distributes what is not distributed yet, in one transaction. Citus refuses foreign keys from
/// local to distributed tables, and a tenant table is referenced by others before and after its
/// turn, so the foreign keys touching tables still to convert are dropped first and re-created,
/// unchanged and with their names, once every table is converted. Tables holding the extension's
/// or sqlx's own bookkeeping are not ours and are left alone.
const DISTRIBUTE: &str = r#"
DO $distribute$
DECLARE
    reference text[] := $REFERENCE$;
    anchor text := '$ANCHOR$';
    t record;
    fk record;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('hookrelay distribute'));
    PERFORM set_config('citus.enable_unsafe_triggers', 'on', true);
    -- A reference table takes part in foreign keys: every later step in this transaction must
    -- use one connection per node.
    PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);
    PERFORM set_config('client_min_messages', 'warning', true);

    CREATE TEMP TABLE hookrelay_pending ON COMMIT DROP AS
        SELECT c.oid::regclass AS tbl, c.relname::text AS name,
               EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'org_id'
                          AND NOT a.attisdropped) AS has_org_id
          FROM pg_class c
         WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
           AND c.relname NOT LIKE '\_sqlx%'
           AND NOT EXISTS (SELECT 1 FROM pg_dist_partition p WHERE p.logicalrelid = c.oid);
    IF NOT EXISTS (SELECT 1 FROM hookrelay_pending) THEN
        RETURN;
    END IF;
    FOR t IN SELECT * FROM hookrelay_pending WHERE NOT has_org_id AND name <> ALL (reference) LOOP
        RAISE EXCEPTION 'table % has no org_id and is not a reference table: cannot distribute it', t.name;
    END LOOP;

    CREATE TEMP TABLE hookrelay_foreign_keys ON COMMIT DROP AS
        SELECT k.conrelid::regclass AS tbl, k.conname::text AS name, pg_get_constraintdef(k.oid) AS definition
          FROM pg_constraint k
         WHERE k.contype = 'f'
           AND (k.conrelid IN (SELECT tbl FROM hookrelay_pending) OR k.confrelid IN (SELECT tbl FROM hookrelay_pending));
    FOR fk IN SELECT * FROM hookrelay_foreign_keys LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', fk.tbl, fk.name);
    END LOOP;

    FOR t IN SELECT * FROM hookrelay_pending WHERE name = ANY (reference) ORDER BY name LOOP
        PERFORM create_reference_table(t.tbl);
    END LOOP;
    FOR t IN SELECT * FROM hookrelay_pending WHERE name <> ALL (reference) ORDER BY name <> anchor, name LOOP
        IF t.name = anchor THEN
            PERFORM create_distributed_table(t.tbl, 'org_id', colocate_with => 'none');
        ELSE
            PERFORM create_distributed_table(t.tbl, 'org_id', colocate_with => anchor);
        END IF;
    END LOOP;

    FOR fk IN SELECT * FROM hookrelay_foreign_keys LOOP
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s', fk.tbl, fk.name, fk.definition);
    END LOOP;
END
$distribute$;
"#;

/// Whether the database has the `citus` extension.
pub async fn citus_present(pool: &PgPool) -> crate::Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')")
            .fetch_one(pool)
            .await?,
    )
}

/// Distributes the schema when Citus is there; returns whether it is. Idempotent: tables already
/// distributed are left as they are, so a later migration's new table is distributed next time.
pub async fn distribute_if_citus(pool: &PgPool) -> crate::Result<bool> {
    if !citus_present(pool).await? {
        return Ok(false);
    }
    let reference = format!(
        "ARRAY[{}]::text[]",
        REFERENCE_TABLES
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let statement = DISTRIBUTE
        .replace("$REFERENCE$", &reference)
        .replace("$ANCHOR$", COLOCATION_ANCHOR);
    let mut tx = pool.begin().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!("schema distributed on Citus by org_id");
    Ok(true)
}

/// A statement that must stay on one shard on Citus, with its parameter types and example
/// arguments for `EXECUTE` (SQL expressions; `$ORG` is replaced by an organization's id).
/// tests/citus.rs checks its plan.
#[derive(Debug, Clone, Copy)]
pub struct SingleShardStatement {
    pub name: &'static str,
    pub sql: &'static str,
    /// As the service binds them (what `PREPARE` needs to know).
    pub parameter_types: &'static str,
    pub example_arguments: &'static str,
}

/// The hot statements that are known to route to one shard.
pub fn single_shard_statements() -> &'static [SingleShardStatement] {
    &[
        SingleShardStatement {
            name: "authenticate: the key within its organization",
            sql: crate::api_keys::KEY_OF_TOKEN,
            parameter_types: "uuid, uuid, bytea",
            example_arguments: "'$ORG', gen_random_uuid(), sha256('hr_x')",
        },
        SingleShardStatement {
            name: "ingest: the source within its organization",
            sql: crate::sources::INGEST_TARGET,
            parameter_types: "uuid, uuid",
            example_arguments: "'$ORG', gen_random_uuid()",
        },
        SingleShardStatement {
            name: "pull claim: leasing one source",
            sql: crate::sources::LEASE_PULL,
            parameter_types: "uuid, uuid, float8",
            example_arguments: "'$ORG', gen_random_uuid(), 30",
        },
    ]
}
