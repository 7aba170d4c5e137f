"""Text <-> token ids on the device with the ``tokenizers`` library and the artifacts' chat template.

No transformers: the chat template is rendered with jinja2 the way transformers renders it (a sandboxed
environment with ``trim_blocks``/``lstrip_blocks``, ``raise_exception`` and the special tokens as
variables), then tokenized without adding special tokens, which is what ``apply_chat_template`` does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from latentcache.contract.manifest import Manifest
from latentcache.errors import LatentcacheError
from latentcache.text import check_text, stream_text


class Tokenizer:
    def __init__(self, artifacts: Path, manifest: Manifest) -> None:
        try:
            from tokenizers import Tokenizer as Fast
        except ImportError:
            raise LatentcacheError("the tokenizers library is missing: pip install 'latentcache[runtime]'") from None
        artifacts = Path(artifacts)
        if not (artifacts / "tokenizer.json").is_file():
            raise LatentcacheError(f"{artifacts / 'tokenizer.json'} is missing: re-export the artifacts")
        self.fast = Fast.from_file(str(artifacts / "tokenizer.json"))
        config_path = artifacts / "tokenizer_config.json"
        self.config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        self.template = None
        if manifest.chat_template:
            self.template = (artifacts / manifest.chat_template).read_text()
        elif isinstance(self.config.get("chat_template"), str):
            self.template = self.config["chat_template"]
        self.stop_ids = tuple(manifest.special_tokens.get("eos_token_ids") or ())
        eos = self._token_id(self.config.get("eos_token"))
        if eos is not None and eos not in self.stop_ids:
            self.stop_ids += (eos,)

    def _token_id(self, token) -> int | None:
        if isinstance(token, dict):  # older configs store AddedToken dicts
            token = token.get("content")
        return self.fast.token_to_id(token) if token else None

    def encode(self, prompt: str, chat: bool = True) -> list[int]:
        """Token ids of ``prompt``, inside the chat template (assistant turn opened) when there is one."""
        check_text(prompt)
        if not prompt.strip():
            raise LatentcacheError("the prompt is empty; pass some text")
        if chat:
            return self.encode_messages([{"role": "user", "content": prompt}])
        return self.fast.encode(prompt).ids

    def encode_messages(self, messages: list[dict], template: bool = True) -> list[int]:
        """Token ids of a conversation with the assistant turn opened: the chat template over all messages,
        tokenized without added special tokens (as ``apply_chat_template``). A model without a template (or
        ``template=False``) gets the contents one per line, so a lone message encodes as the plain prompt does."""
        for message in messages:
            if isinstance(message.get("content"), str):
                check_text(message["content"], "a message")
        if self.template and template:
            return self.fast.encode(self.render(messages), add_special_tokens=False).ids
        return self.fast.encode("\n".join(message["content"] for message in messages)).ids

    def render(self, messages: list[dict]) -> str:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise LatentcacheError(f"chat template: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        special = {k: self._token_text(self.config.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        return env.from_string(self.template).render(messages=messages, add_generation_prompt=True, **special)

    @staticmethod
    def _token_text(token) -> str | None:
        return token.get("content") if isinstance(token, dict) else token

    def decode(self, ids: Iterable[int]) -> str:
        return self.fast.decode(list(ids), skip_special_tokens=True)

    def stream(self, tokens: Iterable[int]) -> Iterator[str]:
        """Text pieces as tokens arrive; stops before a stop id."""
        return stream_text(tokens, self.decode, self.stop_ids)
