"""schemathesis against the app's own OpenAPI schema, on every route, with an operator
key and a tenant key: no answer is a server error (but the 504 of a wait that timed
out, which the schema documents), and every answer matches its schema (status code,
content type, body). The server runs on a stack of its own, without a worker, so that
what the fuzzer registers, unloads or revokes touches no other test."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.api_server import ApiServer
from tests.support.stack import make_stack

# Enough to reach every route's validation and its main paths; small enough for CI.
MAX_EXAMPLES = 8
FUZZ_REDIS_DB = 14
# Routes whose documented answer to a wait that ran out is 504.
WAITING = {("POST", "/v1/chat/completions"), ("POST", "/v1/mindspaces/{mindspace_id}/turns")}
CASES: Counter[str] = Counter()
ROUTES: dict[str, int] = {}


@pytest.fixture(scope="module")
def fuzz_api(redis_base: str, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[ApiServer]:
    data_dir: Path = tmp_path_factory.mktemp("fuzz")
    stack = make_stack("sqlite", redis_base, None, data_dir, FUZZ_REDIS_DB)
    stack.client().register_model("echo", data_dir / "echo", engine="noop")
    server = ApiServer.start(stack, env={"LLMOS_API_WAIT_TIMEOUT_S": "1"})
    yield server
    server.stop()
    total = sum(CASES.values())
    print(f"\nfuzz: {ROUTES} routes, {total} cases {dict(CASES)}, 4 checks each")


@pytest.fixture(scope="module")
def fuzz_keys(fuzz_api: ApiServer) -> dict[str, str]:
    return {"operator": fuzz_api.operator_key(), "tenant": fuzz_api.key("fuzz-tenant")}


def not_a_server_error(case: Any, status: int) -> None:
    if status == 504 and (case.method.upper(), case.path) in WAITING:
        return
    assert status < 500, f"{case.method} {case.formatted_path}: server error {status}"


CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]


def fuzz_every_route(api: ApiServer, key: str, principal: str) -> None:
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 37  # every route, /healthz included
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(operation.as_strategy(generation_mode=mode))
            @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            def fuzz(case: Any) -> None:
                response = case.call(headers={"Authorization": f"Bearer {key}"}, timeout=30)
                CASES[principal] += 1
                not_a_server_error(case, response.status_code)
                case.validate_response(response, checks=CHECKS)

            try:
                fuzz()
            except Unsatisfiable:
                # A route with nothing to get wrong (no parameters, no body) has no
                # negative cases.
                assert mode == GenerationMode.NEGATIVE, operation.label
    ROUTES[principal] = len(operations)


def test_fuzz_every_route_with_an_operator_key(fuzz_api: ApiServer,
                                              fuzz_keys: dict[str, str]) -> None:
    fuzz_every_route(fuzz_api, fuzz_keys["operator"], "operator")


def test_fuzz_every_route_with_a_tenant_key(fuzz_api: ApiServer,
                                           fuzz_keys: dict[str, str]) -> None:
    fuzz_every_route(fuzz_api, fuzz_keys["tenant"], "tenant")
