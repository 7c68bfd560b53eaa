"""The optional dependencies: which extra brings each, and one clear line when it is missing.

Training needs only torch and numpy.  Everything else is an extra of the package::

    pip install 'rbp[report]'     # matplotlib: `rbp report` figures, `rbp theory` figures
    pip install 'rbp[theory]'     # scipy (and matplotlib): the theory workbench, `rbp theory`
    pip install 'rbp[progress]'   # tqdm: progress bars (without it, rbp prints per-epoch lines only)
    pip install 'rbp[all]'        # all of the above

and, outside ``all``, the trainers of other libraries that :mod:`rbp.integrations` serves::

    pip install 'rbp[transformers]'   # rbp.integrations.RBPTrainerCallback (Hugging Face Trainer)
    pip install 'rbp[lightning]'      # rbp.integrations.RBPLightningCallback (PyTorch Lightning)
"""

from __future__ import annotations

import importlib
import sys

from .errors import RBPError

# import name -> (distribution name, extra)
EXTRAS = {
    "matplotlib": ("matplotlib", "report"),
    "scipy": ("scipy", "theory"),
    "tqdm": ("tqdm", "progress"),
    "transformers": ("transformers", "transformers"),
    "lightning": ("lightning", "lightning"),
}


class MissingDependency(RBPError, ImportError):
    """An optional package that the feature asked for is not installed."""


def require(module: str, purpose: str, extra: str | None = None):
    """Import ``module`` (or a submodule of it) or raise :class:`MissingDependency` naming the extra
    (``extra``, or the one that brings ``module``)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        if e.name is not None and e.name.split(".")[0] != top:
            raise               # the package is there but broken: show the real error
        dist, default = EXTRAS.get(top, (top, "all"))
        extra = extra or default
        raise MissingDependency(f"{purpose} needs {dist}, which is not installed: pip install 'rbp[{extra}]'") \
            from None


class _Lines:
    """What rbp uses of a tqdm bar, without tqdm: messages are printed, the bar is not drawn."""

    def __init__(self, *args, file=None, **kwargs):
        self.file = file or sys.stderr

    def update(self, n=1):
        pass

    def set_description_str(self, desc=None, refresh=True):
        pass

    def write(self, line, file=None):
        print(line, file=file or self.file, flush=True)

    def close(self):
        pass


def progress_bar(**kwargs):
    """A tqdm progress bar where tqdm is installed, else an object that only prints written lines."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _Lines(**kwargs)
    return tqdm(**kwargs)
