"""Image transport benchmark: ``talk2sam-transport-bench``.

How many camera frames reach a plain rclpy subscriber in another process on this host, for
each (Fast DDS profile, frame size, QoS) case. Each case runs in two fresh processes (Fast DDS
reads its XML profile once per process): a publisher sending `frames` rgb8 images at `rate`
Hz, numbered in ``header.frame_id``, and a subscriber with the node's image QoS (reliability,
KEEP_LAST depth). Counted per case, independently of DDS: frames sent, frames received, and
missing ones; next to them what DDS itself shows: gaps in the writer's publication sequence
numbers (what the node can see), the ``message_lost`` event count, the subscriber's UDP
socket drops and receive-buffer sizes, and whether shared memory carried the data (its
mapped Fast DDS segments). Prints a Markdown table and writes JSON + Markdown to --out.
"""
from __future__ import annotations

import argparse
import array
import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from talk2sam_ros.common.cli import run_cli
from talk2sam_ros.common.transport import SequenceGaps, images_profile, profile_environment

PROG = "talk2sam-transport-bench"
RELIABILITIES = ("best_effort", "reliable")
SIDES = ("both", "publisher", "subscriber")  # which process of a case loads the profile
TOPIC = "t2s_transport_bench/image"
SHM_PREFIX = "/dev/shm/fastdds_"  # Fast DDS's shared-memory segments and ports


# ----------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One measurement: a profile, a frame size and the image QoS on both ends."""
    profile: str  # label: "none" (Fast DDS defaults), "shipped", a study variant or a file
    width: int
    height: int
    reliability: str = "best_effort"
    depth: int = 5  # KEEP_LAST depth of publisher and subscriber (the node's qos_depth)
    rate_hz: float = 15.0
    frames: int = 100
    profile_on: str = "both"  # both | publisher | subscriber: which process loads the profile

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def frame_bytes(self) -> int:
        return self.width * self.height * 3


@dataclass(frozen=True)
class Counts:
    """What one subscriber saw of `sent` numbered frames."""
    sent: int
    received: int  # distinct frame numbers
    missing: int  # sent - received
    inner_missing: int  # missing between the first and the last received frame
    duplicates: int
    seq_gaps: int  # publication sequence numbers skipped (SequenceGaps): what a node sees
    first_missing: tuple[int, ...]  # up to 10 missing frame numbers, for the report


def count_frames(numbers: Sequence[int], sent: int) -> Counts:
    """What a subscriber that received frame `numbers` saw of frames 0..sent-1; `seq_gaps`
    is left 0 (the subscriber counts it from the sequence numbers)."""
    seen = {n for n in numbers if 0 <= n < sent}
    inner = max(seen) - min(seen) + 1 - len(seen) if seen else 0
    return Counts(sent=sent, received=len(seen), missing=sent - len(seen), inner_missing=inner,
                  duplicates=len(numbers) - len(set(numbers)), seq_gaps=0,
                  first_missing=tuple(n for n in range(sent) if n not in seen)[:10])


# ----------------------------------------------------------------------------- what the OS shows


def udp_sockets() -> list[dict[str, int]]:
    """This process's UDP sockets: local port, receive buffer (bytes, as the kernel set it)
    and datagrams the kernel dropped because that buffer was full (/proc/net/udp)."""
    inodes: dict[int, int] = {}  # socket inode -> fd
    with contextlib.suppress(OSError):
        for fd_name in os.listdir("/proc/self/fd"):
            target = _readlink(f"/proc/self/fd/{fd_name}")
            if target.startswith("socket:["):
                inodes[int(target[8:-1])] = int(fd_name)
    found = []
    for table in ("/proc/self/net/udp", "/proc/self/net/udp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                inode = int(cols[9])
                if inode in inodes:
                    found.append({"port": int(cols[1].split(":")[1], 16),
                                  "rcvbuf": _rcvbuf(inodes[inode]), "drops": int(cols[-1])})
    return found


def shm_segments() -> dict[str, int]:
    """Fast DDS shared-memory files this process has mapped -> mapped bytes (/proc/self/maps)."""
    sizes: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/maps").read_text().splitlines():
            cols = line.split(maxsplit=5)
            if len(cols) == 6 and cols[5].startswith(SHM_PREFIX):
                start, end = (int(x, 16) for x in cols[0].split("-"))
                sizes[cols[5]] = sizes.get(cols[5], 0) + end - start
    return sizes


def _rcvbuf(fd: int) -> int:
    with socket.socket(fileno=os.dup(fd)) as sock:  # a duplicate: the library's fd stays open
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:  # the fd closed meanwhile
        return ""


# ----------------------------------------------------------------------------- the two processes


def _qos(reliability: str, depth: int):
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    policy = (ReliabilityPolicy.RELIABLE if reliability == "reliable"
              else ReliabilityPolicy.BEST_EFFORT)
    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, reliability=policy)


def run_publisher(case: Case, timeout_s: float, settle_s: float = 1.0) -> dict[str, Any]:
    """Wait for the subscriber, publish `case.frames` numbered frames at `case.rate_hz`."""
    import rclpy
    from rclpy.duration import Duration
    from sensor_msgs.msg import Image

    rclpy.init()
    try:
        node = rclpy.create_node("t2s_transport_pub")
        pub = node.create_publisher(Image, TOPIC, _qos(case.reliability, case.depth))
        own_shm = max(shm_segments().values(), default=0)  # its own, before peers'
        deadline = time.monotonic() + timeout_s
        while pub.get_subscription_count() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        if pub.get_subscription_count() < 1:
            return {"error": f"no subscriber matched within {timeout_s:.0f} s"}
        time.sleep(settle_s)  # the subscriber's side of the match
        rng = np.random.default_rng(0)
        pixels = rng.integers(0, 256, case.frame_bytes, dtype=np.uint8)
        msg = Image(height=case.height, width=case.width, encoding="rgb8", step=case.width * 3)
        msg.data = array.array("B", pixels.tobytes())  # no per-byte check in the setter
        publish_ms = []
        period = 1.0 / case.rate_hz
        start = time.monotonic()
        for i in range(case.frames):
            time.sleep(max(0.0, start + i * period - time.monotonic()))
            msg.header.stamp = node.get_clock().now().to_msg()
            msg.header.frame_id = str(i)
            t0 = time.perf_counter()
            pub.publish(msg)
            publish_ms.append((time.perf_counter() - t0) * 1e3)
        late_s = time.monotonic() - start - (case.frames - 1) * period
        acked = pub.wait_for_all_acked(Duration(seconds=5.0))
        time.sleep(0.5)  # last best-effort datagrams still in flight
        node.destroy_node()
        return {"sent": case.frames, "acked": acked, "late_s": round(late_s, 3),
                "shm_segment_bytes": own_shm,
                "publish_ms_median": float(np.median(publish_ms)),
                "publish_ms_max": float(np.max(publish_ms))}
    finally:
        rclpy.try_shutdown()


def run_subscriber(case: Case, timeout_s: float) -> dict[str, Any]:
    """Receive until the publisher has come and gone (or `timeout_s`); record every frame."""
    import rclpy
    from rclpy.event_handler import SubscriptionEventCallbacks
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image

    numbers: list[int] = []
    gaps = SequenceGaps()
    latency_ms: list[float] = []
    lost = [0]

    def on_image(msg: Image, info: Mapping[str, Any]) -> None:
        numbers.append(int(msg.header.frame_id))
        gaps.add(str(info.get("publisher_gid")), int(info["publication_sequence_number"]))
        latency_ms.append((info["received_timestamp"] - info["source_timestamp"]) / 1e6)

    def on_lost(status: Any) -> None:  # Fast DDS's own count of samples it gave up on
        lost[0] += status.total_count_change

    rclpy.init()
    try:
        node = rclpy.create_node("t2s_transport_sub")
        sub = node.create_subscription(
            Image, TOPIC, on_image, _qos(case.reliability, case.depth),
            event_callbacks=SubscriptionEventCallbacks(message_lost=on_lost))
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        own_shm = max(shm_segments().values(), default=0)  # its own, before peers'
        print("subscribed", flush=True)
        deadline = time.monotonic() + timeout_s
        matched = gone = False
        while time.monotonic() < deadline and not gone:
            executor.spin_once(timeout_sec=0.05)
            count = sub.get_publisher_count()
            gone = matched and count == 0
            matched = matched or count > 0
        for _ in range(20):  # what arrived just before the publisher left
            executor.spin_once(timeout_sec=0.01)
        udp = udp_sockets()
        node.destroy_node()
        return {"numbers": numbers, "seq_gaps": gaps.missing, "publishers": gaps.publishers,
                "message_lost": lost[0],
                "latency_ms_median": float(np.median(latency_ms)) if latency_ms else None,
                "udp_drops": sum(s["drops"] for s in udp),
                "udp_rcvbuf_max": max((s["rcvbuf"] for s in udp), default=0),
                "shm_segment_bytes": own_shm, "timed_out": not gone}
    finally:
        rclpy.try_shutdown()


# ----------------------------------------------------------------------------- orchestration


def _child(role: str, case: Case, result: Path, log: Path, timeout_s: float,
           env: Mapping[str, str]) -> subprocess.Popen:
    args = [sys.executable, "-m", "talk2sam_ros.tools.transport", "--role", role,
            "--case", json.dumps(dataclasses.asdict(case)), "--result", str(result),
            "--timeout", str(timeout_s)]
    with open(log, "w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=dict(env))


def _wait_line(log: Path, text: str, proc: subprocess.Popen, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if text in log.read_text(errors="replace"):
            return True
        time.sleep(0.05)
    return text in log.read_text(errors="replace")


def _finish(proc: subprocess.Popen, timeout_s: float) -> None:
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _read_result(path: Path, log: Path, role: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
        return {"error": f"{role} wrote no result ({tail or 'no output'})"}


@dataclass(frozen=True)
class Profile:
    """A Fast DDS profile file (None: Fast DDS defaults) and the environment it runs with."""
    path: Path | None
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)


def measure(case: Case, profile: Profile, work: Path, timeout_s: float = 60.0,
            base_env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run one case in a fresh subscriber and publisher process; the row for the table."""
    base = {**(os.environ if base_env is None else base_env), **profile.env,
            "PYTHONUNBUFFERED": "1"}
    env = {role: profile_environment(profile.path if case.profile_on in ("both", role)
                                     else None, base)
           for role in ("subscriber", "publisher")}
    name = (f"{case.profile}_{case.size}_{case.reliability}_d{case.depth}_{case.profile_on}"
            .replace("/", "_"))
    files = {role: (work / f"{name}.{role}.json", work / f"{name}.{role}.log") for role in env}
    for result, _ in files.values():
        result.unlink(missing_ok=True)
    run_s = case.frames / case.rate_hz + timeout_s
    sub = _child("subscriber", case, *files["subscriber"], run_s + 15.0, env["subscriber"])
    pub = None
    try:
        if not _wait_line(files["subscriber"][1], "subscribed", sub, timeout_s):
            return {**_row_base(case), "error": "subscriber did not start"}
        pub = _child("publisher", case, *files["publisher"], timeout_s, env["publisher"])
        _finish(pub, run_s + 15.0)
        _finish(sub, 30.0)
    finally:
        for proc in (pub, sub):
            if proc is not None:
                _finish(proc, 0.0)
    return summarize_case(case, _read_result(*files["publisher"], "publisher"),
                          _read_result(*files["subscriber"], "subscriber"))


def _row_base(case: Case) -> dict[str, Any]:
    return {"profile": case.profile, "profile_on": case.profile_on, "size": case.size,
            "reliability": case.reliability, "depth": case.depth, "rate_hz": case.rate_hz}


def summarize_case(case: Case, pub: Mapping[str, Any], sub: Mapping[str, Any]) -> dict[str, Any]:
    """One table row from the two processes' results."""
    row = _row_base(case)
    error = pub.get("error") or sub.get("error")
    if error:
        return {**row, "error": error}
    counts = dataclasses.replace(count_frames(sub["numbers"], pub["sent"]),
                                 seq_gaps=sub["seq_gaps"])
    extra = {k: v for k, v in sub.items() if k not in ("numbers", "seq_gaps")}
    return {**row, **dataclasses.asdict(counts),
            "received_pct": round(100.0 * counts.received / max(1, counts.sent), 1),
            **extra, **{f"pub_{k}": v for k, v in pub.items() if k != "sent"}}


# ----------------------------------------------------------------------------- study variants


def variant_xml(shm_segment_bytes: int | None, udp: bool = True,
                udp_buffer_bytes: int | None = None, loopback_only: bool = False) -> str:
    """A Fast DDS profile with only the given transports, for measuring one option at a time:
    SHM with that segment size (None: no SHM), UDPv4 (optionally with socket buffer sizes;
    `loopback_only`: bound to 127.0.0.1 and discovering peers there, for runs where rmw's
    LOCALHOST mode, which always adds its own SHM transport, is switched off)."""
    transports, ids = [], []
    if shm_segment_bytes is not None:
        ids.append("shm")
        transports.append("<transport_descriptor><transport_id>shm</transport_id><type>SHM"
                          f"</type><segment_size>{shm_segment_bytes}</segment_size>"
                          "</transport_descriptor>")
    if udp:
        ids.append("udp")
        options = ("" if udp_buffer_bytes is None else
                   f"<sendBufferSize>{udp_buffer_bytes}</sendBufferSize>"
                   f"<receiveBufferSize>{udp_buffer_bytes}</receiveBufferSize>")
        if loopback_only:
            options += "<interfaceWhiteList><address>127.0.0.1</address></interfaceWhiteList>"
        transports.append("<transport_descriptor><transport_id>udp</transport_id><type>UDPv4"
                          f"</type>{options}</transport_descriptor>")
    refs = "".join(f"<transport_id>{i}</transport_id>" for i in ids)
    peers = ("<builtin><initialPeersList><locator><udpv4><address>127.0.0.1</address></udpv4>"
             "</locator></initialPeersList></builtin>" if loopback_only else "")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            '<profiles xmlns="http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles">'
            f"<transport_descriptors>{''.join(transports)}</transport_descriptors>"
            '<participant profile_name="t2s_variant" is_default_profile="true"><rtps>'
            f"{peers}<userTransports>{refs}</userTransports>"
            "<useBuiltinTransports>false</useBuiltinTransports></rtps></participant>"
            "</profiles>\n")


# rmw_fastrtps's LOCALHOST discovery range always adds a default SHM transport (512 KiB
# segment) next to the profile's; UDP-only variants run with it off and stay on 127.0.0.1.
NOT_LOCALHOST = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "SYSTEM_DEFAULT", "ROS_LOCALHOST_ONLY": "0"}
STUDY: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    # label -> (variant_xml arguments, environment); each changes one thing
    "udp_only": ({"shm_segment_bytes": None, "loopback_only": True}, NOT_LOCALHOST),
    "udp_only_4MiB_buffers": ({"shm_segment_bytes": None, "loopback_only": True,
                               "udp_buffer_bytes": 4 << 20}, NOT_LOCALHOST),
    "shm_512KiB": ({"shm_segment_bytes": 512 << 10}, {}),
    "shm_4MiB": ({"shm_segment_bytes": 4 << 20}, {}),
    "shm_16MiB": ({"shm_segment_bytes": 16 << 20}, {}),
}


def resolve_profiles(names: Sequence[str], work: Path) -> dict[str, Profile]:
    """Profile labels -> profiles: "none", "shipped", a STUDY label (its XML written into
    `work`) or the path of the user's own XML (labelled by its file name)."""
    out: dict[str, Profile] = {}
    for name in names:
        if name == "none":
            out[name] = Profile(None)
        elif name == "shipped":
            path = images_profile()
            if not path.is_file():
                raise FileNotFoundError(f"shipped profile not found: {path}")
            out[name] = Profile(path)
        elif name in STUDY:
            options, env = STUDY[name]
            path = work / f"{name}.xml"
            path.write_text(variant_xml(**options))
            out[name] = Profile(path, env)
        elif Path(name).is_file():
            out[Path(name).stem] = Profile(Path(name))
        else:
            raise FileNotFoundError(f"profile {name!r} is none, shipped, one of "
                                    f"{', '.join(STUDY)} or an existing XML file")
    return out


COLUMNS = ("profile", "profile_on", "size", "reliability", "depth", "sent", "received", "received_pct",
           "seq_gaps", "message_lost", "udp_drops", "udp_rcvbuf_max", "shm_segment_bytes",
           "pub_shm_segment_bytes",
           "latency_ms_median", "pub_late_s")


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    def cell(row: Mapping[str, Any], key: str) -> str:
        value = row.get(key, "")
        if key == "latency_ms_median" and isinstance(value, float):
            return f"{value:.1f}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(COLUMNS) + " | error |",
             "|" + "---|" * (len(COLUMNS) + 1)]
    lines += ["| " + " | ".join(cell(r, k) for k in COLUMNS) + f" | {r.get('error', '')} |"
              for r in rows]
    return "\n".join(lines)


def summary_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Frames received over all runs of each case (the figure for the README): total and the
    worst run, per profile x size (columns) and reliability / depth / profile side (rows)."""
    def key(row: Mapping[str, Any]) -> tuple:
        return row["profile"], row["profile_on"], row["reliability"], row["depth"]

    sizes = list(dict.fromkeys(r["size"] for r in rows))
    cells: dict[tuple, dict[str, list[Mapping[str, Any]]]] = {}
    for row in rows:
        cells.setdefault(key(row), {}).setdefault(row["size"], []).append(row)

    def cell(runs: list[Mapping[str, Any]]) -> str:
        ok = [r for r in runs if "error" not in r]
        if not ok:
            return "error"
        got, sent = sum(r["received"] for r in ok), sum(r["sent"] for r in ok)
        worst = min(r["received_pct"] for r in ok)
        return f"{100.0 * got / sent:.1f} % ({got}/{sent}; worst run {worst:g} %)"

    lines = ["| profile | loaded by | reliability | depth | " + " | ".join(sizes) + " |",
             "|---|---|---|---|" + "---|" * len(sizes)]
    lines += [f"| {p} | {side} | {rel} | {depth} | "
              + " | ".join(cell(by_size.get(size, [])) for size in sizes) + " |"
              for (p, side, rel, depth), by_size in cells.items()]
    return "\n".join(lines)


def machine_load() -> str:
    with contextlib.suppress(OSError):
        return "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return "load average unknown"


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} is not WIDTHxHEIGHT") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"size {text!r} must be positive")
    return w, h


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", action="append", default=None,
                   help="Fast DDS profile to measure, repeatable: shipped (config/"
                        f"{images_profile().name}), none (Fast DDS defaults), a study variant "
                        f"({', '.join(STUDY)}) or an XML file (default: none and shipped)")
    p.add_argument("--study", action="store_true",
                   help="also measure every study variant (one transport option each)")
    p.add_argument("--size", action="append", type=parse_size, default=None,
                   help="frame size WIDTHxHEIGHT, repeatable (default: 640x480 and 1280x720)")
    p.add_argument("--reliability", action="append", choices=RELIABILITIES, default=None,
                   help="image QoS reliability on both ends, repeatable (default: both)")
    p.add_argument("--depth", action="append", type=int, default=None,
                   help="KEEP_LAST depth on both ends, repeatable (default: 5, the node's)")
    p.add_argument("--profile-on", action="append", choices=SIDES, default=None,
                   help="which process loads the profile, repeatable (default: both)")
    p.add_argument("--rate", type=float, default=15.0, help="frames per second (15)")
    p.add_argument("--frames", type=int, default=100, help="frames per case (100)")
    p.add_argument("--repeat", type=int, default=1, help="runs of each case (1)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for discovery / a process beyond the stream (60)")
    p.add_argument("--out", type=Path, default=Path("transport_bench_out"),
                   help="folder for transport.json / transport.md and the process logs")
    p.add_argument("--role", choices=("subscriber", "publisher"), help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return p


def cases(args: argparse.Namespace, profiles: Sequence[str]) -> list[Case]:
    return [Case(profile=name, width=w, height=h, reliability=rel, depth=depth,
                 rate_hz=args.rate, frames=args.frames, profile_on=side)
            for name in profiles
            for (w, h) in (args.size or [(640, 480), (1280, 720)])
            for rel in (args.reliability or list(RELIABILITIES))
            for depth in (args.depth or [5])
            for side in (args.profile_on or ["both"])
            for _ in range(args.repeat)]


def _child_main(args: argparse.Namespace) -> int:
    case = Case(**json.loads(args.case))
    run = run_subscriber if args.role == "subscriber" else run_publisher
    args.result.write_text(json.dumps(run(case, args.timeout)))
    return 0


def _main(args: argparse.Namespace) -> int:
    if args.frames < 1 or args.rate <= 0 or args.repeat < 1:
        raise ValueError("--frames, --rate and --repeat must be positive")
    if any(d < 1 for d in args.depth or []):
        raise ValueError("--depth must be at least 1")
    args.out.mkdir(parents=True, exist_ok=True)
    names = list(dict.fromkeys((args.profile or ["none", "shipped"])
                               + (list(STUDY) if args.study else [])))
    with tempfile.TemporaryDirectory(prefix="t2s_transport_") as tmp:
        profiles = resolve_profiles(names, Path(tmp))
        load_before = machine_load()
        rows = []
        for case in cases(args, list(profiles)):
            row = measure(case, profiles[case.profile], args.out, args.timeout)
            rows.append(row)
            print(f"{case.profile:>22} {case.profile_on:>10} {case.size:>9} "
                  f"{case.reliability:>11} d{case.depth}: "
                  + (row.get("error") or f"{row['received']}/{row['sent']} received"),
                  flush=True)
    header = (f"{args.frames} rgb8 frames at {args.rate:g} Hz per case, publisher and "
              f"subscriber in two processes on this host, ROS_DOMAIN_ID="
              f"{os.environ.get('ROS_DOMAIN_ID', '0')}, discovery range "
              f"{os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE', 'default')}; "
              f"{os.cpu_count()} CPUs, {load_before} before, {machine_load()} after.")
    table = f"{summary_table(rows)}\n\nEach run:\n\n{markdown_table(rows)}"
    print(f"\n{header}\n\n{table}")
    (args.out / "transport.md").write_text(f"{header}\n\n{table}\n")
    (args.out / "transport.json").write_text(json.dumps(
        {"header": header, "profiles": {k: str(v.path) if v.path else None
                                        for k, v in profiles.items()},
         "rows": rows}, indent=2))
    return 0 if all("error" not in r for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.role:
        return _child_main(args)
    return run_cli(PROG, lambda: _main(args), (OSError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
