"""A broker behind Redis Sentinel: `sentinel://` URLs and LLMOS_BROKER_SENTINEL_MASTER."""

from __future__ import annotations

import pytest

from broker_config import celery_config


def test_a_sentinel_url_without_the_master_name_is_refused() -> None:
    with pytest.raises(ValueError, match="LLMOS_BROKER_SENTINEL_MASTER"):
        celery_config(broker_url="sentinel://127.0.0.1:26379/0")
    options = celery_config(broker_url="sentinel://127.0.0.1:26379/0",
                            sentinel_master="m")["broker_transport_options"]
    assert options["master_name"] == "m"
    assert options["queue_order_strategy"] == "priority"  # still kombu's Redis transport
