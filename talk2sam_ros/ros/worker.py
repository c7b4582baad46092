"""The segmentation node's worker thread: runs the scheduler's jobs and publishes the outputs.

One Worker per activation. It holds the predictor and the publishers it was given for as long
as its thread runs; the node frees them only once :attr:`Worker.alive` is false (a frame in the
model cannot be interrupted, so a stop may leave the thread running past the node's timeout).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from sensor_msgs.msg import CompressedImage, Image

from talk2sam_ros.common.timing import Stopwatch
from talk2sam_ros.grasp import DepthPairing, Grasp, grasp_from_mask
from talk2sam_ros.ros import conversions as conv
from talk2sam_ros.ros import grasp3d_messages as gm
from talk2sam_ros.ros import messages as build
from talk2sam_ros.ros import rgbd
from talk2sam_ros.ros.counters import Counters, grasp3d_counter
from talk2sam_ros.ros.params import TOPIC_BY_NAME, NodeConfig
from talk2sam_ros.ros.scheduler import UNSTAMPED, Frame, Job, Prompt, Scheduler, Stamp

LOG_PERIOD_S = 2.0  # per-frame error lines: one per call site and period


def stamp_text(stamp: Stamp) -> str:
    return f"{stamp[0]}.{stamp[1]:09d}"


class Worker:
    """Runs jobs from `scheduler` on `predictor`, publishing on `publishers` (name -> lifecycle
    publisher, the node's outputs).

    config: the node's current NodeConfig (live parameters apply to the next job);
    reject(counter, what, reason): the node's counted, throttled rejection log;
    warn(counter, line): the same for a whole line; now_ns: the node clock (frame ages);
    context_ok: false once ROS is shutting down; pairing: the depth and camera_info the node
    receives (use_depth), matched to each frame by stamp.
    """

    def __init__(self, scheduler: Scheduler, predictor: Any, publishers: Mapping[str, Any],
                 bridge: Any, counters: Counters, logger: Any,
                 config: Callable[[], NodeConfig | None],
                 reject: Callable[[str, str, str], None], now_ns: Callable[[], int],
                 context_ok: Callable[[], bool], *, warn: Callable[[str, str], None],
                 pairing: DepthPairing | None = None) -> None:
        self._scheduler, self._predictor, self._pubs = scheduler, predictor, dict(publishers)
        self._bridge, self._counters, self._log = bridge, counters, logger
        self._config, self._reject, self._now_ns, self._ok = config, reject, now_ns, context_ok
        self._warn = warn
        self._pairing = pairing
        self._markers = rgbd.MarkerNamespaces()
        self._stop = threading.Event()
        self._busy = False
        self._encoded: Frame | None = None  # the frame whose encoding the predictor holds
        self._thread = threading.Thread(target=self._run, name="talk2sam_worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def status(self) -> str:
        """none (ended), idle, busy (running a job) or stopping (asked to stop, still busy)."""
        if not self.alive:
            return "none"
        return "stopping" if self._stop.is_set() else "busy" if self._busy else "idle"

    def stop(self, timeout: float, hurry: threading.Event | None = None) -> bool:
        """Ask the thread to stop and wait up to `timeout` s (less once `hurry` is set) for
        the job in progress; True when the thread has ended."""
        self._stop.set()
        self._scheduler.wake()
        deadline = time.monotonic() + timeout
        while self.alive and time.monotonic() < deadline \
                and not (hurry is not None and hurry.is_set()):
            self._thread.join(0.05)
        return not self.alive

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        while not self._stop.is_set():
            job = self._scheduler.take(self._stop, timeout=0.5)
            cfg = self._config()
            if job is None or cfg is None:
                continue
            self._busy = True
            try:
                self._run_job(job, cfg)
            finally:
                self._busy = False

    def _run_job(self, job: Job, cfg: NodeConfig) -> None:
        import torch

        if job.prompt is None and not cfg.publish_similarity_without_prompt:
            self._counters.add("frames_idle")
            return
        try:
            self._process(job.frame, job.prompt, cfg)
        except (conv.InputRejected, ValueError) as exc:
            self._reject("frames_rejected", f"frame {stamp_text(job.frame.stamp)}", str(exc))
        except torch.cuda.OutOfMemoryError:
            self._counters.add("out_of_memory")
            self._encoded = None
            torch.cuda.empty_cache()
            msg = job.frame.image
            size = f"{msg.width}x{msg.height}" if isinstance(msg, Image) else "compressed"
            self._log.error(f"CUDA out of memory on a {size} frame: dropped",
                            throttle_duration_sec=LOG_PERIOD_S)
        except Exception as exc:  # keep the node alive whatever the model does
            if self._stop.is_set() or not self._ok():
                return  # shutting down: the outputs are off
            self._counters.add("errors")
            self._encoded = None
            self._log.error(f"frame {stamp_text(job.frame.stamp)} failed: "
                            f"{type(exc).__name__}: {exc}", throttle_duration_sec=LOG_PERIOD_S)

    def _process(self, frame: Frame, prompt: Prompt | None, cfg: NodeConfig) -> None:
        timing: list[tuple[str, float]] = []
        clock = [time.perf_counter()]

        def lap(stage: str) -> None:
            now = time.perf_counter()
            timing.append((stage, (now - clock[0]) * 1e3))
            clock[0] = now

        if frame.rgb is None:
            frame.rgb = (conv.compressed_to_rgb(frame.image, self._bridge)
                         if isinstance(frame.image, CompressedImage)
                         else conv.image_to_rgb(frame.image, self._bridge))
        rgb = frame.rgb
        height, width = rgb.shape[:2]
        lap("convert")
        if cfg.debug_delay_ms:
            time.sleep(cfg.debug_delay_ms / 1000.0)  # uninterruptible, like a model call
            lap("debug_delay")
        boxes, kept = None, np.zeros(0, np.int64)
        if prompt is not None and prompt.boxes is not None:
            boxes, kept = conv.boxes_for_frame(prompt.boxes, prompt.frame_id,
                                               frame.header.frame_id, width, height, prompt.id)
        if self._stop.is_set():
            return  # deactivated meanwhile: the outputs are off
        reused = self._encoded is frame
        if reused:
            self._counters.add("reused_encodings")
        else:
            self._encoded = None
            self._predictor.set_image(rgb)
            self._encoded = frame
            self._counters.add("encodings")
            lap("encode_image")
            timing.extend((f"encode.{k}", float(v)) for k, v in
                          getattr(self._predictor, "last_encode_timings", {}).items())
        text = prompt.text if prompt is not None else cfg.idle_text.strip()
        res = self._predictor.predict(text=text, boxes=boxes)
        lap("predict")
        timing.extend((f"predict.{k}", float(v)) for k, v in res.timings.items())
        if not self._stop.is_set():
            self._publish(frame, prompt, res, kept, reused, cfg, timing, lap)

    def _wanted(self, cfg: NodeConfig) -> set[str]:
        """Outputs enabled by their publish_* parameter and subscribed to."""
        return {name for name, pub in self._pubs.items() if TOPIC_BY_NAME[name].switch
                and getattr(cfg, TOPIC_BY_NAME[name].switch)
                and pub.get_subscription_count() > 0}

    def _send(self, messages: Mapping[str, Any]) -> None:
        for name, msg in messages.items():
            self._pubs[name].publish(msg)

    def _publish(self, frame: Frame, prompt: Prompt | None, res: Any, kept: np.ndarray,
                 reused: bool, cfg: NodeConfig, timing: list[tuple[str, float]],
                 lap: Callable[[str], None]) -> None:
        header, rgb, bridge, wanted = frame.header, frame.rgb, self._bridge, self._wanted(cfg)
        self._counters.add("frames_processed")
        self._send(build.map_outputs(res.similarity, rgb, header, cfg.overlay_alpha, wanted,
                                     bridge))
        if prompt is None:  # idle similarity only
            lap("publish")
            return
        seg = build.Segmentation.from_prediction(res, cfg.mask_threshold, rgb.shape[:2])
        self._send(build.mask_outputs(seg, header, wanted, bridge))
        lap("publish_maps")
        grasp = None
        # the 3D outputs wanted (with use_depth, `grasp` gets its 3D fields too)
        wanted_3d = wanted & rgbd.RGBD_OUTPUTS if cfg.use_depth and self._pairing else set()
        if "grasp" in wanted or wanted_3d & rgbd.POSE_OUTPUTS:
            grasp = grasp_from_mask(seg.union, cfg.grasp)
            candidate = build.grasp_message(grasp, header, prompt.id) if "grasp" in wanted \
                else None
            if not wanted_3d and candidate is not None:
                self._send({"grasp": candidate})
            lap("grasp")
            if wanted_3d:
                self._publish_3d(frame, prompt, seg.union, grasp, candidate, wanted_3d, cfg,
                                 timing)
                lap("grasp3d")
        elif wanted_3d:  # the cloud alone
            self._publish_3d(frame, prompt, seg.union, None, None, wanted_3d, cfg, timing)
            lap("grasp3d")
        if "overlay" in wanted:
            self._send({"overlay": build.overlay_message(
                rgb, seg, prompt.text, cfg.overlay_alpha, grasp, header, bridge)})
            lap("overlay")
        self._pubs["result"].publish(build.result_message(
            header, prompt, seg, kept, rgb.shape[:2], reused, self._age_ms(frame), timing,
            self._counters.snapshot()))

    def _publish_3d(self, frame: Frame, prompt: Prompt, mask: np.ndarray, grasp: Grasp | None,
                    candidate: Any, wanted: set[str], cfg: NodeConfig,
                    timing: list[tuple[str, float]]) -> None:
        """The RGB-D stage (docs/grasp.md): pair, decode, 3D grasp, its messages; counted per
        3D status and, when something is wrong, one rate-limited line per kind."""
        watch = Stopwatch().start()
        depth, fresh = rgbd.frame_depth(frame, self._pairing, cfg, self._stop)
        timing.append(("grasp3d.depth", watch.lap()))
        where = f"3D grasp for frame {stamp_text(frame.stamp)}"
        if fresh and depth.frame_warning:
            self._warn("depth_frame_mismatch", f"{where}: {depth.frame_warning}")
        if fresh and depth.ok and abs(depth.camera_info_dt_ns) > self._pairing.max_dt_ns:
            self._counters.add("camera_info_reused")  # camera_info_latest: asked for
        out = rgbd.grasp3d_outputs(depth, mask, grasp, frame.rgb, frame.header, prompt, wanted,
                                   cfg, self._markers, frame.seq)
        counter = grasp3d_counter(out.status)
        if out.status in rgbd.QUIET_STATUSES:
            self._counters.add(counter)
        else:
            self._warn(counter, f"{where}: {out.status}: {out.reason}")
        watch.lap()  # grasp3d_outputs' own parts are in out.timing
        messages = dict(out.messages)
        if candidate is not None:
            messages["grasp"] = gm.fill_grasp_3d(candidate, out.grasp)
        self._send(messages)
        timing.extend(out.timing)
        timing.append(("grasp3d.publish", watch.lap()))  # the 3D fields of `grasp`, sending

    def _age_ms(self, frame: Frame) -> float:
        """now - header.stamp (time since receipt for unstamped frames)."""
        if frame.stamp == UNSTAMPED:
            return (time.monotonic() - frame.received) * 1e3
        sec, nsec = frame.stamp
        return (self._now_ns() - (sec * 1_000_000_000 + nsec)) / 1e6
