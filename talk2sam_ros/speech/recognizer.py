"""Offline command recogniser: resampling, voice-activity segmentation, the pocketsphinx backend.

ROS-free; shared by the ``talk2sam_speech`` node and ``talk2sam-say-to-prompt``.

Audio (mono int16 at any rate) -> :class:`StreamResampler` (16 kHz, chunk-size independent)
-> :class:`UtteranceSegmenter` (pocketsphinx's ``Endpointer``, a WebRTC-style VAD, with a
maximum utterance length) -> a recogniser -> :class:`Recognition` (transcript, category,
confidence, accepted/reason). Recognisers (``backend``, built by
:func:`talk2sam_ros.speech.backends.build_recognizer`): Whisper constrained to the vocabulary
(talk2sam_ros.speech.whisper, the default) or :class:`PocketsphinxRecognizer` here
(pocketsphinx 5 with the vocabulary's JSGF grammar, or its open-vocabulary language model).

pocketsphinx confidence (see docs/speech.md): over the words of the hypothesis, the mean
per-frame log likelihood ratio between the decoded path and an unconstrained phone loop
(pocketsphinx's ``allphone`` search over the same audio), ``c = exp(mean_llr /
confidence_scale)`` in (0, 1]. Speech that the grammar explains as well as free phone
recognition does gets c near 1; speech the grammar had to force onto its words
(out-of-grammar) falls far below.
"""
from __future__ import annotations

import logging
import math
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import numpy as np
from scipy.signal import resample_poly

from talk2sam_ros.speech.grammar import (Vocabulary, build_jsgf, clean_words,
                                         dictionary_text, find_category, parse_command,
                                         resolve_pronunciations)

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # what the bundled en-us acoustic model expects
MODES = ("grammar", "open")
BACKENDS = ("whisper", "pocketsphinx")
WHISPER_DEVICES = ("cpu", "cuda", "auto")
# auto = int8 on CPU, float16 on CUDA (ours); the others are CTranslate2 compute types.
WHISPER_COMPUTE_TYPES = ("auto", "int8", "int8_float32", "int8_float16", "float16", "float32",
                         "default")
VAD_MODES = (0, 1, 2, 3)
FRAME_S = 0.01  # pocketsphinx feature frame period (frate 100)


def to_int16(samples: np.ndarray) -> np.ndarray:
    """Round and clip float (or int) samples to int16."""
    return np.clip(np.rint(samples), -32768, 32767).astype(np.int16)


class StreamResampler:
    """Resample a chunked int16 stream to `rate_out`, with output independent of chunking.

    Uses scipy's polyphase ``resample_poly``; samples are released once the filter has seen
    enough input after them (a few ms of latency), so resampling chunk by chunk gives the
    same samples as resampling the whole recording at once (except the last few at flush).
    The up/down factors are the closest fraction with a denominator <= MAX_DOWN: exact for
    every common rate (8, 11.025, 22.05, 44.1, 48, 96, 192 kHz, ...); an odd rate (44101 Hz)
    would otherwise need a ~900k-tap filter (slower than real time) and a second of
    latency, and is instead resampled with a rate error below 0.1 % (44101 Hz: 4 ppm).
    """

    MAX_DOWN = 1000

    def __init__(self, rate_in: int, rate_out: int = SAMPLE_RATE) -> None:
        if rate_in <= 0 or rate_out <= 0:
            raise ValueError(f"sample rates must be positive, got {rate_in} -> {rate_out}")
        ratio = Fraction(rate_out, rate_in).limit_denominator(self.MAX_DOWN)
        self.rate_in, self.rate_out = rate_in, rate_out
        self._up, self._down = ratio.numerator, ratio.denominator
        # resample_poly's filter reaches 10 * max(up, down) upsampled samples each side;
        # keep that much input context (a multiple of `down` so output grids stay aligned).
        reach = math.ceil(10 * max(self._up, self._down) / self._up) + 1
        self._margin = math.ceil(reach / self._down) * self._down
        self._buf = np.zeros(0, np.float64)
        self._start = 0  # absolute input index of _buf[0]; always a multiple of _down
        self._emitted = 0  # absolute output samples released so far

    @property
    def identity(self) -> bool:
        return self._up == self._down == 1

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Feed input samples; returns the output samples that are final (int16)."""
        if self.identity:
            return np.asarray(samples, np.int16)
        self._buf = np.concatenate([self._buf, np.asarray(samples, np.float64)])
        total_in = self._start + len(self._buf)
        ready = (total_in - self._margin) * self._up // self._down  # last final output + 1
        return self._release(ready)

    def flush(self) -> np.ndarray:
        """Release everything left (the tail is filtered as if followed by silence)."""
        if self.identity:
            return np.zeros(0, np.int16)
        total_in = self._start + len(self._buf)
        out = self._release(-(-total_in * self._up // self._down))
        self._buf = np.zeros(0, np.float64)
        self._start, self._emitted = 0, 0
        return out

    def _release(self, ready: int) -> np.ndarray:
        if ready <= self._emitted or len(self._buf) == 0:
            return np.zeros(0, np.int16)
        y = resample_poly(self._buf, self._up, self._down)
        first = self._start * self._up // self._down  # absolute output index of y[0]
        out = y[self._emitted - first:ready - first]
        self._emitted = ready
        # Drop input that no future output sample needs, keeping `margin` of left context.
        keep_from = self._emitted * self._down // self._up - self._margin
        keep_from = max(self._start, keep_from // self._down * self._down)
        self._buf = self._buf[keep_from - self._start:]
        self._start = keep_from
        return to_int16(out)


@dataclass(frozen=True)
class Utterance:
    """One stretch of speech found by the segmenter (16 kHz int16)."""

    samples: np.ndarray
    start_s: float  # stream time of the first sample
    truncated: bool = False  # cut at max_utterance_s

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE


@dataclass(frozen=True)
class SegmenterConfig:
    """Voice-activity segmentation (pocketsphinx Endpointer).

    vad_mode: 0 (loose) .. 3 (strict) WebRTC-style VAD aggressiveness; window_s / ratio:
    a transition needs `ratio` of the last `window_s` to be (non-)speech; max_utterance_s:
    longer speech is cut there and reported as truncated; min_utterance_s: shorter segments
    (clicks, coughs) are dropped.
    """

    vad_mode: int = 0
    window_s: float = 0.3
    ratio: float = 0.9
    max_utterance_s: float = 6.0
    min_utterance_s: float = 0.3

    def __post_init__(self) -> None:
        if self.vad_mode not in VAD_MODES:
            raise ValueError(f"vad_mode={self.vad_mode} is not one of {VAD_MODES}")
        if not 0.05 <= self.window_s <= 2.0:
            raise ValueError(f"vad_window_s={self.window_s} is outside [0.05, 2.0]")
        if not 0.1 <= self.ratio < 1.0:
            raise ValueError(f"vad_ratio={self.ratio} is outside [0.1, 1.0)")
        if not 0.0 <= self.min_utterance_s < self.max_utterance_s:
            raise ValueError(f"need 0 <= min_utterance_s ({self.min_utterance_s}) < "
                             f"max_utterance_s ({self.max_utterance_s})")


class UtteranceSegmenter:
    """Split a 16 kHz int16 stream into utterances with pocketsphinx's ``Endpointer``."""

    def __init__(self, config: SegmenterConfig = SegmenterConfig()) -> None:
        from pocketsphinx import Endpointer

        self.config = config
        self._ep = Endpointer(window=config.window_s, ratio=config.ratio,
                              vad_mode=config.vad_mode, sample_rate=SAMPLE_RATE)
        self._frame = self._ep.frame_bytes // 2
        self._pending = np.zeros(0, np.int16)  # input not yet a whole VAD frame
        self._speech: list[np.ndarray] = []
        self._speech_len = 0
        self._start_s = 0.0
        self._skipping = False  # inside speech that already exceeded max_utterance_s

    @property
    def in_speech(self) -> bool:
        return bool(self._ep.in_speech)

    def push(self, samples: np.ndarray) -> list[Utterance]:
        """Feed 16 kHz int16 samples; returns the utterances completed by them."""
        data = np.concatenate([self._pending, np.asarray(samples, np.int16)])
        n_full = len(data) // self._frame * self._frame
        self._pending = data[n_full:]
        out: list[Utterance] = []
        for i in range(0, n_full, self._frame):
            speech = self._ep.process(data[i:i + self._frame].tobytes())
            self._collect(speech, out)
        return out

    def flush(self) -> list[Utterance]:
        """End of stream (or a long gap in it): close the current utterance, if any."""
        out: list[Utterance] = []
        if self._ep.in_speech:
            # end_stream() fails on an empty final frame (IndexError) and would lose the
            # utterance: give it one silent sample when the stream ended on a frame boundary.
            tail = self._pending if len(self._pending) else np.zeros(1, np.int16)
            self._collect(self._ep.end_stream(tail.tobytes()), out, final=True)
        self._pending = np.zeros(0, np.int16)
        self._speech, self._speech_len, self._skipping = [], 0, False
        return out

    def _collect(self, speech: bytes | None, out: list[Utterance], final: bool = False) -> None:
        if speech is not None:
            if not self._speech and not self._skipping:
                self._start_s = float(self._ep.speech_start)
            if not self._skipping:
                chunk = np.frombuffer(speech, np.int16)
                self._speech.append(chunk)
                self._speech_len += len(chunk)
        ended = final or not self._ep.in_speech
        too_long = self._speech_len >= self.config.max_utterance_s * SAMPLE_RATE
        if (ended or too_long) and self._speech:
            samples = np.concatenate(self._speech)
            if too_long or len(samples) >= self.config.min_utterance_s * SAMPLE_RATE:
                out.append(Utterance(samples, self._start_s, truncated=too_long))
            self._speech, self._speech_len = [], 0
            # The rest of an over-long utterance is dropped, not taken as a new command.
            self._skipping = too_long and not ended
        elif ended:
            self._skipping = False


@dataclass(frozen=True)
class RecognizerConfig:
    """Decoder settings.

    backend: whisper (faster-whisper constrained to the vocabulary, the default) or
    pocketsphinx (the light fallback). mode: grammar (commands of the vocabulary only, the
    default) or open (any English, the category searched in the text; for comparison and
    vocabulary tuning). min_confidence: utterances below it are rejected.

    Whisper: whisper_model ("" = the bundled tiny.en, a faster-whisper model name, or a model
    folder), whisper_device, whisper_compute_type (auto = int8 on CPU, float16 on CUDA),
    whisper_cpu_threads (0 = min(4, CPU count)), whisper_confidence_scale (confidence =
    exp(llr / scale), see talk2sam_ros.speech.whisper).

    pocketsphinx: confidence_scale: see the module docstring. dither: standard deviation (in
    int16 steps) of a noise floor added before decoding; digitally silent input (TTS,
    muted/gated microphones) otherwise breaks the decoder's log-energy features. model_dir /
    dictionary: acoustic model and pronunciation dictionary ("" = pocketsphinx's bundled
    en-us ones).
    """

    backend: str = "whisper"
    mode: str = "grammar"
    min_confidence: float = 0.5
    whisper_model: str = ""
    whisper_device: str = "cpu"
    whisper_compute_type: str = "auto"
    whisper_cpu_threads: int = 0
    # Chosen on the evaluation set (docs/speech.md): min_confidence 0.5 <=> llr -13.9 nats.
    whisper_confidence_scale: float = 20.0
    # Tuned on espeak-ng speech (docs/speech.md): min_confidence 0.5 <=> mean LLR -4.16/frame.
    confidence_scale: float = 6.0
    dither: float = 16.0
    model_dir: str = ""
    dictionary: str = ""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.whisper_device not in WHISPER_DEVICES:
            raise ValueError(f"whisper_device={self.whisper_device!r} is not one of "
                             f"{', '.join(WHISPER_DEVICES)}")
        if self.whisper_compute_type not in WHISPER_COMPUTE_TYPES:
            raise ValueError(f"whisper_compute_type={self.whisper_compute_type!r} is not one "
                             f"of {', '.join(WHISPER_COMPUTE_TYPES)}")
        if not 0 <= self.whisper_cpu_threads <= 256:
            raise ValueError(f"whisper_cpu_threads={self.whisper_cpu_threads} is outside "
                             "[0, 256]")
        if not self.whisper_confidence_scale > 0.0:
            raise ValueError(f"whisper_confidence_scale={self.whisper_confidence_scale} must "
                             "be > 0")
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r} is not one of {', '.join(MODES)}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence={self.min_confidence} is outside [0, 1]")
        if not self.confidence_scale > 0.0:
            raise ValueError(f"confidence_scale={self.confidence_scale} must be > 0")
        if not 0.0 <= self.dither <= 1000.0:
            raise ValueError(f"dither={self.dither} is outside [0, 1000]")


@dataclass(frozen=True)
class Recognition:
    """What the recogniser made of one utterance (mirrors talk2sam_ros/SpeechCategory)."""

    transcript: str
    category: str  # "" when rejected
    confidence: float
    words: tuple[str, ...]  # hypothesis words that are in the vocabulary
    accepted: bool
    reason: str  # "" when accepted
    duration_s: float
    start_s: float = 0.0
    candidate: str = ""  # the category the hypothesis would give, even when rejected
    # Every category the recogniser chose among, best first (Whisper's rescored candidates;
    # the evaluation's oracle: how often the right one was there at all).
    alternatives: tuple[str, ...] = ()


class ModelError(RuntimeError):
    """A recogniser's model is missing, corrupt or cannot be loaded (one-line message)."""


class UnavailableRecognizer:
    """Stands in when the backend's model could not be loaded (the node stays up and says
    why): every utterance is rejected with that reason."""

    def __init__(self, vocab: Vocabulary, config: RecognizerConfig, problem: str) -> None:
        self.vocab, self.config, self.problem = vocab, config, problem

    def recognize(self, utterance: Utterance | np.ndarray) -> Recognition:
        duration = len(getattr(utterance, "samples", utterance)) / SAMPLE_RATE
        return Recognition("", "", 0.0, (), False, f"no recogniser: {self.problem}",
                           duration, getattr(utterance, "start_s", 0.0))


@dataclass
class _Decoded:
    text: str
    segments: list = field(default_factory=list)  # pocketsphinx Segments, fillers included


def _model_paths(config: RecognizerConfig) -> tuple[str, str]:
    from pocketsphinx import get_model_path

    hmm = config.model_dir or get_model_path("en-us/en-us")
    phone_lm = str(Path(get_model_path("en-us")) / "en-us-phone.lm.bin")
    return hmm, phone_lm


def _ln_score(value: float) -> float:
    """pocketsphinx reports acoustic scores as probabilities; back to natural log
    (an underflowed 0.0, possible for words over ~1 s, counts as the smallest double)."""
    return math.log(max(value, 5e-324))


class PocketsphinxRecognizer:
    """pocketsphinx decoder for one vocabulary; ``recognize(utterance)`` -> Recognition.

    Raises UnknownWordsError (from the pronunciation check) for words without pronunciation.
    """

    def __init__(self, vocab: Vocabulary, config: RecognizerConfig = RecognizerConfig()
                 ) -> None:
        from pocketsphinx import Decoder

        self.vocab, self.config = vocab, config
        self.pronunciations = resolve_pronunciations(vocab, config.dictionary or None)
        self.jsgf = build_jsgf(vocab)
        hmm, phone_lm = _model_paths(config)
        quiet = {"loglevel": "FATAL"}
        with tempfile.TemporaryDirectory(prefix="talk2sam_speech_") as tmp:
            small_dict = Path(tmp) / "vocabulary.dict"
            small_dict.write_text(dictionary_text(self.pronunciations), encoding="utf-8")
            if config.mode == "grammar":
                self._decoder = Decoder(hmm=hmm, dict=str(small_dict), lm=None, **quiet)
                self._decoder.add_jsgf_string("command", self.jsgf)
                self._decoder.activate_search("command")
            else:
                kwargs = {"dict": config.dictionary} if config.dictionary else {}
                self._decoder = Decoder(hmm=hmm, **kwargs, **quiet)
                for word, prons in self.pronunciations.items():
                    if word in vocab.pronunciations:
                        self._decoder.add_word(word, prons[0], update=True)
            # Reference for the confidence: free phone recognition of the same audio.
            self._phone_loop = Decoder(hmm=hmm, dict=str(small_dict), lm=None,
                                       allphone=phone_lm, bestpath=False, **quiet)

    def recognize(self, utterance: Utterance | np.ndarray) -> Recognition:
        """Decode one utterance (16 kHz int16); never raises for odd audio."""
        if not isinstance(utterance, Utterance):
            utterance = Utterance(np.asarray(utterance, np.int16), 0.0)
        duration = utterance.duration_s
        base = {"duration_s": duration, "start_s": utterance.start_s}
        if utterance.truncated:
            return Recognition("", "", 0.0, (), False, "utterance longer than "
                               f"max_utterance_s ({duration:.1f} s), not a command", **base)
        audio = self._dithered(utterance.samples)
        decoded = self._decode(self._decoder, audio)
        words = clean_words(decoded.text)
        vocab_words = set(self.vocab.words)
        matched = tuple(w for w in words if w in vocab_words)
        if self.config.mode == "grammar":
            parsed = parse_command(words, self.vocab)
        else:
            parsed = find_category(words, self.vocab)
        text = " ".join(words)
        if not words:
            return Recognition("", "", 0.0, (), False, "nothing recognised", **base)
        if parsed is None:
            why = "not a complete command" if self.config.mode == "grammar" else "no object"
            return Recognition(text, "", 0.0, matched, False,
                               f"out of grammar ({why}): {text!r}", **base)
        confidence = self._confidence(audio, decoded)
        accepted = confidence >= self.config.min_confidence
        reason = "" if accepted else (f"low confidence {confidence:.2f} < min_confidence "
                                      f"{self.config.min_confidence:.2f}: {text!r}")
        return Recognition(text, parsed.category if accepted else "", confidence, matched,
                           accepted, reason, candidate=parsed.category, **base)

    def _dithered(self, samples: np.ndarray) -> np.ndarray:
        samples = np.asarray(samples, np.int16)
        if self.config.dither <= 0:
            return samples
        # Seeded by the audio itself: the same utterance always gets the same decision,
        # whatever was decoded before (node, CLI and tests agree).
        rng = np.random.default_rng([self.config.seed, zlib.crc32(samples.tobytes())])
        noise = rng.normal(0.0, self.config.dither, len(samples))
        return to_int16(np.asarray(samples, np.float64) + noise)

    @staticmethod
    def _decode(decoder, audio: np.ndarray) -> _Decoded:
        decoder.start_utt()
        decoder.process_raw(audio.tobytes(), full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        if hyp is None:
            return _Decoded("")
        return _Decoded(hyp.hypstr, list(decoder.seg()))

    def _confidence(self, audio: np.ndarray, decoded: _Decoded) -> float:
        """exp(mean per-frame log-likelihood ratio, decoded words vs phone loop, over the
        hypothesis' words (fillers and silence excluded) / confidence_scale)."""
        loop = self._decode(self._phone_loop, audio).segments
        spans = [s for s in decoded.segments if clean_words(s.word)]
        if not spans or not loop:
            return 0.0
        llr, frames = 0.0, 0
        for seg in spans:
            start, end = seg.start_frame, seg.end_frame
            llr += _ln_score(seg.ascore) - _score_in(loop, start, end)
            frames += end - start + 1
        return float(min(1.0, math.exp(llr / frames / self.config.confidence_scale)))


def _score_in(loop: list, start: int, end: int) -> float:
    """Phone-loop log score of frames [start, end], splitting phones by overlap."""
    total = 0.0
    for seg in loop:
        overlap = min(end, seg.end_frame) - max(start, seg.start_frame) + 1
        if overlap > 0:
            total += _ln_score(seg.ascore) * overlap / (seg.end_frame - seg.start_frame + 1)
    return total


class Recognizer(Protocol):
    """What the pipeline needs of a backend (PocketsphinxRecognizer, WhisperRecognizer)."""

    vocab: Vocabulary
    config: RecognizerConfig

    def recognize(self, utterance: Utterance | np.ndarray) -> Recognition: ...


class SpeechPipeline:
    """Resampler + segmenter + recogniser for one audio stream (used by node and CLI)."""

    def __init__(self, recognizer: Recognizer,
                 segmenter: SegmenterConfig = SegmenterConfig()) -> None:
        self.recognizer = recognizer
        self.segmenter = UtteranceSegmenter(segmenter)
        self._resampler: StreamResampler | None = None

    @property
    def in_speech(self) -> bool:
        return self.segmenter.in_speech

    def push(self, samples: np.ndarray, sample_rate: int) -> list[Recognition]:
        """Feed a chunk of mono int16 audio at `sample_rate`; recognitions it completed."""
        utterances: list[Utterance] = []
        if self._resampler is None or self._resampler.rate_in != sample_rate:
            if self._resampler is not None:
                log.info("sample rate changed %d -> %d Hz", self._resampler.rate_in,
                         sample_rate)
                # The old rate's tail may complete an utterance: decode it, do not drop it.
                utterances += self.segmenter.push(self._resampler.flush())
            self._resampler = StreamResampler(sample_rate)
        utterances += self.segmenter.push(self._resampler.push(samples))
        return self._decode(utterances)

    def flush(self) -> list[Recognition]:
        """End of stream or a gap: resampler tail and the open utterance are processed."""
        utterances = []
        if self._resampler is not None:
            utterances += self.segmenter.push(self._resampler.flush())
        utterances += self.segmenter.flush()
        return self._decode(utterances)

    def _decode(self, utterances: list[Utterance]) -> list[Recognition]:
        return [self.recognizer.recognize(u) for u in utterances]

    def run(self, samples: np.ndarray, sample_rate: int, chunk_s: float = 0.1
            ) -> Iterator[Recognition]:
        """Recognitions of a whole recording, fed in `chunk_s` pieces as a stream would be."""
        step = max(1, int(chunk_s * sample_rate))
        for i in range(0, len(samples), step):
            yield from self.push(samples[i:i + step], sample_rate)
        yield from self.flush()
