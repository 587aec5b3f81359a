"""Numba per-pixel kernels: piecewise-affine warps between a frame and the canonical face, and blending."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _bilinear(image, x, y, channel):
    height, width = image.shape[0], image.shape[1]
    x = min(max(x, 0.0), width - 1.0)
    y = min(max(y, 0.0), height - 1.0)
    x0, y0 = int(x), int(y)
    x1, y1 = min(x0 + 1, width - 1), min(y0 + 1, height - 1)
    fx, fy = x - x0, y - y0
    top = image[y0, x0, channel] * (1.0 - fx) + image[y0, x1, channel] * fx
    bottom = image[y1, x0, channel] * (1.0 - fx) + image[y1, x1, channel] * fx
    return top * (1.0 - fy) + bottom * fy


@njit(cache=True, nogil=True)
def sample_canonical(image, vertices, triangles, pixel_triangle, pixel_barycentric):
    """Warp ``image`` (H, W, 3) onto the canonical grid: (S, S, 3) float32, 0 outside the mesh.

    ``vertices`` (V, 2) are the warp vertices in image pixels; each canonical pixel lies in
    triangle ``pixel_triangle`` (-1: none) with fixed barycentric weights.
    """
    size = pixel_triangle.shape[0]
    out = np.zeros((size, size, 3), np.float32)
    for row in range(size):
        for col in range(size):
            triangle = pixel_triangle[row, col]
            if triangle < 0:
                continue
            x = 0.0
            y = 0.0
            for corner in range(3):
                weight = pixel_barycentric[row, col, corner]
                vertex = triangles[triangle, corner]
                x += weight * vertices[vertex, 0]
                y += weight * vertices[vertex, 1]
            for channel in range(3):
                out[row, col, channel] = _bilinear(image, x, y, channel)
    return out


@njit(cache=True, nogil=True)
def _draw_triangle(vertices, facing_reference, corners, attributes, width, height, draw_facing, fields):
    """Rasterize one triangle into ``fields`` if its facing equals ``draw_facing``."""
    a, b, c = corners[0], corners[1], corners[2]
    ax, ay = vertices[a, 0], vertices[a, 1]
    bx, by = vertices[b, 0], vertices[b, 1]
    cx, cy = vertices[c, 0], vertices[c, 1]
    determinant = (by - cy) * (ax - cx) + (cx - bx) * (ay - cy)
    ua, va = facing_reference[a, 0], facing_reference[a, 1]
    ub, vb = facing_reference[b, 0], facing_reference[b, 1]
    uc, vc = facing_reference[c, 0], facing_reference[c, 1]
    reference_determinant = (vb - vc) * (ua - uc) + (uc - ub) * (va - vc)
    if abs(determinant) < 1e-9 or (determinant * reference_determinant > 0) != draw_facing:
        return
    # barycentric weights are affine in (col, row): w = w_col * col + w_row * row + w_0
    wa_col, wa_row = (by - cy) / determinant, (cx - bx) / determinant
    wb_col, wb_row = (cy - ay) / determinant, (ax - cx) / determinant
    wa_0 = -(wa_col * cx + wa_row * cy)
    wb_0 = -(wb_col * cx + wb_row * cy)
    wc_col, wc_row, wc_0 = -wa_col - wb_col, -wa_row - wb_row, 1.0 - wa_0 - wb_0
    box_start = max(int(np.floor(min(ax, bx, cx))), 0)
    box_stop = min(int(np.ceil(max(ax, bx, cx))) + 1, width)
    row_start = max(int(np.floor(min(ay, by, cy))), 0)
    row_stop = min(int(np.ceil(max(ay, by, cy))) + 1, height)
    for row in range(row_start, row_stop):
        # the span of columns where all three weights are >= 0 on this row
        low, high = float(box_start), float(box_stop - 1)
        for slope, offset in ((wa_col, wa_row * row + wa_0), (wb_col, wb_row * row + wb_0), (wc_col, wc_row * row + wc_0)):
            if abs(slope) < 1e-12:
                if offset < -1e-6:
                    high = low - 1.0
            elif slope > 0:
                low = max(low, (-1e-6 - offset) / slope)
            else:
                high = min(high, (-1e-6 - offset) / slope)
        if high < low:
            continue
        for col in range(int(np.ceil(low)), int(np.floor(high)) + 1):
            wa = wa_col * col + wa_row * row + wa_0
            wb = wb_col * col + wb_row * row + wb_0
            wc = 1.0 - wa - wb
            for k in range(attributes.shape[1]):
                fields[k, row, col] = wa * attributes[a, k] + wb * attributes[b, k] + wc * attributes[c, k]


@njit(cache=True, nogil=True)
def rasterize_attributes(vertices, facing_reference, triangles, attributes, width, height):
    """Interpolate per-vertex ``attributes`` (V, A) over the triangles drawn at ``vertices`` (V, 2).

    Returns fields (A, height, width) float32 (0 where no triangle is) for the box at the origin of
    ``vertices``; each pixel takes the last triangle covering it. A triangle whose
    orientation differs from its ``facing_reference`` one (the far side of a turned head) is
    drawn first, so the near side covers it and it only fills gaps.
    """
    fields = np.zeros((attributes.shape[1], height, width), np.float32)
    for draw_facing in (False, True):
        for triangle in range(triangles.shape[0]):
            _draw_triangle(vertices, facing_reference, triangles[triangle], attributes, width, height,
                           draw_facing, fields)  # fmt: skip
    return fields


@njit(cache=True, nogil=True)
def blend_into(image, colour_opacity, grain, x0, y0):
    """Blend ``colour_opacity`` (h, w, 4: RGB, opacity) plus ``grain`` (h, w, grey levels added to
    every channel) into ``image`` at (x0, y0), in place."""
    height, width = grain.shape
    for row in range(height):
        y = y0 + row
        if y < 0 or y >= image.shape[0]:
            continue
        for col in range(width):
            x = x0 + col
            weight = colour_opacity[row, col, 3]
            if x < 0 or x >= image.shape[1] or weight <= 0.0:
                continue
            for channel in range(3):
                colour = colour_opacity[row, col, channel] + grain[row, col]
                value = image[y, x, channel] * (1.0 - weight) + colour * weight
                image[y, x, channel] = np.uint8(min(max(value + 0.5, 0.0), 255.0))
