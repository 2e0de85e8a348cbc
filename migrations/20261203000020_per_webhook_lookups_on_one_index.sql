-- A claim's or refill's lookup of one webhook's due jobs (`org_id = … AND webhook_id = … AND
-- state = 'available' … ORDER BY scheduled_at`) must read `delivery_jobs_webhook_due`, which holds
-- exactly those jobs in that order. Two other indexes also matched it, and on a queue whose
-- statistics are stale or missing (analyzed empty, or not yet analyzed after a burst) the planner
-- picked them, since every estimate said one row:
-- - `delivery_jobs_due` (`scheduled_at`, the queue-wide due range): each webhook's lookup walked
--   the range until it met its webhook, 21 ms of a 37 ms claim across 1,000 webhooks (auto_explain,
--   make bench fan-out);
-- - `delivery_jobs_webhook` (`org_id, webhook_id, state`): each refill read and sorted the
--   webhook's whole backlog (the generic plan, seen with auto_explain while tests/overload.rs
--   drained 50,000 jobs from one webhook on a queue not yet analyzed).
-- `delivery_jobs_due` now serves only the statements that say `attempt >= 0` (always true, a
-- CHECK, but the planner proves a partial index's predicate from the statement's own words):
-- `next_due`, `backlog` and Citus's organizations with due work. `delivery_jobs_webhook` keeps
-- the other states (running counts, parked and queued jobs) and leaves out the available ones.
DROP INDEX delivery_jobs_due;
CREATE INDEX delivery_jobs_due ON delivery_jobs (scheduled_at)
    WHERE state = 'available' AND attempt >= 0;
DROP INDEX delivery_jobs_webhook;
CREATE INDEX delivery_jobs_webhook ON delivery_jobs (org_id, webhook_id, state)
    WHERE state <> 'available';
