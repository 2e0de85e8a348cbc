-- Ordered delivery (issue 17): a `per_key` webhook sends the deliveries that share an ordering
-- key one at a time, in publish order.
--
-- Each such delivery's job carries its key and its place in the key's queue (`key_seq`). Only the
-- key's head (lowest place) is in a state the claim or the retry promotion can see; the others
-- wait as `queued`, which no claim scans (so blocked keys cost claims nothing). Whatever ends the
-- head (sent, failed after its last attempt, abandoned after lost leases, webhook deleted)
-- promotes the next one in the same transaction.
ALTER TABLE webhooks
    ADD COLUMN ordering text NOT NULL DEFAULT 'none'
        CONSTRAINT webhooks_ordering CHECK (ordering IN ('none', 'per_key'));

ALTER TABLE delivery_jobs
    ADD COLUMN ordering_key text,
    ADD COLUMN key_seq bigint,
    ADD CONSTRAINT delivery_jobs_key_seq CHECK ((ordering_key IS NULL) = (key_seq IS NULL)),
    ADD CONSTRAINT delivery_jobs_queued_has_key CHECK (state <> 'queued' OR ordering_key IS NOT NULL);

ALTER TABLE delivery_jobs DROP CONSTRAINT delivery_jobs_state_check;
ALTER TABLE delivery_jobs ADD CONSTRAINT delivery_jobs_state_check
    CHECK (state IN ('available', 'scheduled', 'running', 'parked', 'queued'));

-- The next of a key, when its head ends.
CREATE INDEX delivery_jobs_key_queue ON delivery_jobs (org_id, webhook_id, ordering_key, key_seq)
    WHERE state = 'queued';

-- One row per (webhook, key) with unfinished deliveries: publishers of one key serialize on it
-- (its row lock), it hands out the places in the key's queue, and it counts the key's jobs, so a
-- publisher knows whether its first delivery is the head without reading the queue. Deleted when
-- the count reaches zero.
CREATE TABLE delivery_key_queues (
    org_id        uuid NOT NULL,
    webhook_id    uuid NOT NULL,
    ordering_key  text NOT NULL,
    next_seq      bigint NOT NULL CHECK (next_seq >= 0),
    unfinished    integer NOT NULL CHECK (unfinished >= 0),
    PRIMARY KEY (org_id, webhook_id, ordering_key),
    FOREIGN KEY (org_id, webhook_id) REFERENCES webhooks (org_id, id) ON DELETE CASCADE
);
