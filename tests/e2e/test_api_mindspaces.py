"""The mindspace lifecycle over HTTP: configure, snapshot and restore, fork, knowledge."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tests.support.api_server import ApiServer, tenant
from tests.support.stack import Stack
from tests.support.turns import echo_model, seqs_of, start_echo_worker
from tests.support.waiting import HANG_GUARD_S, until


def test_the_whole_lifecycle_over_http(api: ApiServer) -> None:
    owner = tenant()
    key = api.key(owner)
    with api.http(key) as http:
        space = http.post("/v1/mindspaces", json={"model": "echo", "persona": "terse"}).json()
        sid = space["id"]
        configured = http.patch(f"/v1/mindspaces/{sid}", json={"max_tokens": 2}).json()
        assert configured["settings"]["max_tokens"] == 2 and configured["persona"] == "terse"
        turn = http.post(f"/v1/mindspaces/{sid}/turns", params={"wait": "true"},
                         json={"message": "hello"}).json()
        assert turn["status"] == "succeeded" and turn["result"]["reply"] == "ok ok"
        snap = http.post(f"/v1/mindspaces/{sid}/snapshots", json={"name": "one"}).json()
        assert snap["messages"] == 2
        listed = http.get(f"/v1/mindspaces/{sid}/snapshots").json()["data"]
        assert [s["id"] for s in listed] == [snap["id"]]
        restored = http.post(f"/v1/mindspaces/snapshots/{snap['id']}/restore").json()
        forked = http.post(f"/v1/mindspaces/{sid}/fork").json()
        for copy in (restored, forked):
            assert copy["id"] != sid
            assert [m["content"] for m in copy["messages"]] == ["hello", "ok ok"]
        doc = http.post(f"/v1/mindspaces/{sid}/knowledge",
                        json={"title": "notes", "text": "# Queues\n\nPriority 0 runs first."})
        assert doc.status_code == 201 and doc.json()["chunks"] == 1
        docs = http.get(f"/v1/mindspaces/{sid}/knowledge").json()["data"]
        assert [d["title"] for d in docs] == ["notes"]
        assert http.delete(f"/v1/mindspaces/{sid}/knowledge/{docs[0]['id']}").status_code == 204
        assert http.get(f"/v1/mindspaces/{sid}/knowledge").json()["data"] == []
        ids = {m["id"] for m in http.get("/v1/mindspaces").json()["data"]}
        assert {sid, restored["id"], forked["id"]} <= ids
    with api.http(api.key(tenant())) as stranger:
        assert stranger.post(f"/v1/mindspaces/{sid}/fork").status_code == 404
        assert stranger.get(f"/v1/mindspaces/{sid}/snapshots").status_code == 404
        assert stranger.post(f"/v1/mindspaces/snapshots/{snap['id']}/restore").status_code == 404
    with api.http(api.key(owner, "mindspaces:read")) as reader:
        assert reader.get(f"/v1/mindspaces/{sid}/snapshots").status_code == 200
        assert reader.post(f"/v1/mindspaces/{sid}/fork").status_code == 403


def test_a_waiting_turn_answers_at_once_when_its_mindspace_is_destroyed(
        api: ApiServer, stack: Stack) -> None:
    _, model, env = echo_model(stack, delay_ms=5000)
    worker = start_echo_worker(stack, model, env, "http-turns")
    try:
        with api.http(api.key(tenant())) as http:
            sid = http.post("/v1/mindspaces", json={"model": model}).json()["id"]
            running = http.post(f"/v1/mindspaces/{sid}/turns", json={"message": "first"})
            assert running.status_code == 202
            with ThreadPoolExecutor(1) as pool:
                waiting = pool.submit(http.post, f"/v1/mindspaces/{sid}/turns",
                                      params={"wait": "true"}, json={"message": "second"})
                def second_accepted() -> bool:
                    assert not waiting.done()
                    return len(seqs_of(stack, sid)) >= 2

                until(second_accepted, "the second turn was accepted")
                assert http.delete(f"/v1/mindspaces/{sid}").status_code == 204
                answer = waiting.result(timeout=HANG_GUARD_S)
            assert answer.status_code == 200, answer.text
            turn = answer.json()
            assert turn["status"] == "cancelled" and turn["error_type"] == "MindspaceDestroyed"
            assert sid in turn["error_message"]
            first = http.get(f"/v1/jobs/{running.json()['id']}").json()
            assert first["status"] == "cancelled"  # it was running; it stops counting
    finally:
        stack.stop_worker(worker)
