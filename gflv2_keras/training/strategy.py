"""The ``tf.distribute`` side of training: which strategy, which process writes, how data is sharded.

``build_strategy`` maps the ``--strategy`` names to strategies (as ``official/common/distribute_utils.py
get_distribution_strategy`` of TF Model Garden does); ``is_chief`` is the multi-worker rule for
which process writes checkpoints, logs and the preset (the chief, or worker 0 without one); every
process runs every step.
"""

import os

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
            split into ``cpu_devices`` logical devices), ``"multi-worker"``
            (``MultiWorkerMirroredStrategy``; cluster and task from ``TF_CONFIG``).
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
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy):
    """Whether this process writes files (the chief, or worker 0 when there is no chief)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return not has_chief and resolver.task_type == "worker" and resolver.task_id == 0


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
