"""The multi-task engine: persistent sites on one frozen backbone, rows routed per task, Parallel.

    engine = Engine(backbone)                       # sites installed once per backbone
    engine.attach("sst2", load_task(path, backbone))
    engine.logits([Item("sst2", "a fine film"), Item("trec", "who won?")])   # a mixed batch
    engine.classify(["a fine film"], None, ["sst2", "trec"])                 # Parallel
"""

from streamlearn.engine.core import Engine, Item, TaskModel, check_item, prepare
from streamlearn.engine.loading import LoadedTask, load_task

__all__ = ["Engine", "Item", "LoadedTask", "TaskModel", "check_item", "load_task", "prepare"]
