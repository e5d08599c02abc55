"""llmos priorities on the wire: 0 is served first on every transport."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from broker_config import MAX_PRIORITY, Transport, broker_priority, celery_config, transport_of
from llmos_jobs.settings import Settings
from schemas.common import DEFAULT_PRIORITY

levels = st.integers(min_value=0, max_value=MAX_PRIORITY)


def served_first(transport: Transport, a: int, b: int) -> bool:
    """Whether ``transport`` delivers a message of wire priority ``a`` before ``b``:
    kombu's Redis transport polls its lists lowest number first; RabbitMQ's priority
    queues deliver the highest first."""
    return a < b if transport is Transport.redis else a > b


@given(st.sampled_from(list(Transport)), levels, levels)
def test_the_order_of_llmos_priorities_is_kept_on_every_transport(
        transport: Transport, p: int, q: int) -> None:
    wire_p, wire_q = broker_priority(p, transport), broker_priority(q, transport)
    assert 0 <= wire_p <= MAX_PRIORITY  # within the queues' x-max-priority
    assert served_first(transport, wire_p, wire_q) == (p < q)
    assert (wire_p == wire_q) == (p == q)


@given(st.sampled_from(list(Transport)),
       st.integers().filter(lambda n: not 0 <= n <= MAX_PRIORITY))
def test_a_priority_outside_the_scale_is_refused(transport: Transport, p: int) -> None:
    with pytest.raises(ValueError, match="outside 0-9"):
        broker_priority(p, transport)


@pytest.mark.parametrize(("url", "transport"), [
    ("redis://127.0.0.1:6379/0", Transport.redis),
    ("redis+socket:///tmp/redis.sock", Transport.redis),
    ("rediss://h:6380/1", Transport.redis),
    ("sentinel://h:26379", Transport.redis),
    ("amqp://guest:guest@127.0.0.1:5672/llmos", Transport.amqp),
    ("amqps://h/v", Transport.amqp),
    ("pyamqp://h//", Transport.amqp),
])
def test_the_transport_is_read_from_the_broker_url(url: str, transport: Transport) -> None:
    assert transport_of(url) is transport


def test_an_unknown_broker_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported broker URL scheme 'sqs'"):
        transport_of("sqs://queue")


def test_amqp_publishes_with_confirms_and_the_default_priority_is_translated() -> None:
    amqp = celery_config(broker_url="amqp://guest:guest@127.0.0.1:5672/v")
    redis = celery_config(broker_url="redis://127.0.0.1:6379/0")
    assert amqp["broker_transport_options"] == {"confirm_publish": True}
    assert redis["broker_transport_options"]["queue_order_strategy"] == "priority"
    assert amqp["task_queue_max_priority"] == redis["task_queue_max_priority"] == MAX_PRIORITY
    assert amqp["task_default_priority"] == MAX_PRIORITY - DEFAULT_PRIORITY
    assert redis["task_default_priority"] == DEFAULT_PRIORITY


def test_settings_refuse_a_broker_whose_priority_order_is_unknown() -> None:
    assert Settings(broker_url="amqp://u:p@h:5672/v").broker_url == "amqp://u:p@h:5672/v"
    with pytest.raises(ValidationError, match="unsupported broker URL scheme 'sqs'"):
        Settings(broker_url="sqs://queue")
