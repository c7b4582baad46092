"""The node's transport diagnostics (docs/transport.md): frames that DDS lost on the way.

A camera-like publisher in its own process, best effort 1280x720 rgb8 at 15 Hz, started
**without** the Fast DDS image profile (its shared-memory segment is too small for such
frames: most never arrive); the node (tiny preset, best-effort image QoS, the profile loaded)
counts what DDS reports lost (`frames_lost_in_transport`, the subscription's message_lost
event) and the holes in the publisher's sequence numbers (`frames_missing_by_sequence`).
No rate is asserted: only that the losses show and that the counts are consistent.
"""
from __future__ import annotations

import dataclasses
import json
import os

from node_harness import Client, module_domain, ros_environment, running_node, start_node
from rosutil import start_python, stop

from talk2sam_ros.common.transport import profile_environment
from talk2sam_ros.tools import transport as tb

FRAMES = 60


def test_frames_lost_in_transport_show_in_the_node_diagnostics(tmp_path):
    domain = module_domain(13)
    log = tmp_path / "talk2sam_node.log"
    start = lambda: start_node(log, domain, "-p", "diagnostics_period_s:=0.25",  # noqa: E731
                               "-r", f"image:={tb.TOPIC}")
    with running_node(domain, log, start, lambda c: Client(c, image_topic=tb.TOPIC),
                      Client.wait_active) as ros:
        client = ros.client
        before = client.latest_diagnostics()
        assert int(before["frames_received"]) == 0
        case = tb.Case(profile="none", width=1280, height=720, reliability="best_effort",
                       depth=5, rate_hz=15.0, frames=FRAMES)
        result = tmp_path / "publisher.json"
        env = profile_environment(None, {**os.environ, **ros_environment(domain)})
        publisher = start_python(["-m", "talk2sam_ros.tools.transport", "--role", "publisher",
                                  "--case", json.dumps(dataclasses.asdict(case)),
                                  "--result", str(result), "--timeout", "60"],
                                 tmp_path / "publisher.log", env)
        try:
            assert client.spin_until(lambda: publisher.poll() is not None, 120), \
                (tmp_path / "publisher.log").read_text()
        finally:
            stop(publisher)
        sent = json.loads(result.read_text())
        assert sent.get("sent") == FRAMES, sent
        client.spin_for(1.0)  # the last diagnostics
        after = client.latest_diagnostics()
        received = int(after["frames_received"])
        lost = int(after["frames_lost_in_transport"])
        holes = int(after["frames_missing_by_sequence"])
        assert received < FRAMES, after  # the losses happened ...
        assert lost > 0, after  # ... and DDS's count of them reached the node
        print(f"sent {FRAMES}, received {received}, message_lost {lost}, holes {holes}")
        assert lost + received <= FRAMES and holes <= FRAMES - received, after
        text = log.read_text()
        assert "image frame(s) lost in transport" in text and "docs/transport.md" in text, \
            ros.log_tail()


def test_transport_losses_raise_the_diagnostics_level():
    from builtin_interfaces.msg import Time
    from diagnostic_msgs.msg import DiagnosticStatus

    from talk2sam_ros.ros import messages as build
    from talk2sam_ros.ros.counters import Counters

    values = {**Counters().snapshot(), "encode_count": 0, "state": "active",
              "configure_error": "", "device": "cpu", "worker": "idle", "model_loaded": True,
              "prompt": ""}
    ok = build.diagnostics_message(values, "talk2sam: /talk2sam", Time()).status[0]
    assert ok.level == DiagnosticStatus.OK and "lost" not in ok.message
    for counter in ("frames_lost_in_transport", "depth_lost_in_transport"):
        status = build.diagnostics_message({**values, counter: 57}, "talk2sam: /talk2sam",
                                           Time()).status[0]
        assert status.level == DiagnosticStatus.WARN
        assert "57 lost in transport (see docs/transport.md)" in status.message
