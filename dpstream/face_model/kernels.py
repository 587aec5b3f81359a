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
def _draw_triangle(vertices, canonical_vertices, corners, texture_alpha, x0, y0, width, height, size,
                   draw_facing, colour, weight):  # fmt: skip
    """Rasterize one triangle into ``colour``/``weight`` if its facing equals ``draw_facing``."""
    a, b, c = corners[0], corners[1], corners[2]
    ax, ay = vertices[a, 0] - x0, vertices[a, 1] - y0
    bx, by = vertices[b, 0] - x0, vertices[b, 1] - y0
    cx, cy = vertices[c, 0] - x0, vertices[c, 1] - y0
    determinant = (by - cy) * (ax - cx) + (cx - bx) * (ay - cy)
    ua, va = canonical_vertices[a, 0], canonical_vertices[a, 1]
    ub, vb = canonical_vertices[b, 0], canonical_vertices[b, 1]
    uc, vc = canonical_vertices[c, 0], canonical_vertices[c, 1]
    canonical_determinant = (vb - vc) * (ua - uc) + (uc - ub) * (va - vc)
    if abs(determinant) < 1e-9 or (determinant * canonical_determinant > 0) != draw_facing:
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
            u = min(max(wa * ua + wb * ub + wc * uc, 0.0), size - 1.0)
            v = min(max(wa * va + wb * vb + wc * vc, 0.0), size - 1.0)
            u0, v0 = int(u), int(v)
            u1, v1 = min(u0 + 1, size - 1), min(v0 + 1, size - 1)
            fu, fv = u - u0, v - v0
            w00, w01 = (1 - fu) * (1 - fv), fu * (1 - fv)
            w10, w11 = (1 - fu) * fv, fu * fv
            for channel in range(3):
                colour[row, col, channel] = (
                    w00 * texture_alpha[v0, u0, channel] + w01 * texture_alpha[v0, u1, channel]
                    + w10 * texture_alpha[v1, u0, channel] + w11 * texture_alpha[v1, u1, channel]
                )  # fmt: skip
            weight[row, col] = (
                w00 * texture_alpha[v0, u0, 3] + w01 * texture_alpha[v0, u1, 3]
                + w10 * texture_alpha[v1, u0, 3] + w11 * texture_alpha[v1, u1, 3]
            )  # fmt: skip


@njit(cache=True, nogil=True)
def rasterize_canonical(vertices, canonical_vertices, triangles, texture_alpha, x0, y0, width, height):
    """Draw the canonical ``texture_alpha`` (S, S, 4: RGB + blend weight) onto the frame triangles.

    Returns colour (h, w, 3) and weight (h, w) for the (height, width) box whose top-left is
    (x0, y0); each frame pixel takes the last triangle covering it (no double blending on
    shared edges). Triangles turned away from the viewer (their orientation flips: the far side
    of a turned head) are drawn first, so the near side covers them and they only fill gaps.
    """
    colour = np.zeros((height, width, 3), np.float32)
    weight = np.zeros((height, width), np.float32)
    size = texture_alpha.shape[0]
    for draw_facing in (False, True):
        for triangle in range(triangles.shape[0]):
            _draw_triangle(vertices, canonical_vertices, triangles[triangle], texture_alpha, x0, y0,
                           width, height, size, draw_facing, colour, weight)  # fmt: skip
    return colour, weight


@njit(cache=True, nogil=True)
def blend_into(image, colour, alpha, x0, y0):
    """Blend ``colour`` (h, w, 3) with weights ``alpha`` (h, w) into ``image`` at (x0, y0), in place."""
    height, width = alpha.shape
    for row in range(height):
        y = y0 + row
        if y < 0 or y >= image.shape[0]:
            continue
        for col in range(width):
            x = x0 + col
            weight = alpha[row, col]
            if x < 0 or x >= image.shape[1] or weight <= 0.0:
                continue
            for channel in range(3):
                value = image[y, x, channel] * (1.0 - weight) + colour[row, col, channel] * weight
                image[y, x, channel] = np.uint8(min(max(value + 0.5, 0.0), 255.0))
