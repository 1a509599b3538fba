"""Distil SmolLM2-135M into small drafters on CPU: data, train, eval (all resumable).

    python -m validator.distill data  [--out runs/distill/data/gsm8k_train] [--limit N]
    python -m validator.distill train --layers 2 --run runs/distill/d2
    python -m validator.distill eval  --drafter runs/distill/d2/final
    python -m validator.distill publish --drafter runs/distill/d2/best --name smollm2-135m-d2
    python -m validator.distill shrink --drafter drafters/smollm2-135m-d3 --head-tokens 8192 \
        --out drafters/smollm2-135m-d3-h8k

``--head-tokens M`` (train, shrink) gives the drafter a subset head over the M token ids most
frequent in GSM8K-train answers, ties and the remainder by lower id (BPE ids come in merge order,
roughly the tokenizer corpus's frequency order), special tokens always kept.

Every stage can be killed at any time and resumed by re-running the same command.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from validator import distill_data as dd
from validator.distill_eval import (
    answer_positions,
    greedy_agreement,
    latency_ratio,
    pad_features,
    pad_right,
)

RUNS = dd.REPO / "runs" / "distill"
DEFAULT_DATA = RUNS / "data" / "gsm8k_train"
DEFAULT_TEST = RUNS / "data" / "gsm8k_test"


class Logger:
    """Print to stdout and append to a log file, flushed per line, with a wall-clock stamp."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, msg: str) -> None:
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}"
        print(line, flush=True)
        if self.path is not None:
            with open(self.path, "a") as fh:
                fh.write(line + "\n")


def write_pidfile(name: str) -> Path:
    """Record this process id in ``runs/distill/pids/<name>.pid`` (removed at normal exit), so
    jobs can be paused (kill -STOP) for clean timings and resumed (kill -CONT) by id."""
    import atexit
    import os

    path = RUNS / "pids" / f"{name}.pid"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{os.getpid()}\n")
    atexit.register(lambda: path.unlink(missing_ok=True))
    return path


def cmd_data(args: argparse.Namespace) -> int:
    """Generate (or resume generating) the verifier's greedy answers to GSM8K-train."""
    from validator.smollm2 import load_verifier

    torch.set_num_threads(args.threads)
    write_pidfile(f"data-{Path(args.out).name}")
    log = Logger(Path(args.log) if args.log else None)
    model, tok = load_verifier()
    questions = dd.load_questions(Path(args.questions), args.limit)
    gold = None
    if args.answers == "gold":
        gold = [dd.clean_gold(a) for a in dd.load_questions(Path(args.questions), args.limit,
                                                            "answer")]
    log(f"data: {len(questions)} questions from {args.questions} -> {args.out}, "
        f"{args.answers} answers, batch {args.batch}, max_new_tokens {args.max_new_tokens}, "
        f"top-{args.topk}, {args.threads} thread(s)")
    n = dd.generate_shards(model, tok, questions, Path(args.out), args.batch,
                           args.max_new_tokens, args.topk, log=log, source=str(args.questions),
                           answers=gold)
    log(f"data: done, {n} new shard(s), {len(dd.list_shards(Path(args.out)))} in total")
    return 0


def kd_loss(drafter: Any, examples: list[dict[str, Any]], pad_id: int,
            temperature: float = 1.0, frac: float = 1.0,
            gen: torch.Generator | None = None, feature_weight: float = 0.0
            ) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean per-token KL(teacher top-k || drafter) over the answer tokens of ``examples``.

    frac < 1 scores a random subset of that fraction of the answer positions (the 49k-wide head
    and its softmax dominate a CPU training step; the layers still see every token).

    The teacher is the verifier's distribution renormalised over its stored top-k; the drafter's
    log-probabilities are over the full vocabulary, so this is cross-entropy to the truncated
    teacher minus its (constant) entropy. Returns (loss, {"kl", "agree"}); ``agree`` is the
    fraction of positions where the drafter's argmax is the verifier's greedy token.

    A feature drafter reads the examples' ``feat`` (verifier hidden states); with
    ``feature_weight`` > 0 its output hidden state is also pulled towards the verifier's at the
    scored positions (smooth L1, EAGLE's regression term), added as ``feature_weight`` x that
    and reported as ``feat``.
    """
    from validator.drafter import drafter_hidden, head_token_ids, uses_features

    ids, mask = pad_right(examples, pad_id)
    feats = pad_features(examples, ids.shape[1]) if uses_features(drafter) else None
    rows, cols = answer_positions(examples)
    tidx = torch.cat([e["topk_idx"] for e in examples]).long()
    tlog = torch.cat([e["topk_logit"] for e in examples]).float()
    if frac < 1.0:
        keep = torch.rand(rows.numel(), generator=gen) < frac
        keep[0] = True
        rows, cols, tidx, tlog = rows[keep], cols[keep], tidx[keep], tlog[keep]
    subset = head_token_ids(drafter)
    tcol, target = tidx, tidx[:, 0]
    if subset is not None:  # the teacher renormalised over its top-k inside the head's subset
        where = torch.full((drafter.lm_head.vocab,), -1, dtype=torch.long)
        where[subset.cpu()] = torch.arange(subset.numel())
        tcol = where[tidx]
        inside = tcol >= 0
        live = inside.any(-1)  # rows whose top-k misses the subset entirely teach nothing
        rows, cols, tcol, tlog = rows[live], cols[live], tcol[live].clamp_min(0), tlog[live]
        tlog = tlog.masked_fill(~inside[live], float("-inf"))
        target = tcol[:, 0].masked_fill(~inside[live][:, 0], -1)
    h = drafter_hidden(drafter, ids, feats, attention_mask=mask).last_hidden_state[rows, cols]
    logits = drafter.lm_head(h) if subset is None else drafter.lm_head.subset_logits(h)
    logq = torch.log_softmax(logits.float(), dim=-1)
    tlogp = torch.log_softmax(tlog / temperature, dim=-1)
    p = tlogp.exp()
    kl = torch.where(p > 0, p * (tlogp - logq.gather(1, tcol)), 0.0).sum(-1).mean()
    agree = float((logq.argmax(-1) == target).float().mean())
    stats = {"kl": float(kl.detach()), "agree": agree}
    if feats is None or feature_weight == 0:
        return kl, stats
    # the drafter's output at position c stands in for the verifier's f_c = what c + 1 reads
    reg = torch.nn.functional.smooth_l1_loss(h.float(), feats[rows, cols + 1])
    stats["feat"] = float(reg.detach())
    return kl + feature_weight * reg, stats


def cmd_features(args: argparse.Namespace) -> int:
    """Write the verifier's hidden states beside every shard of ``--data`` (resumable)."""
    from validator.smollm2 import load_verifier

    torch.set_num_threads(args.threads)
    write_pidfile("features")
    log = Logger(Path(args.log) if args.log else None)
    model, tok = load_verifier()
    shards = [p for d in args.data for p in dd.list_shards(Path(d))]
    todo = [p for p in shards if not dd.feature_path(p).exists()]
    log(f"features: {len(todo)} of {len(shards)} shard(s) to do, {args.threads} thread(s)")
    for p in todo:
        t0 = time.time()
        n = dd.write_features(model, p, tok.pad_token_id, args.batch)
        dt = time.time() - t0
        log(f"{dd.feature_path(p)}: {n} tokens, {dt:.1f} s ({n / max(dt, 1e-9):.0f} tok/s)")
    return 0


def lr_at(step: int, base: float, warmup: int, total: int, floor: float = 0.1) -> float:
    """Linear warmup for ``warmup`` steps, then cosine decay to ``floor * base`` at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))


def _recipe(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("layers", "source_layers", "batch", "lr", "warmup", "steps", "weight_decay",
            "temperature", "seed", "data", "val_shards", "loss_frac", "clip", "init",
            "head_tokens", "grow", "freeze_init", "features", "feature_weight")
    return {"loss": "KL(verifier top-k renormalised || drafter), answer tokens only",
            "optimizer": "AdamW, linear warmup then cosine to 0.1x",
            "command": "python -m validator.distill " + " ".join(sys.argv[1:]),
            **_relative({k: getattr(args, k) for k in keys})}


def cmd_train(args: argparse.Namespace) -> int:
    """Distil a drafter; checkpoints to ``run/ckpt.pt`` and resumes from it."""
    from validator.drafter import (
        OWN_PREFIXES,
        build_drafter,
        own_parameters,
        save_drafter,
        set_subset_head,
        silence_layers,
    )
    from validator.smollm2 import MODEL_ID, load_verifier

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    write_pidfile(f"train-{run.name}")
    log = Logger(run / "train.log" if args.log is None else Path(args.log))
    verifier, tok = load_verifier()
    src = [int(x) for x in args.source_layers.split(",")] if args.source_layers else None
    drafter = build_drafter(verifier, args.layers, src, features=args.features)
    ckpt = run / "ckpt.pt"
    state = torch.load(ckpt, weights_only=False) if ckpt.exists() else None
    head_ids = state.get("head_ids") if state is not None else \
        subset_ids(tok, verifier, args.head_tokens) if args.head_tokens else None
    set_subset_head(drafter, verifier, head_ids)
    frozen = 0
    if args.freeze_init:
        if not args.init:
            raise SystemExit("distill train: --freeze-init needs --init")
        from validator.drafter import read_meta

        frozen = int(read_meta(Path(args.init))["n_layers"])
    params = [p for i, layer in enumerate(drafter.model.layers) if i >= frozen
              for p in layer.parameters()] + list(drafter.model.norm.parameters()) + \
        (list(drafter.model.feature_proj.parameters()) if args.features else [])
    assert set(map(id, params)) <= set(map(id, own_parameters(drafter)))
    for prm in own_parameters(drafter):  # frozen layers need no backward pass at all
        prm.requires_grad_(False)
    for prm in params:
        prm.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    data_dirs = [Path(d) for d in args.data]

    def shards() -> list[Path]:
        return [p for d in data_dirs for p in dd.list_shards(d)]

    if len(shards()) < args.val_shards + args.min_shards:
        log(f"train: waiting for {args.val_shards + args.min_shards} shards in "
            f"{', '.join(map(str, data_dirs))}")
    while len(shards()) < args.val_shards + args.min_shards:
        time.sleep(60)
    val_names = [str(p) for p in dd.list_shards(data_dirs[0])[:args.val_shards]]
    pos: dict[str, Any] = {"step": 0, "epoch": 0, "batch": 0, "epoch_shards": [], "best": -1.0,
                           "history": []}
    if state is not None:
        drafter.load_state_dict(state["own"], strict=False)
        opt.load_state_dict(state["opt"])
        pos = state["pos"]
        val_names = state["val_names"]
        log(f"train: resumed {ckpt} at step {pos['step']} (epoch {pos['epoch']}, "
            f"batch {pos['batch']})")
    else:
        if args.init:
            from validator.drafter import load_drafter

            init = load_drafter(Path(args.init), verifier)
            drafter.load_state_dict({k: v.float() for k, v in init.state_dict().items()
                                     if k.startswith(OWN_PREFIXES)}, strict=False)
            grown = range(init.config.num_hidden_layers, args.layers)
            if args.grow == "identity":  # new layers add nothing yet: the init drafter exactly
                silence_layers(drafter, grown)
            log(f"train: layers {list(grown)} beyond {args.init}'s from verifier layers "
                f"{[drafter.source_layers[i] for i in grown]}"
                + (" with zeroed output projections (identity)" if args.grow == "identity"
                   else ""))
        log(f"train: new run {run}: {args.layers} layer(s) from verifier layers "
            f"{drafter.source_layers}, {sum(p.numel() for p in params)} own params, "
            + ("full head" if head_ids is None else f"subset head of {len(head_ids)} tokens")
            + (", reads the verifier's features" if args.features else "")
            + (f", initialised from {args.init}" if args.init else ""))
    val = dd.load_examples([Path(n) for n in val_names], features=args.features)
    val_qids = {int(e["qid"]) for e in val}
    cache: dict[str, list[dict[str, Any]]] = {}
    pad = tok.pad_token_id
    gen = torch.Generator()

    def save_ckpt() -> None:
        own = {k: v for k, v in drafter.state_dict().items() if k.startswith(OWN_PREFIXES)}
        dd.atomic_torch_save({"own": own, "opt": opt.state_dict(), "pos": pos,
                              "val_names": val_names, "args": vars(args),
                              "head_ids": head_ids}, ckpt)

    def export(name: str, metrics: dict[str, Any]) -> None:
        meta = {"verifier": MODEL_ID, "recipe": _recipe(args), "metrics": metrics,
                "train_step": pos["step"]}
        save_drafter(drafter, run / name, meta, round_in_place=False,
                     layers_from=(Path(args.init), frozen) if frozen else None)

    def evaluate() -> dict[str, Any]:
        drafter.eval()
        m = greedy_agreement(drafter, val, pad)
        drafter.train()
        res = {"step": pos["step"], "val_agreement": round(m["agreement"], 4),
               "val_tokens": int(m["tokens"]),
               "val_set": ",".join(str(Path(n).relative_to(RUNS)) if Path(n).is_relative_to(RUNS)
                                   else n for n in val_names)}
        pos["history"].append(res)
        log(f"eval step {pos['step']}: held-out greedy agreement {m['agreement']:.4f} "
            f"on {int(m['tokens'])} tokens")
        if m["agreement"] > pos["best"]:
            pos["best"] = m["agreement"]
            export("best", res)
        return res

    if pos["step"] == 0 and not pos["history"]:
        evaluate()
    drafter.train()
    last_ckpt, t_log = time.time(), time.time()
    acc = {"kl": 0.0, "agree": 0.0, "feat": 0.0, "n": 0}
    while pos["step"] < args.steps:
        if pos["batch"] == 0 and not pos["epoch_shards"]:
            pos["epoch_shards"] = [str(p) for p in shards() if str(p) not in val_names]
            log(f"epoch {pos['epoch']}: {len(pos['epoch_shards'])} training shards")
        for n in pos["epoch_shards"]:
            if n not in cache:
                cache[n] = dd.load_examples([Path(n)], features=args.features)
        # a question held out for validation is never trained on, whatever its answer kind
        examples = [e for n in pos["epoch_shards"] for e in cache[n]
                    if int(e["qid"]) not in val_qids]
        for batch in dd.iter_batches(examples, args.batch, args.seed + pos["epoch"],
                                     skip=pos["batch"]):
            lr = lr_at(pos["step"], args.lr, args.warmup, args.steps)
            for group in opt.param_groups:
                group["lr"] = lr
            gen.manual_seed(args.seed * 1_000_003 + pos["step"])
            loss, st = kd_loss(drafter, batch, pad, args.temperature, args.loss_frac, gen,
                               args.feature_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, args.clip)
            opt.step()
            pos["step"] += 1
            pos["batch"] += 1
            acc["kl"] += st["kl"]
            acc["agree"] += st["agree"]
            acc["feat"] += st.get("feat", 0.0)
            acc["n"] += 1
            if pos["step"] % args.log_every == 0:
                dt = (time.time() - t_log) / acc["n"]
                reg = f" feat {acc['feat'] / acc['n']:.4f}" if "feat" in st else ""
                log(f"step {pos['step']}: kl {acc['kl'] / acc['n']:.4f}{reg} train-agree "
                    f"{acc['agree'] / acc['n']:.4f} lr {lr:.2e} {dt:.2f} s/step")
                t_log, acc = time.time(), {"kl": 0.0, "agree": 0.0, "feat": 0.0, "n": 0}
            if pos["step"] % args.eval_every == 0:
                evaluate()
            if time.time() - last_ckpt > args.ckpt_minutes * 60 or pos["step"] >= args.steps:
                save_ckpt()
                last_ckpt = time.time()
                log(f"checkpoint: step {pos['step']} -> {ckpt}")
            if pos["step"] >= args.steps:
                break
        else:
            pos["epoch"] += 1
            pos["batch"] = 0
            pos["epoch_shards"] = []
    res = evaluate()
    export("final", res)
    save_ckpt()
    log(f"train: done at step {pos['step']}; best held-out agreement {pos['best']:.4f}; "
        f"exported {run / 'final'} and {run / 'best'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Greedy agreement on the verifier's GSM8K-test answers and the decode-latency ratio."""
    from validator.drafter import load_drafter, update_metrics
    from validator.smollm2 import load_verifier

    torch.set_num_threads(args.threads)
    verifier, tok = load_verifier()
    test_dir = Path(args.test_data)
    questions = dd.load_questions(dd.GSM8K_TEST, args.n)
    dd.generate_shards(verifier, tok, questions, test_dir, args.gen_batch, args.max_new_tokens,
                       args.topk, log=lambda m: print(f"test answers: {m}", flush=True),
                       source=f"{dd.GSM8K_TEST} first {args.n}")
    shards = [dd.shard_path(test_dir, s) for s in range(0, len(questions), args.gen_batch)]
    examples = dd.load_examples(shards)
    for path in args.drafter:
        drafter = load_drafter(path, verifier)
        qual = greedy_agreement(drafter, examples, tok.pad_token_id, verifier=verifier)
        cost = latency_ratio(drafter, verifier, args.context, args.repeats, args.rounds)
        res = {
            "drafter": str(path), "n_layers": drafter.config.num_hidden_layers,
            "gsm8k_test_questions": len(examples), "answer_tokens": int(qual["tokens"]),
            "greedy_agreement": round(qual["agreement"], 4),
            "greedy_agreement_vs_teacher_forced_verifier": round(qual["agree_tf"], 4),
            "verifier_self_consistency": round(qual["verifier_self"], 4),
            "decode_ms_drafter": round(cost["drafter_s"] * 1e3, 3),
            "decode_ms_verifier": round(cost["verifier_s"] * 1e3, 3),
            "latency_ratio": round(cost["ratio"], 4),
            "latency_setup": f"1 token, KV cache {args.context} ctx, median of {args.repeats} x "
                             f"{args.rounds} rounds, {args.threads} threads, float32 CPU",
        }
        print(json.dumps(res), flush=True)
        if args.write_meta:
            update_metrics(path, "gsm8k_test_eval", res)
    return 0


def subset_ids(tok: Any, verifier: Any, m: int) -> torch.Tensor:
    """The ``m`` head token ids (module docstring: GSM8K-train answer counts, then lower id)."""
    from validator.drafter import frequency_ranked

    vocab = int(verifier.lm_head.weight.shape[0])
    always = [i for i in (tok.eos_token_id, tok.pad_token_id, tok.bos_token_id,
                          *tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]))
              if i is not None and 0 <= int(i) < vocab]
    return frequency_ranked(dd.token_counts(tok, vocab), m, always)


def cmd_shrink(args: argparse.Namespace) -> int:
    """Write a drafter that is ``--drafter``'s layers with a subset head (layers not copied)."""
    from validator.drafter import read_meta, save_shrunk
    from validator.smollm2 import load_verifier

    verifier, tok = load_verifier()
    ids = subset_ids(tok, verifier, args.head_tokens)
    src = Path(args.drafter)
    meta = {"recipe": read_meta(src).get("recipe"),
            "shrunk": {"from": src.name, "head_tokens": args.head_tokens,
                       "ranking": "GSM8K-train answer token counts, then lower id; specials kept",
                       "command": "python -m validator.distill " + " ".join(sys.argv[1:])}}
    out = save_shrunk(Path(args.out), src, ids, meta)
    print(f"{src} -> {out} (its layers, a head over {args.head_tokens} of "
          f"{verifier.lm_head.weight.shape[0]} tokens)")
    return 0


def _relative(obj: Any) -> Any:
    """``obj`` with every string path under the repository made relative to it."""
    root = str(dd.REPO) + "/"
    if isinstance(obj, str):
        return obj.removeprefix(root)
    if isinstance(obj, list):
        return [_relative(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _relative(v) for k, v in obj.items()}
    return obj


def cmd_publish(args: argparse.Namespace) -> int:
    """Copy a trained drafter folder to ``drafters/<name>/`` (where validator.pairs looks)."""
    import shutil

    from validator.drafter import META, WEIGHTS, read_meta

    src = Path(args.drafter)
    meta = read_meta(src)
    dest = Path(args.dest) / args.name
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / WEIGHTS, dest / (WEIGHTS + ".tmp"))
    (dest / (WEIGHTS + ".tmp")).replace(dest / WEIGHTS)
    meta = _relative(meta)  # no machine-specific absolute paths in the shipped metadata
    if meta.get("layers_from"):  # still the same folder, seen from the new place
        import os

        meta["layers_from"] = os.path.relpath((src / meta["layers_from"]).resolve(), dest)
    meta["published"] = {"from": str(_relative(str(src.resolve()))),
                         "command": "python -m validator.distill " + " ".join(sys.argv[1:])}
    (dest / (META + ".tmp")).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    (dest / (META + ".tmp")).replace(dest / META)
    size = (dest / WEIGHTS).stat().st_size / 2**20
    print(f"{src} -> {dest} ({meta['n_layers']} layers, {size:.1f} MiB, "
          f"metrics {json.dumps(meta.get('metrics', {}), sort_keys=True)})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m validator.distill", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("data", help="verifier greedy answers + top-k logits, in shards")
    d.add_argument("--questions", default=str(dd.GSM8K_TRAIN))
    d.add_argument("--out", default=str(DEFAULT_DATA))
    d.add_argument("--limit", type=int, default=None, help="first N questions only")
    d.add_argument("--answers", choices=("own", "gold"), default="own",
                   help="own: the verifier's greedy answers (generated); gold: the dataset's "
                        "reference answers, teacher-forced (one forward per batch)")
    d.add_argument("--batch", type=int, default=48)
    d.add_argument("--max-new-tokens", type=int, default=256)
    d.add_argument("--topk", type=int, default=64)
    d.add_argument("--threads", type=int, default=1)
    d.add_argument("--log", default=None)
    d.set_defaults(func=cmd_data)

    f = sub.add_parser("features", help="verifier hidden states beside data shards (feature "
                                        "drafters read them)")
    f.add_argument("--data", nargs="+", default=[str(DEFAULT_DATA)], help="shard folders")
    f.add_argument("--batch", type=int, default=8)
    f.add_argument("--threads", type=int, default=1)
    f.add_argument("--log", default=None)
    f.set_defaults(func=cmd_features)

    t = sub.add_parser("train", help="KL-distil a drafter (resumable)")
    t.add_argument("--layers", type=int, required=True)
    t.add_argument("--source-layers", default=None, help="comma list of verifier layers")
    t.add_argument("--run", required=True, help="run folder (ckpt.pt, train.log, best/, final/)")
    t.add_argument("--data", nargs="+", default=[str(DEFAULT_DATA)],
                   help="shard folders (own answers first: its first shards are held out)")
    t.add_argument("--val-shards", type=int, default=1, help="first N shards held out")
    t.add_argument("--init", default=None, help="start from a saved drafter folder")
    t.add_argument("--freeze-init", action="store_true",
                   help="train only the layers beyond --init's depth (and the final norm); the "
                        "saved drafter stores those and names --init for the rest")
    t.add_argument("--grow", choices=("copy", "identity"), default="copy",
                   help="layers beyond --init's depth: the verifier's layers as they are, or "
                        "with zeroed attention/MLP output projections (the drafter starts as "
                        "--init exactly)")
    t.add_argument("--min-shards", type=int, default=4, help="training shards to wait for")
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--lr", type=float, default=5e-4)
    t.add_argument("--warmup", type=int, default=100)
    t.add_argument("--steps", type=int, default=4000, help="total steps (cosine horizon)")
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--temperature", type=float, default=1.0)
    t.add_argument("--loss-frac", type=float, default=0.35,
                   help="fraction of answer positions scored per step")
    t.add_argument("--clip", type=float, default=1.0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--log-every", type=int, default=10)
    t.add_argument("--eval-every", type=int, default=250)
    t.add_argument("--ckpt-minutes", type=float, default=5.0)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--log", default=None, help="log file (default run/train.log)")
    t.add_argument("--head-tokens", type=int, default=None,
                   help="subset head over this many frequency-ranked token ids (default: the "
                        "verifier's full head)")
    t.add_argument("--features", action="store_true",
                   help="a feature drafter: also reads the verifier's previous hidden state "
                        "(needs `distill features` on the data)")
    t.add_argument("--feature-weight", type=float, default=0.0,
                   help="weight of the smooth-L1 pull of a feature drafter's hidden state "
                        "towards the verifier's")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="agreement on GSM8K test + latency ratio")
    e.add_argument("--drafter", nargs="+", required=True, help="drafter folder(s)")
    e.add_argument("--n", type=int, default=50, help="first N GSM8K test questions")
    e.add_argument("--test-data", default=str(DEFAULT_TEST))
    e.add_argument("--gen-batch", type=int, default=25)
    e.add_argument("--max-new-tokens", type=int, default=256)
    e.add_argument("--topk", type=int, default=64)
    e.add_argument("--context", type=int, default=300, help="KV-cache length for latency")
    e.add_argument("--repeats", type=int, default=50)
    e.add_argument("--rounds", type=int, default=3)
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--write-meta", action="store_true",
                   help="record the result in the drafter's JSON")
    e.set_defaults(func=cmd_eval)

    u = sub.add_parser("publish", help="copy a drafter folder to drafters/<name>/")
    u.add_argument("--drafter", required=True)
    u.add_argument("--name", required=True, help="e.g. smollm2-135m-d3")
    u.add_argument("--dest", default=str(dd.REPO / "drafters"))
    u.set_defaults(func=cmd_publish)

    r = sub.add_parser("shrink", help="a drafter's layers with a subset head (no training; "
                                      "layers shared, not copied)")
    r.add_argument("--drafter", required=True, help="drafter folder")
    r.add_argument("--head-tokens", type=int, required=True, help="token ids the head keeps")
    r.add_argument("--out", required=True, help="new drafter folder")
    r.set_defaults(func=cmd_shrink)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: Any = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
