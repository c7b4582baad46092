"""talk2sam_node lifecycle over the real /<node>/change_state service from this process.

The node runs from the `talk2sam_node` console script with autostart off, in namespace /robot,
with compressed input remapped to /camera/image_raw. Tests run in file order on one process.
"""
from __future__ import annotations

import numpy as np
import pytest
import rclpy
from node_harness import (Client, key, module_domain, ros_environment, sample_picture,
                          start_node)
from rosutil import stop
from std_msgs.msg import Header

MISSING = "/nonexistent/dir/talk2sam_tiny.pt"


class Ros:
    def __init__(self, client: Client, proc, log, tmp) -> None:
        self.client, self.proc, self.log, self.tmp = client, proc, log, tmp
        self.last_header: Header | None = None  # last frame processed before a deactivation

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def ros(tmp_path_factory):
    domain = module_domain(2)
    tmp = tmp_path_factory.mktemp("lifecycle")
    log = tmp / "talk2sam_node.log"
    with pytest.MonkeyPatch.context() as mp:
        for name, value in ros_environment(domain).items():
            mp.setenv(name, value)
        proc = start_node(log, domain, "-p", "autostart:=false",
                          "-p", "max_rate_hz:=5", "-p", "qos_depth:=0",  # int for a float; range
                          "-p", f"checkpoint_talk2sam:={MISSING}",
                          "-p", "image_transport:=compressed", "-p", "diagnostics_period_s:=0.25",
                          "-r", "__ns:=/robot", "-r", "image:=/camera/image_raw",
                          console_script=True)
        context = rclpy.Context()
        rclpy.init(context=context, domain_id=domain)
        client = Client(context, namespace="/robot", image_topic="/camera/image_raw/compressed",
                        compressed=True)
        try:
            yield Ros(client, proc, log, tmp)
        finally:
            client.close()
            context.try_shutdown()
            stop(proc)


def _image_subscribed(client: Client, expected: bool) -> bool:
    return client.spin_until(
        lambda: (client.image_pub.get_subscription_count() > 0) == expected, 30)


def _segment(client: Client, prompt_id: int):
    header = client.publish_image(sample_picture())
    client.publish_prompt(prompt_id, "person", boxes=[10, 10, 80, 100])
    return header, client.wait_output("result", header, prompt_id)


def test_without_autostart_the_node_waits_unconfigured(ros):
    assert ros.client.state() == "unconfigured", ros.log_text()[-3000:]
    assert "autostart is false" in ros.log_text()


def test_refused_start_up_values_keep_the_node_up_and_configure_failing_until_set(ros):
    client = ros.client
    log = ros.log_text()
    assert "parameter max_rate_hz refused" in log and "parameter qos_depth refused" in log
    assert client.change_state("configure") is False
    assert client.state() == "unconfigured" and ros.proc.poll() is None
    assert "configure failed: start-up values refused" in ros.log_text()
    assert "Traceback" not in ros.log_text()
    assert all(r.successful for r in client.set_parameters(max_rate_hz=5.0, qos_depth=3))


def test_configure_fails_cleanly_on_missing_and_corrupt_weights(ros):
    client = ros.client
    assert client.change_state("configure") is False
    assert client.state() == "unconfigured"
    assert f"configure failed: checkpoint_talk2sam='{MISSING}'" in ros.log_text()
    # the reason is on /diagnostics too (tools read it there, not from the log)
    status = client.latest_diagnostics()
    assert status["state"] == "unconfigured", status
    assert status["configure_error"].startswith(f"checkpoint_talk2sam='{MISSING}'"), status
    corrupt = ros.tmp / "corrupt_talk2sam.pt"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a torch file" * 10)
    assert all(r.successful for r in client.set_parameters(checkpoint_talk2sam=str(corrupt)))
    assert client.change_state("configure") is False
    assert client.state() == "unconfigured"
    assert f"cannot read {corrupt}" in ros.log_text()
    assert ros.proc.poll() is None


def test_invalid_parameter_values_are_refused_with_a_reason(ros):
    results = ros.client.set_parameters(preset="xl")
    assert not results[0].successful and "not one of tiny, t, b, l, h" in results[0].reason
    assert not ros.client.set_parameters(mask_threshold=99.0)[0].successful
    assert not ros.client.set_parameters(qos_depth="deep")[0].successful
    assert not ros.client.set_parameters(device="gpu")[0].successful


def test_configure_succeeds_once_the_weights_path_is_fixed(ros):
    from talk2sam_ros.model import build_talk2sam, get_preset, save_trained_weights

    # same fixed-seed tiny encoders; trained with a non-default architecture flag, which the
    # node must take from the file rather than from the preset
    weights = ros.tmp / "talk2sam_tiny.pt"
    save_trained_weights(build_talk2sam(get_preset("tiny").replace(train_clip_projection=True)),
                         weights)
    client = ros.client
    assert all(r.successful for r in client.set_parameters(checkpoint_talk2sam=str(weights)))
    assert client.change_state("configure") is True, ros.log_text()[-3000:]
    assert client.state() == "inactive"
    assert f"talk2sam: {weights}" in ros.log_text()
    assert client.spin_until(lambda: client.node.count_publishers("/robot/result") > 0, 30)
    assert client.image_pub.get_subscription_count() == 0  # inactive: not subscribed yet


def test_activate_processes_compressed_frames_in_the_namespace(ros):
    client = ros.client
    assert client.change_state("activate") is True
    assert client.state() == "active"
    assert client.wait_active(60)
    header, result = _segment(client, 1)
    assert result is not None, ros.log_text()[-3000:]
    ros.last_header = header
    assert (result.image_width, result.image_height) == (160, 120)
    mask = client.wait_output("mask", header)
    assert key(mask.header) == key(header) and (mask.width, mask.height) == (160, 120)
    assert set(np.unique(client.bridge.imgmsg_to_cv2(mask))) <= {0, 255}


def test_deactivate_stops_processing_and_activate_resumes(ros):
    client = ros.client
    assert client.change_state("deactivate") is True
    assert client.state() == "inactive"
    assert _image_subscribed(client, False)
    assert client.change_state("activate") is True
    assert _image_subscribed(client, True)
    # frames from before the deactivation are gone: a prompt for one is not answered with it
    client.publish_prompt(3, "person", boxes=[10, 10, 80, 100], stamp=ros.last_header)
    assert client.spin_until(lambda: client.diagnostics and
                             client.diagnostics[-1].get("prompt_frame_missed") == "1", 30), \
        ros.log_text()[-3000:]
    assert client.output("result", ros.last_header, 3) is None
    header, result = _segment(client, 2)
    assert result is not None, ros.log_text()[-3000:]


def test_cleanup_releases_the_model_and_shutdown_finalizes(ros):
    client = ros.client
    assert client.change_state("deactivate") is True
    assert client.change_state("cleanup") is True
    assert client.state() == "unconfigured"
    assert client.spin_until(lambda: client.node.count_publishers("/robot/result") == 0, 30)
    assert "cleaned up: model released" in ros.log_text()
    assert client.change_state("configure") is True  # loads again after cleanup
    assert client.change_state("shutdown") is True
    assert client.state() == "finalized"
    assert ros.proc.poll() is None
    assert stop(ros.proc, timeout=30) == 0
    log = ros.log_text()
    assert "Traceback" not in log, log[-3000:]
