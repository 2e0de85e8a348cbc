-- The lease index was partial on `state = 'running'`, so every statement that finds jobs by
-- delivery id and also says `state = 'running'` (the record's finish and reschedule, the ended
-- attempts of a claim) could read it instead, and the planner did: under queue churn it holds
-- thousands of dead entries between vacuums (6,382 for 60 rows found, 3.6 ms of a record batch,
-- seen in `make bench`). Partial on the lease itself, only lease rescue (`lease_expires_at <
-- now()`) matches it. Every running job has a lease; no other state keeps one.
DROP INDEX delivery_jobs_lease;
CREATE INDEX delivery_jobs_lease ON delivery_jobs (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
