"""The queue package is the queue: no module of common/jobqueue/ imports the rest of the project (the graph,
the stages, the config, the workers), so it can be read, tested and reused on its own (docs/queue.md).
Read from the source (AST), not imported: an import inside a function counts as much as one at the top."""
import ast
from pathlib import Path

import pytest

from queue_fixtures import REPO

QUEUE = REPO / "common" / "jobqueue"
PROJECT = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file()} | {"launch"}


def imported(source: str, package: str) -> list:
    """[(line, module)] of every import in `source`, a module of `package`; `from m import n` reads as
    m.n (n may be a module), relative imports resolved against `package`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(parts + ([node.module] if node.module else []))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def outside_the_queue(module: str) -> bool:
    top = module.split(".")[0]
    return top in PROJECT and module != "common" and not (module + ".").startswith("common.jobqueue.")


def test_the_project_packages_are_found():
    assert {"common", "producer", "consumer", "launch"} <= PROJECT  # else the check below checks nothing


@pytest.mark.parametrize("path", sorted(QUEUE.glob("*.py")), ids=lambda p: p.name)
def test_a_queue_module_imports_nothing_of_the_project_outside_the_queue(path):
    bad = [f"{path.relative_to(REPO)}:{line}: imports {module}"
           for line, module in imported(path.read_text(), "common.jobqueue") if outside_the_queue(module)]
    assert not bad, "\n".join(bad)


def test_the_check_catches_each_way_of_importing_the_project():
    source = ("import common.graph\nfrom common import config\nfrom common.stage import Task\n"
              "def f():\n    from ..workers import worker\n    import producer.stage\n"
              "from . import queue\nfrom .job import Job\nfrom common.jobqueue.lease import Lease\nimport os, json\n")
    flagged = [m for _, m in imported(source, "common.jobqueue") if outside_the_queue(m)]
    assert sorted(flagged) == ["common.config", "common.graph", "common.stage.Task", "common.workers.worker",
                              "producer.stage"]
