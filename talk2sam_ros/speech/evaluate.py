"""Category accuracy of the speech front end on espeak-ng speech, grammar vs open vocabulary.

    python -m talk2sam_ros.speech.evaluate            # the table in docs/speech.md
    python -m talk2sam_ros.speech.evaluate --json

ROS-free; the node tests (test/test_speech_node.py) use the same spoken set and scoring but
feed the audio through the real node over DDS. Speech is synthesised with espeak-ng in
several voices and speeds, with a low noise floor like a microphone's self-noise, and run
through the same pipeline (resampling 22.05 -> 16 kHz, endpointing, decoding).
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from talk2sam_ros.speech.grammar import Vocabulary, find_category, word_errors

# (espeak-ng voice, words per minute): US and British English, male and female variants.
VOICES: tuple[tuple[str, int], ...] = (("en-us", 160), ("en", 150), ("en+m3", 140),
                                        ("en+f3", 180))
COMMANDS: tuple[str, ...] = (
    "pick up the black cable", "grab the red wire", "find the cable", "segment the blue hose",
    "show me the yellow rope", "take the thin white cord", "grasp the chain",
    "locate the green fence", "get the long orange pipe", "highlight the brown branch",
    "please pick up the thick grey rope", "find the loose power cable")
OUT_OF_GRAMMAR: tuple[str, ...] = (
    "where is my coffee cup", "please close the door", "the robot is very fast",
    "can you help me", "it is a sunny day", "play some music")
NOISE_FLOOR = 20.0  # int16 std. dev. of the added background noise (about -64 dBFS)


@dataclass(frozen=True)
class SpokenItem:
    text: str
    voice: str
    wpm: int
    samples: np.ndarray  # int16, with silence (noise floor) before and after
    rate: int


def spoken_set(texts: Sequence[str], voices_per_text: int = 3, lead_s: float = 0.6,
               tail_s: float = 0.8, noise_std: float = NOISE_FLOOR, seed: int = 0
               ) -> list[SpokenItem]:
    """Each text in `voices_per_text` of VOICES (rotating, so every voice is used)."""
    from talk2sam_ros.speech.synth import synthesize

    rng = np.random.default_rng(seed)
    items = []
    for i, text in enumerate(texts):
        for k in range(voices_per_text):
            voice, wpm = VOICES[(i + k) % len(VOICES)]
            speech, rate = synthesize(text, voice, wpm)
            x = np.concatenate([np.zeros(int(lead_s * rate)), speech.astype(np.float64),
                                np.zeros(int(tail_s * rate))])
            x += rng.normal(0.0, noise_std, len(x))
            items.append(SpokenItem(text, voice, wpm,
                                    np.clip(np.rint(x), -32768, 32767).astype(np.int16), rate))
    return items


@dataclass(frozen=True)
class Score:
    """Category accuracy over a set of utterances."""

    n: int
    word_accuracy: float  # 1 - word errors / reference words (floored at 0)
    exact: float  # share of utterances whose category is exactly right
    correct: tuple[bool, ...]  # per utterance, exact
    word_errors: tuple[int, ...]  # per utterance

    def row(self, name: str) -> str:
        return f"| {name} | {self.n} | {100 * self.word_accuracy:.1f} | {100 * self.exact:.1f} |"


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


def decode_items(items: Sequence[SpokenItem], vocab: Vocabulary, mode: str
                 ) -> tuple[list[str], list[str]]:
    """Categories per item through the in-process pipeline: (published, candidates).

    published: the accepted categories ("" when rejected); candidates: the category each
    hypothesis contains even when rejected (the most favourable reading of a baseline).
    Several utterances in one item are joined with spaces.
    """
    from talk2sam_ros.speech.recognizer import (RecognizerConfig, SpeechPipeline,
                                                SpeechRecognizer)

    recognizer = SpeechRecognizer(vocab, RecognizerConfig(mode=mode))
    published, candidates = [], []
    for item in items:
        results = list(SpeechPipeline(recognizer).run(item.samples, item.rate))
        published.append(" ".join(r.category for r in results if r.accepted))
        candidates.append(" ".join(r.candidate for r in results if r.candidate))
    return published, candidates


def main(argv: Sequence[str] | None = None) -> int:
    from talk2sam_ros.speech.grammar import default_vocabulary_path, load_vocabulary

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocabulary", default="", help="vocabulary YAML (default: the package's)")
    p.add_argument("--voices-per-text", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    vocab = load_vocabulary(args.vocabulary or default_vocabulary_path())
    items = spoken_set(COMMANDS, args.voices_per_text)
    texts = [i.text for i in items]
    grammar_published, grammar_candidates = decode_items(items, vocab, "grammar")
    grammar = score(texts, grammar_published, vocab)
    grammar_all = score(texts, grammar_candidates, vocab)
    open_vocab = score(texts, decode_items(items, vocab, "open")[1], vocab)
    oog = spoken_set(OUT_OF_GRAMMAR, 2, seed=1)
    false_accepts = sum(bool(c) for c in decode_items(oog, vocab, "grammar")[0])
    report = {"utterances": len(items), "grammar_word_accuracy": grammar.word_accuracy,
              "grammar_exact": grammar.exact,
              "grammar_before_rejection_word_accuracy": grammar_all.word_accuracy,
              "grammar_before_rejection_exact": grammar_all.exact,
              "open_word_accuracy": open_vocab.word_accuracy,
              "open_exact": open_vocab.exact, "chance_exact": chance_exact(vocab),
              "out_of_grammar_utterances": len(oog), "out_of_grammar_published": false_accepts}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print("| decoder | utterances | category word accuracy (%) | exact category (%) |")
        print("|---|---|---|---|")
        print(grammar.row("grammar, published (after rejection)"))
        print(grammar_all.row("grammar, every hypothesis (before rejection)"))
        print(open_vocab.row("open vocabulary (category found in the text)"))
        print(f"| chance (uniform over {vocab.n_categories} categories) | - | - | "
              f"{100 * chance_exact(vocab):.3f} |")
        print(f"\nout-of-grammar sentences: {false_accepts} of {len(oog)} published a category")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
