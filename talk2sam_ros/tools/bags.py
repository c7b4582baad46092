"""ROS 2 bags in and out: recorded camera topics for the node, its outputs for rviz/Foxglove.

rosbags (pure Python, Apache-2.0) reads and writes both rosbag2 storages, sqlite3 (.db3) and
MCAP, for the Humble, Jazzy and Kilted message definitions, with no ROS installation; the
mcap + mcap-ros2-support pair would cover MCAP only. Messages travel as CDR bytes: rclpy
deserialises what a bag holds and serialises what the node publishes, so rosbags handles the
container and the type definitions (our own messages' come from the package's msg/ files).

Every user error (unknown or corrupt bag, missing topic, unsupported type, no images, bad prompt
schedule) is a BagError with a one-line message.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from talk2sam_ros.common.resources import find_share_file
from talk2sam_ros.tools.harness import output_header

IMAGE_TYPES = {"sensor_msgs/msg/Image": Image, "sensor_msgs/msg/CompressedImage": CompressedImage}
# role -> message types a bag topic may have for it
ROLE_TYPES: dict[str, dict[str, type]] = {
    "image": IMAGE_TYPES,
    "depth": {"sensor_msgs/msg/Image": Image},
    "camera_info": {"sensor_msgs/msg/CameraInfo": CameraInfo},
}
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
# Our messages, in dependency order (SegmentationResult uses StageTiming).
OWN_MESSAGES = ("StageTiming", "TextBoxPrompt", "SegmentationResult", "GraspCandidate")
# Metadata version 8 (Jazzy) is the oldest rosbags writes; Humble plays the .mcap file itself.
BAG_VERSION = 8


class BagError(RuntimeError):
    """A bag or prompt-schedule problem, with a one-line message meant for the user."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


@dataclass(frozen=True)
class BagTopics:
    """Which bag topic plays which input of the node ("" = not used)."""

    image: str
    depth: str = ""
    camera_info: str = ""

    def by_role(self) -> dict[str, str]:
        return {role: topic for role, topic in (("image", self.image), ("depth", self.depth),
                                                ("camera_info", self.camera_info)) if topic}


@dataclass(frozen=True)
class BagMessage:
    role: str  # image | depth | camera_info
    topic: str
    time_ns: int  # when the bag recorded it
    msg: Any  # the rclpy message


def message_type_name(msg_or_class: Any) -> str:
    """'sensor_msgs/msg/Image' for an rclpy message (or its class)."""
    cls = msg_or_class if isinstance(msg_or_class, type) else type(msg_or_class)
    return f"{cls.__module__.split('.')[0]}/msg/{cls.__name__}"


class InputBag:
    """A recorded bag opened for playback; use as a context manager."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._reader = Reader(self.path)
            self._reader.open()
        except FileNotFoundError:
            raise BagError(f"bag {self.path} does not exist") from None
        except Exception as exc:  # ReaderError and friends: not a rosbag2 bag, or damaged
            raise BagError(f"cannot open bag {self.path}: {exc}") from None
        self.topics: dict[str, str] = {c.topic: c.msgtype for c in self._reader.connections}
        self._counts: dict[str, int] = {}
        for c in self._reader.connections:
            self._counts[c.topic] = self._counts.get(c.topic, 0) + c.msgcount
        self.start_ns = int(self._reader.start_time) if self._counts else 0

    def __enter__(self) -> InputBag:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._reader.close()

    def count(self, topic: str) -> int:
        return self._counts.get(topic, 0)

    def _listing(self) -> str:
        return ", ".join(f"{t} ({m})" for t, m in sorted(self.topics.items())) or "none"

    def check(self, topics: BagTopics) -> None:
        """Every named topic exists with a type its role accepts; there are images to play."""
        for role, topic in topics.by_role().items():
            if topic not in self.topics:
                option = f"--{role.replace('_', '-')}-topic"
                raise BagError(f"bag {self.path} has no topic {topic!r} (for {option}); its "
                               f"topics: {self._listing()}")
            if self.topics[topic] not in ROLE_TYPES[role]:
                raise BagError(f"bag topic {topic} is {self.topics[topic]}, which cannot be the "
                               f"{role.replace('_', ' ')} input (expected "
                               f"{' or '.join(ROLE_TYPES[role])})")
        if self.count(topics.image) == 0:
            raise BagError(f"bag {self.path} has no messages on the image topic {topics.image}")

    def messages(self, topics: BagTopics) -> Iterator[BagMessage]:
        """The named topics' messages in recorded order, as rclpy messages."""
        self.check(topics)
        roles = {topic: role for role, topic in topics.by_role().items()}
        wanted = [c for c in self._reader.connections if c.topic in roles]
        try:
            for conn, time_ns, raw in self._reader.messages(connections=wanted):
                cls = ROLE_TYPES[roles[conn.topic]][conn.msgtype]
                try:
                    msg = deserialize_message(bytes(raw), cls)
                except Exception as exc:  # truncated or foreign bytes in one record
                    raise BagError(f"bag {self.path}: message on {conn.topic} at {time_ns} ns "
                                   f"is not a valid {conn.msgtype} ({exc})") from None
                yield BagMessage(roles[conn.topic], conn.topic, int(time_ns), msg)
        except BagError:
            raise
        except Exception as exc:  # a damaged file found while reading it
            raise BagError(f"bag {self.path} is damaged: {exc}") from None


def typestore_with_own_messages(store: Stores = Stores.ROS2_JAZZY) -> Any:
    """rosbags type store with the standard types of `store` and our talk2sam_ros messages
    (their definitions from the installed or source msg/ folder)."""
    typestore = get_typestore(store)
    types: dict[str, Any] = {}
    for name in OWN_MESSAGES:
        path = find_share_file(f"msg/{name}.msg")
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise BagError(f"message definition {path} not found ({exc.strerror}): build the "
                           "package (scripts/setup.sh or colcon build)") from None
        types.update(get_types_from_msg(text, f"talk2sam_ros/msg/{name}"))
    typestore.register(types)
    return typestore


def check_output_path(path: str | Path, storage: str) -> Path:
    """An output bag path and storage we may write (never over an existing bag or file)."""
    path = Path(path)
    if storage not in STORAGES:
        raise BagError(f"unknown bag storage {storage!r}; expected {', '.join(STORAGES)}")
    if path.exists():
        raise BagError(f"output bag {path} already exists")
    return path


class OutputBag:
    """A new bag that rclpy messages are written to (a connection per topic on first use).

    Use as a context manager: the bag is closed, and so readable, on every exit, Ctrl-C
    included."""

    def __init__(self, path: str | Path, storage: str = "mcap") -> None:
        self.path = check_output_path(path, storage)
        self.storage = storage
        self._typestore = typestore_with_own_messages()
        self._connections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = Writer(self.path, version=BAG_VERSION, storage_plugin=STORAGES[storage])
        self._writer.open()
        self._open = True

    def __enter__(self) -> OutputBag:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, topic: str, msg: Any, time_ns: int) -> None:
        if not self._open:
            raise BagError(f"output bag {self.path} is closed")
        conn = self._connections.get(topic)
        if conn is None:
            conn = self._writer.add_connection(topic, message_type_name(msg),
                                               typestore=self._typestore)
            self._connections[topic] = conn
        self._writer.write(conn, int(time_ns), serialize_message(msg))
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def close(self) -> None:
        if self._open:
            self._open = False
            self._writer.close()


def write_bag(path: str | Path, messages: Iterable[tuple[str, int, Any]],
              storage: str = "mcap") -> Path:
    """A bag of (topic, time_ns, rclpy message) records (synthetic recordings, tests)."""
    with OutputBag(path, storage) as bag:
        for topic, time_ns, msg in messages:
            bag.write(topic, msg, time_ns)
    return Path(path)


def read_bag(path: str | Path) -> dict[str, list[tuple[int, Any]]]:
    """topic -> [(time_ns, message)] of any bag we wrote, deserialised by rosbags (as a
    consumer without rclpy would read it)."""
    typestore = typestore_with_own_messages()
    out: dict[str, list[tuple[int, Any]]] = {}
    try:
        with Reader(Path(path)) as reader:
            for conn, time_ns, raw in reader.messages():
                out.setdefault(conn.topic, []).append(
                    (int(time_ns), typestore.deserialize_cdr(raw, conn.msgtype)))
    except FileNotFoundError:
        raise BagError(f"bag {path} does not exist") from None
    except Exception as exc:
        raise BagError(f"cannot read bag {path}: {exc}") from None
    return out


# ---------------------------------------------------------------------------- playback
Stamp = tuple[int, int]  # (sec, nanosec): the node's key of a frame and of its outputs


@dataclass(frozen=True)
class PlayFrame:
    """One colour frame of a bag and the depth/camera_info messages to publish before it."""

    index: int  # among the bag's colour frames, from 0
    image: BagMessage
    companions: tuple[BagMessage, ...]
    at_s: float  # recorded time, seconds after the bag's first message


def play_frames(messages: Iterable[BagMessage], start_ns: int) -> Iterator[PlayFrame]:
    """The colour frames in recorded order, each with the other messages recorded after it and
    before the next frame (the first also with those before it).

    Sending a frame's companions before it means its depth and camera_info have reached the
    node whichever order the driver recorded them in (the node pairs by nearest stamp; an
    extra newer depth does no harm), also when each frame waits for the previous answer.
    """
    pending: list[BagMessage] = []
    current: BagMessage | None = None
    index = 0
    for msg in messages:
        if msg.role != "image":
            pending.append(msg)
            continue
        if current is not None:
            yield PlayFrame(index, current, tuple(pending), (current.time_ns - start_ns) / 1e9)
            index, pending = index + 1, []
        current = msg
    if current is not None:
        yield PlayFrame(index, current, tuple(pending), (current.time_ns - start_ns) / 1e9)


def played_stamp(msg: BagMessage) -> Stamp:
    """The header stamp a message is played with: as recorded, except that a zero stamp (a
    driver that does not stamp) becomes the recorded time, so the node can tell frames apart
    and pair depth with them. Sets it on the message."""
    stamp = msg.msg.header.stamp
    if stamp.sec == 0 and stamp.nanosec == 0:
        stamp.sec, stamp.nanosec = divmod(msg.time_ns, 1_000_000_000)
    return int(stamp.sec), int(stamp.nanosec)


def namespaced(namespace: str, name: str) -> str:
    """'/arm/mask' for ('arm', 'mask'); '/mask' for the root namespace ''."""
    parts = [p for p in f"{namespace}/{name}".split("/") if p]
    return "/" + "/".join(parts)


class OutputRecorder:
    """Writes each output of the node (a harness `Received`) into `bag` as `<namespace>/<topic>`
    at the recorded time of its source frame, so input and output bags line up in Foxglove or
    `ros2 bag play`; the message keeps the source frame's header stamp."""

    def __init__(self, bag: OutputBag, namespace: str = "") -> None:
        self.bag = bag
        self.namespace = namespace
        self.times: dict[Stamp, int] = {}  # stamp of a played frame -> its recorded time
        self.unplaced = 0  # outputs for no frame we played (not written)

    def expect(self, stamp: Stamp, time_ns: int) -> None:
        """Frame `stamp`, recorded at `time_ns`, is being played."""
        self.times[stamp] = int(time_ns)

    def write_input(self, topic: str, msg: Any, time_ns: int) -> None:
        """A played input message under the node's input name (`image`, `depth`, ...)."""
        self.bag.write(namespaced(self.namespace, topic), msg, time_ns)

    def __call__(self, item: Any) -> None:
        header = output_header(item.msg)
        time_ns = self.times.get((int(header.stamp.sec), int(header.stamp.nanosec)))
        if time_ns is None:
            self.unplaced += 1
            return
        self.bag.write(namespaced(self.namespace, item.topic), item.msg, time_ns)


# ---------------------------------------------------------------------------- prompts
@dataclass(frozen=True)
class PromptChange:
    """From `at_s` seconds after the bag's first message, prompt with `text` (+ boxes)."""

    at_s: float
    text: str
    boxes: np.ndarray | None = None  # (N, 4) XYXY source pixels


def _boxes(value: Any, where: str) -> np.ndarray | None:
    if value in (None, [], ()):
        return None
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise BagError(f"{where}: boxes must be numbers") from None
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4 or not np.isfinite(arr).all():
        raise BagError(f"{where}: boxes must be [x0, y0, x1, y1] or a list of them")
    return arr.astype(np.float32)


def prompt_schedule(entries: Any, source: str) -> tuple[PromptChange, ...]:
    """Validated, time-sorted prompt changes from a list of {t, text, boxes?} mappings."""
    if not isinstance(entries, list) or not entries:
        raise BagError(f"{source}: expected a non-empty list of {{t: seconds, text: ..., "
                       "boxes: [[x0, y0, x1, y1], ...]}} entries")
    changes = []
    for i, entry in enumerate(entries):
        where = f"{source} entry {i + 1}"
        if not isinstance(entry, Mapping):
            raise BagError(f"{where}: expected a mapping with t and text")
        unknown = set(entry) - {"t", "text", "boxes"}
        if unknown:
            raise BagError(f"{where}: unknown keys {sorted(unknown)} (t, text, boxes)")
        try:
            at_s = float(entry.get("t", 0.0))
        except (TypeError, ValueError):
            raise BagError(f"{where}: t must be seconds from the bag's start") from None
        text = entry.get("text")
        if not isinstance(text, str) or not text.strip():
            raise BagError(f"{where}: text must be a non-empty string")
        if not math.isfinite(at_s) or at_s < 0:
            raise BagError(f"{where}: t must be >= 0 seconds")
        changes.append(PromptChange(at_s, text.strip(), _boxes(entry.get("boxes"), where)))
    return tuple(sorted(changes, key=lambda c: c.at_s))


def load_prompt_schedule(path: str | Path) -> tuple[PromptChange, ...]:
    """The prompt schedule YAML: a list of {t: seconds, text: ..., boxes: [...]}."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BagError(f"cannot read prompt schedule {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise BagError(f"prompt schedule {path} is not valid YAML: {exc}") from None
    return prompt_schedule(data, str(path))


def prompt_index(schedule: tuple[PromptChange, ...], at_s: float) -> int:
    """Index of the prompt in force `at_s` seconds into the bag (-1 before the first one)."""
    current = -1
    for i, change in enumerate(schedule):
        if change.at_s > at_s:
            break
        current = i
    return current


def prompt_at(schedule: tuple[PromptChange, ...], at_s: float) -> PromptChange | None:
    """The prompt in force `at_s` seconds into the bag (None before the first change)."""
    i = prompt_index(schedule, at_s)
    return None if i < 0 else schedule[i]
