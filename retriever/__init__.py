"""Hybrid retrieval: BM25 + vectors, fusion, filters."""
