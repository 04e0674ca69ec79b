"""The Celery side of streamlearn, kept thin: the app (`app.py`) and one task (`tasks.py`).

Everything a task does lives in `streamlearn.pipeline.run_task`; nothing in `streamlearn/`
imports this package (the client sends by task name, see `streamlearn.dispatch`).
"""
