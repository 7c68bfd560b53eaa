"""Rules of the design (docs/architecture.md) that the code must keep."""

import re
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "rbp"
# where a route is defined by its name: the registry of algorithms and the routes themselves
OWNERS = {"channel/routes.py", "channel/algorithm.py"}
# files waiting for an edit that removes their route-name branches (none)
PENDING: set = set()
BRANCH = re.compile(r"""\.route\s*(==|!=|\bin\b)|\broute\s*(==|!=)\s*["'](chain|product|skip|top)["']""")


def test_no_route_name_branches():
    """Outside the routes only the route is asked (its methods and capabilities), never its name."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel in OWNERS or rel in PENDING:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if BRANCH.search(line.split("#")[0]):
                found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, "\n".join(found)
