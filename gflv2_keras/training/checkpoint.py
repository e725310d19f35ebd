"""Crash-safe training checkpoints: model + optimiser variables + run state, written atomically.

A checkpoint is one file ``ckpt-<iteration:09d>.npz`` holding

* ``model/<i>``: every variable of ``model.weights`` (trainable and not: BatchNorm statistics
  too), in order;
* ``optimizer/<i>``: every variable of ``optimizer.variables`` (``iterations`` and the momentum
  buffers), in order;
* ``state``: a JSON string with the run state (``iteration``, ``epoch``, ``steps_per_epoch``,
  ``global_batch_size``, ``shuffle_seed``, the per-epoch ``history`` so far, ...) and the
  variable paths and shapes, checked on restore.

The data order is not stored as a position in a file list: the input pipeline is a pure
function of ``(shuffle_seed, epoch, position)`` (``data.pipeline.build_dataset``), so
``iteration`` and the seed determine where the stream resumes (``skip_batches=iteration``).

Writes never damage a good checkpoint: the file is written to a temporary name in the same
folder, flushed and ``fsync``-ed, then ``os.replace``-d onto its final name (atomic on POSIX),
and the folder is ``fsync``-ed. A run killed at any moment leaves either the complete new file
or none (plus, at worst, a stale ``.tmp`` file, which is ignored and cleaned up). Only the last
``keep`` checkpoints of the run (same ``run_id`` in their state) are kept; older ones of that
run are deleted after the new one is in place, and files of any other run are never touched.
``latest_checkpoint`` also verifies that a checkpoint reads back (zip CRCs) and falls back to
the previous one if the newest is damaged.
"""

import json
import logging
import os
import re
import zipfile

import keras
import numpy as np

from gflv2_keras.utils.files import TMP_MARK, atomic_write

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt-(\d{9})\.npz$")


def checkpoint_path(directory, iteration):
    """Path of the checkpoint of ``iteration`` in ``directory``."""
    return os.path.join(directory, f"ckpt-{int(iteration):09d}.npz")


def list_checkpoints(directory):
    """Complete checkpoint files of ``directory`` (temporary files excluded), oldest first."""
    if not os.path.isdir(directory):
        return []
    found = sorted((int(m.group(1)), name) for name in os.listdir(directory) if (m := _NAME.match(name)))
    return [os.path.join(directory, name) for _, name in found]


def save_checkpoint(directory, model, optimizer, state, keep=3):
    """Writes ``ckpt-<state['iteration']>.npz`` atomically and keeps the newest ``keep`` files.

    Args:
        directory: checkpoint folder (created).
        model: the Keras model (built).
        optimizer: its optimiser (built).
        state: JSON-serialisable dict; must contain ``iteration`` (int).
        keep: number of this run's checkpoints to keep (>= 1); checkpoints whose state has
            another ``run_id`` (another run's files) are never deleted.

    Returns:
        The path written.
    """
    if keep < 1:
        raise ValueError(f"save_checkpoint: keep must be >= 1, got {keep}")
    os.makedirs(directory, exist_ok=True)
    model_vars, optimizer_vars = list(model.weights), list(optimizer.variables)
    state = {
        **state,
        "format_version": FORMAT_VERSION,
        "model_variables": [[v.path, list(v.shape)] for v in model_vars],
        "optimizer_variables": [[v.path, list(v.shape)] for v in optimizer_vars],
    }
    arrays = {f"model/{i:05d}": keras.ops.convert_to_numpy(v) for i, v in enumerate(model_vars)}
    arrays.update({f"optimizer/{i:05d}": keras.ops.convert_to_numpy(v) for i, v in enumerate(optimizer_vars)})
    check_finite(arrays, model_vars + optimizer_vars, state["iteration"])
    arrays["state"] = np.array(json.dumps(state))
    path = checkpoint_path(directory, state["iteration"])
    atomic_write(path, lambda f: np.savez(f, **arrays))
    own = [p for p in list_checkpoints(directory) if _run_id(p) == state.get("run_id")]
    for old in own[:-keep]:
        _remove(old)
    return path


_UNREADABLE = object()


class NonFiniteError(ValueError):
    """A training step produced a NaN or Inf (loss or weights); nothing of it was saved."""


def check_finite(arrays, variables, iteration):
    """Raises ``NonFiniteError`` naming the first variable holding a NaN or Inf: never save one."""
    for array, variable in zip(arrays.values(), variables):
        if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
            raise NonFiniteError(
                f"non-finite value in {variable.path} at step {iteration}: no checkpoint written; "
                "--resume (resume=True) continues from the last good checkpoint"
            )


def _run_id(path):
    """The ``run_id`` stored in a checkpoint's state (``_UNREADABLE`` for a damaged file)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return json.loads(str(data["state"])).get("run_id")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError):
        return _UNREADABLE


def read_checkpoint(path):
    """Reads and verifies a checkpoint file.

    Returns:
        ``(state, model_arrays, optimizer_arrays)``: the state dict and two lists of NumPy arrays.

    Raises:
        ValueError: the file is not a complete checkpoint (truncated, corrupt, wrong format),
            with the file name and the reason.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            names = set(data.files)
            if "state" not in names:
                raise ValueError("no 'state' entry")
            state = json.loads(str(data["state"]))
            model_arrays = [data[f"model/{i:05d}"] for i in range(len(state["model_variables"]))]
            optimizer_arrays = [data[f"optimizer/{i:05d}"] for i in range(len(state["optimizer_variables"]))]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a readable checkpoint ({type(error).__name__}: {error})") from error
    if state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {state.get('format_version')}, expected {FORMAT_VERSION}")
    return state, model_arrays, optimizer_arrays


def latest_checkpoint(directory):
    """The newest checkpoint of ``directory`` that reads back completely, or ``None``.

    Damaged files (which the atomic write never produces, but a disk can) are reported with a
    warning and skipped in favour of the previous checkpoint.
    """
    for path in reversed(list_checkpoints(directory)):
        try:
            read_checkpoint(path)
        except ValueError as error:
            logger.warning("skipping damaged checkpoint: %s", error)
            continue
        return path
    return None


def restore_checkpoint(path, model, optimizer):
    """Loads a checkpoint into a built ``model`` and ``optimizer`` and returns its state.

    The optimiser is built on ``model.trainable_variables`` if it is not yet (call this inside
    ``strategy.scope()`` when training distributed). Variables are matched by position and
    checked by shape; a mismatch raises ``ValueError`` naming the variable (e.g. a checkpoint of
    another preset or class count).
    """
    state, model_arrays, optimizer_arrays = read_checkpoint(path)
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    _assign_all(path, "model", model.weights, model_arrays, state["model_variables"])
    _assign_all(path, "optimizer", optimizer.variables, optimizer_arrays, state["optimizer_variables"])
    return state


def clean_temporary_files(directory):
    """Removes ``.tmp-`` leftovers of writes interrupted by a crash."""
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            if TMP_MARK in name and name.startswith("ckpt-"):
                _remove(os.path.join(directory, name))


def _assign_all(path, kind, variables, arrays, saved):
    variables = list(variables)
    if len(variables) != len(arrays):
        raise ValueError(
            f"{path}: the checkpoint has {len(arrays)} {kind} variables, the {kind} being restored has "
            f"{len(variables)} (was it written for another preset, class count or optimiser?)"
        )
    for variable, array, (saved_path, _) in zip(variables, arrays, saved):
        if tuple(variable.shape) != array.shape:
            raise ValueError(
                f"{path}: {kind} variable {variable.path} has shape {tuple(variable.shape)}, "
                f"the checkpoint's {saved_path} has shape {array.shape}"
            )
        variable.assign(array)


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


class CheckpointCallback(keras.callbacks.Callback):
    """Saves a checkpoint every ``every_n_steps`` optimiser updates and at every epoch end.

    Iterations are ``optimizer.iterations`` (updates; with gradient accumulation ``fit`` takes
    ``N`` micro-batch steps per update and a checkpoint is taken right after the update).

    Place it after callbacks that add to the epoch logs (``CocoEvaluationCallback``) so their
    values enter the stored ``history``.

    Args:
        directory: checkpoint folder.
        run_state: dict of fixed run facts stored in every checkpoint (``steps_per_epoch``,
            ``global_batch_size``, ``shuffle_seed``, ``recipe``, ...); ``steps_per_epoch`` is
            required (it turns ``iteration`` into ``epoch`` and ``step_in_epoch``).
        every_n_steps: also save when ``iteration % every_n_steps == 0``; ``None``/0: epoch
            ends only.
        keep: checkpoints kept on disk.
        history: per-epoch log dicts of the epochs before this run (from a resumed checkpoint).
        write: whether this process writes (``False`` on non-chief workers of a multi-worker
            run, which must still take part in the same steps).
    """

    def __init__(self, directory, run_state, every_n_steps=None, keep=3, history=None, write=True):
        super().__init__()
        if "steps_per_epoch" not in run_state:
            raise ValueError("CheckpointCallback: run_state must contain 'steps_per_epoch'")
        self.directory = directory
        self.run_state = dict(run_state)
        self.every_n_steps = int(every_n_steps or 0)
        self.keep = keep
        self.history = list(history or [])
        self.write = write
        self.last_saved_iteration = None
        self.last_path = None
        self.seen_iteration = None  # optimizer iteration at the end of the previous batch

    def on_train_begin(self, logs=None):
        self.seen_iteration = self.iteration()
        if self.write:
            clean_temporary_files(self.directory)

    def on_train_batch_end(self, batch, logs=None):
        # Only after a step that updated the weights: with gradient accumulation (``fit`` steps
        # are micro-batches) the iteration stays put for N - 1 steps of N.
        iteration = self.iteration()
        updated, self.seen_iteration = iteration != self.seen_iteration, iteration
        if updated and self.every_n_steps and iteration % self.every_n_steps == 0:
            self.save()

    def on_epoch_end(self, epoch, logs=None):
        entry = {"epoch": epoch + 1, **{k: _plain_number(v) for k, v in (logs or {}).items()}}
        self.history = [h for h in self.history if h["epoch"] != epoch + 1] + [entry]
        self.save(force=True)

    def save(self, force=False):
        """Writes the checkpoint of the current iteration (once per iteration unless ``force``)."""
        iteration = self.iteration()
        if not self.write or (iteration == self.last_saved_iteration and not force):
            return None
        steps = self.run_state["steps_per_epoch"]
        state = {
            **self.run_state,
            "iteration": iteration,
            "epoch": iteration // steps,
            "step_in_epoch": iteration % steps,
            "history": self.history,
        }
        self.last_path = save_checkpoint(self.directory, self.model, self.model.optimizer, state, keep=self.keep)
        self.last_saved_iteration = iteration
        return self.last_path

    def iteration(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))


def _plain_number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)
