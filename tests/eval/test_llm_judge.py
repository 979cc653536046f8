"""The LLM judge: answer parsing, the OpenAI-compatible client (against a local stub server; the key comes
from the named env var and is sent only as the bearer token), and "no judge configured"."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from omegaconf import OmegaConf

from charlit.eval.judges.llm import LLMJudge, build_llm_judge, openai_completion


def test_name_trait_and_coherence_parse_the_answer():
    assert LLMJudge(lambda p: "2", "stub").name_trait("q", "r", ("a", "b")) == 1
    assert LLMJudge(lambda p: " 1.", "stub").name_trait("q", "r", ("a", "b")) == 0
    assert LLMJudge(lambda p: "neither", "stub").name_trait("q", "r", ("a", "b")) is None
    assert LLMJudge(lambda p: "7", "stub").coherence("q", "r") == pytest.approx(0.7)
    assert LLMJudge(lambda p: "42", "stub").coherence("q", "r") is None


def test_no_llm_judge_by_default_and_bad_kinds_are_named():
    assert build_llm_judge(OmegaConf.create({"kind": "none"})) is None
    with pytest.raises(ValueError, match="kind='gpt'"):
        build_llm_judge(OmegaConf.create({"kind": "gpt"}))
    with pytest.raises(ValueError, match="base_url"):
        build_llm_judge(OmegaConf.create({"kind": "openai", "base_url": None, "model": "m"}))


def test_openai_client_sends_the_key_from_the_env_var(monkeypatch):
    seen = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            seen["auth"] = self.headers.get("Authorization")
            seen["path"] = self.path
            seen["body"] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            payload = json.dumps({"choices": [{"message": {"content": "1"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.handle_request, daemon=True).start()
    monkeypatch.setenv("CHARLIT_TEST_JUDGE_KEY", "sk-test-123")
    complete = openai_completion(f"http://127.0.0.1:{server.server_port}/v1", "judge-model", "CHARLIT_TEST_JUDGE_KEY")
    assert complete("hello") == "1"
    server.server_close()
    assert seen["auth"] == "Bearer sk-test-123" and seen["path"] == "/v1/chat/completions"
    assert seen["body"]["model"] == "judge-model" and seen["body"]["messages"][0]["content"] == "hello"


def test_missing_key_env_var_is_named(monkeypatch):
    monkeypatch.delenv("CHARLIT_NO_SUCH_KEY", raising=False)
    complete = openai_completion("http://127.0.0.1:9/v1", "m", "CHARLIT_NO_SUCH_KEY")
    with pytest.raises(ValueError, match="CHARLIT_NO_SUCH_KEY"):
        complete("hi")


def _judge(base_url, **extra):
    return build_llm_judge(OmegaConf.create({"kind": "openai", "base_url": base_url, "model": "m", **extra}))


def test_the_key_is_not_sent_over_plain_http_to_another_machine_unless_allowed():
    with pytest.raises(ValueError) as err:
        _judge("http://judge.example.com/v1", api_key_env="OPENAI_API_KEY")
    assert "to judge.example.com" in str(err.value) and "eval.llm_judge.allow_insecure_http=true" in str(err.value)
    assert _judge("http://judge.example.com/v1", api_key_env="OPENAI_API_KEY", allow_insecure_http=True)
    assert _judge("http://judge.example.com/v1", api_key_env=None)  # no key, nothing to leak


@pytest.mark.parametrize(
    "url", ["https://judge.example.com/v1", "http://localhost:8000/v1", "http://127.0.0.2:8000/v1", "http://[::1]/v1"]
)
def test_https_and_this_machine_are_fine_for_the_key(url):
    assert _judge(url, api_key_env="OPENAI_API_KEY")


def test_the_judge_description_in_eval_json_hides_url_credentials():
    judge = _judge("https://me:pw@judge.example.com/v1", api_key_env=None)
    assert "pw" not in judge.description and "judge.example.com/v1" in judge.description
