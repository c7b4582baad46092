"""Speech front end without ROS: vocabulary/grammar, pronunciation check, resampling,
endpointing, rejection, parameters and the talk2sam-say-to-prompt CLI. Recogniser tests here
use the pocketsphinx backend; the Whisper backend's are in test_speech_whisper.py.

Speech comes from espeak-ng (tests that need it skip with the reason where it is missing).
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from rosutil import REPO
from scipy.signal import resample_poly

pytest.importorskip("pocketsphinx", reason="pocketsphinx (the `speech` extra) not installed")

from talk2sam_ros.speech.grammar import (UnknownWordsError, Vocabulary, build_jsgf,  # noqa: E402
                                         default_vocabulary_path, find_category,
                                         load_vocabulary, parse_command,
                                         resolve_pronunciations, vocabulary_from_dict,
                                         word_errors)
from talk2sam_ros.speech.params import (PARAMS, SpeechConfig,  # noqa: E402
                                        speech_config_from_params)
from talk2sam_ros.speech.recognizer import (PocketsphinxRecognizer,  # noqa: E402
                                            RecognizerConfig, SegmenterConfig, SpeechPipeline,
                                            StreamResampler, UtteranceSegmenter, to_int16)
from talk2sam_ros.speech.synth import espeak_available, write_wav  # noqa: E402

needs_espeak = pytest.mark.skipif(not espeak_available(),
                                  reason="espeak-ng not installed (apt-get install espeak-ng)")
POCKETSPHINX = RecognizerConfig(backend="pocketsphinx")
SMALL = {"verbs": ["pick up", "find"], "determiners": ["the"], "adjectives": ["black", "red"],
         "objects": ["cable", "garden hose"]}


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return load_vocabulary(default_vocabulary_path())


@pytest.fixture(scope="module")
def recognizer(vocab) -> PocketsphinxRecognizer:
    return PocketsphinxRecognizer(vocab, POCKETSPHINX)


def _speech(text: str, lead_s: float = 0.8, tail_s: float = 0.8, seed: int = 0
            ) -> tuple[np.ndarray, int]:
    """espeak-ng speech (en-us, 160 wpm, 22.05 kHz) with a microphone-like noise floor."""
    from talk2sam_ros.speech.evaluate import spoken_set

    item = spoken_set([text], 1, lead_s=lead_s, tail_s=tail_s, seed=seed)[0]
    return item.samples, item.rate


# ---------------------------------------------------------------- vocabulary and grammar
def test_default_vocabulary_has_the_issue_words_and_builds_a_grammar_pocketsphinx_accepts(vocab):
    from pocketsphinx import Decoder

    for verb in ("pick up", "grab", "find", "segment", "show me"):
        assert verb in vocab.verbs
    for obj in ("cable", "wire", "rope", "hose", "cord", "chain", "fence"):
        assert obj in vocab.objects
    assert {"black", "red", "thin"} <= set(vocab.adjectives)
    jsgf = build_jsgf(vocab)
    assert "public <command>" in jsgf and "garden hose" in jsgf
    decoder = Decoder(lm=None, loglevel="FATAL")
    decoder.add_jsgf_string("command", jsgf)  # raises ValueError when it does not parse
    recognizer = PocketsphinxRecognizer(vocab, POCKETSPHINX)
    assert set(recognizer.pronunciations) == set(vocab.words)


def test_unknown_word_is_a_clear_start_up_error_and_a_pronunciation_fixes_it():
    data = {**SMALL, "objects": ["cable", "zorblewire"]}
    with pytest.raises(UnknownWordsError) as err:
        resolve_pronunciations(vocabulary_from_dict(data))
    message = str(err.value)
    assert "'zorblewire'" in message and "pronunciations:" in message
    assert "'cable'" not in message
    fixed = vocabulary_from_dict({**data,
                                  "pronunciations": {"zorblewire": "Z AO R B AH L W AY ER"}})
    assert resolve_pronunciations(fixed)["zorblewire"] == ["Z AO R B AH L W AY ER"]
    bad = vocabulary_from_dict({**data, "pronunciations": {"zorblewire": "Z QQ R"}})
    with pytest.raises(UnknownWordsError, match="QQ"):
        resolve_pronunciations(bad)
    with pytest.raises(UnknownWordsError):
        PocketsphinxRecognizer(vocabulary_from_dict(data), POCKETSPHINX)


@pytest.mark.parametrize("data, match", [
    ({**SMALL, "verbs": []}, "verbs"),
    ({**SMALL, "objects": []}, "objects"),
    ({**SMALL, "adjectives": ["very black"]}, "single words"),
    ({**SMALL, "colours": ["red"]}, "unknown keys"),
    ({**SMALL, "objects": ["Cable!"]}, "lower-case"),
    ({**SMALL, "objects": ["cable", "cable"]}, "more than once"),
    ({**SMALL, "max_adjectives": 9}, "max_adjectives"),
])
def test_bad_vocabulary_is_rejected_with_the_reason(data, match):
    with pytest.raises(ValueError, match=match):
        vocabulary_from_dict(data)


def test_homophones_in_one_slot_are_logged(caplog):
    vocab = vocabulary_from_dict({**SMALL, "adjectives": ["grey", "gray"]})
    with caplog.at_level("WARNING"):
        resolve_pronunciations(vocab)
    assert "sound the same" in caplog.text


@pytest.mark.parametrize("text, category", [
    ("pick up the black cable", "black cable"),
    ("please find the red black garden hose", "red black garden hose"),
    ("find cable", "cable"),
    ("pick(2) up the(2) black cable", "black cable"),  # decoder alternative-pronunciation marks
    ("find the garden hose", "garden hose"),
])
def test_category_is_adjectives_and_object_never_the_verb(text, category):
    from talk2sam_ros.speech.grammar import clean_words

    vocab = vocabulary_from_dict({**SMALL, "polite": ["please"]})
    parsed = parse_command(clean_words(text), vocab)
    assert parsed is not None and parsed.category == category
    assert parsed.verb in vocab.verbs and parsed.verb not in parsed.category


@pytest.mark.parametrize("text", ["pick up the black", "the black cable", "find the cable now",
                                  "find the black red black cable", "pick up"])
def test_incomplete_or_extra_words_are_not_commands(text):
    assert parse_command(text.split(), vocabulary_from_dict(SMALL)) is None


def test_open_vocabulary_text_is_searched_for_the_last_object():
    vocab = vocabulary_from_dict(SMALL)
    assert find_category("so i think we can find the red cable there".split(),
                         vocab).category == "red cable"
    assert find_category("a red garden hose".split(), vocab).category == "red garden hose"
    assert find_category("nothing to see".split(), vocab) is None
    assert word_errors(["black", "cable"], ["cable"]) == 1
    assert word_errors(["black", "cable"], ["red", "cable", "x"]) == 2


# ---------------------------------------------------------------- resampling
@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_stream_resampler_gives_the_one_shot_result_whatever_the_chunking(rate):
    rng = np.random.default_rng(rate)
    t = np.arange(int(1.3 * rate)) / rate
    x = to_int16(8000 * np.sin(2 * np.pi * 440 * t) + rng.normal(0, 500, len(t)))
    expected = to_int16(resample_poly(x.astype(np.float64), 16000, rate))
    resampler = StreamResampler(rate)
    pieces, i = [], 0
    while i < len(x):
        n = int(rng.integers(1, rate // 10))
        pieces.append(resampler.push(x[i:i + n]))
        i += n
    pieces.append(resampler.flush())
    got = np.concatenate(pieces)
    assert got.dtype == np.int16 and len(got) == len(expected)
    # Identical up to float rounding; only the filter's tail at flush may differ.
    tail = 64
    assert np.abs(got[:-tail].astype(int) - expected[:-tail]).max() <= 1
    np.testing.assert_array_equal(StreamResampler(16000).push(x), x)


@needs_espeak
def test_an_utterance_completed_by_a_sample_rate_change_is_not_lost(recognizer):
    """The old rate's resampler tail can end an utterance; it must still be decoded.

    End the 8 kHz audio at every length (4-sample steps) just before the one where the
    utterance closes within the 8 kHz stream itself; whatever completes it (the tail flushed
    at the switch to 16 kHz, the 16 kHz silence after it, or the final flush), it comes out
    exactly once."""
    samples, rate = _speech("find the cable", tail_s=0.0)
    speech8k = to_int16(resample_poly(samples.astype(np.float64), 8000, rate))
    rng = np.random.default_rng(4)
    quiet8k, quiet16k = to_int16(rng.normal(0, 20, 8000)), to_int16(rng.normal(0, 20, 9600))
    closes_at = next(n for n in range(0, len(quiet8k), 4) if SpeechPipeline(recognizer).push(
        np.concatenate([speech8k, quiet8k[:n]]), 8000))
    for n in range(max(0, closes_at - 40), closes_at, 4):
        pipeline = SpeechPipeline(recognizer)
        results = pipeline.push(np.concatenate([speech8k, quiet8k[:n]]), 8000)
        results += pipeline.push(quiet16k, 16000) + pipeline.flush()
        assert len(results) == 1, (n, closes_at, results)


def test_odd_sample_rate_is_resampled_promptly_and_keeps_the_pitch():
    """44101 Hz (16000/44101 does not reduce): output follows the input within a few ms and
    a 440 Hz tone stays at 440 Hz."""
    rate = 44101
    t = np.arange(2 * rate) / rate
    tone = to_int16(8000 * np.sin(2 * np.pi * 440 * t))
    resampler = StreamResampler(rate)
    step = rate // 10
    first = resampler.push(tone[:2 * step])  # 0.2 s in
    assert len(first) >= 0.19 * 16000, len(first)
    out = np.concatenate([first] + [resampler.push(tone[i:i + step])
                                    for i in range(2 * step, len(tone), step)]
                         + [resampler.flush()])
    assert abs(len(out) - 2 * 16000) <= 2
    spectrum = np.abs(np.fft.rfft(out[:16000].astype(np.float64) * np.hanning(16000)))
    assert abs(np.argmax(spectrum) - 440) <= 1  # 1 Hz bins


# ---------------------------------------------------------------- segmentation and rejection
def test_silence_gives_no_utterance():
    rng = np.random.default_rng(0)
    segmenter = UtteranceSegmenter()
    quiet = to_int16(rng.normal(0, 20, 3 * 16000))
    assert segmenter.push(quiet) == [] and segmenter.flush() == []


@needs_espeak
def test_one_spoken_command_is_one_utterance_at_the_right_time(vocab):
    samples, rate = _speech("pick up the black cable", lead_s=1.0)
    resampler = StreamResampler(rate)
    audio = np.concatenate([resampler.push(samples), resampler.flush()])
    segmenter = UtteranceSegmenter()
    utterances = segmenter.push(audio) + segmenter.flush()
    assert len(utterances) == 1
    # espeak starts speaking almost at once: the utterance starts near 1.0 s (the endpointer
    # keeps a little audio before the detected onset).
    assert 0.7 <= utterances[0].start_s <= 1.2
    assert not utterances[0].truncated


@needs_espeak
def test_a_stream_that_stops_on_a_frame_boundary_in_speech_still_closes_the_utterance():
    """Regression: flush() with no partial frame left crashed in pocketsphinx's end_stream
    (IndexError), and the node dropped the utterance (seen with babble noise at the end)."""
    samples, rate = _speech("pick up the black cable", tail_s=0.0)
    resampler = StreamResampler(rate)
    audio = np.concatenate([resampler.push(samples), resampler.flush()])
    segmenter = UtteranceSegmenter()
    frame = 480  # 30 ms at 16 kHz, the endpointer's frame
    whole = audio[:len(audio) // frame * frame]
    assert segmenter.push(whole) == [] and segmenter.in_speech
    utterances = segmenter.flush()
    assert len(utterances) == 1 and utterances[0].duration_s > 1.0


@needs_espeak
def test_speech_longer_than_max_utterance_is_rejected_not_decoded(recognizer):
    text = "pick up the black cable and find the red wire and grab the long blue rope"
    samples, rate = _speech(text)
    pipeline = SpeechPipeline(recognizer, SegmenterConfig(max_utterance_s=1.5))
    results = list(pipeline.run(samples, rate))
    assert results, "no utterance found"
    assert results[0].accepted is False and "max_utterance_s" in results[0].reason
    assert not any(r.accepted for r in results)


def test_noise_bursts_publish_nothing(recognizer):
    rng = np.random.default_rng(3)
    quiet = rng.normal(0, 20, 16000)
    bursts = [rng.normal(0, 3000, 16000), rng.normal(0, 800, 12000),
              6000 * np.sign(np.sin(2 * np.pi * 3 * np.arange(16000) / 16000))
              * rng.normal(0, 1, 16000)]
    audio = to_int16(np.concatenate([quiet, *[np.concatenate([b, quiet]) for b in bursts]]))
    results = list(SpeechPipeline(recognizer).run(audio, 16000))
    assert not any(r.accepted or r.category for r in results), results


# ---------------------------------------------------------------- parameters
def test_parameters_are_checked_with_the_allowed_values():
    assert speech_config_from_params({}) == SpeechConfig()
    assert SpeechConfig().recognizer.backend == "whisper"
    cfg = speech_config_from_params({"mode": "open", "min_confidence": 0.7, "vad_mode": 2,
                                     "backend": "pocketsphinx", "whisper_device": "auto"})
    assert cfg.recognizer == RecognizerConfig(backend="pocketsphinx", mode="open",
                                              min_confidence=0.7, whisper_device="auto")
    assert cfg.segmenter.vad_mode == 2
    with pytest.raises(ValueError, match="mode='dictation' is not one of grammar, open"):
        speech_config_from_params({"mode": "dictation"})
    with pytest.raises(ValueError, match="backend='vosk' is not one of whisper, pocketsphinx"):
        speech_config_from_params({"backend": "vosk"})
    with pytest.raises(ValueError, match="whisper_compute_type='int4' is not one of auto"):
        speech_config_from_params({"whisper_compute_type": "int4"})
    with pytest.raises(ValueError, match="whisper_device='tpu'"):
        RecognizerConfig(whisper_device="tpu")
    with pytest.raises(ValueError, match=r"min_confidence=1.5 is outside \[0.0, 1.0\]"):
        speech_config_from_params({"min_confidence": 1.5})
    with pytest.raises(ValueError, match="unknown parameters: min_conf"):
        speech_config_from_params({"min_conf": 0.5})
    with pytest.raises(ValueError, match="min_utterance_s"):
        speech_config_from_params({"min_utterance_s": 2.0, "max_utterance_s": 1.0})


def test_params_file_lists_every_parameter_with_a_valid_value():
    data = yaml.safe_load((REPO / "config" / "speech.yaml").read_text())
    values = data["/**/talk2sam_speech"]["ros__parameters"]
    assert set(values) == {p.name for p in PARAMS}
    speech_config_from_params(values)
    for spec in PARAMS:
        assert spec.description.strip(), spec.name


# ---------------------------------------------------------------- CLI
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "talk2sam_ros.speech.cli", *args],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


@needs_espeak
def test_cli_prints_what_the_node_would_publish(tmp_path, vocab, recognizer):
    files = []
    for i, text in enumerate(["find the loose power cable", "where is my coffee cup"]):
        samples, rate = _speech(text, seed=i)
        files.append(tmp_path / f"{i}.wav")
        write_wav(files[-1], samples, rate)
    proc = _cli("--backend", "pocketsphinx", "--json", *map(str, files))
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["source"] for line in lines] == [str(f) for f in files]
    # The same pipeline in this process gives the same answers.
    for line, path in zip(lines, files):
        from talk2sam_ros.speech.synth import read_wav

        expected = list(SpeechPipeline(recognizer).run(*read_wav(path)))
        assert len(expected) == 1
        assert (line["category"], line["accepted"]) == (expected[0].category,
                                                        expected[0].accepted)
        assert line["accepted"] == bool(line["category"])
    proc = _cli("--backend", "pocketsphinx", str(files[0]))
    assert proc.returncode == 0 and proc.stdout.startswith(str(files[0]))
    assert ("category" in proc.stdout) or ("nothing published" in proc.stdout)


def test_vocabulary_file_mistakes_are_value_errors_naming_the_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("verbs: [find\nobjects: cable\n")  # unclosed list
    with pytest.raises(ValueError, match="broken.yaml: not valid YAML"):
        load_vocabulary(broken)
    empty_item = tmp_path / "empty_item.yaml"
    empty_item.write_text("verbs: [find]\nobjects:\n  - cable\n  -\n")
    with pytest.raises(ValueError, match="`objects` entries must be text"):
        load_vocabulary(empty_item)


def test_cli_reports_unknown_words_and_bad_files(tmp_path):
    vocab_file = tmp_path / "vocab.yaml"
    vocab_file.write_text(yaml.safe_dump({**SMALL, "objects": ["zorblewire"]}))
    wav = tmp_path / "quiet.wav"
    write_wav(wav, np.zeros(16000, np.int16), 16000)
    # (pocketsphinx needs pronunciations; Whisper spells any word)
    proc = _cli("--backend", "pocketsphinx", "--vocabulary", str(vocab_file), str(wav))
    assert proc.returncode == 1 and "zorblewire" in proc.stderr
    proc = _cli(str(wav))
    assert proc.returncode == 0 and "no speech found" in proc.stdout
    proc = _cli(str(tmp_path / "missing.wav"))
    assert proc.returncode == 1 and "missing.wav" in proc.stderr
    not_wav = tmp_path / "notes.wav"
    not_wav.write_text("not audio")
    proc = _cli(str(not_wav))
    assert proc.returncode == 1 and "notes.wav: not a PCM WAV file" in proc.stderr
    assert "Traceback" not in proc.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("verbs: [find\n")
    proc = _cli("--vocabulary", str(broken), str(wav))
    assert proc.returncode == 1 and "not valid YAML" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _cli().returncode == 2


def test_speech_core_imports_without_ros_or_torch():
    code = ("import sys; import talk2sam_ros.speech.recognizer, talk2sam_ros.speech.cli, "
            "talk2sam_ros.speech.whisper, talk2sam_ros.speech.backends; "
            "bad = [m for m in ('rclpy', 'torch') if m in sys.modules]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr


def test_recognizer_config_is_frozen_and_checked():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RecognizerConfig().mode = "open"  # type: ignore[misc]
    with pytest.raises(ValueError, match="dither"):
        RecognizerConfig(dither=-1.0)
