"""The ``validate`` command: parse, call the library, print. Bad input: one line, exit 2.

Subcommands: ``record`` (real models -> trace), ``calibrate`` (timed passes -> latency profile).
The group callback is where ``validate --pair`` (run and compare) attaches.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from simulator.cli import one_line_errors
from simulator.errors import EntrospecError

app = typer.Typer(cls=one_line_errors("validate"), add_completion=False,
                  invoke_without_command=True,
                  help="Record traces from real models and check the simulator against them.")


@app.callback()
def main(
    ctx: typer.Context,
    pair: Annotated[str | None, typer.Option(help="run and compare: model pair to validate")]
    = None,
    dataset: Annotated[str, typer.Option(help="gsm8k | specbench | specbench:CATEGORY")]
    = "gsm8k",
    prompts: Annotated[int, typer.Option(help="first N prompts of the dataset")] = 4,
    policy: Annotated[list[str] | None, typer.Option(
        help="NAME or NAME:key=value,... (repeatable; default: --suite target)")] = None,
    param: Annotated[list[str] | None, typer.Option(
        help="name=value for every --policy (repeatable)")] = None,
    suite: Annotated[str | None, typer.Option(
        help="target: fixed k 1..8, three entropy stops, HF confidence")] = None,
    profile: Annotated[Path | None, typer.Option(
        help="latency profile (default: the profiles/PAIR-cpu*|cuda*.json measured on this "
             "machine, calibrated if none is)")]
    = None,
    max_new_tokens: Annotated[int, typer.Option(help="tokens per prompt, at most")] = 128,
    temperature: Annotated[float, typer.Option(help="0 = greedy")] = 0.0,
    seed: Annotated[int, typer.Option(help="seed of sampling draws")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N]")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")] = "auto",
    threads: Annotated[int, typer.Option(help="torch CPU threads (0 = torch's default)")] = 0,
    drafters_dir: Annotated[Path | None, typer.Option(
        help="use every drafter trained in this folder (SmolLM2 pairs; default: the pair's "
             "listed drafters in drafters/)")] = None,
    out: Annotated[Path | None, typer.Option(
        help="report folder (default reports/validate-PAIR-DEVICE)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    timing_only: Annotated[bool, typer.Option(
        "--timing-only", help="random weights of the pair's shapes; rounds forced from --trace "
                              "(checks the cost model where the weights cannot be had)")] = False,
    trace: Annotated[Path | None, typer.Option(help="--timing-only: trace to force from")]
    = None,
    progress: Annotated[bool, typer.Option(help="progress bars on stderr")] = True,
    drafter: Annotated[list[str] | None, typer.Option(
        help="drafter(s) to decode with, in order (repeatable; default: all, single-drafter "
             "policies use the first)")] = None,
) -> None:
    """Real-model side of entrospec. `validate --pair NAME` runs policies for real and compares
    with the simulator; `validate record ...` writes a trace; `validate calibrate ...` a
    latency profile."""
    if ctx.invoked_subcommand is not None:
        return
    if pair is None:
        typer.echo(ctx.get_help())
        return
    import json

    from simulator.cli import parse_params

    from .validate import (
        REPO,
        ValidateError,
        policy_specs,
        table_rows,
        validate_pair,
        validate_timing_only,
    )

    specs = policy_specs(policy or [], parse_params(param or []), suite)
    dev = _device(device)
    dt = _dtype(dtype, dev)
    kind = "timing-" if timing_only else ""
    folder = out if out is not None else \
        REPO / "reports" / f"validate-{kind}{pair}-{dev.split(':')[0]}"
    log = (lambda m: typer.echo(m, err=True)) if json_out else typer.echo
    command = shlex.join(["validate", *sys.argv[1:]])
    if timing_only:
        if trace is None:
            raise ValidateError("--timing-only needs --trace (the trace whose rounds to force)")
        if not trace.is_file():
            raise ValidateError(f"--trace {trace}: no such file")
        doc = validate_timing_only(pair, trace, prompts, specs, out=folder, profile=profile,
                                   device=dev, dtype=str(dt).removeprefix("torch."),
                                   threads=threads, seed=seed, command=command,
                                   progress=progress, log=log)
    else:
        doc = validate_pair(pair, dataset, prompts, specs, out=folder, profile=profile,
                            max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                            device=dev, dtype=dt, threads=threads, drafters_dir=drafters_dir,
                            command=command, progress=progress, log=log, drafters=drafter)
    if json_out:
        typer.echo(json.dumps(doc, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"validate {pair}: measured / predicted ({doc['pricing']})")
    for h in ("policy", "tok/s", "error", "acceptance", "tau", "speedup"):
        table.add_column(h, justify="left" if h == "policy" else "right")
    for r in table_rows(doc):
        table.add_row(r[0], f"{r[1]} / {r[2]}", r[3], f"{r[4]} / {r[5]}", f"{r[6]} / {r[7]}",
                      f"{r[8]} / {r[9]}")
    Console().print(table)
    s = doc["summary"]
    typer.echo(f"median |error| of tokens/s {s['median_abs_error_tokens_per_second']:.1%}, max "
               f"{s['max_abs_error_tokens_per_second']:.1%} over {s['configurations']} "
               "configurations" + (f"; greedy accepted counts equal: {s['greedy_counts_equal']}"
                                   if "greedy_counts_equal" in s else ""))
    if "adjusted_median_abs_error_tokens_per_second" in s:
        typer.echo(f"speed-adjusted (probe around each run): median |error| "
                   f"{s['adjusted_median_abs_error_tokens_per_second']:.1%}, max "
                   f"{s['adjusted_max_abs_error_tokens_per_second']:.1%}")
    typer.echo(f"report: {folder / 'report.md'}")


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EntrospecError(f"--device {name}: no CUDA device here")
    if not (name == "cpu" or name.startswith("cuda")):
        raise EntrospecError(f"--device {name!r}: use auto, cpu or cuda[:N]")
    return name


def _dtype(name: str, device: str) -> Any:
    import torch

    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name == "auto":
        return torch.float32 if device == "cpu" else torch.bfloat16
    if name not in table:
        raise EntrospecError(f"--dtype {name!r}: use auto, {', '.join(table)}")
    return table[name]


def _early_output_check(out: Path, overwrite: bool, cli_args: dict[str, Any]) -> None:
    """Refuse before loading models when ``out`` exists from a different recording."""
    from .record import file_args, parts_dir

    if overwrite or not out.exists() or parts_dir(out).exists():
        return
    old = file_args(out)
    if not isinstance(old, dict) or any(old.get(k) != v for k, v in cli_args.items()):
        raise EntrospecError(f"{out} exists and holds another recording; pass --overwrite or "
                             "choose another --out")


@app.command()
def record(
    pair: Annotated[str, typer.Option(help="model pair (smollm2-135m, 0.5b-7b, 1.5b-32b, "
                                           "opt-125m-2.7b, llama-1b-3b, r1-distill)")],
    dataset: Annotated[str, typer.Option(help="gsm8k | specbench | specbench:CATEGORY")],
    out: Annotated[Path, typer.Option(help="trace Parquet file to write")],
    prompts: Annotated[int | None, typer.Option(help="first N prompts (default all)")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="tokens generated per prompt, at most")]
    = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy, else sampling temperature")]
    = 0.0,
    seed: Annotated[int, typer.Option(help="seed of every sampling draw")] = 0,
    k_max: Annotated[int, typer.Option(help="free-run steps recorded per rejection")] = 16,
    topk: Annotated[int, typer.Option(help="k of the top-k entropy")] = 10,
    batch: Annotated[int, typer.Option(help="prompts per group (batch and resume unit)")] = 8,
    freerun_batch: Annotated[int, typer.Option(help="free-run rows per drafter forward")] = 64,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N]")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto (float32 on CPU, bfloat16 on CUDA) | "
                                            "float32 | bfloat16 | float16")] = "auto",
    threads: Annotated[int, typer.Option(help="torch CPU threads (0 = torch's default)")] = 0,
    drafters_dir: Annotated[Path | None, typer.Option(
        help="use every drafter trained in this folder (SmolLM2 pairs; default: the pair's "
             "listed drafters in drafters/)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out")] = False,
    progress: Annotated[bool, typer.Option(help="progress bar on stderr")] = True,
    partial: Annotated[bool, typer.Option(
        "--partial", help="record nothing: write --out from the finished leading groups of "
                          "its unfinished recording (parts kept; resuming replaces it)")] = False,
) -> None:
    """Record a trace: verifier output, teacher-forced drafters, free-runs (resumable)."""
    if partial:
        from .record import assemble_partial

        n, groups = assemble_partial(out)
        typer.echo(f"{out}: {n} prompts from {groups} finished groups (partial; parts kept)")
        return
    from . import pairs
    from .datasets import gsm8k_correct, load_prompts, parse_spec
    from .record import RecordConfig
    from .record import record as run_record

    cfg = RecordConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                       k_max=k_max, topk=topk, batch=batch, freerun_batch=freerun_batch)
    cfg.check()
    selected = load_prompts(dataset, prompts)
    pair_spec = pairs.get_pair(pair)
    pairs.check_available(pair_spec, drafters_dir)
    dev = _device(device)
    dt = _dtype(dtype, dev)
    cli_args = {"pair": pair, "dataset": dataset, "n_prompts": len(selected),
                "device": dev.split(":")[0], "dtype": str(dt).removeprefix("torch."),
                "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed,
                "k_max": k_max, "topk": topk, "batch": batch, "freerun_batch": freerun_batch}
    _early_output_check(out, overwrite, cli_args)
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    loaded = pairs.load_pair(pair, dev, dt, drafters_dir, progress=progress)
    ids = [loaded.encode(p.text) for p in selected]
    command = ["validate", "record", "--pair", pair, "--dataset", dataset, "--prompts",
               str(len(selected)), "--max-new-tokens", str(max_new_tokens), "--temperature",
               str(temperature), "--seed", str(seed), "--k-max", str(k_max), "--topk", str(topk),
               "--batch", str(batch), "--freerun-batch", str(freerun_batch), "--device", dev,
               "--dtype", str(cli_args["dtype"])]
    command += ["--drafters-dir", str(drafters_dir)] if drafters_dir is not None else []
    command += ["--out", str(out)]
    meta = {**loaded.meta, "dataset": dataset, "command": shlex.join(command)}
    score = gsm8k_correct if parse_spec(dataset)[0] == "gsm8k" else None
    res = run_record(loaded.models, selected, ids, cfg, out, meta, decode=loaded.decode,
                     score=score, args={**cli_args, "models": loaded.fingerprints},
                     overwrite=overwrite, progress=progress)
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in res.stage_seconds.items())
    typer.echo(f"{out}: {res.prompts} prompts, {res.groups_done} groups recorded now, "
               f"{res.tokens} tokens in {res.seconds:.1f} s = {res.tokens_per_second:.1f} "
               f"tokens/s ({stages})")
    if res.pending:
        typer.echo(f"{out}: not written yet: groups {res.pending} are held by other recorders "
                   "of this command; the last one to finish writes the trace")


@app.command()
def reprice(
    source: Annotated[Path, typer.Argument(help="validate.json of a `validate --pair` run")],
    profile: Annotated[Path | None, typer.Option(
        help="latency profile (default: the one the result was priced with)")] = None,
    out: Annotated[Path | None, typer.Option(
        help="report folder (default: the folder of SOURCE, rewritten)")] = None,
) -> None:
    """Re-price a validate result with a (re-fitted) profile: same trace and measurements, new
    predictions and errors; no model runs."""
    import json

    from .validate import ValidateError
    from .validate import reprice as run_reprice

    if not source.is_file():
        raise ValidateError(f"{source}: no such file")
    if profile is None:
        try:
            pricing = str(json.loads(source.read_text()).get("pricing", ""))
        except ValueError:
            raise ValidateError(f"{source}: not a readable validate.json") from None
        if not pricing.startswith("profile:"):
            raise ValidateError(f"{source}: priced by {pricing!r}; pass --profile")
        profile = Path(pricing.removeprefix("profile:").split(" (")[0])
    command = shlex.join(["validate", *sys.argv[1:]])
    doc = run_reprice(source, profile, out or source.parent, command)
    s = doc["summary"]
    typer.echo(f"{out or source.parent}: re-priced with {doc['pricing']}: median |error| of "
               f"tokens/s {s['median_abs_error_tokens_per_second']:.1%}, max "
               f"{s['max_abs_error_tokens_per_second']:.1%} over {s['configurations']} "
               "configurations")


def _attach_calibrate() -> None:
    from .calibrate import calibrate_cmd

    app.command("calibrate")(calibrate_cmd)


_attach_calibrate()

if __name__ == "__main__":
    app()
