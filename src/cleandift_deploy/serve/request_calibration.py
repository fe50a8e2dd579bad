"""`serve --precision bf16 --calibrate-on-requests N`: the bf16 gate measured on the first N
images users send, for servers that have no calibration folder at hand.

The exact engine answers from the start; once N request images have arrived, the service
measures the gate on them in the background and moves to bf16 only where it passes. The images
are held only until the measurement is taken.
"""

from __future__ import annotations

import threading

import numpy as np


class RequestCalibration:
    """The first `wanted` request images, handed out once, and where the measurement stands."""

    def __init__(self, wanted: int) -> None:
        self.wanted = wanted
        self._images: list[np.ndarray] = []
        self._collected = 0
        self._lock = threading.Lock()
        self.state = "collecting"
        self.outcome: str | None = None

    def add(self, images: list[np.ndarray]) -> list[np.ndarray] | None:
        """Keep images until `wanted` have come; the full set once (at the call that completes
        it), None on every other call."""
        with self._lock:
            if self._collected >= self.wanted:
                return None
            taken = images[: self.wanted - self._collected]
            self._images.extend(np.array(image, copy=True) for image in taken)
            self._collected += len(taken)
            if self._collected < self.wanted:
                return None
            complete, self._images = self._images, []
            self.state = "measuring"
            return complete

    def finish(self, outcome: str, failed: bool = False) -> None:
        """Record what the gate decided (or why it could not measure)."""
        with self._lock:
            self.state = "failed" if failed else "done"
            self.outcome = outcome

    def snapshot(self) -> dict[str, object]:
        """JSON-ready progress for /stats."""
        with self._lock:
            return {
                "wanted": self.wanted,
                "collected": self._collected,
                "state": self.state,
                "outcome": self.outcome,
            }
