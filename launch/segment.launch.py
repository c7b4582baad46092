"""Start talk2sam_node (configured and activated by itself), optionally rviz2 and speech input.

    ros2 launch talk2sam_ros segment.launch.py image_topic:=/camera/color/image_raw
    ros2 launch talk2sam_ros segment.launch.py preset:=tiny use_rviz:=false   # no weight files
    ros2 launch talk2sam_ros segment.launch.py params_file:=/path/my_talk2sam.yaml namespace:=arm
    ros2 launch talk2sam_ros segment.launch.py image_topic:=/camera/color/image_raw \
        use_depth:=true depth_topic:=/camera/aligned_depth_to_color/image_raw \
        camera_info_topic:=/camera/color/camera_info                    # RGB-D grasp pose

Node parameters come from `params_file` (default: the installed config/talk2sam.yaml); the
preset/device/checkpoint/use_depth arguments override it only when given (empty = keep the
file's value). The started nodes get the Fast DDS image profile (`fastdds_profile`).
"""
import os
from pathlib import Path

from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

# launch and launch_ros are imported where they are used: the tables below and
# rviz_available() then load without them (tests on the PyPI ROS wheels, which lack launch).

PACKAGE = "talk2sam_ros"
NODE_NAME = "talk2sam"

# (name, default, description) of every launch argument.
ARGUMENTS = [
    ("namespace", "", "Namespace of the nodes (and of their relative topics)."),
    ("params_file", "", "Node parameters YAML; empty = the installed config/talk2sam.yaml."),
    ("image_topic", "", "Camera image topic remapped onto the node's `image` input "
     "(e.g. /camera/color/image_raw); empty = `image`."),
    ("prompt_topic", "", "TextBoxPrompt topic remapped onto `prompt`; empty = `prompt`."),
    ("category_topic", "", "std_msgs/String text-only prompt topic remapped onto `category`; "
     "empty = `category`."),
    ("use_depth", "", "RGB-D grasp: true subscribes to `depth` and `camera_info` and publishes "
     "grasp_pose, grasp_markers, object_points (docs/grasp.md); empty = the params file's "
     "value."),
    ("depth_topic", "", "Depth image registered to the colour image, remapped onto `depth` "
     "(e.g. /camera/aligned_depth_to_color/image_raw); empty = `depth`."),
    ("camera_info_topic", "", "The colour camera's CameraInfo remapped onto `camera_info` "
     "(e.g. /camera/color/camera_info); empty = `camera_info`."),
    ("preset", "", "Model preset tiny|t|b|l|h; empty = the params file's value "
     "(tiny runs without weight files)."),
    ("device", "", "Torch device auto|cpu|cuda|cuda:N; empty = the params file's value."),
    ("checkpoint_sam_hq", "", "SAM-HQ checkpoint path or registry name; empty = params file."),
    ("checkpoint_dinov2", "", "DINOv2 (registers) checkpoint path or registry name; "
     "empty = params file."),
    ("checkpoint_clip", "", "CLIP ViT-B/16 checkpoint path or registry name; empty = params "
     "file."),
    ("checkpoint_projection", "", "Talk2DINO projection path or registry name; empty = params "
     "file."),
    ("checkpoint_talk2sam", "", "Trained Talk2SAM head (talk2sam-train output); empty = params "
     "file."),
    ("use_rviz", "true", "Start rviz2 with config/talk2sam.rviz (image, overlay, "
     "similarity_color, mask); skipped with one warning where rviz2 is not installed."),
    ("use_speech", "false", "Start talk2sam_speech (offline speech -> `category`) with "
     "speech_params_file."),
    ("speech_params_file", "", "Speech node parameters YAML; empty = the installed "
     "config/speech.yaml."),
    ("log_level", "info", "Log level of the nodes (debug, info, warn, error)."),
    ("fastdds_profile", "", "Fast DDS profile of the started nodes (docs/transport.md): empty = "
     "the user's $FASTDDS_DEFAULT_PROFILES_FILE / $FASTRTPS_DEFAULT_PROFILES_FILE if set, else "
     "the installed config/fastdds_images.xml; a file path; none = Fast DDS's defaults."),
]
# Launch argument -> node parameter it overrides (string parameters, applied when non-empty).
PARAM_ARGS = {
    "preset": "preset",
    "device": "device",
    "checkpoint_sam_hq": "checkpoint_sam_hq",
    "checkpoint_dinov2": "checkpoint_dinov2",
    "checkpoint_clip": "checkpoint_clip",
    "checkpoint_projection": "checkpoint_projection",
    "checkpoint_talk2sam": "checkpoint_talk2sam",
}
# Launch argument -> the node's relative topic name it remaps (when non-empty).
REMAP_ARGS = {"image_topic": "image", "prompt_topic": "prompt", "category_topic": "category",
              "depth_topic": "depth", "camera_info_topic": "camera_info"}
# Arguments used by the launch file itself (use_depth: a bool parameter, converted here).
LAUNCH_ARGS = ("namespace", "params_file", "use_rviz", "use_speech", "speech_params_file",
               "log_level", "use_depth", "fastdds_profile")


def _true(value: str) -> bool:
    return value.strip().lower() in ("true", "1", "yes", "on")


def node_environment(fastdds_profile: str, base: dict) -> dict:
    """The environment of the started nodes: `base` with the Fast DDS profile variable of
    this distribution set to the chosen profile ("" = the user's own if `base` has one, else
    the installed config/fastdds_images.xml; "none" = removed: Fast DDS's defaults; else a
    file). A whole environment (Node's `env`), because "none" must remove a variable, which
    `additional_env` cannot. Raises FileNotFoundError for a profile file that is not there."""
    from talk2sam_ros.common.transport import chosen_profile, profile_environment

    value = fastdds_profile.strip()
    if value.lower() == "none":
        return profile_environment(None, base)
    profile = Path(value).expanduser() if value else chosen_profile(base)
    if not profile.is_file():
        raise FileNotFoundError(f"fastdds_profile: {str(profile)!r} is not a file")
    return profile_environment(profile, base)


def rviz_available() -> bool:
    """Whether rviz2 is installed: its package is in the ament index (AMENT_PREFIX_PATH)."""
    try:
        get_package_share_directory("rviz2")
    except PackageNotFoundError:
        return False
    return True


def _setup(context, *args, **kwargs):
    from launch.logging import get_logger
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context).strip()

    share = get_package_share_directory(PACKAGE)
    params_file = arg("params_file") or os.path.join(share, "config", "talk2sam.yaml")
    overrides = {param: arg(name) for name, param in PARAM_ARGS.items() if arg(name)}
    if arg("use_depth"):
        overrides["use_depth"] = _true(arg("use_depth"))
    remaps = [(topic, arg(name)) for name, topic in REMAP_ARGS.items() if arg(name)]
    namespace = arg("namespace")
    ros_args = ["--log-level", arg("log_level")]
    env = node_environment(arg("fastdds_profile"), dict(context.environment))
    actions = [Node(package=PACKAGE, executable="talk2sam_node", name=NODE_NAME,
                    namespace=namespace, parameters=[params_file, overrides],
                    remappings=remaps, ros_arguments=ros_args, output="screen",
                    emulate_tty=True, env=env)]
    if _true(arg("use_rviz")) and rviz_available():
        # The rviz config uses relative topics, so rviz runs in the same namespace and with
        # the same `image` remapping as the node.
        actions.append(Node(package="rviz2", executable="rviz2", name="talk2sam_rviz",
                            namespace=namespace, remappings=remaps, output="screen", env=env,
                            arguments=["-d", os.path.join(share, "config", "talk2sam.rviz")]))
    elif _true(arg("use_rviz")):
        # Starting it anyway fails ("package 'rviz2' not found"): launch exits 1 and leaves
        # the node it already started running.
        get_logger("talk2sam.launch").warning(
            "rviz2 is not installed: starting without it (use_rviz:=false skips this check)")
    if _true(arg("use_speech")):
        speech_params = arg("speech_params_file") or os.path.join(share, "config", "speech.yaml")
        actions.append(Node(package=PACKAGE, executable="talk2sam_speech",
                            name="talk2sam_speech", namespace=namespace,
                            parameters=[speech_params], ros_arguments=ros_args,
                            remappings=[r for r in remaps if r[0] == "category"],
                            output="screen", emulate_tty=True, env=env))
    return actions


def generate_launch_description():
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=description)
         for name, default, description in ARGUMENTS]
        + [OpaqueFunction(function=_setup)])
