"""Latency models: seconds for one forward pass of a model over ``new`` tokens after ``context``.

Three kinds behind one interface (``seconds``), chosen by a spec string:

  const:draft=C,verify=V[,draft.NAME=C2]   fixed seconds per drafter step / verifier call
  profile:PATH                              a measured profile (JSON, format below)
  roofline:HW                               max(bytes/bandwidth, flops/peak) + launch overhead,
                                            from model configs and the hardware table

``context`` is the number of tokens already in the model's KV cache before the call; ``new`` the
tokens fed in this call (prompt chunk, catch-up tokens, or drafts to verify).

Profile format (``entrospec-profile/1``), JSON:
  {"schema": "entrospec-profile/1", "hardware": {...}, "libraries": {...}, "dtype": "float32",
   "form": "a + b*new + c*context + d*new*context",
   "models": {"<role>": {"model": "<name>", "coef": [a, b, c, d],
                          "points": [{"new": n, "context": c, "median_s": t}, ...],
                          "heldout": {"median_rel_err": e, "max_rel_err": e},
                          "pieces": [{"new": [lo, hi], "coef": [a, b, c, d],
                                      "knee": {"context": K, "coef": [e, f]}}, ...],
                          "new_factors": {"3": 1.17, ...}}}}
Roles are "verifier" and each drafter name as it appears in the trace. Where a role has
"pieces" (optional; hi null = no bound; together they cover every new >= 1), a pass over ``new``
tokens is priced by the linear form of the piece holding ``new`` (on CPU one token runs
matrix-vector kernels, so cost jumps between new = 1 and 2), or by a piece of fewer tokens where
that costs more (the running maximum: a pass never gets cheaper with more tokens, even where
separately fitted pieces would say so). A piece's optional "knee" adds (e + f*new) *
max(0, context - K) seconds: beyond K context tokens each costs more (the KV cache outgrows the
CPU's caches). "new_factors" (optional, with pieces) multiply the price of the values of new whose
kernels sit off the line at every context. Otherwise by "coef".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import LatencyError

PROFILE_SCHEMA = "entrospec-profile/1"
CONFIG_DIR = Path(__file__).parent / "configs"


class LatencyModel(Protocol):
    @property
    def source(self) -> str:
        """Which model priced a result (printed with every result)."""
        ...

    def seconds(self, model: str, new: np.ndarray, context: np.ndarray) -> np.ndarray:
        """Seconds for a forward pass of ``model`` ("verifier" or a drafter name)."""
        ...


@dataclass(frozen=True)
class Const:
    """Fixed seconds per drafter step and per verifier call, whatever the shapes."""

    draft: float
    verify: float
    per_drafter: dict[str, float] = field(default_factory=dict)

    @cached_property
    def source(self) -> str:
        extra = "".join(f",draft.{k}={v:g}" for k, v in sorted(self.per_drafter.items()))
        return f"const:draft={self.draft:g},verify={self.verify:g}{extra}"

    def seconds(self, model: str, new: np.ndarray, context: np.ndarray) -> np.ndarray:
        value = self.verify if model == "verifier" else self.per_drafter.get(model, self.draft)
        return np.full(np.broadcast(np.asarray(new), np.asarray(context)).shape, value)


def linear_form(coef: np.ndarray, new: np.ndarray, context: np.ndarray) -> np.ndarray:
    """a + b*new + c*context + d*new*context (seconds)."""
    a, b, c, d = coef
    n = np.asarray(new, dtype=np.float64)
    x = np.asarray(context, dtype=np.float64)
    return a + b * n + c * x + d * n * x


# (lowest new, highest new or inf, coef [a, b, c, d], knee: (K, [e, f]) or None)
Piece = tuple[int, float, np.ndarray, tuple[float, np.ndarray] | None]


@dataclass(frozen=True)
class Profile:
    """A measured profile: per role, ``linear_form`` coefficients fitted to timings, or pieces
    of them by number of new tokens (then those price; each may steepen beyond a knee in
    context), times a measured factor for the values of new whose kernels sit off the line
    (``factors``: role -> {new: factor}; with pieces)."""

    path: str
    coefs: dict[str, np.ndarray]
    pieces: dict[str, list[Piece]] = field(default_factory=dict)
    factors: dict[str, dict[int, float]] = field(default_factory=dict)

    @cached_property
    def source(self) -> str:
        knees = any(pc[3] is not None for pcs in self.pieces.values() for pc in pcs)
        how = " (piecewise in new" + (", knees" if knees else "") + \
            (", per-new factors)" if self.factors else ")")
        return f"profile:{self.path}" + (how if self.pieces else "")

    def seconds(self, model: str, new: np.ndarray, context: np.ndarray) -> np.ndarray:
        if model not in self.coefs:
            raise LatencyError(f"{self.path}: profile has no model {model!r}; it has "
                               f"{sorted(self.coefs)}")
        if model not in self.pieces:
            return linear_form(self.coefs[model], new, context)
        n = np.asarray(new)
        out = np.zeros(np.broadcast(n, np.asarray(context)).shape)
        for lo, hi, coef, knee in self.pieces[model]:  # running max: never cheaper with more
            m = np.minimum(n, hi)                        # tokens
            at = linear_form(coef, m, context)
            if knee is not None:
                at = at + (knee[1][0] + knee[1][1] * m) * np.maximum(
                    0.0, np.asarray(context, dtype=np.float64) - knee[0])
            out = np.where(n >= lo, np.maximum(out, at), out)
        for new_at, factor in self.factors.get(model, {}).items():  # measured kernel effects
            out = np.where(n == new_at, out * factor, out)
        return out


def _coef(path: str, role: str, raw: Any) -> np.ndarray:
    coef = np.asarray(raw if isinstance(raw, list) else [], dtype=np.float64)
    if coef.shape != (4,) or not np.isfinite(coef).all():
        raise LatencyError(f"{path}: model {role!r} needs 4 finite coefficients")
    return coef


def _pieces(path: str, role: str, raw: Any) -> list[Piece]:
    """Validated pieces: contiguous ranges of new from 1 up, the last without bound."""
    out: list[Piece] = []
    want: int | None = 1
    for piece in raw if isinstance(raw, list) else [None]:
        rng = piece.get("new") if isinstance(piece, dict) else None
        if not (isinstance(piece, dict) and isinstance(rng, list) and len(rng) == 2
                and rng[0] == want
                and (rng[1] is None or (isinstance(rng[1], int) and rng[1] >= rng[0]))):
            raise LatencyError(f"{path}: model {role!r}: pieces must cover new = 1, 2, ... "
                               f"contiguously (expected a piece from {want})")
        hi = math.inf if rng[1] is None else rng[1]
        out.append((rng[0], hi, _coef(path, role, piece.get("coef")),
                    _knee(path, role, piece["knee"]) if "knee" in piece else None))
        want = None if rng[1] is None else rng[1] + 1
        if want is None:
            break
    if want is not None:
        raise LatencyError(f"{path}: model {role!r}: the last piece needs no upper bound (null)")
    return out


def _knee(path: str, role: str, raw: Any) -> tuple[float, np.ndarray]:
    """A validated knee: {"context": K >= 0, "coef": [e, f] finite, >= 0}."""
    k = raw.get("context") if isinstance(raw, dict) else None
    coef = np.asarray(raw.get("coef") if isinstance(raw, dict) and
                      isinstance(raw.get("coef"), list) else [], dtype=np.float64)
    if not (isinstance(k, (int, float)) and not isinstance(k, bool) and math.isfinite(k)
            and k >= 0 and coef.shape == (2,) and np.isfinite(coef).all()
            and (coef >= 0).all()):
        raise LatencyError(f"{path}: model {role!r}: a piece's knee needs a context >= 0 and "
                           f"2 finite non-negative coefficients, got {raw!r}")
    return float(k), coef


def _factors(path: str, role: str, raw: Any) -> dict[int, float]:
    """Validated per-new factors: {"3": 1.24, ...}, keys positive integers, values > 0."""
    if not isinstance(raw, dict):
        raise LatencyError(f"{path}: model {role!r}: new_factors must be an object")
    out = {}
    for key, value in raw.items():
        if not (isinstance(key, str) and key.isdigit() and int(key) >= 1
                and isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise LatencyError(f"{path}: model {role!r}: new_factors needs positive integer "
                               f"keys and positive factors, got {key!r}: {value!r}")
        out[int(key)] = float(value)
    return out


def load_profile(path: str) -> Profile:
    p = Path(path)
    if not p.is_file():
        raise LatencyError(f"{path}: no such profile file")
    try:
        doc = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise LatencyError(f"{path}: not a JSON profile") from None
    if not isinstance(doc, dict) or doc.get("schema") != PROFILE_SCHEMA:
        got = doc.get("schema") if isinstance(doc, dict) else None
        raise LatencyError(f"{path}: profile schema {got!r}; this entrospec reads "
                           f"{PROFILE_SCHEMA!r}")
    coefs, pieces, factors = {}, {}, {}
    models = doc.get("models", {})
    for role, entry in (models.items() if isinstance(models, dict) else []):
        if not isinstance(entry, dict):
            raise LatencyError(f"{path}: model {role!r} is not an object")
        coefs[role] = _coef(path, role, entry.get("coef"))
        if "pieces" in entry:
            pieces[role] = _pieces(path, role, entry["pieces"])
            factors[role] = _factors(path, role, entry.get("new_factors", {}))
    if "verifier" not in coefs:
        raise LatencyError(f"{path}: profile has no 'verifier' model")
    return Profile(path=str(path), coefs=coefs, pieces=pieces,
                   factors={r: f for r, f in factors.items() if f})


# ---- roofline -------------------------------------------------------------------------------

def load_hardware() -> dict[str, dict[str, Any]]:
    """Hardware table: name -> {bandwidth_Bps, peak_flops, overhead_s_per_layer, source...}."""
    return json.loads((CONFIG_DIR / "hardware.json").read_text())["hardware"]


def load_model_config(name: str) -> dict[str, Any]:
    """A model's shape config (configs/models/NAME.json): public facts with their source."""
    path = CONFIG_DIR / "models" / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in (CONFIG_DIR / "models").glob("*.json"))
        raise LatencyError(f"no model config {name!r}; known: {', '.join(known)}")
    return json.loads(path.read_text())


def decode_cost(cfg: dict[str, Any], new: np.ndarray, context: np.ndarray,
                bytes_per_param: float) -> tuple[np.ndarray, np.ndarray]:
    """(bytes moved, flops) of one forward over ``new`` tokens after ``context`` tokens."""
    h, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads", heads)
    head_dim = cfg.get("head_dim", h // heads)
    inter, vocab = cfg["intermediate_size"], cfg["vocab_size"]
    mlp_mats = 3 if cfg.get("gated_mlp", True) else 2
    per_layer = h * heads * head_dim * 2 + h * kv_heads * head_dim * 2 + mlp_mats * h * inter
    head = cfg.get("head_tokens") or vocab  # a subset head computes only its rows
    dense = layers * per_layer + head * h  # layers + LM head (embedding lookup is a gather)
    if cfg.get("features"):  # a feature drafter's input projection of the verifier's state
        dense += h * h
    n = np.asarray(new, dtype=np.float64)
    c = np.asarray(context, dtype=np.float64)
    kv = 2.0 * layers * kv_heads * head_dim
    bytes_moved = bytes_per_param * (dense + kv * (c + n))
    flops = 2.0 * n * dense + 4.0 * layers * heads * head_dim * n * (c + (n + 1) / 2)
    return bytes_moved, flops


@dataclass(frozen=True)
class Roofline:
    """Analytic fallback: max(bytes / bandwidth, flops / peak) + per-layer launch overhead."""

    hardware: str
    hw: dict[str, Any]
    configs: dict[str, dict[str, Any]]  # role -> model config
    bytes_per_param: float = 2.0

    @cached_property
    def source(self) -> str:
        models = ",".join(f"{r}={c['name']}" for r, c in sorted(self.configs.items()))
        return f"roofline:{self.hardware}({models})"

    def seconds(self, model: str, new: np.ndarray, context: np.ndarray) -> np.ndarray:
        if model not in self.configs:
            raise LatencyError(f"roofline has no config for {model!r}; pass --pair")
        cfg = self.configs[model]
        bytes_moved, flops = decode_cost(cfg, new, context, self.bytes_per_param)
        t = np.maximum(bytes_moved / self.hw["bandwidth_Bps"], flops / self.hw["peak_flops"])
        return t + self.hw["overhead_s_per_layer"] * cfg["num_hidden_layers"]


def _parse_const(body: str) -> Const:
    values: dict[str, float] = {}
    per: dict[str, float] = {}
    for item in filter(None, body.split(",")):
        key, sep, raw = item.partition("=")
        try:
            val = float(raw)
        except ValueError:
            val = math.nan
        if not sep or not math.isfinite(val) or val < 0:
            raise LatencyError(f"--latency const: bad item {item!r} (want name=seconds >= 0)")
        if key.startswith("draft."):
            per[key[6:]] = val
        elif key in ("draft", "verify"):
            values[key] = val
        else:
            raise LatencyError(f"--latency const: unknown key {key!r} (draft, verify, "
                               "draft.NAME)")
    if set(values) != {"draft", "verify"}:
        raise LatencyError("--latency const: needs draft=SECONDS,verify=SECONDS")
    return Const(values["draft"], values["verify"], per)


def parse_latency(spec: str, roles: dict[str, str] | None = None) -> LatencyModel:
    """Build a latency model from a spec string (see the module docstring).

    ``roles`` maps "verifier" and each drafter name to a model-config name (roofline only).
    """
    kind, _, body = spec.partition(":")
    if kind == "const":
        return _parse_const(body)
    if kind == "profile":
        if not body:
            raise LatencyError("--latency profile:PATH needs a path")
        return load_profile(body)
    if kind == "roofline":
        table = load_hardware()
        if body not in table:
            raise LatencyError(f"--latency roofline: unknown hardware {body!r}; known: "
                               f"{', '.join(sorted(table))}")
        if not roles:
            raise LatencyError("--latency roofline needs model configs: pass --pair NAME")
        return Roofline(body, table[body], {r: load_model_config(n) for r, n in roles.items()},
                        table[body].get("bytes_per_param", 2.0))
    raise LatencyError(f"--latency {spec!r}: expected const:..., profile:PATH or roofline:HW")
