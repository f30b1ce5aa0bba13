"""Which form of D tells a trained S's right voxels from its wrong ones? (issue 10, the levers)

    python benchmarks/d_levers.py --model runs/hippo/sup144 [--levers baseline,decoder,...]
        [--iterations 600] [--threads 2] [--results benchmarks/results/d_levers/sup144]

Each lever is an ordinary ``advseg train`` run on the model's own dataset and split: S starts from the
model's best checkpoint (``train.init_from``) and stays frozen for the whole run
(``adversarial.d_warmup_iterations`` = ``train.iterations``), so only D learns, with the study's L_D
on the labeled training cases, and the D diagnostics of every validation
(:mod:`advseg.training.diagnostics`) compare D's confidence with S's own max-softmax on the validation
cases, for one and the same S. The table gives the last validation's figures: ``conf_auc_correct``
(D), ``softmax_auc_correct`` (S's max-softmax, the bar), ``product_auc_correct`` (D x softmax), the
error rate of all region voxels against that of the voxels passing T_semi = 0.2 (and the share that
passes), and the share of the region each confidence keeps at 97 % accuracy. One JSON per lever goes
into ``--results`` (small, committed); run folders into ``--out`` (scratch).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # share the 2 cores politely (see hippocampus.py)

REPO = Path(__file__).resolve().parents[1]

#: lever name -> config overrides on top of the study's D (fcn, d_channels of the model's preset)
LEVERS: dict[str, list[str]] = {
    "baseline": [],
    "lr_1e-3": ["adversarial.d_lr=0.001"],
    "d_steps_3": ["adversarial.d_steps=3"],
    "wide": ["adversarial.d_channels=[32, 64, 128, 128]"],
    "shallow_1/4": ["adversarial.d_channels=[16, 32]"],
    "concat_input": ["adversarial.d_input=concat"],
    "soft_fake": ["adversarial.onehot_fake=false"],
    "smoothing_0.1": ["adversarial.d_label_smoothing=0.1"],
    "instance_noise_0.1": ["adversarial.d_instance_noise=0.1"],
    "spectral_norm": ["adversarial.d_spectral_norm=true"],
    "decoder": ["adversarial.d_decoder=true"],
    "errors_target": ["adversarial.d_target=errors"],
    "decoder+errors": ["adversarial.d_decoder=true", "adversarial.d_target=errors"],
    "decoder+errors+lr_1e-3": ["adversarial.d_decoder=true", "adversarial.d_target=errors",
                               "adversarial.d_lr=0.001"],
}

KEYS = ("conf_auc_correct", "softmax_auc_correct", "product_auc_correct", "d_auc_real_fake",
        "region_accuracy", "d_pass_fraction", "d_pass_accuracy", "d_t_calibrated",
        "d_pass_fraction_calibrated", "softmax_t_calibrated", "softmax_pass_fraction_calibrated",
        "product_pass_fraction_calibrated", "roi_voxels", "wrong_voxels")


def lever_config(model: Path, overrides: list[str], iterations: int):
    from advseg.config import apply_overrides, load_config

    cfg = load_config(model / "config.yaml")
    checkpoint = model / "checkpoint_best.pt"
    if not checkpoint.is_file():
        checkpoint = model / "checkpoint_last.pt"
    every = max(1, iterations // 3)
    base = [
        "adversarial.enabled=true", "adversarial.semi=false", "adversarial.mode=semi_adv",
        "adversarial.pretrain_iterations=0", "adversarial.diagnostics=true",
        f"adversarial.d_warmup_iterations={iterations}", f"train.iterations={iterations}",
        f"train.val_every={every}", f"train.checkpoint_every={iterations}", f"train.init_from={checkpoint}",
        "train.early_stop_patience=null",
    ]
    return apply_overrides(cfg, base + overrides)


def last_validation(run: Path) -> dict:
    rows = [json.loads(r) for r in (run / "log.jsonl").read_text().splitlines()]
    vals = [r for r in rows if r.get("kind") == "val"]
    return vals[-1] if vals else {}


def fmt(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="a trained (supervised) run folder")
    p.add_argument("--levers", default="all", help=f"comma-separated, of: {', '.join(LEVERS)}")
    p.add_argument("--iterations", type=int, default=600, help="D iterations per lever")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None,
                   help="scratch run folders (default runs/d_levers/<model>)")
    p.add_argument("--results", type=Path, default=None,
                   help="per-lever JSON (default benchmarks/results/d_levers/<model name>)")
    args = p.parse_args(argv)

    import torch

    from advseg.errors import InputError
    from advseg.io.atomic import atomic_write_text
    from advseg.training.api import train_run

    torch.set_num_threads(args.threads)
    names = list(LEVERS) if args.levers == "all" else [n.strip() for n in args.levers.split(",")]
    unknown = [n for n in names if n not in LEVERS]
    if unknown:
        print(f"error: unknown lever(s) {', '.join(unknown)} (known: {', '.join(LEVERS)})", file=sys.stderr)
        return 2
    info = json.loads((args.model / "dataset_info.json").read_text())
    data = Path(info["dataset"])
    out = args.out or REPO / "runs" / "d_levers" / args.model.name
    results = args.results or REPO / "benchmarks" / "results" / "d_levers" / args.model.name
    command = shlex.join(["python", "benchmarks/d_levers.py", *(argv if argv is not None else sys.argv[1:])])
    rows = []
    for name in names:
        run = out / name.replace("/", "_")
        try:
            if not (run / "checkpoint_last.pt").is_file():
                t0 = time.perf_counter()
                train_run(lever_config(args.model, LEVERS[name], args.iterations), data, run, progress=False)
                seconds = time.perf_counter() - t0
            else:
                seconds = None
        except InputError as exc:
            print(f"error: {exc.one_line()}", file=sys.stderr)
            return 2
        val = last_validation(run)
        doc = {"lever": name, "overrides": LEVERS[name], "model": str(args.model),
               "iterations": args.iterations, "seconds": seconds, "command": command,
               "torch_threads": args.threads,
               "validation": {k: val.get(k) for k in KEYS},
               "history": [{k: r.get(k) for k in ("iteration", "conf_auc_correct", "product_auc_correct")}
                           for r in (json.loads(x) for x in (run / "log.jsonl").read_text().splitlines())
                           if r.get("kind") == "val"]}
        atomic_write_text(results / f"{name.replace('/', '_')}.json", json.dumps(doc, indent=1) + "\n")
        rows.append(doc)
        v = doc["validation"]
        print(f"{name}: D AUC {fmt(v['conf_auc_correct'])}, softmax AUC {fmt(v['softmax_auc_correct'])}, "
              f"product AUC {fmt(v['product_auc_correct'])} ({fmt(seconds, 0)} s)", flush=True)

    print("\n| lever | D AUC | softmax AUC | D x softmax AUC | D real/fake AUC | error all | error D>0.2 "
          "(pass) | kept at 97 %: D / softmax / product |")
    print("|---|---|---|---|---|---|---|---|")
    for d in rows:
        v = d["validation"]
        err_all = None if v["region_accuracy"] is None else 1 - v["region_accuracy"]
        err_d = None if v["d_pass_accuracy"] is None else 1 - v["d_pass_accuracy"]
        print(f"| {d['lever']} | {fmt(v['conf_auc_correct'])} | {fmt(v['softmax_auc_correct'])} | "
              f"{fmt(v['product_auc_correct'])} | {fmt(v['d_auc_real_fake'])} | {fmt(err_all)} | "
              f"{fmt(err_d)} ({fmt(v['d_pass_fraction'], 2)}) | {fmt(v['d_pass_fraction_calibrated'], 2)} / "
              f"{fmt(v['softmax_pass_fraction_calibrated'], 2)} / "
              f"{fmt(v['product_pass_fraction_calibrated'], 2)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
