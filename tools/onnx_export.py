"""Write the linear appearance model's encoder and decoder as small ONNX graphs (MatMul + Add).

Used by ``tools/fit_face_model.py``. Large texture matrices are stored as float16 and cast to
float32 inside the graph (ONNX Runtime folds the cast once at load), halving the package size.
Texture tensors are NCHW, RGB, 0..255; shapes are face-mesh points in aligned shape units.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _texture_rows_hwc_to_chw(matrix: np.ndarray, size: int) -> np.ndarray:
    """Reorder rows indexed by an (H, W, 3) flattening into (3, H, W) order."""
    return matrix.reshape(size, size, 3, -1).transpose(2, 0, 1, 3).reshape(3 * size * size, -1)


def _constant(name: str, value: np.ndarray, as_float16: bool = False) -> tuple[list, list]:
    """(initializers, nodes) producing float32 tensor ``name``, stored as float16 when asked."""
    if not as_float16:
        return [numpy_helper.from_array(np.asarray(value, np.float32), name)], []
    stored = numpy_helper.from_array(np.asarray(value, np.float16), name + "_f16")
    return [stored], [helper.make_node("Cast", [name + "_f16"], [name], to=TensorProto.FLOAT)]


def _save(path: Path, nodes, initializers, inputs, outputs, graph_name: str) -> None:
    graph = helper.make_graph(nodes, graph_name, inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="dpstream")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def export_linear_encoder(
    path: Path, mean_shape, mean_texture, shape_basis, shape_variance,
    texture_basis, texture_variance, size: int,
) -> None:  # fmt: skip
    """identity = [whitened identity-shape code, whitened texture code] / sqrt(dim)."""
    dim = shape_basis.shape[1] + texture_basis.shape[1]
    shape_projection = shape_basis / np.sqrt(shape_variance) / np.sqrt(dim)
    texture_projection = _texture_rows_hwc_to_chw(texture_basis / np.sqrt(texture_variance) / np.sqrt(dim), size)
    mean_texture_chw = _texture_rows_hwc_to_chw(mean_texture[:, None], size)[:, 0]
    initializers = [
        numpy_helper.from_array(mean_shape.reshape(1, -1).astype(np.float32), "mean_shape"),
        numpy_helper.from_array(shape_projection.astype(np.float32), "shape_projection"),
        numpy_helper.from_array(mean_texture_chw.reshape(1, -1).astype(np.float32), "mean_texture"),
        numpy_helper.from_array(np.array([1, -1], np.int64), "flat_dims"),
    ]
    stored, nodes = _constant("texture_projection", texture_projection, as_float16=True)
    initializers += stored
    nodes += [
        helper.make_node("Reshape", ["shape", "flat_dims"], ["shape_flat"]),
        helper.make_node("Sub", ["shape_flat", "mean_shape"], ["shape_centred"]),
        helper.make_node("MatMul", ["shape_centred", "shape_projection"], ["shape_code"]),
        helper.make_node("Reshape", ["texture", "flat_dims"], ["texture_flat"]),
        helper.make_node("Sub", ["texture_flat", "mean_texture"], ["texture_centred"]),
        helper.make_node("MatMul", ["texture_centred", "texture_projection"], ["texture_code"]),
        helper.make_node("Concat", ["shape_code", "texture_code"], ["identity"], axis=1),
    ]
    inputs = [
        helper.make_tensor_value_info("texture", TensorProto.FLOAT, [1, 3, size, size]),
        helper.make_tensor_value_info("shape", TensorProto.FLOAT, [1, mean_shape.shape[0], 2]),
    ]
    outputs = [helper.make_tensor_value_info("identity", TensorProto.FLOAT, [1, dim])]
    _save(path, nodes, initializers, inputs, outputs, "dpstream_appearance_encoder")


def export_linear_decoder(
    path: Path, mean_shape, mean_texture, expression_basis, shape_basis, shape_variance,
    texture_basis, texture_variance, size: int,
) -> None:  # fmt: skip
    """(identity, expression) -> canonical texture (NCHW, 0..255) and canonical shape."""
    shape_modes, texture_modes = shape_basis.shape[1], texture_basis.shape[1]
    dim = shape_modes + texture_modes
    shape_synthesis = (shape_basis * np.sqrt(shape_variance) * np.sqrt(dim)).T
    texture_synthesis = _texture_rows_hwc_to_chw(texture_basis * np.sqrt(texture_variance) * np.sqrt(dim), size).T
    mean_texture_chw = _texture_rows_hwc_to_chw(mean_texture[:, None], size)[:, 0]
    initializers = [
        numpy_helper.from_array(mean_shape.reshape(1, -1).astype(np.float32), "mean_shape"),
        numpy_helper.from_array(shape_synthesis.astype(np.float32), "shape_synthesis"),
        numpy_helper.from_array(expression_basis.T.astype(np.float32), "expression_synthesis"),
        numpy_helper.from_array(mean_texture_chw.reshape(1, -1).astype(np.float32), "mean_texture"),
        numpy_helper.from_array(np.array([0], np.int64), "shape_start"),
        numpy_helper.from_array(np.array([shape_modes], np.int64), "shape_end"),
        numpy_helper.from_array(np.array([dim], np.int64), "texture_end"),
        numpy_helper.from_array(np.array([1], np.int64), "code_axis"),
        numpy_helper.from_array(np.array([1, mean_shape.shape[0], 2], np.int64), "shape_dims"),
        numpy_helper.from_array(np.array([1, 3, size, size], np.int64), "texture_dims"),
    ]
    stored, casts = _constant("texture_synthesis", texture_synthesis, as_float16=True)
    initializers += stored
    nodes = casts + [
        helper.make_node("Slice", ["identity", "shape_start", "shape_end", "code_axis"], ["shape_code"]),
        helper.make_node("Slice", ["identity", "shape_end", "texture_end", "code_axis"], ["texture_code"]),
        helper.make_node("MatMul", ["shape_code", "shape_synthesis"], ["identity_shape"]),
        helper.make_node("MatMul", ["expression", "expression_synthesis"], ["expression_shape"]),
        helper.make_node("Add", ["identity_shape", "expression_shape"], ["shape_offset"]),
        helper.make_node("Add", ["shape_offset", "mean_shape"], ["shape_flat"]),
        helper.make_node("Reshape", ["shape_flat", "shape_dims"], ["shape"]),
        helper.make_node("MatMul", ["texture_code", "texture_synthesis"], ["texture_offset"]),
        helper.make_node("Add", ["texture_offset", "mean_texture"], ["texture_flat"]),
        helper.make_node("Reshape", ["texture_flat", "texture_dims"], ["texture"]),
    ]
    inputs = [
        helper.make_tensor_value_info("identity", TensorProto.FLOAT, [1, dim]),
        helper.make_tensor_value_info("expression", TensorProto.FLOAT, [1, expression_basis.shape[1]]),
    ]
    outputs = [
        helper.make_tensor_value_info("texture", TensorProto.FLOAT, [1, 3, size, size]),
        helper.make_tensor_value_info("shape", TensorProto.FLOAT, [1, mean_shape.shape[0], 2]),
    ]
    _save(path, nodes, initializers, inputs, outputs, "dpstream_appearance_decoder")
