"""Default learning rates per method, kept free of torch so the CLI can show a job's resolved rate.

Values: Houlsby et al. 2019 (arXiv:1902.00751), Section 3.1 sweeps {3e-5 ... 3e-3}; the per-method
choice was checked on real tasks (docs/RESULTS.md). `methods.default_lr` reads this table.
"""

from __future__ import annotations

DEFAULT_LR = {"adapter": 1e-3, "layernorm": 1e-3, "full": 3e-5, "top-k": 1e-4, "fusion": 1e-3}
"""Method -> peak AdamW learning rate used when `--lr` is not given."""
