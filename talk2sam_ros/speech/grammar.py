"""Command vocabulary -> JSGF grammar, pronunciation check and command parsing.

ROS-free. A vocabulary (``config/speech_vocabulary.yaml``) lists verb phrases ("pick up"),
determiners, adjectives ("black", "thin") and object phrases ("cable", "garden hose"). The
grammar accepts::

    [please] <verb> [<determiner>] <adjective>{0..max_adjectives} <object>

and the *category* sent to the segmentation node is the adjectives + object ("black cable"),
never the verb. Every word needs a pronunciation: from the vocabulary's own ``pronunciations``
table first, else from pocketsphinx's bundled CMU dictionary; unknown words raise
:class:`UnknownWordsError` at start-up, naming them and how to fix it.
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from talk2sam_ros.common.resources import find_config

log = logging.getLogger(__name__)

# Phones of pocketsphinx's en-us acoustic model (CMU phone set, no stress marks).
PHONES = frozenset(
    "AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH "
    "UH UW V W Y Z ZH".split())
_WORD = re.compile(r"[a-z][a-z']*")
# Alternative pronunciations in CMU dictionaries and decoder output: "word(2)".
_ALT = re.compile(r"\(\d+\)$")
_SLOTS = ("verbs", "determiners", "adjectives", "objects", "polite")


class UnknownWordsError(ValueError):
    """Vocabulary words without a pronunciation (or with an invalid one)."""


@dataclass(frozen=True)
class Vocabulary:
    """Words of the command grammar; every entry is a phrase of lower-case words.

    verbs: "pick up", "grab", ...; determiners: "the", "a", ...; adjectives: single words;
    objects: "cable", "garden hose", ...; polite: optional words before the verb ("please");
    pronunciations: word -> CMU phones ("K EY B AH L") for words missing from the dictionary,
    or to override it.
    """

    verbs: tuple[str, ...]
    objects: tuple[str, ...]
    adjectives: tuple[str, ...] = ()
    determiners: tuple[str, ...] = ()
    polite: tuple[str, ...] = ()
    max_adjectives: int = 2
    pronunciations: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.verbs:
            raise ValueError("vocabulary: `verbs` must list at least one verb phrase")
        if not self.objects:
            raise ValueError("vocabulary: `objects` must list at least one object")
        if not 0 <= self.max_adjectives <= 5:
            raise ValueError(f"vocabulary: max_adjectives={self.max_adjectives} is outside "
                             "[0, 5]")
        for slot in _SLOTS:
            phrases = getattr(self, slot)
            for phrase in phrases:
                words = phrase.split()
                if not words or any(not _WORD.fullmatch(w) for w in words):
                    raise ValueError(f"vocabulary: {slot} entry {phrase!r} must be lower-case "
                                     "words (a-z and ')")
            if len(set(phrases)) != len(phrases):
                dupes = sorted({p for p in phrases if phrases.count(p) > 1})
                raise ValueError(f"vocabulary: {slot} lists {dupes} more than once")
        bad = [a for a in self.adjectives if len(a.split()) != 1]
        if bad:
            raise ValueError(f"vocabulary: adjectives must be single words, got {bad}")

    @property
    def words(self) -> tuple[str, ...]:
        """Every distinct word of the grammar, sorted."""
        return tuple(sorted({w for slot in _SLOTS for p in getattr(self, slot)
                             for w in p.split()}))

    @property
    def n_categories(self) -> int:
        """How many different categories the grammar can produce (adjective order counts)."""
        n_adj = len(self.adjectives)
        return len(self.objects) * sum(n_adj ** k for k in range(self.max_adjectives + 1))


def vocabulary_from_dict(data: Mapping[str, Any]) -> Vocabulary:
    """Vocabulary from a parsed YAML mapping (keys: the fields of :class:`Vocabulary`)."""
    known = set(_SLOTS) | {"max_adjectives", "pronunciations"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"vocabulary: unknown keys {unknown}; allowed: {sorted(known)}")

    def phrases(key: str) -> tuple[str, ...]:
        value = data.get(key) or []
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ValueError(f"vocabulary: `{key}` must be a list of phrases, got {value!r}")
        # An empty YAML item ("- ") is None: str() would turn it into the word "none".
        odd = [v for v in value if not isinstance(v, str)]
        if odd:
            raise ValueError(f"vocabulary: `{key}` entries must be text, got {odd!r} (an empty "
                             "`- ` line?)")
        return tuple(" ".join(v.lower().split()) for v in value)

    prons = data.get("pronunciations") or {}
    if not isinstance(prons, Mapping):
        raise ValueError(f"vocabulary: `pronunciations` must map word -> phones, got {prons!r}")
    return Vocabulary(
        verbs=phrases("verbs"), objects=phrases("objects"), adjectives=phrases("adjectives"),
        determiners=phrases("determiners"), polite=phrases("polite"),
        max_adjectives=int(data.get("max_adjectives", 2)),
        pronunciations={str(k).lower(): " ".join(str(v).upper().split())
                        for k, v in prons.items()})


def load_vocabulary(path: str | Path) -> Vocabulary:
    """Read a vocabulary YAML file (see config/speech_vocabulary.yaml)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping at the top level")
    try:
        return vocabulary_from_dict(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def default_vocabulary_path() -> Path:
    """The package's config/speech_vocabulary.yaml (source tree, colcon or pip install)."""
    return find_config("speech_vocabulary.yaml")


def default_dictionary_path() -> Path:
    """pocketsphinx's bundled CMU dictionary (cmudict-en-us.dict)."""
    from pocketsphinx import get_model_path

    return Path(get_model_path("en-us/cmudict-en-us.dict"))


def read_dictionary(path: str | Path, words: Iterable[str] | None = None
                    ) -> dict[str, list[str]]:
    """CMU-format dictionary -> word -> pronunciations (alternatives in file order).

    words: keep only these (saves memory when reading the 135k-word dictionary).
    """
    wanted = None if words is None else set(words)
    prons: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) < 2:
                continue
            word = _ALT.sub("", parts[0])
            if wanted is None or word in wanted:
                # Some dictionaries append comments after '#'.
                phones = parts[1:parts.index("#")] if "#" in parts else parts[1:]
                prons.setdefault(word, []).append(" ".join(phones))
    return prons


def resolve_pronunciations(vocab: Vocabulary, dictionary: str | Path | None = None
                           ) -> dict[str, list[str]]:
    """Pronunciations of every vocabulary word: vocabulary table first, then the dictionary.

    Raises UnknownWordsError listing every word with no (or an invalid) pronunciation.
    """
    dictionary = Path(dictionary) if dictionary else default_dictionary_path()
    found = read_dictionary(dictionary, vocab.words)
    out: dict[str, list[str]] = {}
    missing, invalid = [], []
    for word in vocab.words:
        if word in vocab.pronunciations:
            phones = vocab.pronunciations[word].split()
            bad = [p for p in phones if p not in PHONES]
            if bad or not phones:
                invalid.append(f"{word}: {vocab.pronunciations[word]!r} (unknown phones "
                               f"{bad or 'none'})")
            out[word] = [" ".join(phones)]
        elif word in found:
            out[word] = found[word]
        else:
            missing.append(word)
    if missing or invalid:
        lines = []
        if missing:
            lines.append(f"no pronunciation for {', '.join(repr(w) for w in missing)} in "
                         f"{dictionary}")
        if invalid:
            lines.append("invalid pronunciations: " + "; ".join(invalid))
        lines.append("fix: correct the spelling, or add the word under `pronunciations:` in the "
                     "vocabulary file with CMU phones, e.g.  cable: K EY B AH L  (phones: "
                     f"{' '.join(sorted(PHONES))})")
        raise UnknownWordsError("vocabulary: " + "\n  ".join(lines))
    _warn_homophones(vocab, out)
    return out


def _warn_homophones(vocab: Vocabulary, prons: Mapping[str, list[str]]) -> None:
    """Log words of one slot that sound the same: the decoder cannot tell them apart."""
    for slot in ("adjectives", "objects"):
        seen: dict[str, str] = {}
        for phrase in getattr(vocab, slot):
            key = " | ".join(prons[w][0] for w in phrase.split())
            if key in seen:
                log.warning("vocabulary: %s %r and %r sound the same (%s); the recogniser "
                            "returns either, keep one", slot, seen[key], phrase, key)
            seen.setdefault(key, phrase)


def dictionary_text(prons: Mapping[str, Sequence[str]]) -> str:
    """pocketsphinx dictionary file contents for `prons` (alternatives as word(2), ...)."""
    lines = []
    for word in sorted(prons):
        for i, phones in enumerate(prons[word]):
            lines.append(f"{word if i == 0 else f'{word}({i + 1})'} {phones}")
    return "\n".join(lines) + "\n"


def _alternatives(phrases: Iterable[str]) -> str:
    return " | ".join(phrases)


def build_jsgf(vocab: Vocabulary, name: str = "talk2sam") -> str:
    """JSGF grammar of the vocabulary; its public rule is <command>."""
    lines = ["#JSGF V1.0;", f"grammar {name};", ""]
    adjectives = " ".join(["[<adjective>]"] * vocab.max_adjectives) if vocab.adjectives else ""
    body = " ".join(part for part in (
        "[<polite>]" if vocab.polite else "",
        "<verb>",
        "[<determiner>]" if vocab.determiners else "",
        adjectives,
        "<object>") if part)
    lines.append(f"public <command> = {body};")
    lines.append(f"<verb> = {_alternatives(vocab.verbs)};")
    if vocab.polite:
        lines.append(f"<polite> = {_alternatives(vocab.polite)};")
    if vocab.determiners:
        lines.append(f"<determiner> = {_alternatives(vocab.determiners)};")
    if vocab.adjectives:
        lines.append(f"<adjective> = {_alternatives(vocab.adjectives)};")
    lines.append(f"<object> = {_alternatives(vocab.objects)};")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ParsedCommand:
    """A hypothesis split into the grammar's slots."""

    verb: str
    adjectives: tuple[str, ...]
    obj: str
    words: tuple[str, ...]  # the vocabulary words of the hypothesis, in order

    @property
    def category(self) -> str:
        """What is sent on `category`: adjectives + object ("black cable")."""
        return " ".join((*self.adjectives, self.obj))


def clean_words(text: str) -> list[str]:
    """Decoder output -> plain words (alternative-pronunciation marks and fillers removed)."""
    words = []
    for token in text.lower().split():
        token = _ALT.sub("", token)
        if token and not token.startswith(("<", "[", "+")):
            words.append(token)
    return words


def _match_phrase(words: Sequence[str], i: int, phrases: Iterable[str]) -> str | None:
    """The longest phrase of `phrases` that starts at words[i], if any."""
    best = None
    for phrase in phrases:
        parts = phrase.split()
        if tuple(words[i:i + len(parts)]) == tuple(parts):
            if best is None or len(parts) > len(best.split()):
                best = phrase
    return best


def parse_command(words: Sequence[str], vocab: Vocabulary) -> ParsedCommand | None:
    """Parse a complete command of the grammar; None when `words` is not one.

    pocketsphinx returns the best partial path when no complete sentence fits the audio, so
    grammar-mode hypotheses are checked here before anything is published.
    """
    words = list(words)
    i = 0
    polite = _match_phrase(words, i, vocab.polite)
    if polite:
        i += len(polite.split())
    verb = _match_phrase(words, i, vocab.verbs)
    if verb is None:
        return None
    i += len(verb.split())
    det = _match_phrase(words, i, vocab.determiners)
    if det:
        i += len(det.split())
    rest = words[i:]
    # Objects may be several words and adjectives single words; the object ends the command.
    for n_adj in range(min(vocab.max_adjectives, len(rest)) + 1):
        adjs, obj = rest[:n_adj], " ".join(rest[n_adj:])
        if all(a in vocab.adjectives for a in adjs) and obj in vocab.objects:
            return ParsedCommand(verb=verb, adjectives=tuple(adjs), obj=obj,
                                 words=tuple(words))
    return None


def find_category(words: Sequence[str], vocab: Vocabulary) -> ParsedCommand | None:
    """Lenient category search for open-vocabulary text: the last object phrase (longest
    match) and the vocabulary adjectives right before it (up to max_adjectives); None without
    an object."""
    words = list(words)
    for end in range(len(words), 0, -1):
        for start in range(end):
            obj = " ".join(words[start:end])
            if obj not in vocab.objects:
                continue
            j = start
            while j > 0 and start - j < vocab.max_adjectives and words[j - 1] in vocab.adjectives:
                j -= 1
            verb = next((v for i in range(j) for v in vocab.verbs
                         if words[i:i + len(v.split())] == v.split()), "")
            return ParsedCommand(verb=verb, adjectives=tuple(words[j:start]), obj=obj,
                                 words=tuple(words))
    return None


def word_errors(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Word edit distance (substitutions + insertions + deletions)."""
    prev = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        cur = [i] + [0] * len(hypothesis)
        for j, hyp in enumerate(hypothesis, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ref != hyp))
        prev = cur
    return prev[-1]


# Upper bound on the categories :class:`CommandIndex` enumerates (the default vocabulary has
# 10,670 with distinct adjectives; 22 adjectives with max_adjectives 3 would be ~214k).
MAX_INDEXED_CATEGORIES = 250_000


@dataclass(frozen=True)
class Command:
    """One sentence of the grammar: prefix ("[polite] verb [determiner]") + category."""

    prefix: str
    category: str

    @property
    def text(self) -> str:
        return f"{self.prefix} {self.category}"


def _adjective_sequences(vocab: Vocabulary) -> list[tuple[str, ...]]:
    """Adjective sequences of 0..max_adjectives distinct adjectives, shortest first."""
    seqs: list[tuple[str, ...]] = [()]
    level: list[tuple[str, ...]] = [()]
    for _ in range(vocab.max_adjectives):
        level = [s + (a,) for s in level for a in vocab.adjectives if a not in s]
        seqs += level
    return seqs


class CommandIndex:
    """Every command of a vocabulary, found by spelling: the candidate sentences that the
    Whisper backend rescores with its decoder (talk2sam_ros.speech.whisper).

    ``nearest(words)`` splits a transcript into a prefix (matched against every
    "[polite] verb [determiner]") and the rest (matched against every category; adjectives
    distinct), with rapidfuzz's normalised Levenshtein ratio, and returns the closest commands.
    Raises ValueError when the vocabulary has more than MAX_INDEXED_CATEGORIES categories.
    """

    def __init__(self, vocab: Vocabulary,
                 lexicon: Mapping[str, Sequence[str]] | None = None) -> None:
        n_seqs = sum(_falling(len(vocab.adjectives), k) for k in range(vocab.max_adjectives + 1))
        if n_seqs * len(vocab.objects) > MAX_INDEXED_CATEGORIES:
            raise ValueError(
                f"vocabulary: {n_seqs * len(vocab.objects):,} categories (with max_adjectives "
                f"{vocab.max_adjectives}) are too many for the whisper backend (at most "
                f"{MAX_INDEXED_CATEGORIES:,}): lower max_adjectives or list fewer adjectives")
        self.vocab = vocab
        self.categories = [" ".join((*adjs, obj)) for adjs in _adjective_sequences(vocab)
                           for obj in vocab.objects]
        self.prefixes = [" ".join(p for p in (polite, verb, det) if p)
                         for polite in ("", *vocab.polite) for verb in vocab.verbs
                         for det in ("", *vocab.determiners)]
        self._max_prefix_words = max(len(p.split()) for p in self.prefixes)
        # What is compared: the spelling, or (with a lexicon) the phones, one character each.
        self.lexicon = lexicon
        self._prefix_keys = [self.key(p.split()) for p in self.prefixes]
        self._category_keys = [self.key(c.split()) for c in self.categories]

    def key(self, words: Sequence[str]) -> str:
        """The string matched for `words`: their spelling, or their phones (see phone_key)."""
        if self.lexicon is None:
            return " ".join(words)
        return phone_key(words, self.lexicon)

    def similarity(self, words: Sequence[str], category: str) -> float:
        """How alike `words` and `category` are, 0..100 (rapidfuzz ratio of their keys)."""
        from rapidfuzz import fuzz

        return float(fuzz.ratio(self.key(words), self.key(category.split())))

    def nearest(self, words: Sequence[str], limit: int = 8) -> list[tuple[Command, float]]:
        """Up to `limit` commands closest to `words` per prefix/rest split, with their costs
        (0 = same spelling or phones, 100 = nothing in common; length-weighted mean of both
        parts), cheapest first."""
        from rapidfuzz import fuzz, process

        words = list(words)
        costs: dict[Command, float] = {}
        for split in range(1, min(len(words), self._max_prefix_words + 2)):
            head, rest = self.key(words[:split]), self.key(words[split:])
            if not rest or not head:
                continue
            _, head_score, p = process.extractOne(head, self._prefix_keys, scorer=fuzz.ratio)
            for _, score, c in process.extract(rest, self._category_keys, scorer=fuzz.ratio,
                                               limit=limit):
                cost = ((100 - head_score) * len(head) + (100 - score) * len(rest)) / (
                    len(head) + len(rest))
                key = Command(self.prefixes[p], self.categories[c])
                costs[key] = min(costs.get(key, math.inf), cost)
        return sorted(costs.items(), key=lambda kv: kv[1])[:limit]


# Phones (CMU set) as one character each, so that rapidfuzz's edit distance counts phones.
_PHONE_CHAR = {p: chr(0x41 + i) for i, p in enumerate(sorted(PHONES))}
# A rough phone per letter, for words that the dictionary lacks (Whisper writes any string).
_LETTER_PHONES = dict(a="AE", b="B", c="K", d="D", e="EH", f="F", g="G", h="HH", i="IH",
                      j="JH", k="K", l="L", m="M", n="N", o="AA", p="P", q="K", r="R", s="S",
                      t="T", u="AH", v="V", w="W", x="K S", y="Y", z="Z")


def phone_key(words: Sequence[str], lexicon: Mapping[str, Sequence[str]]) -> str:
    """`words` as a string of phones, one character per phone: each word's first
    pronunciation in `lexicon` (CMU phones), else one rough phone per letter."""
    phones: list[str] = []
    for word in words:
        prons = lexicon.get(word)
        phones += prons[0].split() if prons else [
            p for letter in word for p in _LETTER_PHONES.get(letter, "").split()]
    return "".join(_PHONE_CHAR[p] for p in phones if p in _PHONE_CHAR)


def command_lexicon(vocab: Vocabulary, dictionary: str | Path | None = None
                    ) -> dict[str, list[str]]:
    """Pronunciations for phonetic matching: the whole CMU dictionary (transcripts may hold
    any word; pocketsphinx's bundled one by default), the vocabulary's own table on top."""
    lexicon = read_dictionary(Path(dictionary) if dictionary else default_dictionary_path())
    lexicon.update({w: [p] for w, p in vocab.pronunciations.items()})
    return lexicon


def heard_head(words: Sequence[str], category: str) -> list[str]:
    """The words of a transcript before the part that best matches `category` by spelling
    ("admin to the blue pose", "blue hose" -> admin, to, the): what was heard in place of the
    command's verb."""
    from rapidfuzz import fuzz

    words = list(words)
    scores = [fuzz.ratio(" ".join(words[j:]), category) for j in range(len(words) + 1)]
    return words[:int(max(range(len(scores)), key=scores.__getitem__))]


def _falling(n: int, k: int) -> int:
    """n * (n - 1) * ... * (n - k + 1): ordered choices of k distinct items of n."""
    out = 1
    for i in range(k):
        out *= max(n - i, 0)
    return out
