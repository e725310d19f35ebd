"""Whether a work dir holds a training run, and the refusal to start a new run over one.

Nothing here imports TensorFlow: ``gflv2 train`` and ``gflv2 demo`` refuse a used folder before
it loads (their ``precheck``), and the trainer checks again once it holds the work dir's lock
(``trainer.Trainer.run``, ``utils.locks``): a run that finished there in between is refused too.
"""

from pathlib import Path

WORK_DIRS = Path("work_dirs")  # where a run without a work dir writes, relative to the current folder
# What a training run writes in its work dir; any of them means the folder holds a run.
RUN_OUTPUTS = ("checkpoints", "preset", "history.json", "log.csv", "recipe.json")


def default_work_dir(recipe_name):
    """``work_dirs/RECIPE_NAME`` (relative): the work dir of a run given none."""
    return WORK_DIRS / recipe_name


def run_outputs_in(work_dir):
    """Names of ``RUN_OUTPUTS`` present in ``work_dir`` (empty: no run has written there)."""
    return [name for name in RUN_OUTPUTS if (Path(work_dir) / name).exists()]


def refuse_used_work_dir(work_dir):
    """``ValueError`` when ``work_dir`` holds another run's outputs (a new run must not replace them)."""
    found = run_outputs_in(work_dir)
    if found:
        raise ValueError(
            f"{work_dir} already holds a training run ({', '.join(found)}): pass --resume (resume=True) to "
            "continue it, or choose a new --work-dir; nothing was changed"
        )
