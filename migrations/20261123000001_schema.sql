-- hookrelay's schema: tenants and their keys, webhooks, events, deliveries with every attempt,
-- the delivery job queue, and ingest sources.
--
-- Tenancy: every tenant-owned table carries org_id and has UNIQUE (org_id, id) where other tables
-- point at it, so foreign keys lead with org_id (the Citus path distributes by org_id).
-- `id UUID PRIMARY KEY` is kept on the tables seed 003 names, because ops SQL reads them by id.

CREATE FUNCTION hookrelay_set_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TABLE organizations (
    id          uuid PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER organizations_updated_at BEFORE UPDATE ON organizations
    FOR EACH ROW EXECUTE FUNCTION hookrelay_set_updated_at();

-- Tokens are never stored: only their SHA-256 and a short prefix to recognise them by.
CREATE TABLE api_keys (
    id            uuid PRIMARY KEY,
    org_id        uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    token_hash    bytea NOT NULL CHECK (length(token_hash) = 32),
    token_prefix  text NOT NULL,
    scopes        text[] NOT NULL,
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, id)
);
-- Authentication looks a token up by hash before it knows the organization.
CREATE UNIQUE INDEX api_keys_token_hash ON api_keys (token_hash);
CREATE INDEX api_keys_org_created ON api_keys (org_id, created_at DESC, id DESC);
CREATE TRIGGER api_keys_updated_at BEFORE UPDATE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION hookrelay_set_updated_at();

-- An organization's own event types; the built-in catalog lives in code.
CREATE TABLE event_types (
    org_id       uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name         text NOT NULL CHECK (name ~ '^[a-z0-9_]+(\.[a-z0-9_]+)*$' AND length(name) <= 100),
    description  text,
    schema       jsonb,
    batchable    boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, name)
);
CREATE TRIGGER event_types_updated_at BEFORE UPDATE ON event_types
    FOR EACH ROW EXECUTE FUNCTION hookrelay_set_updated_at();

-- Seed 003's columns first. Secrets are AES-256-GCM ciphertext (HOOKRELAY_ENCRYPTION_KEY).
-- Deleting a webhook sets deleted_at: its delivery history stays readable.
CREATE TABLE webhooks (
    id                          uuid PRIMARY KEY,
    org_id                      uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    url                         text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    events                      text[] NOT NULL CHECK (cardinality(events) >= 1),
    secret                      text NOT NULL,
    active                      boolean NOT NULL DEFAULT true,
    description                 text,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now(),
    previous_secret             text,
    previous_secret_expires_at  timestamptz,
    metadata                    jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    headers                     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(headers) = 'object'),
    filter                      jsonb CHECK (filter IS NULL OR jsonb_typeof(filter) = 'object'),
    max_batch_size              integer NOT NULL DEFAULT 1 CHECK (max_batch_size BETWEEN 1 AND 1000),
    payload_format              text NOT NULL DEFAULT 'envelope' CHECK (payload_format IN ('envelope', 'hubble')),
    rate_limit_per_second       integer CHECK (rate_limit_per_second > 0),
    health_status               text NOT NULL DEFAULT 'healthy'
                                CHECK (health_status IN ('healthy', 'degraded', 'unhealthy')),
    consecutive_failures        integer NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    disabled_reason             text,
    deleted_at                  timestamptz,
    UNIQUE (org_id, id),
    CHECK ((previous_secret IS NULL) = (previous_secret_expires_at IS NULL))
);
CREATE INDEX webhooks_org_created ON webhooks (org_id, created_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE TRIGGER webhooks_updated_at BEFORE UPDATE ON webhooks
    FOR EACH ROW EXECUTE FUNCTION hookrelay_set_updated_at();

CREATE TABLE events (
    id               uuid PRIMARY KEY,
    org_id           uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    event            text NOT NULL,
    data             jsonb NOT NULL,
    source_id        uuid,
    idempotency_key  text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, id)
);
CREATE INDEX events_org_created ON events (org_id, created_at DESC);
CREATE INDEX events_created ON events (created_at);

-- The first answer to a publish with an Idempotency-Key, replayed for 24 h.
CREATE TABLE idempotency_keys (
    org_id        uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    key           text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash  bytea NOT NULL,
    response      jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (org_id, key)
);
CREATE INDEX idempotency_keys_expires ON idempotency_keys (expires_at);

-- One row per (event, webhook) delivery, or per batch of events, holding its latest attempt.
-- Seed 003's columns first: its ops queries read them unchanged.
CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY,
    webhook_id       uuid NOT NULL,
    event            text NOT NULL,
    payload          jsonb NOT NULL,
    response_status  integer,
    response_body    text,
    attempt_number   integer NOT NULL DEFAULT 0 CHECK (attempt_number >= 0),
    delivered_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    org_id           uuid NOT NULL,
    event_id         uuid,
    event_count      integer NOT NULL DEFAULT 1 CHECK (event_count >= 1),
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'retrying', 'sent', 'failed', 'cancelled')),
    last_error       text,
    next_attempt_at  timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, id),
    FOREIGN KEY (org_id, webhook_id) REFERENCES webhooks (org_id, id),
    FOREIGN KEY (org_id, event_id) REFERENCES events (org_id, id) ON DELETE SET NULL (event_id),
    CHECK ((status = 'sent') = (delivered_at IS NOT NULL))
);
-- Seed 003 "Check Delivery Stats": a range on created_at, answered from the index alone.
CREATE INDEX webhook_deliveries_created ON webhook_deliveries (created_at)
    INCLUDE (event, attempt_number, response_status);
-- Seed 003 "Failed Deliveries": the same predicate, so the planner uses this partial index.
CREATE INDEX webhook_deliveries_failed ON webhook_deliveries (created_at DESC)
    WHERE response_status NOT BETWEEN 200 AND 299;
-- A webhook's history, newest first.
CREATE INDEX webhook_deliveries_history ON webhook_deliveries (org_id, webhook_id, created_at DESC, id DESC);
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (org_id, event_id);

-- Which events a batch delivery carries (one row each; a single-event delivery has none).
CREATE TABLE webhook_delivery_events (
    org_id       uuid NOT NULL,
    delivery_id  uuid NOT NULL,
    event_id     uuid NOT NULL,
    PRIMARY KEY (org_id, delivery_id, event_id),
    FOREIGN KEY (org_id, delivery_id) REFERENCES webhook_deliveries (org_id, id) ON DELETE CASCADE
);

-- Every attempt, kept for the API and for ops. (delivery, attempt number) is unique, so the same
-- attempt can never be recorded twice.
CREATE TABLE webhook_delivery_attempts (
    id               uuid PRIMARY KEY,
    org_id           uuid NOT NULL,
    delivery_id      uuid NOT NULL,
    webhook_id       uuid NOT NULL,
    attempt_number   integer NOT NULL CHECK (attempt_number >= 1),
    url              text NOT NULL,
    response_status  integer,
    response_body    text,
    error            text,
    latency_ms       integer NOT NULL CHECK (latency_ms >= 0),
    started_at       timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, delivery_id, attempt_number),
    FOREIGN KEY (org_id, delivery_id) REFERENCES webhook_deliveries (org_id, id) ON DELETE CASCADE
);
CREATE INDEX webhook_delivery_attempts_created ON webhook_delivery_attempts (created_at);

-- The delivery queue, in the spirit of River: one small row per delivery that still has work,
-- deleted when the delivery is sent, failed or cancelled. Rows are small on purpose: claims
-- rewrite them, and the payload stays in webhook_deliveries.
-- available: due at scheduled_at; running: claimed until lease_expires_at; parked: its webhook is
-- inactive, and it waits (not dropped) until the webhook is re-activated.
CREATE TABLE delivery_jobs (
    delivery_id       uuid PRIMARY KEY,
    org_id            uuid NOT NULL,
    webhook_id        uuid NOT NULL,
    state             text NOT NULL DEFAULT 'available' CHECK (state IN ('available', 'running', 'parked')),
    attempt           integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts      integer NOT NULL CHECK (max_attempts >= 1),
    scheduled_at      timestamptz NOT NULL DEFAULT now(),
    lease_expires_at  timestamptz,
    claimed_by        text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (org_id, delivery_id) REFERENCES webhook_deliveries (org_id, id) ON DELETE CASCADE,
    CHECK ((state = 'running') = (lease_expires_at IS NOT NULL)),
    CHECK (attempt <= max_attempts)
);
CREATE INDEX delivery_jobs_due ON delivery_jobs (scheduled_at) WHERE state = 'available';
CREATE INDEX delivery_jobs_lease ON delivery_jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX delivery_jobs_webhook ON delivery_jobs (org_id, webhook_id, state);

-- What feeds hookrelay: Hubble packet pushes or pulls, and HMAC-signed inbound webhooks.
CREATE TABLE sources (
    id                       uuid PRIMARY KEY,
    org_id                   uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    kind                     text NOT NULL CHECK (kind IN ('hubble', 'signed')),
    name                     text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    event_type               text,
    -- Encrypted like webhook secrets: verifying an HMAC needs the secret itself, not a hash.
    secret                   text NOT NULL,
    ip_allowlist             cidr[] NOT NULL DEFAULT '{}',
    pull_base_url            text,
    pull_hubble_org_id       text,
    pull_api_token           text,
    pull_continuation_token  text,
    pull_next_at             timestamptz,
    pull_lease_expires_at    timestamptz,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now(),
    deleted_at               timestamptz,
    UNIQUE (org_id, id),
    CHECK (kind <> 'signed' OR event_type IS NOT NULL),
    CHECK ((pull_base_url IS NULL) = (pull_api_token IS NULL))
);
CREATE INDEX sources_org_created ON sources (org_id, created_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX sources_pull_due ON sources (pull_next_at) WHERE pull_base_url IS NOT NULL AND deleted_at IS NULL;
CREATE TRIGGER sources_updated_at BEFORE UPDATE ON sources
    FOR EACH ROW EXECUTE FUNCTION hookrelay_set_updated_at();

-- Hubble packets already ingested, by Hubble's own identity of a packet.
CREATE TABLE ingested_packets (
    org_id            uuid NOT NULL,
    device_id         text NOT NULL,
    sequence_number   bigint NOT NULL,
    device_timestamp  text NOT NULL,
    event_id          uuid NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, device_id, sequence_number, device_timestamp)
);
CREATE INDEX ingested_packets_created ON ingested_packets (created_at);

CREATE TRIGGER webhook_deliveries_updated_at BEFORE UPDATE ON webhook_deliveries
    FOR EACH ROW EXECUTE FUNCTION hookrelay_set_updated_at();
