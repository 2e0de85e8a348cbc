-- Tenant isolation (issue 12).
--
-- A receiver's answer may be any bytes: an excerpt that is not valid UTF-8 or holds NUL (which
-- PostgreSQL's text cannot store) is kept as base64, and this column says which.
ALTER TABLE webhook_delivery_attempts
    ADD COLUMN response_body_encoding text NOT NULL DEFAULT 'utf8'
        CONSTRAINT webhook_delivery_attempts_body_encoding CHECK (response_body_encoding IN ('utf8', 'base64'));
ALTER TABLE webhook_deliveries
    ADD COLUMN response_body_encoding text NOT NULL DEFAULT 'utf8'
        CONSTRAINT webhook_deliveries_body_encoding CHECK (response_body_encoding IN ('utf8', 'base64'));

-- How often a delivery's lease ran out with its worker gone. Each rescue grants one attempt
-- more; past a small bound the delivery fails instead of being re-sent forever.
ALTER TABLE delivery_jobs
    ADD COLUMN rescues integer NOT NULL DEFAULT 0 CONSTRAINT delivery_jobs_rescues_nonnegative CHECK (rescues >= 0);

-- Retries waiting for their time are `scheduled`, not `available`: the claim's skip scan over
-- `available` then visits only webhooks with due work, however many idle retries other tenants
-- hold. Workers promote scheduled jobs as they fall due (an index range over what is due).
ALTER TABLE delivery_jobs DROP CONSTRAINT delivery_jobs_state_check;
ALTER TABLE delivery_jobs ADD CONSTRAINT delivery_jobs_state_check
    CHECK (state IN ('available', 'scheduled', 'running', 'parked'));
UPDATE delivery_jobs SET state = 'scheduled' WHERE state = 'available' AND scheduled_at > now();
CREATE INDEX delivery_jobs_scheduled ON delivery_jobs (scheduled_at) WHERE state = 'scheduled';
