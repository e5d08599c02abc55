"""The `llmos` command as scripts use it: --json, exit statuses, errors on stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from llmos_jobs.db.migrate import head_revision, stored_revision
from tests.support.cli import assert_one_line_error, llmos, newcomer
from tests.support.services import drop_pg_database, fresh_pg_database
from tests.support.stack import Stack, database_at
from tests.support.waiting import until


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


@pytest.mark.postgres_only  # the command line's surface, the same on any database
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


def test_up_refuses_a_second_stack_and_recovers_after_a_crash(tmp_path: Path) -> None:
    env = newcomer(tmp_path)
    started: list[subprocess.Popen[str]] = []

    def up() -> tuple[subprocess.Popen[str], str]:
        process = subprocess.Popen([sys.executable, "-m", "llmos_jobs.cli.main", "up",
                                    "--no-worker"], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        started.append(process)
        assert process.stdout is not None
        lines = []
        for line in process.stdout:  # until it is ready; EOF if it dies
            lines.append(line)
            if line.startswith("ready:"):
                break
        assert lines and lines[-1].startswith("ready:"), "".join(lines)
        return process, "".join(lines)

    first, _ = up()
    try:
        assert_one_line_error(llmos("up", "--no-worker", env=env), "already runs",
                              str(first.pid))
        [redis_pid, _] = json.loads((tmp_path / "stack.json").read_text())["children"][0]
        first.kill()  # a crash: nothing cleans up
        first.wait()
        assert psutil.pid_exists(redis_pid)
        out = llmos("workers", env=env)
        assert out.returncode == 0 and "warning: removed" in out.stderr, out.stderr
        until(lambda: not psutil.pid_exists(redis_pid), "the crashed stack's Redis exited")
        assert not psutil.pid_exists(redis_pid)
        second, output = up()
        assert "warning" not in output
        second.terminate()
        assert second.wait(timeout=60) == 0
        assert not (tmp_path / "stack.json").exists()
    finally:
        for process in started:  # read only up to `ready:`; their pipes close here
            process.kill()
            process.wait()
            assert process.stdout is not None
            process.stdout.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_first_commands_on_a_new_database_create_its_schema_once(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    variables = {}
    if backend == "postgres":
        admin = request.getfixturevalue("postgres_admin")
        url = fresh_pg_database(admin)
        request.addfinalizer(lambda: drop_pg_database(admin, url))
        variables["LLMOS_DATABASE_URL"] = url
    env = newcomer(tmp_path, **variables)
    command = [sys.executable, "-m", "llmos_jobs.cli.main", "job", "list", "--json"]
    racing = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True) for _ in range(4)]
    for process in racing:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0 and json.loads(stdout) == [], stderr
    url = variables.get("LLMOS_DATABASE_URL", f"sqlite:///{tmp_path / 'llmos.db'}")
    assert stored_revision(database_at(url)) == head_revision()


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
