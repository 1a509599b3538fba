"""The ``sim`` command: parse, call the library, print. Bad input: one line on stderr, exit 2."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table
from typer.core import TyperGroup

from .engines import ENGINES, PLACEMENTS, simulate
from .errors import EntrospecError, LatencyError, PolicyError
from .latency import LatencyModel, parse_latency
from .policies import REGISTRY, make, names
from .trace import Trace, read_meta, read_trace, schema_markdown


def one_line_errors(prog: str) -> type[TyperGroup]:
    """A command group whose usage errors (bad flags, values, commands) and EntrospecErrors
    print as one line ``PROG: error: ...`` on stderr with exit 2 (help still exits 0)."""

    class OneLineErrors(TyperGroup):
        def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
                 complete_var: str | None = None, standalone_mode: bool = True,
                 windows_expand_args: bool = True, **extra: Any) -> Any:
            try:
                rv = super().main(args=args, prog_name=prog_name or prog,
                                  complete_var=complete_var, standalone_mode=False,
                                  windows_expand_args=windows_expand_args, **extra)
            except typer.TyperException as exc:
                text = exc.format_message() if hasattr(exc, "format_message") else str(exc)
                typer.echo(f"{prog}: error: {' '.join(text.split())}", err=True)
                sys.exit(2)
            except EntrospecError as exc:
                typer.echo(f"{prog}: error: {exc}", err=True)
                sys.exit(2)
            except typer.Abort:
                sys.exit(1)
            if not standalone_mode:
                return rv
            sys.exit(rv if isinstance(rv, int) else 0)

    return OneLineErrors


app = typer.Typer(cls=one_line_errors("sim"), add_completion=False, invoke_without_command=True,
                  help="Replay speculative-decoding traces through latency models.")


@app.callback()
def _root(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:  # bare ``sim``: the help
        typer.echo(ctx.get_help())
out = Console()
err = Console(stderr=True)

DEFAULT_LATENCY = "auto"
PROFILES = Path(__file__).resolve().parent.parent / "profiles"


def _fail(msg: str) -> None:
    err.print(f"sim: error: {msg}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn an EntrospecError into one line and exit 2."""
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EntrospecError as exc:
            _fail(str(exc))
    return wrapper


def parse_params(items: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise PolicyError(f"--param {item!r}: expected name=value")
        params[key] = value
    return params


def latency_for(spec: str, trace_meta: dict[str, Any], pair: str | None) -> LatencyModel:
    """Resolve ``--latency``; "auto" = the trace pair's default profile (profiles/PAIR-cpu.json,
    the shipped one, whatever else profiles/ holds: reports must not depend on the machine),
    else its first profile by name, else const."""
    if spec == "auto":
        pair_name = pair or trace_meta.get("pair")
        found = sorted(PROFILES.glob(f"{pair_name}-*.json")) if pair_name else []
        default = PROFILES / f"{pair_name}-cpu.json"
        found = [default] if default in found else found
        spec = f"profile:{_near(found[0])}" if found else "const:draft=0.1,verify=1"
    roles = None
    if spec.startswith("roofline:"):
        if not pair:
            raise LatencyError("--latency roofline:HW needs --pair NAME")
        roles = pair_roles(pair, trace_meta)
    return parse_latency(spec, roles)


def _near(path: Path) -> Path:
    """``path`` relative to the working directory when under it (reports name no home dirs)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def pair_roles(pair: str, trace_meta: dict[str, Any]) -> dict[str, str]:
    """Map "verifier" and the trace's drafter names to model-config names for a pair."""
    from .latency import CONFIG_DIR
    pairs = json.loads((CONFIG_DIR / "pairs.json").read_text())["pairs"]
    if pair not in pairs:
        raise LatencyError(f"--pair {pair!r}: unknown; known: {', '.join(sorted(pairs))}")
    entry = pairs[pair]
    roles = {"verifier": entry["verifier"]}
    drafters = [d["name"] if isinstance(d, dict) else d for d in trace_meta["drafters"]]
    for i, name in enumerate(drafters):
        roles[name] = entry["drafters"][min(i, len(entry["drafters"]) - 1)]
    return roles


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    return str(v)


def print_result(r: dict[str, Any]) -> None:
    t = Table(title=f"{r['policy']} {_fmt(r['params'])}", show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_column(style="dim")
    rows = [
        ("speedup", r["speedup"], "x vs verifier-only, same pricing"),
        ("oracle speedup", r.get("oracle_speedup"), "x, upper bound at the same cap"),
        ("tokens/s", r["tokens_per_second"], "tokens per second"),
        ("verifier-only tokens/s", r["baseline_tokens_per_second"], "tokens per second"),
        ("acceptance rate", r["acceptance_rate"], "accepted / drafted"),
        ("mean accepted tokens", r["mean_accepted_tokens"],
         "tokens per verifier call, bonus incl."),
        ("latency p50/p90/p99",
         "/".join(f"{r['latency_ms'][q]:.3g}" for q in ("p50", "p90", "p99")), "ms per token"),
        ("verifier calls", r["verifier_calls"], "forward passes"),
        ("drafter calls", r["drafter_calls"], "forward passes"),
        ("wasted draft tokens", r["wasted_draft_tokens"], "drafted, not accepted"),
        ("draft length hist", r["draft_length_hist"], "drafted tokens: rounds"),
    ]
    if "drafter_share" in r:
        rows.append(("drafter share", r["drafter_share"], "rounds per drafter"))
    if "deviating_tokens" in r:
        rows.append(("deviating tokens", r["deviating_tokens"], "differ from the verifier's"))
        rows.append(("quality bias", r["quality_bias"], "sum of per-position TV(pi, p)"))
    if "serving" in r:
        s = r["serving"]
        rows.append(("throughput", s["throughput_tokens_per_second"],
                     f"tokens/s, {s['concurrency']} in flight, {s['placement']} devices"))
    rows += [("drafters", ", ".join(r["drafters"]), "index 0 drafts for single-drafter "
              "policies"),
             ("tokens", r["tokens"], f"{r['prompts']} prompts"), ("priced by", r["pricing"], ""),
             ("engine", r["engine"], ""), ("trace", r["trace"],
                                               "SYNTHETIC" if r["synthetic"] else "")]
    for name, value, unit in rows:
        t.add_row(name, _fmt(value), unit)
    out.print(t)


Trace_ = Annotated[Path, typer.Option("--trace", help="trace Parquet file")]
Policy_ = Annotated[str, typer.Option("--policy", help="policy name (see `sim policies`)")]
Param_ = Annotated[list[str], typer.Option("--param", help="policy parameter name=value "
                                                          "(repeatable)")]
Latency_ = Annotated[str, typer.Option("--latency", help="auto | const:draft=C,verify=V | "
                                                        "profile:PATH | roofline:HW")]
Pair_ = Annotated[str | None, typer.Option("--pair", help="model pair (roofline pricing)")]
Drafter_ = Annotated[list[str] | None, typer.Option(
    "--drafter", help="drafter(s) to use, in order (repeatable; default: every drafter in "
                      "the trace's order; single-drafter policies use the first)")]
Seed_ = Annotated[int, typer.Option("--seed", help="seed of the acceptance draws (sampled "
                                                    "traces)")]
Progress_ = Annotated[bool, typer.Option(help="progress bar on stderr (when it is a terminal)")]


@app.command()
@user_errors
def run(trace: Trace_, policy: Policy_ = "fixed", param: Param_ = [],  # noqa: B006
        latency: Latency_ = DEFAULT_LATENCY, pair: Pair_ = None, seed: Seed_ = 0,
        engine: Annotated[str, typer.Option(help=f"one of {', '.join(ENGINES)}")] = "fast",
        concurrency: Annotated[int, typer.Option(help="requests in flight (events engine)")] = 1,
        placement: Annotated[str, typer.Option(help="shared | separate (events engine)")]
        = "shared",
        json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
        drafter: Drafter_ = None) -> None:
    """Simulate one policy on one trace and print its metrics."""
    if engine not in ENGINES:
        raise PolicyError(f"--engine {engine!r}: one of {', '.join(ENGINES)}")
    if placement not in PLACEMENTS:
        raise PolicyError(f"--placement {placement!r}: one of {', '.join(PLACEMENTS)}")
    if concurrency < 1 or (concurrency > 1 and engine != "events"):
        raise PolicyError("--concurrency must be >= 1, and > 1 only with --engine events")
    pol = make(policy, parse_params(param))
    tr: Trace = read_trace(trace, drafter)
    lat = latency_for(latency, tr.meta, pair)
    result = simulate(tr, pol, lat, engine=engine, seed=seed, concurrency=concurrency,
                      placement=placement)
    if json_out:
        sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    else:
        print_result(result)


@app.command()
@user_errors
def sweep(trace: Annotated[list[Path], typer.Option("--trace", help="trace file (repeatable)")],
          policy: Policy_,
          grid: Annotated[list[str], typer.Option("--grid", help="name=a:b:step or "
                                                                 "name=v1,v2 (repeatable)")],
          out_path: Annotated[Path, typer.Option("--out", help=".parquet or .csv")]
          = Path("sweep.parquet"),
          latency: Latency_ = DEFAULT_LATENCY, pair: Pair_ = None, seed: Seed_ = 0,
          workers: Annotated[int, typer.Option(help="processes (0 = all cores)")] = 0,
          top: Annotated[int, typer.Option(help="best configurations to print")] = 5,
          drafter: Drafter_ = None, progress: Progress_ = True) -> None:
    """Evaluate a parameter grid on all cores; write results; print best and Pareto front."""
    from .sweep import best, pareto_front, parse_grid, run_sweep, write_rows
    g = parse_grid(grid)
    paths = [str(p) for p in trace]
    meta = read_meta(paths[0])
    for p in paths:
        read_trace(p, drafter)  # validate every trace before forking workers
    lat = latency_for(latency, meta, pair)
    total = len(paths) * int(__import__("math").prod(len(v) for v in g.values()))
    with Progress("[progress.description]{task.description}", BarColumn(),
                  MofNCompleteColumn(), TimeRemainingColumn(), console=err,
                  disable=not (progress and err.is_terminal)) as prog:
        task = prog.add_task(f"sweep {policy}", total=total)
        rows = run_sweep(paths, policy, g, lat, seed, workers or None, drafters=drafter,
                         progress=lambda done, _t: prog.update(task, completed=done))
    write_rows(rows, str(out_path))
    for title, chosen in (("best by speedup", best(rows, top)),
                          ("speed/quality Pareto front", pareto_front(rows))):
        t = Table(title=title)
        keys = [k for k in rows[0] if k.startswith("param_")]
        for k in [*keys, "speedup", "acceptance_rate", "quality_bias"]:
            t.add_column(k.removeprefix("param_"), justify="right")
        if len(paths) > 1:
            t.add_column("trace")
        for r in chosen:
            cells = [_fmt(r[k]) for k in keys] + [_fmt(r["speedup"]), _fmt(r["acceptance_rate"]),
                                                  _fmt(r.get("quality_bias"))]
            t.add_row(*cells, *([r["trace"]] if len(paths) > 1 else []))
        out.print(t)
    out.print(f"{len(rows)} rows -> {out_path} (priced by {rows[0]['pricing']}; oracle speedup "
              f"{rows[0]['oracle_speedup']:.4g}x at the first config's cap)")


@app.command()
@user_errors
def synth(alpha: Annotated[str, typer.Option(help="acceptance rate per drafter, comma list")],
          tokens: Annotated[int, typer.Option(help="positions in all")],
          out_path: Annotated[Path, typer.Option("--out", help="output Parquet")],
          prompts: Annotated[int, typer.Option(help="prompts the tokens are split over")] = 25,
          seed: Annotated[int, typer.Option(help="random seed")] = 0,
          k_max: Annotated[int, typer.Option(help="free-run length recorded")] = 16) -> None:
    """Write a synthetic trace with i.i.d. acceptance (marked synthetic)."""
    from .errors import TraceError
    from .synth import write_synth
    try:
        alphas = [float(a) for a in alpha.split(",")]
    except ValueError:
        raise TraceError(f"--alpha {alpha!r}: expected numbers, comma separated") from None
    write_synth(out_path, alphas, tokens, prompts, seed, k_max)
    out.print(f"wrote {out_path}: {tokens} positions x {len(alphas)} drafter(s), synthetic")


def print_info(r: dict[str, Any]) -> None:
    """``trace_info``'s dict as rich tables: the trace, its drafters, its tasks."""
    prov = r["provenance"]
    if prov["synthetic"]:
        out.print("[bold red]SYNTHETIC trace: i.i.d. acceptance and made-up entropies, not a "
                  "recording of real models[/]")
    t = Table(title=f"trace {r['trace']}", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    t.add_column(style="dim")
    temp = prov["temperature"]
    acc = r["accuracy"]
    budget = prov["max_new_tokens"]
    rows = [
        ("status", r["status"], ""),
        ("pair", prov["pair"] or "-", ""),
        ("verifier", prov["verifier"], ""),
        ("drafters", ", ".join(str(d) for d in prov["drafters"]), ""),
        ("dataset", prov["dataset"], ""),
        ("decoding", prov["decoding"] + ("" if temp is None else f", temperature {temp:g}"), ""),
        ("k_max", prov["k_max"], "free-run tokens recorded"),
        ("hardware", prov["hardware"] or "-", ""),
        ("recorded", prov["recorded"], ""),
        ("command", prov["command"] or "-", ""),
        ("synthetic", "SYNTHETIC" if prov["synthetic"] else "no", ""),
        ("size", f"{r['size_mib']:.1f}", "MiB on disk"),
        ("prompts", f"{r['prompts']:,}", ""),
        ("positions", f"{r['positions']:,}", "tokens, per drafter"),
        ("mean tokens", f"{r['mean_tokens']:.1f}", "tokens per prompt"),
        ("budget hits", "-" if r["budget_hits"] is None else r["budget_hits"],
         "no max_new_tokens in metadata" if budget is None
         else f"prompts that generated max_new_tokens = {budget}"),
        ("accuracy", "-" if acc is None else f"{acc['correct']} / {acc['prompts']}",
         "no 'correct' column" if acc is None else f"correct prompts ({acc['rate']:.1%})"),
    ]
    for name, value, unit in rows:
        t.add_row(name, str(value), unit)
    out.print(t)
    d = Table(title="drafters")
    for col, unit in (("drafter", ""), ("agreement", "mean draft_match"),
                      ("accept_prob", "mean"), ("entropy", "nats, mean draft_entropy")):
        d.add_column(f"{col}\n({unit})" if unit else col, justify="left" if not unit
                     else "right")
    for x in r["drafters"]:
        d.add_row(x["name"], f"{x['agreement']:.3f}", f"{x['accept_prob']:.3f}",
                  f"{x['mean_entropy']:.3f}")
    out.print(d)
    if r["tasks"]:
        k = Table(title="tasks (category column)")
        k.add_column("task")
        k.add_column("prompts", justify="right")
        k.add_column("positions\n(tokens)", justify="right")
        for x in r["drafters"]:
            k.add_column(f"{x['name']}\n(agreement)", justify="right")
        for task in r["tasks"]:
            k.add_row(task["name"], f"{task['prompts']:,}", f"{task['positions']:,}",
                      *(f"{task['agreement'][x['name']]:.3f}" for x in r["drafters"]))
        out.print(k)


@app.command()
@user_errors
def info(trace: Trace_,
         json_out: Annotated[bool, typer.Option("--json", help="print one JSON object")]
         = False) -> None:
    """Print what a trace is: provenance, status, size, per-drafter and per-task agreement."""
    from .info import trace_info
    r = trace_info(trace)
    if json_out:
        sys.stdout.write(json.dumps(r, sort_keys=True) + "\n")
    else:
        print_info(r)


@app.command()
def policies() -> None:
    """List the registered policies and their parameters."""
    import dataclasses
    t = Table(title="policies")
    for col in ("name", "parameters (defaults)", "kind"):
        t.add_column(col)
    for name in names():
        cls = REGISTRY[name]
        params = ", ".join(f"{f.name}={f.default}" for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        kind = ", ".join(k for k, on in (("memoryless", cls.memoryless), ("lossy", cls.lossy),
                                         ("oracle", cls.oracle)) if on)
        t.add_row(name, params, kind)
    out.print(t)


@app.command()
def schema() -> None:
    """Print the trace schema (Markdown table)."""
    sys.stdout.write(schema_markdown() + "\n")


@app.command()
@user_errors
def report(trace: Annotated[list[Path], typer.Option("--trace", help="trace file (repeatable)")],
           out_dir: Annotated[Path, typer.Option("--out", help="report folder: index.md, fig/")],
           latency: Latency_ = DEFAULT_LATENCY, pair: Pair_ = None, seed: Seed_ = 0,
           validate: Annotated[list[Path] | None, typer.Option(
               "--validate", help="validate.json of `validate --pair` (repeatable)")] = None,
           drafter: Drafter_ = None, progress: Progress_ = True) -> None:
    """Write a Markdown report with PNG figures: the seeds' experiments on the traces, and
    predicted vs measured from `validate` results."""
    from .report import build_report, report_command
    paths = [str(p) for p in trace]
    checks = [str(v) for v in validate or []]
    lats = [latency_for(latency, read_meta(p), pair) for p in paths]
    cmd = report_command(paths, str(out_dir), latency, DEFAULT_LATENCY, pair, seed, checks,
                         drafter or [])
    index = build_report(paths, lats, out_dir, seed, cmd, progress=progress, validations=checks,
                         drafters=drafter)
    out.print(f"wrote {index}")


def main() -> None:  # pragma: no cover
    app()
