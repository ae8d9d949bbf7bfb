-- Every change of the registry notifies (channel sanitel_registry), so that the alert evaluator's registry cache
-- (alerts/subjects.py RegistryCache) can keep one registry across passes: it reads every site's params, kind and
-- parent, and every device, so ANY insert, update or delete of a site matters to it — not only the time zone and
-- parent that 0080 notified for — and so does a TRUNCATE, which fires no row trigger.
--
-- Payloads are ones the collector's and the HJ 212 listener's cache (processors/registry.py DeviceRegistry)
-- already handles rightly: 'sites:<id>' and 'sites:*' drop its whole cache (a site's time zone is that of every
-- device below it). A TRUNCATE of devices sends 'sites:*' too: 'devices:*' would drop only an entry for a device
-- named '*' there, and the truncated devices would stay cached. TRUNCATE ... CASCADE fires the trigger of every
-- table it empties. pg_notify folds identical payloads of one transaction into one notification.
--
-- No grant: trigger functions run whoever fires them, and EXECUTE on functions is PUBLIC's by default
-- (as for sanitel_notify_registry and sanitel_notify_sites before).

DROP TRIGGER IF EXISTS sites_notify_registry ON sites;
CREATE TRIGGER sites_notify_registry AFTER INSERT OR UPDATE OR DELETE ON sites
    FOR EACH ROW EXECUTE FUNCTION sanitel_notify_sites();

CREATE OR REPLACE FUNCTION sanitel_notify_registry_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('sanitel_registry', 'sites:*');
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS sites_notify_registry_truncated ON sites;
CREATE TRIGGER sites_notify_registry_truncated AFTER TRUNCATE ON sites
    FOR EACH STATEMENT EXECUTE FUNCTION sanitel_notify_registry_truncated();
DROP TRIGGER IF EXISTS devices_notify_registry_truncated ON devices;
CREATE TRIGGER devices_notify_registry_truncated AFTER TRUNCATE ON devices
    FOR EACH STATEMENT EXECUTE FUNCTION sanitel_notify_registry_truncated();
