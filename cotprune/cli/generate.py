"""Commands that run a model forwards to write or answer: `generate`, `eval`; and `distill`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cotprune.cli import app
from cotprune.cli.options import (
    Adapter,
    BatchTokens,
    Config,
    Device,
    Dtype,
    Limit,
    Model,
    Output,
    Resume,
    Seed,
    ShardSpec,
    TrustRemoteCode,
)
from cotprune.layout import ANSWER_PREFIX
from cotprune.models import DEFAULT_MODEL

MaxNewTokens = Annotated[int, typer.Option("--max-new-tokens", min=1,
                                           help="Most tokens to generate per response.")]
Temperature = Annotated[float, typer.Option("--temperature", help="0 is greedy decoding.")]
TopP = Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass.")]
AnswerMarker = Annotated[str, typer.Option(
    "--answer-marker", help="Text that introduces the final answer in a response.")]


@app.command("generate")
def generate_cmd(
    questions: Annotated[Path, typer.Argument(help="Parquet with id, question [, reference].")],
    output: Output,
    model: Model = DEFAULT_MODEL,
    adapter: Adapter = None,
    samples: Annotated[int, typer.Option("--samples", min=1, help="Responses per question.")] = 1,
    temperature: Temperature = 0.7,
    top_p: TopP = 1.0,
    max_new_tokens: MaxNewTokens = 512,
    keep_correct: Annotated[bool, typer.Option(
        "--keep-correct", help="Keep only the first correct, untruncated sample per question "
                               "(graded against reference).")] = False,
    answer_marker: AnswerMarker = ANSWER_PREFIX,
    dtype: Dtype = "auto",
    device: Device = "auto",
    trust_remote_code: TrustRemoteCode = False,
    batch_tokens: BatchTokens = 16384,
    seed: Seed = 0,
    limit: Limit = None,
    resume: Resume = False,
    shard: ShardSpec = None,
    config: Config = None,
) -> None:
    """Sample chains from a teacher model: split into CoT and answer, optionally keep correct."""
    from cotprune.console import emit_summary
    from cotprune.generate import GenerateOptions, run_generate
    from cotprune.generation import SamplingOptions
    from cotprune.models import ModelOptions

    model_opts = ModelOptions(model, adapter, dtype, device, trust_remote_code)
    sampling = SamplingOptions(max_new_tokens, temperature, top_p, samples, seed)
    opts = GenerateOptions(sampling, keep_correct, answer_marker, batch_tokens, limit, resume,
                           shard)
    emit_summary(run_generate(questions, output, model_opts, opts))


@app.command("eval")
def eval_cmd(
    bench: Annotated[Path, typer.Argument(help="Parquet with id, question, reference.")],
    output: Output,
    model: Model = DEFAULT_MODEL,
    adapter: Adapter = None,
    keep_ratio: Annotated[Optional[float], typer.Option(
        "--keep-ratio", help="Ask a ratio-conditioned student for this keep ratio.")] = None,
    max_new_tokens: MaxNewTokens = 512,
    temperature: Temperature = 0.0,
    top_p: TopP = 1.0,
    answer_marker: AnswerMarker = ANSWER_PREFIX,
    dtype: Dtype = "auto",
    device: Device = "auto",
    trust_remote_code: TrustRemoteCode = False,
    batch_tokens: BatchTokens = 16384,
    seed: Seed = 0,
    limit: Limit = None,
    resume: Resume = False,
    shard: ShardSpec = None,
    config: Config = None,
) -> None:
    """Answer a benchmark (greedy by default) and grade: accuracy vs generated tokens."""
    from cotprune.console import emit_summary
    from cotprune.evaluate import EvalOptions, run_eval
    from cotprune.generation import SamplingOptions
    from cotprune.models import ModelOptions

    model_opts = ModelOptions(model, adapter, dtype, device, trust_remote_code)
    sampling = SamplingOptions(max_new_tokens, temperature, top_p, 1, seed)
    opts = EvalOptions(sampling, keep_ratio, answer_marker, batch_tokens, limit, resume, shard)
    emit_summary(run_eval(bench, output, model_opts, opts))
