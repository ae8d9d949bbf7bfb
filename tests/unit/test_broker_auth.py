"""Broker password hashes: ours and mosquitto_passwd's are one format (the tool runs; no broker does)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from sanitel.broker_auth import hash_password, verify_password


def test_hash_format_matches_mosquitto_passwd(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(path), "dev1", "s3cret"], check=True)
    made_by_mosquitto = path.read_text().strip().split(":", 1)[1]
    assert made_by_mosquitto.startswith("$7$")
    assert verify_password("s3cret", made_by_mosquitto) and not verify_password("other", made_by_mosquitto)
    ours = hash_password("s3cret")
    _, seven, iterations, salt, digest = ours.split("$")
    assert seven == "7" and int(iterations) >= 101 and len(salt) == 16 and len(digest) == 88
    assert verify_password("s3cret", ours) and not verify_password("s3creT", ours)
