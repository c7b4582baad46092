"""The one place that turns a RecognizerConfig into a recogniser (node, CLI, evaluation)."""
from __future__ import annotations

from talk2sam_ros.speech.grammar import Vocabulary
from talk2sam_ros.speech.recognizer import (PocketsphinxRecognizer, Recognizer,
                                            RecognizerConfig)


def build_recognizer(vocab: Vocabulary, config: RecognizerConfig = RecognizerConfig()
                     ) -> Recognizer:
    """The `config.backend` recogniser for `vocab`.

    Raises UnknownWordsError (pocketsphinx: a word without pronunciation), ModelError
    (whisper: model missing, corrupt or not loadable; a RuntimeError) or ValueError.
    """
    if config.backend == "pocketsphinx":
        return PocketsphinxRecognizer(vocab, config)
    from talk2sam_ros.speech.whisper import WhisperRecognizer

    return WhisperRecognizer(vocab, config)
