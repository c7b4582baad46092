"""TrainConfig: defaults, YAML presets, --key=value overrides with type checks, LR schedule."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from talk2sam_ros.training.config import (TrainConfig, config_search_dirs, help_text,
                                          load_config, parse_cli)
from talk2sam_ros.training.train import lr_lambda, make_optimizer, rng_state, set_rng_state


def test_defaults_are_the_paper_recipe() -> None:
    cfg = TrainConfig()
    assert (cfg.optimizer, cfg.lr, cfg.batch_size, cfg.epochs) == ("sgd", 1e-3, 4, 30)
    assert (cfg.bce_weight, cfg.dice_weight, cfg.preset) == (1.0, 1.0, "h")
    with pytest.raises(Exception):
        cfg.lr = 1.0  # frozen


def test_yaml_then_cli_precedence(tmp_path: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text("lr: 0.01\nepochs: 3\ntrain_sets: ['folder:/d:train']\nhflip: 0\n")
    path, over = parse_cli(["--config", str(y), "--epochs=5", "--resume", "--betas=[0.8,0.9]",
                            "--val_sets=folder:/d:val,folder:/e:val", "--out_dir=runs/1e-3"])
    cfg = load_config(path, over)
    assert cfg.lr == 0.01 and cfg.epochs == 5 and cfg.resume is True
    assert cfg.train_sets == ("folder:/d:train",)
    assert cfg.val_sets == ("folder:/d:val", "folder:/e:val")
    assert cfg.betas == (0.8, 0.9) and cfg.hflip == 0.0
    assert cfg.out_dir == "runs/1e-3"  # strings stay verbatim


@pytest.mark.parametrize("argv, message", [
    (["--lrr=0.1"], "unknown config key 'lrr' .*did you mean lr"),
    (["--epochs=two"], "epochs='two': expected int"),
    (["--epochs=1.5"], "epochs=1.5: expected int"),
    (["--lr=fast"], "lr='fast': expected float"),
    (["--feature_cache=maybe"], "feature_cache='maybe': expected bool"),
    (["--epochs"], "needs a value"),
    (["epochs=3"], "use --key=value"),
    (["--optimizer=rmsprop"], "optimizer='rmsprop': expected one of"),
    (["--batch_size=0"], "batch_size must be >= 1"),
    (["--hflip=2"], "probability"),
])
def test_cli_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        path, over = parse_cli(argv)
        load_config(path, over)


def test_yaml_unknown_key_and_presets(tmp_path: Path) -> None:
    y = tmp_path / "bad.yaml"
    y.write_text("epochz: 3\n")
    with pytest.raises(ValueError, match="unknown config key 'epochz'"):
        load_config(y)
    assert any((d / "tiny_synthetic.yaml").is_file() for d in config_search_dirs())
    names = [p.stem for d in config_search_dirs() if d.is_dir() for p in d.glob("*.yaml")]
    assert {"tiny_synthetic", "paper_vit_h", "paper_vit_b"} <= set(names)
    for name in names:  # every shipped preset parses and passes validation
        assert isinstance(load_config(name), TrainConfig)
    with pytest.raises(FileNotFoundError):
        load_config("no_such_preset")
    assert "--lr=0.001" in help_text()


def test_lr_schedules() -> None:
    step = lr_lambda(TrainConfig(lr_schedule="step", lr_step_epochs=2, lr_gamma=0.5, epochs=6),
                     steps_per_epoch=10)
    assert [step(s) for s in (0, 19, 20, 39, 40)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    cos = lr_lambda(TrainConfig(lr_schedule="cosine", epochs=2, warmup_steps=4), 5)
    assert cos(0) == pytest.approx(0.25 * 1.0) and cos(10) == pytest.approx(0.0)
    assert cos(5) == pytest.approx(0.5)
    const = lr_lambda(TrainConfig(lr_schedule="constant"), 3)
    assert const(0) == const(1000) == 1.0
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(make_optimizer(TrainConfig(), p), torch.optim.SGD)
    assert isinstance(make_optimizer(TrainConfig(optimizer="adamw"), p), torch.optim.AdamW)


def test_rng_state_round_trip(tmp_path: Path) -> None:
    import random

    import numpy as np

    state = rng_state()
    torch.save(state, tmp_path / "s.pt")
    first = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[2] == again[2]


def test_training_and_eval_never_import_rclpy() -> None:
    import subprocess
    import sys

    code = ("import sys\n"
            "import talk2sam_ros.training.train as t, talk2sam_ros.training.evaluate as e\n"
            "import talk2sam_ros.training.synthetic, talk2sam_ros.training.feature_cache\n"
            "import talk2sam_ros.common.metrics\n"
            "assert t.main(['--help']) == 0\n"
            "t.load_config('tiny_synthetic')  # looks in the ament index too\n"
            "ros = ('rclpy', 'rosidl_runtime_py', 'rcl_interfaces')\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ros)\n"
            "print('ROS', bad)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ROS []" in proc.stdout, proc.stdout[-2000:]


def test_cli_errors_after_parsing_are_one_line(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from talk2sam_ros.training import evaluate, train

    missing = tmp_path / "no_such_data"
    torch.use_deterministic_algorithms(False)  # torch's default
    rc = train.main(["--preset=tiny", f"--train_sets=folder:{missing}:train", "--device=cpu",
                     f"--out_dir={tmp_path / 'run'}", "--progress=false"])
    assert rc == 2
    assert f"talk2sam-train: error: dataset root not found: {missing}" in capsys.readouterr().err
    # the run's deterministic-algorithms switch does not stay on in the calling process
    assert not torch.are_deterministic_algorithms_enabled()
    not_weights = tmp_path / "w.pt"
    torch.save({"hello": 1}, not_weights)
    rc = evaluate.main(["--checkpoint_talk2sam", str(not_weights), "--sets", f"folder:{missing}:val",
                        "--out_dir", str(tmp_path / "eval"), "--no_progress"])
    assert rc == 2
    assert "is not a Talk2SAM trained-weights file" in capsys.readouterr().err
