"""The one option table (rbp.channel.algorithm.OPTIONS): every consumer is derived from it."""

import dataclasses
import re
from pathlib import Path

import pytest

import rbp
from rbp.channel.algorithm import KP_DECAY, OPTION, OPTIONS, RULES, Algorithm, options_table
from rbp.cli import build_parser, train_spec_from_args
from rbp.errors import ConfigError
from rbp.experiments.experiment import ALGORITHM_OPTIONS, from_spec, parse

README = Path(__file__).resolve().parent.parent / "README.md"
CORE = {"name", "route", "symmetric", "adaptive"}      # what an algorithm is, not options of it


def test_the_table_covers_every_field_of_an_algorithm():
    fields = {f.name for f in dataclasses.fields(Algorithm)} - CORE
    assert fields == set(OPTION), fields ^ set(OPTION)
    assert set(ALGORITHM_OPTIONS) == set(OPTION)           # every option can be written in an experiment file
    assert all(r.__doc__ is None or r.__name__ for r in RULES)


def _cli(opt_values):
    args = []
    for name, value in opt_values.items():
        opt = OPTION[name]
        args += [opt.cli_flag] if opt.negate else [opt.cli_flag, opt.text(value)]
    return args


@pytest.mark.parametrize("opt", OPTIONS, ids=lambda o: o.name)
def test_every_option_round_trips_cli_spec_algorithm_experiment_file(opt):
    """CLI flags -> TrainSpec -> Algorithm -> experiment file (TOML) -> the same Algorithm."""
    alg_name, values = opt.example
    assert opt.name in values
    want = rbp.algorithm(alg_name, **values)
    assert getattr(want, opt.name) != getattr(rbp.ALGORITHMS[alg_name], opt.name)
    argv = ["train", "-a", alg_name, *_cli(values)]
    if "after-lr" in str(values.get("quantize_update_mode")):
        argv += ["--decay", "0"]
    spec = train_spec_from_args(build_parser().parse_args(argv))
    assert spec.algorithm == want
    assert opt.name in spec.algorithm.options()
    exp = from_spec(spec, [0, 1])
    assert f"{opt.name} = " in exp.source
    again = parse(exp.source, "experiment.toml")
    assert again.configs[0].algorithm == want
    assert rbp.algorithm(alg_name, **want.options()) == want


def test_help_states_the_defaults_the_code_uses(capsys):
    """The CLI help is the table's: Kolen-Pollack's decay is the code's KP_DECAY (the help once said 1e-3)."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"kp: {KP_DECAY:g}" in out
    for opt in OPTIONS:
        assert opt.cli_flag in out


def test_a_bad_option_value_on_the_command_line_is_one_line(capsys):
    from rbp.cli import main
    assert main(["train", "--backward-hidden", "a,b"]) == 2
    assert main(["train", "-a", "rbp", "--block-matrix", "both"]) == 2
    assert main(["train", "-a", "rbp", "--init-scale", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "Traceback" not in " ".join(err)
    assert "block_matrix must be one of own, shared" in err[1] and "init_scale" in err[2]


def test_readme_option_table_is_the_generated_one():
    text = README.read_text(encoding="utf-8")
    m = re.search(r"<!-- options:begin -->\n(.*?)\n<!-- options:end -->", text, re.S)
    assert m, "README.md lacks the <!-- options:begin --> ... <!-- options:end --> markers"
    assert m.group(1) == options_table(), ("regenerate: python -c 'from rbp.channel.algorithm import "
                                           "options_table; print(options_table())'")


def test_rules_are_named_and_each_refuses():
    with pytest.raises(ConfigError, match="needs quantize_update"):
        rbp.algorithm("rbp", quantize_update_mode="flush")
    with pytest.raises(ConfigError, match="needs blocks"):
        rbp.algorithm("srbp", block_matrix="shared")
    assert [r.__name__ for r in RULES] == ["quantize_update_mode_needs_bits", "after_lr_needs_its_lr",
                                           "per_synapse_feedback_alone", "mirrors_need_kept_feedback",
                                           "block_mode", "distinct_network_follows_nothing",
                                           "shared_projection_is_fixed"]
    with pytest.raises(ConfigError, match="skip_projection='shared'"):
        rbp.algorithm("srbp", skip_projection="shared", feedback="resampled")
