"""teacher=served against a real local HTTP server (charlit.teachers.logprob_server over the tiny model)."""

import json
import threading
from dataclasses import replace

import pytest
import torch
from omegaconf import OmegaConf

from charlit.kernels import topk_teacher
from charlit.models.frozen import FrozenReference
from charlit.run import train
from charlit.teachers.logprob_server import PromptLogprobs, make_handler, make_server
from charlit.teachers.self import SelfTeacher
from charlit.teachers.served import ServedTeacher, ServedTeacherError
from tests.conftest import compose

KEY = "sk-test-served-teacher-0123456789"
RESPONSES = [[504, 2730, 30, 1306, 28], [1159, 314, 253]]
PROMPTS = ["Where are we headed?", [{"role": "user", "content": "Tell me about the sea."}]]


def _tiny():
    from charlit.models import load_model

    return load_model(OmegaConf.create({"name_or_path": "tiny"}), apply_lora=False)


@pytest.fixture(scope="module")
def student():
    return _tiny()


def _serve(handler_cls):
    from http.server import ThreadingHTTPServer

    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


@pytest.fixture(scope="module")
def scorer():
    loaded = _tiny()
    return PromptLogprobs(loaded.model, loaded.tokenizer, "tiny")


@pytest.fixture(scope="module")
def served(scorer):
    server, url = _serve(make_handler(scorer, None, 20))
    yield url
    server.shutdown()


def _config(url, **changes):
    base = ServedTeacher.Config(base_url=url, model="tiny", k=8, backoff_s=0.01)
    return replace(base, **changes)


def _teacher(student, pirate, config):
    return ServedTeacher.from_config(config, student.model, FrozenReference(student.model), student.tokenizer, pirate)


def test_served_rows_are_the_top_k_of_the_same_network_scored_locally(student, pirate, served):
    remote = _teacher(student, pirate, _config(served, batch_size=1)).score(PROMPTS, RESPONSES)
    local = SelfTeacher(student.model, FrozenReference(student.model), student.tokenizer, pirate)
    out = local.score(PROMPTS, RESPONSES)
    ids, logprobs, tail = topk_teacher(out.hidden, out.weight, 8, bias=out.bias, softcap=out.softcap)
    assert remote.ids.shape == (8, 8) and remote.tail.shape == (8,)
    for row in range(8):  # same ids and log-probs (order among near-ties may differ)
        mine = dict(zip(ids[row].tolist(), logprobs[row].tolist()))
        theirs = dict(zip(remote.ids[row].tolist(), remote.logprobs[row].tolist()))
        assert set(mine) == set(theirs)
        assert [theirs[t] for t in mine] == pytest.approx(list(mine.values()), abs=1e-5)
    assert remote.tail.tolist() == pytest.approx(tail.tolist(), abs=1e-4)


def test_on_policy_distill_trains_against_the_server_and_never_writes_the_key(tmp_path, scorer, monkeypatch):
    server, url = _serve(make_handler(scorer, KEY, 20))
    monkeypatch.setenv("CHARLIT_TEST_TEACHER_KEY", KEY)
    cfg = compose(
        [
            "method=on_policy_distill",
            "data=prompts",
            "method.lmbda=1",
            "teacher=served",
            f"teacher.base_url={url}",
            "teacher.model=tiny",
            "teacher.k=8",
            "teacher.api_key_env=CHARLIT_TEST_TEACHER_KEY",
            "model=tiny",
            "logger=csv",
            "trainer.max_steps=2",
            "sampler.max_new_tokens=6",
            "data.val_size=2",
            "data.batch_size=2",
        ]
    )
    summary = train(cfg, tmp_path)
    server.shutdown()
    assert summary["teacher"] == "served" and summary["steps"] == 2
    assert torch.isfinite(torch.tensor(summary["metrics"]["train/divergence"]))
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert KEY.encode() not in path.read_bytes(), path


def test_failed_requests_are_retried_with_back_off(student, pirate, scorer):
    calls = []

    class Flaky(make_handler(scorer, None, 20)):
        def do_POST(self):  # noqa: N802
            calls.append(1)
            if len(calls) < 3:
                self._error(503, "warming up")
            else:
                super().do_POST()

    server, url = _serve(Flaky)
    out = _teacher(student, pirate, _config(url)).score(PROMPTS[:1], RESPONSES[:1])
    server.shutdown()
    assert len(calls) == 3 and out.ids.shape == (5, 8)


def test_bad_servers_get_one_line_errors(student, pirate, scorer, served):
    closed = make_server(scorer)  # bound, then closed: nothing listens on that port
    port = closed.server_address[1]
    closed.server_close()
    teacher = _teacher(student, pirate, _config(f"http://127.0.0.1:{port}/v1", retries=1))
    with pytest.raises(ServedTeacherError, match=r"failed 2 times .*check that the server is up"):
        teacher.score(PROMPTS[:1], RESPONSES[:1])
    with pytest.raises(ServedTeacherError, match=r"HTTP 400 .*prompt_logprobs=21 must be in \[1, 20\]"):
        _teacher(student, pirate, _config(served, k=21)).score(PROMPTS[:1], RESPONSES[:1])

    class Short(make_handler(scorer, None, 20)):
        def _send(self, status, payload):
            for choice in payload.get("choices", []):
                choice["prompt_logprobs"] = [None] + [
                    dict(list(entry.items())[:3]) for entry in choice["prompt_logprobs"][1:]
                ]
            super()._send(status, payload)

    server, url = _serve(Short)
    with pytest.raises(ServedTeacherError, match="returned 3 log-probs at a position where teacher.k=8"):
        _teacher(student, pirate, _config(url)).score(PROMPTS[:1], RESPONSES[:1])
    server.shutdown()


def test_keys_stay_off_plain_http_to_other_machines_and_out_of_errors(student, pirate, scorer, monkeypatch):
    monkeypatch.setenv("CHARLIT_TEST_TEACHER_KEY", "wrong-" + KEY)
    with pytest.raises(ValueError, match="teacher.allow_insecure_http=true"):
        _teacher(student, pirate, _config("http://example.com/v1", api_key_env="CHARLIT_TEST_TEACHER_KEY"))
    server, url = _serve(make_handler(scorer, KEY, 20))
    teacher = _teacher(student, pirate, _config(url, api_key_env="CHARLIT_TEST_TEACHER_KEY"))
    with pytest.raises(ServedTeacherError, match="HTTP 401") as err:
        teacher.score(PROMPTS[:1], RESPONSES[:1])
    server.shutdown()
    assert KEY not in str(err.value)


def test_the_server_answers_the_vllm_shape(scorer, served):
    import urllib.request

    body = json.dumps({"model": "tiny", "prompt": [5, 6, 7], "prompt_logprobs": 2, "max_tokens": 1}).encode()
    request = urllib.request.Request(served + "/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        choice = json.loads(response.read())["choices"][0]
    entries = choice["prompt_logprobs"]
    assert entries[0] is None and len(entries) == 3
    for position, entry in enumerate(entries[1:], start=1):
        ranks = sorted(v["rank"] for v in entry.values())
        assert ranks[:2] == [1, 2] and len(entry) in (2, 3)  # top-2, plus the prompt's own token when outside them
        assert str([5, 6, 7][position]) in entry
