-- What an operator needs to see of a Hubble pull: consecutive failures (they set the back-off)
-- and the last error, next to the persisted Continuation-Token.
ALTER TABLE sources
    ADD COLUMN pull_failures integer NOT NULL DEFAULT 0 CHECK (pull_failures >= 0),
    ADD COLUMN pull_last_error text,
    ADD COLUMN pull_last_polled_at timestamptz;
