-- Gateways as first-class registry entries, service accounts per role, HJ 212 passwords as hashes, and a
-- NOTIFY on every registry change so that the collectors' and the HJ 212 listener's caches follow within seconds.

-- A gateway publishes batches for the devices registered behind it, and for no other
-- (sanitation/{city}/gateway/{gateway_id}/batch). Its broker account is the gateway_id; ids never hold ':'
-- (Mosquitto's password file separator) nor MQTT wildcards.
CREATE TABLE IF NOT EXISTS gateways (
    gateway_id          text PRIMARY KEY CHECK (gateway_id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    name                text,
    site_id             text REFERENCES sites (site_id),
    mqtt_password_hash  text,
    registered_at       timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE devices ADD COLUMN IF NOT EXISTS gateway_id text REFERENCES gateways (gateway_id) ON DELETE SET NULL;
CREATE INDEX IF NOT EXISTS devices_gateway_idx ON devices (gateway_id) WHERE gateway_id IS NOT NULL;

-- HJ 212-2017 §6.3: every frame carries the DAU's access password PW in clear text; only a salted hash is kept.
-- Formats (sanitel/secret_hash.py): scrypt$n$r$p$salt_hex$hash_hex, and sha256$salt_hex$hash_hex for the
-- passwords moved here from devices.metadata by this migration (SQL has no scrypt); re-setting one stores scrypt.
ALTER TABLE devices ADD COLUMN IF NOT EXISTS hj212_password_hash text;
UPDATE devices
   SET hj212_password_hash = 'sha256$' || s.salt || '$' ||
                             encode(sha256(convert_to(s.salt || (metadata->>'hj212_password'), 'UTF8')), 'hex'),
       metadata = metadata - 'hj212_password'
  FROM (SELECT device_id AS id, md5(random()::text || clock_timestamp()::text) AS salt FROM devices) AS s
 WHERE devices.device_id = s.id AND devices.metadata ? 'hj212_password';

-- Service accounts per role (sanitel/broker_auth.py SERVICE_RULES): exactly the topics each one needs.
-- 'service' (everything a collector and the alert publisher needed before roles) stays for existing deployments.
ALTER TABLE mqtt_service_users DROP CONSTRAINT IF EXISTS mqtt_service_users_role_check;
ALTER TABLE mqtt_service_users ADD CONSTRAINT mqtt_service_users_role_check
    CHECK (role IN ('collector', 'hj212', 'evaluator', 'api_probe', 'simulator', 'service'));
ALTER TABLE mqtt_service_users DROP CONSTRAINT IF EXISTS mqtt_service_users_username_check;
ALTER TABLE mqtt_service_users ADD CONSTRAINT mqtt_service_users_username_check
    CHECK (username ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$');

-- Registry changes, for caches: payload '<table>:<id>' (ids hold no ':').
CREATE OR REPLACE FUNCTION sanitel_notify_registry() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'devices' THEN
        PERFORM pg_notify('sanitel_registry', 'devices:' || COALESCE(NEW.device_id, OLD.device_id));
    ELSE
        PERFORM pg_notify('sanitel_registry', 'gateways:' || COALESCE(NEW.gateway_id, OLD.gateway_id));
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS devices_notify_registry ON devices;
CREATE TRIGGER devices_notify_registry AFTER INSERT OR UPDATE OR DELETE ON devices
    FOR EACH ROW EXECUTE FUNCTION sanitel_notify_registry();
DROP TRIGGER IF EXISTS gateways_notify_registry ON gateways;
CREATE TRIGGER gateways_notify_registry AFTER INSERT OR UPDATE OR DELETE ON gateways
    FOR EACH ROW EXECUTE FUNCTION sanitel_notify_registry();
