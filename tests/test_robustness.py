"""Holding up: random input to the experiment parser and the store, crashes mid-write,
concurrent writers, diverging runs.

The property-based tests (hypothesis) throw random experiment documents, random
text and random bytes at the loaders: each either works or raises the
project's own error (ConfigError for experiment files; a run file that cannot
be read is reported and skipped), never another exception.
"""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rbp
from rbp.errors import RBPError
from rbp.experiments import Store, load, load_rows, parse, run
from rbp.experiments.experiment import ALGORITHM_OPTIONS, CONFIG_KEYS, PROTOCOL_CHECKS, TOP_KEYS
from rbp.experiments.store import read_run, rows_of

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")

# ----------------------------------------------------------------------------- random experiment files

def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)     # a JSON string is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)


def to_toml(doc):
    """A tiny TOML writer for the shapes below: scalars, lists, [protocol], [[config]]."""
    lines = [f"{_toml_value(k)} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, (dict, tuple))]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines.append(f"[{_toml_value(k)}]")
            lines += [f"{_toml_value(kk)} = {_toml_value(vv)}" for kk, vv in v.items()]
        elif isinstance(v, tuple):          # an array of tables
            for table in v:
                lines.append(f"[[{_toml_value(k)}]]")
                lines += [f"{_toml_value(kk)} = {_toml_value(vv)}" for kk, vv in table.items()]
    return "\n".join(lines) + "\n"


SCALARS = st.one_of(
    st.booleans(), st.integers(-2**63, 2**63 - 1), st.integers(-3, 300),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(-2, 200),
    st.text(max_size=12),
    st.sampled_from(["bp", "rbp", "srbp", "arbp", "asrbp", "sbp", "top", "tanh", "relu", "digits", "mnist",
                     "sparse-4", "sparse-0", "sparse-999", "ternary", "uniform", "sign", "magnitude", "x",
                     "model:cifar_convnet", "feedback:per-synapse", "feedback:nope", ""]),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=5), st.lists(st.integers(-2, 130), max_size=5))
PROTOCOL_KEYS = st.sampled_from([*PROTOCOL_CHECKS, "epochz", "seed"])
CFG_KEYS = st.sampled_from([*CONFIG_KEYS, "algoritm", "paper"])


@st.composite
def experiment_docs(draw):
    """Mostly-plausible experiment documents with random keys, types and values."""
    def mostly(good, other=SCALARS):        # the valid value 4 times in 5, so that the checks further on run
        return draw(st.sampled_from([good] * 4 + [None]).flatmap(lambda v: st.just(v) if v else other))

    doc = {"name": mostly("rand"), "description": mostly("a random experiment"), "dataset": mostly("digits")}
    for k in draw(st.lists(st.sampled_from([*TOP_KEYS, "bogus"]), max_size=2)):
        if k not in ("protocol", "config"):
            doc[k] = draw(VALUES)
    if draw(st.booleans()):
        doc["protocol"] = draw(st.dictionaries(PROTOCOL_KEYS, VALUES, max_size=4))
    configs = []
    for i in range(draw(st.integers(0, 3))):
        c = {"id": mostly(f"c{i}"), "algorithm": mostly(draw(st.sampled_from(["bp", "rbp", "srbp", "arbp", "top"])))}
        c.update(draw(st.dictionaries(CFG_KEYS, VALUES, max_size=4)))
        for k in draw(st.lists(st.sampled_from(["id", "algorithm"]), max_size=1)):
            c.pop(k, None)
        configs.append(c)
    if configs or draw(st.booleans()):
        doc["config"] = tuple(configs)
    return doc


VALID_DOC = {"name": "rand", "description": "a random experiment", "dataset": "digits",
             "protocol": {"epochs": 2, "seeds": 2, "hidden": [16, 16], "lr": 0.1},
             "config": ({"id": "a", "algorithm": "rbp", "feedback": "sparse-4"},
                        {"id": "b", "algorithm": "srbp", "quantize_update": 3, "decay": 0.0, "row": "r"})}


@st.composite
def mutated_experiments(draw):
    """A valid experiment document with up to three keys replaced, deleted or added."""
    doc = json.loads(json.dumps({k: (list(v) if isinstance(v, tuple) else v) for k, v in VALID_DOC.items()}))
    doc["config"] = tuple(doc["config"])
    for _ in range(draw(st.integers(0, 3))):
        table = draw(st.sampled_from([doc, doc["protocol"], *doc["config"]]))
        keys = PROTOCOL_KEYS if table is doc["protocol"] else CFG_KEYS if table in doc["config"] else \
            st.sampled_from(["name", "description", "dataset", "reference", "requires", "bogus"])
        key = draw(keys)
        if draw(st.integers(0, 3)) == 0:
            table.pop(key, None)
        else:
            table[key] = draw(VALUES)
    return doc


def _parse_or_config_error(text):
    try:
        exp = parse(text, "random.toml")
    except rbp.ConfigError as e:
        msg = str(e)
        assert msg.startswith("random.toml: ") and "\n" not in msg.strip(), msg
        return None
    assert exp.configs
    for c in exp.configs:             # what parses must also make a training spec, or refuse clearly
        try:
            exp.spec(c, epochs=1)
        except rbp.ConfigError:
            pass
    return exp


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(experiment_docs())
def test_random_experiment_documents_parse_or_fail_clearly(doc):
    _parse_or_config_error(to_toml(doc))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_experiments())
def test_mutated_experiment_documents_parse_or_fail_clearly(doc):
    _parse_or_config_error(to_toml(doc))


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=400))
def test_random_text_is_never_a_crash(text):
    _parse_or_config_error(text)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_random_bytes_in_an_experiment_file(tmp_path, raw):
    path = tmp_path / "bytes.toml"
    path.write_bytes(raw)
    try:
        load(path)
    except rbp.ConfigError as e:
        assert str(e).startswith("bytes.toml:") or str(path) in str(e), str(e)


def test_bad_values_name_file_key_and_range(tmp_path):
    base = 'name = "x"\ndescription = "d"\ndataset = "digits"\n'
    cases = [
        ('[protocol]\nepochs = 0\n', ["protocol.epochs", "1..100000"]),
        ('[protocol]\nhidden = [100, 10000000000]\n', ["protocol.hidden", "1..", "10000000000"]),
        ('[protocol]\nseeds = 1.5\n', ["protocol.seeds", "integer"]),
        ('[protocol]\nmomentum = 1.0\n', ["protocol.momentum", "[0, 1)"]),
        ('[protocol]\nlr = nan\n', ["protocol.lr", "(0, inf)"]),
        ('[protocol]\nepochz = 3\n', ["protocol.epochz", "valid keys"]),
        ('[[config]]\nid = "a"\nalgorithm = "rbp"\ndropout = 1.5\n', ["'a'", "dropout", "[0, 1)"]),
        ('[[config]]\nid = "a"\nalgorithm = "rbp"\nquantize_update = 99\n', ["'a'", "quantize_update", "16"]),
        ('[[config]]\nid = "a"\nalgorithm = "rbp"\nbatch_size = 9223372036854775807\n', ["'a'", "batch_size"]),
        ('[[config]]\nid = "A B"\nalgorithm = "bp"\n', ["id", "lower-case"]),
    ]
    for body, words in cases:
        text = base + body + ('' if "[[config]]" in body else '[[config]]\nid = "a"\nalgorithm = "bp"\n')
        path = tmp_path / "vals.toml"
        path.write_text(text)
        with pytest.raises(rbp.ConfigError) as e:
            load(path)
        msg = str(e.value)
        assert msg.startswith("vals.toml:") and "\n" not in msg, msg
        for w in words:
            assert w in msg, (body, msg)


# ----------------------------------------------------------------------------- random run files

GOOD_RUN = {"format": "rbp-run/1", "experiment": "x", "seed": 0,
            "config": {"id": "a", "label": "A", "algorithm": "bp", "order": 0},
            "spec": {"epochs": 1, "dataset": "digits"},
            "history": [{"seed": 0, "epoch": 1, "train_loss": 0.5, "train_accuracy": 0.9, "test_loss": 0.6,
                         "test_accuracy": 0.8, "seconds": 0.1, "ensemble": 1, "diverged": False}]}
JSONISH = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
                       lambda inner: st.one_of(st.lists(inner, max_size=3),
                                               st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                       max_leaves=12)


@st.composite
def mutated_runs(draw):
    """A valid run document with random parts replaced, deleted or added."""
    doc = json.loads(json.dumps(GOOD_RUN))
    for _ in range(draw(st.integers(1, 4))):
        hist = doc.get("history")
        tables = [doc] + [t for t in (doc.get("config"), doc.get("spec"),
                                      hist[0] if isinstance(hist, list) and hist else None)
                          if isinstance(t, dict)]
        table = draw(st.sampled_from(tables))
        key = draw(st.one_of(st.sampled_from(sorted(table)), st.text(max_size=6)) if table else st.text(max_size=6))
        if draw(st.booleans()):
            table.pop(key, None)
        else:
            table[key] = draw(JSONISH)
    return doc


def _store_reads_or_reports(tmp_path, raw: bytes):
    runs = tmp_path / "store" / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    f = runs / "a--seed0.json"
    f.write_bytes(raw)
    docs, problems = Store(tmp_path / "store").load()
    assert len(docs) + len(problems) == 1
    if docs:                                   # what is accepted is usable by the report
        from rbp.report import Summary
        rows_of(docs[0])
        Summary(docs[0]["config"], docs)
    else:
        assert problems[0].startswith(str(f))
        with pytest.raises(ValueError):
            read_run(f)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutated_runs())
def test_mutated_run_files_are_read_or_reported(tmp_path, doc):
    _store_reads_or_reports(tmp_path, json.dumps(doc).encode())


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_random_bytes_as_a_run_file(tmp_path, raw):
    _store_reads_or_reports(tmp_path, raw)


def test_truncated_run_file_is_reported(tmp_path):
    text = json.dumps(GOOD_RUN)
    for cut in range(0, len(text), 7):
        _store_reads_or_reports(tmp_path, text[:cut].encode())


# ----------------------------------------------------------------------------- crashes and concurrency

TINY = """
name = "tiny-robust"
description = "a tiny digits experiment"
dataset = "digits"

[protocol]
epochs = 2
seeds = 2
hidden = [16, 16]

[[config]]
id = "bp"
algorithm = "bp"

[[config]]
id = "rbp"
algorithm = "rbp"

[[config]]
id = "srbp"
algorithm = "srbp"
"""
ALL = sorted(f"{c}--seed{s}.json" for c in ("bp", "rbp", "srbp") for s in (0, 1))

# The runner in a child process whose fsync of a run file's temporary file first says so on stdout and
# then waits: a SIGKILL sent on that word lands while the run file is half-way (written, not renamed).
SLOW_WRITER = textwrap.dedent("""
    import os, sys, time
    real = os.fsync
    def slow_fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if "/runs/." in name and name.endswith(".tmp"):
            print("RUNFILE", flush=True)
            time.sleep(30)
        real(fd)
    os.fsync = slow_fsync
    from rbp.experiments import run
    run(sys.argv[1], sys.argv[2], progress=False, threads=1)
""")


def _env():
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to see which file is synced")
def test_sigkill_mid_write_leaves_a_clean_store_that_resumes(tmp_path):
    exp_path = tmp_path / "tiny-robust.toml"
    exp_path.write_text(TINY)
    out = tmp_path / "store"
    p = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(exp_path), str(out)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=_env())
    try:
        line = p.stdout.readline()              # blocks until the first run file is half-written
        assert line.strip() == "RUNFILE", p.stderr.read()
        p.send_signal(signal.SIGKILL)
    finally:
        p.kill()
        p.wait(timeout=30)
    runs = out / "runs"
    temps = [f for f in runs.iterdir() if f.name.startswith(".")]
    assert len(temps) == 1 and temps[0].name.startswith(".bp--seed0.json.") and temps[0].stat().st_size > 0
    assert not [f for f in runs.iterdir() if not f.name.startswith(".")]     # no half-written run file
    assert Store(out).load() == ([], [])                                     # reads back cleanly

    s = run(exp_path, out, progress=False, threads=1)                      # and resumes
    assert (s["trained"], s["skipped"]) == (6, 0)
    assert sorted(f.name for f in runs.iterdir() if not f.name.startswith(".")) == ALL
    docs, problems = Store(out).load()
    assert problems == [] and len(docs) == 6
    # the killed writer's temporary file is removed once it is stale, never read
    os.utime(temps[0], (time.time() - 7200, time.time() - 7200))
    assert Store(out).remove_stale_temporaries() == 1 and not temps[0].exists()


def test_two_sweeps_writing_one_store_at_once(tmp_path):
    exp_path = tmp_path / "tiny-robust.toml"
    exp_path.write_text(TINY)
    out = tmp_path / "store"
    cmd = [sys.executable, "-m", "rbp.cli", "run", str(exp_path), "--out", str(out), "--threads", "1", "--quiet",
           "--json"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
             for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    summaries = []
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr
        s = json.loads(stdout.strip().splitlines()[-1])
        assert s["trained"] + s["skipped"] + len(s["claimed_elsewhere"]) == 6
        summaries.append(s)
    # the runs are claimed: between them the two processes trained each run once
    assert sum(s["trained"] for s in summaries) == 6
    assert not (out / "claims").exists() or not list((out / "claims").iterdir())    # every claim released
    runs = out / "runs"
    assert sorted(f.name for f in runs.iterdir()) == ALL            # every run once, no temporary left
    assert not list((out / "checkpoints").glob("*"))                # and no checkpoint of a stored run
    docs, problems = Store(out).load()
    assert problems == [] and len(docs) == 6
    keys = [(r["config"], r["seed"], r["epoch"]) for r in load_rows(out)]
    assert len(keys) == len(set(keys)) == 12
    assert Store(out).experiment().name == "tiny-robust"


# ----------------------------------------------------------------------------- divergence

DIVERGING = TINY.replace("[[config]]\nid = \"rbp\"", """[[config]]
id = "arbp-hot"
algorithm = "arbp"
activation = "linear"
lr = 5.0
adapt_rate = 5.0

[[config]]
id = "rbp\"""").replace("epochs = 2", "epochs = 3")


def test_a_diverging_run_is_stopped_recorded_and_reported(tmp_path, capsys):
    from rbp.cli import main
    exp_path = tmp_path / "div.toml"
    exp_path.write_text(DIVERGING)
    out = tmp_path / "store"
    assert main(["run", str(exp_path), "--out", str(out), "--threads", "1", "--quiet", "--json", "--report"]) == 0
    captured = capsys.readouterr()
    s = json.loads(captured.out.strip().splitlines()[-1])
    assert s["trained"] == 8 and s["failed"] == []           # the sweep went on past the diverged runs
    assert sorted((d["config"], d["seed"]) for d in s["diverged"]) == [("arbp-hot", 0), ("arbp-hot", 1)]
    assert "arbp-hot seed 0 diverged at epoch" in captured.err
    for seed in (0, 1):
        doc = json.loads((out / "runs" / f"arbp-hot--seed{seed}.json").read_text())
        e = doc["diverged_epoch"]
        assert doc["diverged"] and 1 <= e <= 3
        assert [r["epoch"] for r in doc["history"]] == list(range(1, e + 1))     # stopped at that epoch
        assert doc["history"][-1]["diverged"] and not any(r["diverged"] for r in doc["history"][:-1])
        last = doc["history"][-1]
        assert last["train_loss"] is None or not math.isfinite(last["train_loss"]) or \
            last["test_loss"] is None or not math.isfinite(last["test_loss"])
    for cid in ("bp", "rbp", "srbp"):
        doc = json.loads((out / "runs" / f"{cid}--seed0.json").read_text())
        assert not doc["diverged"] and doc["diverged_epoch"] is None and len(doc["history"]) == 3
    report = (out / "report.md").read_text()
    assert "(2 of 2 diverged at epoch" in report and "**Diverged runs**" in report
    assert "(arbp-hot), seed 1: epoch" in report


def test_dask_missing_is_one_clear_error(tmp_path, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_dask(name, *args, **kw):
        if name == "dask" or name.startswith("dask."):
            raise ImportError("No module named 'dask'")
        return real_import(name, *args, **kw)

    exp_path = tmp_path / "tiny-robust.toml"
    exp_path.write_text(TINY)
    monkeypatch.setattr(builtins, "__import__", no_dask)
    with pytest.raises(RBPError, match=r"pip install 'rbp\[distributed\]'"):
        run(exp_path, tmp_path / "s", executor="dask", progress=False)
    with pytest.raises(RBPError, match="need --executor dask"):
        run(exp_path, tmp_path / "s", workers=2, progress=False)
    with pytest.raises(RBPError, match="--executor must be one of"):
        run(exp_path, tmp_path / "s", executor="ray", progress=False)
