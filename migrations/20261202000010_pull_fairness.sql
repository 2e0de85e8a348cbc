-- Pull claims take turns between organizations by counting each organization's leased pulls;
-- leases are few and short-lived, so this keeps that count from scanning every pull source.
CREATE INDEX sources_pull_leased ON sources (org_id)
    WHERE pull_lease_expires_at IS NOT NULL AND pull_base_url IS NOT NULL AND deleted_at IS NULL;
