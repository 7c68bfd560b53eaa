"""The benchmark's bookkeeping (no timings are asserted: they live in `rbp bench`, not in tests)."""

import json

from rbp.bench import channel_flops, run_bench
from rbp.cli import main


def test_flop_counts_follow_eqs_14_15():
    sizes = [784, 100, 100, 100, 100, 10]
    fwd = 784 * 100 + 3 * 100 * 100 + 100 * 10
    assert channel_flops(sizes, "bp") == 2 * (fwd + fwd + 3 * 100 * 100 + 100 * 10)
    assert channel_flops(sizes, "rbp") == channel_flops(sizes, "bp")
    assert channel_flops(sizes, "srbp") == 2 * (fwd + fwd + 10 * 400)
    assert channel_flops(sizes, "srbp") < channel_flops(sizes, "rbp")


def test_bench_reports_ratios(capsys):
    assert main(["bench", "--steps", "2", "--repeats", "1", "--ensembles", "2", "--algorithms", "rbp,srbp",
                 "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("ratio_rbp_vs_reference", "ratio_srbp_vs_reference", "ensemble_speedup", "matmul_peak_gflops"):
        assert out[key] > 0
    assert set(out["results"]) == {"reference", "rbp", "rbpx2", "srbp", "srbpx2"}
    assert out["results"]["rbpx2"]["ensemble"] == 2
    assert out["data"] == "synthetic"


def test_bench_on_real_mnist_or_one_clear_line(capsys):
    code = main(["bench", "--steps", "1", "--repeats", "1", "--ensembles", "", "--algorithms", "rbp",
                 "--json", "--quiet", "--data", "mnist"])
    captured = capsys.readouterr()
    if code == 0:
        assert json.loads(captured.out.strip().splitlines()[-1])["data"] == "mnist"
    else:                               # no MNIST files here: one line, no traceback
        assert code != 0 and "Traceback" not in captured.err and len(captured.err.strip().splitlines()) == 1
