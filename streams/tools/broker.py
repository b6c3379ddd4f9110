"""A local single-node Apache Kafka (KRaft) broker from Maven Central jars: start, stop, status."""
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

from streams.settings import Settings

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


def _server_properties(settings: Settings, paths: BrokerPaths) -> str:
    b, c = settings.broker_port, settings.controller_port
    return f"""# Written by crosspaths broker start; single node, broker and controller.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{c}
listeners=PLAINTEXT://127.0.0.1:{b},CONTROLLER://127.0.0.1:{c}
advertised.listeners=PLAINTEXT://127.0.0.1:{b}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={paths.data}
num.partitions=1
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=2
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.check.interval.ms=60000
log.cleaner.backoff.ms=5000
"""


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


def reachable(bootstrap: str, timeout_s: float = 5.0) -> bool:
    """Whether an admin call to the cluster at `bootstrap` succeeds."""
    from kafka.admin import KafkaAdminClient

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000),
                                 client_id="crosspaths-probe")
    except Exception:
        return False
    try:
        return bool(admin.describe_cluster().get("brokers"))
    except Exception:
        return False
    finally:
        admin.close()


def start(settings: Settings, timeout_s: float = 120.0, quiet: bool = False) -> str:
    """Start the local broker unless it runs; return a one-line status once an admin call succeeds."""
    bootstrap = f"127.0.0.1:{settings.broker_port}"
    pid = running_pid(settings)
    if pid is not None:
        return f"broker already running (pid {pid}) on {bootstrap}"
    java = check_java()
    libs = ensure_jars(settings, quiet=quiet)
    paths = paths_for(settings)
    for d in (paths.data, paths.logs):
        d.mkdir(parents=True, exist_ok=True)
    paths.config.write_text(_server_properties(settings, paths))
    classpath = f"{libs}/*"
    if not (paths.data / "meta.properties").exists():
        fmt = subprocess.run(
            [java, "-cp", classpath, "kafka.tools.StorageTool", "format", "-t", _cluster_id(), "-c", str(paths.config)],
            capture_output=True, text=True,
        )
        if fmt.returncode != 0:
            raise BrokerError(f"formatting KRaft storage failed:\n{fmt.stdout}{fmt.stderr}")
    cmd = [
        java, f"-Xmx{settings.broker_heap}", "-Xms256m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={KAFKA_DIR / 'log4j2.properties'}", f"-Dkafka.logs.dir={paths.logs}",
        "-cp", classpath, "kafka.Kafka", str(paths.config),
    ]
    with open(paths.logs / "stdout.log", "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    paths.pidfile.write_text(str(proc.pid))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            paths.pidfile.unlink(missing_ok=True)
            raise BrokerError(f"broker exited with code {proc.returncode}; last log lines:\n{_tail(paths)}\n"
                              f"If its data in {paths.root} is damaged or holds too many partitions "
                              f"('Too many open files'), `crosspaths broker reset` deletes it and starts over.")
        if reachable(bootstrap, timeout_s=2.0):
            return f"broker started (pid {proc.pid}) on {bootstrap}; data in {paths.root}"
        time.sleep(0.5)
    stop(settings)
    raise BrokerError(f"broker did not answer an admin call within {timeout_s:.0f} s; last log lines:\n{_tail(paths)}")


def stop(settings: Settings, timeout_s: float = 30.0) -> str:
    """Stop the local broker by its pid (TERM, then KILL after timeout_s)."""
    pid = running_pid(settings)
    if pid is None:
        return "broker is not running"
    os.killpg(pid, signal.SIGTERM) if _is_group_leader(pid) else os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.2)
    if _pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    paths_for(settings).pidfile.unlink(missing_ok=True)
    return f"broker stopped (pid {pid})"


def status(settings: Settings) -> tuple[bool, str]:
    """(healthy, one-line status) of the configured cluster, local or external."""
    pid = running_pid(settings)
    ok = reachable(settings.bootstrap_servers)
    where = f"local pid {pid}" if pid else "no local broker process"
    state = "reachable" if ok else "NOT reachable"
    return ok, f"{settings.bootstrap_servers} is {state} ({where})"


def reset(settings: Settings) -> str:
    """Stop the local broker and delete its data (not the jar cache)."""
    msg = stop(settings)
    shutil.rmtree(paths_for(settings).root, ignore_errors=True)
    return f"{msg}; data removed"


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
