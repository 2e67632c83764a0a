"""Tuning the retrieval defaults on several BEIR datasets at once.

    python -m eval.tune --grid fusion [--sample N] [--out eval/tuning/NAME.json] DATASET_DIR...

Every variant is a set of :class:`settings.Settings` overrides run through the production
retriever (``HybridRetriever.rank`` with batch-embedded query vectors), so what wins here is
exactly what ships. Variants that only change retrieval-time settings reuse one eval index per
dataset; variants that change index settings (chunk size, overlap) get their own eval index
(built once, passages embedded once thanks to the shared embedding cache).

For each variant and dataset it prints hybrid nDCG@10 and its margin over the better single
retriever under the same settings; the goal is one setting whose *smallest* margin over all
datasets is positive and as large as possible (not the best average: one dataset must not buy
another's loss). The grids are in :data:`GRIDS`; results are saved as JSON and summarised in
eval/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qiao.eval.beir import BeirDataset, load_beir
from qiao.eval.run import embed_queries, ensure_index, run_mode, sample_queries, score_runs
from qiao.index.embedders import make_embedder
from qiao.retriever.hybrid import HybridRetriever

INDEX_KEYS = {"chunk_size", "chunk_overlap", "embedder", "st_model", "hnsw_threshold", "second_embedder"}


@dataclass
class Loaded:
    ds: BeirDataset
    qids: list[str]
    texts: list[str]
    qvecs: np.ndarray
    qvecs2: np.ndarray | None = None  # the second embedder's query vectors


def _index_key(settings) -> tuple:
    return tuple(sorted((k, getattr(settings, k)) for k in INDEX_KEYS))


class Tuner:
    def __init__(self, paths: list[str], sample: int | None, base_settings):
        self.base = base_settings
        self.embedder = make_embedder(base_settings, base_settings.cache_dir)
        self.data: list[Loaded] = []
        for p in paths:
            ds = load_beir(p)
            qids = sample_queries(ds, sample)
            texts = [ds.queries[q] for q in qids]
            qv = embed_queries(self.embedder, texts, progress=sys.stderr.isatty())
            second = getattr(self.embedder, "second", None)
            qv2 = embed_queries(second, texts, progress=sys.stderr.isatty()) if second is not None else None
            self.data.append(Loaded(ds, qids, texts, qv, qv2))
        self._indexes: dict[tuple, object] = {}
        self._single_cache: dict[tuple, dict] = {}  # single-signal runs do not depend on fusion settings

    def index(self, d: Loaded, settings):
        key = (d.ds.name, _index_key(settings))
        if key not in self._indexes:
            idx, _ = ensure_index(d.ds, settings, self.embedder, progress=sys.stderr.isatty(),
                                  log=lambda s: print(s, file=sys.stderr))
            self._indexes[key] = idx
        return self._indexes[key]

    def run(self, d: Loaded, settings, mode: str) -> dict[str, float]:
        retr = HybridRetriever(self.index(d, settings), self.embedder, settings)
        run_k, run_deep, _ = run_mode(retr, d.qids, d.texts, d.qvecs, mode, progress=False, query_vectors2=d.qvecs2)
        return score_runs({q: d.ds.qrels[q] for q in d.qids}, run_k, run_deep)[0]

    def evaluate(self, overrides: dict) -> dict:
        settings = self.base.model_copy(update=overrides)
        out = {}
        for d in self.data:
            singles = ["bm25", "vector", *(["vector2"] if d.qvecs2 is not None and self.index(d, settings).vectors2 is not None else [])]
            res = {}
            for m in (*singles, "hybrid"):
                key = (d.ds.name, m, tuple(sorted((k, v) for k, v in overrides.items() if k in _MODE_KEYS.get(m, ()))))
                if m != "hybrid" and key not in self._single_cache:
                    self._single_cache[key] = self.run(d, settings, m)
                res[m] = self._single_cache[key] if m != "hybrid" else self.run(d, settings, m)
            single = max(res[m]["nDCG@10"] for m in singles)
            out[d.ds.name] = {"modes": res, "margin": res["hybrid"]["nDCG@10"] - single}
        return out


_INDEX_AND_ANALYSIS = ("chunk_size", "chunk_overlap", "embedder", "st_model", "hnsw_threshold", "candidate_depth",
                      "second_embedder")
_MODE_KEYS = {
    "bm25": (*_INDEX_AND_ANALYSIS, "glossary_weight", "dictionary_weight"),
    "vector": (*_INDEX_AND_ANALYSIS, "fusion", "fusion_lang_top"),
    "vector2": (*_INDEX_AND_ANALYSIS, "fusion_lang_top"),
}
"""The settings each single-signal mode depends on (a variant that changes none of them reuses its run)."""


def _fmt(overrides: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "(defaults)"


def _grid(base: dict, **axes) -> list[dict]:
    out = [dict(base)]
    for key, values in axes.items():
        out = [{**o, key: v} for o in out for v in values]
    return out


OFF = {"fusion": "calibrated", "fusion_lang_renorm": False, "fusion_trust_low": 0.0, "fusion_trust_high": 0.0}
"""The calibrated fusion with neither the per-language renormalisation nor the BM25 trust ramp."""

GRIDS: dict[str, list[dict]] = {
    # 1. plain reciprocal rank fusion: the baseline the issue describes
    "rrf": _grid({"fusion": "rrf"}, rrf_k=[20, 60], weight_bm25=[0.3, 1.0]),
    # 2. score fusion with per-language cosine z-scores, BM25 as a share of its top score
    "calibrated": _grid(OFF, fusion_bm25_weight=[0.0, 0.5, 1.0, 2.0, 3.0, 4.0]),
    # 3. + the fused scores z-normalised again per language (keeps the other language's best up)
    "renorm": _grid({**OFF, "fusion_lang_renorm": True}, fusion_bm25_weight=[1.0, 2.0, 3.0, 4.0]),
    # 4. + BM25 trust from the share of a full lexical match that the best passage reaches
    "trust": _grid(
        {"fusion": "calibrated", "fusion_lang_renorm": True},
        fusion_trust_low=[0.0, 0.1, 0.2],
        fusion_trust_high=[0.4, 0.5, 0.6, 1.0],
        fusion_bm25_weight=[3.0, 6.0, 8.0, 10.0],
    ),
    # 5. the other knobs, around the chosen fusion
    "langtop": _grid({}, fusion_lang_top=[5, 10, 20, 40, 80]),
    "depth": _grid({}, candidate_depth=[30, 50, 100, 200]),
    "glossary": _grid({}, glossary_weight=[0.0, 0.25, 0.5, 1.0]),
    "chunks": _grid({}, chunk_size=[300, 400, 600, 800], chunk_overlap=[80]) + _grid({}, chunk_size=[400], chunk_overlap=[0, 40, 120]),
    "chunks2": [{"chunk_size": 300, "chunk_overlap": 40}, {"chunk_size": 300, "chunk_overlap": 60}, {"chunk_size": 350, "chunk_overlap": 80},
                {"chunk_size": 350, "chunk_overlap": 40}],
    "final": [
        {},
        *_grid({}, fusion_bm25_weight=[5.0, 8.0]),
        *_grid({}, fusion_trust_low=[0.1]),
        *_grid({}, fusion_trust_high=[0.4, 0.6]),
        *_grid({}, fusion_lang_top=[10, 40]),
    ],
    "defaults": [{}],
    # 6. issue 11: the second embedder (USE) and the CC-CEDICT dictionary bridge
    "second": [{"fusion_second_weight": 0.0, "dictionary_weight": 0.0},
               *_grid({"dictionary_weight": 0.0}, fusion_second_weight=[0.25, 0.5, 0.75, 1.0, 1.5])],
    "dictionary": _grid({"fusion_second_weight": 0.75}, dictionary_weight=[0.1, 0.2, 0.3, 0.5, 1.0]),
    "bridge": _grid({}, fusion_second_weight=[0.5, 0.75, 1.0], dictionary_weight=[0.1, 0.2, 0.3, 0.5]),
    "drcd": [{"fusion_second_weight": 0.0, "dictionary_weight": 0.0},
             *_grid({"dictionary_weight": 0.0}, fusion_second_weight=[0.5, 0.75, 1.0]),
             *_grid({"fusion_second_weight": 0.75}, dictionary_weight=[0.3, 1.0])],
    "same": _grid({"fusion_second_weight": 0.75, "dictionary_weight": 0.75}, fusion_second_weight_same=[0.0, 0.25, 0.5]),
    "same_drcd": _grid({"fusion_second_weight": 0.75, "dictionary_weight": 0.75}, fusion_second_weight_same=[0.0, 0.25]),
    "ablation": [{}, {"fusion_second_weight": 0.0}, {"dictionary_weight": 0.0}, {"glossary_weight": 0.0},
                 {"glossary_weight": 0.0, "dictionary_weight": 0.0}, {"fusion_second_weight": 0.0, "dictionary_weight": 0.0}],
}


def _analyser_overrides(args) -> dict:
    """Settings overrides for the analyser variant of this run (``QIAO_ANALYSER_*`` fields; part of
    the index fingerprint, so each variant gets its own eval index while vectors stay cached)."""
    out: dict = {}
    if args.chinese_mode:
        out["analyser_chinese_mode"] = args.chinese_mode
    if args.jieba_hmm:
        out["analyser_jieba_hmm"] = args.jieba_hmm == "on"
    if args.no_user_dict:
        out["analyser_user_dict"] = False
    if out:
        print(f"analyser: {out}", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    from qiao.settings import Settings

    ap = argparse.ArgumentParser(prog="python -m eval.tune", description=__doc__.split("\n\n")[0])
    ap.add_argument("datasets", nargs="+", help="BEIR dataset directories")
    ap.add_argument("--grid", default="fusion", choices=sorted(GRIDS))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="extra override for every variant")
    ap.add_argument("--sample", type=int, default=None, help="seeded sample of N queries per dataset")
    ap.add_argument("--out", help="write all results as JSON here")
    ap.add_argument("--chinese-mode", choices=["search", "precise"], help="Settings.analyser_chinese_mode for this run")
    ap.add_argument("--jieba-hmm", choices=["on", "off"], help="Settings.analyser_jieba_hmm for this run")
    ap.add_argument("--no-user-dict", action="store_true", help="run without index/data/user_dict.txt")
    args = ap.parse_args(argv)
    analyser = _analyser_overrides(args)
    extra = {}
    for kv in args.set:
        k, _, v = kv.partition("=")
        extra[k] = json.loads(v)
    tuner = Tuner(args.datasets, args.sample, Settings(**analyser))
    names = [d.ds.name for d in tuner.data]
    print("variant".ljust(64) + "".join(n[:22].rjust(24) for n in names) + "   min margin")
    rows = []
    for overrides in GRIDS[args.grid]:
        overrides = {**overrides, **extra}
        t0 = time.perf_counter()
        res = tuner.evaluate(overrides)
        margin = min(r["margin"] for r in res.values())
        rows.append({"overrides": overrides, "results": res, "min_margin": margin})
        cells = "".join(f"{res[n]['modes']['hybrid']['nDCG@10']:.4f} ({res[n]['margin']:+.4f})".rjust(24) for n in names)
        print(_fmt(overrides)[:63].ljust(64) + cells + f"   {margin:+.4f}  [{time.perf_counter() - t0:.0f}s]", flush=True)
        singles = "".join(
            (f"b {res[n]['modes']['bm25']['nDCG@10']:.3f} v {res[n]['modes']['vector']['nDCG@10']:.3f}"
             + (f" u {res[n]['modes']['vector2']['nDCG@10']:.3f}" if "vector2" in res[n]["modes"] else "")).rjust(24)
            for n in names
        )
        print("    singles:".ljust(64) + singles, flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            json.dumps({"datasets": names, "sample": args.sample, "grid": args.grid, "variants": rows}, indent=1),
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
