"""Export the wire contract for gateway developers: JSON Schema per reading kind and an AsyncAPI 3 document,
generated from the same definitions the collector validates with.

    python -m sanitel.schemas.contract            # rewrite docs/contract/ (a test fails when the copy is stale)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec
import yaml

from sanitel.schemas.readings import DEFAULT_STREAM, NUL_RULE, READING_TYPES, GatewayBatch, Reading
from sanitel.schemas.topics import CITY_PATTERN, ID_PATTERN, SEVERITIES

OUT_DIR = Path(__file__).resolve().parent.parent / "docs" / "contract"
REJECTIONS_DOC = "Rejected input is stored in the dead-letter table with its raw bytes, topic and a reason code."
JSON_RULES = ("Payloads are UTF-8 JSON (RFC 8259) within I-JSON's rules (RFC 7493): member names unique in every "
              "object (duplicate_key otherwise), no lone surrogate escapes, nesting at most 128 levels. Integer "
              "fields take integral numbers (2.0). " + NUL_RULE.replace("U+0000 (NUL):", "U+0000 (NUL) in text:")
              + " Identifiers never contain NUL.")


def json_schemas() -> dict[str, dict[str, Any]]:
    """One JSON Schema document per reading type plus the gateway batch, keyed by file name."""
    out: dict[str, dict[str, Any]] = {}
    documented: tuple[type[msgspec.Struct], ...] = (*READING_TYPES, GatewayBatch)
    for reading_type in documented:
        (schema,), components = msgspec.json.schema_components([reading_type], ref_template="#/$defs/{name}")
        name = reading_type.__name__
        doc = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": name, **schema,
               "$defs": components}
        if issubclass(reading_type, Reading):  # every type but GatewayBatch
            doc["$comment"] = (f"Topic sanitation/{{city}}/{reading_type.kind}/{{device_id}}/{reading_type.stream}; "
                               "payload: one object or an array of them. Unknown fields are kept (in extra). "
                               + JSON_RULES)
        out[f"{_snake(name)}.schema.json"] = doc
    return out


def asyncapi() -> dict[str, Any]:
    params = {"city": {"description": f"city id, {CITY_PATTERN}"},
              "device_id": {"description": f"device id, {ID_PATTERN}"}}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for reading_type in READING_TYPES:
        name = reading_type.__name__
        (schema,), components = msgspec.json.schema_components([reading_type], ref_template="#/components/schemas/{name}")
        schemas.update(components)
        messages[name] = {
            "name": name, "contentType": "application/json", "summary": (reading_type.__doc__ or "").strip(),
            "payload": {"oneOf": [schema, {"type": "array", "minItems": 1, "items": schema}]},
        }
        channel = f"{reading_type.kind}_{reading_type.stream}"
        channels[channel] = {
            "address": f"sanitation/{{city}}/{reading_type.kind}/{{device_id}}/{reading_type.stream}",
            "parameters": params, "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        operations[f"publish_{channel}"] = {
            "action": "send", "channel": {"$ref": f"#/channels/{channel}"},
            "summary": f"A {reading_type.kind} device publishes {reading_type.stream} readings at QoS 1.",
            "description": REJECTIONS_DOC,
        }
    (batch_schema,), components = msgspec.json.schema_components([GatewayBatch], ref_template="#/components/schemas/{name}")
    schemas.update(components)
    messages["GatewayBatch"] = {"name": "GatewayBatch", "contentType": "application/json", "payload": batch_schema,
                                "summary": "Many devices' readings; each item adds kind, device_id and an optional "
                                           f"stream (defaults: {json.dumps(DEFAULT_STREAM)})."}
    channels["gateway_batch"] = {"address": "sanitation/{city}/gateway/{gateway_id}/batch",
                                 "parameters": {"city": params["city"], "gateway_id": {"description": ID_PATTERN}},
                                 "messages": {"GatewayBatch": {"$ref": "#/components/messages/GatewayBatch"}}}
    operations["publish_gateway_batch"] = {"action": "send", "channel": {"$ref": "#/channels/gateway_batch"},
                                           "summary": "A registered gateway publishes a batch at QoS 1.",
                                           "description": REJECTIONS_DOC + " One bad reading is rejected with its "
                                                                           "index; the others land. Only readings of "
                                                                           "devices registered behind this gateway "
                                                                           "land; any other is dead-lettered "
                                                                           "not_behind_gateway, and a batch never "
                                                                           "registers a device."}
    channels["cems_hj212"] = {"address": "sanitation/{city}/cems/{mn}/hj212",
                              "parameters": {"city": params["city"], "mn": {"description": "HJ 212 MN (station id)"}},
                              "messages": {"Hj212Frame": {"$ref": "#/components/messages/Hj212Frame"}}}
    messages["Hj212Frame"] = {"name": "Hj212Frame", "contentType": "text/plain",
                              "summary": "A raw HJ 212-2017 frame: ##, 4-digit length, data segment, CRC, CRLF.",
                              "payload": {"type": "string"}}
    operations["publish_cems_hj212"] = {"action": "send", "channel": {"$ref": "#/channels/cems_hj212"},
                                        "summary": "A CEMS data acquisition unit publishes raw HJ 212 frames.",
                                        "description": "PW must match the MN's registered HJ 212 password "
                                                       "(hj212_wrong_password); an MN without one is refused "
                                                       "(hj212_no_password) unless SANITEL_HJ212_REQUIRE_PASSWORD "
                                                       "is off."}
    channels["alerts"] = {"address": "sanitation/{city}/alerts/{severity}",
                          "parameters": {"city": params["city"], "severity": {"enum": list(SEVERITIES)}},
                          "messages": {"Alert": {"$ref": "#/components/messages/Alert"}}}
    messages["Alert"] = {"name": "Alert", "contentType": "application/json",
                         "summary": "An alert transition (firing, resolved, reminder) published by sanitel.",
                         "payload": {"type": "object"}}
    operations["receive_alerts"] = {"action": "receive", "channel": {"$ref": "#/channels/alerts"},
                                    "summary": "Subscribers receive alert notifications at QoS 1."}
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "sanitel device wire contract", "version": "1.0.0",
                 "description": "MQTT topics and payloads that device gateways publish to sanitel. Timestamps `ts`"
                                " are device time: exactly RFC 3339 date-time with an offset (`T` and `Z` in either "
                                "case) or epoch milliseconds; `seq` is the per-device sequence number; redelivery "
                                "is harmless (unique on device, ts, seq). " + JSON_RULES + " The collector "
                                "subscribes to sanitation/{city}/#: a topic outside these channels is dead-lettered "
                                "as bad_topic, except the alerts channel, which sanitel publishes and the collector "
                                "skips."},
        "defaultContentType": "application/json",
        "channels": channels, "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def rendered() -> dict[str, str]:
    files = {name: json.dumps(doc, indent=2, ensure_ascii=False) + "\n" for name, doc in json_schemas().items()}
    files["asyncapi.yaml"] = yaml.safe_dump(asyncapi(), sort_keys=False, allow_unicode=True, width=110)
    return files


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(name))


def main() -> int:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in rendered().items():
        (OUT_DIR / name).write_text(text)
    print(f"wrote {len(rendered())} files to {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
