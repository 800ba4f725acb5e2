"""Level analysis of base64 PCM16 mono audio, pure Python (array + math, no numpy or audioop).

Kept apart from the task so it can be tested on generated signals and run on a worker thread
(asyncio.to_thread) without touching the event loop. Levels are dBFS against 32768, so a
full-scale sine reads about -3.01 dBFS RMS and 0 dBFS peak.
"""

from __future__ import annotations

import base64
import binascii
import math
import sys
from array import array
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from operator import mul
from typing import Any

FULL_SCALE = 32768.0
#: Reported for digital silence instead of -inf, which JSON (and the task record) cannot carry.
SILENCE_DBFS = -120.0
#: A 20 ms frame counts as voiced when its RMS is above this level.
VOICED_THRESHOLD_DBFS = -40.0
FRAME_SECONDS = 0.02
#: Longest audio accepted (10 minutes): bounds the memory and CPU one task can take.
MAX_SECONDS = 600.0
MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 192_000


class AudioError(ValueError):
    """The audio cannot be analysed: bad base64, odd byte count, empty, or too long."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AudioAnalysis:
    sample_rate: int
    chunks: int
    bytes: int
    samples: int
    duration_s: float
    rms_dbfs: float
    peak_dbfs: float
    voiced_ratio: float
    frames: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decode_pcm16(chunks: Sequence[str], *, max_bytes: int) -> tuple[array[int], int]:
    """The concatenated samples and their byte count.

    Raises AudioError on invalid base64, more than max_bytes, or an odd total byte count (a
    sample may straddle two chunks, so only the total must be even).
    """
    data = bytearray()
    for index, chunk in enumerate(chunks):
        try:
            data += base64.b64decode(chunk, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise AudioError(f"chunk {index} is not valid base64: {exc}") from None
        if len(data) > max_bytes:
            raise AudioError(f"audio is longer than the {max_bytes}-byte limit")
    if not data:
        raise AudioError("audio is empty")
    if len(data) % 2:
        raise AudioError(f"PCM16 needs an even number of bytes, got {len(data)}")
    samples = array("h")
    samples.frombytes(data)  # straight from the buffer: no bytes() copy of the whole audio
    if sys.byteorder == "big":
        samples.byteswap()  # the wire format is little-endian
    return samples, len(data)


def to_dbfs(level: float) -> float:
    """20·log10(level / full scale), floored at SILENCE_DBFS."""
    if level <= 0:
        return SILENCE_DBFS
    return max(20.0 * math.log10(level / FULL_SCALE), SILENCE_DBFS)


def analyse_pcm16(
    chunks: Sequence[str], *, sample_rate: int = 16_000, max_seconds: float = MAX_SECONDS
) -> AudioAnalysis:
    """Duration, RMS and peak level, and the share of voiced 20 ms frames.

    Raises AudioError for unusable input (see decode_pcm16) or a sample rate outside 8-192 kHz.
    """
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(f"sample rate {sample_rate} Hz is outside 8000-192000 Hz")
    samples, size = decode_pcm16(chunks, max_bytes=int(max_seconds * sample_rate) * 2)
    frame_length = max(int(sample_rate * FRAME_SECONDS), 1)
    # Energy per frame: threshold = mean square a frame must exceed to count as voiced.
    threshold = (FULL_SCALE * 10 ** (VOICED_THRESHOLD_DBFS / 20)) ** 2
    total_energy = 0
    voiced = frames = 0
    for start in range(0, len(samples), frame_length):
        frame = samples[start : start + frame_length]
        energy = sum(map(mul, frame, frame))  # exact: Python ints never overflow
        total_energy += energy
        frames += 1
        if energy / len(frame) > threshold:
            voiced += 1
    count = len(samples)
    peak = max(max(samples), -min(samples))
    return AudioAnalysis(
        sample_rate=sample_rate,
        chunks=len(chunks),
        bytes=size,
        samples=count,
        duration_s=round(count / sample_rate, 6),
        rms_dbfs=round(to_dbfs(math.sqrt(total_energy / count)), 4),
        peak_dbfs=round(to_dbfs(peak), 4),
        voiced_ratio=round(voiced / frames, 4),
        frames=frames,
    )
