"""``talk2sam-say-to-prompt``: run the speech front end on WAV files, print what it would publish.

    talk2sam-say-to-prompt kitchen.wav garage.wav
    talk2sam-say-to-prompt --say "pick up the black cable" --voice en+f3   # espeak-ng
    talk2sam-say-to-prompt --vocabulary my_words.yaml --mode open --json take*.wav
    talk2sam-say-to-prompt --backend pocketsphinx kitchen.wav          # the light fallback

Uses the node's pipeline (resampling, endpointing, decoding, rejection) and its defaults
(talk2sam_ros.speech.params), without ROS. Useful for tuning the vocabulary and
min_confidence on your own recordings.
"""
from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterator, Sequence

import numpy as np

from talk2sam_ros.common.cli import CliParser, UsageError, run_cli
from talk2sam_ros.speech.backends import build_recognizer
from talk2sam_ros.speech.grammar import default_vocabulary_path, load_vocabulary
from talk2sam_ros.speech.params import PARAM_BY_NAME, speech_config_from_params
from talk2sam_ros.speech.recognizer import Recognition, SpeechPipeline
from talk2sam_ros.speech.synth import read_wav, synthesize

PROG = "talk2sam-say-to-prompt"


# Node parameters the CLI exposes as --options (same names, defaults and checks).
OPTIONS = ("backend", "mode", "min_confidence", "whisper_model", "whisper_device",
           "whisper_compute_type", "whisper_confidence_scale", "confidence_scale",
           "max_utterance_s", "vad_mode")


def _parser() -> argparse.ArgumentParser:
    p = CliParser(prog=PROG, description=__doc__.split(
        "\n")[0].split(": ", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("wav", nargs="*", help="PCM WAV files (8/16/32-bit, any rate, mono or "
                   "multi-channel)")
    p.add_argument("--say", action="append", default=[], metavar="TEXT",
                   help="speak TEXT with espeak-ng and recognise it (repeatable)")
    p.add_argument("--voice", default="en-us", help="espeak-ng voice for --say (en-us, en, "
                   "en+m3, en+f3, ...)")
    p.add_argument("--wpm", type=int, default=160, help="espeak-ng speed for --say")
    p.add_argument("--vocabulary", default="", help="vocabulary YAML (default: "
                   f"{default_vocabulary_path()})")
    for name in OPTIONS:
        spec = PARAM_BY_NAME[name]
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=type(spec.default),
                       default=spec.default, choices=spec.choices or None,
                       help=f"{spec.description} (default {spec.default})")
    p.add_argument("--json", action="store_true", help="one JSON object per utterance")
    return p


def _sources(args: argparse.Namespace) -> Iterator[tuple[str, np.ndarray, int]]:
    for path in args.wav:
        samples, rate = read_wav(path)
        yield path, samples, rate
    for text in args.say:
        samples, rate = synthesize(text, args.voice, args.wpm)
        # Half a second of silence around the words, as a microphone would record.
        pad = np.zeros(rate // 2, np.int16)
        yield f"say:{text!r}", np.concatenate([pad, samples, pad]), rate


def _line(name: str, r: Recognition) -> str:
    span = f"{r.start_s:.2f}-{r.start_s + r.duration_s:.2f} s"
    if r.accepted:
        return (f"{name} [{span}] category {r.category!r}  (heard {r.transcript!r}, "
                f"confidence {r.confidence:.2f})")
    return f"{name} [{span}] nothing published: {r.reason} (confidence {r.confidence:.2f})"


def _say_to_prompt(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if not args.wav and not args.say:
        raise UsageError("give WAV files or --say TEXT")
    cfg = speech_config_from_params({name: getattr(args, name) for name in OPTIONS})
    vocab = load_vocabulary(args.vocabulary or default_vocabulary_path())
    recognizer = build_recognizer(vocab, cfg.recognizer)
    for name, samples, rate in _sources(args):
        pipeline = SpeechPipeline(recognizer, cfg.segmenter)
        results = list(pipeline.run(samples, rate))
        if not results and not args.json:
            print(f"{name}: no speech found")
        for r in results:
            if args.json:
                print(json.dumps({"source": name, "category": r.category,
                                  "transcript": r.transcript,
                                  "confidence": round(r.confidence, 4),
                                  "words": list(r.words), "accepted": r.accepted,
                                  "reason": r.reason, "start_s": round(r.start_s, 3),
                                  "duration_s": round(r.duration_s, 3)}))
            else:
                print(_line(name, r))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # Unreadable WAV files, a bad vocabulary or parameter value, espeak-ng failing.
    return run_cli(PROG, lambda: _say_to_prompt(argv), (OSError, ValueError, RuntimeError),
                   logging.WARNING)


if __name__ == "__main__":
    raise SystemExit(main())
