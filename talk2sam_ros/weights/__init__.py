"""Weights: the registry of official files, the offline cache, resolution and loading.

- registry: which official file each preset part needs; the cache directory.
- resolve: registry name or path -> file, for every caller (one resolution layer).
- inference: load_for_inference (node, evaluation, benchmark).
- fetch: downloading and verifying (the talk2sam-weights CLI in talk2sam_ros.tools.weights).

Only `inference` imports torch; the rest is plain Python.
"""
from talk2sam_ros.weights.registry import (ENV_DIR, ENV_REGISTRY, PARTS, MissingWeightsError,
                                           Registry, WeightFile, WeightsError, cache_dir_path,
                                           default_cache_dir, load_registry,
                                           trained_weights_path)
from talk2sam_ros.weights.resolve import (InferenceSpec, resolve, resolve_checkpoints,
                                          resolve_given)

__all__ = ["ENV_DIR", "ENV_REGISTRY", "PARTS", "InferenceSpec", "MissingWeightsError",
           "Registry", "WeightFile", "WeightsError", "cache_dir_path", "default_cache_dir",
           "load_registry", "resolve", "resolve_checkpoints", "resolve_given",
           "trained_weights_path"]
