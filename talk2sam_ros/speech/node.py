"""``talk2sam_speech``: offline spoken commands -> `category` for the segmentation node.

Subscribes ``audio`` (talk2sam_ros/AudioChunk: mono int16 PCM at any rate), or reads the local
microphone (``use_microphone``, via the optional ``sounddevice`` package), cuts the stream
into utterances with a voice-activity endpointer, decodes each within the vocabulary's
commands (Whisper by default, or pocketsphinx; parameter ``backend``) and publishes

- ``category`` (std_msgs/String): the adjectives + object ("black cable") of accepted
  commands only;
- ``speech_result`` (talk2sam_ros/SpeechCategory): every utterance, accepted or rejected
  (with the reason).

A thin adapter over :class:`talk2sam_ros.speech.recognizer.SpeechPipeline`; parameters in
:mod:`talk2sam_ros.speech.params`; see docs/speech.md.
"""
from __future__ import annotations

import queue
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from talk2sam_ros.msg import AudioChunk, SpeechCategory
from talk2sam_ros.common.params import descriptor
from talk2sam_ros.common.shutdown import ShutdownSignals
from talk2sam_ros.speech.backends import build_recognizer
from talk2sam_ros.speech.grammar import default_vocabulary_path, load_vocabulary
from talk2sam_ros.speech.params import (AUDIO_TOPIC, CATEGORY_TOPIC, NODE_NAME, PARAMS,
                                        RESULT_TOPIC, SpeechConfig,
                                        speech_config_from_params)
from talk2sam_ros.speech.recognizer import (ModelError, Recognition, SpeechPipeline,
                                            UnavailableRecognizer)

MIN_RATE, MAX_RATE = 1000, 384000  # accepted AudioChunk.sample_rate, Hz
POLL_S = 0.05  # microphone queue / idle-flush timer period
LISTENER_CHECK_S = 0.5  # how often the `category` subscriber count is checked


def open_microphone(config: SpeechConfig, callback) -> Any:
    """Start a sounddevice InputStream calling `callback(int16 samples)`; clear errors when
    the package, the PortAudio library or the device is missing."""
    try:
        import sounddevice as sd
    except ImportError as exc:
        raise RuntimeError("use_microphone needs the `sounddevice` Python package: pip install "
                           "sounddevice (and the PortAudio library: apt-get install "
                           f"libportaudio2); or feed the `{AUDIO_TOPIC}` topic instead") from exc
    except OSError as exc:  # sounddevice imports but cannot load libportaudio
        raise RuntimeError(f"sounddevice cannot load PortAudio ({exc}): apt-get install "
                           "libportaudio2") from exc
    device: Any = config.microphone_device or None
    if isinstance(device, str) and device.isdigit():
        device = int(device)
    rate = config.microphone_sample_rate

    def on_block(indata, frames, time_info, status) -> None:  # PortAudio thread
        callback(np.array(indata[:, 0], np.int16))

    try:
        stream = sd.InputStream(samplerate=rate, channels=1, dtype="int16", device=device,
                                blocksize=int(rate * config.microphone_block_s),
                                callback=on_block)
        stream.start()
    except Exception as exc:  # noqa: BLE001 - PortAudioError, ValueError for bad devices
        raise RuntimeError(f"cannot open microphone {config.microphone_device or '(default)'} "
                           f"at {rate} Hz: {exc}; list devices with `python -m sounddevice`, "
                           "set microphone_device / microphone_sample_rate") from exc
    return stream


class SpeechNode(Node):
    """Audio in, category out. Raises ValueError/RuntimeError/FileNotFoundError at start-up
    for bad parameters, unknown vocabulary words or a missing microphone. A model that cannot
    be loaded (missing, corrupt) is one error line: the node stays up without a recogniser and
    reports every utterance as rejected with that reason."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        for spec in PARAMS:
            self.declare_parameter(spec.name, spec.default, descriptor(spec, read_only=True))
        cfg = speech_config_from_params(
            {spec.name: self.get_parameter(spec.name).value for spec in PARAMS})
        self._cfg = cfg
        vocab_path = cfg.vocabulary_file or str(default_vocabulary_path())
        vocab = load_vocabulary(vocab_path)
        try:
            recognizer = build_recognizer(vocab, cfg.recognizer)
        except ModelError as exc:
            self.get_logger().error(f"no recogniser, nothing will be published on "
                                    f"{CATEGORY_TOPIC}: {exc}")
            recognizer = UnavailableRecognizer(vocab, cfg.recognizer, str(exc))
        self._pipeline = SpeechPipeline(recognizer, cfg.segmenter)
        self._last_audio = time.monotonic()
        self._frame_id = ""
        out_qos = QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST,
                             reliability=ReliabilityPolicy.RELIABLE)
        self._category_pub = self.create_publisher(String, CATEGORY_TOPIC, out_qos)
        self._result_pub = self.create_publisher(SpeechCategory, RESULT_TOPIC, out_qos)
        self._mic_queue: queue.Queue[np.ndarray] = queue.Queue(maxsize=200)
        self._mic = None
        if cfg.use_microphone:
            self._mic = open_microphone(cfg, self._on_mic_block)
            self._frame_id = "microphone"
            source = f"microphone {cfg.microphone_device or '(default)'}"
        else:
            reliability = (ReliabilityPolicy.RELIABLE if cfg.audio_reliability == "reliable"
                           else ReliabilityPolicy.BEST_EFFORT)
            self.create_subscription(AudioChunk, AUDIO_TOPIC, self._on_audio, QoSProfile(
                depth=100, history=HistoryPolicy.KEEP_LAST, reliability=reliability))
            source = f"topic {self.resolve_topic_name(AUDIO_TOPIC)}"
        self._timer = self.create_timer(POLL_S, self._poll)
        # DDS discovery of the segmentation node can take a few seconds; say when it is done
        # (and when it goes away), since a command heard before that is lost.
        self._listeners = 0
        self._listener_timer = self.create_timer(LISTENER_CHECK_S, self._watch_listeners)
        self.get_logger().info(
            f"listening on {source}: {cfg.recognizer.backend} backend, {cfg.recognizer.mode} "
            f"mode, vocabulary {vocab_path} "
            f"({len(vocab.verbs)} verbs, {len(vocab.adjectives)} adjectives, "
            f"{len(vocab.objects)} objects), min_confidence {cfg.recognizer.min_confidence}")

    def _on_audio(self, msg: AudioChunk) -> None:
        rate = int(msg.sample_rate)
        if not MIN_RATE <= rate <= MAX_RATE:
            self.get_logger().warning(f"audio chunk ignored: sample_rate {rate} Hz is outside "
                                      f"[{MIN_RATE}, {MAX_RATE}]", throttle_duration_sec=5.0)
            return
        self._frame_id = msg.header.frame_id
        self._feed(np.asarray(msg.samples, np.int16), rate)

    def _on_mic_block(self, samples: np.ndarray) -> None:
        try:
            self._mic_queue.put_nowait(samples)
        except queue.Full:
            pass  # the executor is stalled; reported by _poll through the queue staying full

    def _feed(self, samples: np.ndarray, rate: int) -> None:
        self._last_audio = time.monotonic()
        if samples.size:
            self._run(lambda: self._pipeline.push(samples, rate))

    def _run(self, step: Callable[[], list[Recognition]]) -> None:
        """Publish what `step` recognised; a failure drops the open utterance, not the node."""
        try:
            results = step()
        except Exception as exc:  # noqa: BLE001 - e.g. a pocketsphinx RuntimeError
            self.get_logger().error(f"audio dropped, recogniser state reset: "
                                    f"{type(exc).__name__}: {exc}", throttle_duration_sec=5.0)
            self._pipeline = SpeechPipeline(self._pipeline.recognizer, self._cfg.segmenter)
            return
        self._publish(results)

    def _watch_listeners(self) -> None:
        count = self._category_pub.get_subscription_count()
        if count != self._listeners:
            self._listeners = count
            self.get_logger().info(f"{count} subscriber(s) on {self._category_pub.topic_name}")

    def _poll(self) -> None:
        if self._mic is not None:
            if self._mic_queue.full():
                self.get_logger().warning("microphone blocks dropped: decoding is slower than "
                                          "real time", throttle_duration_sec=5.0)
            for _ in range(self._mic_queue.qsize()):
                self._feed(self._mic_queue.get_nowait(), self._cfg.microphone_sample_rate)
        idle = time.monotonic() - self._last_audio
        if idle > self._cfg.flush_after_s and self._pipeline.in_speech:
            self._run(self._pipeline.flush)

    def _publish(self, results: list[Recognition]) -> None:
        log = self.get_logger()
        for r in results:
            msg = SpeechCategory(transcript=r.transcript, category=r.category,
                                 confidence=float(r.confidence), words=list(r.words),
                                 accepted=r.accepted, reason=r.reason,
                                 duration_s=float(r.duration_s))
            msg.header.stamp = self.get_clock().now().to_msg()
            msg.header.frame_id = self._frame_id
            if r.accepted:
                self._category_pub.publish(String(data=r.category))
                # Say who got it: a command heard before the segmentation node has been
                # discovered is otherwise lost without a trace (`category` is volatile).
                listeners = self._category_pub.get_subscription_count()
                text = (f"heard {r.transcript!r} -> category {r.category!r} "
                        f"(confidence {r.confidence:.2f}, {listeners} subscriber(s))")
                if listeners:
                    log.info(text)
                else:
                    log.warning(f"{text}: nobody subscribes to "
                                f"{self._category_pub.topic_name}, the command is lost")
            else:
                log.info(f"rejected {r.duration_s:.1f} s utterance: {r.reason}")
            self._result_pub.publish(msg)

    def close(self) -> None:
        if self._mic is not None:
            self._mic.stop()
            self._mic.close()
            self._mic = None


def main(args: list[str] | None = None) -> int:
    """Entry point of `talk2sam_speech` / `python -m talk2sam_ros.speech.node [--ros-args ...]`.

    Exit code 1 with one error line for bad parameters, unknown vocabulary words or a missing
    microphone. SIGINT/SIGTERM stop it with exit code 0, also when a second one arrives during
    the teardown (talk2sam_ros.common.shutdown).
    """
    with ShutdownSignals(restore=False) as signals:
        rclpy.init(args=args)
        node = None
        code = 0
        try:
            with signals.interruptible():
                node = SpeechNode()
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            signals.spin(lambda timeout: executor.spin_once(timeout_sec=timeout), rclpy.ok)
        except KeyboardInterrupt:
            pass  # a signal during start-up
        except (ValueError, RuntimeError, FileNotFoundError) as exc:
            rclpy.logging.get_logger(NODE_NAME).fatal(f"cannot start: {exc}")
            code = 1
        finally:
            if node is not None:
                node.close()
                node.destroy_node()
            rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
