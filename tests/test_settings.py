"""Each setting declared once: the parsers are built from the configs' fields, and the checks,
the resume rule and the help texts come from the same declarations."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections import Counter
from dataclasses import fields
from pathlib import Path

import pytest
from helpers import assert_one_line_error, run_cli

from resnetlab.bench.config import BenchConfig
from resnetlab.cli import build_parser, main
from resnetlab.cli.pack import PackConfig
from resnetlab.config.finetune import FinetuneConfig
from resnetlab.config.train import LrRange, TrainConfig
from resnetlab.detection.config import DetectConfig
from resnetlab.errors import ResnetlabError
from resnetlab.experiments.config import (
    CaseStudyConfig,
    DegradationConfig,
    GradientConfig,
    VideoConfig,
)
from resnetlab.settings import resumable

LONG_RUNS = {
    "resume", "save_every", "save_every_minutes", "on_nan", "max_nan_steps", "clip_grad",
    "resume_any_world", "dist_timeout", "sync_bn", "tensorboard",
}  # fmt: skip
# each generated parser: the configs whose fields are its flags, and the fields with no flag
GENERATED = {
    ("train",): ([TrainConfig], set()),
    ("finetune",): ([FinetuneConfig], {"time_budget"}),
    ("lr-find",): ([FinetuneConfig, LrRange], {"time_budget", *LONG_RUNS}),
    ("detect", "train"): ([DetectConfig], set()),
    ("experiment", "degradation"): ([DegradationConfig], set()),
    ("experiment", "gradients"): ([GradientConfig], {"momentum", "weight_decay"}),
    ("experiment", "case-study"): ([CaseStudyConfig], set()),
    ("experiment", "video"): ([VideoConfig], set()),
    ("bench",): ([BenchConfig], set()),
    ("pack",): ([PackConfig], set()),
}
COMMAND_ONLY = {"help", "config"}  # flags of every command that set no field


def _parser(words: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()[0]
    for word in words:
        (choices,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = choices.choices[word]
    return parser


@pytest.mark.parametrize("words", list(GENERATED), ids=" ".join)
def test_every_field_has_one_flag_and_every_flag_one_field(words: tuple[str, ...]) -> None:
    configs, without_flag = GENERATED[words]
    names = {f.name for config in configs for f in fields(config)}
    dests = Counter(a.dest for a in _parser(words)._actions if a.dest not in COMMAND_ONLY)
    assert all(count == 1 for count in dests.values()), dests
    assert set(dests) == names - without_flag
    assert without_flag <= names


def test_a_shared_setting_keeps_its_declaration() -> None:
    """FinetuneConfig changes training's defaults, not their checks or help."""
    with pytest.raises(ResnetlabError, match=r"^--epochs must be at least 1 \(got 0\)$"):
        FinetuneConfig(weights="w.pt", data="digits", epochs=0).validate()
    with pytest.raises(ResnetlabError, match=r"^--workers must be >= 0 \(got -1\)$"):
        VideoConfig(workers=-1).validate()
    assert FinetuneConfig().epochs == 20 and TrainConfig().epochs == 10


@pytest.mark.parametrize(
    ("command", "text", "error"),
    [
        # a word would be read by --epochs's int(); a list reached the check as a list
        (["train"], "epochs: [1, 2]", "--epochs must be at least 1 (got [1, 2])"),
        # a setting shared with training keeps training's check
        (["experiment", "video"], "precision: fp8", "--precision must be one of auto, fp32"),
        # the keys are the field names (`detect train --resume` once stored to `resume_run`)
        (["detect", "train"], "resume_run: x", "unknown key(s) for `detect`: resume_run"),
    ],
)
def test_config_file_values_meet_the_settings(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: list[str], text: str, error: str
) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(text + "\n")
    code, _, err = run_cli(capsys, *command, "--config", str(config))
    assert_one_line_error(code, err, error)


def test_what_a_resume_may_change() -> None:
    """How a run is watched, saved and fed (the README's list), for both kinds of run."""
    expected = {
        "epochs", "limit_steps", "quiet", "workers", "out", "resume", "cache_dir",
        "save_every", "save_every_minutes", "tensorboard", "resume_any_world", "overwrite",
        "dist_timeout",
    }  # fmt: skip
    assert resumable(TrainConfig) == resumable(FinetuneConfig) == expected


def test_help_shows_the_config_default(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("train", "finetune", "lr-find"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "(resnet20: 0% training, 9% inference) (default: off)" in text, command


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"]])
def test_help_imports_no_torch(argv: list[str]) -> None:
    code = (
        "import sys\nfrom resnetlab.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, file=sys.stderr)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert "usage: resnetlab" in result.stdout
    assert result.stderr.strip() == "False"
