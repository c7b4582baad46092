"""Spoken command to mask: talk2sam_speech + talk2sam_node (tiny preset) as real processes.

A spoken "find the cable" (espeak-ng) is published on `audio`; the speech node publishes
`category` "cable", the segmentation node takes it as its prompt, and the next image gets a
`mask`. If a voice is rejected (low confidence) the command is repeated in the next voice, as
a user would.
"""
from __future__ import annotations

import numpy as np
import pytest
import rclpy
from rosutil import REPO, stop

pytest.importorskip("pocketsphinx", reason="pocketsphinx (the `speech` extra) not installed")
if not (REPO / "talk2sam_ros" / "ros" / "node.py").is_file():
    pytest.skip("talk2sam_ros/ros/node.py (the segmentation node) does not exist yet",
                allow_module_level=True)

from node_harness import (Client, module_domain, ros_environment, sample_picture,  # noqa: E402
                          start_node)
from test_speech_node import SpeechClient, start_speech_node  # noqa: E402

from talk2sam_ros.speech.evaluate import VOICES, spoken_set  # noqa: E402
from talk2sam_ros.speech.synth import espeak_available  # noqa: E402


@pytest.mark.slow
@pytest.mark.skipif(not espeak_available(),
                    reason="espeak-ng not installed (apt-get install espeak-ng)")
def test_spoken_find_the_cable_gives_a_mask_for_the_next_frame(tmp_path):
    domain = module_domain(32)
    with pytest.MonkeyPatch.context() as mp:
        for name, value in ros_environment(domain).items():
            mp.setenv(name, value)
        segmenter = start_node(tmp_path / "talk2sam_node.log", domain)
        speech = None
        context = rclpy.Context()
        rclpy.init(context=context, domain_id=domain)
        client = Client(context)
        speaker = SpeechClient(context)
        try:
            logs = lambda: "\n".join(  # noqa: E731
                p.read_text(errors="replace")[-2000:] for p in tmp_path.glob("*.log"))
            # As a launch file leaves it once everything is up: the segmentation node listens
            # on `category`, then the speech node starts.
            assert client.wait_active(), logs()
            speech = start_speech_node(tmp_path / "talk2sam_speech.log", domain)
            assert speaker.wait_ready(), logs()
            # Discovery between the two nodes can take seconds (a command heard before it is
            # lost, as for a user): speak once the speech node reports both listeners, the
            # segmentation node and this test.
            speech_log = tmp_path / "talk2sam_speech.log"
            assert speaker.spin_until(
                lambda: "2 subscriber(s) on /category" in speech_log.read_text(), 60), logs()
            for item in spoken_set(["find the cable"], voices_per_text=len(VOICES)):
                results = speaker.say(item.samples, item.rate)
                if any(r.accepted for r in results):
                    break
            assert speaker.spin_until(lambda: speaker.categories, 5), \
                [(r.transcript, r.reason) for r in speaker.results]
            assert speaker.categories == ["cable"]
            # The speech node had matched the segmentation node before we spoke, so the prompt
            # is set; the next frame is answered with a mask.
            header = client.publish_image(sample_picture(), "bgr8")
            mask = client.wait_output("mask", header, timeout=120)
            assert mask is not None, (logs(), client.latest_diagnostics(), domain,
                                      client.node.get_node_names_and_namespaces())
            result = client.wait_output("result", header, timeout=30)
            assert result is not None and result.text == "cable" and result.prompt_id == -1
            assert (mask.width, mask.height, mask.encoding) == (160, 120, "mono8")
            pixels = np.frombuffer(bytes(mask.data), np.uint8)
            assert set(np.unique(pixels)) <= {0, 255}
        finally:
            speaker.close()
            client.close()
            context.try_shutdown()
            if speech is not None:
                stop(speech)
            stop(segmenter)
