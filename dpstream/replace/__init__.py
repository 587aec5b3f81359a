"""Replacement methods: the DP face model (``dp``) and the baselines."""

from __future__ import annotations

from dpstream.config import Config
from dpstream.replace.base import Replacer
from dpstream.replace.region_methods import Blur, DpPix, Mosaic, Solid


def make_replacer(config: Config, stills: bool = False, registry=None) -> Replacer:
    """The replacer named by ``config.method``, set up from the config (``stills``: the frames
    are unrelated photos; ``registry``: a batch run's shared person registry, for dp)."""
    if config.method == "blur":
        return Blur(config.face_margin)
    if config.method == "mosaic":
        return Mosaic(config.face_margin, config.mosaic_cells)
    if config.method == "solid":
        return Solid(config.face_margin)
    if config.method == "dp-pix":
        return DpPix(config.face_margin, config.dppix_cell, config.dppix_m, config.epsilon)
    from dpstream.replace.dp_face import DpFaceReplacer

    return DpFaceReplacer.from_config(config, stills=stills, registry=registry)


__all__ = ["Replacer", "make_replacer"]
