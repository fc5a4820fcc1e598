"""Contrastive alignment: the loss, the logit scale, checkpoints, the distributed path and the stage."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from renalclip_lib.models import ImageEncoder, load_checkpoint, load_image_encoder  # noqa: E402
from renalclip_lib.models.clip_model import ClipModel, clip_loss, save_clip_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _numpy_infonce(u, v, scale):
    s = scale * u @ v.T
    def ce(m):
        m = m - m.max(axis=1, keepdims=True)
        return -np.mean(np.diag(m) - np.log(np.exp(m).sum(axis=1)))
    return 0.5 * (ce(s) + ce(s.T))


def test_symmetric_infonce_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    got = clip_loss(torch.tensor(u), torch.tensor(v), torch.tensor(14.0), gather=False)
    assert float(got) == pytest.approx(_numpy_infonce(u, v, 14.0), rel=1e-6)
    # Perfectly aligned, well separated pairs at a high scale give a loss near zero.
    e = torch.eye(6)
    assert float(clip_loss(e, e, torch.tensor(100.0), gather=False)) < 1e-6


def test_logit_scale_initialised_and_clamped_as_released():
    model = ClipModel(ImageEncoder(embed_dim=8, width=4))
    assert float(model.logit_scale) == pytest.approx(np.log(1 / 0.07))
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    _, scale = model(torch.zeros(2, 1, 32, 32, 32))
    assert float(scale) == pytest.approx(100.0, rel=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(-3.0)
    assert float(model(torch.zeros(2, 1, 32, 32, 32))[1]) == pytest.approx(1.0)


def test_clip_checkpoint_loads_as_an_image_encoder(tmp_path):
    torch.manual_seed(0)
    model = ClipModel(ImageEncoder(embed_dim=12, width=4)).eval()
    save_clip_model(tmp_path / "best.pt", model, meta={"stage": "clip"})
    ck = load_checkpoint(tmp_path / "best.pt")
    assert ck.flavour == "renalclip" and ck.logit_scale == pytest.approx(np.log(1 / 0.07), rel=1e-6)
    x = torch.randn(2, 1, 32, 64, 64)
    enc = load_image_encoder(tmp_path / "best.pt")
    with torch.no_grad():
        e = enc.embed(x)
        np.testing.assert_allclose(e.numpy(), model.image_encoder.embed(x).numpy(), atol=1e-6)
    assert e.shape == (2, 12) and torch.allclose(e.norm(dim=1), torch.ones(2))


WORKER = r'''
import json, sys, torch, numpy as np
torch.set_num_threads(1)
from renalclip_lib.config import TrainConfig
from renalclip_lib.data.datasets import Unit
from renalclip_lib.models import ImageEncoder, load_checkpoint
from renalclip_lib.training.clip_stage import train_clip
from renalclip_lib.training.distributed import DistContext, exit_worker
out, per_rank = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
n = 8
rois = rng.integers(-200, 300, size=(n, 32, 140, 140)).astype(np.int16)
units = [Unit(f"p{i}:left", {"A": {"row": str(i), "patient_id": f"p{i}", "side": "left"}}) for i in range(n)]
text = rng.normal(size=(n, 1, 24)).astype(np.float32)
cfg = TrainConfig()
cfg.device = "cpu"
o = cfg.clip.optim
o.epochs, o.batch_size, o.amp, o.num_workers, o.progress, o.warmup_ratio = 1, per_rank, "fp32", 0, False, 0.0
o.select_metric, o.select_mode = "train_loss", "min"
torch.manual_seed(0)
ctx = DistContext.from_env("cpu")
res = train_clip(cfg, ImageEncoder(embed_dim=24, width=4), rois, units, text, [], np.zeros((0, 1, 24)), out,
                 ctx=ctx, augment=False)
if ctx.is_main:
    ck = load_checkpoint(out + "/best.pt")
    print("RESULT " + json.dumps({"loss": res["history"][0]["train_loss"],
                                   "head": ck.encoder.global_embedding.head.weight.detach().double().flatten().tolist(),
                                   "conv": ck.encoder.conv1.weight.detach().double().flatten().tolist()}))
exit_worker(0)
'''


def _run(args, env):
    out = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    causes = [ln for ln in out.stderr.splitlines() if "what()" in ln or "Error" in ln or "terminate" in ln]
    assert out.returncode == 0, "\n".join(causes[:20]) + "\n...\n" + out.stderr[-1500:]
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.mark.slow
def test_two_processes_give_the_one_process_loss_and_update(tmp_path):
    """torchrun with 2 CPU processes (Gloo) x 4 samples == 1 process x 8 samples: same loss, same step."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    one = _run([sys.executable, str(script), str(tmp_path / "one"), "8"], env)
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                str(script), str(tmp_path / "two"), "4"], env)
    assert abs(one["loss"] - two["loss"]) < 1e-4
    # After one AdamW step (global-batch BN statistics, gradients through the gather) the weights agree too.
    np.testing.assert_allclose(two["head"], one["head"], atol=1e-5)
    np.testing.assert_allclose(two["conv"], one["conv"], atol=1e-5)


def test_lesion_view_reads_the_lesion_centred_roi_of_the_lesion_kidney():
    """``clip.lesion_view``: a lesion kidney is read from the lesion cache with the given
    probability, the other kidney never; every ROI is filled with a value naming its cache and row."""
    from renalclip_lib.data.augment import train_augment
    from renalclip_lib.data.datasets import group_units, lesion_views
    from renalclip_lib.training.clip_stage import ClipDataset

    shape = (32, 140, 140)
    kidney = np.stack([np.full(shape, -100 + 10 * r, np.int16) for r in range(4)])
    lesion = np.stack([np.full(shape, 200 + 10 * r, np.int16) for r in range(3)])
    kidney_index = [{"row": str(r), "unit": f"p{r // 2}:{side}", "patient_id": f"p{r // 2}", "side": side, "phase": "A"}
                    for r, side in enumerate(("left", "right", "left", "right"))]
    lesion_index = [{"row": "0", "unit": "p0", "patient_id": "p0", "side": "left", "phase": "A"},
                    {"row": "1", "unit": "p0", "patient_id": "p0", "side": "left", "phase": "V"},
                    {"row": "2", "unit": "p1", "patient_id": "p1", "side": "right", "phase": "A"}]
    units = group_units(kidney_index)
    rois, views = lesion_views(kidney, units, lesion, lesion_index)
    assert sorted(views) == [0, 3]                       # p0's left and p1's right kidney hold the lesion
    text = np.zeros((4, 2, 3), np.float32)

    def values(prob, epochs):
        ds = ClipDataset(rois, units, text, augment=train_augment(False, 0, "device"), views=views, view_prob=prob)
        return np.array([[int(ds[(e, i)]["image"][0, 0, 0, 0]) for i in range(4)] for e in range(epochs)])

    assert (values(0.0, 20) == [-100, -90, -80, -70]).all()
    always = values(1.0, 20)
    assert set(always[:, 0]) == {200, 210} and set(always[:, 3]) == {220}     # p0 draws its A or V phase
    assert (always[:, 1] == -90).all() and (always[:, 2] == -80).all()
    half = values(0.5, 200)
    assert 0.4 < (half[:, 0] >= 200).mean() < 0.6 and (half[:, 1] == -90).all()
    # Evaluation (no augmentation) always reads the kidney-centred ROI.
    ev = ClipDataset(rois, units, text, views=views, view_prob=1.0)
    assert ev[0]["image"].shape == (1, 32, 128, 128)
    assert torch.allclose(ev[0]["image"], torch.tensor((-100 + 200) / 500))   # the release's window of -100 HU


def test_phase_embeddings_are_the_evaluation_phase_or_the_mean_over_phases():
    """``clip.fuse_phases``: each unit's normalised mean of its phases' embeddings, each phase's
    computed alone from the centre crop; without it, the arterial-else-venous phase's."""
    from renalclip_lib.data.datasets import group_units
    from renalclip_lib.preprocess.roi import to_model_input
    from renalclip_lib.training.clip_stage import phase_embeddings

    torch.manual_seed(0)
    enc = ImageEncoder(embed_dim=8, width=4).eval()
    rois = np.random.default_rng(1).normal(40, 200, (7, 32, 140, 140)).astype(np.int16)
    phases = {"u0": "VA", "u1": "N", "u2": "DNVA"}
    index, row = [], 0
    for unit, have in phases.items():
        for ph in have:
            index.append({"row": str(row), "unit": unit, "patient_id": unit, "phase": ph})
            row += 1
    units = group_units(index)
    with torch.no_grad():
        single = {r["row"]: enc.embed(torch.from_numpy(to_model_input(rois[int(r["row"])].astype(np.float32)))[None])[0].numpy()
                  for r in index}
    fused = phase_embeddings(enc, rois, units, torch.device("cpu"), 2, fuse=True)
    one = phase_embeddings(enc, rois, units, torch.device("cpu"), 2, fuse=False)
    for i, u in enumerate(units):
        mean = np.mean([single[r["row"]] for r in u.rows.values()], axis=0)
        np.testing.assert_allclose(fused[i], mean / np.linalg.norm(mean), atol=1e-5)
        np.testing.assert_allclose(one[i], single[u.rows[u.eval_phase()]["row"]], atol=1e-5)
    assert [u.eval_phase() for u in units] == ["A", "N", "A"]
    assert not np.allclose(fused[2], one[2], atol=1e-3)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from renalclip_lib.cli import main
    from renalclip_lib.phantom import write_cohort

    root = tmp_path_factory.mktemp("clip")
    manifest = write_cohort(root / "cohort", n_patients=20, seed=5, matrix=64,
                            cohorts={"pretrain": 0.5, "internal": 0.3, "external_noisy": 0.2})
    assert main(["preprocess", "--manifest", str(manifest), "--out", str(root / "cache"), "--quiet"]) == 0
    return root


CLIP_SETS = ["clip.init=random", "model.width=4", "clip.optim.epochs=2", "clip.optim.num_workers=0",
             "clip.prompt_pairs=20", "clip.lesion_view=0.5"]


def _clip_args(stage, run, cache, manifest, extra=()):
    sets = [f"data.cache={cache}", f"data.manifest={manifest}", *CLIP_SETS, *extra]
    return ["train", stage, "--config", "Resources/configs/demo.yaml", "--out", str(run), "--quiet",
            *sum((["--set", s] for s in sets), [])]


@pytest.fixture(scope="module")
def clip_run(cohort):
    """(run folder, the command that trained it): a 2-epoch alignment of the small cohort."""
    from renalclip_lib.cli import main

    run = cohort / "run"
    args = _clip_args("clip", run, cohort / "cache", cohort / "cohort" / "manifest.csv")
    assert main(args) == 0
    return run, args


@pytest.mark.slow
def test_clip_stage_writes_what_evaluate_and_analyze_read(cohort, clip_run):
    from renalclip_lib.cli import main
    from renalclip_lib.evaluation.predictions import read_embeddings, read_predictions
    from renalclip_lib.evaluation.zeroshot import load_prompt_embeddings, zeroshot_probabilities

    run, args = clip_run
    out = run / "clip"
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(history) == 2 and all(np.isfinite(h["train_loss"]) and "val_recall@5" in h for h in history)
    emb = read_embeddings(out / "embeddings.npz")
    assert emb["image"].shape[1] == emb["text"].shape[1] == 384
    assert set(emb["cohort"]) <= {"internal", "external_noisy"}
    preds = read_predictions(out / "predictions.csv", "clip")
    assert {"zeroshot_malignancy", "zeroshot_aggressiveness"} <= set(preds.tasks)
    # The stored prompt embeddings and the checkpoint reproduce the predictions without any text model.
    ck = load_checkpoint(out / "best.pt")
    prompts = load_prompt_embeddings(out / "prompt_embeddings.npz")
    assert prompts["malignancy"][0].shape == (100, 384)
    from renalclip_lib.data.roi_cache import open_cache
    from renalclip_lib.preprocess.roi import to_model_input

    rois, index = open_cache(cohort / "cache", "lesion")
    first = preds.frame["patient_id"].iloc[0]
    rows = [r for r in index if r["patient_id"] == first]
    assert len(rows) > 1                          # demo.yaml's clip.fuse_phases averages over them
    with torch.no_grad():
        each = ck.encoder.embed(torch.from_numpy(np.stack([to_model_input(np.asarray(rois[int(r["row"])], np.float32))
                                                           for r in rows]))).numpy()
    e = each.mean(0, keepdims=True)
    e /= np.linalg.norm(e)
    p = zeroshot_probabilities(e, prompts, "max", logit_scale=float(np.exp(ck.logit_scale)))["malignancy"][0]
    assert p == pytest.approx(preds.frame["zeroshot_malignancy_prob"].iloc[0], abs=1e-4)
    zs = json.loads((out / "zeroshot.json").read_text(encoding="utf-8"))
    assert "malignancy" in zs["tasks"] and zs["fuse_phases"] is True
    mtime = (out / "best.pt").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "best.pt").stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_clip_eval_on_another_cache_reproduces_the_runs_own_outputs_and_rejects_another_text_encoder(cohort, clip_run,
                                                                                                    capsys):
    """``renalclip train clip-eval``: the same patients under another cache folder give the
    embeddings, zero-shot predictions and AUCs the clip stage wrote itself; ``retrieval.json``
    equals a direct ranking of the stored embeddings; a different text encoder is refused."""
    import shutil

    from renalclip_lib.cli import main
    from renalclip_lib.errors import EXIT_BAD_INPUT

    run, _ = clip_run
    other = cohort / "hospital_b"
    if not other.exists():
        shutil.copytree(cohort / "cache", other)
    manifest = cohort / "cohort" / "manifest.csv"
    assert main(_clip_args("clip-eval", run, other, manifest)) == 0
    got, own = run / "clip" / "eval" / "hospital_b", run / "clip"
    assert (got / "text_features" / "features.npz").is_file()          # that cohort's reports, encoded anew
    with np.load(got / "embeddings.npz") as a, np.load(own / "embeddings.npz") as b:
        assert list(a["patient_id"]) == list(b["patient_id"]) and len(a["patient_id"]) >= 2
        np.testing.assert_allclose(a["image"], b["image"], atol=1e-5)
        np.testing.assert_allclose(a["text"], b["text"], atol=1e-5)
        sim, n = a["image"] @ a["text"].T, len(a["patient_id"])
    assert (got / "predictions.csv").read_text(encoding="utf-8") == (own / "predictions.csv").read_text(encoding="utf-8")
    zg, zo = (json.loads((d / "zeroshot.json").read_text(encoding="utf-8")) for d in (got, own))
    assert zg == zo
    ret = json.loads((got / "retrieval.json").read_text(encoding="utf-8"))
    above_text = [int((sim[i] >= sim[i, i]).sum()) - 1 for i in range(n)]
    above_image = [int((sim[:, j] >= sim[j, j]).sum()) - 1 for j in range(n)]
    assert ret["n"] == n and ret["chance@5"] == pytest.approx(min(1.0, 5 / n))
    for k in (1, 3, 5):
        assert ret[f"i2t_recall@{k}"] == pytest.approx(np.mean([x < k for x in above_text]), abs=1e-6)
        assert ret[f"t2i_recall@{k}"] == pytest.approx(np.mean([x < k for x in above_image]), abs=1e-6)
    assert json.loads((own / "retrieval.json").read_text(encoding="utf-8")) == ret
    capsys.readouterr()
    code = main(_clip_args("clip-eval", run, other, manifest, ["clip.text_max_length=64"]))
    assert code == EXIT_BAD_INPUT and "aligned with" in capsys.readouterr().err
    pretrain_all = "data.pretrain_cohorts=[pretrain, internal, external_noisy]"
    assert main(_clip_args("clip-eval", run, other, manifest, [pretrain_all])) == EXIT_BAD_INPUT
    assert "no patient to evaluate" in capsys.readouterr().err
    assert main(_clip_args("clip-eval", cohort / "no_run", other, manifest)) == EXIT_BAD_INPUT
    assert "run the 'clip' stage first" in capsys.readouterr().err


@pytest.mark.slow
def test_ablation_runs_the_four_variants_and_tabulates_them(cohort):
    """``renalclip train ablation``: each variant's encoders are the ones the paper names, and the
    table's recalls equal a direct ranking of the variant's stored embeddings."""
    from renalclip_lib.cli import main
    from renalclip_lib.models import load_checkpoint

    run = cohort / "ablation_run"
    sets = [f"data.cache={cohort / 'cache'}", f"data.manifest={cohort / 'cohort' / 'manifest.csv'}",
            "model.width=4", "attributes.optim.epochs=1", "attributes.optim.num_workers=0", "clip.optim.epochs=1",
            "clip.optim.num_workers=0", "clip.prompt_pairs=20", "text.mntp.steps=2", "text.simcse.steps=2",
            "text.tiny_hidden=32", "text.mntp.batch_size=4", "text.simcse.batch_size=4"]
    assert main(["train", "ablation", "--config", "Resources/configs/demo.yaml", "--out", str(run), "--quiet",
                 *sum((["--set", s] for s in sets), [])]) == 0
    table = json.loads((run / "ablation" / "ablation.json").read_text(encoding="utf-8"))
    assert list(table) == ["renalclip", "no_text_pretrain", "no_image_pretrain", "clip_baseline"]
    kinds = {}
    for variant, row in table.items():
        meta = load_checkpoint(run / "ablation" / variant / "clip" / "best.pt").meta
        kinds[variant] = (meta["init"] != "random", meta["text_encoder"]["kind"])
        with np.load(run / "ablation" / variant / "clip" / "embeddings.npz") as z:
            ext = np.array([c == "external_noisy" for c in z["cohort"]])
            sim = z["image"][ext] @ z["text"][ext].T
        n = int(ext.sum())
        assert row["n"] == n and row["chance@5"] == pytest.approx(min(1.0, 5 / n))
        above_text = [int((sim[i] >= sim[i, i]).sum()) - 1 for i in range(n)]      # other texts >= own
        above_image = [int((sim[:, j] >= sim[j, j]).sum()) - 1 for j in range(n)]
        for k in (1, 5):
            assert row[f"i2t_recall@{k}"] == pytest.approx(np.mean([a < k for a in above_text]), abs=1e-6)
            assert row[f"t2i_recall@{k}"] == pytest.approx(np.mean([a < k for a in above_image]), abs=1e-6)
        assert 0.0 <= row["zeroshot_malignancy_auc"] <= 1.0
    assert kinds == {"renalclip": (True, "llm2vec"), "no_text_pretrain": (True, "bert"),
                     "no_image_pretrain": (False, "llm2vec"), "clip_baseline": (False, "bert")}
    md = (run / "ablation" / "ablation.md").read_text(encoding="utf-8")
    assert "clip_baseline" in md and "i2t_recall@5 (chance" in md
