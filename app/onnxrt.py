"""onnxruntime CPU sessions, without torch: the engine (export check, serving backends) and a
served model's lane processes (app.serving.lane, which must not import torch) make them here,
the same way. An import-linter contract keeps this module free of torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def create_onnx_session(path: Path | str, threads: int | None = None, spinning: bool = True) -> Any:
    """An onnxruntime CPU session for ``path``; ``threads`` intra-op threads (default: ORT's, one
    per core). ``spinning=False``: idle intra-op threads sleep instead of spin-waiting for work,
    which leaves the cores to other threads (slower to start each parallel step, though)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: ORT warns about unused initializers
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
