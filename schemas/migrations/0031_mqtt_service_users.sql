-- Broker accounts that are not devices (the collector, the alert publisher, load simulators).
-- `password_hash` is already in Mosquitto's password-file format ($7$iterations$salt$hash), so the
-- broker's password file is generated from the registry without ever holding a plain password.
CREATE TABLE IF NOT EXISTS mqtt_service_users (
    username      text PRIMARY KEY CHECK (username ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$'),
    role          text NOT NULL CHECK (role IN ('service', 'simulator')),
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
