-- delivery_jobs is a queue: every row is inserted, updated once or twice and deleted within
-- seconds. Vacuum it after a small share of churn so dead rows never pile up under the claim's
-- index scan (the table-wide default waits for 20 % of the table to be dead).
ALTER TABLE delivery_jobs SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    fillfactor = 80
);
