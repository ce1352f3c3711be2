"""The latency-model cache: a model is measured once per model, runtime and machine.

An entry is one JSON file named by a digest of its key: the model's content hash and input
shapes, the execution provider, threads and batch, the machine (host, CPU model, cores),
and the versions of onnxruntime, morphcli and the latency-model format. Any change of the
key is another file, so a changed model, runtime or machine is measured afresh; the key is
stored in the entry too and checked on reading. A missing, unreadable or foreign entry is a
miss, never an error. Entries are written atomically.

The folder is ``$MORPHCLI_CACHE_DIR``, else ``$XDG_CACHE_HOME/morphcli/latency``, else
``~/.cache/morphcli/latency``; commands take ``--latency-cache DIR``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import onnxruntime as ort

from morphcli import __version__
from morphcli.graph.runtime import Runtime
from morphcli.ops.base import Shape
from morphcli.outputs import write_atomic
from morphcli.resources.latency import FORMAT, LatencyModel

ENV = "MORPHCLI_CACHE_DIR"


def default_cache_dir() -> Path:
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "morphcli" / "latency"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            for line in stream:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What identifies the machine timings were taken on."""
    return {
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "system": f"{platform.system()} {platform.machine()}",
    }


def model_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cache_key(digest: str, input_shapes: dict[str, Shape], runtime: Runtime) -> dict[str, Any]:
    """Everything a cached latency model depends on."""
    return {
        "format": FORMAT,
        "morphcli": __version__,
        "onnxruntime": ort.__version__,
        "model": digest,
        "input_shapes": {name: list(shape) for name, shape in sorted(input_shapes.items())},
        "provider": runtime.provider,
        "threads": runtime.threads,
        "batch": runtime.batch,
        "machine": machine(),
    }


def entry_path(folder: str | os.PathLike, key: dict[str, Any]) -> Path:
    text = json.dumps(key, sort_keys=True)
    return Path(folder) / f"{hashlib.sha256(text.encode()).hexdigest()[:32]}.json"


def load_cached(folder: str | os.PathLike, key: dict[str, Any]) -> LatencyModel | None:
    """The cached model for ``key``, or None (missing, unreadable, or another key)."""
    path = entry_path(folder, key)
    try:
        with open(path, encoding="utf-8") as stream:
            doc = json.load(stream)
        if doc.get("key") != json.loads(json.dumps(key)):
            return None
        return LatencyModel.from_dict(doc["model"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def store(folder: str | os.PathLike, key: dict[str, Any], latency: LatencyModel) -> Path:
    """Write the entry atomically; returns its path.

    Raises:
        OSError: the folder cannot be created.
        MorphError: the entry cannot be written.
    """
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = entry_path(folder, key)
    text = json.dumps({"key": key, "model": latency.to_dict()}, indent=1) + "\n"
    write_atomic(path, lambda stream: stream.write(text.encode()))
    return path
