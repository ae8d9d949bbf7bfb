-- Daily clearance (issue 15): the status `no_data` (sanitel/clearance.py `judge_clearance`). A deadline that passed
-- while no truck of the fleet had reported since the day's start — telemetry or an event of any truck, stored —
-- is no verdict: the fleet's telematics were down or not connected yet. The alert `point_not_cleared` already gave
-- none; the rows of clearance_days said "missed". Same definition now in both (one kernel function).
-- Rows stored as 'missed' before this migration are left as they are: the processor re-judges only yesterday and
-- today, and the live report recomputes any day.
ALTER TABLE clearance_days DROP CONSTRAINT IF EXISTS clearance_days_status_check;
ALTER TABLE clearance_days ADD CONSTRAINT clearance_days_status_check
    CHECK (status IN ('pending', 'on_time', 'overdue', 'late', 'missed', 'no_data'));
