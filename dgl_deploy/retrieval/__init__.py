"""Search without torch: the embedding store, exact and FAISS search, `dgl embed` (local and Ray),
queries and the HTTP server."""
