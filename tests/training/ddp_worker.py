"""Worker of tests/training/test_distributed.py, started by ``torchrun`` (or plainly, for one process).

``python ddp_worker.py SPEC_JSON``; SPEC keys: ``data``, ``out``, ``preset``, ``overrides`` (list),
``resume`` (bool), ``result`` (JSON file rank 0 writes), ``weights`` (.pt file rank 0 writes: the nets'
final state dicts), ``kill_at`` (rank 0 SIGKILLs itself when the loop reaches that iteration),
``pair_streams`` (one process, batch 2, drawing the patches ranks 0 and 1 of a 2-process run draw).

Every rank reports a SHA-256 of its nets' weights and optimizer states, and every file-system write
it made (Python audit events: ``open`` for writing, ``os.mkdir``/``rename``/``replace``/``remove``/
``shutil.rmtree`` and friends) - so the test can check that rank 1 wrote nothing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

WRITES: list[str] = []
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_FS_EVENTS = {"os.rename", "os.replace", "os.remove", "os.rmdir", "os.truncate", "os.link",
              "os.symlink", "os.chmod", "shutil.rmtree", "shutil.copyfile", "shutil.move", "os.utime"}


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and len(args) >= 3:
        path, mode, flags = args[0], args[1], args[2]
        if isinstance(path, int):  # an already open descriptor (os.fdopen)
            return
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS)
        if writing and str(path) != os.devnull:
            WRITES.append(f"open {path} {mode!r}")
    elif event == "os.mkdir":
        if not os.path.exists(args[0]):  # mkdir(exist_ok=True) of an existing folder changes nothing
            WRITES.append(f"{event} {args[0]!r}")
    elif event in _FS_EVENTS:
        WRITES.append(f"{event} {args[0]!r}")


def _digest(nets: dict[str, torch.nn.Module], optims: dict[str, torch.optim.Optimizer]) -> str:
    h = hashlib.sha256()
    for name in sorted(nets):
        for k, v in sorted(nets[name].state_dict().items()):
            h.update(f"{name}.{k}".encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    for name in sorted(optims):
        for pid, st in sorted(optims[name].state_dict()["state"].items()):
            for k, v in sorted(st.items()):
                h.update(f"{name}.{pid}.{k}".encode())
                data = v.detach().cpu().contiguous().numpy().tobytes() if torch.is_tensor(v) else repr(v)
                h.update(data if isinstance(data, bytes) else data.encode())
    return h.hexdigest()


class _Alternate:
    """Two samplers' streams interleaved: a, b, a, b, ... (batch 2 = rank 0's and rank 1's patch)."""

    def __init__(self, a: Any, b: Any) -> None:
        self.a, self.b = a, b
        self.images = a.images

    def __iter__(self):
        ia, ib = iter(self.a), iter(self.b)
        while True:
            yield next(ia)
            yield next(ib)

    def state_dict(self) -> dict[str, Any]:
        return {"a": self.a.state_dict(), "b": self.b.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.a.load_state_dict(state["a"])
        self.b.load_state_dict(state["b"])


def main() -> None:
    spec = json.loads(sys.argv[1])
    rank = int(os.environ.get("RANK", "0"))
    if rank > 0:
        tempfile.gettempdir()  # Python's one-off probe of the temp folder (a file made and removed) first
        sys.addaudithook(_audit)

    from advseg.config import apply_overrides, load_preset
    from advseg.training import distributed
    from advseg.training.api import prepare_training, train_run
    from advseg.training.trainer import BatchSource, Trainer
    from advseg.training.variants import trainer_class

    torch.set_num_threads(1)
    cfg = apply_overrides(load_preset(spec["preset"]), list(spec.get("overrides", [])))
    seen: dict[str, Trainer] = {}
    original_fit = Trainer.fit

    def fit(self: Trainer, progress: bool = True) -> dict[str, Any]:
        seen["trainer"] = self
        seen["start"] = {k: copy.deepcopy(m.state_dict()) for k, m in self.nets.items()}
        return original_fit(self, progress)

    Trainer.fit = fit  # type: ignore[method-assign]
    nan_at = spec.get("nan_at")  # {"rank": r, "iteration": i}: rank r's losses become NaN there
    if nan_at is not None:
        check = Trainer.check_finite

        def poisoned(self: Trainer, losses: dict[str, torch.Tensor]) -> None:
            if self.rank == nan_at["rank"] and self.iteration + 1 == nan_at["iteration"]:
                losses = {k: v * float("nan") for k, v in losses.items()}
            check(self, losses)

        Trainer.check_finite = poisoned  # type: ignore[method-assign]
    kill_at = spec.get("kill_at")
    if kill_at is not None:
        cls = trainer_class(cfg)
        step = cls.training_step

        def killing(self: Trainer) -> dict[str, float]:
            if self.iteration == kill_at and self.rank == 0:
                os.kill(os.getpid(), signal.SIGKILL)
            return step(self)

        cls.training_step = killing  # type: ignore[method-assign]

    if spec.get("gan") is not None:  # the PGGAN: G, D and G's EMA
        from advseg.synthesis import trainer as gan_trainer
        from advseg.synthesis.config import gan_preset, merge_gan_config

        init = gan_trainer._Trainer.__init__

        def keep(self: Any, *args: Any, **kwargs: Any) -> None:
            init(self, *args, **kwargs)
            seen["gan"] = self

        gan_trainer._Trainer.__init__ = keep  # type: ignore[method-assign]
        gcfg = None if spec.get("resume") else merge_gan_config(gan_preset("small"), spec["gan"])
        gan_trainer.train_gan(spec["data"], spec["out"], gcfg, resume=bool(spec.get("resume")),
                              max_iterations=spec.get("max_iterations"), progress=False)
        g = seen.pop("gan")
        nets = {"G": g.G, "D": g.D, "G_ema": g.G_ema}
        optims = {k: o for k, o in (("G", g.opt_g), ("D", g.opt_d)) if o is not None}
        del g
        reports = distributed.all_gather_object(
            {"rank": rank, "digest": _digest(nets, optims), "writes": list(WRITES), "iteration": 0})
        if rank == 0:
            Path(spec["result"]).write_text(json.dumps(reports))
        distributed.shutdown()
        return
    if spec.get("pair_streams"):  # one process, batch 2 = the patches of ranks 0 and 1
        out = Path(spec["out"])
        cfg, tdata, _ = prepare_training(cfg, spec["data"], out, progress=False)
        first = tdata.labeled.sampler
        second = copy.deepcopy(first)
        second.reseed(distributed.stream_seed(first.base_seed, 1))
        tdata.labeled = BatchSource(_Alternate(first, second), 2 * cfg.train.batch_size)
        trainer_class(cfg)(cfg, out, tdata, device="cpu").fit(progress=False)
    else:
        train_run(None if spec.get("resume") else cfg, spec["data"], spec["out"],
                  resume=bool(spec.get("resume")), progress=False)
    trainer = seen.pop("trainer")
    report = {"rank": rank, "digest": _digest(trainer.nets, trainer.optims), "writes": list(WRITES),
              "iteration": trainer.iteration}
    reports = distributed.all_gather_object(report)
    if rank == 0:
        if spec.get("weights"):
            torch.save({"end": {k: m.state_dict() for k, m in trainer.nets.items()}, "start": seen["start"]},
                       spec["weights"])
        Path(spec["result"]).write_text(json.dumps(reports))
    del trainer
    distributed.shutdown()


if __name__ == "__main__":
    main()
