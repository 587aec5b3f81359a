"""Faces of stills (unrelated photos): each photo is searched on its own, with the full detector
and a mesh fit per face; no tracking, holds or look-ahead. Every face gets a track id of its
own, never reused, so the replacer sees each face as new."""

from __future__ import annotations

import numpy as np

from dpstream.face_finder import FaceFinder
from dpstream.types import Faces, VideoFrame


class StillFaces:
    """Finds the faces of one photo at a time and numbers them across the whole set."""

    def __init__(self, finder: FaceFinder):
        self.finder = finder
        self._next_id = 0

    def process(self, frame: VideoFrame) -> Faces:
        faces = self.finder.find(frame)
        faces.track_ids = np.arange(self._next_id, self._next_id + len(faces), dtype=np.int64)
        self._next_id += len(faces)
        return faces
