"""Documents: loading, cleaning, metadata, facets and chunking (with exact offsets)."""
