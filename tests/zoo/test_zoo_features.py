"""rbp.convert's options on zoo models (docs/zoo.md): tied embeddings, targets= / exclude=, bf16 autocast,
torch.compile.

The models are zoo_models' specs; each test skips without the library it needs.
"""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

import rbp
import zoo_checks as C
import zoo_models as Z

pytestmark = pytest.mark.zoo
C.require("transformers")

HF = {s.name: s for s in Z.HF}
TIMM = {s.name: s for s in Z.TIMM}
TIED = ["hf-gpt2", "hf-llama"]
EMBEDDING = {"hf-gpt2": "transformer.wte", "hf-llama": "model.embed_tokens"}


def _spec(name):
    if name.startswith("timm-"):
        if C.library_error("timm"):
            pytest.skip(C.library_error("timm"))
        return TIMM[name]
    if name.startswith("tv-"):
        if C.library_error("torchvision"):
            pytest.skip(C.library_error("torchvision"))
        return {s.name: s for s in Z.torchvision_specs()[0]}[name]
    return HF[name]


def _tied(name):
    """The spec's model with tie_word_embeddings=True (lm_head.weight is the input embedding's), float64."""
    spec = HF[name]
    model = copy.deepcopy(C.plain(spec, torch.float64)[0])
    model.config.tie_word_embeddings = True
    model.tie_weights()
    emb = model.get_submodule(EMBEDDING[name])
    assert model.lm_head.weight is emb.weight
    return spec, model


def _loss(model, inputs, targets):
    return Z.loss_of(model, inputs, targets)


def _grads(model, inputs, targets):
    model.zero_grad(set_to_none=True)
    _loss(model, inputs, targets).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


# ------------------------------------------------------------------------------------------ tied weights

@pytest.mark.parametrize("alg", C.ALGORITHMS)
@pytest.mark.parametrize("name", TIED)
def test_tied_embedding_sums_the_exact_output_gradient_and_the_channel_update(name, alg):
    """lm_head.weight is the input embedding: its .grad is the output layer's exact gradient (Fact 1)
    plus the embedding's update from the signal the channel delivers at the embedding's output (plus
    Kolen-Pollack's decay, once)."""
    spec, model = _tied(name)
    inputs, targets = Z.example(spec, torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", getattr(rbp, "UnknownWeightWarning", UserWarning))
        m = rbp.convert(model, alg, seed=0)
    emb_name = EMBEDDING[name]
    emb = m.get_submodule(emb_name)
    assert m.lm_head.weight is emb.weight, "the conversion untied lm_head from the embedding"
    report = getattr(m.rbp_channel, "report", None)
    if report is not None:
        assert sorted(report.tied[0]) == sorted([f"{emb_name}.weight", "lm_head.weight"]), report.tied
    seen = {}

    def capture(mod, inputs, out):          # the signal arriving at the embedding's output
        out.register_hook(lambda g: seen.setdefault("J", g))

    hook = emb.register_forward_hook(capture)
    _loss(m, inputs, targets).backward()
    hook.remove()
    assert m.rbp_channel.output_names() == ["lm_head"]
    # the output use: autograd's gradient of lm_head's weight, its input held fixed
    body = model.get_submodule(name == "hf-gpt2" and "transformer" or "model")
    h = body(**inputs).last_hidden_state.detach()
    W = model.lm_head.weight.detach().requires_grad_()
    logits = h @ W.t()
    exact = torch.autograd.grad(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)), W)[0]
    ids = inputs["input_ids"]
    channel = torch.zeros_like(exact).index_add_(0, ids.reshape(-1), seen["J"].reshape(-1, exact.shape[1]))
    decay = rbp.algorithm(alg).weight_decay * model.lm_head.weight.detach()
    torch.testing.assert_close(emb.weight.grad, exact + channel + decay, rtol=1e-7, atol=1e-10)
    if alg == "bp":   # and the whole model's gradient is autograd's
        want = _grads(model, inputs, targets)
        got = {n: p.grad for n, p in m.named_parameters() if n in want}
        for n in want:
            torch.testing.assert_close(got[n], want[n], rtol=1e-7, atol=1e-10, msg=n)


@pytest.mark.parametrize("alg", C.ALGORITHMS)
@pytest.mark.parametrize("name", ["hf-gpt2"])
def test_tied_embedding_keeps_the_state_dict_and_trains(name, alg):
    spec, model = _tied(name)
    model = model.float()
    inputs, targets = Z.example(spec)
    m = rbp.convert(model, alg, seed=0)
    assert set(model.state_dict()) <= set(m.state_dict())
    opt = C.optimizer(spec, m.parameters())
    first = None
    for _ in range(C.STEPS):
        opt.zero_grad()
        loss = _loss(m, inputs, targets)
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert m.lm_head.weight is m.get_submodule(EMBEDDING[name]).weight, "training untied the weights"
    with torch.no_grad():
        assert _loss(m, inputs, targets).item() < first


# -------------------------------------------------------------------------------- targets= / exclude=

HEAD_ONLY = ["hf-gpt2", "hf-llama", "timm-vit_tiny", "tv-resnet-tiny"]


@pytest.mark.parametrize("alg", ["rbp", "srbp", "kp", "usf"])
@pytest.mark.parametrize("name", HEAD_ONLY)
def test_targets_the_head_only_leaves_the_body_to_backprop(name, alg):
    """targets=[head]: the output layer is the only site. Its gradient is autograd's (Fact 1; plus
    Kolen-Pollack's decay), it sends g F below (F: its feedback, (out, in) on the chained route, the skip
    matrix (N_L, in) on the skipped one; g = dLoss/dlogits), and the body, left to autograd, gets
    backprop's gradient from that signal: the plain model with g F put in at the head's input."""
    spec = _spec(name)
    model, inputs, targets, _, want = C.plain(spec, torch.float64)
    (head,) = spec.head
    m = rbp.convert(model, alg, seed=0, targets=[head])
    got = _grads(m, inputs, targets)
    assert m.rbp_channel.output_names() == [head]
    assert [r["name"] for r in m.rbp_channel.report.sites] == [head]
    F_ = m.get_submodule(head).feedback.detach()
    plain_head = model.get_submodule(head)
    hook = plain_head.register_full_backward_hook(lambda mod, gin, gout: (gout[0] @ F_,))
    try:
        expect = _grads(model, inputs, targets)
    finally:
        hook.remove()
    decay = rbp.algorithm(alg).weight_decay
    params = dict(m.named_parameters())
    for n, g in want.items():
        if g is None:
            continue
        e = expect[n]
        if n.startswith(head + "."):
            e = g + decay * params[n].detach() if decay else g
        torch.testing.assert_close(got[n], e, rtol=1e-7, atol=1e-10, msg=n)


@pytest.mark.parametrize("name,pattern,plain_type", [("hf-llama", "*.mlp.*", "Linear"),
                                                     ("hf-gpt2", "transformer.h.*.mlp", "Conv1D"),
                                                     ("hf-bert", "bert.encoder", "Linear")])
def test_exclude_leaves_the_named_layers_to_autograd(name, pattern, plain_type):
    import fnmatch
    spec = _spec(name)
    model, inputs, targets, _, want = C.plain(spec, torch.float64)
    m = rbp.convert(model, "bp", seed=0, exclude=[pattern])
    covered = [n for n, _ in model.named_modules()
               if n and (fnmatch.fnmatchcase(n, pattern) or any(fnmatch.fnmatchcase(p, pattern)
                                                                 for p in _prefixes(n)))]
    weights = [n for n in covered if type(model.get_submodule(n)).__name__ == plain_type]
    assert weights, f"{pattern} names no {plain_type} in {name}"
    for n in weights:
        assert type(m.get_submodule(n)) is type(model.get_submodule(n)), f"{n} was converted"
    sites = {r["name"] for r in m.rbp_channel.report.sites}
    assert not sites & set(weights)
    assert sites, "nothing was converted"
    got = _grads(m, inputs, targets)          # bp with some layers left to autograd: still autograd's gradient
    for n, g in want.items():
        if g is not None:
            torch.testing.assert_close(got[n], g, rtol=1e-7, atol=1e-10, msg=n)


def _prefixes(name):
    parts = name.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))]


def test_a_pattern_that_names_nothing_is_refused():
    spec = HF["hf-llama"]
    with pytest.raises(rbp.ConfigError, match="no module named like 'nothing.here'"):
        rbp.convert(C.plain(spec, torch.float64)[0], "rbp", exclude=["nothing.here"])


# ------------------------------------------------------------------------------------- bf16 autocast

AUTOCAST = ["hf-llama", "hf-gpt2", "hf-vit", "timm-convnext_atto", "tv-regnet_y-tiny"]


def _cosine(a, b):
    return (a.flatten() @ b.flatten() / (a.norm() * b.norm() + 1e-30)).item()


@pytest.mark.parametrize("name", AUTOCAST)
def test_bf16_autocast_bp_follows_autograd_and_rbp_trains(name):
    """Under torch.autocast(bfloat16): bp's update is autograd's under the same autocast (up to bf16's
    rounding: cosine > 0.99 for every parameter with a gradient), gradients stay float32, and 20 rbp
    steps lower the loss."""
    spec = _spec(name)
    model, inputs, targets, _, _ = C.plain(spec, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = _grads(model, inputs, targets)
    m = rbp.convert(model, "bp", seed=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _grads(m, inputs, targets)
    assert set(want) <= set(got)
    bad = []
    for n, g in want.items():
        assert got[n].dtype == torch.float32, n
        if g.norm() > 1e-6 and _cosine(got[n], g) < 0.99:
            bad.append(f"{n} (cosine {_cosine(got[n], g):.3f})")
    assert not bad, f"bp under autocast departs from autograd's: {bad[:4]}"
    m = rbp.convert(model, "rbp", seed=0)
    opt = C.optimizer(spec, m.parameters())
    first = None
    for _ in range(C.STEPS):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = _loss(m, inputs, targets)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
        opt.step()
        first = loss.item() if first is None else first
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert _loss(m, inputs, targets).item() < first


# ------------------------------------------------------------------------------------------ torch.compile

# each library's attention or conv blocks with each route: chained (rbp), skipped (srbp), adaptive (kp); every
# model and algorithm was checked once (15 pairs, 2026-12-08), these keep the suite's time down
COMPILED = [("hf-gpt2", "rbp"), ("hf-gpt2", "srbp"), ("hf-bert", "srbp"), ("hf-llama", "kp"),
            ("timm-vit_tiny", "rbp"), ("tv-mobilenet_v3-tiny", "srbp"), ("tv-mobilenet_v3-tiny", "kp")]


@pytest.mark.parametrize("name,alg", COMPILED, ids=[f"{n}-{a}" for n, a in COMPILED])
def test_fullgraph_compile_gives_the_eager_gradients(name, alg):
    """torch.compile(fullgraph=True) of a converted zoo model (one graph: a break would fail) computes the
    eager channel's gradients.  aot_eager: dynamo and AOTAutograd, the parts that see the channel."""
    spec = _spec(name)
    model, inputs, targets, _, _ = C.plain(spec, torch.float32)
    eager = rbp.convert(copy.deepcopy(model), alg, seed=1, example_input=inputs)
    comp = rbp.convert(copy.deepcopy(model), alg, seed=1, example_input=inputs)
    _grads(comp, inputs, targets)            # one eager pass: the channel notes its output layer
    torch._dynamo.reset()
    compiled = torch.compile(comp, fullgraph=True, backend="aot_eager")
    want = _grads(eager, inputs, targets)
    comp.zero_grad(set_to_none=True)
    _loss(compiled, inputs, targets).backward()
    got = {n: p.grad for n, p in comp.named_parameters() if p.grad is not None}
    assert set(got) == set(want)
    for n, g in want.items():
        scale = g.abs().max().item() + 1e-12
        assert (got[n] - g).abs().max().item() <= 1e-4 * scale, n
