-- Which packets path a Hubble pull source answered on: the reference OpenAPI's
-- `/v1/org/{org_id}/packets` ('v1') or the seeds' `/api/org/{org_id}/packets` ('api'). Unknown
-- (NULL) until a poll succeeds; a new pull target forgets it.
ALTER TABLE sources
    ADD COLUMN pull_path text CONSTRAINT sources_pull_path CHECK (pull_path IN ('v1', 'api'));
