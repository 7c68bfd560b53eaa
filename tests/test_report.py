"""The report on a tiny synthetic result store: the table beside the paper, flags, figures."""

import math

import pytest

from rbp.cli import main
from rbp.experiments import Store, parse
from rbp.report import flag, write_report

EXP = """
name = "synthetic"
description = "a synthetic store for the report tests"
dataset = "digits"

[protocol]
epochs = 3
hidden = [8, 8]

[[config]]
id = "close"
label = "RBP close to the paper"
algorithm = "rbp"
row = "baseline"
paper_mean = 90.0
paper_sd = 1.0

[[config]]
id = "far"
label = "SRBP far from the paper"
algorithm = "srbp"
row = "baseline"
paper_mean = 90.0
paper_sd = 1.0

[[config]]
id = "single"
label = "BP single paper run"
algorithm = "bp"
row = "quantized"
paper_mean = 80.0
note = "the paper reports a single run"

[[config]]
id = "nopaper"
algorithm = "top"
group = ["extra"]

[[config]]
id = "never-run"
algorithm = "bp"
group = ["extra"]
"""

# final test accuracies (fractions) per config and seed
FINAL = {"close": [0.895, 0.905, 0.90], "far": [0.80, 0.81, 0.79], "single": [0.79, 0.81, 0.80],
         "nopaper": [0.5, 0.6, 0.55]}


def _history(seed, final, epochs=3, random_feedback=True):
    rows = []
    for e in range(1, epochs + 1):
        acc = final * e / epochs
        row = {"seed": seed, "epoch": e, "train_loss": 1.0 / e, "train_accuracy": acc + 0.01, "test_loss": 1.1 / e,
               "test_accuracy": acc, "seconds": 0.5, "ensemble": 3, "diverged": False}
        for h in (1, 2):
            row[f"signal_angle_{h}"] = 80.0 - 10 * e
            row[f"update_angle_{h}"] = 85.0 - 10 * e
            if random_feedback:
                row[f"feedback_angle_{h}"] = 88.0 - 5 * e
                row[f"feedback_norm_ratio_{h}"] = 1.0
            else:
                row[f"feedback_angle_{h}"] = math.nan
        rows.append(row)
    return rows


@pytest.fixture
def store(tmp_path):
    exp = parse(EXP, "synthetic.toml")
    st = Store(tmp_path / "store")
    st.bind(exp)
    for cid, finals in FINAL.items():
        c = exp.config(cid)
        spec = exp.spec(c)
        for seed, f in enumerate(finals):
            st.write(exp, c, seed, spec, _history(seed, f, random_feedback=c.algorithm.random_feedback),
                     ensemble=[0, 1, 2], checksums={"digits": "ab" * 32})
    return st


def _table_line(text, label):
    return next(l for l in text.splitlines() if l.startswith("|") and label in l)


def test_report_puts_ours_beside_the_paper(store, tmp_path):
    summary = write_report(store.root)
    text = (store.root / "report.md").read_text()
    assert "Scaled-down run" in text and "2 x the paper's sd" in text
    close = _table_line(text, "RBP close to the paper")
    assert "90.00 (0.50)" in close and "90.0 (1.0)" in close and "+0.00" in close and "| ok |" in close
    far = _table_line(text, "SRBP far from the paper")
    assert "80.00 (1.00)" in far and "-10.00" in far and "**outside**" in far
    single = _table_line(text, "BP single paper run")      # paper single run: 2 x our sd = 2.0
    assert "| 80.0 |" in single and "| ok |" in single
    assert "n/a" in _table_line(text, "| top")
    assert "Not run yet: never-run" in text
    assert summary["flagged"] == 1 and summary["runs"] == 12 and summary["missing"] == ["never-run"]
    assert "sha256 abababab" in text and "the paper reports a single run" in text
    # figures: the overview, one accuracy figure per group (baseline, quantized, extra), alignment where drawn
    names = sorted(p.name for p in (store.root / "figures").iterdir())
    assert "overview.png" in names
    for g in ("01-baseline", "02-quantized", "03-extra"):
        assert f"{g}-accuracy.png" in names
        assert f"]({'figures/' + g}-accuracy.png)" in text
    assert "01-baseline-alignment.png" in names
    for n in names:
        assert (store.root / "figures" / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (store.root / "results.csv").read_text().strip().splitlines()
    assert len(lines) == 1 + 12 * 3 and "update_angle_1" in lines[0]


def test_report_skips_unreadable_runs_and_the_cli_says_so(store, capsys):
    (store.runs / "far--seed9.json").write_text("{not json")
    rc = main(["report", str(store.root), "--json"])
    captured = capsys.readouterr()
    assert rc == 0 and "far--seed9.json" in captured.err
    import json
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["runs"] == 12 and summary["report"].endswith("report.md")
    assert "far--seed9.json" in (store.root / "report.md").read_text()


def test_report_of_a_folder_that_is_no_store(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a result store" in capsys.readouterr().err


@pytest.mark.parametrize("ours,sd,paper,psd,expect", [
    (97.0, 0.1, 97.2, 0.1, "ok"),          # within 2 x paper sd (0.2)
    (96.9, 0.1, 97.2, 0.1, "outside"),
    (95.0, 1.0, 96.5, None, "ok"),         # paper single run: 2 x our sd = 2.0
    (95.0, 0.5, 96.5, None, "outside"),
    (95.0, math.nan, 96.5, None, "n/a"),   # single seed, single paper run: no tolerance
    (95.0, 0.5, None, None, "n/a"),
])
def test_flag_rule(ours, sd, paper, psd, expect):
    assert flag(ours, sd, paper, psd)[0] == expect
