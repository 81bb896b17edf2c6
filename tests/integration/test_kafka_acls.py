"""On Apache Kafka with SASL/SCRAM and the authorizer on (nothing allowed without an
ACL): `topics create --acls --apply` gives each partner's own login exactly its
request topic to write and its response topic to read, and the workers' login what
the worker needs; everything else is refused by the broker, one test per refusal.
The worker serves while logged in as its own user, and a partner's library and CLI
read their responses logged in as the partner."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from pipeline.client import PartnerClient, ResponseWaiter, build_request
from pipeline.config import Settings
from pipeline.dev.engines import sasl_env
from pipeline.dev.harness import CLI, Stack
from pipeline.dev.kafkabroker import Credentials
from pipeline.errors import BrokerError
from pipeline.kafka.acls import PARTNER_PRINCIPAL, all_bindings, apply, scram_users, set_scram_user
from pipeline.partners import (
    DLQ_TOPIC,
    PARTNERS_TOPIC,
    USAGE_TOPIC,
    requests_topic,
    responses_topic,
)
from tests.integration.stack import kafka_only

pytestmark = kafka_only("ACLs")

WORKER_USER = "claude-pipeline"


class Logins:
    """The stack and a password per SCRAM user made for this module."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.passwords: dict[str, str] = {}

    def make(self, user: str) -> None:
        password = secrets.token_urlsafe(18)
        set_scram_user(self.stack.settings, user, password.encode())
        self.passwords[user] = password

    def env(self, user: str) -> dict[str, str]:
        return sasl_env(user, self.passwords[user])

    def settings(self, user: str) -> Settings:
        return self.stack.settings.with_(sasl_username=user, sasl_password=self.passwords[user])

    def config(self, user: str) -> dict[str, str]:
        return {k: str(v) for k, v in self.settings(user).kafka_config().items()}


@pytest.fixture(scope="module")
def logins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Logins]:
    admin = Credentials("admin", secrets.token_urlsafe(18))
    stack = Stack(tmp_path_factory.mktemp("kafka-acls"), sasl=admin)
    try:
        for pid in ("acme", "globex"):
            stack.add_partner(pid)
        got = Logins(stack)
        for user in ("partner-acme", "partner-globex", WORKER_USER):
            got.make(user)
        bindings = all_bindings(
            ["acme", "globex"], PARTNER_PRINCIPAL, f"User:{WORKER_USER}", stack.settings.group_id
        )
        assert apply(stack.settings, bindings) == len(bindings)
        stack.start_worker(env=got.env(WORKER_USER))
        yield got
    finally:
        stack.close()


def _produce(config: dict[str, str], topic: str) -> KafkaError | None:
    """The delivery error of one record to `topic`, or None when it was written."""
    errors: list[KafkaError | None] = []
    producer = Producer({**config, "message.timeout.ms": "8000"})
    producer.produce(topic, b"x", key=b"k", on_delivery=lambda err, _msg: errors.append(err))
    producer.flush(10)
    assert errors, f"no delivery report for {topic}"
    return errors[0]


def _read_error(config: dict[str, str], topic: str, group: str) -> KafkaError | None:
    """The error reading `topic` from its start (None when it can be read): what the
    broker says of its metadata, then of a fetch and of the group's offsets."""
    errors: list[KafkaError] = []
    consumer = Consumer({**config, "group.id": group, "enable.auto.commit": "false",
                         "enable.partition.eof": "true",
                         "error_cb": errors.append})  # fmt: skip
    try:
        described = consumer.list_topics(topic, timeout=10).topics[topic]
        if described.error is not None:
            return cast(KafkaError, described.error)
        consumer.committed([TopicPartition(topic, 0)], timeout=10)  # the group's offsets
        consumer.assign([TopicPartition(topic, 0, 0)])
        for _ in range(40):
            msg = consumer.poll(0.25)
            err = msg.error() if msg is not None else None
            if err is not None:
                return None if err.code() == KafkaError._PARTITION_EOF else err
        return errors[0] if errors else None
    except KafkaException as exc:
        return cast(KafkaError, exc.args[0])
    finally:
        consumer.close()


def test_the_worker_serves_logged_in_as_its_own_user_and_the_partner_reads_as_itself(
    logins: Logins,
) -> None:
    stack = logins.stack
    acme = logins.settings("partner-acme")
    waiter = ResponseWaiter(acme, "acme", stack.codec)
    request = build_request("acme", "hello over SCRAM", model="claude-haiku-4-5", max_tokens=16)
    client = PartnerClient(acme, "acme", stack.secrets["acme"], stack.codec)  # acme's login
    client.send(request)
    client.flush(15)
    response = waiter.wait(request["request_id"], timeout=45)
    assert response is not None
    assert response["status"] == "ok", response
    # the CLI reads as the partner too (its group is under the partner's prefix)
    out = subprocess.run(
        [*CLI, "responses", "--partner", "acme", "--from-beginning", "--no-follow"],
        env={**stack.env, **logins.env("partner-acme")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    ids = [json.loads(line)["request_id"] for line in out.stdout.splitlines() if line.strip()]
    assert request["request_id"] in ids


@pytest.mark.parametrize(
    "topic",
    [requests_topic("globex"), PARTNERS_TOPIC, USAGE_TOPIC, DLQ_TOPIC, responses_topic("acme")],
)
def test_a_partner_may_write_nothing_but_its_request_topic(logins: Logins, topic: str) -> None:
    err = _produce(logins.config("partner-acme"), topic)
    assert err is not None, err
    assert err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    assert _produce(logins.config("partner-acme"), requests_topic("acme")) is None


@pytest.mark.parametrize(
    "topic",
    [responses_topic("globex"), USAGE_TOPIC, DLQ_TOPIC, PARTNERS_TOPIC, requests_topic("acme")],
)
def test_a_partner_may_read_nothing_but_its_response_topic(logins: Logins, topic: str) -> None:
    err = _read_error(logins.config("partner-acme"), topic, "acme.reader")
    assert err is not None, err
    assert err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    assert (
        _read_error(logins.config("partner-acme"), responses_topic("acme"), "acme.reader") is None
    )


def _join_error(config: dict[str, str], topic: str, group: str) -> KafkaError | None:
    """The error joining `group` to consume `topic`, or None once it is assigned."""
    errors: list[KafkaError] = []
    assigned: list[object] = []
    consumer = Consumer({**config, "group.id": group, "error_cb": errors.append})
    try:
        consumer.subscribe([topic], on_assign=lambda _c, parts: assigned.append(parts))
        for _ in range(60):
            msg = consumer.poll(0.25)
            if msg is not None and msg.error() is not None:
                return msg.error()
            if errors:
                return errors[0]
            if assigned:
                return None
        return None
    finally:
        consumer.close()


@pytest.mark.parametrize("group", ["globex.reader", "acmex.reader", "claude-pipeline"])
def test_a_partner_may_not_join_another_s_group_or_the_workers(logins: Logins, group: str) -> None:
    config = logins.config("partner-acme")
    err = _join_error(config, responses_topic("acme"), group)
    assert err is not None, group
    assert err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED, err
    assert _join_error(config, responses_topic("acme"), "acme.reader") is None


def test_a_partner_may_not_create_topics_or_read_logins(logins: Logins) -> None:
    admin = AdminClient(dict(logins.config("partner-acme")))
    (future,) = admin.create_topics([NewTopic("claude.requests.mallory", 1, 1)]).values()
    with pytest.raises(KafkaException) as info:
        future.result(timeout=15)
    assert info.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    with pytest.raises(BrokerError, match="may not list SCRAM users"):
        scram_users(logins.settings("partner-acme"))  # and the process lives on


def test_the_worker_may_not_write_the_registry(logins: Logins) -> None:
    err = _produce(logins.config(WORKER_USER), PARTNERS_TOPIC)
    assert err is not None, err
    assert err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err


def test_a_wrong_password_is_refused_and_a_rotated_one_takes_over(logins: Logins) -> None:
    stale = logins.config("partner-globex")
    logins.make("partner-globex")  # rotate
    err = _produce({**stale, "message.timeout.ms": "5000"}, requests_topic("globex"))
    assert err is not None
    assert _produce(logins.config("partner-globex"), requests_topic("globex")) is None
    users = scram_users(logins.stack.settings)
    assert users["partner-globex"] == ["SCRAM_SHA_512"]


def test_users_command_sets_and_lists_a_login(logins: Logins, tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text(secrets.token_urlsafe(18) + "\n")
    env = {**logins.stack.env}
    run = subprocess.run(
        [*CLI, "users", "set", "partner-initech", "--password-ref", f"file:{secret}"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    listed = subprocess.run([*CLI, "users", "list"], env=env, capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    assert "partner-initech\tSCRAM_SHA_512" in listed.stdout
    config = {**logins.config("partner-acme"), "sasl.username": "partner-initech",
              "sasl.password": secret.read_text().strip()}  # fmt: skip
    # it logs in (and, with no ACL of its own, may write nothing)
    err = _produce(config, requests_topic("acme"))
    assert err is not None
    assert err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
