"""ONNX Runtime sessions: CUDA when it really loads, otherwise CPU, quietly, with few threads."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def create_session(model_path: str | Path | bytes, threads: int = 2) -> ort.InferenceSession:
    """An inference session (a model file, or the model's bytes) preferring CUDA; falls back to
    CPU without printing load errors.

    onnxruntime-gpu lists CUDA as available even where it cannot load it, so the providers are
    checked on the created session (``session.get_providers()`` tells the truth).
    """
    ort.set_default_logger_severity(4)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # busy-waiting worker threads cost more than they save for these small graphs on shared cores
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    model = model_path if isinstance(model_path, bytes) else str(model_path)
    providers = [CUDA, CPU] if CUDA in ort.get_available_providers() else [CPU]
    session = ort.InferenceSession(model, options, providers=providers)
    if CUDA in providers and CUDA not in session.get_providers():
        session = ort.InferenceSession(model, options, providers=[CPU])
    return session


def active_provider(session: ort.InferenceSession) -> str:
    """The provider that runs this session's nodes first (CUDA or CPU)."""
    return session.get_providers()[0]
