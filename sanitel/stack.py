"""The local stack: the two servers the settings describe, started only where no URL names an existing one.

Secure by default (docs/security.md): PostgreSQL asks every connection for a password (scram-sha-256; the
superuser's is generated), each component connects as its own role, and Mosquitto never allows anonymous clients —
its password file and ACL are written from the registry before it starts. Generated secrets live under
``data_dir/secrets`` (sanitel/local_secrets.py). Starting is split in two so that the caller can migrate, give the
roles their passwords and write the broker's files in between (sanitel/stack_cli.py ``bring_up``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sanitel.broker_auth import BrokerAuthFiles
from sanitel.local_secrets import LocalSecrets, TlsFiles, ensure_local_secrets, ensure_tls, load_local_secrets
from sanitel.servers import MosquittoServer, PostgresServer
from sanitel.settings import Settings


@dataclass
class LocalStack:
    settings: Settings

    def __post_init__(self) -> None:
        data = self.settings.data_dir.absolute()
        stored = load_local_secrets(data)
        self.postgres = None
        if self.settings.uses_local_database:
            self.postgres = PostgresServer(data / "postgres", self.settings.pg_port, auth="scram-sha-256",
                                           superuser_password=stored.superuser_password if stored else None)
        self.mosquitto = None
        if self.settings.uses_local_broker:
            auth = BrokerAuthFiles.for_data_dir(data)
            tls = TlsFiles.for_data_dir(data) if self.settings.broker_tls else None
            self.mosquitto = MosquittoServer(data / "mosquitto", self.settings.mqtt_port,
                                             password_file=auth.password_file, acl_file=auth.acl_file,
                                             max_payload_bytes=self.settings.max_payload_bytes, tls=tls,
                                             tls_port=self.settings.mqtt_tls_port if tls else None)

    def start_database(self) -> LocalSecrets:
        """Make (once) the stack's secrets and start PostgreSQL when it is local; returns the secrets."""
        data = self.settings.data_dir.absolute()
        data.mkdir(parents=True, exist_ok=True)
        # the postgres user must traverse the data folder to reach its cluster (secrets/ and tls/ stay 0700)
        data.chmod(0o755)
        stored = ensure_local_secrets(data)
        if self.postgres:
            self.postgres.superuser_password = stored.superuser_password
            self.postgres.start()
        return stored

    def start_broker(self) -> None:
        """Start Mosquitto when it is local: anonymous clients refused, so its password file and ACL must exist
        (the registry's accounts, written by the caller); with broker_tls also a TLS listener with a CA made here."""
        if self.mosquitto is None:
            return
        if self.mosquitto.password_file is None or not self.mosquitto.password_file.exists():
            raise RuntimeError("the broker's password file must be written before the broker starts")
        if self.mosquitto.tls is not None:
            ensure_tls(self.settings.data_dir)
        self.mosquitto.start()

    def down(self) -> None:
        if self.mosquitto:
            self.mosquitto.stop()
        if self.postgres:
            self.postgres.stop()
