"""Pure helpers shared by several layers (no torch, no rclpy): config lookup, parameter
tables, CLI set-up, metrics and drawing."""
