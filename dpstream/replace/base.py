"""What every replacement method provides to the pipeline."""

from __future__ import annotations

from typing import Protocol

from dpstream.types import Faces, ReplacedFrame, VideoFrame


class Replacer(Protocol):
    """Anonymizes the faces of one frame. ``faces.track_ids`` are set by the tracker."""

    name: str
    releases: int  # noisy releases so far (the ledger changes exactly when this does); 0 without DP

    def replace(self, frame: VideoFrame, faces: Faces) -> ReplacedFrame:
        """Return the frame with every face in ``faces`` anonymized (fail-closed on errors)."""
        ...

    def summary(self) -> dict:
        """Figures for the run summary (people, fallbacks, ...); no biometric values."""
        ...

    def ledger(self) -> dict | None:
        """The run's privacy ledger (JSON-ready), or None for methods without a DP guarantee."""
        ...

    def close(self) -> None:
        """End of the run: drop whatever is held in memory (raw embeddings)."""
        ...
