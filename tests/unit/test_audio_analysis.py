"""analyse_pcm16 on generated signals whose levels are known in closed form."""

from __future__ import annotations

import base64
import math
import struct

import pytest

from app.tasks.audio_analysis import SILENCE_DBFS, AudioError, analyse_pcm16


def pcm16(samples: list[int]) -> bytes:
    return struct.pack(f"<{len(samples)}h", *samples)


def sine(seconds: float, amplitude: int = 32767, rate: int = 16_000, hz: float = 440.0) -> bytes:
    count = int(seconds * rate)
    return pcm16([round(amplitude * math.sin(2 * math.pi * hz * i / rate)) for i in range(count)])


def chunks(raw: bytes, size: int = 3200) -> list[str]:
    return [base64.b64encode(raw[i : i + size]).decode() for i in range(0, len(raw), size)]


def test_a_full_scale_sine_is_about_minus_3_dbfs() -> None:
    result = analyse_pcm16(chunks(sine(1.0)))
    assert result.rms_dbfs == pytest.approx(-3.0103, abs=0.01)
    assert result.peak_dbfs == pytest.approx(0.0, abs=0.01)
    assert result.duration_s == 1.0
    assert result.samples == 16_000
    assert result.bytes == 32_000
    assert result.frames == 50
    assert result.voiced_ratio == 1.0


def test_half_amplitude_is_6_db_lower() -> None:
    result = analyse_pcm16(chunks(sine(0.5, amplitude=16384)))
    assert result.rms_dbfs == pytest.approx(-3.0103 - 6.0206, abs=0.01)
    assert result.peak_dbfs == pytest.approx(-6.0206, abs=0.01)


def test_digital_silence_reads_as_the_floor_and_unvoiced() -> None:
    result = analyse_pcm16(chunks(pcm16([0] * 8000)))
    assert result.rms_dbfs == SILENCE_DBFS
    assert result.peak_dbfs == SILENCE_DBFS
    assert result.voiced_ratio == 0.0
    assert result.duration_s == 0.5


def test_voiced_ratio_counts_frames_above_minus_40_dbfs() -> None:
    quiet = sine(0.5, amplitude=100)  # about -53 dBFS: below the threshold
    result = analyse_pcm16(chunks(sine(0.5) + quiet))
    assert result.voiced_ratio == 0.5
    assert result.duration_s == 1.0


def test_a_sample_may_straddle_two_chunks() -> None:
    raw = sine(0.1)
    split = analyse_pcm16([base64.b64encode(raw[:3]).decode(), base64.b64encode(raw[3:]).decode()])
    whole = analyse_pcm16([base64.b64encode(raw).decode()])
    assert {**split.to_dict(), "chunks": 1} == whole.to_dict()


def test_other_sample_rates_change_the_duration() -> None:
    result = analyse_pcm16(chunks(sine(1.0, rate=8000)), sample_rate=8000)
    assert result.duration_s == 1.0
    assert result.frames == 50


@pytest.mark.parametrize(
    ("audio", "message"),
    [
        (["not base64!!"], "base64"),
        ([base64.b64encode(b"\x00\x01\x02").decode()], "even number"),
        ([], "empty"),
        ([""], "empty"),
    ],
)
def test_unusable_audio_is_refused(audio: list[str], message: str) -> None:
    with pytest.raises(AudioError, match=message):
        analyse_pcm16(audio)


def test_too_long_audio_is_refused() -> None:
    with pytest.raises(AudioError, match="limit"):
        analyse_pcm16(chunks(sine(1.0)), max_seconds=0.5)


@pytest.mark.parametrize("rate", [0, 7999, 192_001])
def test_a_sample_rate_outside_8_to_192_khz_is_refused(rate: int) -> None:
    with pytest.raises(AudioError, match="sample rate"):
        analyse_pcm16(chunks(sine(0.1)), sample_rate=rate)
