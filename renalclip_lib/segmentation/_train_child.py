"""Child process of ``train_synthetic``: nnU-Net v2's planning, preprocessing and training.

Run as ``python -m renalclip_lib.segmentation._train_child CONFIG.json`` by ``train.py`` with
``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results`` and the worker counts set in this
process's environment only (nnU-Net reads them at import time). Steps, all through nnU-Net's API:

1. fingerprint + ``ExperimentPlanner`` plans (``nnUNetPlans.json``);
2. a tiny plan: the planner's 3d_fullres configuration with fewer features per stage (and an
   optional patch-size cap), written back to the plans file, other configurations dropped;
3. ``preprocess`` of 3d_fullres;
4. training of one fold with ``ShortTrainer`` (nnUNetTrainer with fewer epochs/iterations);
5. the model folder: ``dataset.json``, ``plans.json``, ``fold_N/checkpoint_final.pth`` without
   optimizer state and saved with ``trainer_name='nnUNetTrainer'`` (inference finds that class).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time


def _tiny_plan(plans: dict, cfg_in: dict) -> dict:
    cfg = plans["configurations"]["3d_fullres"]
    arch = cfg["architecture"]["arch_kwargs"]
    n = int(arch["n_stages"])
    if cfg_in.get("max_stages") and n > int(cfg_in["max_stages"]):
        n = int(cfg_in["max_stages"])
        arch["n_stages"] = n
        for key in ("kernel_sizes", "strides", "n_conv_per_stage"):
            arch[key] = list(arch[key])[:n]
        arch["n_conv_per_stage_decoder"] = list(arch["n_conv_per_stage_decoder"])[:n - 1]
    base, top = int(cfg_in.get("base_features", 8)), int(cfg_in.get("max_features", 80))
    arch["features_per_stage"] = [min(base * 2 ** i, top) for i in range(n)]
    cap = cfg_in.get("max_patch")
    if cap:
        # Keep each axis divisible by the network's total stride along it.
        import numpy as np

        stride = np.prod(np.asarray(arch["strides"], dtype=int), axis=0)
        cfg["patch_size"] = [int(max(s, min(p, int(cap)) // s * s)) for p, s in zip(cfg["patch_size"], stride)]
    cfg["batch_size"] = int(cfg_in.get("batch_size", cfg["batch_size"]))
    plans["configurations"] = {"3d_fullres": cfg}
    return plans


def main(config_path: str) -> None:
    with open(config_path, encoding="utf-8") as fh:
        cfg = json.load(fh)
    import numpy as np
    import torch

    torch.manual_seed(int(cfg.get("seed", 0)))
    np.random.seed(int(cfg.get("seed", 0)))
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg["torch_threads"]))

    from batchgenerators.utilities.file_and_folder_operations import load_json, save_json
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    did, name = int(cfg["dataset_id"]), cfg["dataset_name"]
    t0 = time.time()
    extract_fingerprints([did], num_processes=1, check_dataset_integrity=True, clean=True, verbose=False,
                         show_progress_bar=False)
    plans_id = plan_experiments([did])
    plans_file = os.path.join(nnUNet_preprocessed, name, plans_id + ".json")
    plans = _tiny_plan(load_json(plans_file), cfg.get("plan", {}))
    save_json(plans, plans_file, sort_keys=False)
    preprocess([did], plans_id, configurations=("3d_fullres",), num_processes=(1,), verbose=False,
               show_progress_bar=False)
    t_prep = time.time() - t0
    print(f"[renalclip] planned and preprocessed in {t_prep:.1f} s", flush=True)

    epochs, iters, val_iters = int(cfg["epochs"]), int(cfg["iterations"]), int(cfg["val_iterations"])

    class ShortTrainer(nnUNetTrainer):
        """nnUNetTrainer with fewer epochs and iterations; nothing else changes."""

        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = epochs
            self.num_iterations_per_epoch = iters
            self.num_val_iterations_per_epoch = val_iters
            self.save_every = max(epochs + 1, 50)

    plans = load_json(plans_file)
    plans["continue_training"] = False
    dataset_json = load_json(os.path.join(nnUNet_preprocessed, name, "dataset.json"))
    fold = cfg.get("fold", 0)
    trainer = ShortTrainer(plans, "3d_fullres", fold, dataset_json, torch.device(cfg.get("device", "cpu")))
    t1 = time.time()
    trainer.run_training()
    t_train = time.time() - t1
    print(f"[renalclip] trained {epochs} epochs x {iters} iterations in {t_train:.1f} s", flush=True)

    ck = torch.load(os.path.join(trainer.output_folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    init_args = dict(ck["init_args"])
    init_args["device"] = torch.device("cpu")
    slim = {"network_weights": {k: v.cpu() for k, v in ck["network_weights"].items()},
            "trainer_name": "nnUNetTrainer",
            "init_args": init_args,
            "current_epoch": ck.get("current_epoch"),
            "inference_allowed_mirroring_axes": ck.get("inference_allowed_mirroring_axes")}
    out = cfg["model_out"]
    os.makedirs(os.path.join(out, f"fold_{fold}"), exist_ok=True)
    torch.save(slim, os.path.join(out, f"fold_{fold}", "checkpoint_final.pth"))
    for f in ("dataset.json", "plans.json", "dataset_fingerprint.json"):
        shutil.copy(os.path.join(trainer.output_folder_base, f), os.path.join(out, f))
    log = ck.get("logging", {})
    dice_hist = [float(x) for x in log.get("mean_fg_dice", [])]
    summary = {"epochs": epochs, "iterations_per_epoch": iters, "val_iterations_per_epoch": val_iters,
               "fold": fold, "plan_preprocess_seconds": round(t_prep, 1), "train_seconds": round(t_train, 1),
               "pseudo_dice_last_epoch": dice_hist[-1] if dice_hist else None,
               "pseudo_dice_per_label_last_epoch": dict(zip(
                   [k for k in dataset_json["labels"] if k != "background"],
                   [None if x != x else float(x) for x in (log.get("dice_per_class_or_region") or [[]])[-1]])),
               "train_loss_last_epoch": float(log["train_losses"][-1]) if log.get("train_losses") else None,
               "features_per_stage": plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"],
               "patch_size": plans["configurations"]["3d_fullres"]["patch_size"],
               "spacing": plans["configurations"]["3d_fullres"]["spacing"]}
    with open(os.path.join(out, "training_summary.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2)
    print("[renalclip] " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
