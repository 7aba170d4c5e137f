"""The OpenAI wire format of ``latentcache serve``: request bodies in, response and chunk objects out.

Pure functions over dicts and dataclasses (no HTTP, no model), so every validation rule is testable on its
own. A body that breaks a rule raises ``ApiError``: its status and the OpenAI error object
``{"error": {"message", "type", "param", "code"}}`` are what the client gets, never a traceback.

Unknown fields are ignored, as OpenAI-compatible servers do (clients send ``user``, ``metadata``, ...);
fields whose *meaning* this server cannot honour (``n > 1``, ``logprobs``, tools, ...) are rejected rather
than silently dropped, so a client never believes it got something it did not. ``presence_penalty`` and
``frequency_penalty`` are OpenAI's; ``repetition_penalty`` and ``top_k`` are vLLM's extensions
(``latentcache/sampling.py`` defines all three).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

from latentcache.errors import LatentcacheError
from latentcache.sampling import Sampling

# The coprocessor schedules a request may name (``none`` is spelt ``"coprocessor": false``).
REQUEST_POLICIES = ("end-of-prompt", "every-n", "entropy", "async")
# OpenAI's roles that carry plain text; ``developer`` is the newer name of ``system``.
ROLES = ("system", "developer", "user", "assistant")
MAX_STOP_SEQUENCES = 4  # OpenAI's limit
MAX_SEED = 2**63 - 1


class ApiError(LatentcacheError):
    """A request the server refuses, with the HTTP status and OpenAI error fields to answer it with."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(param: str | None, message: str, code: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", param, code or ("invalid_value" if param else None))


@dataclass(frozen=True)
class GenerationRequest:
    """One validated ``/v1/chat/completions`` or ``/v1/completions`` body."""

    chat: bool  # True: ``messages`` through the chat template; False: ``prompt`` as raw text
    messages: tuple[dict, ...]  # {"role", "content": str} (chat only)
    prompt: str  # (completions only)
    model: str | None
    max_tokens: int | None  # None: as many as fit in the kv-cache
    sampling: Sampling
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool  # stream_options.include_usage: a final chunk with usage and no choices
    coprocessor: bool | None  # None: the server's default
    policy: str | None  # None: the server's default


# -- the body -------------------------------------------------------------------------------------------
def parse_json_body(raw: bytes) -> dict:
    """The body as a JSON object; strict UTF-8 and strict JSON (no NaN/Infinity literals)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid(None, f"the request body is not valid UTF-8 (byte {exc.start}): send UTF-8 JSON") from None
    if not text.strip():
        raise invalid(None, "the request body is empty: send a JSON object")
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:  # JSONDecodeError and our NaN/Infinity rejection
        raise invalid(None, f"the request body is not valid JSON ({exc}): send a JSON object") from None
    if not isinstance(body, dict):
        raise invalid(None, f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def parse_chat(body: dict) -> GenerationRequest:
    messages = _messages(body.get("messages"))
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    param = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    _reject_unsupported(body, chat=True)
    return _request(body, chat=True, messages=messages, prompt="", max_tokens=_max_tokens(max_tokens, param))


def parse_completion(body: dict) -> GenerationRequest:
    prompt = _prompt(body.get("prompt"))
    _reject_unsupported(body, chat=False)
    return _request(body, chat=False, messages=(), prompt=prompt, max_tokens=_max_tokens(body.get("max_tokens")))


def _request(body: dict, **fields) -> GenerationRequest:
    stream = _optional(body, "stream", bool, False)
    options = _optional(body, "stream_options", dict, None)
    include_usage = False
    if options is not None:
        if not stream:
            raise invalid("stream_options", "stream_options is only allowed with stream: true")
        include_usage = _optional(options, "include_usage", bool, False, "stream_options.include_usage")
    policy = _optional(body, "policy", str, None)
    if policy is not None and policy not in REQUEST_POLICIES:
        raise invalid("policy", f"unknown policy '{policy}': choose one of {', '.join(REQUEST_POLICIES)}"
                      " (or send coprocessor: false for the base model alone)")
    return GenerationRequest(
        model=_optional(body, "model", str, None), sampling=_sampling(body), stop=_stop(body.get("stop")),
        stream=stream, include_usage=include_usage, coprocessor=_optional(body, "coprocessor", bool, None),
        policy=policy, **fields)


# -- fields ---------------------------------------------------------------------------------------------
def _optional(body: dict, name: str, kind: type, default, param: str | None = None):
    value = body.get(name)
    if value is None:
        return default
    # bool is an int in Python; JSON's true is never a valid number here, nor 1 a valid boolean.
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise invalid(param or name, f"{param or name} must be {_article(kind)}, got {_json_type(value)}",
                      "invalid_type")
    return value


def _article(kind: type) -> str:
    return {bool: "a boolean", str: "a string", dict: "an object", int: "an integer", list: "an array"}[kind]


def _json_type(value) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", str: "string", dict: "object", list: "array", int: "integer",
            float: "number"}.get(type(value), type(value).__name__)


def _number(body: dict, name: str, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid(name, f"{name} must be a number, got {_json_type(value)}", "invalid_type")
    if not math.isfinite(value):
        raise invalid(name, f"{name} must be a finite number, got {value}")
    return float(value)


def _integer(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(name, f"{name} must be an integer, got {_json_type(value)}", "invalid_type")
    return value


def _max_tokens(value, param: str = "max_tokens") -> int | None:
    if value is None:
        return None
    value = _integer(value, param)
    if value < 1:
        raise invalid(param, f"{param} must be at least 1, got {value}")
    return value


def _sampling(body: dict) -> Sampling:
    temperature = _number(body, "temperature", 0.0)  # greedy by default: reproducible, like `latentcache run`
    if not 0 <= temperature <= 2:
        raise invalid("temperature", f"temperature must be in [0, 2], got {temperature:g}")
    top_p = _number(body, "top_p", 1.0)
    if not 0 < top_p <= 1:
        raise invalid("top_p", f"top_p must be in (0, 1], got {top_p:g}")
    top_k = 0 if body.get("top_k") is None else _integer(body["top_k"], "top_k")  # vLLM's extension
    if top_k < 0:
        raise invalid("top_k", f"top_k must be >= 0 (0 is off), got {top_k}")
    seed = body.get("seed")
    seed = 0 if seed is None else _integer(seed, "seed")
    if not 0 <= seed <= MAX_SEED:
        raise invalid("seed", f"seed must be in [0, 2**63 - 1], got {seed}")
    penalties = {name: _number(body, name, 0.0) for name in ("presence_penalty", "frequency_penalty")}
    for name, value in penalties.items():
        if not -2 <= value <= 2:
            raise invalid(name, f"{name} must be in [-2, 2], got {value:g}")
    repetition = _number(body, "repetition_penalty", 1.0)
    if repetition <= 0:
        raise invalid("repetition_penalty", f"repetition_penalty must be > 0 (1 is off), got {repetition:g}")
    return Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, repetition_penalty=repetition,
                    **penalties)


def _stop(value) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise invalid("stop", f"stop must be a string or an array of strings, got {_json_type(value)}", "invalid_type")
    if len(stops) > MAX_STOP_SEQUENCES:
        raise invalid("stop", f"stop takes at most {MAX_STOP_SEQUENCES} sequences, got {len(stops)}")
    if any(not s for s in stops):
        raise invalid("stop", "stop sequences must not be empty strings")
    return tuple(dict.fromkeys(stops))


def _messages(value) -> tuple[dict, ...]:
    if value is None:
        raise invalid("messages", "messages is required: send a non-empty array of {role, content}",
                      "missing_required_parameter")
    if not isinstance(value, list) or not value:
        raise invalid("messages", f"messages must be a non-empty array, got {_describe(value)}")
    return tuple(_message(m, i) for i, m in enumerate(value))


def _message(message, index: int) -> dict:
    param = f"messages[{index}]"
    if not isinstance(message, dict):
        raise invalid(param, f"{param} must be an object with role and content, got {_json_type(message)}",
                      "invalid_type")
    role = message.get("role")
    if role not in ROLES:
        shown = f"'{role}'" if isinstance(role, str) else _json_type(role)
        raise invalid(f"{param}.role", f"{param}.role {shown} is not supported: use one of {', '.join(ROLES)}")
    return {"role": "system" if role == "developer" else role, "content": _content(message.get("content"), param)}


def _content(content, param: str) -> str:
    """A message's text: a string, or an array of ``{"type": "text", "text": ...}`` parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise invalid(f"{param}.content[{i}]", f"{param}.content[{i}] must be a text part "
                              '{"type": "text", "text": "..."}: this model reads text only')
            texts.append(part["text"])
        return "".join(texts)
    raise invalid(f"{param}.content", f"{param}.content must be a string or an array of text parts, "
                  f"got {_json_type(content)}", "invalid_type")


def _prompt(value) -> str:
    if value is None:
        raise invalid("prompt", "prompt is required: send a string", "missing_required_parameter")
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]  # the client libraries' one-prompt batch
    if not isinstance(value, str):
        raise invalid("prompt", f"prompt must be a string (one prompt per request), got {_describe(value)}",
                      "invalid_type")
    return value


def _describe(value) -> str:
    return f"an array of {len(value)}" if isinstance(value, list) else _json_type(value)


def _reject_unsupported(body: dict, chat: bool) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise invalid("n", f"n must be 1 (one choice per request), got {n!r}")
    if body.get("logprobs") not in (None, False, 0) or body.get("top_logprobs") not in (None, 0):
        raise invalid("logprobs", "logprobs are not supported: leave logprobs out")
    if chat and body.get("tools"):
        raise invalid("tools", "tool calls are not supported by this server: leave tools out")
    response_format = body.get("response_format")
    if chat and isinstance(response_format, dict) and response_format.get("type") not in (None, "text"):
        raise invalid("response_format", "only response_format {\"type\": \"text\"} is supported")
    if not chat and body.get("echo") not in (None, False):
        raise invalid("echo", "echo is not supported: leave it out")
    if not chat and body.get("best_of") not in (None, 1):
        raise invalid("best_of", "best_of must be 1")
    if not chat and body.get("suffix") not in (None, ""):
        raise invalid("suffix", "suffix (insertion) is not supported: leave it out")


# -- responses ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """What one generation produced: the text, why it ended, token counts and the latency split."""

    text: str
    finish_reason: str  # "stop" (a stop token or sequence) or "length" (max_tokens or the kv-cache)
    # (the generator's own stop reason, finer than these two, is latentcache["stop_reason"])
    prompt_tokens: int
    completion_tokens: int
    latentcache: dict


def usage(outcome: Outcome) -> dict:
    return {"prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens,
            "total_tokens": outcome.prompt_tokens + outcome.completion_tokens}


def completion_object(request: GenerationRequest, ident: str, model: str, outcome: Outcome) -> dict:
    if request.chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": outcome.text},
                  "finish_reason": outcome.finish_reason, "logprobs": None}
    else:
        choice = {"index": 0, "text": outcome.text, "finish_reason": outcome.finish_reason, "logprobs": None}
    return {"id": ident, "object": "chat.completion" if request.chat else "text_completion",
            "created": int(time.time()), "model": model, "choices": [choice], "usage": usage(outcome),
            "latentcache": outcome.latentcache}


def chunk_object(request: GenerationRequest, ident: str, model: str, text: str | None = None,
                 finish_reason: str | None = None, role: bool = False) -> dict:
    """One server-sent event's payload: a piece of text, the opening role, or the finish reason."""
    if request.chat:
        delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text is not None else {})
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
    return {"id": ident, "object": "chat.completion.chunk" if request.chat else "text_completion",
            "created": int(time.time()), "model": model, "choices": [choice]}


def sse(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()
