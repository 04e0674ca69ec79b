"""streamlearn: a continual-learning task-stream service.

Each task gets a fresh Houlsby bottleneck adapter (Houlsby et al. 2019, arXiv:1902.00751) on a
frozen, shared backbone; a catalogue records every task, job and artifact. `streamlearn.open()`
is the Python API over the multi-task engine (`streamlearn.api`; importing it loads no torch).
"""

__version__ = "0.1.0"

from streamlearn.api import Prediction, Session, open  # noqa: E402,A004

__all__ = ["Prediction", "Session", "__version__", "open"]
