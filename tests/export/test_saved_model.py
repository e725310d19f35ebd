"""SavedModel export: TF Serving layout and CLI, a fresh process that cannot import this package,
the signatures as ``saved_model_cli`` lists them, no ``GflDeform*`` custom op, ``TFSMLayer``,
atomic publishing, and the DCN presets."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from gflv2_keras import GFLV2Detector
from gflv2_keras.layers.walk import sublayers
from gflv2_keras.cli import main
from gflv2_keras.export import export_keras_archive, export_saved_model
from gflv2_keras.export import saved_model as export_module

from serving_support import (
    CUSTOM_OP_PREFIX,
    EXPECTED_INPUTS,
    EXPECTED_OUTPUTS,
    K,
    PRESET,
    WITHOUT_PROJECT_PRELUDE,
    as_numpy,
    assert_matches_detect,
    assert_no_custom_op,
    encode,
    graph_op_types,
    parse_signature_defs,
    pattern,
    stored_values,
    weight_count,
)


def test_cli_writes_tf_serving_layout_and_prints_docker_command(exported, capsys):
    assert exported.code == 0, exported.stdout
    assert sorted(os.listdir(exported.base)) == ["3"]  # no staging leftovers
    assert (exported.path / "saved_model.pb").is_file()
    assert (exported.path / "variables" / "variables.index").is_file()
    assert stored_values(exported.path) == weight_count(exported.detector)  # each weight once (keras#23553)
    assert (
        f'docker run -p 8501:8501 -p 8500:8500 -v "{exported.base}:/models/gflv2_nano" '
        "-e MODEL_NAME=gflv2_nano tensorflow/serving"
    ) in exported.stdout

    before = (exported.path / "saved_model.pb").stat().st_mtime_ns
    code = main(["export", "--preset", str(exported.root / "preset"), "--output", str(exported.base), "--version", "3"])
    assert code == 2
    assert "already exists" in capsys.readouterr().err
    assert (exported.path / "saved_model.pb").stat().st_mtime_ns == before


def test_cli_relative_output_mounts_from_pwd():
    from gflv2_keras.export.cli import _serving_instructions

    text = _serving_instructions(Path("models/my_detector"))
    assert '-v "$PWD/models/my_detector:/models/my_detector" -e MODEL_NAME=my_detector tensorflow/serving' in text


SUBPROCESS_SCRIPT = WITHOUT_PROJECT_PRELUDE + r"""
import json, time

try:
    import gflv2_keras
except ModuleNotFoundError:
    pass
else:
    raise SystemExit(f"gflv2_keras is importable in the serving process: {gflv2_keras.__file__}")
import numpy as np
import tensorflow as tf

model_dir, manifest_path, out_path = sys.argv[1:4]
manifest = json.loads(open(manifest_path).read())
start = time.perf_counter()
model = tf.saved_model.load(model_dir)
load_seconds = time.perf_counter() - start
results = {}

def keep(prefix, outputs):
    for key, value in outputs.items():
        value = value.numpy()
        results[f"{prefix}/{key}"] = value.astype(bytes).astype(str) if value.dtype == object else value

encoded = [open(path, "rb").read() for path in manifest["encoded"]]
keep("bytes", model.signatures["serving_default"](image_bytes=tf.constant(encoded)))
for i, path in enumerate(manifest["pixels"]):
    keep(f"tensor{i}", model.signatures["image_tensor"](image_tensor=tf.constant(np.load(path))))
np.savez(out_path, **results)
print(json.dumps({"load_seconds": load_seconds}))
"""


def test_fresh_process_without_the_package_matches_detect_and_predict(exported, references, tmp_path):
    decoded, reference = references
    manifest = {"encoded": [], "pixels": []}
    for i, data in enumerate(exported.encoded):
        manifest["encoded"].append(str(tmp_path / f"image{i}.bin"))
        Path(manifest["encoded"][-1]).write_bytes(data)
    tensor_inputs = [pixels[None] for pixels in decoded] + [np.stack([decoded[0], decoded[0][:, ::-1]])]
    for i, batch in enumerate(tensor_inputs):
        manifest["pixels"].append(str(tmp_path / f"pixels{i}.npy"))
        np.save(manifest["pixels"][-1], batch)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "serve.py").write_text(SUBPROCESS_SCRIPT)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    result = subprocess.run(
        [sys.executable, "-I", str(tmp_path / "serve.py"), str(exported.path), str(tmp_path / "manifest.json"),
         str(tmp_path / "out.npz")],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"\nreload in a fresh process: {json.loads(result.stdout.splitlines()[-1])['load_seconds']:.1f} s")
    out = np.load(tmp_path / "out.npz")

    def signature_output(prefix):
        return {key.split("/", 1)[1]: out[key] for key in out.files if key.startswith(prefix + "/")}

    served = signature_output("bytes")
    assert served["detection_boxes"].shape == (len(decoded), K, 4)
    for i, ref in enumerate(reference):
        assert_matches_detect(served, i, ref)
        assert_matches_detect(signature_output(f"tensor{i}"), 0, ref)

    batch = tensor_inputs[-1]
    predicted = exported.detector.predict(batch, verbose=0)
    served = signature_output(f"tensor{len(decoded)}")
    np.testing.assert_array_equal(served["num_detections"], predicted["num_detections"])
    np.testing.assert_array_equal(served["detection_classes"], predicted["labels"])
    np.testing.assert_allclose(served["detection_boxes"], predicted["boxes"], atol=1e-3, rtol=0)
    np.testing.assert_allclose(served["detection_scores"], predicted["confidence"], atol=1e-5, rtol=0)


def test_saved_model_cli_lists_the_documented_signatures(exported):
    binary = shutil.which("saved_model_cli")
    command = [binary] if binary else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    result = subprocess.run(
        command + ["show", "--dir", str(exported.path), "--all"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MetaGraphDef with tag-set: 'serve'" in result.stdout
    signatures = parse_signature_defs(result.stdout)
    assert set(signatures) == set(EXPECTED_INPUTS)
    for name, inputs in EXPECTED_INPUTS.items():
        assert signatures[name]["inputs"] == inputs, name
        assert signatures[name]["outputs"] == EXPECTED_OUTPUTS, name


def test_no_custom_op_in_the_graph(exported):
    types = graph_op_types(exported.path)
    # the helper really reads the function library (where the network lives)
    assert {"DecodeImage", "CombinedNonMaxSuppression", "Conv2D"} <= types
    assert_no_custom_op(exported.path)


def test_custom_op_helper_finds_a_custom_op(tmp_path):
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    function = proto.meta_graphs.add().graph_def.library.function.add()
    function.node_def.add(name="dcn", op="GflDeformConv2d")
    (tmp_path / "saved_model.pb").write_bytes(proto.SerializeToString())
    with pytest.raises(AssertionError, match="GflDeformConv2d"):
        assert_no_custom_op(tmp_path)


def test_the_library_reads_the_same_op_types(exported):
    """``saved_model_op_types`` (public APIs: the loaded signatures' graphs) sees what the file holds."""
    types = export_module.saved_model_op_types(exported.path)
    assert {"DecodeImage", "CombinedNonMaxSuppression", "Conv2D"} <= types <= graph_op_types(exported.path)


def test_the_archive_refuses_custom_ops_before_writing(tmp_path):
    from gflv2_keras.export import archive

    with pytest.raises(RuntimeError, match="GflDeformConv2d"):
        archive.refuse_custom_ops({"Conv2D", "GflDeformConv2d"})
    archive.refuse_custom_ops({"Conv2D"})
    with pytest.raises(ValueError, match="endpoint"):
        archive.write_saved_model({}, tmp_path / "empty")
    assert not (tmp_path / "empty").exists()


def test_tfsm_layer_on_the_tf_serving_export(exported, loaded):
    layer = keras.layers.TFSMLayer(str(exported.path), call_endpoint="serving_default")
    out = as_numpy(layer(tf.constant(exported.encoded)))
    direct = as_numpy(loaded.signatures["serving_default"](image_bytes=tf.constant(exported.encoded)))
    assert set(out) == set(EXPECTED_OUTPUTS)
    for key in out:
        np.testing.assert_array_equal(out[key], direct[key])


class ProbeDetector(keras.Model):
    """A stand-in detector whose whole network is one layer: export plumbing in about a second."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer
        self.test_config = {"max_detections": K}
        self.class_names = None

    def call(self, images):
        return self.layer(images)

    def detect_batch(self, images, bounding_box_format=None):
        assert bounding_box_format == "xyxy"  # the export's own layout, whatever the detector's
        features = self(tf.cast(images, tf.float32) / 255.0)
        batch = tf.shape(images)[0]
        score = tf.reduce_mean(features, axis=[1, 2, 3])
        return {
            "boxes": tf.zeros([batch, K, 4]),
            "confidence": tf.tile(score[:, None], [1, K]),
            "labels": tf.zeros([batch, K], tf.int32),
            "num_detections": tf.fill([batch], K),
        }


@pytest.fixture
def probe_graph(monkeypatch):
    """Exports build from ``models.detection_graph.detect_batch``; a probe answers it itself."""
    from gflv2_keras.models import detection_graph

    real = detection_graph.detect_batch

    def detect_batch(detector, images, bounding_box_format=None, **kwargs):
        if isinstance(detector, ProbeDetector):
            assert not kwargs
            return detector.detect_batch(images, bounding_box_format)
        return real(detector, images, bounding_box_format, **kwargs)

    monkeypatch.setattr(detection_graph, "detect_batch", detect_batch)


def probe_detector(layer):
    probe = ProbeDetector(layer)
    probe(tf.zeros([1, 8, 8, 3]))
    return probe


def test_keras_archive_for_tfsm_layer(tmp_path, probe_graph):
    keras.utils.set_random_seed(3)
    probe = probe_detector(keras.layers.Conv2D(4, 3, padding="same"))
    path = export_keras_archive(probe, tmp_path / "archive")
    assert set(tf.saved_model.load(str(path)).signatures) == {"serve", "serving_default", "image_tensor", "tf_example"}
    assert stored_values(path) == weight_count(probe)
    images = np.stack([pattern(20, 27, 8), pattern(20, 27, 9)])
    expected = probe.detect_batch(tf.constant(images), "xyxy")["confidence"]
    layer = keras.layers.TFSMLayer(str(path))  # default endpoint "serve": uint8 [N, H, W, 3]
    np.testing.assert_allclose(layer(tf.constant(images))["detection_scores"], expected, rtol=1e-6, atol=1e-7)
    layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")  # encoded images
    served = layer(tf.constant([encode(image, "PNG") for image in images]))
    np.testing.assert_allclose(served["detection_scores"], expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(FileExistsError):
        export_keras_archive(probe, path)


def fake_writer(fail=False, custom_op=False):
    """Stands in for ``archive.write_saved_model``: writes a file, then optionally fails."""

    def write(endpoints, directory):
        assert endpoints == "endpoints"
        (Path(directory) / "saved_model.pb").write_bytes(b"model")
        if custom_op:
            from gflv2_keras.export.archive import refuse_custom_ops

            refuse_custom_ops({"GflDeformConv2d"})
        if fail:
            raise OSError("disk full")

    return write


def use_writer(monkeypatch, writer):
    monkeypatch.setattr(export_module, "serving_endpoints", lambda detector, keras_endpoint=False: "endpoints")
    monkeypatch.setattr(export_module, "write_saved_model", writer)


def test_versions_are_published_atomically(monkeypatch, tmp_path):
    base = tmp_path / "model"
    use_writer(monkeypatch, fake_writer())
    assert export_saved_model(None, base, version=1, warmup=False) == base / "1"
    (base / "1" / "marker").write_text("old")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_saved_model(None, base, version=1)
    assert (base / "1" / "marker").exists()

    use_writer(monkeypatch, fake_writer(fail=True))
    with pytest.raises(OSError, match="disk full"):
        export_saved_model(None, base, version=1, overwrite=True)
    assert (base / "1" / "marker").exists()  # the old version survives a failed overwrite
    with pytest.raises(OSError, match="disk full"):
        export_saved_model(None, base, version=2)
    assert sorted(os.listdir(base)) == ["1"]  # no half model, no staging folder

    use_writer(monkeypatch, fake_writer(custom_op=True))
    with pytest.raises(RuntimeError, match="GflDeformConv2d"):
        export_saved_model(None, base, version=2)
    assert sorted(os.listdir(base)) == ["1"]

    use_writer(monkeypatch, fake_writer())
    export_saved_model(None, base, version=1, overwrite=True, warmup=False)
    assert sorted(os.listdir(base)) == ["1"]
    assert not (base / "1" / "marker").exists()
    for bad in (-1, "2", True, 1.0):
        with pytest.raises(ValueError, match="version"):
            export_saved_model(None, base, version=bad)


DCN_PRESET = "gflv2_r101_dcn_fpn_ms2x_coco"


def dcn_detector(reduced):
    from gflv2_keras.layers.deform_conv2d import DeformConv2D
    from gflv2_keras.presets import preset_info

    overrides = {"test_config": {"score_threshold": 0.0}}
    if reduced:  # the preset's DCN layout (DCNv1 in c3-c5) in a narrow ResNet-50 (DCN needs bottlenecks)
        nano = preset_info(PRESET)["config"]
        backbone = {**preset_info(DCN_PRESET)["config"]["backbone"], "depth": 50, "base_channels": 8}
        overrides.update(backbone=backbone, fpn_channels=nano["fpn_channels"], head=nano["head"],
                         input_scale=nano["input_scale"])  # fmt: skip
    keras.utils.set_random_seed(1)
    detector = GFLV2Detector.from_preset(DCN_PRESET, load_weights=False, **overrides)
    detector.build_for_inference()
    layers = [layer for layer in sublayers(detector) if isinstance(layer, DeformConv2D)]
    assert layers
    rng = np.random.default_rng(0)
    for layer in layers:  # non-zero offsets, so sampling positions really move
        layer.offset_kernel.assign(rng.normal(0, 0.05, layer.offset_kernel.shape).astype("float32"))
    return detector, layers


def _prefer_custom_op(model, layers):
    """Makes the layers use the custom op where it is loadable; True if they now do."""
    from gflv2_keras.ops.deform_conv.loader import load_deform_conv_op

    if load_deform_conv_op(build_if_missing=False) is None:
        return False
    for layer in layers:
        layer.implementation = "custom_op"
    graph = tf.function(layers[0]).get_concrete_function(tf.TensorSpec([1, 16, 16, layers[0].kernel.shape[2]])).graph
    assert any(op.type.startswith(CUSTOM_OP_PREFIX) for op in graph.get_operations())
    return True


def test_deformable_convs_are_exported_with_the_portable_path(tmp_path, probe_graph):
    from gflv2_keras.layers.deform_conv2d import force_portable

    from gflv2_keras.layers.deform_conv2d import DeformConv2D

    keras.utils.set_random_seed(2)
    probe = probe_detector(DeformConv2D(4, 3, padding=1))
    probe.layer.offset_kernel.assign(np.random.default_rng(0).normal(0, 0.5, probe.layer.offset_kernel.shape))
    custom = _prefer_custom_op(probe, [probe.layer])  # without force_portable the graph would hold the op
    path = export_saved_model(probe, tmp_path / "probe")
    assert_no_custom_op(path)
    assert "GatherV2" in graph_op_types(path) or "GatherNd" in graph_op_types(path)  # the portable sampler
    image = pattern(20, 27, 7)
    served = tf.saved_model.load(str(path)).signatures["image_tensor"](image_tensor=tf.constant(image[None]))
    with force_portable():
        expected = probe.detect_batch(tf.constant(image[None]), "xyxy")["confidence"]
    np.testing.assert_allclose(served["detection_scores"], expected, rtol=1e-5, atol=1e-6)
    print(f"\nthe layer used the custom op outside export: {custom}")


@pytest.mark.slow
def test_reduced_dcn_preset_export_matches_detect(tmp_path):
    from gflv2_keras.layers.deform_conv2d import force_portable

    detector, layers = dcn_detector(reduced=True)
    _prefer_custom_op(detector, layers)
    path = export_saved_model(detector, tmp_path / "dcn")
    assert_no_custom_op(path)
    image = pattern(57, 75, 5)
    served = as_numpy(tf.saved_model.load(str(path)).signatures["image_tensor"](image_tensor=tf.constant(image[None])))
    with force_portable():
        reference = detector.detect(image)
    assert_matches_detect(served, 0, reference, class_names=detector.class_names)


@pytest.mark.slow
def test_full_size_dcn_preset_export(tmp_path):
    detector, layers = dcn_detector(reduced=False)
    _prefer_custom_op(detector, layers)
    start = time.perf_counter()
    path = export_saved_model(detector, tmp_path / "dcn")
    print(f"\n{DCN_PRESET} export: {time.perf_counter() - start:.0f} s, "
          f"{export_module.directory_size(path) / 2**20:.0f} MiB")  # fmt: skip
    assert_no_custom_op(path)
    served = tf.saved_model.load(str(path)).signatures["serving_default"](
        image_bytes=tf.constant([encode(pattern(120, 160, 6), "JPEG")])
    )
    assert served["detection_boxes"].shape == (1, K, 4)
