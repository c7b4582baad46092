"""Speech synthesis with the espeak-ng command (tests, demos, ``talk2sam-say-to-prompt --say``).

espeak-ng is a Debian/Ubuntu package (``apt-get install espeak-ng``), not a Python one;
:func:`espeak_available` tells whether it is on PATH.
"""
from __future__ import annotations

import io
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np

ESPEAK = "espeak-ng"


def espeak_available() -> bool:
    return shutil.which(ESPEAK) is not None


def read_wav(source: str | Path | bytes) -> tuple[np.ndarray, int]:
    """Mono int16 samples and sample rate of a PCM WAV file (or its bytes).

    8/16/32-bit integer PCM; several channels are averaged.
    """
    fh = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    name = "WAV data" if isinstance(source, bytes) else str(source)
    try:
        with fh, wave.open(fh) as w:
            width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:  # not RIFF/WAVE, float or compressed, truncated
        raise ValueError(f"{name}: not a PCM WAV file ({exc or 'truncated'})") from None
    if width == 1:  # unsigned 8-bit
        x = (np.frombuffer(raw, np.uint8).astype(np.float64) - 128.0) * 256.0
    elif width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.float64)
    elif width == 4:
        x = np.frombuffer(raw, "<i4").astype(np.float64) / 65536.0
    else:
        raise ValueError(f"{name}: {8 * width}-bit samples are not supported (8, 16 or "
                         "32-bit PCM)")
    x = x.reshape(-1, channels).mean(axis=1)
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16), rate


def write_wav(path: str | Path, samples: np.ndarray, rate: int) -> None:
    """Write mono int16 samples as a PCM WAV file."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples, "<i2").tobytes())


def synthesize(text: str, voice: str = "en-us", words_per_minute: int = 160,
               timeout_s: float = 30.0) -> tuple[np.ndarray, int]:
    """Speak `text` with espeak-ng; (mono int16 samples, sample rate) (22050 Hz for espeak).

    voice: an espeak-ng voice, optionally with a variant ("en-us", "en", "en+m3", "en+f3").
    """
    if not espeak_available():
        raise FileNotFoundError(f"{ESPEAK} is not installed (Debian/Ubuntu: apt-get install "
                                f"{ESPEAK})")
    proc = subprocess.run([ESPEAK, "-v", voice, "-s", str(int(words_per_minute)), "--stdout",
                           text], capture_output=True, timeout=timeout_s, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise RuntimeError(f"{ESPEAK} -v {voice} failed: "
                           f"{proc.stderr.decode(errors='replace').strip()}")
    return read_wav(proc.stdout)
