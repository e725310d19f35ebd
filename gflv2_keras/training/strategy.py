"""The ``tf.distribute`` side of training (TensorFlow only): which strategy, which process writes, how data is sharded.

``build_strategy`` maps the ``--strategy`` names to strategies (as ``official/common/distribute_utils.py
get_distribution_strategy`` of TF Model Garden does); ``is_chief`` is the multi-worker rule for
which process writes checkpoints, logs and the preset (the chief, or worker 0 without one); every
process runs every step.

Multi-worker runs assume nothing shared between the machines but the network: only the chief
reads and writes the work dir, and ``broadcast_from_chief`` gives every worker the chief's
state (fresh or resumed). A worker that dies is noticed by TensorFlow's coordination service
(heartbeats, about 10 s): the survivors' next collective fails with ``UnavailableError``, which
``lost_worker_message`` turns into one line.
"""

import os
import re

import tensorflow as tf

STRATEGIES = ("none", "mirrored", "multi-worker")


def configure_cpu_devices(num_devices):
    """Splits the physical CPU into ``num_devices`` logical devices (testing ``mirrored`` on CPU).

    Must run before TensorFlow initialises its devices (before any op or strategy); raises
    ``RuntimeError`` saying so otherwise.
    """
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(int(num_devices))]
        )
    except RuntimeError as error:
        raise RuntimeError(
            f"cannot split the CPU into {num_devices} logical devices: TensorFlow is already initialised "
            f"(call configure_cpu_devices first, e.g. in a fresh process): {error}"
        ) from error


def build_strategy(kind="none", cpu_devices=None):
    """A ``tf.distribute.Strategy``.

    Args:
        kind: ``"none"`` (default strategy, one device), ``"mirrored"`` (all GPUs, or the CPU
            split into ``cpu_devices`` logical devices), ``"multi-worker"`` (this module's
            ``MultiWorkerMirroredStrategy``; cluster and task from ``TF_CONFIG``).
        cpu_devices: number of logical CPU devices for ``mirrored`` without GPUs.
    """
    if kind not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {kind!r}")
    if cpu_devices:
        configure_cpu_devices(cpu_devices)
    if kind == "none":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        if tf.config.list_physical_devices("GPU") and not cpu_devices:
            return tf.distribute.MirroredStrategy()
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if "TF_CONFIG" not in os.environ:
        raise ValueError("strategy 'multi-worker' needs the TF_CONFIG environment variable (cluster and task)")
    return MultiWorkerMirroredStrategy()


def is_chief(strategy):
    """Whether this process writes files (the chief, or worker 0 when there is no chief)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return not has_chief and resolver.task_type == "worker" and resolver.task_id == 0


class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """``tf.distribute.MultiWorkerMirroredStrategy`` whose ``reduce`` also takes a nested structure.

    ``MirroredStrategy.reduce`` reduces each element of a nested structure (tuple, dict) of
    per-replica values; ``MultiWorkerMirroredStrategy.reduce`` does not (TensorFlow's "TODO:
    support `value` being a nest") and fails with "Attempt to convert a value (PerReplica...)".
    Keras 3's ``fit`` reduces the first batch of the dataset that way to build the model
    symbolically (keras-team/keras#20585, #20329), so ``fit`` on a ``(images, {"boxes", "labels"})``
    dataset fails under the stock strategy. This subclass reduces each element with the stock
    ``reduce`` (one all-reduce per element, once per ``fit``), as ``MirroredStrategy`` does;
    single values go to the stock ``reduce`` unchanged. ``build_strategy("multi-worker")``
    returns it. (The other Keras failure under this strategy, the ``reduce(..., axis=0)`` of
    scalar logs, is avoided by the detector's own training function,
    ``models.train_function.reduce_logs``.)
    """

    def reduce(self, reduce_op, value, axis):
        if isinstance(value, tf.distribute.DistributedValues) or not tf.nest.is_nested(value):
            return super().reduce(reduce_op, value, axis)
        reduce_one = super().reduce
        return tf.nest.map_structure(lambda v: reduce_one(reduce_op, v, axis), value)


def check_strategy(strategy):
    """``strategy``, or ``ValueError`` for a stock ``tf.distribute.MultiWorkerMirroredStrategy``.

    Keras ``fit`` cannot start under the stock one (see ``MultiWorkerMirroredStrategy``); build
    it with ``build_strategy("multi-worker")`` or ``strategy.MultiWorkerMirroredStrategy()``.
    """
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and not isinstance(
        strategy, MultiWorkerMirroredStrategy
    ):
        raise ValueError(
            "a stock tf.distribute.MultiWorkerMirroredStrategy cannot run Keras fit on detection batches "
            "(keras-team/keras#20585): use gflv2_keras.training.strategy.MultiWorkerMirroredStrategy() "
            'or build_strategy("multi-worker")'
        )
    return strategy


def shard_for(strategy, dataset):
    """``dataset`` set up for ``strategy``: multi-worker runs shard the stream by data.

    Every worker builds the same global-batch stream (it is a file-less generator of indices, so
    the default file sharding cannot apply) and takes its share of each batch.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return dataset
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def broadcast_from_chief(strategy, variables, chief):
    """Under ``MultiWorkerMirroredStrategy``, sets ``variables`` on every worker to the chief's values.

    The chief contributes its values and the other workers zeros to one SUM all-reduce (integer
    variables, e.g. the optimizer's ``iterations``, travel as float64: exact below 2**53). Every
    worker must call it, with the same variables in the same order. Returns whether it ran (False
    for other strategies, where there is nothing to share).
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or strategy.num_replicas_in_sync <= 1:
        return False
    variables = list(variables)
    wire = [tf.float64 if v.dtype.is_integer else v.dtype for v in (_tf_variable(v) for v in variables)]
    local = [tf.cast(tf.convert_to_tensor(_tf_variable(v)), dtype) for v, dtype in zip(variables, wire)]
    if not chief:
        local = [tf.zeros_like(t) for t in local]

    def share(*tensors):
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, list(tensors))

    # Eagerly, once per run: the graph version packs the mixed dtypes into one concat and fails.
    logger, level = tf.get_logger(), tf.get_logger().level
    logger.setLevel("ERROR")  # "Using CollectiveAllReduceStrategy eagerly has significant overhead"
    try:
        shared = strategy.experimental_local_results(strategy.run(share, args=tuple(local)))[0]
    finally:
        logger.setLevel(level)
    for variable, value in zip(variables, shared):
        variable.assign(tf.cast(value, _tf_variable(variable).dtype))
    return True


def _tf_variable(variable):
    """The ``tf.Variable`` behind a Keras variable (or the variable itself)."""
    return getattr(variable, "value", variable)


LOST_TASK = re.compile(r"/job:(\w+)/replica:\d+/task:(\d+)")
# "{{function_node __wrapped__CollectiveReduceV2_..._device_/job:worker/replica:0/task:0/device:CPU:0}}":
# the op that failed and *this* task's device, not a lost one.
FUNCTION_NODE = re.compile(r"\{\{function_node [^}]*\}\}\s*")


def lost_worker_message(error, work_dir=None):
    """One line for a multi-worker run that lost a peer (``tf.errors.UnavailableError`` /
    ``DeadlineExceededError`` / ``AbortedError`` / ``CancelledError``), or None for other errors.

    Names the lost task(s) when TensorFlow's message does ("stopped sending heartbeats:
    /job:worker/replica:0/task:1" -> "worker 1"; the device of the failed op, ``{{function_node
    ..._device_/job:worker/replica:0/task:0...}}``, is this task's and is ignored) and says how to
    continue.
    """
    if not isinstance(
        error,
        (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError, tf.errors.CancelledError),
    ):
        return None
    text = FUNCTION_NODE.sub("", str(getattr(error, "message", error)))
    lost = sorted({f"{job} {task}" for job, task in LOST_TASK.findall(text.split("unhealthy", 1)[-1])})
    who = ", ".join(lost) if lost else "a peer"
    detail = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    where = f" (in {work_dir}/checkpoints)" if work_dir else ""
    return (
        f"multi-worker training lost {who} ({type(error).__name__}: {detail[:160]}); restart every worker "
        f"with --resume to continue from the chief's newest checkpoint{where}"
    )
