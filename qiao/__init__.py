"""Qiao 桥: bilingual (English / 中文) semantic search and question answering with exact citations.

The installed import package is ``qiao``; its sub-packages live at the top of the repository
(``corpus/ index/ retriever/ qa/ service/ api/ eval/``) and are mapped to ``qiao.corpus``,
``qiao.index``, … by ``[tool.setuptools.package-dir]`` in pyproject.toml. Data flows one way:
corpus → index → retriever → qa → service → api / integrations.
"""

from __future__ import annotations

from pathlib import Path as _Path

# In a source checkout the sub-packages sit beside this folder, not inside it: look for them there
# first, so that the checkout being run (a clone, a worktree, CI's copy) is the one imported, whatever
# editable install the interpreter also knows. An installed wheel has them inside and skips this.
_here = _Path(__file__).resolve().parent
if not (_here / "corpus").is_dir() and (_here.parent / "corpus" / "__init__.py").is_file():
    __path__.append(str(_here.parent))  # noqa: F821
del _Path, _here

__version__ = "0.1.0"

# Names re-exported from the integrations, imported on first use (PEP 562): ``import qiao`` does not
# import langchain; ``from qiao import QiaoRetriever`` does.
_LAZY = {
    "QiaoRetriever": "qiao.integrations.langchain",
    "QiaoSearchError": "qiao.integrations.langchain",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'qiao' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
