"""ONNX Runtime sessions: CUDA when it really loads, otherwise CPU, quietly, with few threads."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _session_errors

from dpstream.face_model.errors import ManifestError, NetworkError
from dpstream.face_model.manifest import NetworkSpec

RUNTIME_ERRORS: tuple[type[Exception], ...] = tuple(
    getattr(_session_errors, name)
    for name in ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException",
                 "InvalidProtobuf", "ModelLoaded", "NotImplemented", "InvalidGraph", "EPFail")
    if isinstance(getattr(_session_errors, name, None), type)
) + (NetworkError,)  # fmt: skip
"""What the face model raises when its network itself fails (a session's ``run`` errors, tensors
of the wrong shape), as against a face it refuses (``RenderError``)."""

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


def open_network(spec: NetworkSpec, key: str, threads: int = 2) -> ort.InferenceSession:
    """A session for a manifest's network ``key`` (e.g. ``encoder``), checked against the tensor
    names the manifest declares: a damaged file or a different network is a ``ManifestError``
    before any frame is read, not a failure on every face."""
    try:
        session = create_session(spec.path, threads)
    except Exception as error:  # onnxruntime raises its own types for unreadable files
        raise ManifestError(f"{spec.path}: cannot load the face model's {key} network ({str(error).strip()[:200]})") from None
    for kind, declared, actual in (
        ("inputs", spec.inputs, [tensor.name for tensor in session.get_inputs()]),
        ("outputs", spec.outputs, [tensor.name for tensor in session.get_outputs()]),
    ):
        if not set(declared) <= set(actual):
            raise ManifestError(
                f"{spec.path}: the face model's {key} network has {kind} {sorted(actual)}, its manifest names {sorted(declared)}"
            )
    return session


def active_provider(session: ort.InferenceSession) -> str:
    """The provider that runs this session's nodes first (CUDA or CPU)."""
    return session.get_providers()[0]
