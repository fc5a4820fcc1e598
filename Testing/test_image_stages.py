"""The image stages end to end on a tiny synthetic cohort: cache, attributes, fine-tuning,
survival, compare, phase fusion and data efficiency write what the evaluation reads, and resume."""
import csv
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from renalclip_lib.cli import main  # noqa: E402
from renalclip_lib.phantom import write_cohort  # noqa: E402
from renalclip_lib.questionnaire import QUESTIONS  # noqa: E402
from renalclip_lib.tasks import TASKS  # noqa: E402

pytestmark = pytest.mark.slow

QUICK = ["--set", "model.width=4", "--set", "model.embed_dim=16",
         "--set", "attributes.optim.epochs=1", "--set", "finetune.optim.epochs=1", "--set", "survival.optim.epochs=1",
         "--set", "attributes.optim.num_workers=0", "--set", "finetune.optim.num_workers=0",
         "--set", "survival.optim.num_workers=0", "--set", "data_efficiency.fractions=[0.5,1.0]",
         "--set", "data_efficiency.seeds=[0]", "--quiet"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    manifest = write_cohort(root / "cohort", n_patients=24, seed=5, matrix=64,
                            cohorts={"pretrain": 0.3, "internal": 0.5, "tcia_like": 0.2})
    assert main(["preprocess", "--manifest", str(manifest), "--out", str(root / "cache"), "--quiet"]) == 0
    return root


def _rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_compare_runs_every_stage_and_writes_predictions(cohort):
    run = cohort / "run"
    args = ["train", "compare", "--config", "Resources/configs/demo.yaml", "--out", str(run),
            "--set", f"data.cache={cohort / 'cache'}", "--set", "compare.seeds=[0,1]"] + QUICK
    assert main(args) == 0
    from renalclip_lib.models import load_checkpoint

    att = load_checkpoint(run / "attributes" / "best.pt")
    assert att.flavour == "renalclip"
    assert {n: h.block_forward[2].out_features for n, h in att.classifiers.items()} == \
        {f"text_label_{q.release_id}": q.n_classes for q in QUESTIONS}
    for init in ("random", "attributes"):
        rows = _rows(run / "finetune" / init / "predictions.csv")
        assert rows and {r["split"] for r in rows} <= {"val", "test"}
        r0 = rows[0]
        for task in ("renal_R", "renal_E", "renal_N", "renal_A", "renal_L"):
            probs = [float(r0[f"{task}_prob_{c}"]) for c in range(len(TASKS[task].classes))]
            assert sum(probs) == pytest.approx(1.0, abs=1e-4)
        assert 0 <= float(r0["malignancy_prob"]) <= 1 and r0["malignancy_true"] in ("0", "1")
        surv = _rows(run / "survival" / init / "predictions.csv")
        assert len(surv) == len(rows) and all(np.isfinite(float(r["risk"])) for r in surv)
        ck = load_checkpoint(run / "survival" / init / "best.pt")
        assert ck.cox is not None
    table = (run / "compare.md").read_text(encoding="utf-8")
    assert "malignancy AUC" in table and "rfs_cindex" in table
    means = json.loads((run / "compare.json").read_text(encoding="utf-8"))   # strict JSON (no NaN)
    # Seed 1 is a run of its own; each figure of the table is the mean over the two seeds of the
    # AUC that scikit-learn gives on that seed's predictions.
    from sklearn.metrics import roc_auc_score

    def auc(rows):
        y = [int(r["malignancy_true"]) for r in rows]
        return roc_auc_score(y, [float(r["malignancy_prob"]) for r in rows]) if len(set(y)) == 2 else None

    checked = 0
    for init in ("random", "attributes"):
        seed_rows = [_rows(run / "finetune" / tag / "predictions.csv") for tag in (init, f"{init}_seed1")]
        assert [r["malignancy_prob"] for r in seed_rows[0]] != [r["malignancy_prob"] for r in seed_rows[1]]
        for group, internal in (("internal_validation", True), ("combined_external", False)):
            vals = [auc([r for r in rows if (r["cohort"] == "internal") == internal]) for rows in seed_rows]
            vals = [v for v in vals if v is not None]
            if vals:
                assert means[init][group]["malignancy"] == pytest.approx(float(np.mean(vals)), abs=1e-9)
                checked += 1
    assert checked
    assert json.loads((run / "compare_seeds.json").read_text(encoding="utf-8"))["seeds"] == [0, 1]
    assert "+-" in table and "over 2 fine-tuning seeds" in table
    # Finished stages are not run again.
    mtime = (run / "attributes" / "best.pt").stat().st_mtime_ns
    assert main(args) == 0
    assert (run / "attributes" / "best.pt").stat().st_mtime_ns == mtime


def test_phase_fusion_and_data_efficiency(cohort):
    run = cohort / "run2"
    base = ["--config", "Resources/configs/demo.yaml", "--out", str(run), "--set", f"data.cache={cohort / 'cache'}",
            "--set", "finetune.init=random"] + QUICK
    assert main(["train", "finetune"] + base) == 0
    assert main(["train", "phase-fusion"] + base) == 0
    fused = run / "finetune" / "random" / "phase_fusion"
    single, allp = _rows(fused / "predictions_single.csv"), _rows(fused / "predictions_N+A+V+D.csv")
    assert [r["patient_id"] for r in single] == [r["patient_id"] for r in allp]
    assert main(["train", "data-efficiency"] + base + ["--set", "data_efficiency.inits=[random]"]) == 0
    de = _rows(run / "data_efficiency.csv")
    assert {(r["model"], r["fraction"], r["seed"]) for r in de} == {("random", "0.5", "0"), ("random", "1.0", "0")}
    assert {r["task"] for r in de} == set(TASKS[t].name for t in ("renal_R", "renal_E", "renal_N", "renal_A", "renal_L",
                                                                   "malignancy", "aggressiveness"))


def test_the_roi_cache_on_the_device_trains_the_same_model(cohort, monkeypatch):
    """``optim.device_cache: always`` (rows from the loader, ROIs gathered from the cache held on the
    device, here the CPU) trains and predicts exactly what reading the memory-mapped cache does."""
    from renalclip_lib.data.device_cache import DeviceRois

    gathered = []
    gather = DeviceRois.gather
    monkeypatch.setattr(DeviceRois, "gather", lambda self, rows, crop: gathered.append(crop) or gather(self, rows, crop))
    preds = {}
    for mode in ("never", "always"):
        run = cohort / f"run_cache_{mode}"
        assert main(["train", "finetune", "--config", "Resources/configs/demo.yaml", "--out", str(run),
                     "--set", f"data.cache={cohort / 'cache'}", "--set", "finetune.init=random",
                     "--set", "finetune.optim.augment_on=device", "--set", "finetune.optim.epochs=2",
                     "--set", f"finetune.optim.device_cache={mode}"] + QUICK) == 0
        preds[mode] = _rows(run / "finetune" / "random" / "predictions.csv")
    assert len(preds["always"]) == len(preds["never"]) > 0
    assert set(gathered) == {True, False}       # training batches (raw) and evaluation batches (cropped)
    for a, b in zip(preds["never"], preds["always"]):
        assert a["patient_id"] == b["patient_id"]
        assert float(a["malignancy_prob"]) == pytest.approx(float(b["malignancy_prob"]), abs=1e-6)
        assert float(a["renal_R_prob_2"]) == pytest.approx(float(b["renal_R_prob_2"]), abs=1e-6)


def test_attribute_repeat_threshold_draws_kidneys_by_their_rarest_answer(cohort, monkeypatch):
    """``attributes.repeat_threshold: t``: the training loader draws each kidney in proportion to
    max(1, sqrt(t / f)) over its known answers (f: the answer's share among the training kidneys
    that answer that question), counted here from the cache index; t = 0 draws uniformly."""
    from collections import Counter

    import renalclip_lib.training.attributes as stage
    from renalclip_lib.data.datasets import parse_label

    seen = []
    make_loader = stage.make_loader

    def record(dataset, batch_size, train, *args, **kw):
        if train:
            seen.append((dataset, args[1] if len(args) > 1 else kw.get("sample_weights")))
        return make_loader(dataset, batch_size, train, *args, **kw)

    monkeypatch.setattr(stage, "make_loader", record)
    base = ["train", "attributes", "--config", "Resources/configs/demo.yaml", "--set", f"data.cache={cohort / 'cache'}"] + QUICK
    assert main(base + ["--out", str(cohort / "run_repeat"), "--set", "attributes.repeat_threshold=0.3"]) == 0
    assert main(base + ["--out", str(cohort / "run_uniform")]) == 0
    (dataset, weights), (_, uniform) = seen
    assert uniform is None
    answers = [[parse_label(u.first.get(f"q_{q.key}", "")) for q in QUESTIONS] for u in dataset.units]
    expect = np.ones(len(answers))
    for j in range(len(QUESTIONS)):
        known = [a[j] for a in answers if a[j] >= 0]
        share = {v: c / len(known) for v, c in Counter(known).items()}
        for i, a in enumerate(answers):
            if a[j] >= 0:
                expect[i] = max(expect[i], (0.3 / share[a[j]]) ** 0.5)
    np.testing.assert_allclose(weights, expect)
    assert weights.max() > 1.5


def test_attribute_lesion_view_trains_on_the_lesion_kidneys_lesion_centred_rois(cohort, monkeypatch, capsys):
    """``attributes.lesion_view: 1``: every read of a kidney that holds the lesion, in training and
    validation, comes from the lesion cache (rows past the kidney cache's), the other kidneys' never;
    the targets stay that kidney's answers; a cache without lesion ROIs is one clear error."""
    import shutil

    from renalclip_lib.data.datasets import RoiDataset
    from renalclip_lib.data.roi_cache import open_cache

    from renalclip_lib.data.datasets import parse_label

    kidney_rois, kidney_index = open_cache(cohort / "cache", "kidney")
    _, lesion_index = open_cache(cohort / "cache", "lesion")
    lesion_kidneys = {(r["patient_id"], r["side"]) for r in lesion_index}
    answers = {(r["patient_id"], r["side"]): [parse_label(r[f"q_{q.key}"]) for q in QUESTIONS] for r in kidney_index}
    reads, val_reads = [], []
    item_of = RoiDataset.item_of

    def record(self, unit, key, i):
        item = item_of(self, unit, key, i)
        from_lesion = min(int(r["row"]) for r in unit.rows.values()) >= len(kidney_rois)
        kidney = (self.units[i].first["patient_id"], self.units[i].first["side"])
        (reads if self.augment is not None else val_reads).append((kidney, from_lesion))
        np.testing.assert_array_equal(item["target"].numpy(), np.asarray(answers[kidney], np.float32))
        return item

    monkeypatch.setattr(RoiDataset, "item_of", record)
    args = ["train", "attributes", "--config", "Resources/configs/demo.yaml", "--out", str(cohort / "run_lesion_view"),
            "--set", f"data.cache={cohort / 'cache'}", "--set", "attributes.lesion_view=1.0"] + QUICK
    assert main(args) == 0
    assert reads and {kidney in lesion_kidneys for kidney, _ in reads} == {True, False}
    assert all(from_lesion == (kidney in lesion_kidneys) for kidney, from_lesion in reads)
    assert {kidney in lesion_kidneys for kidney, _ in val_reads} == {True, False}
    assert all(from_lesion == (kidney in lesion_kidneys) for kidney, from_lesion in val_reads)

    kidney_only = cohort / "cache_kidney_only"
    kidney_only.mkdir()
    for name in ("done_kidney.json", "index_kidney.csv", "rois_kidney.npy"):
        shutil.copy(cohort / "cache" / name, kidney_only / name)
    args[args.index(f"data.cache={cohort / 'cache'}")] = f"data.cache={kidney_only}"
    args[args.index("--out") + 1] = str(cohort / "run_no_lesion_cache")
    capsys.readouterr()
    assert main(args) != 0
    err = capsys.readouterr().err
    assert "attributes.lesion_view needs the lesion-centred ROIs" in err and str(kidney_only) in err


def test_finetune_head_init_starts_the_heads_from_the_attribute_checkpoints_questions(cohort, monkeypatch, capsys):
    """``finetune.head_init: attributes``: fine-tuning starts the malignancy and R heads from that run's
    attribute checkpoint (question 12's and question 3's weights, merged per task class and centred);
    the other heads start random; the checkpoint records which; with a random encoder it is refused."""
    import renalclip_lib.training.finetune as stage
    from renalclip_lib.models import load_checkpoint

    run = cohort / "run_head_init"
    base = ["--config", "Resources/configs/demo.yaml", "--out", str(run), "--set", f"data.cache={cohort / 'cache'}"] + QUICK
    assert main(["train", "attributes"] + base) == 0
    question = load_checkpoint(run / "attributes" / "best.pt").classifiers["text_label_18"].block_forward[2].weight
    merged = torch.stack([(question[1] + question[3]) / 2, (question[2] + question[4]) / 2])
    centred = merged - merged.mean(0)
    started = {}
    fit = stage.fit

    def record(task, *args, **kw):
        started.update({t: h.block_forward[2].weight.detach().clone() for t, h in task.model.classifiers.items()})
        return fit(task, *args, **kw)

    monkeypatch.setattr(stage, "fit", record)
    assert main(["train", "finetune", "--set", "finetune.head_init=attributes"] + base) == 0
    torch.testing.assert_close(started["malignancy"][:2], centred, atol=1e-6, rtol=0)
    torch.testing.assert_close(started["malignancy"][2:4], -centred, atol=1e-6, rtol=0)
    assert not torch.allclose(started["renal_E"][:2], started["renal_E"][2:4].neg())
    meta = load_checkpoint(run / "finetune" / "attributes" / "best.pt").meta
    assert meta["heads_from_questions"] == ["renal_R", "malignancy"]
    capsys.readouterr()
    assert main(["train", "finetune", "--init", "random", "--set", "finetune.head_init=attributes"] + base) == 2
    assert "finetune.head_init 'attributes' needs the attribute checkpoint's heads" in capsys.readouterr().err
