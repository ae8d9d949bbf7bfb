-- Every webhook POST is signed (alerts/notify/webhook.py): X-Sanitel-Signature: sha256=<hex HMAC-SHA256(secret,
-- "<X-Sanitel-Timestamp>.<body>")>. The secret is per webhook, generated when the webhook is created and shown
-- once; it is kept in clear (an HMAC key cannot be hashed), so only the roles that deliver or manage webhooks
-- may read this table. Existing webhooks get a fresh secret here: read it with
-- `sanitel webhooks rotate <id>` (which makes and shows a new one) and give it to the receiver.
-- gen_random_uuid() draws from pg_strong_random (122 random bits each); two make 244 bits.
ALTER TABLE alert_webhooks ADD COLUMN IF NOT EXISTS secret text;
UPDATE alert_webhooks
   SET secret = 'whsec_' || replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', '')
 WHERE secret IS NULL;
ALTER TABLE alert_webhooks
    ALTER COLUMN secret SET DEFAULT
        'whsec_' || replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', ''),
    ALTER COLUMN secret SET NOT NULL;
ALTER TABLE alert_webhooks DROP CONSTRAINT IF EXISTS alert_webhooks_secret_check;
ALTER TABLE alert_webhooks ADD CONSTRAINT alert_webhooks_secret_check CHECK (length(secret) >= 32);
