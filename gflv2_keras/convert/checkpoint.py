"""Safe reading of official GFocalV2 (MMDetection 2.x) PyTorch checkpoints.

An mmcv checkpoint is a pickled dict ``{"meta": {...}, "state_dict": {...}, "optimizer": {...}}``
(``optimizer`` is often absent); a bare state dict (``{key: tensor}``) is accepted as well.
Nothing in the file is executed: it is read with ``torch.load(weights_only=True)``, whose
unpickler only rebuilds tensors and plain containers. The only globals allow-listed on top of
that are the ones an mmcv ``meta`` may legitimately carry: NumPy scalars (e.g. a best score
saved by an evaluation hook) and their dtypes. Anything else (an arbitrary class, a function,
a NumPy array) is refused with an error naming the file and the global.
"""

import re
from pathlib import Path

import numpy as np

INSTALL_HINT = "pip install 'gflv2-keras[convert]'"


class CheckpointReadError(ValueError):
    """The file is not a checkpoint this converter can read safely."""


def import_torch():
    """Import PyTorch, or raise an ``ImportError`` saying how to install it."""
    try:
        import torch
    except ImportError as error:
        raise ImportError(f"Reading PyTorch checkpoints needs PyTorch (CPU is enough): {INSTALL_HINT}") from error
    if not hasattr(torch.serialization, "safe_globals"):  # added in PyTorch 2.5
        raise ImportError(
            f"PyTorch {torch.__version__} is too old to read checkpoints safely; PyTorch >= 2.5 is needed: "
            f"pip install 'torch>=2.5'"
        )
    return torch


def _allowed_globals():
    """Globals a plain mmcv ``meta`` may need beyond torch's weights-only defaults.

    ``collections.OrderedDict`` (the state dict's type) is allowed by torch itself. NumPy
    scalars pickle as ``numpy.core.multiarray.scalar(dtype, bytes)``; files written with
    NumPy 1.x name the module ``numpy.core``, NumPy 2 names it ``numpy._core``.
    """
    scalar = np.float64(0.0).__reduce__()[0]  # that rebuilding function, taken from NumPy's own pickling
    allowed = [scalar, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype]
    # NumPy >= 1.25 rebuilds a dtype as an instance of its class (numpy.dtypes.Float64DType, ...).
    allowed += [type(np.dtype(code)) for code in "?bhilqBHILQefdgFDG"]
    return allowed


def _load(torch, path):
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, KeyError, ... on bad files
        match = re.search(r"GLOBAL\s+([\w.]+)|got <class '([\w.]+)'>", str(error))
        if match is None:
            detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CheckpointReadError(f"{path}: not a readable PyTorch checkpoint ({detail})") from error
        culprit = match.group(1) or match.group(2)
        raise CheckpointReadError(
            f"{path}: refusing to load: the pickle needs the global {culprit!r}, which is not "
            "allow-listed. Only tensors, plain Python containers/values and NumPy scalars are accepted, "
            "because anything else could execute code from the file. If you trust the file, re-save "
            "just its tensors with PyTorch: torch.save({'state_dict': ckpt['state_dict']}, 'clean.pth')."
        ) from error


def _to_numpy(torch, key, value, path):
    if not isinstance(value, torch.Tensor):
        raise CheckpointReadError(f"{path}: state_dict entry {key!r} is a {type(value).__name__}, not a tensor")
    value = value.detach().cpu()
    if value.is_floating_point() and value.dtype not in (torch.float16, torch.float32, torch.float64):
        value = value.float()  # bfloat16 and friends have no NumPy dtype
    return value.numpy()


def read_official_checkpoint(path):
    """Read an official checkpoint without executing pickled code.

    Args:
        path: a ``.pth`` file: an mmcv checkpoint dict (``state_dict``, ``meta``, optional
            ``optimizer``, which is ignored) or a bare state dict.

    Returns:
        ``(state_dict, meta)``: ``state_dict`` maps official keys (``backbone.conv1.weight``)
        to NumPy arrays in PyTorch layout (conv weights OIHW, ``scales.i.scale`` 0-dim);
        ``meta`` is the checkpoint's ``meta`` dict (``{}`` for a bare state dict). A
        ``module.`` prefix on every key (a checkpoint saved from ``DataParallel``) is removed.

    Raises:
        FileNotFoundError: no such file.
        ImportError: PyTorch is not installed (message says how to install it).
        CheckpointReadError: the file needs non-allow-listed globals, is not a checkpoint,
            or holds non-tensor state.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    torch = import_torch()
    obj = _load(torch, path)
    if not isinstance(obj, dict):
        raise CheckpointReadError(f"{path}: expected a dict (a checkpoint or a state dict), got {type(obj).__name__}")
    if "state_dict" in obj:
        state, meta = obj["state_dict"], obj.get("meta") or {}
        if not isinstance(state, dict):
            raise CheckpointReadError(f"{path}: 'state_dict' is a {type(state).__name__}, not a dict")
        if not isinstance(meta, dict):
            meta = {"meta": meta}
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state, meta = obj, {}
    else:
        raise CheckpointReadError(
            f"{path}: not a checkpoint: expected a dict with a 'state_dict' entry or a dict of tensors; "
            f"top-level keys: {sorted(map(str, obj))[:20]}"
        )
    if not state:
        raise CheckpointReadError(f"{path}: the state dict is empty")
    keys = list(state)
    if all(str(k).startswith("module.") for k in keys):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return {str(k): _to_numpy(torch, k, v, path) for k, v in state.items()}, dict(meta)


def plain_meta(meta):
    """A JSON-serialisable copy of a checkpoint ``meta`` (NumPy scalars → Python, tuples → lists)."""
    if isinstance(meta, dict):
        return {str(k): plain_meta(v) for k, v in meta.items()}
    if isinstance(meta, (list, tuple)):
        return [plain_meta(v) for v in meta]
    if isinstance(meta, np.generic):
        return meta.item()
    if meta is None or isinstance(meta, (bool, int, float, str)):
        return meta
    return repr(meta)
