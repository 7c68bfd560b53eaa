"""What a converted model keeps of PyTorch's conventions: DDP, torch.save/load with weights_only, .to(dtype),
functional_call (each checked against the same model without the wrapper)."""

import os
import socket

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import rbp


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.LayerNorm(12), nn.Linear(12, 12), nn.Tanh(),
                         nn.Linear(12, 4))


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 6, generator=g), torch.randint(0, 4, (8,), generator=g)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DDP_ALGS = ["bp", "rbp", "srbp", "kp"]


def _ddp_worker(rank, world, port, out):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        for alg in DDP_ALGS:
            model = DDP(rbp.convert(_model(), alg, seed=0))
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            x, y = _batch()
            half = x.shape[0] // world
            for _ in range(2):
                opt.zero_grad()
                F.cross_entropy(model(x[rank * half:(rank + 1) * half]), y[rank * half:(rank + 1) * half]).backward()
                opt.step()
                model.module.rbp_channel.after_step()
            torch.save({k: v.detach().clone() for k, v in model.module.state_dict().items()},
                       f"{out}/{alg}-rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_agree_and_equal_one_process_on_the_full_batch(tmp_path):
    import torch.multiprocessing as mp
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for alg in DDP_ALGS:
        a, b = torch.load(tmp_path / f"{alg}-rank0.pt"), torch.load(tmp_path / f"{alg}-rank1.pt")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), alg     # bitwise
        single = rbp.convert(_model(), alg, seed=0)
        opt = torch.optim.SGD(single.parameters(), lr=0.1)
        x, y = _batch()
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(single(x), y).backward()
            opt.step()
        for k, v in single.state_dict().items():
            assert torch.allclose(a[k], v, atol=1e-6), (alg, k)


@pytest.mark.parametrize("alg", ["rbp", "srbp", "asrbp", "kp"])
def test_save_load_weights_only_to_double_and_functional_call(alg, tmp_path):
    m = rbp.convert(_model(), alg, seed=0)
    x, y = _batch()
    F.cross_entropy(m(x), y).backward()
    torch.save(m.state_dict(), tmp_path / "m.pt")
    other = rbp.convert(_model(), alg, seed=5)
    other.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    for k, v in m.state_dict().items():
        assert torch.equal(other.state_dict()[k], v), k
    d = rbp.convert(_model(), alg, seed=0).to(torch.float64)
    d.zero_grad()
    F.cross_entropy(d(x.double()), y).backward()
    m.zero_grad()
    F.cross_entropy(m(x), y).backward()
    for (n, p), q in zip(m.named_parameters(), d.parameters()):
        assert q.dtype == torch.float64 and torch.allclose(q.grad.float(), p.grad, atol=1e-5), n
    from torch.func import functional_call
    params = {n: p.detach().clone().requires_grad_() for n, p in m.named_parameters()}
    out = functional_call(m, {**params, **dict(m.named_buffers())}, (x,))
    F.cross_entropy(out, y).backward()
    for n, p in m.named_parameters():
        assert torch.allclose(params[n].grad, p.grad, atol=1e-6), n
