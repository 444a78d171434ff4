"""A batch run whose rank STOP_RANK exits hard (``os._exit(17)``, no clean-up) right after saving
its STOP_AFTER-th image: the crash a restart must heal.  For tests/test_batch_generation.py,
under ``mlx.launch``:  python tests/tools/batch_rank_stops.py STOP_AFTER STOP_RANK <mobileo-generate flags>

With ``BATCH_STOP_HOW=sigstop`` the rank stops itself with SIGSTOP instead (a hung or sleeping
machine: the process stays, silent); with ``BATCH_STOP_HOW=sleep:S`` it sleeps S seconds once and
goes on, and with ``BATCH_STOP_HOW=until-made:N`` it sleeps once until the output folder holds N
images (exit 3 when that takes over 120 s) and goes on (slow, not dead: the other rank gives up on it meanwhile); with ``BATCH_RANK_MODEL_HASH=HASH`` rank STOP_RANK
sees other weights (its model hash is HASH) and STOP_AFTER is not used."""

import os
import signal
import sys
import time
from pathlib import Path

from mlx_model import generate
from mlx_model.pipelines import batch


def main() -> None:
    after, rank, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]

    def on_saved(this_rank: int, count: int) -> None:
        how = os.environ.get("BATCH_STOP_HOW", "exit")
        once = how.startswith(("sleep:", "until-made:"))
        if this_rank == rank and count == after if once else this_rank == rank and count >= after:
            print(f"rank {rank} stops after {count} image(s) (test)", flush=True)
            sys.stderr.flush()
            if how == "sigstop":
                os.kill(os.getpid(), signal.SIGSTOP)
            elif how.startswith("sleep:"):
                time.sleep(float(how.split(":", 1)[1]))
            elif how.startswith("until-made:"):  # an observed state, not a guessed delay
                folder, want = Path(argv[argv.index("--output-dir") + 1]), int(how.split(":", 1)[1])
                deadline = time.monotonic() + 120
                while len(list(folder.glob("*.png"))) < want and time.monotonic() < deadline:
                    time.sleep(0.2)
                if len(list(folder.glob("*.png"))) < want:  # the other rank did not go on alone
                    print(f"rank {rank}: the other rank made no {want} images within 120 s (test)", file=sys.stderr)
                    os._exit(3)
            else:
                os._exit(17)

    other_hash = os.environ.get("BATCH_RANK_MODEL_HASH")
    if other_hash and os.environ.get("MLX_RANK") == str(rank):
        from mlx_model.support import image_files

        image_files.model_hash = lambda folder, sample=0: other_hash

    run_batch = batch.run_batch
    batch.run_batch = lambda *a, **kw: run_batch(*a, on_saved=on_saved, **kw)
    generate.main(argv)


if __name__ == "__main__":
    main()
