"""The `llmos` command before any stack runs: a newcomer's mistakes are one-line
errors, a crashed stack's leftovers are noticed, and the schema check is cheap."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import psutil
from alembic.script import ScriptDirectory

from llmos_jobs.db.migrate import alembic_config, head_revision
from tests.support.cli import assert_one_line_error, llmos, newcomer


def test_a_newcomers_mistakes_are_one_line_errors(tmp_path: Path) -> None:
    env = newcomer(tmp_path)
    assert_one_line_error(llmos("model", "register", "demo", str(tmp_path / "nope"), env=env),
                          "model path", "nope is not a directory")
    assert_one_line_error(llmos("submit", "hello", env=env), "model 'demo' is not registered")
    # Before `llmos up`: what needs no broker works, what does says how to start one.
    assert llmos("model", "register", "echo", str(tmp_path), "--engine", "noop",
                 env=env).returncode == 0
    created = llmos("mindspace", "create", "--model", "echo", "--json", env=env)
    mindspace = json.loads(created.stdout)["id"]
    for args in (("submit", "hello", "--model", "echo"), ("mindspace", "chat", mindspace, "hi"),
                 ("model", "load", "echo")):
        assert_one_line_error(llmos(*args, env=env), "no broker", "llmos up",
                              "LLMOS_BROKER_URL")
    assert_one_line_error(llmos("--tenant", "acme", "mindspace", "show", mindspace, env=env),
                          f"mindspace {mindspace} not found")
    assert_one_line_error(llmos("job", "list", env=newcomer(tmp_path, LLMOS_MAX_ATTEMPTS="0")),
                          "invalid setting: LLMOS_MAX_ATTEMPTS")
    unreachable = newcomer(tmp_path, LLMOS_DATABASE_URL="postgresql://llmos@127.0.0.1:1/llmos")
    assert_one_line_error(llmos("job", "list", env=unreachable), "database", "refused")



def test_the_state_of_a_crashed_stack_is_noticed_and_cleaned_up(tmp_path: Path) -> None:
    env = newcomer(tmp_path)
    assert llmos("model", "register", "echo", str(tmp_path), "--engine", "noop",
                 env=env).returncode == 0
    # What a killed `llmos up` leaves: its state file, naming a process that is gone (a
    # pid now used by another process: this one, started at another time) and a child
    # still running.
    orphan = subprocess.Popen(["sleep", "120"])
    (tmp_path / "stack.json").write_text(json.dumps({
        "broker_url": f"redis+socket://{tmp_path / 'gone.sock'}", "pid": os.getpid(),
        "started": 1.0, "children": [[orphan.pid, psutil.Process(orphan.pid).create_time()]],
    }))
    try:
        out = llmos("submit", "hello", "--model", "echo", env=env)
        assert orphan.wait(timeout=30) == -signal.SIGTERM
    finally:
        orphan.kill()
    assert_one_line_error(out, "no broker", "llmos up")
    [warning] = [line for line in out.stderr.splitlines() if line.startswith("warning: ")]
    assert f"removed {tmp_path / 'stack.json'}" in warning and "is gone" in warning
    assert "stopped the 1 process(es)" in warning
    assert not (tmp_path / "stack.json").exists()
    again = llmos("job", "list", env=env)
    assert again.returncode == 0 and again.stderr == ""  # said once



def test_the_cheap_schema_check_reads_the_same_head_as_alembic() -> None:
    assert head_revision() == ScriptDirectory.from_config(
        alembic_config("sqlite://")).get_current_head()
