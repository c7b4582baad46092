"""The one stopwatch / summary (talk2sam_ros.common.timing) and its CUDA side. No timing
assertions: only what is recorded where, and that the device is synchronised at every mark."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from talk2sam_ros.common.timing import Stopwatch, summarize, timed
from talk2sam_ros.model.timing import device_sync


def test_summarize_matches_numpy():
    values = [5.0, 1.0, 3.0, 9.0, 7.0]
    s = summarize(values)
    assert s["median"] == np.median(values) and s["p90"] == np.percentile(values, 90)
    assert (s["mean"], s["min"], s["max"], s["n"]) == (5.0, 1.0, 9.0, 5)
    assert summarize([]) == {"n": 0}
    # the model profile's spelling
    assert summarize(values, ("median", "p90"), "_ms") == {
        "median_ms": np.median(values), "p90_ms": np.percentile(values, 90), "n": 5}


def test_laps_add_up_by_name_and_every_mark_synchronises():
    marks: list[int] = []
    with Stopwatch(lambda: marks.append(1)) as watch:
        first = watch.lap("encode")
        second = watch.lap("encode")
        watch.lap("decode")
        unnamed = watch.lap()
    assert len(marks) == 5  # start + four laps
    assert set(watch.laps) == {"encode", "decode"}
    assert watch.laps["encode"] == pytest.approx(first + second)
    assert min(first, second, unnamed) >= 0


def test_timed_adds_to_the_callers_dict_also_when_the_block_raises():
    laps = {"decode": 1.0}
    with timed(laps, "decode"):
        pass
    assert laps["decode"] >= 1.0
    with pytest.raises(ZeroDivisionError), timed(laps, "broken"):
        1 / 0
    assert laps["broken"] >= 0


def test_device_sync_only_for_cuda():
    assert device_sync(None) is None
    assert device_sync("cpu") is None and device_sync(torch.device("cpu")) is None
    if torch.cuda.is_available():
        sync = device_sync("cuda")
        assert callable(sync)
        sync()
