"""`sui-onnx scaling`'s own argument group parses into a frozen ScalingConfig (the BaseArgs pattern),
and its models are analyzed with the long-run options at their defaults, with no parser faked to
fill them in."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from sui_onnx.cli import build_parser
from sui_onnx.cli.options import analysis_options
from sui_onnx.cli.scaling import SCALING_ARGS, ScalingArgs, ScalingConfig
from sui_onnx.config import RunControl
from sui_onnx.scaling import DEFAULT_MIN_R2, DEFAULT_SEED_KEY, DEFAULT_TAU


def test_the_group_parses_into_a_frozen_config():
    p = argparse.ArgumentParser()
    ScalingArgs().add_to_parser(p)
    assert ScalingArgs().parse(p.parse_args([])) == ScalingConfig() == ScalingConfig(DEFAULT_TAU, DEFAULT_MIN_R2,
                                                                                     DEFAULT_SEED_KEY)
    got = ScalingArgs().parse(p.parse_args(["--tau", "0.1", "--min-r2", "0.5", "--seed-key", "train.seed"]))
    assert got == ScalingConfig(tau=0.1, min_r2=0.5, seed_key="train.seed")
    assert got.as_kwargs() == {"tau": 0.1, "min_r2": 0.5, "seed_key": "train.seed"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.tau = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("flag, value", [("--tau", "0"), ("--tau", "nan"), ("--min-r2", "1.5"), ("--min-r2", "x")])
def test_bad_values_are_refused_by_the_parser(flag, value, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["scaling", "a.json", "b.json", "c.json", flag, value])
    assert exc.value.code == 2 and flag in capsys.readouterr().err


def test_models_are_analyzed_with_the_long_run_defaults():
    args = build_parser().parse_args(["scaling", "a.onnx", "b.onnx", "c.onnx", "--device", "cpu", "--tau", "0.2"])
    assert not hasattr(args, "checkpoint") and not hasattr(args, "ray")  # the command does not offer them
    opts = analysis_options(args, long_runs=False)
    assert opts.run == RunControl() and opts.runtime.max_memory is None and opts.runtime.device == "cpu"
    assert SCALING_ARGS.parse(args).tau == 0.2
