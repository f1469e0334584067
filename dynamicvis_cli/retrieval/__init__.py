"""Zero-shot retrieval: embeddings → binary codes → FAISS binary archives with footprints.

Modules: :mod:`codes` (sign codes, trivial hashing, Hamming), :mod:`embed` (the model's pooled
last stage), :mod:`chips` (sources → chips with footprints and dates), :mod:`faiss_index` (the
binary index kinds), :mod:`archive` (the on-disk archive and its atomic appends), :mod:`search`
(queries and hits), :mod:`metrics` and :mod:`evaluate` (mAP@k, precision@k).
"""
