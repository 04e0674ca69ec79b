"""The catalogue: the source of truth for every task, job and artifact.

`models` holds the tables, `session` the engines (upgrading the schema on open), `records` every
write (the only place a job's status changes; new tasks and jobs come from `intake`, re-exported
there) and `queries` what the CLI and the workers read. Nothing here imports torch.
"""
