"""``python tiny_run.py PREFIX EPOCHS [--resume] [--kill-at EPOCH:CALL] [--workers N] [--random-views]``:
a tiny slkd run in a subprocess, which can SIGKILL itself in the middle of an epoch
(tests/test_trainer.py). ``--workers``: loader workers (default none); ``--random-views``:
CIFAR-100's random weak and strong views instead of fixed ones."""

import os
import signal
import sys

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
    trainer.train(resume=resume)


if __name__ == "__main__":
    main()
