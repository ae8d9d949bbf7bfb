"""The local stack's two servers — PostgreSQL with TimescaleDB, and Mosquitto — as managed processes.

Used by ``sanitel stack up/down/status`` and by the test fixtures, which start their own on free ports
so that fault tests can stop, kill and restart them. Servers bind to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import paho.mqtt.client as mqtt
import psycopg
from psycopg import sql

from sanitel.db import set_password
from sanitel.errors import SanitelError
from sanitel.local_secrets import SUPERUSER, TlsFiles
from sanitel.mqtt_wire import BrokerTarget, paho_client

PG_SUPPORTED_MAJORS = (14, 15, 16, 17)  # what TimescaleDB 2.19 builds against
# Mosquitto's limits sit this far above the collector's payload limit (SANITEL_MAX_PAYLOAD_BYTES): a payload a
# little over it still reaches the collector and is dead-lettered as payload_too_large (capped), so its sender
# shows; the broker refuses larger payloads (message_size_limit), and disconnects a client whose packet —
# payload, topic, header and properties — is larger still (max_packet_size) without reading it.
BROKER_LIMIT_HEADROOM = 16 * 1024


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


_LOWEST_CHOSEN_PORT = 20000  # above the well-known and registered ports local services listen on
_handed_out: set[int] = set()
_PORT_CHOICE = random.Random()  # seeded from the OS: parallel test workers choose apart


def _ephemeral_ports_start() -> int:
    """Where the kernel's ephemeral range begins: the local ports it gives outgoing connections and ``bind(0)``."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; other systems start higher (49152)


def free_port() -> int:
    """A port nothing listens on, for a server about to start.

    Chosen at random below the ephemeral range, not by ``bind(0)``: a port the kernel hands out is also the local
    port of the next outgoing connection (a test's database or metrics poll), which then holds it when the server
    binds — and a server that restarts on its port (the fault tests) would find it taken. Never the same port twice
    in one process, so two servers started one after the other do not get one port."""
    top = max(_LOWEST_CHOSEN_PORT + 1000, _ephemeral_ports_start() - 1)  # - 1: callers may take port + 1 too
    while True:
        port = _PORT_CHOICE.randrange(_LOWEST_CHOSEN_PORT, top)
        if port not in _handed_out and not port_in_use(port):
            _handed_out.add(port)
            return port


def _wait_for_port(port: int, timeout: float, alive: Callable[[], bool] | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _hand_to_user(path: Path, user: str) -> None:
    """Give a data folder to the service user (PostgreSQL refuses to run as root)."""
    if not _running_as_root():
        return
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)


def _check_writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise SanitelError(
            f"data folder {path} is not writable ({exc.strerror}); set SANITEL_DATA_DIR to a folder you can "
            "write, or fix its permissions"
        ) from None


# --------------------------------------------------------------------------------------------
# PostgreSQL + TimescaleDB
# --------------------------------------------------------------------------------------------


def find_pg_bindir() -> Path:
    """The bin folder of the newest installed PostgreSQL server (Debian layout), checked for support."""
    root = Path("/usr/lib/postgresql")
    majors = sorted(int(p.name) for p in root.glob("*") if p.name.isdigit() and (p / "bin/postgres").exists())
    if not majors:
        raise SanitelError("no PostgreSQL server is installed: run scripts/install.sh (installs Debian's postgresql)")
    major = majors[-1]
    if major not in PG_SUPPORTED_MAJORS:
        raise SanitelError(
            f"PostgreSQL {major} is not supported by TimescaleDB 2.19 (supported: "
            f"{', '.join(map(str, PG_SUPPORTED_MAJORS))}); install postgresql-15 and re-run scripts/install.sh"
        )
    return root / str(major) / "bin"


def timescaledb_installed(bindir: Path) -> bool:
    pg_config = bindir / "pg_config"
    cmd = str(pg_config) if pg_config.exists() else "pg_config"
    sharedir = subprocess.run([cmd, "--sharedir"], capture_output=True, text=True, check=False).stdout.strip()
    return bool(sharedir) and Path(sharedir, "extension", "timescaledb.control").exists()


PgAuth = Literal["trust", "scram-sha-256"]


@dataclass
class PostgresServer:
    """A private PostgreSQL cluster with ``timescaledb`` preloaded, data in ``data_dir``.

    ``auth="scram-sha-256"`` (the local stack) makes every connection, TCP and Unix socket alike, prove a password;
    the superuser's is ``superuser_password``. ``trust`` (the test fixtures: fast, and any role may connect without
    one) lets in whoever can reach 127.0.0.1."""

    data_dir: Path
    port: int
    dbname: str = "sanitel"
    fsync: bool = True
    auth: PgAuth = "trust"
    superuser_password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).absolute()
        self.bindir = find_pg_bindir()
        self.log_file = self.data_dir.parent / f"{self.data_dir.name}.log"

    @property
    def url(self) -> str:
        """The superuser's URL, with its password when there is one (show it only through redact_url)."""
        return self.url_for(SUPERUSER, self.superuser_password if self.auth != "trust" else None)

    def url_for(self, user: str, password: str | None = None, dbname: str | None = None) -> str:
        userinfo = f"{user}:{quote(password, safe='')}" if password else user
        return f"postgresql://{userinfo}@127.0.0.1:{self.port}/{dbname or self.dbname}"

    def _run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if _running_as_root():
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise SanitelError(f"{args[0]} failed: {(proc.stderr or proc.stdout).strip()[-800:]}")
        return proc

    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        if self.initialised():
            return
        if not timescaledb_installed(self.bindir):
            raise SanitelError("TimescaleDB is not installed for this PostgreSQL: run scripts/install.sh")
        _check_writable(self.data_dir)
        if any(self.data_dir.iterdir()):
            raise SanitelError(f"{self.data_dir} is not empty and holds no PostgreSQL cluster; empty or move it")
        self.data_dir.chmod(0o700)
        _hand_to_user(self.data_dir, "postgres")
        self.log_file.touch()
        _hand_to_user(self.log_file, "postgres")
        if _running_as_root():
            probe = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-w", str(self.data_dir)], check=False)
            if probe.returncode != 0:
                raise SanitelError(
                    f"the postgres user cannot write {self.data_dir} (a parent folder is not traversable); "
                    "set SANITEL_DATA_DIR to a folder under /var/tmp or make the parents world-executable"
                )
        if self.auth == "trust":
            self._run("initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                      "--no-locale", "--no-sync")
        else:
            with self._password_file() as pwfile:
                self._run("initdb", "-D", str(self.data_dir), "-U", SUPERUSER, f"--auth-host={self.auth}",
                          f"--auth-local={self.auth}", f"--pwfile={pwfile}", "-E", "UTF8", "--no-locale", "--no-sync")
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.data_dir}'",
            "shared_preload_libraries": "'timescaledb'",
            "timescaledb.telemetry_level": "off",
            "max_connections": "200",
            "shared_buffers": "256MB",
            "fsync": "on" if self.fsync else "off",
            "synchronous_commit": "on",
            "log_min_messages": "warning",
            "max_wal_size": "2GB",
            "password_encryption": "'scram-sha-256'",
        }
        with open(self.data_dir / "postgresql.conf", "a") as fh:
            fh.write("\n# sanitel local stack\n")
            fh.writelines(f"{k} = {v}\n" for k, v in conf.items())

    def running(self) -> bool:
        return self.initialised() and self._run("pg_ctl", "-D", str(self.data_dir), "status", check=False).returncode == 0

    def start(self, timeout: float = 60) -> None:
        if self.auth != "trust" and not self.superuser_password:
            raise ValueError(f"auth {self.auth} needs a superuser_password")
        self.init()
        if self.running():
            return
        if port_in_use(self.port):
            raise SanitelError(
                f"port {self.port} is already in use: set SANITEL_PG_PORT to a free port or stop what listens there"
            )
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-o", f"-p {self.port}",
                  "-w", "-t", str(int(timeout)), "start", check=False, timeout=timeout + 10)
        if not self.running() or not _wait_for_port(self.port, timeout):
            tail = self.log_file.read_text(errors="replace")[-1500:] if self.log_file.exists() else ""
            raise SanitelError(f"PostgreSQL did not start on port {self.port}; its log says:\n{tail}")
        self._enforce_password_auth()
        self._ensure_database()

    @contextlib.contextmanager
    def _password_file(self) -> Iterator[Path]:
        """The superuser's password in a file initdb (running as the postgres user) can read, 0600, removed after."""
        fd, name = tempfile.mkstemp(dir=self.data_dir.parent, prefix=f".{self.data_dir.name}-pw.")
        path = Path(name)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{self.superuser_password}\n")
            _hand_to_user(path, "postgres")
            yield path
        finally:
            path.unlink(missing_ok=True)

    def _enforce_password_auth(self) -> None:
        """A cluster made with ``trust`` (before the local stack used passwords) is switched to ``self.auth``: the
        superuser gets its password (over the still-trusting connection), pg_hba.conf stops trusting, and the
        server reloads it."""
        if self.auth == "trust":
            return
        hba = self.data_dir / "pg_hba.conf"
        lines = hba.read_text().splitlines(keepends=True)
        trusting = [i for i, line in enumerate(lines) if not line.lstrip().startswith("#")
                    and "trust" in line.split()]
        if not trusting:
            return
        with psycopg.connect(self.url_for(SUPERUSER, dbname="postgres"), autocommit=True, connect_timeout=10) as conn:
            set_password(conn, SUPERUSER, self.superuser_password or "")
        for i in trusting:
            fields = lines[i].split()
            fields[fields.index("trust")] = self.auth
            lines[i] = " ".join(fields) + "\n"
        hba.write_text("".join(lines))
        self._run("pg_ctl", "-D", str(self.data_dir), "reload")

    def _ensure_database(self) -> None:
        try:
            conn = psycopg.connect(self.url_for(SUPERUSER, self.superuser_password, "postgres"), autocommit=True,
                                   connect_timeout=10)
        except psycopg.OperationalError as exc:
            hint = (" (the superuser password of the local stack's secrets does not open this cluster: restore the "
                    "secrets file it was made with, or move the cluster away to make a new one)"
                    if "password authentication failed" in str(exc) else "")
            raise SanitelError(f"cannot connect to PostgreSQL on port {self.port}: {' '.join(str(exc).split())}"
                               f"{hint}") from None
        with conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.dbname,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.dbname)))

    def stop(self, mode: str = "fast") -> None:
        if self.running():
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop", check=False)

    def kill(self) -> None:
        """SIGKILL the postmaster (fault tests): no clean shutdown, crash recovery on next start."""
        pid_file = self.data_dir / "postmaster.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.1)


# --------------------------------------------------------------------------------------------
# Mosquitto
# --------------------------------------------------------------------------------------------


@dataclass
class MosquittoServer:
    """A private Mosquitto broker with persistence on, data in ``data_dir``."""

    data_dir: Path
    port: int
    password_file: Path | None = None
    acl_file: Path | None = None
    max_payload_bytes: int = 256 * 1024  # the collector's limit (SANITEL_MAX_PAYLOAD_BYTES)
    # a second listener with TLS (server certificate and key, and the CA that signed it) on tls_port
    tls: TlsFiles | None = None
    tls_port: int | None = None

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).absolute()
        self.conf_file = self.data_dir / "mosquitto.conf"
        self.pid_file = self.data_dir / "mosquitto.pid"
        self.log_file = self.data_dir / "mosquitto.log"
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def message_size_limit(self) -> int:
        """Largest payload the broker accepts; larger ones are refused (MQTT 5 publishers get PUBACK 0x83)."""
        return self.max_payload_bytes + BROKER_LIMIT_HEADROOM

    @property
    def max_packet_size(self) -> int:
        """Largest packet the broker reads; a client sending a larger one is disconnected."""
        return self.message_size_limit + BROKER_LIMIT_HEADROOM

    def write_config(self) -> None:
        _check_writable(self.data_dir)
        if (self.tls is None) != (self.tls_port is None):
            raise ValueError("a TLS listener needs both tls (the files) and tls_port")
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence true",
            f"persistence_location {self.data_dir}/",
            "autosave_interval 5",
            # A collector that is down must find every message waiting: the default (1000) drops the rest.
            "max_queued_messages 0",
            "max_inflight_messages 0",
            "persistent_client_expiration 14d",
            # oversized messages are refused here instead of being stored, queued and spooled in full
            f"message_size_limit {self.message_size_limit}",
            f"max_packet_size {self.max_packet_size}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
        if self.password_file:
            lines += ["allow_anonymous false", f"password_file {self.password_file}",
                      # a client's id is its user name: nobody can take over a service's (or device's) session
                      "use_username_as_clientid true",
                      # no retained messages: a device must not leave a message every new subscriber replays
                      "retain_available false"]
        else:
            lines.append("allow_anonymous true")
        if self.acl_file:
            lines.append(f"acl_file {self.acl_file}")
        if self.tls is not None:
            # the options after a listener line are that listener's: clients must trust our CA, need no certificate
            # (Mosquitto 2.0 speaks TLS 1.2 and 1.3 there by default)
            lines += [f"listener {self.tls_port} 127.0.0.1", f"cafile {self.tls.ca_cert}",
                      f"certfile {self.tls.server_cert}", f"keyfile {self.tls.server_key}"]
        if _running_as_root():
            lines.append("user root")  # data under a folder root owns; nothing is exposed beyond 127.0.0.1
        # 0600: it names the password file, the ACL and the key (the broker runs as the user that writes it)
        fd = os.open(self.conf_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        # a pid can be reused: make sure it is our mosquitto
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return pid if b"mosquitto" in cmdline and str(self.conf_file).encode() in cmdline else None

    def running(self) -> bool:
        return self.pid() is not None

    def start(self, timeout: float = 20) -> None:
        if self.running():
            return
        if not Path(self.binary).exists():
            raise SanitelError("mosquitto is not installed: run scripts/install.sh")
        for port, setting in ((self.port, "SANITEL_MQTT_PORT"), (self.tls_port, "SANITEL_MQTT_TLS_PORT")):
            if port is not None and port_in_use(port):
                raise SanitelError(f"port {port} is already in use: set {setting} to a free port or stop what "
                                   "listens there")
        self.write_config()
        log = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child process
        proc = subprocess.Popen([self.binary, "-c", str(self.conf_file)], stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.pid_file.write_text(str(proc.pid))
        for port in (self.port, self.tls_port):
            if port is not None and not _wait_for_port(port, timeout, alive=lambda: proc.poll() is None):
                tail = self.log_file.read_text(errors="replace")[-1500:]
                raise SanitelError(f"Mosquitto did not start on port {port}; its log says:\n{tail}")

    def _signal(self, sig: int, timeout: float) -> None:
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)

    def stop(self) -> None:
        """Clean stop: Mosquitto writes its persistence file (queued messages survive a restart)."""
        self._signal(signal.SIGTERM, timeout=15)

    def kill(self) -> None:
        self._signal(signal.SIGKILL, timeout=5)


class BrokerBacklog:
    """What Mosquitto still holds for its subscribers — queued, or in flight and not yet acknowledged — from its $SYS
    reports (every 10 s, of the values that changed): the message store less the retained messages
    ($SYS's own). The collector acknowledges a
    message only once it is stored (or spooled), so nothing held means the collector has everything; a count of what
    it received cannot say so, as a reconnect makes the broker deliver unacknowledged messages again. (For the
    benchmarks and tests that wait for a day's messages to be stored.)"""

    TOPICS = ("$SYS/broker/store/messages/count", "$SYS/broker/retained messages/count")
    INTERVAL_S = 11.0  # Mosquitto's sys_interval (10 s), and a second for the report to arrive

    def __init__(self, port: int) -> None:
        self.reports: dict[str, tuple[int, float]] = {}  # topic → (value, monotonic arrival)
        self.client = paho_client(BrokerTarget.parse(f"mqtt://127.0.0.1:{port}"), f"backlog-watch-{free_port()}")
        self.client.on_message = self._report
        self.client.reconnect()
        for topic in self.TOPICS:
            self.client.subscribe(topic)
        self.client.loop_start()

    def _report(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        self.reports[message.topic] = (int(message.payload), time.monotonic())

    def held(self, since: float) -> int | None:
        """Messages held now, once a whole report interval has passed after ``since`` (monotonic): Mosquitto reports a
        $SYS value only when it changed, so the latest report is the current count; None until then. The count
        includes our own two reports on their way to us when it was taken (a quiet broker says 2)."""
        store, retained = (self.reports.get(topic) for topic in self.TOPICS)
        if store is None or retained is None or time.monotonic() - since < self.INTERVAL_S:
            return None
        return max(0, store[0] - retained[0] - len(self.TOPICS))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
