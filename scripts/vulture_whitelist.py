"""Names vulture reports as unused that are used where it cannot see: by a framework (FastAPI, pydantic,
paho, signal), by the wire contract, or by tests and operators. In vulture's ``--make-whitelist``
format; checked with

    .venv/bin/vulture ingest processors alerts api simulators schemas sanitel scripts/vulture_whitelist.py \
        --min-confidence 60

Dead code does not belong here: delete it. A name listed here counts as used everywhere, so keep the
list to names whose use is certain, each under the reason it is used.
"""
# Not meant to be imported or run: bare names are how vulture reads a whitelist, hence no lint here.
# ruff: noqa

# --- FastAPI: route handlers, registered by their decorators ------------------------------------------
household_deposits  # api/routes/deposits.py
point_deposits  # api/routes/deposits.py
rotate_credentials  # api/routes/devices.py
register_gateway  # api/routes/gateways.py
set_gateway_devices  # api/routes/gateways.py
plant_compliance  # api/routes/emissions.py
plant_averages  # api/routes/emissions.py
metric_catalogue  # api/routes/readings.py
device_latest  # api/routes/readings.py
device_history  # api/routes/readings.py
validate_rule  # api/routes/rules.py
create_rule  # api/routes/rules.py
put_rule  # api/routes/rules.py
site_latest  # api/routes/sites.py

# --- pydantic: model configuration and validators, called by the model machinery ----------------------
model_config  # every BaseModel / BaseSettings
_._keys_as_text  # alerts/rules.py
_._default_is_a_key  # alerts/rules.py
_._clear_on_the_safe_side  # alerts/rules.py
_._hours  # alerts/rules.py
_._known_source  # alerts/rules.py
_._known_field  # alerts/rules.py
_._consistent  # alerts/rules.py
_._positive  # alerts/rules.py
_._metadata_storable  # api/models.py
_._dates_in_order  # api/models.py TruckRoutePlan
_._only_when_provisional  # api/models.py HistoryPoint: a model_serializer
_._check_database_url  # sanitel/settings.py
_._check_mqtt_url  # sanitel/settings.py
# per-component connection settings, read by name: getattr(self, f"{role}_database_url") in Settings.database_url_for
# and getattr(self, f"{account}_mqtt_url") in Settings.mqtt_url_for
_.ingest_database_url
_.api_database_url
_.evaluator_database_url
_.processor_database_url
_.collector_mqtt_url
_.hj212_mqtt_url
_.evaluator_mqtt_url
_.api_probe_mqtt_url
_.simulator_mqtt_url
_._parameters_fit_kind  # simulators/faults.py
_._households_range  # simulators/scenario.py
_._unique_categories  # simulators/scenario.py
_._one_start  # simulators/scenario.py
_._lines_exist  # simulators/scenario.py
_._known_zone  # simulators/scenario.py
_._cross_references  # simulators/scenario.py
# pydantic-settings: the settings source hooks and their (unused) parameters (sanitel/settings.py)
_.settings_customise_sources
_.get_field_value
dotenv_settings
file_secret_settings

# --- pydantic response models: fields serialised into API responses (api/models.py, api/routes/rules.py)
sources  # History: which source served which range
latitude
longitude
created_at
child_count
auto_registered
has_credentials
has_hj212_password
broker_reloaded
weight_kg
annotations
fired_at
acknowledged_by
ack_comment
updated_at
updated_by
overrides_shipped
devices_reporting
sweepers_active
swept_km
sweeper_work_h
sweeper_min_soc_pct
station_trucks
station_net_t
station_max_h2s_mg_m3
station_max_nh3_mg_m3
station_max_noise_dba
deposit_kg
recyclable_kg
hazardous_kg
kitchen_kg
other_kg
camera_detections
mis_sorted
overflow
smoke_fire
alerts_opened
alerts_critical
alerts_open_at_end
alerts_acknowledged

# --- dataclass fields read through dataclasses.fields() / asdict() ------------------------------------
condition_ended_at  # alerts/lifecycle.py Alert: ALERT_COLUMNS, the SELECT list and the notification body

# --- the wire contract: reading fields (schemas/readings.py), decoded by msgspec and stored by name ----
odometer_km
soc_pct
pack_voltage_v
pack_current_a
cell_voltage_max_v
cell_voltage_min_v
battery_temp_max_c
battery_temp_min_c
motor_temp_c
motor_rpm
work_mode
fan_speed_rpm
brush_on
water_tank_pct
hopper_fill_pct
swept_distance_km
work_hours_h
alarm_level
compactor_running
compactor_pressure_mpa
hopper_level_pct
h2s_mg_m3
nh3_mg_m3
odour_concentration
noise_dba
leachate_level_pct
deodoriser_on
truck_id
weighbridge_in_t
weighbridge_out_t
fill_level_pct
lid_open
temperature_c
fire_alarm
battery_pct
object_count
image_ref
dust_mg_m3
dust_zs_mg_m3
dust_flag
so2_mg_m3
so2_zs_mg_m3
so2_flag
nox_mg_m3
nox_zs_mg_m3
nox_flag
co_mg_m3
co_zs_mg_m3
co_flag
hcl_mg_m3
hcl_zs_mg_m3
hcl_flag
hf_mg_m3
hf_zs_mg_m3
hf_flag
toc_mg_m3
toc_zs_mg_m3
toc_flag
nh3_zs_mg_m3
nh3_flag
hg_mg_m3
hg_zs_mg_m3
hg_flag
o2_pct
h2o_flag
flue_temp_c
flue_pressure_kpa
flue_velocity_m_s
flue_flow_m3_h
furnace_temp_c
compactor_state  # schemas/readings.py TruckTelemetry
lifter_state  # schemas/readings.py TruckTelemetry
direction  # schemas/readings.py WeighbridgeTicket
shift_start  # api/models.py TruckRoutePlan (response field)
shift_end  # api/models.py TruckRoutePlan (response field)
pnum  # schemas/hj212.py: the frame's PNUM header, parsed with the others
QN_RTN_READY  # schemas/hj212.py: the standard's whole QnRtn code table, beside the codes the listener sends
QN_RTN_REJECTED

# --- paho-mqtt: callbacks it calls, their (unused) parameters, and attributes it reads ------------------
_.on_connect
_.on_disconnect
_.on_subscribe
_.on_publish
_.on_message
_.on_unsubscribe
_.on_socket_open  # simulators/connections.py: one selector over many clients (paho's external-loop hooks)
_.on_socket_close
userdata
properties
_.SessionExpiryInterval  # MQTT 5 CONNECT properties
_.ReceiveMaximum
_.dup  # ingest/buffered_client.py: an MQTTMessage as paho builds it
_.retain
_.message_callback_add  # ingest/buffered_client.py: overrides paho's, to refuse it

# --- Python's own protocols: called implicitly -----------------------------------------------------------
_.__call__  # e.g. alerts/notify/webhook.py Transport, a typing.Protocol for a callable

# --- C extensions: options set as attributes, read by the extension ------------------------------------
_.log_errors  # alerts/silences.py: re2.Options, refused patterns are reported to their author, not to stderr

# --- signal handlers: the signature the signal module calls -------------------------------------------
signum

# --- read by tests, benchmarks and operators (counters, catalogues, test-support entry points) ----------
free_port  # sanitel/servers.py: the test fixtures and bench/ start servers on free ports
BrokerBacklog  # sanitel/servers.py: the alert-truth bench and the ground-truth test wait on what the broker holds
held  # sanitel/servers.py: BrokerBacklog.held
generate  # simulators/run.py: a run without a broker (tests, bench, docs)
inventory  # simulators/run.py: a scenario's device counts (tests, docs)
check_message  # simulators/contract.py: the simulator's output checked against the wire contract (tests)
reading_time  # simulators/contract.py
verify_password  # sanitel/broker_auth.py: proves the password file is in Mosquitto's format (tests)
REASONS  # ingest/decode.py: the catalogue of rejection reason codes (documented; tests check the docs)
_.ignored  # schemas/records.py Decoded: why a message was skipped (sanitel's own alerts topics; tests read it)
HYPERTABLES  # sanitel/db.py: the hypertables the migrations must create (tests)
ERROR_CODES  # schemas/hj212.py: the codec's error catalogue (tests)
format_data_time  # schemas/hj212.py: encodes DataTime (tests build frames with it)
_.connections  # ingest/hj212_tcp.py ListenerStats: counters for operators and tests
_.frames
_.bad_frames
_.acks
_.nacks
_.publish_failures
_.publish_refused
_.connections_refused
_.idle_timeouts
_.write_timeouts
_.rate_limited
_.registry_refused
_.registry_unavailable
_.listen_connects  # processors/registry.py DeviceRegistry: LISTEN connections made (tests wait on it)
_.listening  # processors/registry.py DeviceRegistry: the cache is in use (tests, operators)
_.wait_listening  # processors/registry.py DeviceRegistry: tests wait until notifications arrive
connections
frames
bad_frames
acks
nacks
publish_failures
publish_refused
connections_refused
idle_timeouts
write_timeouts
rate_limited
registry_refused
registry_unavailable
plant_compliance_annual  # api/routes/emissions.py (FastAPI route)
put_site_params  # api/routes/sites.py (FastAPI route)
_._kernel_threshold  # alerts/rules.py (pydantic validator)
rejudge  # processors/cems_judgement.py: judges from stored averages (tests that build a year of averages by SQL)
_.device_settings_fallbacks  # ingest/hj212_tcp.py (listener stats, read by metrics)
device_settings_fallbacks  # ingest/hj212_tcp.py
# issue 14: the console's endpoints (FastAPI routes) and their response fields (api/console_models.py)
fleet_positions  # api/routes/fleet.py
site_limits  # api/routes/sites.py
sorting_points_day  # api/routes/sorting_points.py
position_ts
min_lat
max_lat
min_lon
max_lon
extent
households_registered
households_active
participation_rate
weight_kg_by_category
detections_by_type
_._clearance_has_bins  # simulators/scenario.py
_._some_share  # simulators/scenario.py
me  # api/console.py: GET /me
preview_silence  # api/routes/silences.py: POST /silences/preview
serve_in_thread  # api/threaded.py: used by tests/support, bench/console and scripts/console_screenshots.py
_.should_exit  # api/threaded.py: uvicorn.Server reads it to stop
