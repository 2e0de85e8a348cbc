-- Issue 17, items 1 and 4.
--
-- Ordering keys: each event may carry one (the publish field `ordering_key`, else `device.id`
-- of a `hubble.packet`, else `data.device_id` of a `device.*` event), copied onto each of its
-- deliveries at fan-out so the per-key scheduler reads it from the delivery row it claims.
-- Nullable: events without a key are unordered, and so is everything published before.
-- NOT VALID: every existing row is NULL, so nothing needs checking, and the big tables are not
-- scanned under an exclusive lock; new rows are checked all the same.
ALTER TABLE events ADD COLUMN ordering_key text;
ALTER TABLE events ADD CONSTRAINT events_ordering_key_length
    CHECK (char_length(ordering_key) BETWEEN 1 AND 255) NOT VALID;
ALTER TABLE webhook_deliveries ADD COLUMN ordering_key text;

-- Asymmetric signatures (Standard Webhooks `v1a`): an `ed25519` webhook's `secret` (and
-- `previous_secret` during a rotation's grace period) holds its Ed25519 private key,
-- `whsk_<base64 of the 32-byte seed>`, sealed exactly like an HMAC secret; `public_key` is the
-- current key's public half, `whpk_<base64>`, kept in the clear (it is public) so reads need no
-- decryption.
ALTER TABLE webhooks
    ADD COLUMN signature_scheme text NOT NULL DEFAULT 'hmac-sha256'
        CHECK (signature_scheme IN ('hmac-sha256', 'ed25519')),
    ADD COLUMN public_key text,
    ADD CONSTRAINT webhooks_public_key_iff_ed25519
        CHECK ((signature_scheme = 'ed25519') = (public_key IS NOT NULL));
