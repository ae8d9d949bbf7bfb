"""Secrets the local stack generates for itself, kept under the data folder and never printed.

``data_dir/secrets/`` (mode 0700) holds ``stack.json`` (0600): the PostgreSQL superuser's password, one password per
component database role (``sanitel_ingest`` …, migration 0070) and one per broker service account. They are made once,
on the first ``sanitel stack up`` / ``sanitel run``, and reused; an entry missing from an older file is added.
``Settings.database_url_for`` / ``mqtt_url_for`` read them, so each local component connects with its own credentials.
Rotating: stop the stack, delete the entry (or the file), start it again (docs/security.md).

``data_dir/tls/`` holds the CA and the broker's server certificate when ``broker_tls`` is on; the private keys are 0600.
External deployments (SANITEL_DATABASE_URL / SANITEL_MQTT_URL set) use none of this.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sanitel.errors import SanitelError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

COMPONENT_ROLES = ("ingest", "api", "evaluator", "processor")
"""Components with a database role of their own: ``sanitel_<component>`` (schemas/migrations/0070)."""

# broker service account → (user name, role in mqtt_service_users; sanitel/broker_auth.py SERVICE_RULES). The
# prefix keeps them apart from device ids, which are broker user names too.
BROKER_ACCOUNTS: dict[str, tuple[str, str]] = {
    "collector": ("sanitel-collector", "collector"),
    "hj212": ("sanitel-hj212", "hj212"),
    "evaluator": ("sanitel-evaluator", "evaluator"),
    "api_probe": ("sanitel-api-probe", "api_probe"),
    "simulator": ("sanitel-simulator", "simulator"),
}
SUPERUSER = "postgres"
TLS_VALID_DAYS = 825  # the longest server-certificate lifetime Apple platforms accept; renewed when it runs short


def role_name(component: str) -> str:
    return f"sanitel_{component}"


def secrets_dir(data_dir: Path) -> Path:
    return Path(data_dir).absolute() / "secrets"


def stack_secrets_file(data_dir: Path) -> Path:
    return secrets_dir(data_dir) / "stack.json"


def simulator_devices_file(data_dir: Path) -> Path:
    """The demo simulator's device passwords ({"devices": {device_id: password}}), written by ``sanitel run``."""
    return secrets_dir(data_dir) / "simulator-devices.json"


def tls_dir(data_dir: Path) -> Path:
    return Path(data_dir).absolute() / "tls"


def new_secret() -> str:
    """192 random bits, URL-safe (no quoting needed in a connection URL)."""
    return secrets.token_urlsafe(24)


@dataclass(frozen=True)
class LocalSecrets:
    superuser_password: str
    role_passwords: dict[str, str]  # component → password of its database role
    broker_passwords: dict[str, str]  # broker account (BROKER_ACCOUNTS key) → password

    def to_json(self) -> str:
        return json.dumps({"postgres": {"superuser": self.superuser_password, "roles": self.role_passwords},
                           "broker": self.broker_passwords}, indent=2, sort_keys=True) + "\n"


def load_local_secrets(data_dir: Path) -> LocalSecrets | None:
    """The stack's secrets, or None before the first ``stack up`` (read-only: never creates anything)."""
    path = stack_secrets_file(data_dir)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SanitelError(f"cannot read the local stack's secrets {path}: {exc}") from None
    try:
        return LocalSecrets(str(raw["postgres"]["superuser"]), {k: str(v) for k, v in raw["postgres"]["roles"].items()},
                            {k: str(v) for k, v in raw["broker"].items()})
    except (KeyError, TypeError, AttributeError):
        raise SanitelError(f"{path} is not a secrets file of the local stack; move it away and start the stack "
                           "again to make a new one") from None


def ensure_local_secrets(data_dir: Path) -> LocalSecrets:
    """The stack's secrets, made on first use; entries a newer version needs are added, existing ones kept."""
    current = load_local_secrets(data_dir)
    roles = dict(current.role_passwords) if current else {}
    broker = dict(current.broker_passwords) if current else {}
    for component in COMPONENT_ROLES:
        roles.setdefault(component, new_secret())
    for account in BROKER_ACCOUNTS:
        broker.setdefault(account, new_secret())
    wanted = LocalSecrets(current.superuser_password if current else new_secret(), roles, broker)
    if wanted != current:
        write_private_file(stack_secrets_file(data_dir), wanted.to_json())
    else:
        _tighten(stack_secrets_file(data_dir))
    return wanted


def write_private_file(path: Path, text: str | bytes) -> None:
    """Write ``path`` atomically with mode 0600, in a folder only its owner may enter (0700) when it is made here."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp makes it 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode() if isinstance(text, str) else text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _tighten(path: Path) -> None:
    # a file copied in (or restored from a backup) with looser modes
    with contextlib.suppress(FileNotFoundError):
        path.parent.chmod(0o700)
        path.chmod(0o600)


# --------------------------------------------------------------------------------------------
# TLS for the local broker
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> TlsFiles:
        folder = tls_dir(data_dir)
        return cls(folder / "ca.pem", folder / "ca.key", folder / "server.pem", folder / "server.key")


def ensure_tls(data_dir: Path, *, now: dt.datetime | None = None) -> TlsFiles:
    """A CA (made once) and a server certificate it signs for localhost / 127.0.0.1, renewed a month before expiry.

    Clients trust the broker through the CA file (``mqtts://…?ca=<ca.pem>``); the keys never leave this folder."""
    # here, not at the top: settings import this module, and only a stack with broker_tls needs cryptography
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    files = TlsFiles.for_data_dir(data_dir)
    now = now or dt.datetime.now(dt.UTC)
    if files.ca_cert.exists() and files.ca_key.exists():
        ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise SanitelError(f"{files.ca_key} is not the EC key the local stack makes; delete {files.ca_key.parent}")
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sanitel local stack CA")])
        ca_cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=3650))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                                key_encipherment=False, data_encipherment=False, key_agreement=False,
                                                key_cert_sign=True, crl_sign=True, encipher_only=False,
                                                decipher_only=False), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
                   .sign(ca_key, hashes.SHA256()))
        write_private_file(files.ca_key, _key_pem(ca_key))
        _write_public(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
        files.server_cert.unlink(missing_ok=True)  # signed by a CA that is gone
    if files.server_cert.exists() and files.server_key.exists():
        current = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
        if current.not_valid_after_utc - now > dt.timedelta(days=30) and current.issuer == ca_cert.subject:
            _tighten_key(files)
            return files
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
                   .issuer_name(ca_cert.subject).public_key(server_key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5))
                   .not_valid_after(now + dt.timedelta(days=TLS_VALID_DAYS))
                   .add_extension(x509.SubjectAlternativeName([
                       x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False)
                   .sign(ca_key, hashes.SHA256()))
    write_private_file(files.server_key, _key_pem(server_key))
    _write_public(files.server_cert, server_cert.public_bytes(serialization.Encoding.PEM))
    return files


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write_public(path: Path, data: bytes) -> None:
    write_private_file(path, data)
    path.chmod(0o644)  # certificates are public: any local client may read the CA to trust the broker


def _tighten_key(files: TlsFiles) -> None:
    for key in (files.ca_key, files.server_key):
        with contextlib.suppress(FileNotFoundError):
            key.chmod(0o600)
