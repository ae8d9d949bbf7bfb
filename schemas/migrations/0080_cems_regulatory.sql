-- Incinerator compliance as regulators judge it (issue 13; docs/compliance.md).
--
-- cems_marks: operating-state marks per furnace line, per the MEE rules for marking automatic-monitoring data of
-- municipal-waste incineration power plants (announcement 2019 No. 50). A mark belongs to the line's CEMS unit
-- (device_id). Furnace marks: bake_out 烘炉, start_up 启炉, shut_down 停炉, shut 停运, fault 故障, accident 事故;
-- monitoring-system marks: cms_maintenance 维护, cms_calibration 校准, cms_fault 设备故障, cms_outage 断电/通讯中断.
-- An audit trail, never rewritten: a correction is a new row naming the mark it `supersedes` (withdrawn = the
-- correction removes the mark); the only change to a stored row is setting its `superseded_by` once. Rows are
-- never deleted nor truncated (triggers below).
--
-- cems_daily_judgements: the daily regulatory judgement per line and local day that processors/cems_judgement.py
-- maintains beside cems_averages — Order No. 10's furnace-temperature count, marked hours against the yearly cap,
-- dust during marked periods, GB daily exceedances under normal operation, completeness, the EU CO 24-hour rule.
-- `final` is false while the day has not ended: its counts are provisional, not a verdict.
--
-- cems_averages gains status 'marked': a period the line spent under a furnace mark is outside normal operation.
-- Safe to run twice.

CREATE TABLE IF NOT EXISTS cems_marks (
    mark_id        bigserial PRIMARY KEY,
    device_id      text NOT NULL,
    plant_id       text,
    line_id        text,
    mark           text NOT NULL CHECK (mark IN ('bake_out', 'start_up', 'shut_down', 'shut', 'fault', 'accident',
                                                'cms_maintenance', 'cms_calibration', 'cms_fault', 'cms_outage')),
    starts_at      timestamptz NOT NULL,
    ends_at        timestamptz,                 -- NULL: the mark is still open
    reason         text NOT NULL CHECK (length(reason) BETWEEN 1 AND 2000),
    source         text NOT NULL CHECK (source IN ('api', 'cli', 'dau')),
    created_by     text NOT NULL,               -- API key name, CLI user, or the data unit
    created_at     timestamptz NOT NULL DEFAULT now(),
    supersedes     bigint REFERENCES cems_marks (mark_id),
    superseded_by  bigint REFERENCES cems_marks (mark_id),
    withdrawn      boolean NOT NULL DEFAULT false,
    CHECK (ends_at IS NULL OR ends_at > starts_at)
);
CREATE INDEX IF NOT EXISTS cems_marks_device_time ON cems_marks (device_id, starts_at);
CREATE UNIQUE INDEX IF NOT EXISTS cems_marks_one_correction ON cems_marks (supersedes) WHERE supersedes IS NOT NULL;

CREATE OR REPLACE FUNCTION cems_marks_audit_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'TRUNCATE') THEN
        RAISE EXCEPTION 'cems_marks is an audit trail: marks are corrected, never deleted'
            USING HINT = 'POST a correction (supersedes) or a withdrawal instead';
    END IF;
    IF OLD.superseded_by IS NULL AND NEW.superseded_by IS NOT NULL
       AND (to_jsonb(NEW) - 'superseded_by') = (to_jsonb(OLD) - 'superseded_by') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'cems_marks is an audit trail: a stored mark is never rewritten'
        USING HINT = 'POST a correction that supersedes it';
END $$;
DROP TRIGGER IF EXISTS cems_marks_audit_only ON cems_marks;
CREATE TRIGGER cems_marks_audit_only BEFORE UPDATE OR DELETE ON cems_marks
    FOR EACH ROW EXECUTE FUNCTION cems_marks_audit_only();
DROP TRIGGER IF EXISTS cems_marks_no_truncate ON cems_marks;
CREATE TRIGGER cems_marks_no_truncate BEFORE TRUNCATE ON cems_marks
    FOR EACH STATEMENT EXECUTE FUNCTION cems_marks_audit_only();

CREATE TABLE IF NOT EXISTS cems_daily_judgements (
    device_id                text NOT NULL,
    day_start                timestamptz NOT NULL,   -- local midnight of the plant's day, as UTC
    day_end                  timestamptz NOT NULL,
    plant_id                 text,
    line_id                  text,
    day                      date NOT NULL,          -- the local day
    final                    boolean NOT NULL,       -- the day had ended when this was computed
    status                   text NOT NULL CHECK (status IN ('compliant', 'violation', 'not_determinable',
                                                             'in_progress')),
    furnace_5min_valid       integer NOT NULL DEFAULT 0,   -- 5-minute furnace-temperature averages judged
    furnace_5min_below_850   integer NOT NULL DEFAULT 0,   -- … of which below 850 °C (Order No. 10: > 5 = violation)
    furnace_5min             jsonb NOT NULL DEFAULT '[]'::jsonb,  -- [[start, avg °C | null, marked]]
    marked_hours             double precision NOT NULL DEFAULT 0, -- exempted furnace marks this day
    marked_hours_ytd         double precision NOT NULL DEFAULT 0, -- … since 1 January (local), this day included
    marks_over_limit         integer NOT NULL DEFAULT 0,   -- marks longer than allowed (fault/accident > 4 h)
    marked_dust_1h_max       double precision,             -- worst dust hourly average during marks, mg/m³ 11 % O2
    eu_co_24h_failed         integer,                      -- 1: neither CO 24-hour alternative held; NULL: not judged
    gb_exceedances           integer NOT NULL DEFAULT 0,   -- GB 24-hour averages above their limit (normal operation)
    details                  jsonb NOT NULL DEFAULT '{}'::jsonb,  -- marks, exceedances, completeness, reasons
    computed_at              timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, day_start)
);
CREATE INDEX IF NOT EXISTS cems_daily_judgements_plant_day ON cems_daily_judgements (plant_id, day);

DO $$
BEGIN
    ALTER TABLE cems_averages DROP CONSTRAINT IF EXISTS cems_averages_status_check;
    ALTER TABLE cems_averages ADD CONSTRAINT cems_averages_status_check
        CHECK (status IN ('valid', 'invalid', 'missing', 'not_operating', 'marked', 'in_progress'));
END $$;

GRANT SELECT, INSERT ON cems_marks TO sanitel_api;
GRANT UPDATE (superseded_by) ON cems_marks TO sanitel_api;
GRANT USAGE ON SEQUENCE cems_marks_mark_id_seq TO sanitel_api;
GRANT SELECT ON cems_marks TO sanitel_processor, sanitel_evaluator;
GRANT SELECT, INSERT, UPDATE, DELETE ON cems_daily_judgements TO sanitel_processor;
GRANT SELECT ON cems_daily_judgements TO sanitel_api, sanitel_evaluator;

-- A plant's or line's time zone decides how its HJ 212 units' DataTime is read (the registry cache of the collector
-- and the HJ 212 listener, processors/registry.py): a change reaches the caches at once, like a device's.
CREATE OR REPLACE FUNCTION sanitel_notify_sites() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('sanitel_registry', 'sites:' || COALESCE(NEW.site_id, OLD.site_id));
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS sites_notify_registry ON sites;
CREATE TRIGGER sites_notify_registry AFTER UPDATE OF timezone, parent_id OR DELETE ON sites
    FOR EACH ROW EXECUTE FUNCTION sanitel_notify_sites();
