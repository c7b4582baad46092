"""Publishes three TextBoxPrompt messages (0 boxes, 3 boxes, non-ASCII text) over and over.

Run as a separate process by test_messages.py; stops after `--seconds` or on SIGINT.
"""
import argparse
import time

import rclpy
from rclpy.node import Node

from talk2sam_ros.msg import TextBoxPrompt

PROMPTS = [
    dict(id=0, text="cable", boxes=[], frame="camera_optical"),
    dict(id=7, text="black cable", frame="cam2",
         boxes=[10.5, 20.0, 110.0, 220.25, 0.0, 0.0, 639.0, 479.0, 300.0, 5.0, 301.0, 6.0]),
    dict(id=-3, text="провод — 電線 🔌", boxes=[1.0, 2.0, 3.0, 4.0], frame=""),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    rclpy.init()
    node = Node("prompt_publisher_test")
    pub = node.create_publisher(TextBoxPrompt, "prompt", 10)
    end = time.monotonic() + args.seconds
    try:
        while time.monotonic() < end:
            for p in PROMPTS:
                m = TextBoxPrompt(id=p["id"], text=p["text"], boxes=p["boxes"])
                m.header.frame_id = p["frame"]
                m.header.stamp.sec, m.header.stamp.nanosec = 1700000000 + p["id"], 123456789
                pub.publish(m)
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    node.destroy_node()
    rclpy.try_shutdown()


if __name__ == "__main__":
    main()
