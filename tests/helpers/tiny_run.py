"""``python tiny_run.py PREFIX EPOCHS [--resume] [--kill-at EPOCH:CALL] [--kill-saving FILE:EPOCH:WHEN]
[--workers N] [--random-views]``: a tiny slkd run in a subprocess, which can SIGKILL itself in
the middle of an epoch (``--kill-at``: at the distiller's CALL-th step of EPOCH), or just
``before`` or ``after`` it writes the checkpoint FILE (``latest``, ``best``, ...) of EPOCH
(tests/test_trainer.py). ``--workers``: loader workers (default none); ``--random-views``:
CIFAR-100's random weak and strong views instead of fixed ones."""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.helpers.tiny import tiny_cfg, tiny_trainer  # noqa: E402


def main():
    prefix, epochs = sys.argv[1], int(sys.argv[2])
    resume = "--resume" in sys.argv
    kill_at = None
    if "--kill-at" in sys.argv:
        epoch, call = sys.argv[sys.argv.index("--kill-at") + 1].split(":")
        kill_at = (int(epoch), int(call))
    cfg = tiny_cfg(prefix, epochs=epochs)
    if "--workers" in sys.argv:
        cfg.SLKD.LOADER.WORKERS = int(sys.argv[sys.argv.index("--workers") + 1])
    trainer = tiny_trainer(cfg, random_views="--random-views" in sys.argv)
    if kill_at is not None:
        distiller = trainer.distiller
        original = distiller.forward_train

        def forward_then_maybe_die(**kwargs):
            if (kwargs["epoch"], distiller.calls + 1) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(**kwargs)

        distiller.forward_train = forward_then_maybe_die
    if "--kill-saving" in sys.argv:
        name, epoch, when = sys.argv[sys.argv.index("--kill-saving") + 1].split(":")
        _kill_around_save(trainer, name, int(epoch), when)
    trainer.train(resume=resume)


def _kill_around_save(trainer, name, epoch, when):
    """SIGKILL this process just before or after the trainer writes checkpoint ``name`` of ``epoch``."""
    from slkd.utils import checkpoint

    saving = {"epoch": None}
    save = trainer.save_checkpoints

    def tracking_save(current, improved):
        saving["epoch"] = current
        save(current, improved)

    def wrap(write, path_of):
        def maybe_die(obj, *args, **kwargs):
            hit = saving["epoch"] == epoch and Path(path_of(*args, **kwargs)).name == name
            if hit and when == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            result = write(obj, *args, **kwargs)
            if hit and when == "after":
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        return maybe_die

    trainer.save_checkpoints = tracking_save
    checkpoint.save_atomic = wrap(checkpoint.save_atomic, lambda path: path)
    checkpoint.save_latest = wrap(checkpoint.save_latest, lambda folder, file_name="latest": Path(folder) / file_name)


if __name__ == "__main__":
    main()
