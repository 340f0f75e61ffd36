"""Full trainings (finetune, two-stage) of `edge teach` in a child process, so their memory returns when they end.

A finetune in the service's own process left it at its peak: 0.94 GB before, 5-5.6 GB after, never released
(PyTorch and the allocator keep what a training held), which a 4-8 GB Jetson cannot afford. A spawned child
(a fresh interpreter: no copy of the service, its camera threads or its CUDA context) runs train's own
train_model; its `train` log records come back over a queue and are handled by the same loggers here (so the
job's progress and the console see them as before), then its result: the model folder, class names and metrics.
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import queue as queue_mod
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.core.errors import EdgeError, brief

log = logging.getLogger(__name__)

POLL_S = 0.5


def _train_in_child(results: Any, cfg: Any) -> None:
    """The child: train_model(cfg) with its `train` log records sent to the parent, then its result or error."""
    handler = logging.handlers.QueueHandler(results)
    for name in ("train", "edge"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        from train.trainer import train_model

        result = train_model(cfg, progress=False)
        results.put(("result", (str(result.output), list(result.meta.class_names), result.metrics)))
    except EdgeError as e:
        results.put(("error", str(e)))
    except BaseException as e:  # noqa: BLE001 - everything the parent needs is one line
        results.put(("error", brief(e, 300)))


def train_isolated(cfg: Any, cancelled: Callable[[], bool] = lambda: False) -> tuple[Path, list[str], dict[str, Any]]:
    """Run train_model(cfg) in a spawned child -> (output folder, class names, metrics). Its log records are
    handled by this process's loggers of the same names. Raises EdgeError when it fails, is cancelled or dies."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    # not a daemon: a daemonic process may not start DataLoader workers; a cancelled one is terminated below
    child = ctx.Process(target=_train_in_child, args=(results, cfg), name="teach-train")
    child.start()
    finished = False
    try:
        gone_since = None
        while True:
            try:
                item = results.get(timeout=POLL_S)
            except queue_mod.Empty:
                if cancelled():
                    raise EdgeError("stopped while training") from None
                if not child.is_alive():  # give what it put last a moment to arrive through the pipe
                    gone_since = gone_since or 0
                    gone_since += 1
                    if gone_since > 4:
                        raise EdgeError(f"the training process ended without a result (exit code {child.exitcode}; "
                                        "out of memory?)") from None
                continue
            if isinstance(item, logging.LogRecord):
                logging.getLogger(item.name).handle(item)
            elif item[0] == "result":
                output, classes, metrics = item[1]
                finished = True
                return Path(output), classes, metrics
            else:
                finished = True
                raise EdgeError(item[1])
    finally:
        if finished and child.is_alive():
            child.join(30)
        if child.is_alive():
            child.terminate()
            child.join(5)
        results.close()
