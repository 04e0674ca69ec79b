"""`streamlearn serve`: one resident backbone answers every task over HTTP.

The pieces, one noun each: `config` (the frozen server settings and the token rule), `backends`
(how a batch of rows of several tasks becomes logits), `resident` (which tasks' parts are in
memory: lazy, verified, LRU under a byte budget, switched when the catalogue has a newer
artifact), `batcher` (gathers rows of concurrent requests into batches, off the event loop),
`metrics` (Prometheus), `schemas` (request bodies), and the HTTP side: `app` (the FastAPI app,
errors, limits, the token), `predictions` (/v1/predict, /v1/classify, the KServe v2 protocol) and
`catalogue` (the read endpoints and the multipart submission).

Nothing here is imported by `streamlearn.cli` until `serve` runs: it imports torch.
"""
