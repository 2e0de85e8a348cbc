-- Issue 18, item 1: one schema for plain PostgreSQL and Citus (CONTRACT §8).
--
-- Citus distributes every tenant table by org_id, and a distributed table's primary and unique
-- keys must contain org_id. So the tables keyed by `id` alone are keyed by (org_id, id) — ids are
-- still UUIDs nobody else holds, and every statement of the service names the organization — the
-- (org_id, id) unique constraints the foreign keys pointed at become those primary keys, and the
-- foreign keys are re-created against them, named.
--
-- The two lookups that arrive without an organization (a bearer token, a source's ingest URL) go
-- through small tables of their own, `api_key_tokens` and `source_routes`: their keys are the
-- globally unique values, they name the organization, and they are written in the transaction that
-- creates the key or the source. On Citus they are reference tables, like `organizations`.
--
-- webhook_deliveries → events loses `ON DELETE SET NULL (event_id)`: Citus refuses SET NULL on a
-- key holding the distribution column, and it never fired — retention deletes only events no
-- delivery points at, and organizations are never deleted while they have deliveries (their
-- webhooks are referenced without a cascade).

ALTER TABLE webhook_deliveries
    DROP CONSTRAINT webhook_deliveries_org_id_webhook_id_fkey,
    DROP CONSTRAINT webhook_deliveries_org_id_event_id_fkey;
ALTER TABLE webhook_send_windows DROP CONSTRAINT webhook_send_windows_org_id_webhook_id_fkey;
ALTER TABLE batch_items DROP CONSTRAINT batch_items_org_id_webhook_id_fkey;
ALTER TABLE webhook_delivery_events DROP CONSTRAINT webhook_delivery_events_org_id_delivery_id_fkey;
ALTER TABLE webhook_delivery_attempts DROP CONSTRAINT webhook_delivery_attempts_org_id_delivery_id_fkey;
ALTER TABLE delivery_jobs DROP CONSTRAINT delivery_jobs_org_id_delivery_id_fkey;

ALTER TABLE api_keys
    DROP CONSTRAINT api_keys_pkey,
    DROP CONSTRAINT api_keys_org_id_id_key,
    ADD CONSTRAINT api_keys_pkey PRIMARY KEY (org_id, id);
ALTER TABLE webhooks
    DROP CONSTRAINT webhooks_pkey,
    DROP CONSTRAINT webhooks_org_id_id_key,
    ADD CONSTRAINT webhooks_pkey PRIMARY KEY (org_id, id);
ALTER TABLE events
    DROP CONSTRAINT events_pkey,
    DROP CONSTRAINT events_org_id_id_key,
    ADD CONSTRAINT events_pkey PRIMARY KEY (org_id, id);
ALTER TABLE webhook_deliveries
    DROP CONSTRAINT webhook_deliveries_pkey,
    DROP CONSTRAINT webhook_deliveries_org_id_id_key,
    ADD CONSTRAINT webhook_deliveries_pkey PRIMARY KEY (org_id, id);
ALTER TABLE webhook_delivery_attempts
    DROP CONSTRAINT webhook_delivery_attempts_pkey,
    ADD CONSTRAINT webhook_delivery_attempts_pkey PRIMARY KEY (org_id, id);
ALTER TABLE delivery_jobs
    DROP CONSTRAINT delivery_jobs_pkey,
    ADD CONSTRAINT delivery_jobs_pkey PRIMARY KEY (org_id, delivery_id);
ALTER TABLE sources
    DROP CONSTRAINT sources_pkey,
    DROP CONSTRAINT sources_org_id_id_key,
    ADD CONSTRAINT sources_pkey PRIMARY KEY (org_id, id);

-- The claim, load and record of the delivery loop still find deliveries and their queue entries
-- by id alone: they keep a (non-unique, so Citus accepts it) index to do it with until they name
-- the organization, instead of scanning the biggest table.
CREATE INDEX webhook_deliveries_id ON webhook_deliveries (id);
CREATE INDEX delivery_jobs_delivery ON delivery_jobs (delivery_id);

ALTER TABLE webhook_deliveries
    ADD CONSTRAINT webhook_deliveries_webhook_fkey
        FOREIGN KEY (org_id, webhook_id) REFERENCES webhooks (org_id, id),
    ADD CONSTRAINT webhook_deliveries_event_fkey
        FOREIGN KEY (org_id, event_id) REFERENCES events (org_id, id);
ALTER TABLE webhook_send_windows ADD CONSTRAINT webhook_send_windows_webhook_fkey
    FOREIGN KEY (org_id, webhook_id) REFERENCES webhooks (org_id, id) ON DELETE CASCADE;
ALTER TABLE batch_items ADD CONSTRAINT batch_items_webhook_fkey
    FOREIGN KEY (org_id, webhook_id) REFERENCES webhooks (org_id, id);
ALTER TABLE webhook_delivery_events ADD CONSTRAINT webhook_delivery_events_delivery_fkey
    FOREIGN KEY (org_id, delivery_id) REFERENCES webhook_deliveries (org_id, id) ON DELETE CASCADE;
ALTER TABLE webhook_delivery_attempts ADD CONSTRAINT webhook_delivery_attempts_delivery_fkey
    FOREIGN KEY (org_id, delivery_id) REFERENCES webhook_deliveries (org_id, id) ON DELETE CASCADE;
ALTER TABLE delivery_jobs ADD CONSTRAINT delivery_jobs_delivery_fkey
    FOREIGN KEY (org_id, delivery_id) REFERENCES webhook_deliveries (org_id, id) ON DELETE CASCADE;

-- Authentication: token hash → organization and key. Revocation and expiry stay on api_keys.
CREATE TABLE api_key_tokens (
    token_hash  bytea CONSTRAINT api_key_tokens_pkey PRIMARY KEY,
    org_id      uuid NOT NULL CONSTRAINT api_key_tokens_org_fkey REFERENCES organizations (id) ON DELETE CASCADE,
    key_id      uuid NOT NULL
);
INSERT INTO api_key_tokens (token_hash, org_id, key_id) SELECT token_hash, org_id, id FROM api_keys;
DROP INDEX api_keys_token_hash;

-- Ingest URLs carry a source id alone: source id → organization. A deleted source keeps its
-- row (its URL answers 404 from `sources.deleted_at`, and its id is never reused).
CREATE TABLE source_routes (
    source_id  uuid CONSTRAINT source_routes_pkey PRIMARY KEY,
    org_id     uuid NOT NULL CONSTRAINT source_routes_org_fkey REFERENCES organizations (id) ON DELETE CASCADE
);
INSERT INTO source_routes (source_id, org_id) SELECT id, org_id FROM sources;
