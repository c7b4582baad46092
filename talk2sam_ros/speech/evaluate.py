"""Accuracy, rejection and latency of the speech front end on espeak-ng speech, per backend.

    python -m talk2sam_ros.speech.evaluate                    # the tables in docs/speech.md
    python -m talk2sam_ros.speech.evaluate --systems whisper --noises clean --voices 2
    python -m talk2sam_ros.speech.evaluate --json

ROS-free; the node tests (test/test_speech_node.py) use the same spoken set and scoring but
feed the audio through the real node over DDS. The set: COMMANDS (multi-word objects, one and
two adjectives, "please") spoken by 3 espeak-ng voices (US, British, US female) at 2 speeds,
with a microphone-like noise floor, clean and with white or babble noise at SNR_DB; and a
rejection set (out-of-grammar sentences, silence, noises). Each item is streamed in 0.1-s
chunks through the node's pipeline (resampling 22.05 -> 16 kHz, endpointing, decoding).

Latency = end of speech -> category: the audio the endpointer needs after the last word
(stream time) + the wall time of the push() that returned the result. It is what a
real-time stream sees when decoding keeps up; measured on whatever else the CPU runs.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from talk2sam_ros.speech.grammar import Vocabulary, find_category, word_errors
from talk2sam_ros.speech.recognizer import Recognition, RecognizerConfig, to_int16

VOICE_NAMES = ("en-us", "en-gb", "en-us+f3")  # espeak-ng: US, British, US female
SPEEDS = (140, 175)  # words per minute (espeak's default is 175; people say ~150)
# Every (voice, speed), speeds alternating so that 3 consecutive items cover all voices.
VOICES: tuple[tuple[str, int], ...] = tuple((v, s) for s in SPEEDS for v in VOICE_NAMES)
COMMANDS: tuple[str, ...] = (
    "pick up the black cable", "grab the red wire", "find the garden hose",
    "segment the blue hose", "show me the yellow rope", "take the thin white cord",
    "grasp the chain", "locate the green fence", "get the long orange pipe",
    "highlight the brown branch", "please pick up the thick grey rope",
    "find the loose power cable", "grab the black extension cord",
    "point at the thin metal rod", "take the red rubber tube", "segment the tangled string",
    "pick up the purple ribbon", "grasp the short silver chain", "find the plastic strap",
    "get the electric wire")
OUT_OF_GRAMMAR: tuple[str, ...] = (
    "where is my coffee cup", "please close the door", "the robot is very fast",
    "can you help me", "it is a sunny day", "play some music", "what time is it",
    "turn off the lights", "i like red apples", "the cable guy is late",
    "open the window please", "how are you today", "move the table to the left",
    "send me the report")
# Unrelated sentences spoken together (6 talkers): the babble noise.
BABBLE = (("the weather was cold and windy all week", "en-us"),
          ("she sold the old car to her neighbour last spring", "en-gb"),
          ("we will meet at the station after lunch", "en-us+f3"),
          ("numbers and letters were written on the board", "en-gb+m3"),
          ("my brother plays football every saturday", "en-us+f2"),
          ("the meeting has been moved to thursday morning", "en-gb-scotland"))
NOISES = ("clean", "white", "babble")
SNR_DB = 10.0
NOISE_FLOOR = 20.0  # int16 std. dev. of the added background noise (about -64 dBFS)
CHUNK_S = 0.1


@dataclass(frozen=True)
class SpokenItem:
    text: str  # "" for the rejection set's silence and noise
    voice: str
    wpm: int
    samples: np.ndarray  # int16, with silence (noise floor) before and after
    rate: int
    speech_end_s: float = 0.0  # stream time of the end of the words


def babble_noise(seed: int = 0) -> tuple[np.ndarray, int]:
    """Six espeak-ng talkers at equal power, summed (float, 22.05 kHz), looped to 12 s."""
    from talk2sam_ros.speech.synth import synthesize

    parts, rate = [], 22050
    for text, voice in BABBLE:
        x, rate = synthesize(text, voice, 160)
        x = x.astype(np.float64)
        parts.append(x / np.sqrt(np.mean(x ** 2)))
    rng = np.random.default_rng(seed)
    n = 12 * rate
    # Each talker loops from its own random offset, so the babble never goes quiet.
    return np.sum([np.roll(np.resize(p, n), int(rng.integers(n))) for p in parts], axis=0), rate


def add_noise(x: np.ndarray, speech_power: float, kind: str, snr_db: float,
              rng: np.random.Generator, babble: np.ndarray | None = None) -> np.ndarray:
    """x + noise of `kind` (clean / white / babble) at `snr_db` below `speech_power`."""
    if kind == "clean":
        return x
    if kind == "white":
        noise = rng.normal(0.0, 1.0, len(x))
    elif kind == "babble":
        if babble is None:
            raise ValueError("babble noise needs the babble signal")
        start = int(rng.integers(len(babble)))
        noise = np.resize(np.roll(babble, -start), len(x))
    else:
        raise ValueError(f"noise {kind!r} is not one of {', '.join(NOISES)}")
    noise *= np.sqrt(speech_power / 10 ** (snr_db / 10) / np.mean(noise ** 2))
    return x + noise


def spoken_set(texts: Sequence[str], voices_per_text: int = 3, lead_s: float = 0.6,
               tail_s: float = 0.8, noise_std: float = NOISE_FLOOR, seed: int = 0,
               noise: str = "clean", snr_db: float = SNR_DB,
               babble: np.ndarray | None = None) -> list[SpokenItem]:
    """Each text in `voices_per_text` of VOICES (rotating, so every voice is used), with a
    noise floor and optionally white/babble noise at `snr_db` (relative to the words)."""
    from talk2sam_ros.speech.synth import synthesize

    if noise == "babble" and babble is None:
        babble = babble_noise(seed)[0]
    rng = np.random.default_rng(seed)
    items = []
    for i, text in enumerate(texts):
        for k in range(voices_per_text):
            voice, wpm = VOICES[(i + k) % len(VOICES)]
            speech, rate = synthesize(text, voice, wpm)
            speech = speech.astype(np.float64)
            lead = int(lead_s * rate)
            x = np.concatenate([np.zeros(lead), speech, np.zeros(int(tail_s * rate))])
            x = add_noise(x, float(np.mean(speech ** 2)), noise, snr_db, rng, babble)
            x += rng.normal(0.0, noise_std, len(x))
            items.append(SpokenItem(text, voice, wpm, to_int16(x), rate,
                                    (lead + len(speech)) / rate))
    return items


def rejection_set(seed: int = 1, babble: np.ndarray | None = None) -> list[SpokenItem]:
    """OUT_OF_GRAMMAR in two voices, plus silence and noises (text ""; 16 kHz; babble:
    babble_noise() resampled to 16 kHz)."""
    items = spoken_set(OUT_OF_GRAMMAR, 2, seed=seed)
    rng = np.random.default_rng(seed)
    rate = 16000
    quiet = rng.normal(0.0, NOISE_FLOOR, rate)
    if babble is None:
        from scipy.signal import resample_poly

        babble, babble_rate = babble_noise(seed)
        babble = resample_poly(babble, rate, babble_rate)
    t = np.arange(2 * rate) / rate
    sounds = {
        "silence": rng.normal(0.0, NOISE_FLOOR, 2 * rate),
        "white noise": rng.normal(0.0, 3000.0, 2 * rate),
        "crackle": rng.normal(0.0, 1000.0, 2 * rate) * (rng.random(2 * rate) < 0.05),
        "hum": 4000 * np.sin(2 * np.pi * 120 * t) + rng.normal(0.0, 200.0, 2 * rate),
        "babble": 1500 * babble[:2 * rate] / np.sqrt(np.mean(babble[:2 * rate] ** 2)),
    }
    for name, sound in sounds.items():
        items.append(SpokenItem("", name, 0, to_int16(np.concatenate([quiet, sound, quiet])),
                                rate))
    return items


@dataclass(frozen=True)
class Score:
    """Category accuracy over a set of utterances."""

    n: int
    word_accuracy: float  # 1 - word errors / reference words (floored at 0)
    exact: float  # share of utterances whose category is exactly right
    correct: tuple[bool, ...]  # per utterance, exact
    word_errors: tuple[int, ...]  # per utterance


def reference_category(text: str, vocab: Vocabulary) -> str:
    parsed = find_category(text.split(), vocab)
    if parsed is None:
        raise ValueError(f"{text!r} has no object of the vocabulary")
    return parsed.category


def score(texts: Sequence[str], categories: Sequence[str], vocab: Vocabulary) -> Score:
    """Compare hypothesised categories ("" = nothing published) with the texts' categories."""
    if len(texts) != len(categories):
        raise ValueError(f"{len(texts)} texts but {len(categories)} hypotheses")
    refs = [reference_category(t, vocab).split() for t in texts]
    errors = tuple(word_errors(r, c.split()) for r, c in zip(refs, categories))
    total = sum(len(r) for r in refs)
    correct = tuple(e == 0 for e in errors)
    return Score(len(texts), max(0.0, 1.0 - sum(errors) / max(total, 1)),
                 sum(correct) / max(len(texts), 1), correct, errors)


def chance_exact(vocab: Vocabulary) -> float:
    """Exact-category accuracy of guessing uniformly among the grammar's categories."""
    return 1.0 / vocab.n_categories


@dataclass
class Decoded:
    """What a recogniser made of a set of items (one entry per item)."""

    published: list[str] = field(default_factory=list)  # accepted categories, joined
    candidates: list[str] = field(default_factory=list)  # categories before rejection
    results: list[list[Recognition]] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)  # per accepted utterance


def decode(items: Sequence[SpokenItem], recognizer) -> Decoded:
    """Stream each item through a fresh pipeline, in CHUNK_S pieces, timing the results."""
    from talk2sam_ros.speech.recognizer import SpeechPipeline

    out = Decoded()
    for item in items:
        pipeline = SpeechPipeline(recognizer)
        step = max(1, int(CHUNK_S * item.rate))
        results: list[Recognition] = []
        for i in range(0, len(item.samples) + step, step):
            t0 = time.perf_counter()
            chunk = item.samples[i:i + step]
            new = pipeline.push(chunk, item.rate) if len(chunk) else pipeline.flush()
            wall = time.perf_counter() - t0
            stream_s = min(i + step, len(item.samples)) / item.rate
            for r in new:
                if r.accepted and item.speech_end_s:
                    out.latencies_s.append(max(0.0, stream_s - item.speech_end_s) + wall)
            results += new
        out.results.append(results)
        out.published.append(" ".join(r.category for r in results if r.accepted))
        out.candidates.append(" ".join(r.candidate for r in results if r.candidate))
    return out


def decode_items(items: Sequence[SpokenItem], vocab: Vocabulary, mode: str,
                 backend: str = "pocketsphinx") -> tuple[list[str], list[str]]:
    """Categories per item through the in-process pipeline: (published, candidates)."""
    from talk2sam_ros.speech.backends import build_recognizer

    decoded = decode(items, build_recognizer(vocab, RecognizerConfig(backend=backend,
                                                                     mode=mode)))
    return decoded.published, decoded.candidates


# Earlier defaults, for comparison in the same run: the third round's (one encoding, phone
# distance in the choice, no length bonus), the second round's (the decoder's score alone
# chooses), the first round's (candidates by spelling, the confidence over the whole
# sentence).
_THIRD = {"shifts": (0,), "phone_weight": 0.5, "length_bonus": 0.0, "margin_cap": 10.0}
_SECOND = {**_THIRD, "phone_weight": 0.0, "vote_weight": 0.0, "margin_weight": 0.0}
# name -> (recogniser config, Whisper decode settings or None for the defaults): the rows of
# the tables.
SYSTEMS: dict[str, tuple[RecognizerConfig, dict | None]] = {
    "whisper": (RecognizerConfig(), None),
    "whisper-two": (RecognizerConfig(), {**_THIRD, "shifts": (0, 80)}),
    "whisper-one": (RecognizerConfig(), _THIRD),
    "whisper-forced": (RecognizerConfig(), _SECOND),
    "whisper-spelling": (RecognizerConfig(), {**_SECOND, "by_sound": False,
                                              "verb_weight": 1.0}),
    "whisper-nearest": (RecognizerConfig(), {**_THIRD, "rescore": False}),
    "whisper-open": (RecognizerConfig(mode="open"), None),
    "pocketsphinx": (RecognizerConfig(backend="pocketsphinx"), None),
    "pocketsphinx-open": (RecognizerConfig(backend="pocketsphinx", mode="open"), None),
}
DESCRIPTIONS = {
    "whisper": "whisper, constrained (two encodings, prompt + n-best + candidates by sound "
               "+ decoder rescoring + votes and length bonus; default)",
    "whisper-two": "whisper, two encodings, third round's choice (phone distance and votes, "
                   "no length bonus)",
    "whisper-one": "whisper, third round (one encoding, phone distance and votes)",
    "whisper-forced": "whisper, second round (the decoder's score alone chooses)",
    "whisper-spelling": "whisper, first round (candidates by spelling, whole-sentence "
                        "confidence)",
    "whisper-nearest": "whisper, prompt + nearest command by sound (no rescoring)",
    "whisper-open": "whisper, open vocabulary (category found in the text)",
    "pocketsphinx": "pocketsphinx grammar",
    "pocketsphinx-open": "pocketsphinx open vocabulary",
}


def oracle(items: Sequence[SpokenItem], decoded: Decoded, vocab: Vocabulary) -> dict:
    """Upper bounds of the candidate choice: the share of items whose chosen candidate is
    right before any rejection (min_confidence 0), and whose right category is among the
    categories the recogniser chose from (a perfect choice; 0 for a backend without
    alternatives)."""
    refs = [reference_category(i.text, vocab) for i in items]
    chosen = sum(c == ref for ref, c in zip(refs, decoded.candidates))
    among = sum(any(ref in r.alternatives for r in results)
                for ref, results in zip(refs, decoded.results))
    return {"chosen_right": chosen / len(items), "among_candidates": among / len(items)}


def build_system(name: str, vocab: Vocabulary):
    from talk2sam_ros.speech.backends import build_recognizer

    config, settings = SYSTEMS[name]
    if settings is None:
        return build_recognizer(vocab, config)
    from talk2sam_ros.speech.whisper import DecodeSettings, WhisperRecognizer

    return WhisperRecognizer(vocab, config, DecodeSettings(**settings))


def evaluate(systems: Sequence[str], noises: Sequence[str], voices_per_text: int,
             vocab: Vocabulary, log=print) -> dict:
    """Accuracy per system and noise, rejection and latency: the report `main` prints."""
    babble = babble_noise(0)[0] if "babble" in noises else None
    sets = {noise: spoken_set(COMMANDS, voices_per_text, noise=noise, babble=babble)
            for noise in noises}
    rejection = rejection_set()  # its own babble (another seed): not the commands' noise
    report: dict = {"utterances_per_noise": len(sets[noises[0]]), "snr_db": SNR_DB,
                    "rejection_items": len(rejection), "cpu_count": os.cpu_count(),
                    "load_average": os.getloadavg()[0], "chance_exact": chance_exact(vocab),
                    "systems": {}}
    for name in systems:
        t0 = time.perf_counter()
        recognizer = build_system(name, vocab)
        row: dict = {"start_s": time.perf_counter() - t0}
        latencies = []
        for noise, items in sets.items():
            decoded = decode(items, recognizer)
            s = score([i.text for i in items], decoded.published, vocab)
            row.setdefault("confidences", {})[noise] = [
                [r.confidence, r.candidate == reference_category(i.text, vocab)]
                for i, results in zip(items, decoded.results) for r in results]
            # The endpointer is the same for every backend: one utterance per command?
            single = sum(len(r) == 1 for r in decoded.results) / len(items)
            row[noise] = {"word_accuracy": s.word_accuracy, "exact": s.exact,
                          "one_utterance": single, **oracle(items, decoded, vocab)}
            if noise == "clean":
                latencies = decoded.latencies_s
                row["errors"] = [(i.text, i.voice, i.wpm, p) for i, p, ok in
                                 zip(items, decoded.published, s.correct) if not ok]
            log(f"{name} {noise}: exact {s.exact:.3f}, word accuracy {s.word_accuracy:.3f}")
        rejected = decode(rejection, recognizer)
        row["confidences"]["rejection"] = [[r.confidence, False] for results in
                                           rejected.results for r in results if r.candidate]
        row["rejection_published"] = [(i.text or i.voice, p) for i, p in
                                      zip(rejection, rejected.published) if p]
        if latencies:
            row["latency_median_s"] = float(np.median(latencies))
            row["latency_p90_s"] = float(np.percentile(latencies, 90))
        report["systems"][name] = row
    return report


THRESHOLDS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def threshold_sweep(row: dict, thresholds: Sequence[float] = THRESHOLDS) -> list[str]:
    """Markdown rows: per min_confidence, commands published right / wrong per noise and
    rejection-set utterances published (from the recorded confidences)."""
    conf = row["confidences"]
    noises = [n for n in NOISES if n in conf]
    lines = ["| min_confidence | " + " | ".join(f"{n}: right / wrong" for n in noises)
             + " | rejection set published |", "|---" * (len(noises) + 2) + "|"]
    for t in thresholds:
        cells = []
        for n in noises:
            right = sum(c >= t and ok for c, ok in conf[n])
            wrong = sum(c >= t and not ok for c, ok in conf[n])
            cells.append(f"{right} / {wrong}")
        published = sum(c >= t for c, _ in conf.get("rejection", []))
        lines.append(f"| {t:.2f} | {' | '.join(cells)} | {published} |")
    return lines


def markdown(report: dict) -> str:
    noises = [n for n in NOISES if any(n in r for r in report["systems"].values())]
    snr = f" {report['snr_db']:g} dB"
    head = " | ".join(f"{n}{'' if n == 'clean' else snr}: exact / word acc. (%)"
                      for n in noises)
    lines = [f"| system | {head} | rejection set published (of {report['rejection_items']}) "
             "| latency median / p90 (s) |",
             "|---" * (len(noises) + 3) + "|"]
    for name, row in report["systems"].items():
        cells = [f"{100 * row[n]['exact']:.1f} / {100 * row[n]['word_accuracy']:.1f}"
                 for n in noises]
        latency = (f"{row['latency_median_s']:.2f} / {row['latency_p90_s']:.2f}"
                   if "latency_median_s" in row else "-")
        lines.append(f"| {DESCRIPTIONS[name]} | {' | '.join(cells)} | "
                     f"{len(row['rejection_published'])} | {latency} |")
    lines.append(f"\n{report['utterances_per_noise']} commands per condition; chance "
                 f"(uniform over the categories) {100 * report['chance_exact']:.4f} % exact; "
                 f"{report['cpu_count']} CPUs, load average {report['load_average']:.1f} at "
                 "the start.")
    for name, row in report["systems"].items():
        if any(row[n]["among_candidates"] for n in noises):
            lines.append(f"{name}: right category chosen before rejection / among the "
                         "candidates (perfect choice): " + ", ".join(
                             f"{n} {100 * row[n]['chosen_right']:.1f} / "
                             f"{100 * row[n]['among_candidates']:.1f} %" for n in noises))
    first = next(iter(report["systems"].values()))
    lines.append("endpointer, one utterance per command: " + ", ".join(
        f"{n} {100 * first[n]['one_utterance']:.1f} %" for n in noises if n in first))
    for name, row in report["systems"].items():
        if row["rejection_published"]:
            lines.append(f"{name}: rejection set published {row['rejection_published']}")
    for name, row in report["systems"].items():
        if "confidences" in row:
            lines += [f"\n{DESCRIPTIONS[name]}: confidence threshold sweep (utterances)", "",
                      *threshold_sweep(row)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    from talk2sam_ros.speech.grammar import default_vocabulary_path, load_vocabulary

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocabulary", default="", help="vocabulary YAML (default: the package's)")
    p.add_argument("--systems", default="whisper,pocketsphinx,whisper-open",
                   help=f"comma-separated, of: {', '.join(SYSTEMS)}")
    p.add_argument("--noises", default=",".join(NOISES), help=f"of: {', '.join(NOISES)}")
    p.add_argument("--voices", type=int, default=len(VOICES),
                   help=f"voice/speed pairs per command (1..{len(VOICES)})")
    p.add_argument("--json", action="store_true", help="the whole report as JSON")
    args = p.parse_args(argv)
    systems = [s for s in args.systems.split(",") if s]
    noises = [n for n in args.noises.split(",") if n]
    bad = [s for s in systems if s not in SYSTEMS] + [n for n in noises if n not in NOISES]
    if bad or not systems or not noises or not 1 <= args.voices <= len(VOICES):
        p.error(f"unknown or missing systems/noises {bad}, or --voices outside 1..{len(VOICES)}")
    vocab = load_vocabulary(args.vocabulary or default_vocabulary_path())
    report = evaluate(systems, noises, args.voices, vocab,
                      log=lambda line: print(line, flush=True) if not args.json else None)
    print(json.dumps(report, indent=1) if args.json else markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
