"""A local Apache Kafka (KRaft) broker from Maven Central jars, one node or a cluster: start, stop, status.

`start(nodes=3)` runs three processes, each broker and controller, with replication 3 and min ISR 2
for Kafka's own topics (node 1 on the configured ports, each next node 2 ports above).

`start(secure=True)` runs it with SASL/SCRAM-SHA-512 and Kafka's StandardAuthorizer (deny when no
ACL matches): a credential per principal of streams/principals.py, bootstrapped when the storage is
formatted, and a client properties file per principal under the broker's folder (`clients/`).
A broker formatted secure stays secure: its data holds the credentials.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from streams.clients import ClientAuth, client_auth
from streams.principals import PRINCIPALS
from streams.settings import Settings
from streams.tools.brokerconfig import CONTROLLER_USER, Node, cluster_nodes, server_properties
from streams.tools.credentials import ensure_passwords, scram_format_argument, write_client_files, write_private
from streams.tools.tls import TlsFiles, ensure_tls

KAFKA_DIR = Path(__file__).parent / "kafka"


class BrokerError(RuntimeError):
    """The local broker could not be set up, started or reached."""


@dataclass(frozen=True)
class BrokerPaths:
    """Where one local broker keeps its jars, config, data, logs and pid."""

    libs: Path
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pidfile(self) -> Path:
        return self.root / "broker.pid"

    @property
    def config(self) -> Path:
        return self.root / "server.properties"

    @property
    def credentials(self) -> Path:
        """The SCRAM passwords of a secured broker (mode 0600); its presence means "secured"."""
        return self.root / "credentials.json"

    @property
    def clients(self) -> Path:
        """One Kafka client properties file per principal of a secured broker."""
        return self.root / "clients"


def paths_for(settings: Settings) -> BrokerPaths:
    """The paths of the local broker configured by `settings`."""
    home = Path(settings.home).expanduser()
    return BrokerPaths(libs=home / f"kafka-{settings.kafka_version}" / "libs", root=home / f"broker-{settings.broker_port}")


def check_java() -> str:
    """The java executable, if it is Java 17 or newer; BrokerError saying what is missing otherwise."""
    java = shutil.which("java")
    if java is None:
        raise BrokerError("java was not found on PATH: install Java 17 or newer (e.g. apt-get install openjdk-17-jre-headless)")
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):
        major = int(match.group(2))
    if major < 17:
        raise BrokerError(f"Java {major or '?'} found at {java}; Apache Kafka 4 needs Java 17 or newer")
    return java


def ensure_jars(settings: Settings, quiet: bool = False) -> Path:
    """Resolve the Kafka broker jars from Maven Central into the cache (once) and return the folder."""
    libs = paths_for(settings).libs
    marker = libs / ".complete"
    if marker.exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("mvn (Apache Maven) was not found on PATH: install it (e.g. apt-get install maven)")
    check_java()
    libs.mkdir(parents=True, exist_ok=True)
    if not quiet:
        print(f"Fetching Apache Kafka {settings.kafka_version} jars from Maven Central into {libs} ...", flush=True)
    cmd = [
        mvn, "-B", "-q", "-f", str(KAFKA_DIR / "pom.xml"), "dependency:copy-dependencies",
        "-DincludeScope=runtime", f"-DoutputDirectory={libs}", f"-Dkafka.version={settings.kafka_version}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BrokerError(f"Maven could not fetch Kafka {settings.kafka_version}:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
    if not any(libs.glob("kafka_2.13-*.jar")):
        raise BrokerError(f"Maven ran but no kafka_2.13 jar is in {libs}")
    marker.write_text(settings.kafka_version)
    return libs


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not reaped) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def running_pid(settings: Settings) -> int | None:
    """The pid of the local broker if it runs; a stale pid file is removed."""
    pidfile = paths_for(settings).pidfile
    if not pidfile.exists():
        return None
    try:
        pid = int(pidfile.read_text().strip())
    except ValueError:
        pid = -1
    if pid > 0 and _pid_alive(pid):
        cmdline = Path(f"/proc/{pid}/cmdline")
        if not cmdline.exists() or b"kafka.Kafka" in cmdline.read_bytes():
            return pid
    pidfile.unlink(missing_ok=True)
    return None


def reachable(bootstrap: str, timeout_s: float = 5.0, auth: ClientAuth | None = None) -> bool:
    """Whether an admin call to the cluster at `bootstrap` succeeds (with `auth`'s credentials)."""
    return brokers_up(bootstrap, timeout_s, auth) > 0


def brokers_up(bootstrap: str, timeout_s: float = 5.0, auth: ClientAuth | None = None) -> int:
    """How many unfenced brokers the cluster at `bootstrap` reports (0: no admin call succeeded).

    A broker that has registered but is still fenced is listed too; it cannot host replicas yet, so
    topics created with replication 3 right after would fail: it does not count.
    """
    from kafka.admin import KafkaAdminClient

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000),
                                 bootstrap_timeout_ms=int(timeout_s * 1000), client_id="crosspaths-probe",
                                 **(auth or ClientAuth()).kafka_python())
    except Exception:
        return 0
    try:
        return sum(not b.get("is_fenced", False) for b in admin.describe_cluster().get("brokers") or ())
    except Exception:
        return 0
    finally:
        admin.close()


def start(settings: Settings, timeout_s: float = 120.0, quiet: bool = False, secure: bool = False,
          nodes: int | None = None, tls: bool = False) -> str:
    """Start the local broker (a cluster of `nodes` processes) unless it runs; return once an admin call succeeds.

    secure: SASL/SCRAM and ACLs (see the module's docstring); tls (with secure): SASL over TLS, with a
    local CA (streams/tools/tls.py). A broker keeps what it was formatted with: secure or not, TLS or
    not, and its number of nodes (node 1 has the configured ports, each next node
    the ports 2 above: 9092/9093, 9094/9095, 9096/9097).
    """
    first = paths_for(settings)
    recorded = _recorded_nodes(first)
    nodes = nodes or recorded or 1
    if recorded and nodes != recorded:
        raise BrokerError(f"the local broker in {first.root} was formatted with {recorded} node(s), not {nodes}; "
                          f"`crosspaths broker reset` deletes its data first")
    formatted = (first.data / "meta.properties").exists()
    if secure and formatted and not first.credentials.exists():
        raise BrokerError(f"the broker in {first.root} was formatted without SCRAM credentials; "
                          f"`crosspaths broker reset` deletes its data, then `broker start --secure`")
    secure = secure or first.credentials.exists()
    tls = tls or TlsFiles(first.root / "tls").exists
    if tls and not secure:
        raise BrokerError("--tls needs --secure (SASL over TLS)")
    if tls and formatted and not TlsFiles(first.root / "tls").exists:
        raise BrokerError(f"the broker in {first.root} was formatted without TLS; `crosspaths broker reset` first")
    members = cluster_nodes(settings, nodes)
    bootstrap = ",".join(f"127.0.0.1:{n.settings.broker_port}" for n in members)
    pids = [running_pid(n.settings) for n in members]
    if all(pids):
        return f"broker already running (pid {', '.join(map(str, pids))}) on {bootstrap}" + _notes(first, secure, nodes)
    java = check_java()
    libs = ensure_jars(settings, quiet=quiet)
    passwords = ensure_passwords(first.credentials, (*PRINCIPALS, CONTROLLER_USER)) if secure else None
    try:
        tls_files = ensure_tls(first.root / "tls") if tls else None
    except RuntimeError as exc:
        raise BrokerError(str(exc)) from None
    cluster_id = _formatted_cluster_id(first) or _cluster_id()
    if nodes > 1:
        first.root.mkdir(parents=True, exist_ok=True)
        _nodes_file(first).write_text(f"{nodes}\n")
    started = {n.id: _launch(n, java, libs, passwords, cluster_id, tls_files)
               for n, pid in zip(members, pids) if pid is None}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for node_id, proc in started.items():
            if proc.poll() is not None:
                paths = paths_for(members[node_id - 1].settings)
                paths.pidfile.unlink(missing_ok=True)
                raise BrokerError(f"broker node {node_id} exited with code {proc.returncode}; last log lines:\n"
                                  f"{_tail(paths)}\nIf its data in {paths.root} is damaged or holds too many "
                                  f"partitions ('Too many open files'), `crosspaths broker reset` deletes it and "
                                  f"starts over.")
        if brokers_up(bootstrap, timeout_s=2.0, auth=_admin_auth(passwords, tls_files)) >= nodes:
            if passwords:
                write_client_files(first.clients, {p: passwords[p] for p in PRINCIPALS}, bootstrap,
                                   "SASL_SSL" if tls_files else "SASL_PLAINTEXT",
                                   tls_files.ca_pem if tls_files else None)
            pid_list = ", ".join(str(p.pid) for p in started.values())
            return f"broker started (pid {pid_list}) on {bootstrap}; data in {first.root}" + _notes(first, secure, nodes)
        time.sleep(0.5)
    stop(settings)
    raise BrokerError(f"the broker did not answer an admin call with {nodes} node(s) up within {timeout_s:.0f} s; "
                      f"last log lines:\n{_tail(first)}")


def _launch(node: Node, java: str, libs: Path, passwords: dict[str, str] | None, cluster_id: str,
            tls: TlsFiles | None = None) -> subprocess.Popen:
    """Write one node's config, format its storage once (with the SCRAM credentials), start its process."""
    paths = paths_for(node.settings)
    for d in (paths.data, paths.logs):
        d.mkdir(parents=True, exist_ok=True)
    write_private(paths.config, server_properties(node, paths.data, passwords, tls))
    classpath = f"{libs}/*"
    if not (paths.data / "meta.properties").exists():
        scram = [a for name in PRINCIPALS for a in ("--add-scram", scram_format_argument(name, passwords[name]))] \
            if passwords else []
        fmt = subprocess.run(
            [java, "-cp", classpath, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(paths.config),
             *scram],
            capture_output=True, text=True,
        )
        if fmt.returncode != 0:
            raise BrokerError(f"formatting KRaft storage of node {node.id} failed:\n{fmt.stdout}{fmt.stderr}")
    cmd = [
        java, f"-Xmx{node.settings.broker_heap}", "-Xms256m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={KAFKA_DIR / 'log4j2.properties'}", f"-Dkafka.logs.dir={paths.logs}",
        "-cp", classpath, "kafka.Kafka", str(paths.config),
    ]
    with open(paths.logs / "stdout.log", "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    paths.pidfile.write_text(str(proc.pid))
    return proc


def stop(settings: Settings, timeout_s: float = 30.0) -> str:
    """Stop the local broker, every node of it, by their pids (TERM, then KILL after timeout_s)."""
    members = cluster_nodes(settings, _recorded_nodes(paths_for(settings)) or 1)
    stopped = [pid for pid in (_stop_node(n.settings, timeout_s) for n in reversed(members)) if pid is not None]
    return f"broker stopped (pid {', '.join(map(str, stopped))})" if stopped else "broker is not running"


def _stop_node(settings: Settings, timeout_s: float) -> int | None:
    pid = running_pid(settings)
    if pid is None:
        return None
    os.killpg(pid, signal.SIGTERM) if _is_group_leader(pid) else os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.2)
    if _pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    paths_for(settings).pidfile.unlink(missing_ok=True)
    return pid


def _nodes_file(paths: BrokerPaths) -> Path:
    return paths.root / "nodes"


def _recorded_nodes(paths: BrokerPaths) -> int | None:
    """How many nodes the local cluster whose node 1 is at `paths` was made with (None: one, or none yet)."""
    f = _nodes_file(paths)
    return int(f.read_text().strip()) if f.exists() else None


def _formatted_cluster_id(paths: BrokerPaths) -> str | None:
    meta = paths.data / "meta.properties"
    if not meta.exists():
        return None
    found = re.search(r"^cluster\.id=(\S+)", meta.read_text(), re.MULTILINE)
    return found.group(1) if found else None


def _notes(first: BrokerPaths, secure: bool, nodes: int) -> str:
    note = _secured_note(first) if secure else ""
    if nodes >= 3:
        note += ("; a cluster: set CROSSPATHS_BOOTSTRAP_SERVERS to every node, CROSSPATHS_REPLICATION_FACTOR=3 "
                 "and CROSSPATHS_MIN_INSYNC_REPLICAS=2")
    return note


def status(settings: Settings) -> tuple[bool, str]:
    """(healthy, one-line status) of the configured cluster, local or external (with the settings' credentials)."""
    pid = running_pid(settings)
    ok = reachable(settings.bootstrap_servers, auth=client_auth(settings))
    where = f"local pid {pid}" if pid else "no local broker process"
    state = "reachable" if ok else "NOT reachable"
    return ok, f"{settings.bootstrap_servers} is {state} ({where})"


def reset(settings: Settings) -> str:
    """Stop the local broker (every node) and delete its data (not the jar cache)."""
    members = cluster_nodes(settings, _recorded_nodes(paths_for(settings)) or 1)
    msg = stop(settings)
    for node in members:
        shutil.rmtree(paths_for(node.settings).root, ignore_errors=True)
    return f"{msg}; data removed"


def _admin_auth(passwords: dict[str, str] | None, tls: TlsFiles | None = None) -> ClientAuth:
    if passwords is None:
        return ClientAuth()
    return ClientAuth(protocol="SASL_SSL" if tls else "SASL_PLAINTEXT", mechanism="SCRAM-SHA-512", username="admin",
                      password=passwords["admin"], ssl_cafile=tls.ca_pem if tls else None)


def _secured_note(paths: BrokerPaths) -> str:
    return (f"; secured (SASL/SCRAM-SHA-512, ACLs): client files in {paths.clients}/ -- as the operator, "
            f"export CROSSPATHS_CLIENT_PROPERTIES={paths.clients / 'admin.properties'}, then `crosspaths acl apply`")


def _is_group_leader(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def _cluster_id() -> str:
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _tail(paths: BrokerPaths, lines: int = 25) -> str:
    chunks = []
    for name in ("stdout.log", "server.log"):
        f = paths.logs / name
        if f.exists():
            chunks.extend(f.read_text(errors="replace").splitlines()[-lines:])
    return "\n".join(chunks) or "(no log output)"


if __name__ == "__main__":  # pragma: no cover
    print(start(Settings()), file=sys.stderr)
