-- API keys: the secret is never stored, only a salted scrypt hash; `key_id` is the public lookup part
-- of the token (sntl_<key_id>_<secret>). Revoked keys are kept for the audit trail.
CREATE TABLE IF NOT EXISTS api_keys (
    key_id      text PRIMARY KEY CHECK (key_id ~ '^[0-9a-f]{16}$'),
    name        text NOT NULL,
    role        text NOT NULL CHECK (role IN ('viewer', 'supervisor', 'admin')),
    secret_hash text NOT NULL,          -- scrypt$n$r$p$salt_hex$hash_hex
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX IF NOT EXISTS api_keys_name_idx ON api_keys (name);
