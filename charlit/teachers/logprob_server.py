"""A small OpenAI-compatible server of prompt log-probs over any model charlit loads: the subset of vLLM's completions
API that ``teacher=served`` uses, for a teacher on a machine without vLLM (and for the tests, which start it).

    python -m charlit.teachers.logprob_server --model bundled:smollm2-135m-instruct --port 8000 [--api-key-env VAR]

``POST /v1/completions`` takes ``prompt`` as token ids (one list, or a list of lists) and ``prompt_logprobs=k`` and
answers, per choice, ``prompt_logprobs``: ``None`` for the first token, then for every later position the top-k
next-token log-probs of the position before it as ``{"<token id>": {"logprob", "rank", "decoded_token"}}`` (plus
the prompt's own token with its rank when it is not among them), as vLLM does. It scores prompts only: the answer's
``text`` is empty whatever ``max_tokens`` says. ``GET /v1/models`` lists the model. Requests run one at a time;
``k`` above ``--max-logprobs`` (20, vLLM's default) is refused with HTTP 400. With ``--api-key-env`` every request
must carry ``Authorization: Bearer <key>``; the server never logs requests or headers.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch


class PromptLogprobs:
    """Top-k prompt log-probs of a causal LM, one sequence at a time (a ``[T, V]`` buffer, never ``[B, T, V]``)."""

    def __init__(self, model, tokenizer, name: str):
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.vocab = model.get_output_embeddings().weight.shape[0]
        self.lock = threading.Lock()

    def __call__(self, prompt: list[int], k: int) -> list[dict | None]:
        device = next(self.model.parameters()).device
        with self.lock, torch.no_grad():
            ids = torch.tensor([prompt], dtype=torch.long, device=device)
            logp = torch.log_softmax(self.model(input_ids=ids).logits[0].float(), dim=-1)
        top = torch.topk(logp[:-1], min(k, logp.shape[-1]), dim=-1)
        entries: list[dict | None] = [None]
        for position in range(1, len(prompt)):
            row = logp[position - 1]
            entry = {
                str(int(t)): {"logprob": float(v), "rank": rank + 1, "decoded_token": self.tokenizer.decode([int(t)])}
                for rank, (t, v) in enumerate(zip(top.indices[position - 1], top.values[position - 1]))
            }
            actual = int(prompt[position])
            if str(actual) not in entry:
                value = float(row[actual])
                entry[str(actual)] = {
                    "logprob": value,
                    "rank": int((row > value).sum()) + 1,
                    "decoded_token": self.tokenizer.decode([actual]),
                }
            entries.append(entry)
        return entries


def _prompts(body: dict, vocab: int) -> list[list[int]]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        prompt = [prompt]
    if not (isinstance(prompt, list) and prompt and all(isinstance(p, list) and p for p in prompt)):
        raise ValueError("prompt must be a non-empty list of token ids or a list of such lists")
    for p in prompt:
        if not all(isinstance(t, int) and 0 <= t < vocab for t in p):
            raise ValueError(f"prompt token ids must be integers in [0, {vocab})")
    return prompt


def make_handler(scorer: PromptLogprobs, api_key: str | None, max_logprobs: int):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format, *args) -> None:  # noqa: A002 (the base class's name): no request logs
            return

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str) -> None:
            self._send(status, {"object": "error", "message": message, "code": status})

        def _authorised(self) -> bool:
            if api_key is None:
                return True
            given = self.headers.get("Authorization", "")
            if hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return True
            self._error(401, "missing or wrong API key")
            return False

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if not self._authorised():
                return
            if self.path.rstrip("/").endswith("/models"):
                self._send(200, {"object": "list", "data": [{"id": scorer.name, "object": "model"}]})
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self) -> None:  # noqa: N802
            if not self._authorised():
                return
            if not self.path.rstrip("/").endswith("/completions"):
                self._error(404, f"no route {self.path}")
                return
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                prompts = _prompts(body, scorer.vocab)
                k = int(body.get("prompt_logprobs") or 0)
                if not 0 < k <= max_logprobs:
                    raise ValueError(f"prompt_logprobs={k} must be in [1, {max_logprobs}] (--max-logprobs)")
            except (ValueError, TypeError) as err:
                self._error(400, str(err))
                return
            choices = [
                {"index": i, "text": "", "prompt_logprobs": scorer(p, k), "finish_reason": "length"}
                for i, p in enumerate(prompts)
            ]
            self._send(200, {"object": "text_completion", "model": scorer.name, "choices": choices})

    return Handler


def make_server(
    scorer: PromptLogprobs, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None, max_logprobs: int = 20
) -> ThreadingHTTPServer:
    """A server bound to ``host:port`` (0: any free port; ``server.server_address`` says which); call
    ``serve_forever()`` (e.g. in a thread) and ``shutdown()``."""
    return ThreadingHTTPServer((host, port), make_handler(scorer, api_key, max_logprobs))


def main(argv: list[str] | None = None) -> None:
    from omegaconf import OmegaConf

    from charlit.models import load_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="bundled:smollm2-135m-instruct, a HF id or directory, or tiny")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key-env", default=None, help="environment variable holding the key clients must send")
    parser.add_argument("--max-logprobs", type=int, default=20)
    args = parser.parse_args(argv)
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            parser.error(f"--api-key-env {args.api_key_env}: that environment variable is not set")
    loaded = load_model(OmegaConf.create({"name_or_path": args.model}), apply_lora=False)
    server = make_server(
        PromptLogprobs(loaded.model, loaded.tokenizer, args.model), args.host, args.port, api_key, args.max_logprobs
    )
    host, port = server.server_address[:2]
    print(f"[charlit] serving prompt log-probs of {args.model} at http://{host}:{port}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
