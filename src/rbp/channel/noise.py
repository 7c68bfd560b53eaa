"""Random number streams of a network: one generator per ensemble member.

Every network (and every member of an ensemble) owns its own generators, so a
member of an ensemble draws exactly the numbers the same network would draw
when trained alone with the same seed.
"""

from __future__ import annotations

import numpy as np
import torch

# Independent streams derived from one seed.
STREAMS = {"init": 0, "feedback": 1, "noise": 2, "data": 3, "blocks": 5}   # blocks: SRBP block mode (rbp.nn.blocks)
LAZY = 4   # feedback sized at the first forward pass: stream (4, site index)


def derive_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for ``stream`` derived from a user seed (stable across versions).

    ``stream`` is a name of ``STREAMS`` or ``"feedback-lazy-<i>"`` (the lazily sized
    feedback of site i)."""
    if stream.startswith("feedback-lazy-"):
        key = (LAZY, int(stream.rsplit("-", 1)[1]))
    else:
        key = (STREAMS[stream],)
    ss = np.random.SeedSequence(int(seed) & (2**64 - 1), spawn_key=key)
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


def generator(seed: int | None, stream: str, device="cpu") -> torch.Generator | None:
    """A generator for ``stream``; ``None`` (use torch's global RNG) when seed is None."""
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, stream))
    return g


class Noise:
    """The learning channel's source of randomness (dropout masks, resampled feedback).

    ``seeds`` holds one seed per ensemble member (a single network has one);
    ``None`` entries fall back on torch's global generator.
    """

    def __init__(self, seeds, ensemble: bool):
        self.seeds = list(seeds)
        self.ensemble = ensemble
        self._gens: dict[str, list] = {}

    def generators(self, device) -> list:
        key = str(torch.device(device))
        if key not in self._gens:
            self._gens[key] = [generator(s, "noise", device) for s in self.seeds]
        return self._gens[key]

    def state_dict(self) -> dict:
        """The state of every generator made so far, per device (seedless members: None)."""
        return {dev: [None if g is None else g.get_state() for g in gens] for dev, gens in self._gens.items()}

    def load_state_dict(self, state: dict):
        """Continue every stream from :meth:`state_dict`; streams not yet made then are made fresh later."""
        self._gens = {}
        for dev, states in state.items():
            gens = self.generators(dev)
            if len(states) != len(gens):
                raise ValueError(f"noise state for {len(states)} members, this network has {len(gens)}")
            for g, st in zip(gens, states):
                if g is not None and st is not None:
                    g.set_state(st)

    def per_member(self, fn, device):
        """Call ``fn(generator)`` once per member; stack the results for an ensemble."""
        gens = self.generators(device)
        if not self.ensemble:
            return fn(gens[0])
        return torch.stack([fn(g) for g in gens])

    def keep_mask(self, shape, p: float, dtype, device) -> torch.Tensor:
        """Dropout mask with survivors scaled by 1/(1-p); ``shape`` excludes the ensemble dim."""
        def draw(g):
            return torch.rand(shape, generator=g, device=device, dtype=dtype).ge_(p).to(dtype)
        return self.per_member(draw, device).mul_(1.0 / (1.0 - p))
