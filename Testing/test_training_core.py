"""The pieces under every training stage: Cox loss, the loop's resume, configs, augmentation, cache."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from renalclip_lib.config import load_config  # noqa: E402
from renalclip_lib.data.augment import DeviceAugment, TrainAugment, train_augment  # noqa: E402
from renalclip_lib.data.datasets import RoiDataset, batch_images, group_units  # noqa: E402
from renalclip_lib.data.roi_cache import CaseImages, build_cache, open_cache  # noqa: E402
from renalclip_lib.errors import ConfigError, MissingFileError, RenalCLIPError  # noqa: E402
from renalclip_lib.io import Volume, write_volume  # noqa: E402
from renalclip_lib.preprocess import crop_roi  # noqa: E402
from renalclip_lib.training.common import auc_score, class_weights, head_and_backbone_groups  # noqa: E402
from renalclip_lib.training.cox_loss import cox_partial_nll  # noqa: E402
from renalclip_lib.training.loop import fit, group_schedules  # noqa: E402
from renalclip_lib.training.options import BACKBONE, HEADS, OptimOptions  # noqa: E402


def test_cox_loss_fits_the_breslow_estimate_of_scikit_survival():
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    rng = np.random.default_rng(0)
    n = 300
    x = rng.normal(size=(n, 3))
    t_event = np.round(rng.exponential(1 / np.exp(x @ np.array([0.8, -0.5, 0.0]))) * 10)  # many ties
    t_cens = rng.exponential(1.5, size=n) * 10
    time, event = np.minimum(t_event, t_cens) + 1, t_event <= t_cens
    ref = CoxPHSurvivalAnalysis(ties="breslow").fit(x, Surv.from_arrays(event, time)).coef_
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14, line_search_fn="strong_wolfe")
    xt, tt, et = torch.tensor(x), torch.tensor(time), torch.tensor(event.astype(float))

    def closure():
        opt.zero_grad()
        loss = cox_partial_nll(xt @ w, tt, et)
        loss.backward()
        return loss

    opt.step(closure)
    np.testing.assert_allclose(w.detach().numpy(), ref, atol=2e-3)


def test_cox_loss_without_events_is_zero_and_differentiable():
    risk = torch.randn(5, requires_grad=True)
    loss = cox_partial_nll(risk, torch.arange(5.0), torch.zeros(5))
    loss.backward()
    assert loss.item() == 0.0 and risk.grad is not None


class _ToyTask:
    """A linear model on fixed data: enough to test the loop's bookkeeping."""

    def __init__(self):
        torch.manual_seed(0)
        self.model = torch.nn.Linear(4, 1)
        self.saved = []

    def param_groups(self, model, cfg):
        return [{"params": list(model.parameters()), "lr": cfg.lr}]

    def loss(self, model, batch, device):
        x, y = batch["image"], batch["target"]
        return torch.nn.functional.mse_loss(model(x).squeeze(-1), y), {}

    def evaluate(self, model, loader, device):
        with torch.no_grad():
            losses = [self.loss(model, b, device)[0].item() for b in loader]
        return {"val_loss": float(np.mean(losses))}

    def save_best(self, path, model, metrics):
        torch.save(model.state_dict(), path)
        self.saved.append(metrics["epoch"])


def _toy_loaders():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0])
    data = [{"image": x[i:i + 8], "target": y[i:i + 8]} for i in range(0, 64, 8)]
    return data, data[:2]


def test_loop_logs_selects_best_and_marks_finished(tmp_path):
    cfg = OptimOptions(epochs=4, lr=0.05, warmup_ratio=0.25, amp="fp32", progress=False)
    train, val = _toy_loaders()
    task = _ToyTask()
    result = fit(task, train, val, tmp_path / "run", cfg)
    losses = [h["val_loss"] for h in result["history"]]
    assert result["best_epoch"] == int(np.argmin(losses)) and task.saved[-1] == result["best_epoch"]
    assert result["history"][-1]["train_loss"] < result["history"][0]["train_loss"]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2, 3]
    assert json.loads((tmp_path / "run" / "finished.json").read_text(encoding="utf-8"))["best_epoch"] == result["best_epoch"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best.pt", "checkpoint_last.pt", "finished.json",
                                                                     "metrics.jsonl"]


def test_loop_resumes_mid_schedule_exactly(tmp_path):
    """Interrupt a 4-epoch run during its third epoch, run again: it resumes and ends as an uninterrupted run."""
    cfg = OptimOptions(epochs=4, lr=0.05, warmup_ratio=0.25, amp="fp32", progress=False)
    train, val = _toy_loaders()
    full = fit(_ToyTask(), train, val, tmp_path / "full", cfg)

    class StopAfter2(_ToyTask):
        calls = 0

        def loss(self, model, batch, device):
            StopAfter2.calls += torch.is_grad_enabled()
            if StopAfter2.calls > 2 * len(train):
                raise KeyboardInterrupt
            return super().loss(model, batch, device)

    with pytest.raises(KeyboardInterrupt):
        fit(StopAfter2(), train, val, tmp_path / "cut", cfg)
    assert torch.load(tmp_path / "cut" / "checkpoint_last.pt", weights_only=True)["epoch"] == 1
    assert not (tmp_path / "cut" / "finished.json").exists()
    resumed = fit(_ToyTask(), train, val, tmp_path / "cut", cfg)
    np.testing.assert_allclose([h["train_loss"] for h in resumed["history"]],
                               [h["train_loss"] for h in full["history"]], rtol=1e-6)
    a = torch.load(tmp_path / "cut" / "checkpoint_last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "full" / "checkpoint_last.pt", weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k])


class _BackboneHeadTask(_ToyTask):
    """A two-layer model split as the image stages split theirs; a snapshot of both layers after every epoch."""

    def __init__(self, freeze_backbone: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
        self.model.head_parameters = lambda: list(self.model[1].parameters())
        self.model[0].requires_grad_(not freeze_backbone)
        self.snapshots = []

    def param_groups(self, model, cfg):
        return head_and_backbone_groups(model, cfg)

    def evaluate(self, model, loader, device):
        self.snapshots.append([p.detach().clone() for p in model.parameters()])
        return super().evaluate(model, loader, device)


def test_head_only_epochs_hold_the_backbone_while_the_heads_fit_it(tmp_path):
    """LP-FT: for ``head_only_epochs`` the backbone is exactly its start and the heads train as on a frozen
    backbone (requires_grad off: an independent way to freeze it); afterwards the backbone trains."""
    cfg = OptimOptions(epochs=4, lr=0.05, head_lr=0.1, warmup_ratio=0.25, amp="fp32", progress=False, head_only_epochs=2)
    train, val = _toy_loaders()
    lpft, frozen = _BackboneHeadTask(), _BackboneHeadTask(freeze_backbone=True)
    start = [p.detach().clone() for p in lpft.model.parameters()]
    result = fit(lpft, train, val, tmp_path / "lpft", cfg)
    fit(frozen, train, val, tmp_path / "frozen", OptimOptions(**{**cfg.__dict__, "head_only_epochs": 0}))
    for epoch in (0, 1):
        for now, then in zip(lpft.snapshots[epoch][:2], start[:2]):
            assert torch.equal(now, then)
        for a, b in zip(lpft.snapshots[epoch][2:], frozen.snapshots[epoch][2:]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    assert not torch.equal(lpft.snapshots[0][2], start[2])
    assert not torch.equal(lpft.snapshots[2][0], start[0])
    assert result["history"][0]["lr"] == 0.0          # the backbone's rate for the next step: still held


def test_group_schedules_hold_only_the_backbone_then_join_the_cosine(tmp_path):
    groups = [{"name": BACKBONE}, {"name": HEADS}]
    backbone, heads = group_schedules(groups, total_steps=100, warmup_steps=10, frozen_steps=30)
    for step in range(100):
        expected = 0.5 * (1 + math.cos(math.pi * (step - 10) / 90)) if step >= 10 else (step + 1) / 10
        assert heads(step) == pytest.approx(expected)
        assert backbone(step) == (0.0 if step < 30 else pytest.approx(expected))
    with pytest.raises(ConfigError, match="head_only_epochs: this stage trains no separate backbone"):
        fit(_ToyTask(), *_toy_loaders(), tmp_path / "run", OptimOptions(epochs=2, head_only_epochs=1, progress=False))
    assert not (tmp_path / "run").exists()


def test_config_validation_names_file_and_key(tmp_path):
    good = tmp_path / "c.yaml"
    good.write_text("model:\n  width: 16\nfinetune:\n  optim:\n    epochs: 3\n    lr: 1.0e-3\n", encoding="utf-8")
    cfg = load_config(good, {"finetune.optim.batch_size": 4})
    assert cfg.model.width == 16 and cfg.finetune.optim.epochs == 3 and cfg.finetune.optim.batch_size == 4
    for text, match in [("model:\n  widht: 16\n", "unknown key 'model.widht'"),
                        ("model:\n  width: sixteen\n", "'model.width' must be int"),
                        ("finetune:\n  optim:\n    lr: -1\n", "lr must be > 0"),
                        ("survival:\n  endpoint: pfs\n", "'survival.endpoint' must be one of"),
                        ("finetune: [1, 2]\n", "'finetune' must be a mapping"),
                        ("compare:\n  seeds: [0, 0]\n", "compare.seeds must be distinct integers"),
                        ("clip:\n  lesion_view: 1.5\n", "lesion_view must be in \\[0, 1\\]"),
                        ("attributes:\n  repeat_threshold: -0.1\n", "attributes: repeat_threshold must be in \\[0, 1\\]"),
                        ("compare:\n  seeds: [0, 1.5]\n", "compare.seeds must be distinct integers"),
                        ("finetune:\n  optim:\n    epochs: 4\n    head_only_epochs: 4\n", "head_only_epochs must be >= 0 and below epochs"),
                        ("finetune:\n  freeze_encoder: true\n  optim:\n    epochs: 4\n    head_only_epochs: 1\n",
                         "finetune: freeze_encoder and optim.head_only_epochs exclude each other"),
                        ("attributes:\n  optim:\n    epochs: 4\n    head_only_epochs: 1\n", "attributes: optim.head_only_epochs must be 0"),
                        ("model: {width: 16\n", "not valid YAML")]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError, match=match) as exc:
            load_config(bad)
        assert str(exc.value).startswith(str(bad))
    with pytest.raises(MissingFileError):
        load_config(tmp_path / "none.yaml")


def test_relative_data_paths_resolve_in_the_file_against_its_folder_and_from_set_against_cwd(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    cfg_file = folder / "c.yaml"
    cfg_file.write_text("data:\n  manifest: cohort/manifest.csv\n  cache: cache\n", encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    cfg = load_config(cfg_file)
    assert Path(cfg.data.manifest) == folder.resolve() / "cohort" / "manifest.csv"
    assert Path(cfg.data.cache) == folder.resolve() / "cache"
    cfg = load_config(cfg_file, {"data.cache": "my_cache", "data.manifest": str(tmp_path / "m.csv")})
    assert Path(cfg.data.cache) == work.resolve() / "my_cache"
    assert Path(cfg.data.manifest) == tmp_path / "m.csv"


def test_shipped_configs_load():
    from renalclip_lib.resources import resource_path

    paper = load_config(resource_path("configs", "paper.yaml"))
    assert paper.attributes.optim.batch_size == 300 and paper.attributes.optim.lr == 5e-4
    assert paper.attributes.optim.weight_decay == 5e-3 and paper.attributes.flip is False
    demo = load_config(resource_path("configs", "demo.yaml"))
    assert demo.model.width < paper.model.width
    assert paper.attributes.optim.augment_rotate == paper.finetune.optim.augment_rotate == "xyz"
    assert demo.attributes.optim.augment_rotate == demo.finetune.optim.augment_rotate == "z"
    assert paper.report.init == demo.report.init == "clip"         # the RenalCLIP encoder, as the paper
    assert demo.report.tiny.image_conditioned is True
    d = paper.report.decoding                                         # Table 42 / the released decoding
    assert (d.num_beams, d.repetition_penalty, d.no_repeat_ngram_size, d.max_new_tokens) == (4, 1.2, 3, 256)
    assert d.number_safe is False and demo.report.decoding.number_safe is True
    assert paper.compare.seeds == [] and demo.compare.seeds == [0, 1, 2]
    assert paper.report.standardize_features is False and demo.report.standardize_features is True
    assert paper.clip.lesion_view == 0.0                              # alignment on kidney-centred ROIs, as released


def test_augment_shapes_ranges_and_seed():
    roi = np.random.default_rng(0).normal(40, 80, (32, 140, 140)).astype(np.float32)
    a, b = TrainAugment(flip=True, seed=3), TrainAugment(flip=True, seed=3)
    xa, xb = a(roi), b(roi)
    assert xa.shape == (1, 32, 128, 128) and xa.dtype == torch.float32
    torch.testing.assert_close(xa, xb)
    assert not torch.equal(xa, a(roi))


def test_augment_without_randomness_is_the_model_input():
    from renalclip_lib.preprocess import to_model_input

    rng = np.random.default_rng(1)
    roi = Volume(rng.normal(40, 80, (32, 140, 140)).astype(np.float32), (1, 1, 5), (0, 0, 0))
    aug = TrainAugment(flip=False, affine=False, intensity=False, seed=0)
    x = aug(roi.array).numpy()
    # The only randomness left is the crop offset: the result is one of the 13 x 13 crops.
    full = to_model_input(roi)
    found = False
    for x0 in range(13):
        for y0 in range(13):
            ref = np.clip((roi.array[:, y0:y0 + 128, x0:x0 + 128] + 200) / 500, 0, 1).transpose(0, 2, 1)[None]
            if np.allclose(ref, x, atol=1e-6):
                found = True
    assert found and full.shape == x.shape


def _write_case(tmp_path, pid, phases=("A", "V")):
    rng = np.random.default_rng(abs(hash(pid)) % 1000)
    paths = {}
    for k, ph in enumerate(phases):
        arr = rng.normal(0, 30, (20, 60, 60)).astype(np.int16)
        vol = Volume(arr, (3.0, 3.0, 8.0), (-90.0 + k, -90.0, -80.0))
        paths[ph] = str(write_volume(vol, tmp_path / f"{pid}_{ph}.nii.gz"))
    return CaseImages(pid, "internal", "train", paths, lesion_center=(10.0, -5.0, 0.0), lesion_side="left",
                      kidney_centers={"left": (40.0, 0.0, 0.0), "right": (-40.0, 0.0, 0.0)},
                      labels={"malignancy": "1", "renal_R": "2"},
                      side_labels={"left": {"q_size": "3"}, "right": {"q_size": "0"}})


def test_roi_cache_holds_exactly_the_rois_and_is_reused(tmp_path):
    cases = [_write_case(tmp_path, "p1"), _write_case(tmp_path, "p2", ("N", "A", "V", "D"))]
    out, skipped = build_cache(cases, tmp_path / "cache", "lesion")
    rois, index = open_cache(out, "lesion")
    assert len(rois) == 6 and not skipped
    from renalclip_lib.io import read_volume

    ref = crop_roi(read_volume(cases[1].phases["D"]), cases[1].lesion_center).array
    row = next(r for r in index if r["patient_id"] == "p2" and r["phase"] == "D")
    np.testing.assert_allclose(rois[int(row["row"])], np.rint(ref), atol=0.5)
    mtime = (out / "rois_lesion.npy").stat().st_mtime_ns
    build_cache(cases, out, "lesion")
    assert (out / "rois_lesion.npy").stat().st_mtime_ns == mtime
    kid_out, _ = build_cache(cases, tmp_path / "cache", "kidney")
    krois, kindex = open_cache(kid_out, "kidney")
    assert len(krois) == 12
    left = [r for r in kindex if r["side"] == "left"]
    assert {r["q_size"] for r in left} == {"3"} and all(r["malignancy"] == "1" for r in left)
    units = group_units(kindex)
    assert len(units) == 4 and sorted(units[2].rows) == ["A", "D", "N", "V"]
    assert units[2].eval_phase() == "A"


def test_roi_cache_bad_rows_fail_or_skip(tmp_path):
    good = _write_case(tmp_path, "ok")
    bad = _write_case(tmp_path, "bad")
    bad.lesion_center = (500.0, 500.0, 500.0)
    with pytest.raises(RenalCLIPError, match="outside the scan"):
        build_cache([good, bad], tmp_path / "c1", "lesion")
    assert not (tmp_path / "c1" / "rois_lesion.npy").exists()
    out, skipped = build_cache([good, bad], tmp_path / "c2", "lesion", on_error="skip")
    rois, index = open_cache(out, "lesion")
    assert len(rois) == 2 and {r["patient_id"] for r in index} == {"ok"} and len(skipped) == 2


def _monai_reference(hu: np.ndarray, p: np.ndarray) -> torch.Tensor:
    """Table 40 with MONAI's deterministic transforms and the given parameters, one ROI (z, y, x) HU."""
    from monai.transforms import AdjustContrast, Affine, Flip, ScaleIntensity, ShiftIntensity, SpatialCrop

    from renalclip_lib.preprocess.roi import window

    x = torch.as_tensor(window(hu))[None]
    x = Affine(rotate_params=tuple(float(v) for v in p[0:3]), translate_params=(0.0, float(p[3]), float(p[4])),
               scale_params=(1.0, float(p[5]), float(p[6])), mode="bilinear", padding_mode="zeros", image_only=True)(x)
    y0, x0 = int(p[7]), int(p[8])
    x = SpatialCrop(roi_start=(0, y0, x0), roi_end=(32, y0 + 128, x0 + 128))(x)
    if p[9]:
        x = Flip(spatial_axis=2)(x)
    x = ShiftIntensity(offset=float(p[11]))(ScaleIntensity(minv=None, maxv=None, factor=float(p[10]))(x))
    if p[12]:
        x = AdjustContrast(gamma=float(p[13]))(x)
    return torch.as_tensor(x).float().permute(0, 1, 3, 2)


@pytest.mark.parametrize("rotate", ["xyz", "z"])
def test_device_augment_is_monai_table_40_on_a_whole_batch(rotate):
    """One batched resampling (trilinear 3D, or the axial rotation's bilinear 2D over slices)
    gives what MONAI's Affine, SpatialCrop, Flip, ScaleIntensity, ShiftIntensity and
    AdjustContrast give for each ROI with the same parameters."""
    rng = np.random.default_rng(5)
    hu = rng.normal(60, 250, (4, 1, 32, 140, 140)).astype(np.int16)
    aug = DeviceAugment(flip=True, rotate=rotate)
    params = np.stack([aug.draw(np.random.default_rng(s)) for s in range(4)])
    params[:, 9] = [1, 0, 1, 0]
    params[:, 12] = [1, 1, 0, 0]
    params[3, 7:9] = [0, 12]
    out = aug(torch.as_tensor(hu), torch.as_tensor(params))
    assert out.shape == (4, 1, 32, 128, 128) and out.dtype == torch.float32
    for i in range(4):
        torch.testing.assert_close(out[i], _monai_reference(hu[i, 0], params[i]), atol=1e-4, rtol=1e-4)


def test_device_augment_without_randomness_is_the_model_input():
    from renalclip_lib.preprocess import to_model_input

    hu = np.random.default_rng(2).normal(40, 200, (32, 140, 140)).astype(np.int16)
    aug = DeviceAugment(flip=False, affine=False, intensity=False)
    p = aug.draw(np.random.default_rng(0))
    p[7:9] = 6
    assert p[[0, 1, 2, 3, 4, 9, 10, 11, 12]].tolist() == [0] * 9 and p[5:7].tolist() == [1, 1]
    x = aug(torch.as_tensor(hu)[None, None], torch.as_tensor(p)[None])[0].numpy()
    np.testing.assert_allclose(x, to_model_input(hu.astype(np.float32)), atol=1e-4)


def test_device_augment_draws_the_table_40_ranges():
    rng = np.random.default_rng(0)
    keep_sides = np.stack([DeviceAugment(flip=False).draw(rng) for _ in range(2000)])
    both = np.stack([DeviceAugment(flip=True).draw(rng) for _ in range(2000)])
    assert keep_sides[:, 9].max() == 0 and 0.45 < both[:, 9].mean() < 0.55       # no flip in pre-training
    for p in (keep_sides, both):
        assert np.abs(p[:, 0:3]).max() <= np.pi / 10 and np.abs(p[:, 0:3]).max() > 0.3
        assert np.abs(p[:, 3:5]).max() <= 10 and np.abs(p[:, 5:7] - 1).max() <= 0.1
        assert set(p[:, 7].astype(int)) == set(range(13)) == set(p[:, 8].astype(int))
        assert np.abs(p[:, 10:12]).max() <= 0.1 and 0.45 < p[:, 12].mean() < 0.55
        assert 0.5 <= p[:, 13].min() and p[:, 13].max() <= 2.0


def test_device_augment_matrices_are_monai_rotate_translate_scale():
    from monai.transforms.utils import create_rotate, create_scale, create_translate

    rng = np.random.default_rng(11)
    params = np.stack([DeviceAugment(flip=True).draw(rng) for _ in range(6)]).astype(np.float64)
    params[0, 0:3] = [0.3, -0.2, 0.25]
    got = DeviceAugment.matrices(torch.as_tensor(params)).numpy()
    for p, m in zip(params, got):
        ref = create_rotate(3, p[0:3]) @ create_translate(3, (0.0, p[3], p[4])) @ create_scale(3, (1.0, p[5], p[6]))
        np.testing.assert_allclose(m, ref, atol=1e-12)


def test_train_augment_batches_on_the_device_unless_told_cpu():
    assert isinstance(train_augment(True, 0, "auto"), DeviceAugment)
    assert isinstance(train_augment(False, 0, "device"), DeviceAugment)
    assert isinstance(train_augment(True, 0, "cpu"), TrainAugment)
    with pytest.raises(ConfigError, match="augment_on"):
        OptimOptions(augment_on="gpu").validate("x.yaml")
    with pytest.raises(ConfigError, match="augment_rotate"):
        OptimOptions(augment_rotate="xy").validate("x.yaml")
    assert isinstance(train_augment(True, 0, "cpu", "z"), TrainAugment)
    assert train_augment(True, 0, "device", "z").rotate_ranges.tolist()[1:] == [0, 0]


def _slice_spread(x: torch.Tensor) -> float:
    """Largest spread of values within one axial slice of a (1, z, x, y) tensor, over the central
    64 x 64 (which no translation, rotation or scaling of Table 40 moves outside the ROI)."""
    centre = x[0, :, 32:96, 32:96]
    return float((centre.amax(dim=(1, 2)) - centre.amin(dim=(1, 2))).max())


def test_axial_rotation_never_mixes_slices():
    """A volume that varies only from slice to slice stays constant within each slice when the
    rotation keeps to the axial plane (MONAI on the CPU and the batched device path), and does not
    under Table 40's rotation about all three axes."""
    hu = np.broadcast_to((-100.0 + 10.0 * np.arange(32))[:, None, None], (32, 140, 140)).astype(np.float32)
    axial = [TrainAugment(flip=True, seed=s, intensity=False, rotate="z")(hu) for s in range(4)]
    full = [TrainAugment(flip=True, seed=s, intensity=False)(hu) for s in range(4)]
    assert max(_slice_spread(x) for x in axial) < 1e-4
    assert max(_slice_spread(x) for x in full) > 0.05
    dev = DeviceAugment(flip=True, intensity=False, rotate="z")
    params = np.stack([dev.draw(np.random.default_rng(s)) for s in range(4)])
    assert np.all(params[:, 1:3] == 0) and np.abs(params[:, 0]).max() > 0
    out = dev(torch.as_tensor(hu)[None, None].expand(4, 1, 32, 140, 140), torch.as_tensor(params))
    assert max(_slice_spread(x) for x in out) < 1e-4


def test_loop_augments_the_batch_on_the_device(tmp_path):
    """The dataset hands raw ROIs and parameters to the loader; the loop's batch is augmented."""
    from renalclip_lib.training.common import make_loader

    rois = np.random.default_rng(3).normal(40, 200, (6, 32, 140, 140)).astype(np.int16)
    units = group_units([{"row": str(i), "unit": f"u{i // 2}", "patient_id": f"p{i // 2}", "phase": "AV"[i % 2]}
                         for i in range(6)])
    ds = RoiDataset(rois, units, np.arange(3, dtype=np.float32)[:, None], augment=DeviceAugment(flip=True), seed=0)
    item = ds[(0, 1)]
    assert item["image"].dtype == torch.int16 and item["image"].shape == (1, 32, 140, 140)
    assert item["aug"].shape == (14,) and torch.equal(item["aug"], ds[(0, 1)]["aug"])
    phase = next(ph for ph, r in units[1].rows.items() if np.array_equal(rois[int(r["row"])], item["image"][0].numpy()))
    assert phase in "AV"
    seen = []

    class Task(_ToyTask):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(1))

        def loss(self, model, batch, device):
            seen.append(batch["image"].shape)
            x = batch["image"].mean(dim=(2, 3, 4))
            return torch.nn.functional.mse_loss(model(x).squeeze(-1), batch["target"][:, 0]), {}

    task = Task()
    task.model(torch.zeros(1, 1))
    fit(task, make_loader(ds, 3, True, seed=0), None, tmp_path / "run",
        OptimOptions(epochs=1, lr=0.01, amp="fp32", progress=False, select_metric="train_loss"))
    assert seen == [(3, 1, 32, 128, 128)]


def test_dataset_draws_every_available_phase_in_training():
    rois = np.zeros((4, 32, 140, 140), np.int16)
    for i in range(4):
        rois[i] = i * 100
    index = [{"row": str(i), "unit": "u", "patient_id": "p", "phase": ph} for i, ph in enumerate("NAVD")]
    units = group_units(index)
    aug = TrainAugment(flip=False, affine=False, intensity=False, seed=0)
    ds = RoiDataset(rois, units, np.zeros((1, 1)), augment=aug, seed=0)
    seen = {round(float(ds[(epoch, 0)]["image"].mean()) * 500 - 200) for epoch in range(40)}
    assert seen == {0, 100, 200, 300}
    # An item's draws are a function of (seed, epoch, index): any process or worker repeats them.
    assert all(torch.equal(ds[(e, 0)]["image"], ds[(e, 0)]["image"]) for e in range(5))
    ev = RoiDataset(rois, units, np.zeros((1, 1)))
    assert round(float(ev[0]["image"].mean()) * 500 - 200) == 100  # arterial


def test_raw_evaluation_items_windowed_on_the_device_are_the_model_input():
    """``RoiDataset(raw=True)`` hands over the int16 HU crop; ``batch_images`` windows it to exactly
    the float input the default item (``to_model_input`` in the loader) gives."""
    rois = np.random.default_rng(4).normal(30, 400, (4, 32, 140, 140)).clip(-1024, 3000).astype(np.int16)
    index = [{"row": str(i), "unit": f"u{i // 2}", "patient_id": "p", "phase": ph} for i, ph in enumerate("AVAV")]
    units = group_units(index)
    raw = RoiDataset(rois, units, np.zeros((2, 1)), raw=True)
    plain = RoiDataset(rois, units, np.zeros((2, 1)))
    assert raw[1]["image"].dtype == torch.int16 and raw[1]["image"].shape == (1, 32, 128, 128)
    loader = torch.utils.data.DataLoader(raw, batch_size=2)
    x = batch_images(next(iter(loader)), torch.device("cpu"))
    assert x.dtype == torch.float32
    assert torch.equal(x, torch.stack([plain[0]["image"], plain[1]["image"]]))
    assert torch.equal(batch_images({"image": x}, torch.device("cpu")), x)


def test_loader_over_the_cache_on_the_device_gives_the_same_batches():
    """With the cache held on the device the loader yields rows and gathers the ROIs there: the
    batches equal those read from the memory-mapped cache, in training (raw ROI and augmentation
    parameters) and in evaluation (the centre crop in HU)."""
    from renalclip_lib.data.device_cache import DeviceCacheLoader, DeviceRois, device_cache
    from renalclip_lib.training.common import make_loader

    rois = np.random.default_rng(8).normal(40, 300, (10, 32, 140, 140)).astype(np.int16)
    units = group_units([{"row": str(i), "unit": f"u{i // 2}", "patient_id": f"p{i // 2}", "phase": "AV"[i % 2]}
                         for i in range(10)])
    targets = np.arange(5, dtype=np.float32)[:, None]
    on_device = device_cache(rois, "always", "cpu")
    assert isinstance(on_device, DeviceRois)
    assert device_cache(rois, "never", "cpu") is None and device_cache(rois, "auto", "cpu") is None
    with pytest.raises(ValueError, match="device_cache"):
        device_cache(rois, "sometimes", "cpu")

    def batches(dataset_kwargs, train, cache):
        ds = RoiDataset(rois, units, targets, seed=3, **dataset_kwargs)
        loader = make_loader(ds, 2, train, seed=1, device_cache=cache)
        assert isinstance(loader, DeviceCacheLoader) == (cache is not None)
        if train:
            loader.sampler.set_epoch(1)
        return list(loader)

    for kwargs, train in (({"augment": DeviceAugment(flip=True)}, True), ({"raw": True}, False)):
        plain, gathered = batches(kwargs, train, None), batches(kwargs, train, on_device)
        assert len(plain) == len(gathered) > 1
        for a, b in zip(plain, gathered):
            assert set(a) == set(b) and torch.equal(a["image"], b["image"]) and a["image"].dtype == torch.int16
            assert torch.equal(a["index"], b["index"]) and torch.equal(a["target"], b["target"])
            assert train == ("aug" in b) and (not train or torch.equal(a["aug"], b["aug"]))
    # A training set augmented by MONAI in the loader keeps reading the memory-mapped cache.
    ds = RoiDataset(rois, units, targets, augment=TrainAugment(flip=True, seed=0))
    assert not isinstance(make_loader(ds, 2, True, device_cache=on_device), DeviceCacheLoader)


def test_stacked_kidney_and_lesion_rois_go_onto_the_device_as_one_array():
    """The kidney and lesion caches read as one (``lesion_view``) copy onto the device row for row
    as their concatenation, and slice like it."""
    from renalclip_lib.data.datasets import StackedRois
    from renalclip_lib.data.device_cache import DeviceRois, device_cache

    rng = np.random.default_rng(2)
    kidney = rng.integers(-1000, 1000, (5, 32, 140, 140)).astype(np.int16)
    lesion = rng.integers(-1000, 1000, (3, 32, 140, 140)).astype(np.int16)
    stacked, joined = StackedRois(kidney, lesion), np.concatenate([kidney, lesion])
    assert stacked.shape == joined.shape and stacked.nbytes == joined.nbytes
    np.testing.assert_array_equal(stacked[3:7], joined[3:7])
    assert stacked[8:].shape == (0, 32, 140, 140)
    on_device = device_cache(stacked, "always", "cpu")
    assert isinstance(on_device, DeviceRois)
    np.testing.assert_array_equal(on_device.tensor.numpy(), joined)


def test_one_process_and_two_see_the_same_global_batches():
    """Rank r of 2 with batch 4 loads its share of the global batch of 8 that one process loads,
    with the same (epoch, index) keys, so augmentations match too."""
    from torch.utils.data.distributed import DistributedSampler

    from renalclip_lib.training.common import EpochKeyedSampler, make_loader

    class Keys(torch.utils.data.Dataset):
        def __len__(self):
            return 21

        def item_rng(self, key, stream=0):
            return None

        def __getitem__(self, key):
            return torch.tensor(key)

    one = make_loader(Keys(), 8, True, seed=3)
    ranks = []
    for rank in range(2):
        s = EpochKeyedSampler(DistributedSampler(Keys(), num_replicas=2, rank=rank, shuffle=True, seed=3))
        ranks.append(torch.utils.data.DataLoader(Keys(), batch_size=4, sampler=s, drop_last=True))
    for epoch in (0, 1):
        for loader in (one, *ranks):
            loader.sampler.set_epoch(epoch)
        singles = [sorted(map(tuple, b.tolist())) for b in one]
        pairs = [sorted(map(tuple, a.tolist() + b.tolist())) for a, b in zip(*ranks)]
        assert singles[:2] == pairs[:2] and all(k[0] == epoch for k in singles[0])
    assert [k[1] for k in singles[0]] != list(range(8))   # shuffled


def test_metric_helpers_match_scikit_learn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200).astype(float)
    p = rng.dirichlet(np.ones(3), 200)
    assert auc_score(y, p) == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    y[:10] = np.nan
    assert auc_score(y, p) == pytest.approx(roc_auc_score(y[10:], p[10:], multi_class="ovr", average="macro"))
    assert np.isnan(auc_score(np.ones(5), rng.random(5)))
    w = class_weights(np.array([0, 0, 0, 1, np.nan]), 3)
    assert w[2] == 0 and w[1] == pytest.approx(3 * w[0]) and w[:2].mean() == pytest.approx(1.0)


def test_masked_cross_entropy_is_torchs_on_the_known_rows():
    from renalclip_lib.training.common import masked_cross_entropy

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(9, 3, generator=g, requires_grad=True)
    target = torch.tensor([0, 2, float("nan"), 1, -1, 2, 2, 0, float("nan")])
    known = ~torch.isnan(target) & (target >= 0)
    weight = torch.tensor([0.5, 2.0, 1.5])
    for w in (None, weight):
        got = masked_cross_entropy(logits, target, w)
        ref = torch.nn.functional.cross_entropy(logits[known], target[known].long(), weight=w)
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-7)
        g_got, = torch.autograd.grad(got, logits)
        g_ref, = torch.autograd.grad(ref, logits)
        torch.testing.assert_close(g_got, g_ref, rtol=1e-6, atol=1e-7)
    none_known = masked_cross_entropy(logits, torch.full((9,), float("nan")), weight)
    assert float(none_known) == 0.0
    assert torch.count_nonzero(torch.autograd.grad(none_known, logits)[0]) == 0


def test_shutdown_leaves_the_process_group_and_is_a_no_op_without_one(tmp_path):
    import torch.distributed as dist

    from renalclip_lib.training.distributed import shutdown

    shutdown()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert dist.is_initialized()
    shutdown()
    assert not dist.is_initialized()
    shutdown(wait_for_peers=False)


EXITING_WORKER = r'''
import sys, torch, torch.distributed as dist
from renalclip_lib.training.distributed import exit_worker
exit_worker(5)
print("no group: exit_worker returned")
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))   # keeps the Gloo group alive past destroy
sys.stdout.write("buffered, unflushed")
exit_worker(3)
print("not reached")
'''


def test_exit_worker_leaves_with_the_code_and_flushes_what_was_written(tmp_path):
    """Inside a group: the given exit code, buffered output kept, nothing after it runs; outside: a no-op."""
    script = tmp_path / "worker.py"
    script.write_text(EXITING_WORKER, encoding="utf-8")
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | {"PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "store")], capture_output=True, text=True,
                         cwd=root, env=env, timeout=120)
    assert out.returncode == 3, out.stderr[-2000:]
    assert out.stdout == "no group: exit_worker returned\nbuffered, unflushed"


def test_class_weighted_attribute_loss_is_the_balanced_cross_entropy_of_each_question():
    from sklearn.utils.class_weight import compute_class_weight

    from renalclip_lib.questionnaire import QUESTIONS
    from renalclip_lib.training.attributes import HEAD_NAMES, AttributeTask

    rng = np.random.default_rng(1)
    n = 40
    target = np.stack([rng.choice(np.r_[np.arange(q.n_classes), -1], n, p=None) for q in QUESTIONS], 1).astype(np.float32)
    target[:, 6] = np.where(np.arange(n) < 3, 5, 1)
    logits = {h: torch.randn(n, q.n_classes, generator=torch.Generator().manual_seed(i))
              for i, (h, q) in enumerate(zip(HEAD_NAMES, QUESTIONS))}
    model = lambda x: (None, logits)  # noqa: E731
    batch = {"image": torch.zeros(n, 1, 2, 2, 2), "target": torch.as_tensor(target)}
    weights = [class_weights(target[:, i], q.n_classes) for i, q in enumerate(QUESTIONS)]
    weighted, _ = AttributeTask(model, weights).loss(model, batch, "cpu")
    plain, _ = AttributeTask(model).loss(model, batch, "cpu")
    ref_weighted = ref_plain = 0.0
    for i, (h, q) in enumerate(zip(HEAD_NAMES, QUESTIONS)):
        known = target[:, i] >= 0
        y = target[known, i].astype(int)
        present = np.unique(y)
        w = np.zeros(q.n_classes)
        w[present] = compute_class_weight("balanced", classes=present, y=y)
        lt, yt = logits[h][torch.as_tensor(known)], torch.as_tensor(y)
        ref_weighted += float(torch.nn.functional.cross_entropy(lt, yt, weight=torch.as_tensor(w, dtype=torch.float32)))
        ref_plain += float(torch.nn.functional.cross_entropy(lt, yt))
    assert float(weighted) == pytest.approx(ref_weighted, rel=1e-5)
    assert float(plain) == pytest.approx(ref_plain, rel=1e-5)
    assert abs(ref_weighted - ref_plain) > 0.1


def test_repeat_factors_follow_lvis_rule_per_column_and_take_the_rarest_answer():
    """r(answer) = max(1, sqrt(t / f)), f the answer's share among the samples that answer that
    column; a sample's factor is the largest over its answers; unknown answers (NaN, -1) have no say."""
    from renalclip_lib.training.common import repeat_factors

    a = np.r_[np.zeros(90), np.ones(10)]                        # answer 1: f = 0.1
    b = np.r_[np.full(50, np.nan), np.zeros(45), np.full(5, 2)]  # known on 50: answer 2 has f = 0.1
    b[95:] = [2, 2, 2, 2, -1]                                   # 4 of 49 known -> f = 4/49
    r = repeat_factors(np.stack([a, b], 1), 0.4)
    expect = np.ones(100)
    expect[90:] = 2.0                                            # sqrt(0.4 / 0.1)
    expect[95:99] = np.sqrt(0.4 / (4 / 49))
    np.testing.assert_allclose(r, expect)
    assert np.all(repeat_factors(np.stack([a, b], 1), 0.01) == 1.0)   # nothing rarer than 1 %


def test_weighted_sampler_draws_in_proportion_repeats_per_epoch_and_splits_like_distributed_sampler():
    from renalclip_lib.training.common import EpochKeyedSampler, WeightedEpochSampler, make_loader

    w = np.r_[np.ones(18), 9.0, 0.0]                  # index 18 nine times as likely as each other; 19 never
    s = WeightedEpochSampler(w, seed=5)
    counts = np.zeros(20)
    for e in range(400):
        s.set_epoch(e)
        counts += np.bincount(list(s), minlength=20)
    share = counts / counts.sum()
    assert share[19] == 0 and abs(share[18] - 9 / 27) < 0.02 and abs(share[:18].mean() - 1 / 27) < 0.003
    s.set_epoch(7)
    first = list(s)
    s.set_epoch(8)
    assert list(s) != first
    s.set_epoch(7)
    assert list(s) == first and len(first) == len(s) == 20       # a resumed epoch draws the same
    ranks = [WeightedEpochSampler(w, seed=5, num_replicas=2, rank=r) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(7)
    a, b = (list(r) for r in ranks)
    assert len(a) == len(b) == 10
    assert [x for pair in zip(a, b) for x in pair] == first       # rank r takes positions r, r + 2, ...
    odd = np.r_[w, 2.0]                                            # 21: two ranks draw 22, the first 21 as one
    one, r0, r1 = (WeightedEpochSampler(odd, seed=5, num_replicas=n, rank=r) for n, r in ((1, 0), (2, 0), (2, 1)))
    assert [x for pair in zip(r0, r1) for x in pair][:21] == list(one)
    loader = make_loader(torch.utils.data.TensorDataset(torch.arange(20)), 4, True, sample_weights=w, seed=5)
    assert isinstance(loader.sampler, WeightedEpochSampler) and not isinstance(loader.sampler, EpochKeyedSampler)
    with pytest.raises(ValueError, match="sample weights"):
        WeightedEpochSampler(np.zeros(3))
