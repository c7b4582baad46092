"""Offline speech front end: spoken commands ("pick up the black cable") -> category text.

ROS-free core (``grammar``, ``recognizer``) used by the ``talk2sam_speech`` node
(``talk2sam_ros.speech.node``) and the ``talk2sam-say-to-prompt`` CLI. Needs ``pocketsphinx``
(the ``speech`` extra), imported only when a recogniser is built.
"""
