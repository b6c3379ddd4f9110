"""The principal table, the ACL plan, client properties files and credentials (no broker)."""
from __future__ import annotations

import stat

import pytest
from pydantic import SecretStr

from streams.clients import ClientAuth, auth_from_properties, client_auth, format_properties, parse_properties
from streams.principals import PRINCIPALS, Grant, acl_entries, principal_table
from streams.settings import Settings
from streams.tools.acl import plan_acls
from streams.tools.credentials import ensure_passwords, scram_format_argument, write_client_files
from streams.topics import replication_warning, topic_specs

S = Settings(topic_prefix="run.", app_id="crosspaths-run")
TABLE = {p.name: p for p in principal_table(S)}


def _topics_with(principal: str, operation: str) -> set[tuple[str, str]]:
    return {(g.name, g.pattern) for g in TABLE[principal].grants if g.resource == "topic" and g.operation == operation}


def test_the_table_declares_each_principal_once_with_a_purpose():
    assert tuple(TABLE) == PRINCIPALS
    assert all(p.purpose and p.grants for p in TABLE.values())
    assert TABLE["partner"].user == "User:partner"


@pytest.mark.parametrize("principal, reads", [
    ("producer", set()),
    ("crossings-reader", {("run.crossings", "literal")}),
    ("partner", {("run.partner-statistics", "literal"), ("run.connection-statistics", "literal")}),
])
def test_who_reads_what(principal, reads):
    assert _topics_with(principal, "read") == reads
    assert _topics_with(principal, "all") == set()


def test_producer_writes_the_inputs_only_and_idempotently():
    assert _topics_with("producer", "write") == {("run.geo-pings", "literal"), ("run.connection-logs", "literal"),
                                                 ("run.consents", "literal")}
    assert Grant("cluster", "kafka-cluster", "idempotent_write") in TABLE["producer"].grants


def test_only_the_pipeline_and_the_admin_reach_personal_data():
    personal = {S.topic(spec.name) for spec in topic_specs(S) if spec.personal}
    readable = {name: {n for n, _ in _topics_with(name, "read")} & personal
                for name in ("producer", "crossings-reader", "partner")}
    assert readable == {"producer": set(), "crossings-reader": {S.topic("crossings")}, "partner": set()}
    pipeline = {n for n, pattern in _topics_with("pipeline", "read") if pattern == "literal"}
    assert pipeline == {S.topic(spec.name) for spec in topic_specs(S)}
    # changelogs and Faust's own topics by the app id's prefix; the group by its name
    assert ("crosspaths-run", "prefixed") in _topics_with("pipeline", "read")
    assert Grant("group", "crosspaths-run", "read") in TABLE["pipeline"].grants


def test_groups_follow_the_topic_prefix():
    groups = {p.name: {g.name for g in p.grants if g.resource == "group"} for p in TABLE.values()}
    assert groups["crossings-reader"] == {"run.crossings-reader"} and groups["partner"] == {"run.partner"}
    assert groups["producer"] == set()


def test_grants_name_the_bad_value():
    with pytest.raises(ValueError, match="operation='steal'"):
        Grant("topic", "t", "steal")
    with pytest.raises(ValueError, match="empty topic name"):
        Grant("topic", "", "read", "prefixed")


def test_acl_plan_creates_the_missing_and_revokes_the_undeclared():
    wanted = acl_entries(principal_table(S))
    assert plan_acls(wanted, wanted).created == () and plan_acls(wanted, wanted).deleted == ()
    extra = ("User:partner", Grant("topic", "run.geo-pings", "read"))
    foreign = ("User:someone-else", Grant("topic", "x", "read"))
    missing = next(iter(sorted(wanted)))
    plan = plan_acls(wanted, (wanted - {missing}) | {extra, foreign})
    assert plan.created == (missing,) and plan.deleted == (extra,) and plan.unchanged == len(wanted) - 1


def test_properties_round_trip_in_kafka_client_format():
    auth = ClientAuth(protocol="SASL_PLAINTEXT", mechanism="SCRAM-SHA-512", username="partner", password='p"a\\ss')
    text = format_properties(auth, "127.0.0.1:9092", comment="for the partner")
    props = parse_properties(text)
    assert props["security.protocol"] == "SASL_PLAINTEXT" and props["sasl.mechanism"] == "SCRAM-SHA-512"
    assert props["sasl.jaas.config"].startswith("org.apache.kafka.common.security.scram.ScramLoginModule required ")
    assert props["sasl.jaas.config"].endswith(";") and props["bootstrap.servers"] == "127.0.0.1:9092"
    assert auth_from_properties(props) == auth
    assert text.startswith("# for the partner\n")


def test_settings_fields_win_over_the_properties_file(tmp_path):
    path = tmp_path / "pipeline.properties"
    path.write_text(format_properties(ClientAuth("SASL_PLAINTEXT", "SCRAM-SHA-512", "pipeline", "pw"), "h:1"))
    assert client_auth(Settings(client_properties=path)) == ClientAuth("SASL_PLAINTEXT", "SCRAM-SHA-512", "pipeline", "pw")
    assert client_auth(Settings(client_properties=path, sasl_password=SecretStr("new"))).password == "new"
    assert client_auth(Settings()) == ClientAuth()
    assert "pw" not in repr(client_auth(Settings(client_properties=path)))


def test_sasl_without_a_password_is_refused_with_what_is_missing():
    with pytest.raises(ValueError, match="needs a SASL user name and password.*user 'pipeline' and no password"):
        client_auth(Settings(security_protocol="SASL_PLAINTEXT", sasl_username="pipeline"))


def test_kafka_python_and_aiokafka_arguments():
    auth = ClientAuth("SASL_PLAINTEXT", "SCRAM-SHA-512", "u", "p")
    assert auth.kafka_python() == {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
                                   "sasl_plain_username": "u", "sasl_plain_password": "p"}
    assert auth.aiokafka() == auth.kafka_python()
    assert ClientAuth().kafka_python() == {"security_protocol": "PLAINTEXT"} and ClientAuth().faust_credentials() is None
    creds = auth.faust_credentials()
    assert (creds.username, creds.password, creds.mechanism.value) == ("u", "p", "SCRAM-SHA-512")


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_passwords_are_made_once_and_kept_private(tmp_path):
    path = tmp_path / "broker" / "credentials.json"
    first = ensure_passwords(path)
    assert set(first) == set(PRINCIPALS) and len(set(first.values())) == len(PRINCIPALS)
    assert all(len(p) >= 40 for p in first.values())
    assert ensure_passwords(path) == first and _mode(path) == 0o600


def test_client_files_are_private_and_usable(tmp_path):
    written = write_client_files(tmp_path / "clients", {"partner": "pw1", "admin": "pw2"}, "127.0.0.1:9092")
    assert [p.name for p in written] == ["partner.properties", "admin.properties"]
    assert all(_mode(p) == 0o600 for p in written) and _mode(tmp_path / "clients") == 0o700
    auth = client_auth(Settings(client_properties=written[0]))
    assert (auth.protocol, auth.username, auth.password) == ("SASL_PLAINTEXT", "partner", "pw1")


def test_storage_format_gets_a_salted_hash_not_the_password():
    arg = scram_format_argument("admin", "secret-password", salt=b"0123456789abcdef")
    assert arg.startswith('SCRAM-SHA-512=[name=admin,iterations=8192,salt="MDEyMzQ1Njc4OWFiY2RlZg==",saltedpassword="')
    assert "secret-password" not in arg


@pytest.mark.parametrize("brokers, factor, warns", [(1, 1, False), (3, 1, True), (3, 2, True), (3, 3, False),
                                                    (5, 3, False), (2, 1, False)])
def test_replication_warning(brokers, factor, warns):
    assert (replication_warning(brokers, factor) is not None) == warns


def test_min_insync_replicas_above_the_replication_factor_is_refused():
    with pytest.raises(ValueError, match="min_insync_replicas=2 exceeds replication_factor=1"):
        Settings(min_insync_replicas=2)


def test_a_three_node_cluster_takes_consecutive_port_pairs(tmp_path):
    from streams.tools.brokerconfig import cluster_nodes, server_properties

    s = Settings(home=tmp_path, broker_port=39092, controller_port=39093)
    nodes = cluster_nodes(s, 3)
    assert [(n.id, n.settings.broker_port, n.settings.controller_port) for n in nodes] == [
        (1, 39092, 39093), (2, 39094, 39095), (3, 39096, 39097)]
    props = parse_properties(server_properties(nodes[1], tmp_path / 'data'))
    assert props["node.id"] == "2" and props["listeners"] == "PLAINTEXT://127.0.0.1:39094,CONTROLLER://127.0.0.1:39095"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:39093,2@127.0.0.1:39095,3@127.0.0.1:39097"
    assert (props["offsets.topic.replication.factor"], props["min.insync.replicas"],
            props["transaction.state.log.min.isr"]) == ("3", "2", "2")
    alone = parse_properties(server_properties(cluster_nodes(s, 1)[0], tmp_path / 'data'))
    assert (alone["controller.quorum.voters"], alone["offsets.topic.replication.factor"]) == ("1@127.0.0.1:39093", "1")


def test_the_secured_broker_denies_by_default_and_has_no_anonymous_super_user(tmp_path):
    from streams.tools.brokerconfig import CONTROLLER_USER, cluster_nodes, server_properties

    s = Settings(home=tmp_path, broker_port=39092, controller_port=39093)
    passwords = {"admin": "a-pw", CONTROLLER_USER: "c-pw"}
    text = server_properties(cluster_nodes(s, 1)[0], tmp_path / 'data', passwords)
    props = parse_properties(text)
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert props["super.users"] == "User:admin;User:controller" and "ANONYMOUS" not in props["super.users"]
    assert props["listener.security.protocol.map"] == "CONTROLLER:SASL_PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT"
    assert props["listeners"] == "SASL_PLAINTEXT://127.0.0.1:39092,CONTROLLER://127.0.0.1:39093"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert 'username="admin" password="a-pw"' in props["listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config"]
    assert [line.split("=")[0] for line in text.splitlines()].count("listeners") == 1  # replaced, not added


def test_tls_client_files_trust_the_local_ca(tmp_path):
    ca = tmp_path / "ca.pem"
    [written] = write_client_files(tmp_path / "clients", {"partner": "pw"}, "127.0.0.1:9092", "SASL_SSL", ca)
    props = parse_properties(written.read_text())
    assert (props["security.protocol"], props["ssl.truststore.type"], props["ssl.truststore.location"]) == (
        "SASL_SSL", "PEM", str(ca))
    auth = client_auth(Settings(client_properties=written))
    assert auth.protocol == "SASL_SSL" and auth.ssl_cafile == ca
    assert auth.kafka_python()["ssl_cafile"] == str(ca)


def test_the_tls_broker_listens_with_sasl_ssl_and_its_keystore(tmp_path):
    from streams.tools.brokerconfig import CONTROLLER_USER, cluster_nodes, server_properties
    from streams.tools.tls import TlsFiles

    tls = TlsFiles(tmp_path / "tls")
    tls.folder.mkdir()
    tls.password_file.write_text("store-pw\n")
    s = Settings(home=tmp_path, broker_port=39092, controller_port=39093)
    props = parse_properties(server_properties(cluster_nodes(s, 1)[0], tmp_path / "data",
                                               {"admin": "a", CONTROLLER_USER: "c"}, tls))
    assert props["listeners"] == "SASL_SSL://127.0.0.1:39092,CONTROLLER://127.0.0.1:39093"
    assert props["inter.broker.listener.name"] == "SASL_SSL"
    assert "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config" in props
    assert (props["ssl.keystore.location"], props["ssl.keystore.password"]) == (str(tls.keystore), "store-pw")
