"""`latentcache serve`: the OpenAI-compatible server on tiny exported artifacts.

Greedy answers equal `latentcache run`'s (with and without the coprocessor) through the official `openai`
client against the CLI in a subprocess that cannot import torch; a bounded load test (50 concurrent
requests, some streaming, some disconnecting); the bad-request catalogue; the bounded queue; the cache
capacity check; the API key.

The artifacts are the `mistral-sliding` tiny model (as `tests/test_runtime.py`'s text-level tests use):
`llama-gqa-tied`'s random greedy output repeats one character whatever the prompt, which could not show
that answers are not mixed up between concurrent requests.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest
import uvicorn

from latentcache.errors import LatentcacheError
from latentcache.runtime import Pipeline
from latentcache.runtime.serve import ServeConfig, create_app
from latentcache.runtime.serve_worker import StopMatcher
from latentcache.sampling import Sampling
from tests.exported import NUM_LATENTS, export_tiny
from tests.test_packaging import BLOCK_HEAVY_IMPORTS, run_blocked

MAX_SEQ = 128
PROMPTS = ["Hello there", "What is 2+2?", "abc", "The quick brown fox", "Tell me a story.", "zebra 42",
           "Why is the sky blue?", "one two three"]


# -- fixtures and helpers -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return export_tiny("mistral-sliding", tmp_path_factory.mktemp("serve"), batch=1, max_seq=MAX_SEQ).artifacts


@pytest.fixture(scope="module")
def reference(artifacts):
    """A pipeline of its own (a server's pipeline belongs to its worker thread)."""
    pipeline = Pipeline(artifacts, "onnxruntime-cpu", threads=1)
    cache = {}

    def answer(prompt: str, max_tokens: int, coprocessor: bool = True) -> str:
        key = (prompt, max_tokens, coprocessor)
        if key not in cache:
            policy = pipeline.policy(coprocessor)
            cache[key] = "".join(pipeline.stream(prompt, max_tokens, Sampling(), policy, chat=True))
        return cache[key]

    return answer


def cli_run(artifacts, prompt: str, max_tokens: int, *flags: str) -> str:
    result = subprocess.run([sys.executable, "-m", "latentcache.cli", "run", str(artifacts), prompt,
                             "--max-new-tokens", str(max_tokens), "--backend", "onnxruntime-cpu", *flags],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n")
    return result.stdout[:-1]  # `run` ends the answer with one newline; the answer itself may contain others


class ThreadServer:
    """uvicorn on a pre-bound loopback socket (no port race), in a background thread."""

    def __init__(self, app) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.app = app
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    @property
    def worker(self):
        return self.app.state.server.worker

    def __enter__(self) -> ThreadServer:  # noqa: PYI034 - typing.Self needs Python 3.11
        self.thread.start()
        wait_for(lambda: self.server.started, "the server to start")
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()


def serve_in_thread(artifacts, pipeline=None, **options) -> ThreadServer:
    config = ServeConfig(artifacts=artifacts, backend="onnxruntime-cpu", threads=1, **options)
    return ThreadServer(create_app(config, pipeline or Pipeline(artifacts, "onnxruntime-cpu", threads=1)))


def wait_for(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chat_body(prompt: str, **fields) -> dict:
    return {"model": "artifacts", "messages": [{"role": "user", "content": prompt}], **fields}


@pytest.fixture(scope="module")
def server(artifacts):
    """An in-process server for the catalogue and capacity tests."""
    with serve_in_thread(artifacts, queue_size=8) as running:
        yield running


@pytest.fixture(scope="module")
def cli_server(artifacts):
    """`latentcache serve` in a subprocess that cannot import torch or transformers (the CLI wiring and the
    runtime-only promise at once); yields (url, psutil.Process)."""
    port = free_port()
    code = BLOCK_HEAVY_IMPORTS + (
        "from latentcache.cli import main\n"
        f"main(['serve', {str(artifacts)!r}, '--port', '{port}', '--backend', 'onnxruntime-cpu', "
        "'--threads', '1', '--queue-size', '64'])\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            return httpx.get(f"{url}/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(up, "`latentcache serve` to answer /health", timeout=60)
        yield url, psutil.Process(proc.pid)
    finally:
        proc.terminate()
        try:
            _, stderr = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
        assert "blocked" not in stderr and "Traceback" not in stderr, stderr


# -- the openai client against `latentcache serve` ------------------------------------------------------
def test_openai_client_matches_latentcache_run(cli_server, artifacts, reference):
    from openai import OpenAI

    url, _ = cli_server
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["artifacts"]
    prompt, n = "Hello there", 24
    augmented, base, raw = (cli_run(artifacts, prompt, n), cli_run(artifacts, prompt, n, "--no-coprocessor"),
                            cli_run(artifacts, prompt, n, "--raw", "--no-coprocessor"))
    assert augmented != base, "the coprocessor should change this greedy answer"
    assert reference(prompt, n) == augmented and reference(prompt, n, False) == base  # the load test's oracle

    messages = [{"role": "user", "content": prompt}]
    answer = client.chat.completions.create(model="artifacts", messages=messages, max_tokens=n)
    assert answer.choices[0].message.content == augmented
    extra = answer.model_extra["latentcache"]
    assert extra["coprocessor"] is True and extra["policy"] == "end-of-prompt" and extra["latents"] == NUM_LATENTS
    assert extra["ttft_ms"] > 0 and extra["coprocessor_ms"] > 0 and extra["decode_ms_per_token"] > 0
    assert answer.usage.completion_tokens <= n and answer.choices[0].finish_reason in ("stop", "length")

    off = client.chat.completions.create(model="artifacts", messages=messages, max_tokens=n,
                                         extra_body={"coprocessor": False})
    assert off.choices[0].message.content == base and off.model_extra["latentcache"]["coprocessor_ms"] == 0

    chunks = list(client.chat.completions.create(model="artifacts", messages=messages, max_tokens=n, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == augmented
    assert chunks[-1].usage.completion_tokens == answer.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == answer.choices[0].finish_reason

    completion = client.completions.create(model="artifacts", prompt=prompt, max_tokens=n,
                                           extra_body={"coprocessor": False})
    assert completion.choices[0].text == raw
    streamed = client.completions.create(model="artifacts", prompt=prompt, max_tokens=n, stream=True,
                                         extra_body={"coprocessor": False})
    assert "".join(c.choices[0].text for c in streamed) == raw


def test_load_50_concurrent_requests(cli_server, reference):
    """Every completed answer is its prompt's greedy answer; disconnects free the model; memory stays flat."""
    url, process = cli_server
    requests = [(i, PROMPTS[i % len(PROMPTS)], 8 + (i * 7) % 33, i % 3 != 2, ("stream", "drop", "plain")[i % 4 % 3])
                for i in range(50)]  # (index, prompt, max_tokens, coprocessor, mode)
    for _, prompt, tokens, coprocessor, _ in requests:
        reference(prompt, tokens, coprocessor)

    async def one(client, index, prompt, tokens, coprocessor, mode):
        body = chat_body(prompt, max_tokens=tokens, coprocessor=coprocessor, stream=mode != "plain")
        start = time.perf_counter()
        if mode == "plain":
            response = await client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            return index, response.json()["choices"][0]["message"]["content"], time.perf_counter() - start, True
        text, complete = [], False
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    complete = True
                    break
                text.append(json.loads(line[6:])["choices"][0]["delta"].get("content") or "")
                if mode == "drop" and len(text) == 3:
                    break  # leaving the block closes the connection mid-stream
        return index, "".join(text), time.perf_counter() - start, complete

    async def round_of_50():
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(*(one(client, *request) for request in requests))

    started = time.perf_counter()
    asyncio.run(round_of_50())  # warm-up: allocator pools, ORT arenas, imports
    rss_before = process.memory_info().rss
    results = asyncio.run(round_of_50())
    wall = time.perf_counter() - started
    rss_after = process.memory_info().rss

    assert sorted(r[0] for r in results) == list(range(50)), "a request was lost"
    for index, text, _, complete in results:
        _, prompt, tokens, coprocessor, mode = requests[index]
        expected = reference(prompt, tokens, coprocessor)
        if mode == "drop":
            assert expected.startswith(text), (index, text, expected)
        else:
            assert complete and text == expected, (index, text, expected)
    health = httpx.get(f"{url}/health").json()["queue"]
    assert health["waiting"] == 0 and not health["busy"]
    latencies = sorted(r[2] for r in results if requests[r[0]][4] != "drop")
    p50, p95 = statistics.median(latencies), latencies[int(0.95 * (len(latencies) - 1))]
    print(f"\nload: 2 rounds x 50 requests ({sum(r[4] == 'drop' for r in requests)} disconnecting), "
          f"{wall:.2f} s wall; second round p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms; "
          f"server RSS {rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB")
    assert wall < 45
    assert rss_after - rss_before < 32 * 2**20, "the server's memory grew over 50 requests"


# -- the runtime-only promise ---------------------------------------------------------------------------
def test_server_imports_and_answers_without_torch(artifacts, reference):
    code = (
        "from starlette.testclient import TestClient\n"
        "from latentcache.runtime.serve import ServeConfig, create_app\n"
        f"app = create_app(ServeConfig(artifacts={str(artifacts)!r}, backend='onnxruntime-cpu'))\n"
        "with TestClient(app) as client:\n"
        "    r = client.post('/v1/chat/completions', json={'messages': [{'role': 'user', 'content': 'abc'}],"
        " 'max_tokens': 12})\n"
        "assert not any(m.split('.')[0] in ('torch', 'transformers') for m in sys.modules)\n"
        "print(r.json()['choices'][0]['message']['content'], end='')\n"
    )
    result = run_blocked(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout == reference("abc", 12)


# -- the bad-request catalogue --------------------------------------------------------------------------
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
USER = [{"role": "user", "content": "hi"}]
INVALID = "invalid_request_error"  # OpenAI's type for every refused request body
BAD_REQUESTS = [
    # (id, path, body: bytes or a JSON value, status, error type, message fragment)
    ("malformed-json", CHAT, b'{"messages": [', 400, INVALID, "not valid JSON"),
    ("invalid-utf8", CHAT, b'{"messages": "\xff\xfe"}', 400, INVALID, "not valid UTF-8"),
    ("empty-body", CHAT, b"", 400, INVALID, "body is empty"),
    ("not-an-object", CHAT, [1, 2], 400, INVALID, "must be a JSON object"),
    ("nan-literal", CHAT, b'{"messages": [], "temperature": NaN}', 400, INVALID, "not valid JSON"),
    ("missing-messages", CHAT, {"max_tokens": 4}, 400, INVALID, "messages is required"),
    ("empty-messages", CHAT, {"messages": []}, 400, INVALID, "non-empty array"),
    ("messages-not-array", CHAT, {"messages": "hi"}, 400, INVALID, "non-empty array"),
    ("message-not-object", CHAT, {"messages": ["hi"]}, 400, INVALID, "messages[0] must be an object"),
    ("unknown-role", CHAT, {"messages": [{"role": "wizard", "content": "hi"}]}, 400, INVALID,
     "role 'wizard' is not supported"),
    ("missing-role", CHAT, {"messages": [{"content": "hi"}]}, 400, INVALID, "role null"),
    ("content-number", CHAT, {"messages": [{"role": "user", "content": 5}]}, 400, INVALID,
     "content must be a string"),
    ("image-part", CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     400, INVALID, "text part"),
    ("blank-messages", CHAT, {"messages": [{"role": "user", "content": "  "}]}, 400, INVALID,
     "every message is empty"),
    ("unknown-model", CHAT, {"model": "gpt-9", "messages": USER}, 404, INVALID, "'gpt-9' does not exist"),
    ("model-not-string", CHAT, {"model": 3, "messages": USER}, 400, INVALID, "model must be a string"),
    ("max-tokens-zero", CHAT, {"messages": USER, "max_tokens": 0}, 400, INVALID, "at least 1"),
    ("max-tokens-negative", CHAT, {"messages": USER, "max_tokens": -5}, 400, INVALID, "at least 1"),
    ("max-tokens-float", CHAT, {"messages": USER, "max_tokens": 1.5}, 400, INVALID, "an integer"),
    ("max-tokens-bool", CHAT, {"messages": USER, "max_tokens": True}, 400, INVALID, "an integer"),
    ("max-tokens-string", CHAT, {"messages": USER, "max_tokens": "10"}, 400, INVALID, "an integer"),
    ("max-tokens-huge", CHAT, {"messages": USER, "max_tokens": 10**12}, 400, INVALID,
     "in the kv-cache's 128 slots"),
    ("max-completion-tokens-zero", CHAT, {"messages": USER, "max_completion_tokens": 0}, 400,
     INVALID, "max_completion_tokens must be at least 1"),
    ("temperature-negative", CHAT, {"messages": USER, "temperature": -0.5}, 400, INVALID,
     "temperature must be in [0, 2]"),
    ("temperature-too-hot", CHAT, {"messages": USER, "temperature": 7}, 400, INVALID, "[0, 2]"),
    ("temperature-inf", CHAT, b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e999}', 400,
     INVALID, "temperature must be a finite number"),
    ("temperature-string", CHAT, {"messages": USER, "temperature": "hot"}, 400, INVALID,
     "temperature must be a number"),
    ("top-p-zero", CHAT, {"messages": USER, "top_p": 0}, 400, INVALID, "top_p must be in (0, 1]"),
    ("top-p-above-one", CHAT, {"messages": USER, "top_p": 1.5}, 400, INVALID, "top_p must be in (0, 1]"),
    ("seed-negative", CHAT, {"messages": USER, "seed": -1}, 400, INVALID, "seed must be in"),
    ("seed-huge", CHAT, {"messages": USER, "seed": 2**64}, 400, INVALID, "seed must be in"),
    ("seed-float", CHAT, {"messages": USER, "seed": 1.5}, 400, INVALID, "seed must be an integer"),
    ("stop-number", CHAT, {"messages": USER, "stop": 5}, 400, INVALID, "stop must be a string"),
    ("stop-too-many", CHAT, {"messages": USER, "stop": list("abcde")}, 400, INVALID, "at most 4"),
    ("stop-empty", CHAT, {"messages": USER, "stop": [""]}, 400, INVALID, "must not be empty"),
    ("stream-string", CHAT, {"messages": USER, "stream": "yes"}, 400, INVALID, "stream must be a boolean"),
    ("stream-options-alone", CHAT, {"messages": USER, "stream_options": {"include_usage": True}}, 400,
     INVALID, "only allowed with stream: true"),
    ("n-two", CHAT, {"messages": USER, "n": 2}, 400, INVALID, "n must be 1"),
    ("logprobs", CHAT, {"messages": USER, "logprobs": True}, 400, INVALID, "logprobs are not supported"),
    ("tools", CHAT, {"messages": USER, "tools": [{"type": "function"}]}, 400, INVALID, "tool calls"),
    ("presence-penalty-range", CHAT, {"messages": USER, "presence_penalty": 2.5}, 400, INVALID,
     "presence_penalty must be in [-2, 2], got 2.5"),
    ("frequency-penalty-string", CHAT, {"messages": USER, "frequency_penalty": "much"}, 400, INVALID,
     "frequency_penalty must be a number"),
    ("repetition-penalty-zero", CHAT, {"messages": USER, "repetition_penalty": 0}, 400, INVALID,
     "repetition_penalty must be > 0"),
    ("coprocessor-string", CHAT, {"messages": USER, "coprocessor": "yes"}, 400, INVALID,
     "coprocessor must be a boolean"),
    ("unknown-policy", CHAT, {"messages": USER, "policy": "magic"}, 400, INVALID, "unknown policy 'magic'"),
    ("prompt-missing", COMPLETIONS, {"max_tokens": 4}, 400, INVALID, "prompt is required"),
    ("prompt-number", COMPLETIONS, {"prompt": 5}, 400, INVALID, "prompt must be a string"),
    ("prompt-batch", COMPLETIONS, {"prompt": ["a", "b"]}, 400, INVALID, "one prompt per request"),
    ("prompt-blank", COMPLETIONS, {"prompt": "   "}, 400, INVALID, "the prompt is empty"),
    ("echo", COMPLETIONS, {"prompt": "hi", "echo": True}, 400, INVALID, "echo is not supported"),
    ("completion-unknown-model", COMPLETIONS, {"model": "x", "prompt": "hi"}, 404, INVALID,
     "does not exist"),
]


@pytest.mark.parametrize("path, body, status, kind, fragment", [case[1:] for case in BAD_REQUESTS],
                         ids=[case[0] for case in BAD_REQUESTS])
def test_bad_request_gets_an_openai_error(server, path, body, status, kind, fragment):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(server.url + path, content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == kind and fragment in error["message"], error
    assert "\n" not in error["message"] and "Traceback" not in response.text


@pytest.mark.parametrize("method, path, status", [("GET", "/v1/nothing", 404), ("GET", "/", 404),
                                                  ("POST", "/v1/models", 405), ("GET", CHAT, 405)])
def test_unknown_routes_get_json_errors(server, method, path, status):
    response = httpx.request(method, server.url + path)
    assert response.status_code == status
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_server_survives_the_catalogue(server, reference):
    response = httpx.post(f"{server.url}{CHAT}", json=chat_body("abc", max_tokens=10))
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == reference("abc", 10)
    assert httpx.get(f"{server.url}/v1/models/artifacts").json()["id"] == "artifacts"


# -- the cache capacity -------------------------------------------------------------------------------------
def test_over_capacity_is_refused_before_generation(server):
    served = server.worker.served
    prompt = "abc"  # three character tokens
    room = MAX_SEQ - len(prompt) - NUM_LATENTS
    fits = httpx.post(f"{server.url}{CHAT}", json=chat_body(prompt, max_tokens=room))
    assert fits.status_code == 200, fits.text
    over = httpx.post(f"{server.url}{CHAT}", json=chat_body(prompt, max_tokens=room + 1))
    assert over.status_code == 400
    error = over.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "max_tokens"
    # The latents plus one slot per augmentation (the refeed variant's), as `latentcache run` counts them.
    assert error["message"] == (f"max_tokens {room + 1} does not fit: 3 prompt tokens + {NUM_LATENTS + 1} latent "
                                f"slots leave room for {room} tokens in the kv-cache's {MAX_SEQ} slots; ask for at "
                                f"most {room} tokens or shorten the prompt")
    # Without the coprocessor its latents' slots are free for tokens.
    base = httpx.post(f"{server.url}{CHAT}", json=chat_body(prompt, max_tokens=room + 1, coprocessor=False))
    assert base.status_code == 200
    long = httpx.post(f"{server.url}{COMPLETIONS}", json={"prompt": "x" * MAX_SEQ})
    assert long.status_code == 400 and "no room to generate" in long.json()["error"]["message"]
    assert server.worker.served == served + 2, "a refused request reached the model"


def test_max_tokens_defaults_to_what_fits(server, reference):
    response = httpx.post(f"{server.url}{COMPLETIONS}", json={"prompt": "zebra 42", "coprocessor": True})
    room = MAX_SEQ - len("zebra 42") - NUM_LATENTS
    body = response.json()
    assert body["choices"][0]["text"] == reference("zebra 42", room)
    assert body["usage"]["completion_tokens"] <= room
    assert body["usage"]["prompt_tokens"] == len("zebra 42")


def test_stop_sequences_cut_the_text(server, reference):
    full = reference("Hello there", 30)
    stop = full[10:12]
    cut = full[:full.index(stop)]
    plain = httpx.post(f"{server.url}{CHAT}", json=chat_body("Hello there", max_tokens=30, stop=[stop, "@@"])).json()
    assert plain["choices"][0]["message"]["content"] == cut and plain["choices"][0]["finish_reason"] == "stop"
    with httpx.stream("POST", f"{server.url}{CHAT}", json=chat_body("Hello there", max_tokens=30, stop=stop,
                                                                     stream=True)) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines()
                  if line.startswith("data: {")]
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events) == cut
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


def test_stop_reasons_and_penalties_reach_the_generator(server, artifacts):
    def ask(**fields):
        body = httpx.post(f"{server.url}{CHAT}", json=chat_body("Hello there", **fields)).json()
        return body["choices"][0]["message"]["content"], body["choices"][0]["finish_reason"], body["latentcache"]

    text, finish, extra = ask(max_tokens=6)
    assert (finish, extra["stop_reason"]) == ("length", "max_tokens")
    _, finish, extra = ask(max_tokens=30, stop=text[2:4])
    assert (finish, extra["stop_reason"]) == ("stop", "stop_string")
    penalties = {"repetition_penalty": 1.6, "presence_penalty": 0.5, "frequency_penalty": 0.3}
    penalized, _, _ = ask(max_tokens=16, **penalties)
    pipeline = Pipeline(artifacts, "onnxruntime-cpu", threads=1)
    expected = "".join(pipeline.stream("Hello there", 16, Sampling(**penalties), pipeline.policy(True)))
    assert penalized == expected != ask(max_tokens=16)[0]


def test_sampling_is_seeded(server):
    def sampled(seed):
        body = chat_body("abc", max_tokens=16, temperature=1.0, top_p=0.9, seed=seed)
        return httpx.post(f"{server.url}{CHAT}", json=body).json()["choices"][0]["message"]["content"]

    assert sampled(3) == sampled(3)


def test_policy_override_and_multi_message_chat(server, reference):
    body = chat_body("Hello there", max_tokens=20, policy="every-n")
    extra = httpx.post(f"{server.url}{CHAT}", json=body).json()["latentcache"]
    assert extra["policy"] == "every-n" and extra["augmented_at"] == [0]  # every 32 tokens: once in 20
    asynchronous = httpx.post(f"{server.url}{CHAT}", json={**body, "policy": "async"}).json()
    # Async absorbs the latents when the coprocessor is done; on a loaded machine the 20 tokens may all come
    # first (then nothing is absorbed). tests/test_runtime.py pins the absorption itself down.
    absorbed = asynchronous["latentcache"]["augmented_at"]
    assert asynchronous["latentcache"]["policy"] == "async" and len(absorbed) <= 1
    assert asynchronous["latentcache"]["latents"] == NUM_LATENTS * len(absorbed)
    # No chat template in these artifacts: the conversation's texts, one per line.
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "abc"}]
    answer = httpx.post(f"{server.url}{CHAT}", json={"messages": messages, "max_tokens": 12}).json()
    assert answer["choices"][0]["message"]["content"] == reference("Be brief.\nabc", 12)


def test_entropy_policy_that_fills_the_cache_ends_with_length(server):
    """Entropy's augmentations depend on the text, so only the first is reserved; running out of slots later
    ends the answer like OpenAI's context limit rather than failing it."""
    response = httpx.post(f"{server.url}{CHAT}", json=chat_body("abc", policy="entropy"))
    assert response.status_code == 200, response.text
    body = response.json()
    augmentations = len(body["latentcache"]["augmented_at"])
    assert augmentations > 1, "this random tiny model should be uncertain at most steps"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["latentcache"]["latents"] == augmentations * NUM_LATENTS
    assert 3 + body["latentcache"]["latents"] + body["usage"]["completion_tokens"] <= MAX_SEQ + 1


# -- the queue and disconnects ------------------------------------------------------------------------------
class GatedGenerator:
    """The real generator, holding every token until ``open`` is set; counts the tokens each request took."""

    def __init__(self, inner) -> None:
        self.inner, self.open, self.calls = inner, threading.Event(), []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def generate(self, *args, **kwargs):
        taken = [0]
        self.calls.append(taken)
        for tokens in self.inner.generate(*args, **kwargs):
            assert self.open.wait(20), "the test never opened the gate"
            taken[0] += 1
            yield tokens


@pytest.fixture
def gated(artifacts):
    pipeline = Pipeline(artifacts, "onnxruntime-cpu", threads=1)
    pipeline.generator = GatedGenerator(pipeline.generator)
    with serve_in_thread(artifacts, pipeline, queue_size=1) as running:
        yield running, pipeline.generator
        pipeline.generator.open.set()


def post_in_thread(url: str, body: dict) -> dict:
    result = {}
    thread = threading.Thread(target=lambda: result.update(response=httpx.post(url, json=body, timeout=30)))
    thread.start()
    result["thread"] = thread
    return result


def test_full_queue_gets_503_and_a_disconnect_frees_the_model(gated, reference):
    running, gate = gated
    worker, url = running.worker, f"{running.url}{CHAT}"
    with httpx.stream("POST", url, json=chat_body("Hello there", max_tokens=100, stream=True)) as first:
        assert first.status_code == 200
        wait_for(lambda: worker.running is not None, "the first request to reach the model")
        second = post_in_thread(url, chat_body("abc", max_tokens=10))
        wait_for(lambda: worker.waiting == 1, "the second request to queue")
        refused = httpx.post(url, json=chat_body("abc", max_tokens=10))
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "queue_full"
        cancelled = worker.running.cancelled
    wait_for(cancelled.is_set, "the server to notice the disconnect")  # the client left mid-stream
    gate.open.set()
    second["thread"].join(timeout=30)
    assert second["response"].status_code == 200
    assert second["response"].json()["choices"][0]["message"]["content"] == reference("abc", 10)
    assert gate.calls[0][0] <= 1, "the model kept generating for a client that had gone"


def test_a_queued_client_that_leaves_gives_its_place_back(gated, reference):
    running, gate = gated
    worker, url = running.worker, f"{running.url}{CHAT}"
    first = post_in_thread(url, chat_body("Hello there", max_tokens=8))
    wait_for(lambda: worker.running is not None, "the first request to reach the model")
    with httpx.stream("POST", url, json=chat_body("abc", max_tokens=8, stream=True)) as queued:
        assert queued.status_code == 200
        wait_for(lambda: worker.waiting == 1, "the second request to queue")
    wait_for(lambda: worker.waiting == 0, "the queued streaming request to leave")
    body = json.dumps(chat_body("abc", max_tokens=8)).encode()
    with socket.create_connection(("127.0.0.1", int(running.url.rsplit(":", 1)[1]))) as raw:  # non-streaming
        raw.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        wait_for(lambda: worker.waiting == 1, "the non-streaming request to queue")
    wait_for(lambda: worker.waiting == 0, "the queued non-streaming request to leave")
    third = post_in_thread(url, chat_body("zebra 42", max_tokens=8))  # fits only because the slot is free
    wait_for(lambda: worker.waiting == 1, "the third request to queue")
    gate.open.set()
    for request, prompt in ((first, "Hello there"), (third, "zebra 42")):
        request["thread"].join(timeout=30)
        assert request["response"].json()["choices"][0]["message"]["content"] == reference(prompt, 8)
    assert len(gate.calls) == 2, "an abandoned request ran"


# -- the API key --------------------------------------------------------------------------------------------
def test_api_key_is_required_when_set(artifacts, reference):
    from openai import AuthenticationError, OpenAI

    with serve_in_thread(artifacts, api_key="s3cret") as running:
        body = chat_body("abc", max_tokens=6)
        missing = httpx.post(f"{running.url}{CHAT}", json=body)
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
        wrong = httpx.post(f"{running.url}{CHAT}", json=body, headers={"Authorization": "Bearer s3cre"})
        assert wrong.status_code == 401 and "incorrect API key" in wrong.json()["error"]["message"]
        assert httpx.get(f"{running.url}/v1/models").status_code == 401
        assert httpx.get(f"{running.url}/health").status_code == 200  # probes need no key
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=f"{running.url}/v1", api_key="nope", max_retries=0).models.list()
        client = OpenAI(base_url=f"{running.url}/v1", api_key="s3cret", max_retries=0)
        answer = client.chat.completions.create(model="artifacts", messages=body["messages"], max_tokens=6)
        assert answer.choices[0].message.content == reference("abc", 6)


# -- configuration and pieces ---------------------------------------------------------------------------------
@pytest.mark.parametrize("options, fragment", [
    ({"port": 70000}, "--port must be in 0..65535, got 70000"),
    ({"port": "80"}, "--port must be"),
    ({"queue_size": 0}, "--queue-size must be an integer >= 1, got 0"),
    ({"threads": 0}, "--threads must be an integer >= 1"),
    ({"backend": "gpu"}, "unknown backend 'gpu'"),
    ({"policy": "none"}, "unknown policy 'none'"),
    ({"api_key": " "}, "--api-key is empty"),
    ({"host": ""}, "--host must be"),
    ({"model_name": ""}, "--model-name is empty"),
])
def test_serve_config_rejects_bad_values(artifacts, options, fragment):
    with pytest.raises(LatentcacheError) as info:
        ServeConfig(artifacts=artifacts, **options)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_serve_config_needs_artifacts_and_names_the_model(artifacts, tmp_path):
    with pytest.raises(LatentcacheError, match="not an artifacts directory"):
        ServeConfig(artifacts=tmp_path)
    assert ServeConfig(artifacts=str(artifacts)).model_id == "artifacts"
    assert ServeConfig(artifacts=artifacts, model_name="tiny").model_id == "tiny"


def test_cli_serve_reports_bad_artifacts_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "latentcache.cli", "serve", str(tmp_path)],
                            check=False, capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in os.environ.items() if k != "LATENTCACHE_API_KEY"})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "not an artifacts directory" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("pieces, stops, expected, hit", [
    (["ab", "cd", "ef"], ("cd",), "ab", True),
    (["abc", "de"], ("cd",), "ab", True),  # a stop spanning two pieces
    (["a", "b", "c"], ("bd",), "abc", False),  # a held-back prefix that never completes is released
    (["xy"], ("y", "xy"), "", True),  # the earliest match wins
    (["hello"], (), "hello", False),
])
def test_stop_matcher(pieces, stops, expected, hit):
    matcher, out, stopped = StopMatcher(stops), [], False
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        out.append(text)
        if stopped:
            break
    if not stopped:
        out.append(matcher.flush())
    assert "".join(out) == expected and stopped == hit
