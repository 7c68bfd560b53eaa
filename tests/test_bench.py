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


def test_convnet_flop_counts():
    from rbp.bench import convnet_flops

    convs = [64 * 32 * 32 * 3 * 25, 64 * 15 * 15 * 64 * 25, 64 * 7 * 7 * 64 * 25]   # same padding: 32, 15, 7
    dense = [64 * 3 * 3 * 1024, 1024 * 10]
    fwd = sum(convs) + sum(dense)
    assert convnet_flops("bp") == 2 * (2 * fwd + sum(convs[1:]) + sum(dense))
    assert convnet_flops("rbp") == convnet_flops("bp")
    assert convnet_flops("srbp") == 2 * (2 * fwd + 10 * (64 * 15 * 15 + 64 * 7 * 7 + 576 + 1024))
    assert convnet_flops("top") == 2 * 2 * fwd


def test_bench_convnet_refuses_mnist_data_in_one_line(capsys):
    code = main(["bench", "--model", "convnet", "--data", "mnist", "--steps", "1", "--repeats", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1 and "convnet" in err


def test_bench_convnet_on_real_cifar10_reports_ratios(capsys):
    import os
    from pathlib import Path

    import pytest
    import torch

    root = os.environ.get("RBP_DATA_DIR", "")
    if not root or not (Path(root) / "cifar10" / "cifar-10-batches-py" / "test_batch").is_file():
        pytest.skip("RBP_DATA_DIR does not hold cifar10/")
    threads = torch.get_num_threads()
    try:
        assert main(["bench", "--model", "convnet", "--data", "cifar10", "--steps", "1", "--repeats", "1",
                     "--algorithms", "srbp", "--threads", "1", "--json", "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out["results"]) == {"reference", "reference-cl", "srbp"}
    assert out["model"] == "convnet" and out["steps_per_epoch"] == 391 and out["data"] == "cifar10"
    assert out["ratio_srbp_vs_reference"] > 0 and out["ratio_reference_cl_vs_reference"] > 0
    assert 0 < out["data_seconds_per_step"] < 1


def test_graph_bench_times_the_converted_model_against_the_same_plain_model():
    from rbp.bench import graph_model, run_graph_bench
    out = run_graph_bench("transformer", steps=1, repeats=1, algorithms=("rbp", "srbp"), log=lambda m: None)
    assert set(out["results"]) == {"reference", "rbp", "srbp"}
    for alg in ("rbp", "srbp"):
        assert out[f"ratio_{alg}_vs_reference"] > 0 and out[f"cpu_ratio_{alg}_vs_reference"] > 0
    names = [n for n, _ in graph_model("transformer").named_parameters()]
    assert "encoder.layers.0.self_attn.in_proj_weight" in names
    assert sum(p.numel() for p in graph_model("wide-mlp").parameters()) == 784 * 2048 + 3 * 2048 ** 2 + 2048 * 10 \
        + 4 * 2048 + 10


def test_flop_counts_ask_the_route():
    """Every algorithm is costed by its route (as `rbp cost`), not by its name: asrbp and distinct are
    skipped routes, kp a chain."""
    from rbp import algorithm
    from rbp.bench import convnet_flops
    from rbp.cost import cost
    sizes = [784, 100, 100, 100, 100, 10]
    fwd = 784 * 100 + 3 * 100 * 100 + 100 * 10
    for name in ("asrbp", "distinct", "kp", "adistinct", "twin", "top"):
        assert channel_flops(sizes, name) == 2 * (fwd + fwd + cost(sizes, name)["channel"]), name
    assert channel_flops(sizes, "asrbp") == channel_flops(sizes, "srbp")
    assert channel_flops(sizes, "distinct") != channel_flops(sizes, "rbp")
    assert channel_flops(sizes, "distinct") != channel_flops(sizes, "srbp")
    assert convnet_flops("asrbp") == convnet_flops("srbp") != convnet_flops("bp")
    assert convnet_flops("kp") == convnet_flops("bp")
    assert convnet_flops(algorithm("srbp", backward_hidden=(20,))) != convnet_flops("srbp")


def test_bench_resnet18_and_gpt_print_the_flop_floor_beside_the_ratio(capsys):
    """`rbp bench --model resnet18-cifar` / `--model gpt`: the converted model against the same plain model,
    each variant with its FLOP floor (matrix products only: rbp's is 1, per-layer srbp's on a language
    model is above 1, the shared projection's below that)."""
    import torch
    threads = torch.get_num_threads()
    try:
        assert main(["bench", "--model", "gpt", "--steps", "1", "--repeats", "1", "--batch", "2", "--threads", "1",
                     "--algorithms", "rbp,srbp,srbp:skip_projection=shared", "--json", "--quiet"]) == 0
        out = capsys.readouterr().out
        res = json.loads(out.strip().splitlines()[-1])
        assert "FLOP floor" in out and res["batch"] == 2 and res["model"] == "gpt"
        floors = {k: v["flop_floor"] for k, v in res["results"].items()}
        assert floors["reference"] == 1.0 and floors["rbp"] == 1.0
        assert floors["srbp"] > floors["srbp:skip_projection=shared"] and floors["srbp"] > 1
        assert res["cpu_ratio_srbp:skip_projection=shared_vs_reference"] > 0
        assert main(["bench", "--model", "resnet18-cifar", "--steps", "1", "--repeats", "1", "--batch", "2",
                     "--threads", "1", "--algorithms", "kp,srbp", "--json", "--quiet"]) == 0
        res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert res["results"]["kp"]["flop_floor"] == 1.0 and 0 < res["results"]["srbp"]["flop_floor"] < 1
    finally:
        torch.set_num_threads(threads)
    code = main(["bench", "--model", "mlp", "--batch", "4", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and "--batch" in err


def test_the_bench_models_are_built_in_house():
    import torch
    from rbp.bench import graph_model
    from rbp.models import resnet18
    r18 = graph_model("resnet18-cifar")
    assert sum(p.numel() for p in r18.parameters()) == 11_181_642     # torchvision's resnet18 with 10 classes
    assert sum(isinstance(m, torch.nn.Conv2d) for m in r18.modules()) == 20
    assert resnet18(cifar_stem=True)(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    lm = graph_model("gpt")
    assert lm.head.out_features >= 8192 and lm(torch.zeros(2, 64, dtype=torch.long)).shape == (2, 64, 8192)
    import inspect
    import rbp.models
    source = inspect.getsource(rbp.models)
    assert "import torchvision" not in source and "from torchvision" not in source


def test_bench_compile_times_every_variant_compiled_against_the_compiled_plain_model(capsys):
    """`rbp bench --compile`: one fullgraph compile per variant (a graph break would fail the run), the
    ratios against the compiled plain model, the eager plain model beside them; the trainer's models refuse
    the flag in one line."""
    import torch
    threads = torch.get_num_threads()
    try:
        assert main(["bench", "--model", "narrow-mlp", "--compile", "--steps", "1", "--repeats", "1",
                     "--threads", "1", "--algorithms", "rbp", "--json", "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    res = json.loads(out.strip().splitlines()[-1])
    assert res["compiled"] is True and set(res["results"]) == {"reference", "reference-eager", "rbp"}
    assert "torch.compile(fullgraph=True)" in out and res["cpu_ratio_rbp_vs_reference"] > 0
    code = main(["bench", "--model", "mlp", "--compile", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and "--compile" in err
