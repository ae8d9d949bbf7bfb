"""The collector's Prometheus metrics, on a registry of its own (several collectors may share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Counted where it happens, in the decoder (pure code with no collector at hand), so per process: every collector's
# registry exposes this one counter. Label values are exception class names, a set bounded by the code.
DECODE_INTERNAL_ERRORS = Counter("sanitel_decode_internal_errors",
                                 "messages or readings the decoder failed on unexpectedly (a bug), dead-lettered as "
                                 "internal_error", ["exception"], registry=None)

# HJ 212 fields the decoder set aside without dropping the reading (issue 11): codes outside the HJ 212-2017 table
# (kept raw in extra; no code label, a data unit may send any) and columns voided as implausible (label: the
# column, a set bounded by the CEMS schema).
HJ212_UNKNOWN_CODES = Counter("sanitel_hj212_unknown_codes", "HJ 212 fields with a code outside the code table, "
                              "kept raw in the reading's extra", registry=None)
HJ212_INVALID_FIELDS = Counter("sanitel_hj212_invalid_fields", "HJ 212 values voided as implausible (null, raw value "
                               "and reason in extra)", ["column"], registry=None)


class CollectorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter("sanitel_messages_received", "MQTT messages received", ["kind"], registry=r)
        self.accepted = Counter("sanitel_readings_accepted", "readings accepted (written or already there)",
                                ["kind"], registry=r)
        self.duplicates = Counter("sanitel_readings_duplicate", "readings already stored (redelivery)",
                                  ["table"], registry=r)
        self.rejected = Counter("sanitel_readings_rejected", "readings or messages dead-lettered",
                                ["kind", "reason"], registry=r)
        self.out_of_turn = Counter("sanitel_batches_rewritten_out_of_turn",
                                   "batches of the second commit lane rolled back and written again after the batch "
                                   "ahead, which was waiting for the same readings (a redelivery)", registry=r)
        self.batch_size = Histogram("sanitel_batch_size", "messages per written batch",
                                    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 20000), registry=r)
        self.write_latency = Histogram("sanitel_write_latency_seconds", "time to write and commit one batch",
                                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r)
        self.lag = Histogram("sanitel_lag_seconds", "device time to commit (sampled)",
                             buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600), registry=r)
        self.spool_backlog_bytes = Gauge("sanitel_spool_backlog_bytes", "bytes waiting in the on-disk spool",
                                         registry=r)
        self.spooled = Counter("sanitel_messages_spooled", "messages written to the spool (database down)", registry=r)
        self.spool_max_bytes = Gauge("sanitel_spool_max_bytes", "the spool's cap (SANITEL_SPOOL_MAX_BYTES)", registry=r)
        self.spool_full = Gauge("sanitel_spool_full", "1 while the spool refuses batches (at its cap or disk full): "
                                "messages are left unacknowledged with the broker", registry=r)
        self.spool_quarantined = Counter("sanitel_spool_quarantined_records",
                                         "damaged or unreplayable spool records moved to a quarantine file",
                                         ["reason"], registry=r)
        self.devices_auto_registered = Counter("sanitel_devices_auto_registered",
                                               "unknown devices registered on first sight (device topics only)",
                                               registry=r)
        self.auto_register_refused = Counter("sanitel_auto_register_refused",
                                             "unknown devices not registered because SANITEL_AUTO_REGISTER_PER_MINUTE "
                                             "was reached (counted once per batch; their readings are dead-lettered "
                                             "as auto_register_limited)", registry=r)
        self.inflight_window = Gauge("sanitel_inflight_window_cap", "messages per batch an in-flight window (the "
                                     "broker's, or our receive maximum) persistently caps batches at; 0 when none "
                                     "is seen", registry=r)
        self.queue_depth = Gauge("sanitel_queue_depth", "messages received and not yet written", registry=r)
        self.broker_connected = Gauge("sanitel_broker_connected", "1 while connected to the broker and subscribed",
                                      registry=r)
        self.database_up = Gauge("sanitel_database_up", "1 while the database is reachable", registry=r)
        for per_process in (DECODE_INTERNAL_ERRORS, HJ212_UNKNOWN_CODES, HJ212_INVALID_FIELDS):
            r.register(per_process)
