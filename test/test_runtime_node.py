"""talk2sam_node with runtime:=onnxruntime over DDS on loopback (tiny preset).

A failed export (export_dir under a file) fails configure with one line and the node stays up;
with a usable export_dir the next configure exports (steps in the node's log), the node
segments end to end, and a later configure reuses the export. One node process for the module;
each test first brings it back to unconfigured.
"""
from __future__ import annotations

import pytest
from node_harness import (START_TIMEOUT, Client, module_domain, running_node, sample_picture,
                          start_node)

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def ros(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runtime_node")
    blocker = tmp / "a_file"
    blocker.write_text("not a folder")
    domain = module_domain(41)
    log = tmp / "talk2sam_node.log"
    with running_node(
            domain, log,
            lambda: start_node(log, domain, "-p", "autostart:=false", "-p", "device:=cpu",
                               "-p", "runtime:=onnxruntime",
                               "-p", f"export_dir:={blocker / 'exports'}",
                               "-p", "diagnostics_period_s:=0.25"),
            lambda context: Client(context),
            lambda client: client.spin_until(lambda: bool(client.diagnostics),
                                             START_TIMEOUT)) as node:
        yield node, blocker / "exports", tmp / "exports"


def _unconfigure(client: Client) -> None:
    """Back to unconfigured from wherever an earlier test left the node."""
    if client.state() == "active":
        assert client.change_state("deactivate") is True
    if client.state() == "inactive":
        assert client.change_state("cleanup") is True
    assert client.state() == "unconfigured"


def test_failed_export_fails_configure_in_one_line_and_the_node_stays_up(ros):
    node, unusable, _ = ros
    client = node.client
    _unconfigure(client)
    assert all(r.successful for r in client.set_parameters(export_dir=str(unusable)))
    assert client.change_state("configure") is False
    assert client.state() == "unconfigured" and node.proc.poll() is None
    log = node.log.read_text(errors="replace")
    assert "configure failed: cannot create the export folder " in log, log[-3000:]
    assert "Traceback" not in log
    status = client.latest_diagnostics()
    assert status["configure_error"].startswith("cannot create the export folder "), status


def test_configure_exports_segments_end_to_end_and_reconfigure_reuses(ros):
    node, _, exports = ros
    client = node.client
    _unconfigure(client)
    assert all(r.successful for r in client.set_parameters(export_dir=str(exports)))
    assert client.change_state("configure", timeout=400) is True, node.log_tail()
    log = node.log.read_text(errors="replace")
    assert "exporting the SAM-HQ image encoder to ONNX" in log and "exporting DINOv2" in log
    assert log.count("export kept in") == 2, log[-3000:]
    assert sorted(p.name.split("-")[0] for p in exports.iterdir()) == ["dinov2", "sam_hq"]
    assert client.change_state("activate") is True
    assert client.wait_active(60)
    header = client.publish_image(sample_picture())
    client.publish_prompt(7, "person", boxes=[10, 10, 80, 100])
    result = client.wait_output("result", header, 7)
    assert result is not None, node.log_tail()
    assert len(result.boxes) == 4 and client.wait_output("mask", header) is not None

    _unconfigure(client)
    assert client.change_state("configure", timeout=200) is True, node.log_tail()
    log = node.log.read_text(errors="replace")
    assert log.count("using the validated export") == 2 and log.count("export kept in") == 2
