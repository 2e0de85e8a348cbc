-- Operations (issue 15): pre-aggregated delivery and packet metrics, and the indexes the
-- organization-wide event and delivery lists read.
--
-- The rollups are written in the same transactions that record attempts and ingest packets, so
-- they never drift from the raw rows; metrics read a few rows per webhook-hour instead of
-- scanning the attempts. Keyed by org_id first, like every tenant table (the Citus path).

-- Element-wise sum of two latency histograms (NULL is the empty histogram).
CREATE FUNCTION hookrelay_add_buckets(a bigint[], b bigint[]) RETURNS bigint[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN a IS NULL THEN b WHEN b IS NULL THEN a
                ELSE ARRAY(SELECT x + y FROM unnest(a, b) AS t(x, y)) END
$$;
CREATE AGGREGATE hookrelay_sum_buckets(bigint[]) (
    SFUNC = hookrelay_add_buckets,
    STYPE = bigint[]
);

-- Per organization, webhook and UTC hour: every attempt started in that hour. successes are 2xx
-- answers, failures everything else (errors, timeouts and attempts whose worker died included).
-- latency_buckets counts the attempts a worker measured (not those whose worker died: their
-- latency is unknown) by the fixed upper bounds in hookrelay_storage::metrics::LATENCY_BOUNDS_MS
-- (one more bucket for anything above the last); latency_max_ms is the slowest of them.
CREATE TABLE webhook_metrics_hourly (
    org_id           uuid NOT NULL,
    webhook_id       uuid NOT NULL,
    hour             timestamptz NOT NULL,
    attempts         bigint NOT NULL CHECK (attempts >= 0),
    successes        bigint NOT NULL CHECK (successes >= 0),
    failures         bigint NOT NULL CHECK (failures >= 0),
    latency_buckets  bigint[] NOT NULL,
    latency_max_ms   integer NOT NULL DEFAULT 0,
    PRIMARY KEY (org_id, webhook_id, hour),
    CHECK (attempts = successes + failures)
);
-- The whole organization's metrics: a range of hours.
CREATE INDEX webhook_metrics_hourly_org ON webhook_metrics_hourly (org_id, hour);
-- Retention prunes by hour across organizations (like the other *_created indexes).
CREATE INDEX webhook_metrics_hourly_hour ON webhook_metrics_hourly (hour);

-- Per organization, source and UTC hour: packets received by Hubble push or pull, those
-- accepted (published as events) and those dropped as duplicates.
CREATE TABLE source_packet_metrics_hourly (
    org_id            uuid NOT NULL,
    source_id         uuid NOT NULL,
    hour              timestamptz NOT NULL,
    packets_received  bigint NOT NULL CHECK (packets_received >= 0),
    packets_accepted  bigint NOT NULL CHECK (packets_accepted >= 0),
    duplicates        bigint NOT NULL CHECK (duplicates >= 0),
    PRIMARY KEY (org_id, source_id, hour),
    CHECK (packets_received = packets_accepted + duplicates)
);
CREATE INDEX source_packet_metrics_hourly_org ON source_packet_metrics_hourly (org_id, hour);
CREATE INDEX source_packet_metrics_hourly_hour ON source_packet_metrics_hourly (hour);

-- GET /api/v1/deliveries: the organization's deliveries newest first, and by status
-- (`status=failed` is the page operators open).
CREATE INDEX webhook_deliveries_org_created ON webhook_deliveries (org_id, created_at DESC, id DESC);
CREATE INDEX webhook_deliveries_org_status ON webhook_deliveries (org_id, status, created_at DESC, id DESC);
-- GET /api/v1/events/{id}: the batch deliveries that carry an event (single-event deliveries are
-- found by webhook_deliveries_event).
CREATE INDEX webhook_delivery_events_event ON webhook_delivery_events (org_id, event_id);
