"""TrainConfig: defaults, YAML presets, --key=value overrides with type checks, LR schedule."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from talk2sam_ros.training.config import (TrainConfig, config_search_dirs, flat_config,
                                          help_text, key_types, load_config, parse_cli)
from talk2sam_ros.training.run_state import (RESUME_FIXED, RESUME_FREE, rng_state,
                                             set_rng_state)
from talk2sam_ros.training.train import lr_lambda, make_optimizer
from train_helpers import shared_dirs  # noqa: F401 (fixture)


def test_defaults_are_the_paper_recipe() -> None:
    cfg = TrainConfig()
    assert (cfg.optimizer, cfg.lr, cfg.batch_size, cfg.epochs) == ("sgd", 1e-3, 4, 30)
    assert (cfg.loss.bce_weight, cfg.loss.dice_weight, cfg.preset) == (1.0, 1.0, "h")
    assert (cfg.loss.kind, cfg.loss.num_points, cfg.augment.hflip) == ("points", 12544, 0.5)
    with pytest.raises(Exception):
        cfg.lr = 1.0  # frozen


def test_yaml_then_cli_precedence(tmp_path: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text("lr: 0.01\nepochs: 3\ntrain_sets: ['folder:/d:train']\n"
                 "augment: {hflip: 0, crop_prob: 0.5}\nloss:\n  kind: dense\n")
    path, over = parse_cli(["--config", str(y), "--epochs=5", "--resume", "--betas=[0.8,0.9]",
                            "--val_sets=folder:/d:val,folder:/e:val", "--out_dir=runs/1e-3",
                            "--augment.crop_prob=0.25", "--augment.multi_box",
                            "--loss={num_points: 64}"])
    cfg = load_config(path, over)
    assert cfg.lr == 0.01 and cfg.epochs == 5 and cfg.resume is True
    assert cfg.train_sets == ("folder:/d:train",)
    assert cfg.val_sets == ("folder:/d:val", "folder:/e:val")
    assert cfg.betas == (0.8, 0.9)
    assert cfg.out_dir == "runs/1e-3"  # strings stay verbatim
    # a section key given changes that key only: the others keep the YAML's or the default
    assert (cfg.augment.hflip, cfg.augment.crop_prob, cfg.augment.multi_box) == (0.0, 0.25, True)
    assert cfg.augment.crop_min == 0.6
    assert (cfg.loss.kind, cfg.loss.num_points, cfg.loss.bce_weight) == ("dense", 64, 1.0)
    # what a run writes (train_config.yaml, checkpoints) reads back as the same config
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump(cfg.to_dict()))
    assert load_config(again) == cfg


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
    (["--augment.hflip=2"], "augment.hflip is a probability"),
    (["--loss.kind=focal"], "loss.kind='focal': expected one of"),
    (["--loss.num_points=many"], "loss.num_points='many': expected int"),
    (["--augment.hflp=0"], "unknown config key 'augment.hflp' .*did you mean augment.hflip"),
    # keys from before the sections name their new spelling
    (["--hflip=0.5"], "'hflip' is now 'augment.hflip' .*--augment.hflip="),
    (["--num_points=512"], "'num_points' is now 'loss.num_points'"),
    (["--loss=dense"], r"'loss' is a section now: write loss: \{kind: dense\} .*--loss.kind=dense"),
    (["--augment=0.5"], "'augment' is a section"),
    (["--sam_hq_checkpoint=x.pth"], "now called 'checkpoint_sam_hq'"),
    (["--official_weights"], "was removed"),
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
    # a YAML file in the flat layout of earlier versions: the error names the file and the
    # new spelling
    for text, message in (("hflip: 0.0\n", "'hflip' is now 'augment.hflip'"),
                          ("loss: points\n", r"write loss: \{kind: points\}"),
                          ("augment: {hflp: 0}\n", "unknown config key 'augment.hflp'"),
                          ("augment: {hflip: 3}\n", "augment.hflip is a probability")):
        y.write_text(text)
        with pytest.raises(ValueError, match=f"{y}: .*{message}"):
            load_config(y)
    assert any((d / "tiny_synthetic.yaml").is_file() for d in config_search_dirs())
    names = [p.stem for d in config_search_dirs() if d.is_dir() for p in d.glob("*.yaml")]
    assert {"tiny_synthetic", "paper_vit_h", "paper_vit_b"} <= set(names)
    for name in names:  # every shipped preset parses and passes validation
        assert isinstance(load_config(name), TrainConfig)
    with pytest.raises(FileNotFoundError):
        load_config("no_such_preset")
    text = help_text()
    assert "--lr=0.001" in text and "--augment.hflip=0.5" in text
    assert "--loss.kind='points'" in text and "--loss.similarity_weight=0.0" in text
    assert "--hflip" not in text and "  --loss=" not in text  # no flat copies of the sections


def test_resume_key_lists_name_real_keys() -> None:
    keys = set(key_types())
    assert set(RESUME_FIXED) <= keys and set(RESUME_FREE) <= keys
    assert not set(RESUME_FIXED) & set(RESUME_FREE)
    # a checkpoint's config from before the sections compares key by key with today's
    old = {"lr": 0.01, "hflip": 0.0, "box_jitter": 0.1, "loss": "dense", "num_points": 64}
    assert flat_config(old) == {"lr": 0.01, "augment.hflip": 0.0, "augment.box_jitter": 0.1,
                                "loss.kind": "dense", "loss.num_points": 64}
    assert set(flat_config(TrainConfig().to_dict())) == keys


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
            "import talk2sam_ros.training.distributed, talk2sam_ros.training.run_state\n"
            "import talk2sam_ros.training.cache_benchmark\n"
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


def _one_error_line(err: str, tool: str) -> str:
    """The one error line of a failed run (progress logging may come before it)."""
    errors = [ln for ln in err.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and errors[0].startswith(f"{tool}: error: "), err[-3000:]
    assert err.strip().splitlines()[-1] == errors[0] and "Traceback" not in err, err[-3000:]
    return errors[0]


def test_train_cli_expected_failures_are_one_line(shared_dirs: tuple[Path, Path],
                                                  tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from talk2sam_ros.training import train

    data, _ = shared_dirs
    missing = tmp_path / "no_such_data"
    not_weights = tmp_path / "w.pt"
    torch.save({"hello": 1}, not_weights)
    run = ["--preset=tiny", "--device=cpu", f"--out_dir={tmp_path / 'run'}",
           "--progress=false", "--num_workers=0"]
    ok_data = f"--train_sets=folder:{data}:train?limit=2"
    cases = [
        (["--lrr=0.1"], "unknown config key 'lrr'"),  # bad key
        (["--augment.hflip=2"], "augment.hflip is a probability"),  # bad value
        (["--hflip=0"], "'hflip' is now 'augment.hflip'"),  # old flat key
        ([*run, f"--train_sets=folder:{missing}:train"], f"dataset root not found: {missing}"),
        ([*run, ok_data, "--preset=b", f"--weights_dir={tmp_path / 'empty'}"],
         "needs weight files that are not in"),  # missing weights
        ([*run, ok_data, f"--init_weights={tmp_path / 'none.pt'}"], "none.pt"),
        ([*run, ok_data, f"--init_weights={not_weights}"],  # refused weights
         "is not a Talk2SAM trained-weights file"),
    ]
    torch.use_deterministic_algorithms(False)  # torch's default
    for argv, message in cases:
        assert train.main(argv) == 1, argv
        line = _one_error_line(capsys.readouterr().err, "talk2sam-train")
        assert message in line, (argv, line)
    # the runs' deterministic-algorithms switch does not stay on in the calling process
    assert not torch.are_deterministic_algorithms_enabled()


def test_eval_cli_expected_failures_are_one_line(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from talk2sam_ros.training import evaluate

    missing = tmp_path / "no_such_data"
    not_weights = tmp_path / "w.pt"
    torch.save({"hello": 1}, not_weights)
    sets = ["--sets", f"folder:{missing}:val", "--out_dir", str(tmp_path / "eval"),
            "--no_progress"]
    cases = [
        (["--bogus", *sets], "unrecognized arguments: --bogus"),  # bad option
        (["--limit=some", *sets], "argument --limit: invalid int value"),  # bad value
        (["--preset", "tiny", "--methods", "magic", *sets], "methods ['magic']"),
        (["--preset", "tiny", *sets], f"dataset root not found: {missing}"),
        (["--preset", "b", "--weights_dir", str(tmp_path / "empty"), *sets],
         "needs weight files that are not in"),  # missing weights
        (["--checkpoint_talk2sam", str(not_weights), *sets],  # refused weights
         "is not a Talk2SAM trained-weights file"),
    ]
    for argv, message in cases:
        assert evaluate.main(argv) == 1, argv
        line = _one_error_line(capsys.readouterr().err, "talk2sam-eval")
        assert message in line, (argv, line)
