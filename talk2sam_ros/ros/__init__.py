"""Everything that imports rclpy for the segmentation node: the lifecycle node (a thin
adapter), its pure scheduler, message builders, parameter table and conversions."""
