"""The `llmos` command as scripts use it: --json, exit statuses, errors on stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from tests.stack import Stack


def llmos(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmos_jobs.cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_submit_wait_json_uses_the_schema_field_names(stack: Stack) -> None:
    out = llmos("submit", "count these words", "--model", "echo", "--priority", "batch",
                "--max-tokens", "3", "--wait", "--json", env=stack.env)
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    assert job["status"] == "succeeded" and job["priority"] == 8
    assert job["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "cached_tokens": 0}
    for key in ("created_at", "started_at", "finished_at"):
        assert datetime.fromisoformat(job[key]).tzinfo is not None
    shown = json.loads(llmos("job", "show", job["id"], "--json", env=stack.env).stdout)
    assert shown["id"] == job["id"] and shown["result"] == job["result"]
    listed = json.loads(llmos("job", "list", "--status", "succeeded", "--json",
                              env=stack.env).stdout)
    assert job["id"] in [j["id"] for j in listed]
    assert all(j["status"] == "succeeded" for j in listed)


def test_errors_go_to_stderr_without_a_traceback(stack: Stack) -> None:
    cases = [
        (("submit", "hi", "--model", "echo", "--priority", "urgent"), "unknown priority"),
        (("submit", "hi", "--model", "missing"), "not registered"),
        (("submit", "hi", "--model", "echo", "--max-tokens", "0"), "max_tokens"),
        (("submit", "--model", "echo", "--messages", "[{\"role\": 1}]"), "messages.0"),
        (("job", "show", "0" * 32), "not found"),
        (("mindspace", "chat", "nope", "hello"), "mindspace nope not found"),
    ]
    for args, needle in cases:
        out = llmos(*args, env=stack.env)
        assert out.returncode != 0, args
        assert needle in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr + out.stdout
        assert out.stdout == ""


def test_no_broker_says_how_to_start_one(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOS_")}
    env["LLMOS_DATA_DIR"] = str(tmp_path)
    # A model must exist for the submission to get as far as the broker.
    assert llmos("model", "register", "echo", str(tmp_path), "--engine", "noop",
                 env=env).returncode == 0
    out = llmos("submit", "hello", "--model", "echo", env=env)
    assert out.returncode == 1
    assert "llmos up" in out.stderr and "LLMOS_BROKER_URL" in out.stderr


def test_workers_and_models_json(stack: Stack) -> None:
    workers = json.loads(llmos("workers", "--json", env=stack.env).stdout)
    mine = [w for w in workers if w["name"] == f"noop-{stack.name}@test"]
    assert mine and mine[0]["state"] == "alive" and mine[0]["models"] == ["echo", "broken"]
    assert "lang.echo" in mine[0]["queues"] and f"w.noop-{stack.name}@test" in mine[0]["queues"]
    models = json.loads(llmos("model", "list", "--json", env=stack.env).stdout)
    assert {"echo", "broken"} <= {m["name"] for m in models}


def test_cancel_from_the_cli(stack: Stack) -> None:
    env = stack.env
    llmos("model", "register", "idle", str(stack.data_dir / "idle"), "--engine", "noop", env=env)
    out = llmos("submit", "never", "--model", "idle", "--json", env=env)
    assert "no live worker consumes lang.idle" in out.stderr
    job_id = json.loads(out.stdout)["id"]
    cancelled = json.loads(llmos("job", "cancel", job_id, "--json", env=env).stdout)
    assert cancelled["status"] == "cancelled"
    again = llmos("job", "cancel", job_id, env=env)
    assert again.returncode == 1 and "cancelled job cannot become cancelled" in again.stderr


def test_batch_submit_wait_and_results(stack: Stack, tmp_path: Path) -> None:
    lines = [json.dumps({"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
                         "body": {"model": "echo", "max_tokens": 1,
                                  "messages": [{"role": "user", "content": f"q {i}"}]}})
             for i in range(3)] + ["not json"]
    path = tmp_path / "batch.jsonl"
    path.write_text("\n".join(lines))
    out = llmos("batch", "submit", str(path), "--wait", "--json", env=stack.env)
    assert out.returncode == 0, out.stderr
    state = json.loads(out.stdout)
    assert state["status"] == "completed"
    assert state["request_counts"] == {"total": 4, "completed": 3, "failed": 1}
    results = llmos("batch", "results", state["id"], env=stack.env).stdout.splitlines()
    assert sorted(json.loads(r)["custom_id"] for r in results) == ["q0", "q1", "q2"]
    errors = llmos("batch", "results", state["id"], "--errors", env=stack.env).stdout
    assert json.loads(errors)["error"]["line"] == 4
