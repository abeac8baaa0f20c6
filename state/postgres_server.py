"""A local PostgreSQL server on a loopback TCP port, from the binaries of the `pgserver` wheel.

`start_postgres()` creates a data directory with `initdb` when it has none (a temporary one by
default, removed on stop), runs `postgres` listening on `127.0.0.1:PORT` only (no unix socket),
waits until it accepts connections and returns a `PostgresServer` whose `.dsn` clients use. It is
a child of this process: stopped by `stop()` (fast shutdown) or when this process dies.

The `pgserver` package is used only for the PostgreSQL 16 binaries it bundles: its own API starts
servers on unix sockets, in shared per-user runtime directories, and stops them at interpreter exit,
none of which suits a test suite or a flow. Debian's binaries (`/usr/lib/postgresql/16/bin`) work
too, through `bin_dir`.

PostgreSQL refuses to run as root. When this process is root the server runs as an unprivileged
account (`nobody` unless told otherwise), which owns the data directory and must be able to reach
it; when it cannot reach pgserver's binaries (a venv under /root), they are copied once under the
temporary directory. Authentication is `trust` on the loopback interface: this is a server for
development, tests and benchmarks on one machine, not for production.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import psycopg

__all__ = [
    "PostgresServer",
    "PostgresServerError",
    "find_postgres_bin",
    "start_postgres",
]

_INSTALL_HINT = "pip install 'streamml[postgres]' (or pip install pgserver)"
_LOG_TAIL_BYTES = 4000
_SUPERUSER = "postgres"
_DATABASE = "postgres"
_NOT_DURABLE = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


class PostgresServerError(RuntimeError):
    """The PostgreSQL binaries could not be found, or the server could not be started."""


def find_postgres_bin() -> Path:
    """Return the directory of the PostgreSQL binaries bundled in the installed `pgserver` wheel.

    Raises `PostgresServerError` (saying how to install it) when the package or its binaries are
    missing. The package is located, not imported: importing it has side effects we do not need.
    """
    spec = importlib.util.find_spec("pgserver")
    if spec is None or spec.origin is None:
        raise PostgresServerError(
            "the PostgreSQL binaries come with the pgserver package, which is not installed in "
            f"{sys.prefix}; install it with `{_INSTALL_HINT}`, or pass the bin directory of "
            "another PostgreSQL installation (bin_dir=..., e.g. /usr/lib/postgresql/16/bin)"
        )
    path = Path(spec.origin).parent / "pginstall" / "bin"
    if not (path / "postgres").is_file():
        raise PostgresServerError(
            f"pgserver is installed but {path} has no postgres binary; this platform needs its "
            f"binary wheel: `{_INSTALL_HINT}`"
        )
    return path


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """Ask Linux to send SIGINT (fast shutdown) to the server when its parent dies."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG


def _reachable(path: Path, uid: int, gid: int) -> Path | None:
    """Return the first directory on the way to `path` that `uid`/`gid` cannot enter, or None."""
    for parent in [*reversed(path.parents), path]:
        if not parent.exists():
            break
        st = parent.stat()
        if st.st_uid == uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid == gid:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return parent
    return None


class PostgresServer:
    """A running PostgreSQL server; a context manager that stops it on exit."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        host: str,
        port: int,
        data_dir: Path,
        log_path: Path,
        temporary: Path | None,
    ) -> None:
        self._proc = proc
        self.host = host
        self.port = port
        self.data_dir = data_dir
        self.log_path = log_path
        self._temporary = temporary

    @property
    def dsn(self) -> str:
        """The connection string: `postgresql://postgres@HOST:PORT/postgres`."""
        return f"postgresql://{_SUPERUSER}@{self.host}:{self.port}/{_DATABASE}"

    @property
    def pid(self) -> int:
        """Process id of the postmaster."""
        return self._proc.pid

    def running(self) -> bool:
        """Whether the server process is still alive."""
        return self._proc.poll() is None

    def log_tail(self, limit: int = _LOG_TAIL_BYTES) -> str:
        """Return the last `limit` bytes of the server's log."""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-limit:].decode("utf-8", errors="replace")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (fast shutdown, then SIGKILL after `timeout` s); idempotent.

        A temporary data directory is removed with its log; a given one is kept.
        """
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=timeout)
        if self._temporary is not None:
            shutil.rmtree(self._temporary, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                self.log_path.unlink()

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running() else "stopped"
        return f"PostgresServer(dsn={self.dsn!r}, pid={self.pid}, {state})"


def _account(user: str | None) -> tuple[int, int] | None:
    """Return the (uid, gid) the server runs as, or None to run as this process's user."""
    if os.geteuid() != 0:
        if user is not None and user != pwd.getpwuid(os.geteuid()).pw_name:
            raise PostgresServerError(
                f"run_as={user!r} needs root; this process runs as uid {os.geteuid()}: "
                "leave run_as unset to run the server as the current user"
            )
        return None
    name = user or "nobody"
    try:
        entry = pwd.getpwnam(name)
    except KeyError as exc:
        raise PostgresServerError(
            f"PostgreSQL refuses to run as root, so the server must run as another account, but "
            f"there is no user {name!r} here; pass run_as=<an existing unprivileged user> "
            "(--run-as on the command line) or run as a non-root user"
        ) from exc
    if entry.pw_uid == 0:
        raise PostgresServerError(
            f"run_as={name!r} is root; PostgreSQL refuses to run as root: name an unprivileged user"
        )
    return entry.pw_uid, entry.pw_gid


def _run(args: list[str], account: tuple[int, int] | None, log: Path) -> None:
    ids = {} if account is None else {"user": account[0], "group": account[1], "extra_groups": []}
    with log.open("ab") as out:
        done = subprocess.run(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, check=False, **ids
        )
    if done.returncode != 0:
        tail = log.read_bytes()[-_LOG_TAIL_BYTES:].decode("utf-8", errors="replace")
        raise PostgresServerError(f"{Path(args[0]).name} exited with {done.returncode}:\n{tail}")


def _bin_for(bin_dir: Path, account: tuple[int, int] | None) -> Path:
    """Return a bin directory the server's account can reach: `bin_dir`, or a copy of pgserver's.

    Under root the server runs as an unprivileged account, which cannot reach binaries installed
    under a private directory (a venv under /root, say). pgserver's tree (``pgserver/pginstall``
    and the ``pgserver.libs`` its binaries load through ``$ORIGIN/../../../pgserver.libs``) is then
    copied once, root-owned and read-only to others, under the temporary directory.
    """
    if account is None or _reachable(bin_dir, *account) is None:
        return bin_dir
    install = bin_dir.parent
    libs = install.parent.parent / "pgserver.libs"
    if install.name != "pginstall" or install.parent.name != "pgserver" or not libs.is_dir():
        return bin_dir  # not pgserver's layout: _prepare reports what cannot be reached
    st = install.stat()
    cache = Path(tempfile.gettempdir()) / f"streamml-pgserver-{st.st_ino}-{int(st.st_mtime)}"
    copied = cache / "pgserver" / "pginstall" / "bin"
    if cache.is_dir():
        info = cache.lstat()
        if info.st_uid == 0 and not info.st_mode & 0o022 and (copied / "postgres").is_file():
            return copied
        cache = Path(tempfile.mkdtemp(prefix="streamml-pgserver-"))  # not ours: ignore it
    staging = Path(tempfile.mkdtemp(prefix="streamml-pgserver-staging-"))
    try:
        shutil.copytree(install, staging / "pgserver" / "pginstall", symlinks=True)
        shutil.copytree(libs, staging / "pgserver.libs", symlinks=True)
        for path in (staging, staging / "pgserver"):
            path.chmod(0o755)
        if cache.exists():
            cache.rmdir()  # the empty directory made above
        staging.rename(cache)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (copied / "postgres").is_file():  # another process may have won the rename
            raise
    return copied


def _prepare(
    data_dir: Path, bin_dir: Path, account: tuple[int, int] | None, log: Path, durable: bool
) -> None:
    """Create the cluster in `data_dir` unless it holds one already."""
    if account is not None:
        for path in (data_dir, bin_dir):
            blocked = _reachable(path, *account)
            if blocked is not None:
                raise PostgresServerError(
                    f"PostgreSQL refuses to run as root, so it runs as uid {account[0]}, which "
                    f"cannot enter {blocked} on the way to {path}; choose a directory that user "
                    "can reach (e.g. under /tmp), or run as a non-root user"
                )
    if (data_dir / "PG_VERSION").exists():
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    if any(data_dir.iterdir()):
        raise PostgresServerError(
            f"{data_dir} is neither empty nor a PostgreSQL data directory (no PG_VERSION); "
            "give an empty or missing directory"
        )
    if account is not None:
        os.chown(data_dir, *account)
    data_dir.chmod(0o700)
    args = [str(bin_dir / "initdb"), "-D", str(data_dir), "-U", _SUPERUSER, "--auth=trust"]
    args += ["--encoding=UTF8", "--locale=C", "--no-instructions"]
    if not durable:
        args.append("--no-sync")
    _run(args, account, log)


def _launch(
    bin_dir: Path,
    data_dir: Path,
    host: str,
    port: int,
    account: tuple[int, int] | None,
    log: Path,
    settings: dict[str, str],
) -> subprocess.Popen[bytes]:
    args = [str(bin_dir / "postgres"), "-D", str(data_dir), "-h", host, "-p", str(port), "-k", ""]
    for name, value in settings.items():
        args += ["-c", f"{name}={value}"]
    ids = {} if account is None else {"user": account[0], "group": account[1], "extra_groups": []}
    with log.open("ab") as out:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            **ids,
        )


def _wait_ready(server: PostgresServer, timeout: float) -> str | None:
    """Poll until a connection succeeds; return None when ready, else the reason."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        if not server.running():
            return f"exited with code {server._proc.returncode}"
        try:
            with psycopg.connect(server.dsn, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return None
        except psycopg.OperationalError as exc:
            last = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            time.sleep(0.05)
    return f"not reachable after {timeout:.1f}s ({last})"


def start_postgres(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    run_as: str | None = None,
    durable: bool = True,
    settings: dict[str, str] | None = None,
    bin_dir: str | os.PathLike[str] | None = None,
    timeout: float = 30.0,
) -> PostgresServer:
    """Start a PostgreSQL server on `host:port` and return once it accepts connections.

    `data_dir=None` uses a new temporary directory, removed on stop; a given directory is created
    (initdb) when it has no cluster yet and reused otherwise, and kept. `port=None` picks a free
    port. `durable=False` turns off fsync and synchronous commit (tests: a crash of the machine
    may lose the data). `settings` are more server settings (`-c name=value`). When this process
    is root the server runs as `run_as` (default `nobody`). Raises `PostgresServerError` with the
    server's log when it exits early or does not answer within `timeout` seconds.

    On Linux the server is stopped when the thread that started it exits (PR_SET_PDEATHSIG is
    per thread): start it from the main thread or another that outlives its use.
    """
    bins = Path(bin_dir) if bin_dir is not None else find_postgres_bin()
    missing = [name for name in ("initdb", "postgres") if not (bins / name).is_file()]
    if missing:
        raise PostgresServerError(
            f"{bins} has no {' and no '.join(missing)} binary; expected the bin directory of a "
            f"PostgreSQL installation (leave bin_dir unset to use pgserver's: `{_INSTALL_HINT}`)"
        )
    account = _account(run_as)
    bins = _bin_for(bins, account)
    temporary: Path | None = None
    if data_dir is None:
        temporary = Path(tempfile.mkdtemp(prefix="streamml-pg-"))
        if account is not None:
            os.chown(temporary, *account)
        data = temporary / "data"
        log = temporary / "server.log"
    else:
        data = Path(data_dir).expanduser().resolve()
        fd, name = tempfile.mkstemp(prefix="streamml-pg-", suffix=".log")
        os.close(fd)
        log = Path(name)
    conf = {} if durable else dict(_NOT_DURABLE)
    conf.update(settings or {})
    try:
        _prepare(data, bins, account, log, durable)
    except BaseException:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            log.unlink(missing_ok=True)
        raise
    attempts = 3 if port is None else 1
    failure = ""
    for _ in range(attempts):
        chosen = _free_port(host) if port is None else port
        proc = _launch(bins, data, host, chosen, account, log, conf)
        server = PostgresServer(proc, host, chosen, data, log, temporary)
        reason = _wait_ready(server, timeout)
        if reason is None:
            return server
        tail = server.log_tail()
        server._temporary = None  # keep the cluster for the next attempt
        server.stop()
        failure = f"postgres on {host}:{chosen} {reason}; server log:\n{tail or '(none)'}"
    if temporary is not None:
        shutil.rmtree(temporary, ignore_errors=True)
    else:
        log.unlink(missing_ok=True)
    raise PostgresServerError(
        f"{failure}\nexpected a server accepting connections; check that the port is free and "
        "that the binaries run on this machine"
    )
