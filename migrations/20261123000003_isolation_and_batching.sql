-- Isolation: a claim visits every webhook that has due work (a skip scan over this index, one
-- probe per webhook, never a walk over one webhook's backlog) and takes a bounded share from each,
-- so one endpoint's backlog or slowness cannot fill every worker slot.
CREATE INDEX delivery_jobs_webhook_due ON delivery_jobs (org_id, webhook_id, scheduled_at)
    WHERE state = 'available';

-- Requests started per webhook in the current one-second window, for rate_limit_per_second.
-- Written by the claim that starts them, under the webhook's advisory lock.
CREATE TABLE webhook_send_windows (
    org_id        uuid NOT NULL,
    webhook_id    uuid NOT NULL,
    window_start  timestamptz NOT NULL,
    sent          integer NOT NULL CHECK (sent >= 0),
    PRIMARY KEY (org_id, webhook_id),
    FOREIGN KEY (org_id, webhook_id) REFERENCES webhooks (org_id, id) ON DELETE CASCADE
);

-- Batchable events waiting to be grouped into one delivery for a webhook with
-- max_batch_size > 1: flushed when max_batch_size are waiting or the oldest has waited
-- HOOKRELAY_BATCH_LINGER. The primary key is also the flush order. Items live for seconds, so
-- they point at their event without a foreign key (which retention would pay for on every prune).
CREATE TABLE batch_items (
    org_id      uuid NOT NULL,
    webhook_id  uuid NOT NULL,
    event       text NOT NULL,
    created_at  timestamptz NOT NULL,
    event_id    uuid NOT NULL,
    PRIMARY KEY (org_id, webhook_id, event, created_at, event_id),
    FOREIGN KEY (org_id, webhook_id) REFERENCES webhooks (org_id, id)
);
ALTER TABLE batch_items SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000);
