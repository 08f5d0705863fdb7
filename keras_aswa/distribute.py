"""Which process of a multi-process run is the chief.

In a run over several processes (TensorFlow's `MultiWorkerMirroredStrategy`,
JAX multi-process, `torch.distributed`) every process runs the callbacks and
holds the same average; side effects that must happen once, such as writing
a backup, belong to the chief only. A single-process run is its own chief.
"""

from __future__ import annotations

import json
import os

from keras import backend


def is_chief(model=None) -> bool:
    """Whether this process is the chief of its run (True when alone).

    - TensorFlow: the task of the distribution strategy's cluster resolver
      (the model's strategy when `model` is given, else the current one),
      or else `TF_CONFIG`: task type `"chief"`, or `"worker"` 0 in a cluster
      without a chief. Evaluators are never chief.
    - JAX: `jax.process_index() == 0`.
    - PyTorch: rank 0 of `torch.distributed` when it is initialised.

    Args:
        model: The model being trained; on TensorFlow its
            `distribute_strategy` is consulted first.
    """
    name = backend.backend()
    if name == "tensorflow":
        return _tensorflow_is_chief(model)
    if name == "jax":
        import jax

        return jax.process_index() == 0
    if name == "torch":
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank() == 0
        return True
    return True


def _tensorflow_is_chief(model) -> bool:
    import tensorflow as tf

    strategy = None if model is None else getattr(model, "distribute_strategy", None)
    if strategy is None and tf.distribute.has_strategy():
        strategy = tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is not None and getattr(resolver, "task_type", None):
        cluster = resolver.cluster_spec().as_dict()
        return _chief_task(resolver.task_type, resolver.task_id, cluster)
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = config.get("task") or {}
    if not task.get("type"):
        return True
    return _chief_task(task["type"], task.get("index", 0), config.get("cluster") or {})


def _chief_task(task_type: str, task_id, cluster: dict) -> bool:
    # TensorFlow's rule (multi_worker_util.is_chief): the "chief" task, or
    # worker 0 where the cluster has no chief.
    if task_type == "chief":
        return True
    return task_type == "worker" and int(task_id or 0) == 0 and not cluster.get("chief")


def gather(digest: bytes) -> list[bytes] | None:
    """Every process' `digest` (16 bytes), in process order; None in a
    one-process run, and on TensorFlow (not gathered there).

    A collective: every process of the run must call it at the same point.
    """
    import numpy as np

    name = backend.backend()
    digest = digest[:16].ljust(16, b"\0")
    if name == "jax":
        import jax

        if jax.process_count() == 1:
            return None
        from jax.experimental import multihost_utils

        values = np.frombuffer(digest, dtype=np.int32)
        gathered = np.asarray(multihost_utils.process_allgather(values))
        return [row.astype(np.int32).tobytes() for row in gathered.reshape(-1, 4)]
    if name == "torch":
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return None
        if dist.get_world_size() == 1:
            return None
        found = [None] * dist.get_world_size()
        dist.all_gather_object(found, digest)
        return found
    return None
