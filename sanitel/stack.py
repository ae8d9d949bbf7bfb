"""The local stack: the two servers the settings describe, started only where no URL names an existing one."""

from __future__ import annotations

from dataclasses import dataclass

from sanitel.broker_auth import BrokerAuthFiles
from sanitel.servers import MosquittoServer, PostgresServer
from sanitel.settings import Settings


@dataclass
class LocalStack:
    settings: Settings

    def __post_init__(self) -> None:
        data = self.settings.data_dir.absolute()
        self.postgres = PostgresServer(data / "postgres", self.settings.pg_port) if self.settings.uses_local_database \
            else None
        self.mosquitto = None
        if self.settings.uses_local_broker:
            # broker auth is on once `sanitel devices …` has written a password file (sanitel/broker_auth.py)
            auth = BrokerAuthFiles.for_data_dir(data)
            files = {"password_file": auth.password_file, "acl_file": auth.acl_file} if auth.enabled else {}
            self.mosquitto = MosquittoServer(data / "mosquitto", self.settings.mqtt_port, **files,
                                             max_payload_bytes=self.settings.max_payload_bytes)

    def up(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        # the postgres user must traverse the data folder to reach its cluster
        self.settings.data_dir.absolute().chmod(0o755)
        if self.postgres:
            self.postgres.start()
        if self.mosquitto:
            self.mosquitto.start()

    def down(self) -> None:
        if self.mosquitto:
            self.mosquitto.stop()
        if self.postgres:
            self.postgres.stop()
