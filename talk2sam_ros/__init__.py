"""Talk2SAM for ROS 2: text-prompted thin-object segmentation.

The ROS-free parts (``talk2sam_ros.model``, ``talk2sam_ros.training``, ``talk2sam_ros.weights``)
import without rclpy. The generated messages (``talk2sam_ros.msg``) live in the colcon install
tree; extending ``__path__`` lets a source checkout see them next to the source modules.
"""

__path__ = __import__("pkgutil").extend_path(__path__, __name__)
__version__ = "0.1.0"
