"""streamlearn: a continual-learning task-stream service.

Each task gets a fresh Houlsby bottleneck adapter (Houlsby et al. 2019, arXiv:1902.00751) on a
frozen, shared backbone; a catalogue records every task, job and artifact.
"""

__version__ = "0.1.0"
