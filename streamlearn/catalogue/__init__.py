"""The catalogue: the source of truth for every task, job and artifact.

`models` holds the tables, `session` the engines (upgrading the schema on open), `records` every
write (the only place a job's status changes) and `queries` what the CLI reads. Nothing here
imports torch.
"""
