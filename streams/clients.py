"""How every Kafka client of Crosspaths connects: the credentials from settings, in each library's terms.

One place builds them: the worker (Faust and its replay consumer, aiokafka), every command and tool
(kafka-python). Credentials come from settings (CROSSPATHS_SASL_*) or from a Kafka client
properties file (CROSSPATHS_CLIENT_PROPERTIES, the format `crosspaths broker start --secure` writes
per principal), never from the command line: arguments are visible to every user of the machine.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.settings import Settings

PROTOCOLS = ("PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
_LOGIN_MODULES = {"PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
                  "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
                  "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule"}
_JAAS_OPTION = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class ClientAuth:
    """How a client authenticates: the protocol, and for SASL the mechanism, user and password."""

    protocol: str = "PLAINTEXT"
    mechanism: str = "SCRAM-SHA-512"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl_cafile: Path | None = None

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"security protocol {self.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if self.mechanism not in MECHANISMS:
            raise ValueError(f"SASL mechanism {self.mechanism!r} is not one of {', '.join(MECHANISMS)}")
        if self.sasl and not (self.username and self.password):
            raise ValueError(f"security protocol {self.protocol} needs a SASL user name and password "
                             f"(CROSSPATHS_SASL_USERNAME/_PASSWORD or CROSSPATHS_CLIENT_PROPERTIES); "
                             f"got user {self.username!r} and {'a' if self.password else 'no'} password")

    @property
    def sasl(self) -> bool:
        """Whether the client authenticates with SASL."""
        return self.protocol.startswith("SASL_")

    def kafka_python(self) -> dict[str, Any]:
        """Keyword arguments of kafka-python's KafkaProducer, KafkaConsumer and KafkaAdminClient."""
        if not self.sasl:
            return {"security_protocol": self.protocol}
        kwargs = {"security_protocol": self.protocol, "sasl_mechanism": self.mechanism,
                  "sasl_plain_username": self.username, "sasl_plain_password": self.password}
        if self.protocol == "SASL_SSL" and self.ssl_cafile is not None:
            kwargs["ssl_cafile"] = str(self.ssl_cafile)
        return kwargs

    def aiokafka(self) -> dict[str, Any]:
        """Keyword arguments of aiokafka's clients (the same names; TLS as an ssl_context)."""
        kwargs = {k: v for k, v in self.kafka_python().items() if k != "ssl_cafile"}
        if self.protocol == "SASL_SSL":
            kwargs["ssl_context"] = self.ssl_context()
        return kwargs

    def faust_credentials(self):
        """Faust's broker_credentials for this auth (None: plaintext, no authentication)."""
        if not self.sasl:
            return None
        import faust

        return faust.SASLCredentials(username=self.username, password=self.password, mechanism=self.mechanism,
                                     ssl_context=self.ssl_context() if self.protocol == "SASL_SSL" else None)

    def ssl_context(self):
        """A TLS context trusting ssl_cafile (or the system's CAs when it is None)."""
        import ssl

        return ssl.create_default_context(cafile=str(self.ssl_cafile) if self.ssl_cafile else None)


def client_auth(settings: Settings) -> ClientAuth:
    """The credentials of these settings: their fields, filling in from the client properties file."""
    props = read_properties(settings.client_properties) if settings.client_properties else {}
    from_file = auth_from_properties(props) if props else ClientAuth()
    password = settings.sasl_password.get_secret_value() if settings.sasl_password is not None else None
    return ClientAuth(protocol=settings.security_protocol or from_file.protocol,
                      mechanism=settings.sasl_mechanism or from_file.mechanism,
                      username=settings.sasl_username or from_file.username,
                      password=password or from_file.password,
                      ssl_cafile=settings.ssl_cafile or from_file.ssl_cafile)


# --------------------------------------------------------------------------- client properties files
def parse_properties(text: str) -> dict[str, str]:
    """Key/value pairs of a Java properties text (`key=value` lines; `#` and `!` comments)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#!":
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"properties line {line!r} has no '='")
        out[key.strip()] = value.strip()
    return out


def read_properties(path: Path) -> dict[str, str]:
    """The key/value pairs of a properties file; ValueError naming the file if it cannot be used."""
    try:
        return parse_properties(Path(path).expanduser().read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"client properties {path}: {exc}") from None


def auth_from_properties(props: dict[str, str]) -> ClientAuth:
    """The ClientAuth of Kafka client properties (security.protocol, sasl.mechanism, sasl.jaas.config)."""
    options = dict(_JAAS_OPTION.findall(props.get("sasl.jaas.config", "")))
    unescape = lambda s: re.sub(r"\\(.)", r"\1", s) if s is not None else None  # noqa: E731
    cafile = props.get("ssl.truststore.location") if props.get("ssl.truststore.type", "PEM") == "PEM" else None
    return ClientAuth(protocol=props.get("security.protocol", "PLAINTEXT"),
                      mechanism=props.get("sasl.mechanism", "SCRAM-SHA-512"),
                      username=unescape(options.get("username")), password=unescape(options.get("password")),
                      ssl_cafile=Path(cafile) if cafile else None)


def format_properties(auth: ClientAuth, bootstrap_servers: str, comment: str = "") -> str:
    """Kafka client properties for `auth`: usable as is by Java clients, kcat-style tools and Crosspaths."""
    lines = [f"# {line}" for line in comment.splitlines()]
    lines += [f"bootstrap.servers={bootstrap_servers}", f"security.protocol={auth.protocol}"]
    if auth.sasl:
        escape = lambda s: s.replace("\\", "\\\\").replace('"', '\\"')  # noqa: E731
        lines += [f"sasl.mechanism={auth.mechanism}",
                  f'sasl.jaas.config={_LOGIN_MODULES[auth.mechanism]} required '
                  f'username="{escape(auth.username)}" password="{escape(auth.password)}";']
    if auth.protocol == "SASL_SSL" and auth.ssl_cafile is not None:
        lines += ["ssl.truststore.type=PEM", f"ssl.truststore.location={auth.ssl_cafile}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- kafka-python clients
def admin_client(settings: Settings, client_id: str = "crosspaths-admin", **kwargs):
    """A kafka-python KafkaAdminClient for the configured cluster and credentials."""
    from kafka.admin import KafkaAdminClient

    return KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, client_id=client_id,
                            **client_auth(settings).kafka_python(), **kwargs)


def consumer(settings: Settings, client_id: str = "crosspaths-reader", **kwargs):
    """A kafka-python KafkaConsumer for the configured cluster and credentials."""
    from kafka import KafkaConsumer

    return KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, client_id=client_id,
                         **client_auth(settings).kafka_python(), **kwargs)


def producer(settings: Settings, client_id: str = "crosspaths-producer", **kwargs):
    """A kafka-python KafkaProducer for the configured cluster and credentials: acks=all, idempotent.

    Idempotence keeps a retried batch from being written twice; with acks=all and the topics'
    min.insync.replicas, an acknowledged record is on that many replicas.
    """
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=settings.bootstrap_servers, client_id=client_id,
                         **{"acks": "all", "enable_idempotence": True, **kwargs},
                         **client_auth(settings).kafka_python())
