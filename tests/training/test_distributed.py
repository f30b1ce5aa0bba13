"""Multi-process training under ``torchrun`` with DistributedDataParallel, on the CPU (gloo backend).

Each test starts ``torchrun --standalone --nproc_per_node=2`` on :mod:`tests.training.ddp_worker`,
which calls :func:`advseg.training.api.train_run` (what ``torchrun -m advseg train`` runs) on the tiny
phantom set and reports, per rank, a SHA-256 of the final weights and optimizer states and every
file-system write the rank made. The processes run in their own session and are killed on a timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from advseg.runtime.checkpoint import load_checkpoint
from advseg.training import distributed

WORKER = Path(__file__).with_name("ddp_worker.py")
TORCHRUN = Path(sys.executable).with_name("torchrun")
TIMEOUT_S = 300


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1",
               ADVSEG_CACHE=str(tmp_path / "cache"), ADVSEG_DIST_TIMEOUT_MIN="4")
    return env


def _run(cmd: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own session; on a timeout the whole process group is killed."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"timed out after {TIMEOUT_S} s:\n{out[-4000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, "")
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd[:4])} ... exited {proc.returncode}:\n{out[-4000:]}")
    return result


def _worker(tmp_path: Path, spec: dict, nproc: int | None = 2, check: bool = True,
            output: list[str] | None = None) -> list[dict]:
    """Run the worker (under torchrun with ``nproc`` ranks, or as one plain process for None); its
    combined output is appended to ``output``."""
    result = tmp_path / f"result_{len(list(tmp_path.glob('result_*')))}.json"
    spec = {**spec, "result": str(result)}
    cmd = [sys.executable, str(WORKER), json.dumps(spec)]
    if nproc is not None:
        cmd = [str(TORCHRUN), "--standalone", f"--nproc_per_node={nproc}", str(WORKER), json.dumps(spec)]
    proc = _run(cmd, _env(tmp_path), check=check)
    if output is not None:
        output.append(proc.stdout)
    return json.loads(result.read_text()) if result.exists() else []


def _train_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r["kind"] == "train"]


def _no_writes(report: dict) -> None:
    assert report["writes"] == [], f"rank {report['rank']} wrote: {report['writes']}"


def test_single_process_helpers_are_no_ops() -> None:
    assert distributed.world_size() == 1 and distributed.is_main()
    assert distributed.stream_seed(5, 0) == 5 and distributed.stream_seed(5, 2) == [5, 2]
    assert distributed.mean_scalars({"loss": 1.5, "kind": "train"}) == {"loss": 1.5, "kind": "train"}
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    with pytest.raises(ValueError, match="boom"):
        distributed.agree(ValueError("boom"))
    distributed.agree(None)
    assert distributed.backend_for(cuda=False) == "gloo"
    assert distributed.backend_for(cuda=True) == "cpu:gloo,cuda:nccl"


def test_supervised_two_ranks(tiny_phantom: Path, tmp_path: Path) -> None:
    """2 ranks: equal weights and optimizer states on both, the loss goes down, only rank 0 writes, and
    the checkpoint holds both ranks' own (different) sampler streams."""
    run = tmp_path / "run"
    reports = _worker(tmp_path, {"data": str(tiny_phantom), "out": str(run), "preset": "res_unet_aux+tiny"})
    assert [r["rank"] for r in reports] == [0, 1]
    assert reports[0]["digest"] == reports[1]["digest"]
    _no_writes(reports[1])
    rows = _train_rows(run)
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]  # one log, written once (by rank 0)
    assert rows[-1]["loss_vox"] < rows[0]["loss_vox"]
    state = load_checkpoint(run / "checkpoint_last.pt")
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    s0, s1 = (r["data"]["labeled"]["sampler"] for r in state["ranks"])
    assert s0 == state["data"]["labeled"]["sampler"]  # top level: rank 0's (one-process tools read it)
    assert s0["drawn"] == s1["drawn"] == 4
    assert s0["bit_generator"] != s1["bit_generator"]  # each rank its own stream
    assert not torch.equal(state["ranks"][0]["rng"]["torch"], state["ranks"][1]["rng"]["torch"])


@pytest.mark.slow
def test_two_ranks_batch_one_equal_one_rank_batch_two(tiny_phantom: Path, tmp_path: Path) -> None:
    """2 ranks x batch 1 train as 1 process x batch 2 on the same patches (those of ranks 0 and 1),
    up to floating-point noise. Instance norm: batch norm's batch statistics would differ by design
    (SyncBatchNorm, CUDA only, makes them global)."""
    spec = {"data": str(tiny_phantom), "preset": "res_unet_aux+tiny", "overrides": ["network.norm=instance"]}
    _worker(tmp_path, {**spec, "out": str(tmp_path / "ddp"), "weights": str(tmp_path / "ddp.pt")})
    _worker(tmp_path, {**spec, "out": str(tmp_path / "one"), "weights": str(tmp_path / "one.pt"),
                       "pair_streams": True}, nproc=None)
    ddp, one = torch.load(tmp_path / "ddp.pt"), torch.load(tmp_path / "one.pt")
    moved = 0.0
    for k, v in one["end"]["S"].items():
        torch.testing.assert_close(ddp["end"]["S"][k], v, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ddp["start"]["S"][k], one["start"]["S"][k], rtol=0, atol=0)
        if v.is_floating_point():
            moved = max(moved, float((v - one["start"]["S"][k]).abs().max()))
    assert moved > 1e-3  # training changed the weights far beyond the tolerance
    # the adaptive CE's running Dice is pooled over the global batch: the same on both
    dice = "base.running_dice"  # deep supervision wraps the adaptive CE
    assert float(one["end"]["loss_vox"][dice].abs().sum()) > 0
    torch.testing.assert_close(ddp["end"]["loss_vox"][dice], one["end"]["loss_vox"][dice])


@pytest.mark.slow
def test_semi_adversarial_sigkill_resume_is_bit_identical(tiny_phantom: Path, tmp_path: Path) -> None:
    """Semi-adversarial S + D on 2 ranks (unlabeled batches after pre-training): equal nets on both ranks,
    rank 1 writes nothing; a run SIGKILLed after its iteration-4 checkpoint and resumed under torchrun ends
    bit-identical to the uninterrupted run; a 2-rank checkpoint also resumes on 1 process."""
    spec = {"data": str(tiny_phantom), "preset": "res_unet_aux_adv_semi+tiny",
            "overrides": ["train.iterations=6"]}
    full = _worker(tmp_path, {**spec, "out": str(tmp_path / "full")})
    assert full[0]["digest"] == full[1]["digest"]
    _no_writes(full[1])
    rows = _train_rows(tmp_path / "full")
    assert any(r["unlabeled"] for r in rows) and rows[-1]["loss_vox"] < rows[0]["loss_vox"]

    killed = _worker(tmp_path, {**spec, "out": str(tmp_path / "killed"), "kill_at": 5}, check=False)
    assert killed == []  # rank 0 died before reporting
    assert load_checkpoint(tmp_path / "killed" / "checkpoint_last.pt")["iteration"] == 4
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "killed", other)
    resumed = _worker(tmp_path, {**spec, "out": str(tmp_path / "killed"), "resume": True})
    assert [r["iteration"] for r in resumed] == [6, 6]
    assert resumed[0]["digest"] == resumed[1]["digest"] == full[0]["digest"]
    _no_writes(resumed[1])
    assert [r["iteration"] for r in _train_rows(tmp_path / "killed")] == list(range(1, 7))

    # the 2-rank checkpoint resumed on 1 process: it continues, not bit-exact (half the global batch)
    one = _worker(tmp_path, {**spec, "out": str(other), "resume": True}, nproc=None)
    assert one[0]["iteration"] == 6 and one[0]["digest"] != full[0]["digest"]


def test_bad_input_stops_all_ranks_with_one_message(tmp_path: Path) -> None:
    """``torchrun -m advseg train`` on a missing dataset: every rank stops, one ``error:`` line, exit != 0,
    nothing written."""
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "advseg", "train",
           "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run"),
           "--preset", "res_unet_aux+tiny"]
    proc = _run(cmd, _env(tmp_path), check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "missing" in errors[0], proc.stdout[-3000:]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_nan_on_one_rank_stops_every_rank(tiny_phantom: Path, tmp_path: Path) -> None:
    """A NaN loss on rank 1 alone (iteration 3): both ranks stop at once with one message naming rank 1;
    the iteration-2 checkpoint is kept and nothing later is logged."""
    run = tmp_path / "run"
    output: list[str] = []
    reports = _worker(tmp_path, {"data": str(tiny_phantom), "out": str(run), "preset": "res_unet_aux+tiny",
                                 "nan_at": {"rank": 1, "iteration": 3}}, check=False, output=output)
    assert reports == []
    errors = [line for line in output[0].splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output[0][-3000:]
    assert "NaN/Inf on rank(s) 1 at iteration 3" in errors[0]
    assert load_checkpoint(run / "checkpoint_last.pt")["iteration"] == 2
    assert [r["iteration"] for r in _train_rows(run)] == [1, 2]


GAN_TINY = {"stages": [[4, 4, 4], [8, 8, 8], [8, 16, 16]], "channels": [8, 4, 4], "latent_channels": 4,
            "iterations_per_stage": 4, "fade_fraction": 1.0, "batch_sizes": [4], "grid_samples": 2,
            "checkpoint_every": 100, "ema_beta": 0.9, "seed": 3}


@pytest.mark.slow
def test_pggan_two_ranks_and_exact_resume(tiny_phantom: Path, tmp_path: Path) -> None:
    """The 3D PGGAN (WGAN-GP, three growing stages) on 2 ranks: G, D, G's EMA and both optimizers equal on
    both ranks, rank 1 writes nothing, each rank has its own noise stream in the checkpoint, and a run
    stopped mid-stage (6 of 12 iterations) and resumed under torchrun ends bit-identical."""
    from advseg.synthesis.trainer import load_state

    spec = {"data": str(tiny_phantom), "preset": "res_unet_aux+tiny", "gan": GAN_TINY}
    full = _worker(tmp_path, {**spec, "out": str(tmp_path / "full")})
    assert full[0]["digest"] == full[1]["digest"]
    _no_writes(full[1])
    state = load_state(tmp_path / "full" / "checkpoints" / "latest.pt")
    assert len(state["ranks"]) == 2 and not torch.equal(state["ranks"][0], state["ranks"][1])
    assert (tmp_path / "full" / "grids" / "stage2_8x16x16.png").exists()
    _worker(tmp_path, {**spec, "out": str(tmp_path / "split"), "max_iterations": 6})
    assert load_state(tmp_path / "split" / "checkpoints" / "latest.pt")["step"] == 6
    resumed = _worker(tmp_path, {**spec, "out": str(tmp_path / "split"), "resume": True})
    assert resumed[0]["digest"] == resumed[1]["digest"] == full[0]["digest"]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["mean_teacher", "pure_adv", "hybrid_adv", "asdnet", "fusion_pair",
                                    "semi_adv_2d"])
def test_variants_two_ranks_stay_equal(tiny_phantom: Path, tmp_path: Path, preset: str) -> None:
    """Every other trainer variant on 2 ranks, with unlabeled batches after the 2 pre-training iterations
    where it uses them: the ranks end with equal nets and optimizer states, rank 1 writes nothing."""
    run = tmp_path / "run"
    overrides = ["train.iterations=4", "train.val_every=4", "adversarial.unlabeled_prob=1.0",
                 "adversarial.supervised_tail=0"]
    reports = _worker(tmp_path, {"data": str(tiny_phantom), "out": str(run), "preset": f"{preset}+tiny",
                                 "overrides": overrides})
    assert reports[0]["digest"] == reports[1]["digest"]
    _no_writes(reports[1])
    rows = _train_rows(run)
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]
    semi = preset not in ("pure_adv", "hybrid_adv")
    assert any(r.get("unlabeled") for r in rows) == semi


@pytest.mark.slow
def test_experiment_cell_under_torchrun(tiny_phantom: Path, tmp_path: Path) -> None:
    """``torchrun -m advseg experiment CONFIG --cell 0``: the cell trains on 2 ranks, rank 0 predicts,
    evaluates and writes ``cell.json``, the tables and the committable result; a second launch finds
    the cell done, and a launch into a fresh folder with the same ``--results`` trains nothing."""
    import yaml

    cfg = tmp_path / "m.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "ddp_matrix", "data": str(tiny_phantom), "size": "tiny", "folds": 2, "seeds": [0],
        "fractions": [1.0], "test": "cv", "overrides": ["train.iterations=2", "train.val_every=0"],
        "methods": [{"name": "aux", "preset": "res_unet_aux"}]}))
    out, results = tmp_path / "out", tmp_path / "results"
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "advseg", "experiment", str(cfg),
           "--out", str(out), "--quiet", "--cell", "0", "--results", str(results)]
    first = _run(cmd, _env(tmp_path))
    cells = list(out.rglob("cell.json"))
    assert len(cells) == 1
    record = json.loads(cells[0].read_text())
    assert record["train"]["iterations"] == 2 and record["summary"]
    state = load_checkpoint(cells[0].parent / "checkpoint_last.pt")
    assert state["world_size"] == 2
    assert first.stdout.count("cell 0 finished; 1 of 2 cells done") == 1  # rank 0 alone reports
    again = _run(cmd, _env(tmp_path))
    assert again.stdout.count("cell 0 finished; 1 of 2 cells done") == 1
    assert json.loads(cells[0].read_text())["finished"] == record["finished"]  # not run again
    committed = list(results.rglob("*.json"))
    assert len(committed) == 1
    before = committed[0].read_bytes()
    fresh = tmp_path / "fresh"  # a new machine: no run folders, the committed result alone
    _run([*cmd[:cmd.index("--out") + 1], str(fresh), *cmd[cmd.index("--out") + 2:]], _env(tmp_path))
    assert not list(fresh.rglob("checkpoint_*.pt")) and not list(fresh.rglob("cell.json"))
    assert committed[0].read_bytes() == before
