-- Secret rotation with overlap (docs/webhooks.md, "Rotate the secret"): after
-- rotate-secret, deliveries to the endpoint are signed with the new secret and, until
-- previous_secret_until, also with the one it replaced (two "v1," signatures), so a receiver
-- can switch its configuration without refusing a delivery meanwhile.
-- TRAINQ_WEBHOOK_SECRET_OVERLAP_SECONDS sets the window when the secret is rotated.
ALTER TABLE webhook_endpoints
    ADD COLUMN previous_secret       text,
    ADD COLUMN previous_secret_until timestamptz,
    ADD CONSTRAINT webhook_endpoints_previous_secret
        CHECK ((previous_secret IS NULL) = (previous_secret_until IS NULL));
