"""``rbp theory ...`` through ``register`` (as the main CLI will call it)."""

import argparse
import json

import pytest

from rbp.errors import ConfigError
from rbp.theory.__main__ import main
from rbp.theory.cli import register


def run(capsys, *argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["theory", *argv])
    code = args.func(args)
    out = capsys.readouterr().out
    return code, out


def last_json(out):
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_chain_json(capsys, depth):
    code, out = run(capsys, "chain", "--depth", str(depth), "--seed", "3", "--json")
    r = last_json(out)
    assert code == 0
    assert {"predicted", "simulated", "max_abs_diff"} <= set(r)
    assert len(r["predicted"]) == depth and r["max_abs_diff"] < 1e-6
    assert r["degree"] == 2 ** depth - 1


def test_chain_text_and_explicit_start(capsys):
    code, out = run(capsys, "chain", "--depth", "2", "--a0", "-0.5", "-1.5", "--c", "1",
                    "--alpha", "1", "--beta", "1")
    assert code == 0 and "AGREE" in out and "degree 3" in out


def test_chain_divergence_is_reported_not_a_number(capsys):
    # beta < 0 is no second moment, but it is Thm 1's case of a positive leading coefficient
    code, out = run(capsys, "chain", "--depth", "2", "--a0", "2", "2", "--c", "1", "--alpha", "1",
                    "--beta", "-1", "--json")
    r = last_json(out)
    assert code == 0 and r["status"] == "diverges" and r["predicted"] is None and r["max_abs_diff"] is None


@pytest.mark.parametrize("argv", [["expansive", "--n", "3"], ["expansive", "--n", "2", "--method", "gd"],
                                  ["autoencoder", "--n", "4"], ["general", "--sizes", "3", "4", "2"],
                                  ["general", "--sizes", "2", "2", "2", "--identity"],
                                  ["nonlinear", "--mu", "2"], ["nonlinear", "--mu", "1", "--no-fprime"],
                                  ["thm9", "--sizes", "3", "4", "3"], ["thm9", "--sizes", "2", "2", "2", "--identity"]])
def test_other_checks_agree(capsys, argv):
    code, out = run(capsys, *argv, "--json")
    r = last_json(out)
    assert code == 0 and r["agree"] and r["max_abs_diff"] < 1e-6


def test_thm9_text_reports_isolation(capsys):
    code, out = run(capsys, "thm9", "--sizes", "2", "3", "2")
    assert code == 0 and "isolated: yes" in out and "AGREE" in out


def test_nonlinear_without_fprime_shows_no_fixed_point(capsys):
    code, out = run(capsys, "nonlinear", "--mu", "3", "--no-fprime")
    assert code == 0 and "no fixed point" in out
    code, out = run(capsys, "nonlinear", "--mu", "3", "--no-fprime", "--json")
    r = last_json(out)
    assert r["status"] == "no fixed point" and r["predicted"] is None and r["simulated"] is None


def test_two_layer_json(capsys):
    code, out = run(capsys, "two-layer", "--activation", "tanh", "--width", "200", "--lam", "0.1",
                    "--runs", "2", "--n", "10", "--d", "20", "--min-steps", "300", "--check-every", "100",
                    "--threads", "1", "--json")
    r = last_json(out)
    assert code == 0
    assert {"alignment_mean", "alignment_sd", "loss_mean", "loss_max", "diverged_runs", "converged_runs",
            "capped_runs", "alignments", "losses", "run_steps", "steps", "eta", "protocol"} <= set(r)
    assert r["runs"] == 2 and len(r["alignments"]) == 2 and r["protocol"] == "authors"
    assert r["eta"] == 0.1 and r["target"] == "teacher" and r["rule_min_steps"] == 300
    assert r["alignment_mean"] == pytest.approx(sum(r["alignments"]) / 2)


def test_two_layer_parser_defaults_are_the_authors_protocol():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    a = parser.parse_args(["theory", "two-layer"])
    assert (a.protocol, a.width, a.lam, a.runs, a.n, a.d, a.activation) == ("authors", 3200, 0.0, 5, 50, 150, "relu")
    assert a.eta is None and a.steps is None and a.min_steps is None and a.target is None
    s = parser.parse_args(["theory", "sweep"])
    assert s.widths == [200, 400, 800, 1600, 3200, 6400, 12800] and s.protocol == "authors"
    assert s.lams is None and s.runs is None          # from the protocol: the activation's grid, 50 runs


def test_two_layer_reports_diverged_runs(capsys):
    argv = ["two-layer", "--activation", "linear", "--width", "50", "--n", "10", "--d", "20", "--runs", "8",
            "--seed", "3", "--eta", "0.195", "--min-steps", "500", "--check-every", "100"]
    code, out = run(capsys, *argv, "--json")
    r = last_json(out)
    assert code == 0 and 0 < r["diverged_runs"] < 8
    assert r["converged_runs"] + r["diverged_runs"] == 8
    good = [a for a in r["alignments"] if a is not None]
    assert len(good) == 8 - r["diverged_runs"] and r["alignment_mean"] == pytest.approx(sum(good) / len(good))
    code, out = run(capsys, *argv)
    assert f"{r['diverged_runs']} diverged (non-finite loss; left out of the means)" in out


def test_sweep_and_figures_write_files(capsys, tmp_path):
    common = ["--runs", "2", "--n", "8", "--d", "16", "--min-steps", "200", "--check-every", "100", "--steps", "2000",
              "--threads", "1", "--out", str(tmp_path), "--figures", str(tmp_path / "img")]
    code, out = run(capsys, "sweep", "--widths", "50", "100", "--lams", "0", "0.1", *common, "--json")
    r = last_json(out)
    assert code == 0 and len(r["records"]) == 4
    assert (tmp_path / "sweep_relu.json").exists()
    assert all((tmp_path / "img" / f).exists() for f in ["alignment_authors.png", "loss_authors.png"])
    saved = json.loads((tmp_path / "sweep_relu.json").read_text())
    assert saved["protocol"] == "authors" and saved["target"] == "teacher" and len(saved["loss_curves"]) == 4
    # --append adds a width (and replaces a point trained again); the default lambdas are the authors' grid
    code, out = run(capsys, "sweep", "--widths", "100", "--lams", "0.1", "--append", *common[:-4],
                    "--runs", "1", "--out", str(tmp_path), "--figures", str(tmp_path / "img"), "--json")
    recs = last_json(out)["records"]
    assert len(recs) == 4 and [x["runs"] for x in recs if (x["width"], x["lam"]) == (100, 0.1)] == [1]
    code, out = run(capsys, "sweep", "--activation", "linear", "--widths", "50", *common, "--json")
    assert code == 0 and sorted({x["lam"] for x in last_json(out)["records"]}) == [0, 0.2, 0.3, 0.5]
    (tmp_path / "img" / "alignment_authors.png").unlink()
    code, out = run(capsys, "sweep", "--replot", "--out", str(tmp_path), "--figures", str(tmp_path / "img"),
                    "--json")
    assert code == 0 and len(last_json(out)["records"]) == 4
    assert (tmp_path / "img" / "alignment_authors.png").stat().st_size > 10_000
    with pytest.raises(ConfigError):
        run(capsys, "sweep", "--replot", "--out", str(tmp_path / "empty"))
    code, out = run(capsys, "figures", "--out", str(tmp_path / "figs"), "--json")
    files = last_json(out)["files"]
    assert code == 0 and len(files) == 4
    assert all((tmp_path / "figs" / f).stat().st_size > 10_000 for f in
               ["a111_vector_field.png", "chain_trajectories.png", "autoencoder.png", "nonlinear.png"])


@pytest.mark.parametrize("argv", [["chain", "--depth", "0"], ["chain", "--depth", "2", "--a0", "1"],
                                  ["chain", "--depth", "2", "--c", "0"], ["expansive", "--n", "0"],
                                  ["autoencoder", "--n", "-1"], ["general", "--sizes", "2", "3", "2", "--identity"],
                                  ["nonlinear", "--mu", "0"], ["two-layer", "--width", "-5"],
                                  ["thm9", "--sizes", "2", "0", "2"], ["thm9", "--sizes", "2", "3", "2", "--identity"],
                                  ["two-layer", "--lam", "-1"], ["sweep", "--widths", "0"],
                                  ["two-layer", "--steps", "-1"], ["two-layer", "--eta", "0"],
                                  ["sweep", "--lams", "-0.1"]])
def test_bad_input_raises_config_error(capsys, argv):
    with pytest.raises(ConfigError):
        run(capsys, *argv)


def test_module_entry_point_turns_errors_into_exit_2(capsys):
    assert main(["chain", "--depth", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "depth" in err
    assert main(["chain", "--depth", "2", "--json"]) == 0


def test_sweep_append_refuses_a_file_drawn_with_the_old_teacher(tmp_path, capsys):
    # a sweep file written before the teacher carried 1/sqrt(p) has records without 'target_form'
    old = {"protocol": "authors", "activation": "tanh", "target": "teacher",
           "records": [{"width": 20, "lam": 0.0, "target": "teacher"}], "loss_curves": []}
    (tmp_path / "sweep_tanh.json").write_text(json.dumps(old))
    rc = main(["sweep", "--activation", "tanh", "--widths", "20", "--runs", "1", "--lams", "0",
               "--steps", "3", "--out", str(tmp_path), "--append"])
    err = capsys.readouterr().err
    assert rc != 0 and "no 1/sqrt(p)" in err and "without --append" in err and "Traceback" not in err
    assert json.loads((tmp_path / "sweep_tanh.json").read_text()) == old
