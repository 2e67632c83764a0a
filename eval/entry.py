"""The one entry the CLI (``qiao eval``) uses: load BEIR datasets, evaluate each, report.

The evaluation is a consumer of the lower layers (it builds its own index and runs the
retriever); nothing below ``api/`` imports it, and the CLI imports only this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from qiao.errors import Invalid
from qiao.eval.beir import load_beir
from qiao.eval.report import text_table, write_report
from qiao.eval.run import EvalResult, evaluate
from qiao.retriever.models import EVAL_MODES


@dataclass
class RetrievalEvalRun:
    results: list[EvalResult]
    report_path: Path | None = None

    def to_json(self, per_query: bool = False) -> str:
        payload = [r.to_dict(per_query_results=per_query) for r in self.results]
        return json.dumps(payload[0] if len(payload) == 1 else payload, ensure_ascii=False, indent=2)

    def text(self) -> str:
        return "\n\n".join(text_table(r) for r in self.results)


def run_retrieval_eval(
    dataset_dirs: Sequence[str | Path],
    settings,
    modes: Sequence[str] | None = None,
    *,
    split: str = "test",
    sample: int | None = None,
    e2e_sample: int = 100,
    rebuild: bool = False,
    report_dir: Path | None = None,
    command: str = "",
    progress: bool = True,
    log: Callable[[str], None] = lambda s: None,
) -> RetrievalEvalRun:
    """Evaluate every dataset in each mode (default: bm25, vector, vector2 when the index has the
    second embedder's vectors, hybrid); with ``report_dir``,
    also write report.md, modes.png and results.json there. Raises :class:`qiao.errors.Invalid`
    (a bad mode or sample) or :class:`qiao.eval.beir.DatasetError` (a bad dataset)."""
    modes = list(modes) if modes else None  # None: every signal the eval index has, then hybrid
    for m in modes or ():
        if m not in EVAL_MODES:
            raise Invalid(f"unknown mode {m!r}; use one of {', '.join(EVAL_MODES)}")
    if sample is not None and sample < 1:
        raise Invalid("--sample must be at least 1")
    datasets = [load_beir(d, split=split) for d in dataset_dirs]
    results = [
        evaluate(ds, settings, modes, sample=sample, e2e_sample=e2e_sample, rebuild=rebuild, progress=progress, log=log)
        for ds in datasets
    ]
    run = RetrievalEvalRun(results)
    if report_dir is not None:
        run.report_path = write_report(results, Path(report_dir), command=command)
        log(f"report written to {run.report_path} (+ {run.report_path.with_name('modes.png').name}, results.json)")
    return run
