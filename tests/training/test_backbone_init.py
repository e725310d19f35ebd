"""ImageNet backbone initialisation (the start of every official recipe) from torchvision-layout weights."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gflv2_keras import GFLV2Detector  # noqa: E402
from gflv2_keras.convert import CheckpointMismatchError, load_backbone_weights, read_official_checkpoint  # noqa: E402
from gflv2_keras.layers.walk import find_layer  # noqa: E402
from torch_reference import gflv2_torch as ref  # noqa: E402

HEAD = {"feat_channels": 16, "stacked_convs": 1, "norm_groups": 4}


def _classification_checkpoint(backbone_config, path, seed=0):
    """A torchvision-style ImageNet file: bare keys (``conv1.weight`` ...) plus a classifier ``fc``."""
    full = ref.GFL(backbone=backbone_config, num_classes=2, fpn_channels=16)
    ref.randomize_(full, seed)  # non-trivial BN statistics and affines
    model = full.backbone
    state = {k: v.float() for k, v in model.state_dict().items() if "conv_offset" not in k}
    channels = model(torch.zeros(1, 3, 32, 32))[-1].shape[1]
    state["fc.weight"] = torch.randn(1000, channels)
    state["fc.bias"] = torch.randn(1000)
    torch.save(state, str(path))
    return model.double().eval()


def test_backbone_matches_torch_after_loading_imagenet_weights(tmp_path):
    config = {"type": "resnet", "depth": 18, "base_channels": 8}
    torch_backbone = _classification_checkpoint(config, tmp_path / "resnet18.pth")
    detector = GFLV2Detector(config, num_classes=2, fpn_channels=16, head=HEAD)
    state, _ = read_official_checkpoint(tmp_path / "resnet18.pth")
    report = load_backbone_weights(detector, state, source="resnet18.pth")
    assert "backbone.fc.weight" in report.ignored
    x = np.random.default_rng(0).normal(size=(1, 3, 64, 96))
    expected = [t.detach().numpy() for t in torch_backbone(torch.from_numpy(x))]
    got = detector.backbone.image_encoder(x.transpose(0, 2, 3, 1).astype(np.float32), training=False)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(np.asarray(g).transpose(0, 3, 1, 2), e, atol=1e-4 * max(1.0, np.abs(e).max()))


def test_dcn_offsets_keep_zero_init_and_missing_tensors_are_errors(tmp_path):
    plain = {"type": "resnet", "depth": 50, "base_channels": 8}
    _classification_checkpoint(plain, tmp_path / "r50.pth")
    state, _ = read_official_checkpoint(tmp_path / "r50.pth")
    dcn = {**plain, "stage_with_dcn": [False, False, True, True], "dcn": {"modulated": False, "deform_groups": 1}}
    detector = GFLV2Detector(dcn, num_classes=2, fpn_channels=16, head=HEAD)
    load_backbone_weights(detector, state)
    conv2 = find_layer(detector, "backbone.layer4.0.conv2")
    np.testing.assert_array_equal(np.asarray(conv2.offset_kernel), 0.0)  # absent from ImageNet weights
    np.testing.assert_allclose(np.asarray(conv2.kernel), state["layer4.0.conv2.weight"].transpose(2, 3, 1, 0))

    del state["layer3.1.bn2.running_var"]
    fresh = GFLV2Detector(plain, num_classes=2, fpn_channels=16, head=HEAD)
    with pytest.raises(CheckpointMismatchError, match=r"backbone\.layer3\.1\.bn2\.running_var"):
        load_backbone_weights(fresh, state)
