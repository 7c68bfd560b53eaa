"""The checks of the model zoo (docs/zoo.md), shared by tests/zoo/test_zoo_*.py and scripts/zoo_table.py.

For a model ``spec`` (zoo_models.Spec) and an algorithm:

- ``check_convert``: ``rbp.convert(model, alg, seed=0)`` gives a copy (the original keeps its
  modules and parameters) or, where rbp refuses the pair on purpose (EXPECTED_REFUSALS), raises
  the expected error with the expected message.
- ``check_gradients``: under ``bp`` every parameter's ``.grad`` equals autograd's on the plain
  model (float64); under the other algorithms the output layer's gradients equal autograd's (paper 1's
  Fact 1: the top layer sees the true error; Kolen-Pollack adds its weight decay), at least one
  hidden parameter's differs, and every parameter autograd trains gets a gradient.
- ``check_state_dict``: every key of the plain model's ``state_dict`` is kept, with its shape.
- ``check_training``: 20 Adam steps on one fixed batch lower the loss (float32).

Each check returns a short string for the table and raises AssertionError (or the error that
rbp raised) when it fails.
"""

from __future__ import annotations

import copy
import functools
import re
import warnings

import torch

import rbp
import zoo_models as Z

ALGORITHMS = ("bp", "rbp", "srbp", "kp", "usf")
BUILDER_ALGORITHMS = ("bp",)          # the torchvision builders as they ship: the lighter checks
STEPS = 20
LR = 3e-3


def optimizer(spec, params):
    """Adam at lr 3e-3 (its steps do not depend on the gradients' scale, which random feedback can blow
    up: MaxViT's stem gets 1e18 under rbp; at 1e-3, 20 steps were too few for srbp on timm's MobileNetV3);
    SGD for the models whose Adam step would cost more than the model."""
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=0.01, momentum=0.9)
    return torch.optim.Adam(params, lr=LR)
TOL = {torch.float64: dict(rtol=1e-7, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-6)}

# (spec name, algorithm) -> (error class name, regular expression its message matches): the pairs that
# rbp refuses on purpose.  A refusal not listed here fails the test with rbp's message.
EXPECTED_REFUSALS: dict[tuple[str, str], tuple[str, str]] = {
    # SqueezeNet ends in a 1x1 conv and a global average pool: srbp has no linear output layer to take E^L from
    ("tv-squeezenet-tiny", "srbp"): ("ConfigError", r"srbp: the top weight layer is a conv layer"),
    # Swin V2's continuous position bias: an MLP on a constant table (a buffer), not on the examples; refused at
    # the first backward pass, which shows where the MLP's input comes from
    ("tv-swin_v2-tiny", "srbp"): ("ConfigError", r"skipped route cannot deliver the output error .*cpb_mlp"),
}

# spec name -> regular expression that every rbp warning of its conversion must match (else it fails)
EXPECTED_WARNINGS: dict[str, str] = {}


def require(library: str):
    """Skip the calling test module where ``library`` does not import (pytest's importorskip, which lets
    the RuntimeError of a torchvision built for another torch through)."""
    import pytest
    why = library_error(library)
    if why:
        pytest.skip(why, allow_module_level=True)


def library_error(library: str) -> str | None:
    """Why ``library`` cannot be used here (None when it imports)."""
    try:
        __import__(library)
    except Exception as e:      # torchvision beside a torch it was not built for raises RuntimeError
        return f"{library} does not import: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
    return None


def algorithms(spec) -> tuple[str, ...]:
    return BUILDER_ALGORITHMS if spec.tier == "builder" else ALGORITHMS


def checks(spec) -> tuple[str, ...]:
    """In this order: training trains the conversion that the convert check made (converted_model)."""
    if spec.tier == "builder":
        return ("convert", "state_dict", "gradients")
    return ("convert", "state_dict", "gradients", "training")


# ------------------------------------------------------------------------------------------ helpers

@functools.lru_cache(maxsize=2)
def plain(spec, dtype):
    """The plain model in ``dtype``, its batch, its logits and autograd's gradients on it (cached: the last
    spec's float32 and float64 copies; the cases run spec by spec)."""
    model = Z.build(spec).to(dtype)
    inputs, targets = Z.example(spec, dtype)
    out, grads, _ = gradients(model, inputs, targets)
    return model, inputs, targets, out, grads


def gradients(model, inputs, targets):
    """(logits, {parameter name: .grad}, rbp's warnings) of one forward/backward pass."""
    model.zero_grad(set_to_none=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = Z.logits(model, inputs)
        loss = torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), targets.reshape(-1))
        loss.backward()
    grads = {n: (None if p.grad is None else p.grad.detach().clone()) for n, p in model.named_parameters()}
    return out.detach(), grads, _rbp_warnings(caught)


def _rbp_warnings(caught) -> list[str]:
    """The messages of the warnings rbp raised (its own classes, or issued from rbp's modules)."""
    out = []
    for w in caught:
        mod = getattr(w.category, "__module__", "") or ""
        if mod.startswith("rbp") or "/rbp/" in (w.filename or ""):
            out.append(f"{w.category.__name__}: {w.message}")
    return out


def convert(spec, alg, dtype):
    """(converted model, rbp's warnings) or the error rbp raised."""
    model = plain(spec, dtype)[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted = rbp.convert(model, alg, seed=0)
    return converted, _rbp_warnings(caught)


@functools.lru_cache(maxsize=2)
def converted_model(spec, alg, dtype):
    """:func:`convert`, cached: the checks of one (spec, algorithm) share one conversion per dtype; the
    training check, which runs last, trains the float32 one."""
    return convert(spec, alg, dtype)


def expected_refusal(spec, alg):
    return EXPECTED_REFUSALS.get((spec.name, alg))


class Refused(Exception):
    """rbp refused a pair that EXPECTED_REFUSALS lists (the checks after convert have nothing to check)."""


def converted_or_refusal(spec, alg, dtype):
    """The converted model and its warnings; raises Refused for an expected refusal (its convert check asserts
    it), AssertionError for any other."""
    want = expected_refusal(spec, alg)
    if want:
        raise Refused(f"{want[0]} matching {want[1]!r}")
    try:
        return converted_model(spec, alg, dtype)
    except (rbp.UnsupportedModelError, rbp.ConfigError) as e:
        raise AssertionError(f"rbp.convert refused {spec.name} under {alg}: {type(e).__name__}: {e}") from e


def _module_of(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def output_names(converted, spec) -> tuple[str, ...]:
    """The output layer(s): the channel's own answer after a backward pass where rbp has one, else the spec's."""
    channel = getattr(converted, "rbp_channel", None)
    ask = getattr(channel, "output_names", None)
    if ask is None:
        return spec.head
    names = tuple(ask())
    assert set(names) == set(spec.head), (f"rbp_channel.output_names() is {sorted(names)}, the output layer of "
                                          f"{spec.name} is {sorted(spec.head)}")
    return names


def _close(a, b, tol) -> bool:
    return torch.allclose(a, b, **tol)


def _describe(a, b) -> str:
    d = (a - b).abs().max().item()
    return f"max |diff| {d:.3g}, max |autograd| {b.abs().max().item():.3g}"


# ------------------------------------------------------------------------------------------- checks

def check_convert(spec, alg) -> str:
    """Convert (float32); the original model is left as it was."""
    want = expected_refusal(spec, alg)
    model = plain(spec, torch.float32)[0]
    before = {n: type(m) for n, m in model.named_modules()}
    params = {n: p.data_ptr() for n, p in model.named_parameters()}
    if want:     # refused by rbp.convert, or at the first backward pass (what the graph shows)
        err = getattr(rbp, want[0])
        try:
            converted, _ = convert(spec, alg, torch.float32)
            _, inputs, targets, _, _ = plain(spec, torch.float32)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                Z.loss_of(converted, inputs, targets).backward()
        except err as e:
            assert re.search(want[1], str(e)), f"refused with another message: {e}"
            return f"refused: {e}"
        raise AssertionError(f"expected {want[0]} matching {want[1]!r}, but {spec.name} converted and ran a "
                             f"backward pass under {alg}: update EXPECTED_REFUSALS and docs/zoo.md")
    converted, warned = converted_or_refusal(spec, alg, torch.float32)
    assert converted is not model, "rbp.convert returned the original model (inplace=False must copy)"
    assert {n: type(m) for n, m in model.named_modules()} == before, "rbp.convert changed the original's modules"
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == params, "the original's parameters moved"
    assert not hasattr(model, "rbp_channel"), "the original model got an rbp_channel"
    mine = {p.data_ptr() for p in model.parameters()}
    shared = [n for n, p in converted.named_parameters() if p.data_ptr() in mine]
    assert not shared, f"the converted model shares parameters with the original: {shared[:3]}"
    _check_warnings(spec, warned)
    return "converted" + (f" ({len(warned)} warning(s): {warned[0]})" if warned else "")


def _check_warnings(spec, warned):
    allowed = EXPECTED_WARNINGS.get(spec.name)
    for w in warned:
        assert allowed and re.search(allowed, w), f"unexpected warning from rbp: {w}"


def grad_dtype(spec, alg):
    """bp's check (every parameter equals autograd's) runs in the spec's precision, float64 for the tiny
    models; the others' (the output layer exact, the hidden layers different) in float32, on the conversion
    that the convert, state_dict and training checks share."""
    return spec.grad_dtype if alg == "bp" else torch.float32


def check_gradients(spec, alg) -> str:
    dtype = grad_dtype(spec, alg)
    tol = TOL[dtype]
    model, inputs, targets, out, want = plain(spec, dtype)
    converted, _ = converted_or_refusal(spec, alg, dtype)
    got_out, got, warned = gradients(converted, inputs, targets)
    _check_warnings(spec, warned)
    assert got_out.shape == out.shape and _close(got_out, out, tol), (
        f"the converted model computes another function: its logits differ from the original's "
        f"({_describe(got_out, out) if got_out.shape == out.shape else f'shape {tuple(got_out.shape)}'})")
    heads = output_names(converted, spec)
    missing = [n for n in want if n not in got]
    assert not missing, f"parameters lost by the conversion: {missing[:5]}"
    untrained = [n for n in want if want[n] is not None and got[n] is None]
    assert not untrained, f"{len(untrained)} parameter(s) that autograd trains get no gradient: {untrained[:5]}"
    if alg == "bp":
        bad = [f"{n} ({_describe(got[n], want[n])})" for n in want
               if want[n] is not None and not _close(got[n], want[n], tol)]
        assert not bad, f"bp differs from autograd in {len(bad)} of {len(want)} parameters: {bad[:4]}"
        return f"bp = autograd ({len(want)} parameters, {str(dtype)[6:]})"
    decay = rbp.algorithm(alg).weight_decay
    head_params = [n for n in want if _module_of(n) in heads]
    tied = _tied_head(converted, heads, want)
    assert head_params or tied, f"no parameters under the output layer(s) {heads}"
    for n in head_params:
        expect = want[n] + decay * dict(converted.named_parameters())[n].detach() if decay else want[n]
        assert _close(got[n], expect, tol), f"output layer {n} is not exact under {alg}: {_describe(got[n], expect)}"
    hidden = [n for n in want if n not in head_params and want[n] is not None]
    differ = [n for n in hidden
              if (got[n] - want[n]).norm() > 1e-4 * want[n].norm() + 1e-12]
    assert differ, f"{alg} equals autograd in all {len(hidden)} hidden parameters (its channel does nothing)"
    what = "output layer exact" if not tied else f"output layer tied to {', '.join(tied)} (not compared)"
    return f"{what}, {len(differ)}/{len(hidden)} hidden differ"


def _tied_head(converted, heads, names) -> list[str]:
    """Parameters of the output layer(s) that are another module's parameter too (tied): named_parameters
    lists a shared tensor once, under its first name, so the head's use has no gradient of its own."""
    by_id = {id(p): n for n, p in converted.named_parameters()}
    tied = []
    for h in heads:
        for local, p in converted.get_submodule(h).named_parameters(recurse=False):
            first = by_id.get(id(p))
            if first is not None and first != f"{h}.{local}" and first in names:
                tied.append(first)
    return tied


def check_state_dict(spec, alg) -> str:
    model = plain(spec, torch.float32)[0]
    converted, _ = converted_or_refusal(spec, alg, torch.float32)
    before, after = model.state_dict(), converted.state_dict()
    lost = sorted(set(before) - set(after))
    assert not lost, f"{len(lost)} state_dict key(s) lost: {lost[:5]}"
    reshaped = [k for k in before if before[k].shape != after[k].shape]
    assert not reshaped, f"state_dict entries with another shape: {reshaped[:5]}"
    return f"{len(before)} keys kept, {len(after) - len(before)} added"


def check_training(spec, alg) -> str:
    _, inputs, targets, _, _ = plain(spec, torch.float32)
    converted, _ = converted_or_refusal(spec, alg, torch.float32)
    opt = optimizer(spec, converted.parameters())
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")         # the gradients check asserts rbp's warnings
        for _ in range(STEPS):
            opt.zero_grad(set_to_none=True)
            loss = Z.loss_of(converted, inputs, targets)
            loss.backward()
            opt.step()
            converted.rbp_channel.after_step()
            losses.append(loss.item())
        with torch.no_grad():
            final = Z.loss_of(converted, inputs, targets).item()
    assert torch.isfinite(torch.tensor(final)), f"the loss is {final} after {STEPS} steps"
    assert final < losses[0], f"{STEPS} steps did not lower the loss: {losses[0]:.4f} -> {final:.4f}"
    return f"loss {losses[0]:.3f} -> {final:.3f}"


CHECKS = {"convert": check_convert, "gradients": check_gradients, "state_dict": check_state_dict,
          "training": check_training}


def run(spec, alg, check) -> str:
    return CHECKS[check](spec, alg)


def cases(specs):
    """(spec, algorithm, check) in the order that reuses the cached plain model."""
    return [(s, a, c) for s in specs for a in algorithms(s) for c in checks(s)]


def parametrize(specs):
    """The pytest parametrisation of a library's test: every (spec, algorithm, check), with readable ids."""
    import pytest
    found = cases(specs)
    return pytest.mark.parametrize("spec,alg,check", found, ids=[f"{s.name}-{a}-{c}" for s, a, c in found])


def run_case(spec, alg, check):
    """One case of the table; the checks behind an intended refusal skip (its convert case asserts it)."""
    import pytest
    try:
        run(spec, alg, check)
    except Refused as e:
        pytest.skip(f"refused as expected (see its convert case): {e}")


def tied_copy(spec):
    """``spec``'s model with tie_word_embeddings=True (the lm_head shares the input embedding's matrix)."""
    model = copy.deepcopy(plain(spec, torch.float64)[0])
    model.config.tie_word_embeddings = True
    model.tie_weights()
    return model
