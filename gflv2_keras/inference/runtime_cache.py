"""The cache of ``compile_for_inference``: exports per model fingerprint, written once, under a lock.

Layout (``cache_root()``: ``cache_dir``, else ``$GFLV2_CACHE_DIR``, else
``$XDG_CACHE_HOME/gflv2_keras``, else ``~/.cache/gflv2_keras``)::

    ROOT/models/FINGERPRINT/onnx-fp32-per_image/      an ``export.formats`` folder (export.json, model)
                           openvino-fp32-per_image/   (also what openvino bfloat16 runs)
                           litert-fp32-fixed/
                           auto-float32-MACHINE.json  ``runtime_choice``'s measured choice
    ROOT/models/FINGERPRINT_INT8/onnx-int8-per_image/ int8: the fingerprint covers the calibration set

``model_fingerprint`` hashes what an export depends on: the detector's config (layer names,
which Keras numbers per process, the dtype policy, as every export is traced in float32 from the
float32 variables, and Keras' trainable / build / compile bookkeeping left out), the bytes of
every weight, this package's version and the versions of the converters (TensorFlow, tf2onnx,
ONNX, OpenVINO, NNCF, ONNX Runtime, LiteRT); for int8 also ``calibration_fingerprint`` (the
calibration images' bytes, in order). Any change gives a new folder; nothing is ever updated in
place.

``cached_export`` writes an export folder at most once: under ``utils.locks.lock_beside`` (a
second process waits for the first instead of exporting again) and published by a rename
(``export_portable`` stages it: ``utils.files.publish_directory``), so a reader sees no folder
or a whole one. A process killed while exporting leaves a staging folder that the next one
sweeps (``utils.locks``).
"""

import hashlib
import json
import os
import time
from pathlib import Path

from gflv2_keras.inference.runtime_options import CACHE_ENV

CONVERTER_PACKAGES = ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "openvino", "nncf", "ai-edge-litert")
# Left out of the fingerprint (module docstring): layer names, the dtype policy, and Keras' training
# and build bookkeeping, which no export depends on.
IGNORED_CONFIG_KEYS = ("name", "dtype", "trainable", "build_config", "compile_config")
WAIT_SECONDS = 3600.0  # the longest a process waits for another one's export (an int8 R-50 takes minutes)


def cache_root(cache_dir=None):
    """The cache folder: ``cache_dir``, else ``$GFLV2_CACHE_DIR``, else ``$XDG_CACHE_HOME/gflv2_keras``,
    else ``~/.cache/gflv2_keras``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gflv2_keras"


def package_versions(names=CONVERTER_PACKAGES):
    """``{distribution: version or None}`` (not installed), read from the installed metadata (nothing imported)."""
    from importlib import metadata

    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def model_fingerprint(detector, calibration=None):
    """Hex SHA-256 of what ``detector``'s exports depend on (module docstring); ``calibration`` for int8."""
    import keras

    import gflv2_keras

    digest = hashlib.sha256()
    config = _without_keys(detector.get_config(), IGNORED_CONFIG_KEYS)
    digest.update(json.dumps(config, sort_keys=True, default=repr).encode())
    digest.update(json.dumps({"gflv2_keras": gflv2_keras.__version__, **package_versions()}, sort_keys=True).encode())
    for variable in detector.weights:
        # The variable's layer and name (layer names follow the official module paths, unique in
        # the model; the outer path holds per-process container numbers), then its bytes.
        values = keras.ops.convert_to_numpy(variable)
        key = "/".join(variable.path.split("/")[-2:])
        digest.update(f"{key}:{values.dtype}:{values.shape}".encode())
        digest.update(values.tobytes())
    if calibration is not None:
        digest.update(calibration_fingerprint(calibration).encode())
    return digest.hexdigest()


def calibration_fingerprint(calibration):
    """Hex SHA-256 of a ``CalibrationImages``: the bytes of its image files, in order."""
    digest = hashlib.sha256(f"{len(calibration)} images".encode())
    for path in calibration.paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def _without_keys(value, keys):
    if isinstance(value, dict):
        return {k: _without_keys(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, (list, tuple)):
        return [_without_keys(v, keys) for v in value]
    return value


def cached_export(target, write, log=print, wait_seconds=WAIT_SECONDS):
    """The export folder ``target``, written by ``write(target)`` unless it is there already.

    ``write`` must publish ``target`` whole (``export.formats.export_portable`` does). Another
    process writing the same ``target`` is waited for (one line says so), then its folder is used.

    Returns:
        ``(target, written)``: the folder and whether this call wrote it.

    Raises:
        utils.locks.FolderInUseError: still locked by a live process after ``wait_seconds``.
    """
    from gflv2_keras.utils.locks import FolderInUseError, lock_beside

    target = Path(target)
    deadline, waiting = time.monotonic() + wait_seconds, False
    while True:
        if target.is_dir():  # published by a rename: whole
            return target, False
        lock = lock_beside(target, "--cache-dir")
        try:
            lock.acquire()
        except FolderInUseError:
            if time.monotonic() > deadline:
                raise
            if not waiting:
                log(f"[runtime] waiting for another process writing {target} ...")
                waiting = True
            time.sleep(1.0)
            continue
        try:
            if target.is_dir():
                return target, False
            write(target)
            return target, True
        finally:
            lock.release()
