"""The detector's training function on the TensorFlow backend: one compiled step per input shape.

TensorFlow only (``tf.function``, ``tf.distribute``); on JAX and PyTorch the detector keeps
Keras' own training function (batch shapes are static there). Public Keras and TensorFlow APIs
only.

Why a function of our own. Keras' TensorFlow trainer traces one ``tf.function`` around the
``tf.data`` iterator and so sees the dataset's ``None`` height and width; ATSS (the anchor grid)
and XLA need static ones. Here the batch is taken from the iterator eagerly and the step
(forward, ``compute_loss``, backward, optimizer, under ``strategy.run``) is a ``tf.function``
with ``reduce_retracing=False``: it is traced once per batch shape. The grouped training stream
has a fixed set of canvases (``data.canvas.training_canvases``), hence a bounded number of
traces; ``model.train_step_traces`` counts them.

The step's logs (``loss``, ``qfl``, ``dfl``, ``giou``, per replica) are reduced here
(``reduce_logs``): floating values are averaged over the replicas, across the workers of a
``MultiWorkerMirroredStrategy`` with ``strategy.reduce("MEAN", value, axis=None)`` (Keras' own
reduction calls ``reduce(..., axis=0)``, which fails on scalars there: keras-team/keras#20329);
anything else is the first local replica's value.

Gradient accumulation (``model.accumulate_steps = N > 1``, set by
``training.trainer.compile_for_training``): every ``fit`` step is one micro-batch; each replica
adds its gradient to its own sums (``tf.Variable`` with ``ON_READ`` synchronisation, one per
trainable variable, no communication), and every ``N``-th step applies the mean
``(sum + gradient) / N`` with ``optimizer.apply_gradients`` (one all-reduce, coupled L2 and
momentum once, ``optimizer.iterations`` and the lr schedule count updates) and clears the sums.
Which of the two compiled steps runs is decided in Python between steps. Keras' own
``gradient_accumulation_steps`` optimizer option is not used on TensorFlow: it puts the
optimizer's cross-replica gradient sum inside a ``cond``, which ``MirroredStrategy`` and
``MultiWorkerMirroredStrategy`` refuse ("``merge_call`` called while defining a new graph"),
so it only works without a strategy; on JAX and PyTorch it is the mechanism
(``compile_for_training``).
"""

import keras
import tensorflow as tf

from gflv2_keras.losses.gfl_loss import replicas_in_sync


def make_train_function(model, force=False):
    """The function Keras' TensorFlow ``fit`` calls with an iterator; sets ``model.train_function``.

    Args:
        model: a compiled ``keras.Model`` (the detector) on the TensorFlow backend. Its
            ``accumulate_steps`` attribute (default 1) is the number of micro-batches per
            optimizer update.
        force: rebuild even if ``model.train_function`` exists (partial gradient sums are lost).

    Returns:
        ``function(iterator) -> logs``: runs ``model.steps_per_execution`` steps, each on
        ``next(iterator)``, and returns the last step's logs reduced over the replicas.
        ``model.train_step_traces`` counts the traces of the compiled step(s) (one per batch
        shape, two with accumulation).
    """
    if keras.config.backend() != "tensorflow":
        raise RuntimeError(
            f"train_function.make_train_function is for the TensorFlow backend, this is {keras.config.backend()!r}"
        )
    if model.train_function is not None and not force:
        return model.train_function
    steps = accumulation_steps(model)
    model.train_step_traces = 0
    if steps == 1:
        accumulation, train_step = None, compile_step(model, model.train_step)
    else:
        accumulation = GradientAccumulation(model, steps)
        add_step = compile_step(model, accumulation.add_step)
        update_step = compile_step(model, accumulation.update_step)

    def function(iterator):
        for _ in range(model.steps_per_execution):
            data = next(iterator)
            if accumulation is None:
                outputs = train_step(data)
            else:
                outputs = (update_step if accumulation.is_update_step() else add_step)(data)
                accumulation.advance()
        return outputs

    function.accumulation = accumulation  # the sums and position (None without accumulation), for inspection
    model.train_function = function
    return function


def accumulation_steps(model):
    """Micro-batches per optimizer update: ``model.accumulate_steps`` (an int >= 1; default 1)."""
    steps = getattr(model, "accumulate_steps", 1) or 1
    if int(steps) != steps or steps < 1:
        raise ValueError(f"accumulate_steps must be an integer >= 1, got {steps!r}")
    return int(steps)


def compile_step(model, step):
    """``step(data)`` run on every replica and reduced, as a ``tf.function`` traced once per input shape."""

    def one_step_on_data(data):
        model.train_step_traces += 1  # Python side effect: runs once per trace
        strategy = model.distribute_strategy
        outputs = strategy.run(step, args=(data,))
        return reduce_logs(outputs, strategy)

    if model.run_eagerly:
        return one_step_on_data
    return tf.function(one_step_on_data, reduce_retracing=False, jit_compile=bool(model.jit_compile))


def reduce_logs(logs, strategy):
    """A step's per-replica logs as single values (what Keras' ``reduce_per_replica(..., "auto")`` does).

    Floating values are averaged over the replicas, element-wise: over this process' replicas
    (``experimental_local_results``, as Keras), and under ``MultiWorkerMirroredStrategy`` over
    the replicas of all workers with ``strategy.reduce("MEAN", value, axis=None)`` (Keras' own
    ``axis=0`` fails on scalars there, keras-team/keras#20329; with one replica per worker the
    values are not even per-replica objects, yet differ between workers). Other values, and
    every value under ``TPUStrategy`` (where Keras takes the first replica's), are the first
    local replica's.
    """
    first_only = isinstance(strategy, tf.distribute.TPUStrategy)
    across_workers = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)

    def reduce(value):
        local = strategy.experimental_local_results(value)
        dtype = getattr(local[0], "dtype", None)
        if first_only or dtype is None or not tf.as_dtype(dtype).is_floating:
            return local[0]
        if across_workers:
            # Also when ``value`` is a plain tensor: with one replica per worker ``strategy.run``
            # returns this worker's value unwrapped, and it still has to be averaged over workers.
            return strategy.reduce("MEAN", value, axis=None)
        if not isinstance(value, tf.distribute.DistributedValues):
            return value
        return tf.reduce_mean(tf.stack(local), axis=0)

    return keras.tree.map_structure(reduce, logs)


def loss_tracker(model):
    """The model's ``loss`` metric (Keras' ``Mean`` named ``"loss"``, first of ``model.metrics``)."""
    for metric in model.metrics:
        if metric.name == "loss":
            return metric
    raise ValueError("the model has no 'loss' metric: compile it before training")


def forward_backward(model, data):
    """One micro-batch on this replica: ``(x, y, y_pred, sample_weight, gradients)``.

    As Keras' ``train_step`` up to the gradients: the loss of ``model.compute_loss`` (already
    divided by the replicas, ``losses.gfl_loss.scale_for_replicas``) is logged unscaled in the
    ``loss`` metric (weighted by the batch size) and multiplied by the optimizer's loss scale
    (``LossScaleOptimizer``) before differentiation.
    """
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    with tf.GradientTape() as tape:
        y_pred = model(x, training=True)
        loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
        batch = tf.shape(next(t for t in keras.tree.flatten(x) if t is not None))[0]
        loss_tracker(model).update_state(loss * replicas_in_sync(), sample_weight=batch)
        scaled = model.optimizer.scale_loss(loss)
    gradients = tape.gradient(scaled, model.trainable_variables)
    return x, y, y_pred, sample_weight, gradients


class GradientAccumulation:
    """Per-replica gradient sums of the micro-batches of one update (TensorFlow).

    ``add_step`` and ``update_step`` are replica functions (``strategy.run``); the Python
    ``position`` (micro-batches added since the last update) says which runs next
    (``is_update_step``) and is advanced after each step (``advance``). The sums are
    ``tf.Variable``s created under the model's strategy with ``ON_READ`` synchronisation, so each
    replica adds its own gradients without communication; they are not model or optimizer
    variables (checkpoints are taken between updates, where they are zero).

    The update is ``optimizer.apply_gradients(mean of the N micro-batch gradients)``: each
    micro-batch's loss has its own normalisers (positives, weights), so the update is that of
    ``mean_n loss(micro-batch n)``. With ``LossScaleOptimizer`` the micro-batches share the
    update's loss scale (it only changes when an update is applied or skipped), and an update
    whose mean gradient is not finite is skipped whole.
    """

    def __init__(self, model, steps):
        self.model = model
        self.steps = int(steps)
        self.position = 0
        with model.distribute_strategy.scope():
            self.sums = [
                tf.Variable(
                    tf.zeros(v.shape, v.dtype),
                    trainable=False,
                    synchronization=tf.VariableSynchronization.ON_READ,
                    aggregation=tf.VariableAggregation.SUM,
                    name="gradient_sum",
                )
                for v in model.trainable_variables
            ]

    def is_update_step(self):
        """Whether the next micro-batch completes an update."""
        return self.position == self.steps - 1

    def advance(self):
        self.position = (self.position + 1) % self.steps

    def add_step(self, data):
        """Adds this replica's micro-batch gradient to its sums; returns the metrics."""
        x, y, y_pred, sample_weight, gradients = forward_backward(self.model, data)
        for total, gradient in zip(self.sums, gradients):
            if gradient is not None:
                total.assign_add(tf.cast(tf.convert_to_tensor(gradient), total.dtype))
        return self.model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def update_step(self, data):
        """Applies the mean gradient of the update's micro-batches (this one included) and clears the sums."""
        x, y, y_pred, sample_weight, gradients = forward_backward(self.model, data)
        mean = [
            None if gradient is None else (total + tf.cast(tf.convert_to_tensor(gradient), total.dtype)) / self.steps
            for total, gradient in zip(self.sums, gradients)
        ]
        self.model.optimizer.apply_gradients(zip(mean, self.model.trainable_variables))
        for total in self.sums:
            total.assign(tf.zeros_like(total))
        return self.model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


__all__ = ["GradientAccumulation", "make_train_function", "reduce_logs"]
