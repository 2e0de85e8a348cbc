-- Credentials in a webhook's configuration are write-only (issue 13): custom header values and
-- URL userinfo are sealed like secrets (AES-256-GCM under HOOKRELAY_ENCRYPTION_KEY, bound to the
-- webhook). `url` and `headers` keep the masked forms every read shows; these columns hold the
-- originals sealed. NULL marks a row written before this migration (its `url`/`headers` still
-- hold the real values): SQL cannot seal them, as the key is not in the database, so
-- `hookrelay serve`, `worker` and `migrate` reseal such rows at start-up, and reads accept both
-- forms until then.
ALTER TABLE webhooks
    ADD COLUMN sealed_url text,
    ADD COLUMN sealed_headers text;

-- What was recorded before kept URLs as configured, password included: masking needs no key.
-- `user:pass@` becomes `user:****@`; a lone `token@` (the username is the credential) `****@`.
CREATE FUNCTION pg_temp.hookrelay_mask_url(url text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN url ~ '^[^:/?#]+://[^:/?#@]*:[^/?#@]*@'
            THEN regexp_replace(url, '^([^:/?#]+://[^:/?#@]*):[^/?#@]*@', '\1:****@')
        WHEN url ~ '^[^:/?#]+://[^:/?#@]+@'
            THEN regexp_replace(url, '^([^:/?#]+://)[^:/?#@]+@', '\1****@')
        ELSE url END
$$;

UPDATE webhook_delivery_attempts SET url = pg_temp.hookrelay_mask_url(url)
 WHERE url ~ '^[^:/?#]+://[^/?#]*@';

-- `webhook.disabled` events name the webhook's URL in their data, and so do their deliveries.
UPDATE events SET data = jsonb_set(data, '{url}', to_jsonb(pg_temp.hookrelay_mask_url(data->>'url')))
 WHERE event = 'webhook.disabled' AND data->>'url' ~ '^[^:/?#]+://[^/?#]*@';
UPDATE webhook_deliveries
   SET payload = jsonb_set(payload, '{data,url}', to_jsonb(pg_temp.hookrelay_mask_url(payload->'data'->>'url')))
 WHERE event = 'webhook.disabled' AND payload->'data'->>'url' ~ '^[^:/?#]+://[^/?#]*@';
