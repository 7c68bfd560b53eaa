"""rbp.integrations: the callbacks that call the learning channel's after_step() inside other trainers.

The import tests run everywhere (they need neither library).  The trainer tests carry the `zoo`
marker: CI runs them in the zoo's venv (`python -m pytest -m zoo`), where transformers (with
accelerate, which its Trainer needs) and lightning are installed; elsewhere they skip.
"""

import copy
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import rbp
from rbp.integrations import after_step, learning_channels


def _net():
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))


def _data(n=16):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def _feedback(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "feedback" in k}


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_state_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=lambda m, k=k: f"{k}: {m}")


class _Events:
    """Records optimizer steps (a step post-hook) and after_step calls of a channel, in order."""

    def __init__(self, channel, optimizer=None):
        self.log = []
        original = channel.after_step

        def after():
            self.log.append("after")
            original()

        channel.after_step = after
        if optimizer is not None:
            self.watch(optimizer)

    def watch(self, optimizer):
        optimizer.register_step_post_hook(lambda *_: self.log.append("step"))

    def assert_once_per_step(self, steps):
        assert self.log == ["step", "after"] * steps


# ------------------------------------------------------------------------- no library needed

def test_import_rbp_imports_no_trainer_and_a_missing_one_names_its_extra():
    code = r"""
import sys
import rbp, rbp.integrations
from rbp.integrations import after_step, learning_channels
loaded = {"transformers", "lightning", "pytorch_lightning"} & set(sys.modules)
assert not loaded, loaded
from rbp._optional import MissingDependency
sys.modules["transformers"] = None                       # as if not installed
sys.modules["lightning"] = sys.modules["pytorch_lightning"] = None
for name in ("RBPTrainerCallback", "RBPLightningCallback"):
    try:
        getattr(__import__("rbp.integrations", fromlist=[name]), name)
    except MissingDependency as e:
        print(e)
    else:
        raise AssertionError(name + " imported")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == [
        "rbp.integrations.RBPTrainerCallback needs transformers, which is not installed: pip install 'rbp[transformers]'",
        "rbp.integrations.RBPLightningCallback needs lightning, which is not installed: pip install 'rbp[lightning]'",
    ]


def test_unknown_attribute_is_an_attribute_error():
    import rbp.integrations
    with pytest.raises(AttributeError, match="no attribute 'RBPNothing'"):
        rbp.integrations.RBPNothing    # noqa: B018


def test_learning_channels_found_inside_wrappers_each_once():
    a = rbp.convert(_net(), "wm", seed=0)
    b = rbp.convert(_net(), "srbp", seed=1)
    outer = nn.ModuleDict({"a": a, "again": a, "wrapped": nn.Sequential(b)})
    assert learning_channels(outer) == [a.rbp_channel, b.rbp_channel]
    assert learning_channels(_net()) == []
    before = _feedback(a)
    assert after_step(outer) == 2
    assert all(not torch.equal(before[k], v) for k, v in _feedback(a).items())     # the mirror phase ran


def test_a_deepcopy_has_its_own_channel():
    """deepcopy (as a trainer may do for an EMA or a checkpoint) gives the copy its own channel."""
    a = rbp.convert(_net(), "wm", seed=0)
    b = copy.deepcopy(a)
    assert learning_channels(b) == [b.rbp_channel] and b.rbp_channel is not a.rbp_channel


# ------------------------------------------------------------------------- transformers.Trainer

class _Classifier(nn.Module):
    """A plain torch model in the calling convention of transformers.Trainer (loss in the output)."""

    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x, labels=None):
        logits = self.body(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        return out


class _Rows(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def _hf():
    """transformers and the callback, or a skip (its Trainer needs accelerate too)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")
    from rbp.integrations import RBPTrainerCallback
    return transformers, RBPTrainerCallback


def _hf_train(model, tmp_path, steps, batch, callbacks, lr=0.1):
    transformers, _ = _hf()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=batch, report_to=[],
        use_cpu=True, max_grad_norm=0.0, logging_strategy="no", save_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, seed=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Rows(*_data()),
                                   optimizers=(opt, sched), callbacks=callbacks)
    return trainer, opt


def _hf_bert_wm():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=3,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    return rbp.convert(transformers.BertForSequenceClassification(config), "wm", seed=0)


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n=8):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 50, (n, 6), generator=g)
        self.y = torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.y[i]}


@pytest.mark.zoo
@pytest.mark.parametrize("accumulate", [1, 2])
def test_hf_trainer_runs_after_step_once_per_optimizer_step(tmp_path, accumulate):
    transformers, RBPTrainerCallback = _hf()

    def train(callbacks):
        model = _hf_bert_wm()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        events = _Events(model.rbp_channel, opt)
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2, report_to=[], use_cpu=True,
            gradient_accumulation_steps=accumulate, logging_strategy="no", save_strategy="no",
            disable_tqdm=True, dataloader_num_workers=0)
        before = _feedback(model)
        transformers.Trainer(model=model, args=args, train_dataset=_Tokens(), optimizers=(opt, None),
                             callbacks=callbacks).train()
        return events, before, _feedback(model)

    events, before, after = train([RBPTrainerCallback()])
    events.assert_once_per_step(3)
    assert before and all(not torch.equal(before[k], after[k]) for k in before)   # the mirrors taught B
    events, before, after = train([])                   # without the callback nothing teaches the feedback
    assert events.log == ["step"] * 3
    _assert_state_equal(before, after)


@pytest.mark.zoo
def test_hf_trainer_warns_when_the_model_is_not_converted(tmp_path):
    _, RBPTrainerCallback = _hf()
    trainer, _ = _hf_train(_Classifier(_net()), tmp_path, 1, 4, [RBPTrainerCallback()])
    with pytest.warns(UserWarning, match="holds no rbp learning channel"):
        trainer.train()


@pytest.mark.zoo
@pytest.mark.parametrize("alg", ["rbp", "srbp", "wm"])
def test_hf_trainer_update_equals_a_plain_loop(tmp_path, alg):
    """Two SGD steps on the whole data set (16 rows) inside Trainer, and in a plain loop: same weights and feedback."""
    _, RBPTrainerCallback = _hf()
    torch.manual_seed(0)
    base = _Classifier(_net())
    model, plain = rbp.convert(base, alg, seed=0), rbp.convert(base, alg, seed=0)
    _assert_state_equal(_state(model), _state(plain))
    trainer, _ = _hf_train(model, tmp_path, 2, 16, [RBPTrainerCallback()])
    trainer.train()

    x, y = _data()
    opt = torch.optim.SGD(plain.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        plain(x, labels=y)["loss"].backward()
        opt.step()
        plain.rbp_channel.after_step()
    _assert_state_equal(_state(model), _state(plain))
    assert not torch.equal(_state(model)["body.0.weight"], _state(base)["body.0.weight"])   # it trained


# ------------------------------------------------------------------------- PyTorch Lightning

def _lightning():
    try:
        import lightning.pytorch as pl
    except ImportError:
        try:
            import pytorch_lightning as pl
        except ImportError:
            pytest.skip("neither lightning nor pytorch_lightning is installed")
    return pl


def _module(pl, net, lr=0.1):
    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = net

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=lr)

    return Module()


class _StepWatcher:
    """A Lightning callback that puts the step post-hook on the optimizer Lightning built."""

    def __init__(self, pl, events):
        class Watch(pl.Callback):
            def on_train_start(self, trainer, pl_module):
                events.watch(trainer.optimizers[0])

        self.callback = Watch()


def _fit(pl, module, batches_of, n, callbacks, steps=3, accumulate=1):
    x, y = _data(n)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batches_of)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         accumulate_grad_batches=accumulate, callbacks=callbacks)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(num_workers|LeafSpec|litlogger).*")
        trainer.fit(module, loader)
    return trainer


@pytest.mark.zoo
@pytest.mark.parametrize("accumulate, n", [(1, 16), (2, 16), (2, 20)])
def test_lightning_runs_after_step_once_per_optimizer_step(accumulate, n):
    """n=20 in batches of 4 is 5 batches an epoch: with accumulation 2 the last group is one batch,
    and Lightning steps after it (steps after batches 2, 4 and 5)."""
    pl = _lightning()
    from rbp.integrations import RBPLightningCallback
    net = rbp.convert(_net(), "wm", seed=0)
    events = _Events(net.rbp_channel)
    before = _feedback(net)
    trainer = _fit(pl, _module(pl, net), 4, n, [RBPLightningCallback(), _StepWatcher(pl, events).callback],
                   accumulate=accumulate)
    assert trainer.global_step == 3
    events.assert_once_per_step(3)
    after = _feedback(net)
    assert before and all(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.zoo
def test_lightning_update_equals_a_plain_loop():
    pl = _lightning()
    from rbp.integrations import RBPLightningCallback
    base = _net()
    net, plain = rbp.convert(base, "wm", seed=0), rbp.convert(base, "wm", seed=0)
    _fit(pl, _module(pl, net), 16, 16, [RBPLightningCallback()], steps=2)
    x, y = _data()
    opt = torch.optim.SGD(plain.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(plain(x), y).backward()
        opt.step()
        plain.rbp_channel.after_step()
    _assert_state_equal(_state(net), _state(plain))


@pytest.mark.zoo
def test_lightning_warns_when_the_model_is_not_converted():
    pl = _lightning()
    from rbp.integrations import RBPLightningCallback
    with pytest.warns(UserWarning, match="holds no rbp learning channel"):
        _fit(pl, _module(pl, _net()), 4, 16, [RBPLightningCallback()], steps=1)



@pytest.mark.zoo
def test_lightning_callback_on_pytorch_lightning_alone():
    """Without the `lightning` package the callback subclasses pytorch_lightning's Callback."""
    pytest.importorskip("pytorch_lightning")
    code = r"""
import sys
sys.modules["lightning"] = None
import pytorch_lightning
from rbp.integrations import RBPLightningCallback
assert issubclass(RBPLightningCallback, pytorch_lightning.Callback), RBPLightningCallback.__mro__
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
