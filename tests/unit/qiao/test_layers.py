"""The import graph flows one way: corpus < index < retriever < qa < service < {api, integrations, eval}.

Every module of every layer is parsed (ast, so imports inside functions count too) and each
``qiao.<layer>`` import is checked against the order. ``qiao`` itself, ``qiao.settings``,
``qiao.config``, ``qiao.errors`` and ``qiao.metrics`` sit beside the layers and may be imported by all. The top
layers do not import each other, except the CLI (in ``api/``) which runs the evaluation and the
integrations.
"""

from __future__ import annotations

import ast
from pathlib import Path


from qiao.settings import PROJECT_ROOT

RANK = {"corpus": 0, "index": 1, "retriever": 2, "qa": 3, "service": 4, "api": 5, "integrations": 5, "eval": 5}
SHARED = {"settings", "config", "errors", "metrics"}
"""Modules of the root package every layer may import."""
EXTRA = {("api", "eval"), ("api", "integrations")}
"""Edges between top layers that are allowed: the CLI runs `qiao eval` and the integrations."""
MOVING: set[str] = set()
"""Known upward imports being moved right now (none: the LangChain retriever moved to integrations/)."""


def _modules() -> list[tuple[str, Path]]:
    out = []
    for layer in RANK:
        root = PROJECT_ROOT / layer
        if root.is_dir():
            out.extend((layer, p) for p in sorted(root.rglob("*.py")))
    return out


def _imports(path: Path, layer: str) -> list[tuple[int, str]]:
    """``(line, dotted module)`` of every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    rel = path.relative_to(PROJECT_ROOT).with_suffix("").parts  # e.g. ("retriever", "hybrid")
    package = ["qiao", *rel[:-1]] if rel[-1] != "__init__" else ["qiao", *rel[:-1]]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            found.append((node.lineno, mod))
            if mod == "qiao":  # from qiao import index, ...
                found.extend((node.lineno, f"qiao.{a.name}") for a in node.names)
    return found


def violations() -> list[str]:
    bad = []
    for layer, path in _modules():
        if path.relative_to(PROJECT_ROOT).as_posix() in MOVING:
            continue
        for line, mod in _imports(path, layer):
            parts = mod.split(".")
            if parts[0] != "qiao" or len(parts) < 2:
                continue
            target = parts[1]
            if target in SHARED or target == layer:
                continue
            if target not in RANK:
                bad.append(f"{path.relative_to(PROJECT_ROOT)}:{line} imports {mod} (not a known layer)")
                continue
            if RANK[target] < RANK[layer] or (layer, target) in EXTRA:
                continue
            bad.append(f"{path.relative_to(PROJECT_ROOT)}:{line}: {layer} imports {mod} (upward or sideways)")
    return bad


def test_no_upward_imports():
    assert violations() == []


def test_the_check_can_fail(tmp_path):
    """Planted upward imports (one inside a function, one relative) are reported; a downward one is not."""
    found = _probe_violation(tmp_path)
    assert len(found) == 2, found
    assert any("index/bad.py:2: index imports qiao.service.core" in f for f in found)
    assert any("service/rel.py:1: service imports qiao.api" in f for f in found)


def _probe_violation(tmp_path: Path) -> list[str]:
    global PROJECT_ROOT
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "bad.py").write_text("def f():\n    from qiao.service.core import QiaoService\n", encoding="utf-8")
    (tmp_path / "qa").mkdir()
    (tmp_path / "qa" / "ok.py").write_text("from qiao.index.backend import SearchBackend\nfrom qiao.errors import QiaoError\n", encoding="utf-8")
    (tmp_path / "service").mkdir()
    (tmp_path / "service" / "rel.py").write_text("from ..api import schemas\n", encoding="utf-8")
    saved = PROJECT_ROOT
    PROJECT_ROOT = tmp_path
    try:
        return violations()
    finally:
        PROJECT_ROOT = saved
