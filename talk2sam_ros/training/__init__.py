"""Offline training and evaluation of Talk2SAM's trainable parts (never imports rclpy).

Entry points (see docs/training.md)::

    from talk2sam_ros.training.config import TrainConfig, load_config
    from talk2sam_ros.training.train import train
    from talk2sam_ros.training.evaluate import EvalConfig, evaluate
    from talk2sam_ros.training.synthetic import generate_synthetic_dataset

    cfg = load_config("tiny_synthetic", {"out_dir": "runs/tiny"})  # YAML preset + overrides
    weights = train(cfg)               # -> runs/tiny/talk2sam_weights.pt (what the node loads)
    report = evaluate(EvalConfig(sets=("folder:runs/tiny/synthetic:val",),
                                 checkpoint_talk2sam=str(weights),
                                 out_dir="runs/tiny/eval"))

Modules import torch and the model core, so this package file imports nothing itself.
"""
