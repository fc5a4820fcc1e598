"""The image encoder computes what the published network computes, from every published key layout.

The reference below is written after MedicalNet's resnet.py (the release's backbone): shortcut
type A via ``downsample_basic_block`` (avg_pool3d kernel 1 + concatenated zero channels),
``nn.Sequential`` layers, adaptive average pooling. Its state dict is saved in the release's
layouts and loaded by our loader; both networks must agree to 1e-5 in float32.
"""
from functools import partial

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from renalclip_lib.errors import MissingFileError, RenalCLIPError, UnreadableFileError  # noqa: E402
from renalclip_lib.models import (ClassifierHead, ImageEncoder, load_checkpoint, load_image_encoder,  # noqa: E402
                                  save_image_model)
from renalclip_lib.questionnaire import QUESTIONS  # noqa: E402


def downsample_basic_block(x, planes, stride):
    out = F.avg_pool3d(x, kernel_size=1, stride=stride)
    zero_pads = torch.zeros(out.size(0), planes - out.size(1), out.size(2), out.size(3), out.size(4))
    return torch.cat([out, zero_pads], dim=1)


class RefBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv3d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv3d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample = downsample

    def forward(self, x):
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        return self.relu(out + residual)


class RefResNet18(nn.Module):
    def __init__(self):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv3d(1, 64, kernel_size=7, stride=(2, 2, 2), padding=(3, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(64, 2)
        self.layer2 = self._make_layer(128, 2, stride=2)
        self.layer3 = self._make_layer(256, 2, stride=2)
        self.layer4 = self._make_layer(512, 2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.global_embedding = nn.Module()
        self.global_embedding.head = nn.Linear(512, 4096)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = partial(downsample_basic_block, planes=planes, stride=stride)
        layers = [RefBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [RefBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = F.max_pool3d(F.pad(x, (1, 1, 1, 1, 1, 1), value=0.0), kernel_size=3, stride=2)  # the release pads zeros
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    ref = RefResNet18()
    g = torch.Generator().manual_seed(1)
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return ref.eval()


@pytest.fixture(scope="module")
def batch():
    return torch.rand(2, 1, 32, 128, 128, generator=torch.Generator().manual_seed(2))


def test_published_key_layout_and_parameter_count():
    sd = ImageEncoder().state_dict()
    assert len(sd) == 104
    assert tuple(sd["conv1.weight"].shape) == (64, 1, 7, 7, 7)
    assert tuple(sd["layer2.0.conv1.weight"].shape) == (128, 64, 3, 3, 3)
    assert tuple(sd["global_embedding.head.weight"].shape) == (4096, 512)
    assert not any("downsample" in k for k in sd)
    backbone = sum(p.numel() for p in ImageEncoder().backbone_parameters())
    assert backbone == 32_986_176


@pytest.mark.parametrize("layout", ["contrastive", "attribute", "downstream", "bare", "module_bare"])
def test_loads_published_layouts_and_matches_reference(tmp_path, reference, batch, layout):
    enc_sd = reference.state_dict()
    if layout == "contrastive":
        sd = {f"module.image_encoder_q_student.{k}": v for k, v in enc_sd.items()}
        sd["module.logit_scale"] = torch.tensor(np.log(1 / 0.07), dtype=torch.float32)
        obj = {"model": sd, "fp16_scaler": {"scale": 65536.0, "growth_factor": 2.0}}
        name = "RenalCLIP-image-encoder-model-best-acc.pt"
    elif layout == "attribute":
        sd = {f"backbone.image_encoder.{k}": v for k, v in enc_sd.items() if not k.startswith("global_embedding")}
        for q in QUESTIONS:
            sd[f"classifiers.text_label_{q.release_id}.block_forward.2.weight"] = torch.randn(q.n_classes, 512)
            sd[f"classifiers.text_label_{q.release_id}.block_forward.2.bias"] = torch.randn(q.n_classes)
        obj, name = {"model": sd}, "best-checkpoint.pth"
    elif layout == "downstream":
        head = ClassifierHead(2)
        sd = {f"backbone.image_encoder.{k}": v for k, v in enc_sd.items() if not k.startswith("global_embedding")}
        sd.update({f"classifiers.malignancy.{k}": v for k, v in head.state_dict().items()})
        obj, name = {"model": sd}, "malignancy.pth"
    elif layout == "bare":
        obj, name = dict(enc_sd), "encoder.pth"
    else:
        obj, name = {f"module.{k}": v for k, v in enc_sd.items()}, "encoder_ddp.pth"
    path = tmp_path / name
    torch.save(obj, path)
    ck = load_checkpoint(path)
    with torch.no_grad():
        expected = reference(batch)
        got = ck.encoder.features(batch)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    if layout == "contrastive":
        assert ck.flavour == "contrastive"
        assert ck.logit_scale == pytest.approx(np.log(1 / 0.07), rel=1e-6)
        with torch.no_grad():
            ref_embed = F.normalize(reference.global_embedding.head(expected), dim=-1)
            np.testing.assert_allclose(ck.encoder.embed(batch).numpy(), ref_embed.numpy(), rtol=1e-5, atol=1e-5)
    if layout == "attribute":
        assert ck.flavour == "attribute"
        assert {n: h.block_forward[2].out_features for n, h in ck.classifiers.items()} == \
            {f"text_label_{q.release_id}": q.n_classes for q in QUESTIONS}
        assert not ck.encoder.has_projection
    if layout == "downstream":
        assert set(ck.classifiers) == {"malignancy"}
        with torch.no_grad():
            np.testing.assert_allclose(ck.classifiers["malignancy"](expected).numpy(),
                                       head.eval()(expected).numpy(), rtol=1e-5, atol=1e-5)


def test_runs_on_cpu_with_parameter_free_shortcut_gradients(batch):
    enc = ImageEncoder(with_projection=False)
    out = enc.features(batch[:1].clone().requires_grad_(True))
    out.sum().backward()
    assert enc.conv1.weight.grad is not None and torch.isfinite(enc.conv1.weight.grad).all()


def test_our_checkpoint_round_trip(tmp_path, batch):
    enc = ImageEncoder().eval()
    heads = {"renal_R": ClassifierHead(3).eval()}
    path = save_image_model(tmp_path / "m" / "best.pt", enc, heads, meta={"stage": "finetune", "epoch": 3})
    ck = load_checkpoint(path)
    assert ck.flavour == "renalclip" and ck.meta == {"stage": "finetune", "epoch": 3}
    with torch.no_grad():
        np.testing.assert_allclose(ck.encoder.embed(batch).numpy(), enc.embed(batch).numpy(), atol=1e-6)
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]


def test_bad_checkpoints_are_clear_errors(tmp_path, reference):
    with pytest.raises(MissingFileError, match="nope.pt"):
        load_image_encoder(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UnreadableFileError, match="junk.pt"):
        load_image_encoder(junk)
    sd = {k: v for k, v in reference.state_dict().items() if not k.startswith("layer4.1")}
    torch.save({"model": sd}, tmp_path / "partial.pt")
    with pytest.raises(RenalCLIPError, match=r"missing keys \['layer4\.1\.conv1\.weight'"):
        load_image_encoder(tmp_path / "partial.pt")
    sd = dict(reference.state_dict())
    sd["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1, 1)
    torch.save(sd, tmp_path / "shape.pt")
    with pytest.raises(RenalCLIPError, match="wrong shapes.*layer1.0.conv1.weight"):
        load_image_encoder(tmp_path / "shape.pt")
