"""Analysers, embedders, the FAISS + BM25 indexes and their persistence."""
