"""A batch run whose rank STOP_RANK exits hard (``os._exit(17)``, no clean-up) right after saving
its STOP_AFTER-th image: the crash a restart must heal.  For tests/test_batch_generation.py,
under ``mlx.launch``:  python tests/tools/batch_rank_stops.py STOP_AFTER STOP_RANK <mobileo-generate flags>"""

import os
import sys

from mlx_model import generate
from mlx_model.pipelines import batch


def main() -> None:
    after, rank, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]

    def on_saved(this_rank: int, count: int) -> None:
        if this_rank == rank and count >= after:
            print(f"rank {rank} stops after {count} image(s) (test)", flush=True)
            sys.stderr.flush()
            os._exit(17)

    run_batch = batch.run_batch
    batch.run_batch = lambda *a, **kw: run_batch(*a, on_saved=on_saved, **kw)
    generate.main(argv)


if __name__ == "__main__":
    main()
