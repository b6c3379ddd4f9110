"""The config of each node of a local Kafka (KRaft) broker: plaintext, or SASL/SCRAM with ACLs, over TLS or not.

Pure: settings, passwords and paths in, `server.properties` text out (streams/tools/broker.py writes
it and runs the node). A cluster of N nodes: each is broker and controller, node 1 on the configured
ports and each next node on the ports 2 above; from three nodes, Kafka's own topics get replication
3 and min ISR 2.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from streams.settings import Settings
from streams.tools.tls import TlsFiles

CONTROLLER_USER = "controller"  # the broker's own login on its controller listener (not a principal of the table)


@dataclass(frozen=True)
class Node:
    """One KRaft process of the local cluster (broker and controller): its id, ports and place in the cluster."""

    id: int
    nodes: int
    settings: Settings  # broker_port and controller_port are this node's

    @property
    def voters(self) -> str:
        """controller.quorum.voters of the cluster."""
        return ",".join(f"{i}@127.0.0.1:{_port(self.settings.controller_port, i, self.id)}"
                        for i in range(1, self.nodes + 1))

    @property
    def replication(self) -> tuple[int, int]:
        """(replication factor, min ISR) of the cluster's own topics: 1, 1 alone; 3, 2 from three nodes."""
        return (1, 1) if self.nodes < 3 else (3, 2)


def _port(port: int, node: int, of_node: int) -> int:
    """Node `node`'s port, from node `of_node`'s (each node takes the port 2 above the previous one's)."""
    return port + 2 * (node - of_node)


def cluster_nodes(settings: Settings, nodes: int) -> list[Node]:
    """The nodes of a local cluster of `nodes` processes; node 1 has the configured ports."""
    return [Node(i, nodes, settings.model_copy(update={"broker_port": _port(settings.broker_port, i, 1),
                                                      "controller_port": _port(settings.controller_port, i, 1)}))
            for i in range(1, nodes + 1)]


def server_properties(node: Node, data: Path, passwords: dict[str, str] | None = None,
                      tls: TlsFiles | None = None) -> str:
    """The node's config: plaintext, or with `passwords` SASL/SCRAM and the authorizer (over TLS with `tls`)."""
    if passwords is None:
        return _plain_properties(node, data)
    return _secure_properties(node, data, passwords, tls)


def _secure_properties(node: Node, data: Path, passwords: dict[str, str], tls: TlsFiles | None = None) -> str:
    """SASL/SCRAM-SHA-512 for clients and between brokers, deny-by-default ACLs, admin a super user.

    The controller listener (127.0.0.1 only) uses SASL/PLAIN with a static `controller` user:
    a plaintext controller listener would reach the authorizer as User:ANONYMOUS, which would
    then have to be a super user, and anyone on the machine could alter ACLs through that port.
    """
    b, c = node.settings.broker_port, node.settings.controller_port
    lines = [line for line in _plain_properties(node, data).splitlines()
             if not line.startswith(("listeners=", "advertised.listeners=", "listener.security.protocol.map=",
                                     "inter.broker.listener.name="))]
    admin, controller = passwords["admin"], passwords[CONTROLLER_USER]
    scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
    plain_module = "org.apache.kafka.common.security.plain.PlainLoginModule"
    protocol = "SASL_SSL" if tls else "SASL_PLAINTEXT"
    lines += [
        "# Secured (crosspaths broker start --secure): SASL/SCRAM-SHA-512 and ACLs, deny when none matches.",
        f"listeners={protocol}://127.0.0.1:{b},CONTROLLER://127.0.0.1:{c}",
        f"advertised.listeners={protocol}://127.0.0.1:{b}",
        f"listener.security.protocol.map=CONTROLLER:SASL_PLAINTEXT,{protocol}:{protocol}",
        f"inter.broker.listener.name={protocol}",
        "sasl.enabled.mechanisms=SCRAM-SHA-512",
        "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
        f'listener.name.{protocol.lower()}.scram-sha-512.sasl.jaas.config={scram} required '
        f'username="admin" password="{admin}";',
        "sasl.mechanism.controller.protocol=PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
        f'listener.name.controller.plain.sasl.jaas.config={plain_module} required '
        f'username="{CONTROLLER_USER}" password="{controller}" user_{CONTROLLER_USER}="{controller}";',
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found=false",
        f"super.users=User:admin;User:{CONTROLLER_USER}",
    ]
    if tls:  # the keystore's password is in this file, which only its owner can read (0600)
        lines += ["ssl.keystore.type=PKCS12", f"ssl.keystore.location={tls.keystore}",
                  f"ssl.keystore.password={tls.password()}", "ssl.truststore.type=PEM",
                  f"ssl.truststore.location={tls.ca_pem}", "ssl.endpoint.identification.algorithm=https"]
    return "\n".join(lines) + "\n"


def _plain_properties(node: Node, data: Path) -> str:
    b, c = node.settings.broker_port, node.settings.controller_port
    rf, isr = node.replication
    return f"""# Written by crosspaths broker start; node {node.id} of {node.nodes}, broker and controller.
process.roles=broker,controller
node.id={node.id}
controller.quorum.voters={node.voters}
listeners=PLAINTEXT://127.0.0.1:{b},CONTROLLER://127.0.0.1:{c}
advertised.listeners=PLAINTEXT://127.0.0.1:{b}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={data}
num.partitions=1
default.replication.factor={rf}
min.insync.replicas={isr}
offsets.topic.replication.factor={rf}
offsets.topic.num.partitions=4
transaction.state.log.replication.factor={rf}
transaction.state.log.min.isr={isr}
transaction.state.log.num.partitions=2
share.coordinator.state.topic.replication.factor={rf}
share.coordinator.state.topic.min.isr={isr}
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.check.interval.ms={node.settings.broker_retention_check_ms}
log.cleaner.backoff.ms=5000
"""
