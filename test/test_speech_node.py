"""talk2sam_speech end to end: a real node process fed spoken commands over DDS on loopback.

One node process (default backend: Whisper) for the module. Speech is synthesised with
espeak-ng (several voices and speeds, a microphone-like noise floor) at 22.05 kHz and
published as AudioChunk messages of 0.1 s, faster than real time; the node resamples,
endpoints, decodes and publishes.
"""
from __future__ import annotations

import array
import os
from pathlib import Path

import numpy as np
import pytest
import rclpy
import yaml
from node_harness import module_domain, ros_environment, running_node
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosutil import spin_until, start_python, stop
from std_msgs.msg import String

pytest.importorskip("pocketsphinx", reason="pocketsphinx (the `speech` extra) not installed")

from talk2sam_ros.msg import AudioChunk, SpeechCategory  # noqa: E402
from talk2sam_ros.speech.evaluate import (COMMANDS, OUT_OF_GRAMMAR, chance_exact,  # noqa: E402
                                          decode_items, score, spoken_set)
from talk2sam_ros.speech.grammar import (default_vocabulary_path, load_vocabulary,  # noqa: E402
                                         parse_command)
from talk2sam_ros.speech.synth import espeak_available  # noqa: E402

needs_espeak = pytest.mark.skipif(not espeak_available(),
                                  reason="espeak-ng not installed (apt-get install espeak-ng)")
QOS = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST,
                 reliability=ReliabilityPolicy.RELIABLE)
START_TIMEOUT = 90.0  # rclpy + model start-up on a loaded 2-core machine
CHUNK_S = 0.1
SPEED = 8.0  # publish audio this many times faster than real time


def start_speech_node(log: Path, domain: int, *ros_args: str):
    env = {**os.environ, **ros_environment(domain)}
    return start_python(["-m", "talk2sam_ros.speech.node", "--ros-args", *ros_args], log, env)


class SpeechClient:
    """Test-side node: publishes AudioChunk on `audio`, records `category` and
    `speech_result`."""

    def __init__(self, context) -> None:
        self.node = rclpy.create_node("speech_test_client", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.audio_pub = self.node.create_publisher(AudioChunk, "audio", QOS)
        self.categories: list[str] = []
        self.results: list[SpeechCategory] = []
        self.node.create_subscription(String, "category",
                                      lambda m: self.categories.append(m.data), QOS)
        self.node.create_subscription(SpeechCategory, "speech_result", self.results.append, QOS)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()

    def spin_until(self, done, timeout: float) -> bool:
        return spin_until(self.executor, done, timeout)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> bool:
        return self.spin_until(
            lambda: self.audio_pub.get_subscription_count() > 0
            and self.node.count_publishers("/category") > 0
            and self.node.count_publishers("/speech_result") > 0, timeout)

    def publish_audio(self, samples: np.ndarray, rate: int, speed: float = SPEED) -> None:
        """0.1 s chunks, `speed` times faster than real time, spinning in between."""
        step = int(CHUNK_S * rate)
        for i in range(0, len(samples), step):
            msg = AudioChunk(sample_rate=rate)
            msg.header.frame_id = "test_microphone"
            msg.samples = array.array("h", samples[i:i + step].tobytes())
            self.audio_pub.publish(msg)
            spin_until(self.executor, lambda: False, CHUNK_S / speed)

    def say(self, samples: np.ndarray, rate: int, timeout: float = 30.0
            ) -> list[SpeechCategory]:
        """Publish one spoken item (speech + trailing silence); the results it produced."""
        start = len(self.results)
        self.publish_audio(samples, rate)
        # A result follows the end of speech (endpointer window + decoding); then let any
        # further pieces of the same item arrive.
        self.spin_until(lambda: len(self.results) > start, timeout)
        settle = len(self.results)
        self.spin_until(lambda: len(self.results) > settle, 0.3)
        return self.results[start:]


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    domain = module_domain(31)
    log = tmp_path_factory.mktemp("speech") / "talk2sam_speech.log"
    with running_node(domain, log, lambda: start_speech_node(log, domain), SpeechClient,
                      SpeechClient.wait_ready, expect_clean_exit=True) as running:
        yield running


@pytest.fixture(scope="module")
def vocab():
    return load_vocabulary(default_vocabulary_path())


@needs_espeak
@pytest.mark.slow
def test_whisper_category_accuracy_is_far_above_pocketsphinx_and_chance(speech, vocab):
    """20 commands x 2 voices through the node (Whisper); the same audio decoded in this
    process by the pocketsphinx grammar is the baseline. "Far above" = significant by exact
    tests. (The measured figures: python -m talk2sam_ros.speech.evaluate, docs/speech.md.)"""
    from scipy.stats import binomtest

    items = spoken_set(COMMANDS, voices_per_text=2)
    assert len(COMMANDS) >= 16 and len({(i.voice, i.wpm) for i in items}) >= 6
    client = speech.client
    published = []
    for item in items:
        results = client.say(item.samples, item.rate)
        assert all(r.header.frame_id == "test_microphone" for r in results)
        for r in results:
            assert r.accepted == bool(r.category) and (r.accepted or r.reason)
            assert 0.0 <= r.confidence <= 1.0 and r.duration_s > 0
            # Constrained decoding: a published category is always one of the vocabulary's.
            assert not r.category or parse_command(f"find {r.category}".split(), vocab), r
        published.append(" ".join(r.category for r in results if r.accepted))
    assert client.spin_until(lambda: len(client.categories) == sum(map(bool, published)), 5)
    assert client.categories == [c for c in published if c]
    texts = [i.text for i in items]
    whisper = score(texts, published, vocab)
    # Baseline: the pocketsphinx grammar on the same audio, what it publishes.
    pocketsphinx = score(texts, decode_items(items, vocab, "grammar")[0], vocab)
    chance = chance_exact(vocab)
    print(f"\nspeech over DDS, {whisper.n} utterances: whisper word accuracy "
          f"{whisper.word_accuracy:.3f} exact {whisper.exact:.3f}; pocketsphinx grammar word "
          f"accuracy {pocketsphinx.word_accuracy:.3f} exact {pocketsphinx.exact:.3f}; chance "
          f"exact {chance:.5f}")
    assert whisper.word_accuracy > pocketsphinx.word_accuracy
    # Above chance: exact categories, one-sided binomial test against uniform guessing.
    assert binomtest(sum(whisper.correct), whisper.n, chance,
                     alternative="greater").pvalue < 1e-3
    # Far above pocketsphinx: paired sign test on per-utterance category word errors.
    wins = sum(w < p for w, p in zip(whisper.word_errors, pocketsphinx.word_errors))
    losses = sum(w > p for w, p in zip(whisper.word_errors, pocketsphinx.word_errors))
    assert binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue < 1e-3, \
        (wins, losses)


@needs_espeak
def test_silence_noise_and_out_of_grammar_speech_publish_no_category(speech):
    client = speech.client
    rng = np.random.default_rng(7)
    before_categories, before_results = len(client.categories), len(client.results)
    # Silence (a microphone's noise floor only): not even an utterance.
    client.publish_audio(np.clip(rng.normal(0, 20, 3 * 16000), -32768, 32767)
                         .astype(np.int16), 16000)
    client.spin_until(lambda: False, 1.0)
    assert len(client.results) == before_results, "silence was taken as speech"
    # Noise: loud white noise, a crackle, a hum; heard (maybe) but never a command.
    quiet = rng.normal(0, 20, 16000)
    t = np.arange(24000) / 16000
    noises = [rng.normal(0, 3000, 24000), rng.normal(0, 1000, 24000) * (rng.random(24000) < .05),
              4000 * np.sin(2 * np.pi * 120 * t) + rng.normal(0, 200, 24000)]
    for noise in noises:
        audio = np.clip(np.concatenate([quiet, noise, quiet]), -32768, 32767).astype(np.int16)
        client.say(audio, 16000, timeout=3.0)
    # Out-of-grammar sentences (>= 12), one voice each: heard, reported as rejected.
    items = spoken_set(OUT_OF_GRAMMAR, voices_per_text=1, seed=1)
    assert len(items) >= 12
    heard = [client.say(item.samples, item.rate) for item in items]
    client.spin_until(lambda: False, 0.5)
    assert client.categories[before_categories:] == [], speech.log_tail()
    new = client.results[before_results:]
    assert all(not r.accepted and not r.category and r.reason for r in new), \
        [(r.transcript, r.reason) for r in new if r.accepted]
    missed = [item.text for item, results in zip(items, heard) if not results]
    assert not missed, f"no speech_result for {missed}: the endpointer never fired"


def test_node_declares_every_parameter_with_a_description(speech):
    from rcl_interfaces.srv import DescribeParameters

    from talk2sam_ros.speech.params import PARAMS

    client = speech.client
    srv = client.node.create_client(DescribeParameters, "/talk2sam_speech/describe_parameters")
    try:
        assert client.spin_until(srv.service_is_ready, 20)
        future = srv.call_async(DescribeParameters.Request(names=[p.name for p in PARAMS]))
        assert client.spin_until(future.done, 20)
        descriptors = future.result().descriptors
    finally:
        client.node.destroy_client(srv)
    assert [d.name for d in descriptors] == [p.name for p in PARAMS]
    assert all(d.description and d.read_only for d in descriptors)


def test_bad_sample_rate_is_ignored_with_a_warning(speech):
    client = speech.client
    before = len(client.results)
    msg = AudioChunk(sample_rate=0)
    msg.samples = array.array("h", bytes(3200))
    client.audio_pub.publish(msg)
    assert client.spin_until(lambda: "sample_rate 0 Hz" in speech.log.read_text(), 10)
    assert len(client.results) == before and speech.proc.poll() is None


@pytest.mark.parametrize("case", ["unknown_word", "microphone"])
def test_start_up_errors_are_one_clear_line_and_exit_code_1(case, ros_domain, tmp_path):
    log = tmp_path / "speech.log"
    if case == "unknown_word":  # pocketsphinx needs a pronunciation for every word
        vocab = tmp_path / "vocab.yaml"
        vocab.write_text(yaml.safe_dump({"verbs": ["find"], "objects": ["zorblewire"]}))
        args = ["-p", f"vocabulary_file:={vocab}", "-p", "backend:=pocketsphinx"]
        expected = ["zorblewire", "pronunciations"]
    else:
        args = ["-p", "use_microphone:=true", "-p", "microphone_device:=no-such-device-42"]
        # sounddevice is optional: missing package or missing device, both named.
        expected = ["microphone" if _has_sounddevice() else "sounddevice"]
    proc = start_speech_node(log, ros_domain, *args)
    try:
        proc.wait(START_TIMEOUT)
    finally:
        code = stop(proc)
    text = log.read_text()
    assert code == 1, text
    assert "cannot start" in text and all(word in text for word in expected), text


@needs_espeak
def test_a_corrupt_model_is_one_error_line_and_the_node_stays_up_rejecting(ros_domain,
                                                                           tmp_path):
    """whisper_model = a folder whose model.bin is broken: one error line naming it; the node
    keeps running, publishes nothing on `category` and says why for each utterance."""
    from talk2sam_ros.speech.whisper import bundled_model_path

    broken = tmp_path / "broken_model"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (broken / name).write_bytes((bundled_model_path() / name).read_bytes())
    (broken / "model.bin").write_bytes(b"\0" * 4096)
    log = tmp_path / "speech.log"
    domain = ros_domain
    with running_node(domain, log, lambda: start_speech_node(
            log, domain, "-p", f"whisper_model:={broken}"), SpeechClient,
            SpeechClient.wait_ready, expect_clean_exit=True) as running:
        errors = [line for line in log.read_text().splitlines() if "no recogniser" in line]
        assert len(errors) == 1 and str(broken) in errors[0], log.read_text()
        item = spoken_set(["find the cable"], 1)[0]
        results = running.client.say(item.samples, item.rate)
        assert results and all(not r.accepted and "no recogniser" in r.reason
                               for r in results), [(r.accepted, r.reason) for r in results]
        assert running.client.categories == [] and running.proc.poll() is None


def _has_sounddevice() -> bool:
    try:
        import sounddevice  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


@needs_espeak
def test_an_utterance_cut_off_by_the_publisher_is_still_closed(speech):
    """A publisher that stops mid-sentence: after flush_after_s the node decodes what it has."""
    client = speech.client
    item = spoken_set(["pick up the long black power cable"], 1, tail_s=0.0, seed=5)[0]
    before = len(client.results)
    client.publish_audio(item.samples[:int(0.8 * len(item.samples))], item.rate)
    assert client.spin_until(lambda: len(client.results) > before, 10), speech.log_tail()
    assert client.results[-1].duration_s > 0.5
