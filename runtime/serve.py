"""``latentcache serve``: an OpenAI-compatible HTTP server over exported artifacts (runtime-only, no torch).

One model, one worker thread. The generator is synchronous numpy code holding one kv-cache, so requests
cannot share it; they wait in arrival order in a bounded queue and the worker runs them one at a time.
HTTP handling (parsing, tokenizing, the capacity check, streaming) stays on the event loop, so a full
queue, a bad request or an over-long prompt is answered at once, before any generation.

    ServeConfig(artifacts=...)  ->  serve(config)         blocks, runs uvicorn
                                    create_app(config)    the Starlette app (tests drive it directly)

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``, ``GET /health``.
Wire format and validation: ``runtime/serve_protocol.py``; the model thread and its queue: ``runtime/serve_worker.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from latentcache.errors import LatentcacheError
from latentcache.runtime import Pipeline
from latentcache.runtime.backends import BACKENDS
from latentcache.runtime.generator import POLICIES, Capacity, Policy
from latentcache.runtime.serve_protocol import (
    ApiError,
    GenerationRequest,
    Outcome,
    chunk_object,
    completion_object,
    invalid,
    parse_chat,
    parse_completion,
    parse_json_body,
    sse,
    usage,
)
from latentcache.runtime.serve_worker import EVERY, Event, Failed, Job, Piece, Worker

try:  # the [serve] extra; without it only ServeConfig is usable, and serve()/create_app() say what to install
    import uvicorn
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route
except ImportError as exc:  # pragma: no cover - exercised only on installs without the extra
    _MISSING_EXTRA: ImportError | None = exc
else:
    _MISSING_EXTRA = None

log = logging.getLogger("latentcache.serve")
AUGMENTING = tuple(name for name in POLICIES if name != "none")  # "none" is asked for with coprocessor=false

MAX_BODY_BYTES = 4 * 2**20  # far beyond any prompt that fits a kv-cache; stops a client filling memory
LOOPBACK = ("127.0.0.1", "localhost", "::1")


# -- configuration --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServeConfig:
    """What ``latentcache serve`` was asked for; invalid values fail here, before the model loads."""

    artifacts: Path
    host: str = "127.0.0.1"
    port: int = 8000
    backend: str = "auto"
    policy: str = "end-of-prompt"
    coprocessor: bool = True  # the default for requests that do not say (ignored if the artifacts have none)
    api_key: str | None = None
    queue_size: int = 16  # requests waiting (not counting the one running) before new ones get 503
    threads: int | None = None
    model_name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.artifacts, (str, os.PathLike)):
            raise LatentcacheError(f"artifacts must be a directory path, got {self.artifacts!r}")
        object.__setattr__(self, "artifacts", Path(self.artifacts))  # the CLI passes a Path, Python callers a str
        if not (self.artifacts / "manifest.json").is_file():
            raise LatentcacheError(f"{self.artifacts} is not an artifacts directory (no manifest.json): "
                                   "run `latentcache export` and pass its --out")
        if not isinstance(self.host, str) or not self.host.strip():
            raise LatentcacheError(f"--host must be an interface name or address, got {self.host!r}")
        _check_int("--port", self.port, 0, 65535)
        if self.backend not in ("auto", *BACKENDS):
            raise LatentcacheError(f"unknown backend '{self.backend}': choose one of auto, {', '.join(BACKENDS)}")
        if self.policy not in AUGMENTING:
            raise LatentcacheError(f"unknown policy '{self.policy}': choose one of {', '.join(AUGMENTING)}")
        if not isinstance(self.coprocessor, bool):
            raise LatentcacheError(f"coprocessor must be True or False, got {self.coprocessor!r}")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key.strip()):
            raise LatentcacheError("--api-key is empty: pass a non-empty key, or unset it and LATENTCACHE_API_KEY")
        _check_int("--queue-size", self.queue_size, 1, None)
        if self.threads is not None:
            _check_int("--threads", self.threads, 1, None)
        if self.model_name is not None and (not isinstance(self.model_name, str) or not self.model_name.strip()):
            raise LatentcacheError("--model-name is empty: pass a name or leave it out (the folder name is used)")

    @property
    def model_id(self) -> str:
        return self.model_name or self.artifacts.resolve().name


def _check_int(name: str, value, low: int, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f"in {low}..{high}" if high is not None else f"an integer >= {low}"
        raise LatentcacheError(f"{name} must be {span}, got {value!r}")


# -- prompts and capacity -------------------------------------------------------------------------------
def encode_messages(pipeline: Pipeline, messages: tuple[dict, ...]) -> list[int]:
    """Token ids of a whole conversation, assistant turn opened, the way ``Tokenizer.encode`` does one message.

    With a chat template: rendered over all messages, tokenized without added special tokens (as
    ``apply_chat_template``). Without one (a base model): the contents one per line, so a lone user message
    is exactly what ``latentcache run`` encodes.
    """
    if not any(m["content"].strip() for m in messages):
        raise invalid("messages", "every message is empty: send some text")
    try:
        return pipeline.tokenizer.encode_messages(list(messages))
    except LatentcacheError as exc:
        raise invalid("messages", str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - a jinja error inside the model's own template, caused by these messages
        raise invalid("messages", f"the chat template rejects these messages: {exc}") from None


def encode_request(pipeline: Pipeline, request: GenerationRequest) -> list[int]:
    if request.chat:
        return encode_messages(pipeline, request.messages)
    if not request.prompt.strip():
        raise invalid("prompt", "the prompt is empty: send some text")
    return pipeline.tokenizer.encode(request.prompt, chat=False)


def max_tokens(capacity: Capacity, prompt: int, policy: Policy, asked: int | None, param: str) -> int:
    """The request's max_tokens, checked against the kv-cache before it is queued (``None``: all that fit).
    ``Capacity`` (runtime/generator.py) counts the slots, as it does for ``latentcache run``."""
    most = capacity.most(prompt, policy)
    latents = capacity.latent_slots(max(asked or most, 1), policy)
    plus = f" + {latents} latent slots" if latents else ""
    if most == 0:
        raise invalid(param, f"the prompt is {prompt} tokens{plus} and the kv-cache holds {capacity.slots}: "
                      "no room to generate; shorten the prompt", "context_length_exceeded")
    if asked is not None and asked > most:
        raise invalid("max_tokens", f"max_tokens {asked} does not fit: {prompt} prompt tokens{plus} leave room for "
                      f"{most} tokens in the kv-cache's {capacity.slots} slots; ask for at most {most} tokens or "
                      "shorten the prompt", "context_length_exceeded")
    return most if asked is None else asked


# -- the app --------------------------------------------------------------------------------------------
class Server:
    """The state behind the routes: the pipeline, its worker, the request defaults."""

    def __init__(self, config: ServeConfig, pipeline: Pipeline) -> None:
        self.config, self.pipeline = config, pipeline
        self.model_id = config.model_id
        self.coprocessor = config.coprocessor and pipeline.has_coprocessor
        self.capacity = pipeline.generator.budget
        self.worker = Worker(pipeline, config.queue_size)
        self.created = int(time.time())

    # -- requests --
    def authorize(self, request: Request) -> None:
        key = self.config.api_key
        if key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "missing API key: send the header 'Authorization: Bearer <key>'",
                           "invalid_request_error", None, "invalid_api_key")
        if not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(401, "incorrect API key: send the key the server was started with (--api-key)",
                           "invalid_request_error", None, "invalid_api_key")

    async def generate(self, request: Request, parsed: GenerationRequest) -> Response:
        if parsed.model is not None and parsed.model != self.model_id:
            raise ApiError(404, f"the model '{parsed.model}' does not exist: this server runs '{self.model_id}'",
                           "invalid_request_error", "model", "model_not_found")
        coprocessor = self.coprocessor if parsed.coprocessor is None else parsed.coprocessor
        if coprocessor and not self.pipeline.has_coprocessor:
            raise invalid("coprocessor", "these artifacts have no coprocessor: send coprocessor: false "
                          "or re-export with --coprocessor")
        policy = parsed.policy or self.config.policy
        # Tokenizing (and rendering a chat template) is CPU work: keep it off the event loop.
        ids = await run_in_threadpool(self._encode, parsed)
        param = "messages" if parsed.chat else "prompt"
        schedule = self.pipeline.policy(coprocessor, policy, every=EVERY)  # for counting slots; the worker runs its own
        budget = max_tokens(self.capacity, len(ids), schedule, parsed.max_tokens, param)
        events: asyncio.Queue[Event] = asyncio.Queue()
        job = Job(ids, budget, parsed.sampling, parsed.stop, coprocessor, policy, parsed.stream,
                  _deliverer(asyncio.get_running_loop(), events))
        self.worker.submit(job)
        ident = f"{'chatcmpl' if parsed.chat else 'cmpl'}-{uuid.uuid4().hex}"
        if parsed.stream:
            return JobStream(self._stream(events, parsed, ident), lambda: self.worker.cancel(job))
        outcome = await self._collect(request, job, events)
        if outcome is None:  # the client is gone; nobody reads this
            return Response(status_code=499)
        return JSONResponse(completion_object(parsed, ident, self.model_id, outcome))

    def _encode(self, parsed: GenerationRequest) -> list[int]:
        try:
            return encode_request(self.pipeline, parsed)
        except ApiError:
            raise
        except LatentcacheError as exc:
            raise invalid("messages" if parsed.chat else "prompt", str(exc)) from None

    async def _collect(self, request: Request, job: Job, events: asyncio.Queue) -> Outcome | None:
        """The final outcome; a client that disconnects while waiting gives its place (and the model) back."""
        result = asyncio.ensure_future(events.get())
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (result, gone):
                task.cancel()
        if not result.done() or result.cancelled():
            self.worker.cancel(job)
            return None
        event = result.result()
        if isinstance(event, Failed):
            raise event.error
        return event.outcome

    async def _stream(self, events: asyncio.Queue, parsed: GenerationRequest, ident: str) -> AsyncIterator[bytes]:
        """Server-sent events: the role, the text pieces, the finish reason with the latency split, [DONE].
        An error after the 200 has gone out can only be an event: OpenAI's error object, then [DONE]."""
        if parsed.chat:
            yield sse(chunk_object(parsed, ident, self.model_id, role=True))
        while True:
            event = await events.get()
            if isinstance(event, Piece):
                yield sse(chunk_object(parsed, ident, self.model_id, text=event.text))
                continue
            if isinstance(event, Failed):
                yield sse(event.error.body())
                break
            outcome = event.outcome
            final = chunk_object(parsed, ident, self.model_id, finish_reason=outcome.finish_reason)
            final["latentcache"] = outcome.latentcache
            yield sse(final)
            if parsed.include_usage:
                yield sse({**chunk_object(parsed, ident, self.model_id), "choices": [], "usage": usage(outcome)})
            break
        yield sse("[DONE]")

    # -- the other endpoints --
    def model_object(self) -> dict:
        return {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "latentcache"}

    def health(self) -> dict:
        worker = self.worker
        return {"status": "ok", "model": self.model_id, "backend": self.pipeline.backend.describe(),
                "coprocessor": self.coprocessor, "policy": self.config.policy,
                "capacity": self.capacity.slots, "latents": self.capacity.num_latents,
                "queue": {"waiting": worker.waiting, "size": worker.queue_size, "busy": worker.running is not None,
                          "served": worker.served}}


if _MISSING_EXTRA is None:
    class JobStream(StreamingResponse):
        """An SSE response that cancels its job however it ends. Starlette cancels the response when the client
        disconnects, wherever the body generator happens to be suspended; cancelling here, rather than in the
        generator's ``finally``, frees the model (or the queue slot) at once in every case."""

        def __init__(self, content: AsyncIterator[bytes], cancel: Callable[[], None]) -> None:
            super().__init__(content, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            self.cancel = cancel

        async def __call__(self, scope, receive, send) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                self.cancel()  # a no-op for a job that has finished


def _deliverer(loop: asyncio.AbstractEventLoop, events: asyncio.Queue) -> Callable[[Event], None]:
    def deliver(event: Event) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is shutting down
            loop.call_soon_threadsafe(events.put_nowait, event)
    return deliver


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, f"the request body is {declared} bytes; the limit is {MAX_BODY_BYTES}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, f"the request body exceeds {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def check_extra() -> None:
    """Say which extra to install, before any model is loaded."""
    if _MISSING_EXTRA is not None:
        raise LatentcacheError(f"the server needs the serve extra ({_MISSING_EXTRA.name} is missing): "
                               "pip install 'latentcache[serve]'")


def create_app(config: ServeConfig, pipeline: Pipeline | None = None):
    """The Starlette app. Without ``pipeline`` the artifacts are opened now (and closed at shutdown)."""
    check_extra()
    owned = pipeline is None
    pipeline = pipeline or Pipeline(config.artifacts, config.backend, config.threads)
    server = Server(config, pipeline)

    async def chat_completions(request: Request) -> Response:
        server.authorize(request)
        return await server.generate(request, parse_chat(parse_json_body(await _read_body(request))))

    async def completions(request: Request) -> Response:
        server.authorize(request)
        return await server.generate(request, parse_completion(parse_json_body(await _read_body(request))))

    async def models(request: Request) -> Response:
        server.authorize(request)
        return JSONResponse({"object": "list", "data": [server.model_object()]})

    async def model(request: Request) -> Response:
        server.authorize(request)
        if request.path_params["model"] != server.model_id:
            raise ApiError(404, f"the model '{request.path_params['model']}' does not exist: this server runs "
                           f"'{server.model_id}'", "invalid_request_error", "model", "model_not_found")
        return JSONResponse(server.model_object())

    async def health(request: Request) -> Response:  # open even with an API key: for load balancers and probes
        return JSONResponse(server.health())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        server.worker.start()
        try:
            yield
        finally:
            server.worker.stop()
            if owned:
                pipeline.close()

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]
    handlers = {ApiError: _api_error, HTTPException: _http_error, Exception: _server_error}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.state.server = server
    return app


async def _api_error(request: Request, exc: ApiError) -> Response:
    # 401 says how to authenticate; 503 says when to retry (the openai client honours Retry-After).
    headers = {401: {"WWW-Authenticate": "Bearer"}, 503: {"Retry-After": "1"}}.get(exc.status)
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """Starlette's own 404/405 in OpenAI's error shape."""
    route = f"{request.method} {request.url.path}"
    message = (f"no route {route}: see /v1/chat/completions, /v1/completions, /v1/models, /health"
               if exc.status_code == 404 else f"{exc.detail}: {route}")
    error = ApiError(exc.status_code, message, "invalid_request_error", None,
                     "not_found" if exc.status_code == 404 else None)
    return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    error = ApiError(500, f"internal error: {type(exc).__name__}", "server_error")
    return JSONResponse(error.body(), status_code=500)


def serve(config: ServeConfig) -> None:
    """Load the model, then serve until interrupted (Ctrl-C / SIGTERM)."""
    check_extra()
    pipeline = Pipeline(config.artifacts, config.backend, config.threads)
    app = create_app(config, pipeline)
    server: Server = app.state.server
    if config.host not in LOOPBACK and config.api_key is None:
        print(f"warning: serving on {config.host} without --api-key: anyone who can reach it can use the model",
              file=sys.stderr)
    print(f"serving '{server.model_id}' ({pipeline.backend.describe()}, kv-cache {server.capacity.slots} slots, "
          f"coprocessor {'on' if server.coprocessor else 'off'} by default, policy {config.policy}) on "
          f"http://{config.host}:{config.port}/v1", file=sys.stderr)
    try:
        uvicorn.run(app, host=config.host, port=config.port, log_level="info", timeout_graceful_shutdown=5)
    finally:
        pipeline.close()
