"""Throughput of batch generation (``mobileo-generate --prompts-file``) with 1 process and with
several started by ``mlx.launch --backend ring`` on this machine: images per minute of the
whole command (start, model load and index included) and as the closing line reports it.

    python tests/tools/bench_batch.py                      # demo model, 16 prompts, 4 steps, 1 and 2 processes
    python tests/tools/bench_batch.py --size 256 --procs 1 2 4 --prompts 32
    python tests/tools/bench_batch.py --mixed --prompts 24   # issue 26: alternating 256/8 and 64/2 on 2 ranks
    make bench-batch                                 # the same, table + build/bench-batch.json

Each run writes into a fresh folder (nothing reused).  Not a test: nothing is asserted.

Besides ``mlx.launch``, each count above 1 also runs as "ring, no launcher": the same ring
group started directly with the two variables mlx.launch gives its ranks (``MLX_RANK`` and
``MLX_HOSTFILE``, a JSON list of ``["ip:port"]`` per rank).  That is a measuring aid, not a way
to run batches: it separates the launcher's own cost (mlx 0.32's ``mlx.launch`` keeps one core
busy relaying its ranks' output) from the ranks' work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = Path(sys.executable).parent / "mlx.launch"


def free_ports(n: int) -> int:
    """A port p with p .. p + n - 1 free (the ring listens on one port per rank)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            for k in range(1, n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + k))
            return port
        except OSError:
            continue
    raise RuntimeError(f"no {n} consecutive free ports")


def command(n: int, args: list[str], ports: int) -> list[str]:
    gen = [sys.executable, "-m", "mlx_model.generate", *args]
    if n == 1:
        return gen
    return [str(LAUNCH), "-n", str(n), "--backend", "ring", "--starting-port", str(ports), "--", *gen]


def run_direct(n: int, args: list[str], folder: Path, env: dict) -> subprocess.CompletedProcess:
    """``n`` ranks of a local ring group started without mlx.launch (see the module's docstring)."""
    port = free_ports(n)
    hostfile = folder / f"ring-{n}.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{port + r}"] for r in range(n)]))
    procs = [subprocess.Popen([sys.executable, "-m", "mlx_model.generate", *args], cwd=folder,
                              env=dict(env, MLX_RANK=str(r), MLX_HOSTFILE=str(hostfile)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(n)]
    outs = [p.communicate(timeout=3600) for p in procs]
    return subprocess.CompletedProcess(procs[0].args, max(p.returncode for p in procs),
                                       "".join(o for o, _ in outs), "".join(e for _, e in outs))


def run_once(n: int, args: list[str], folder: Path, env: dict, direct: bool = False) -> dict:
    out = folder / f"out-{n}{'-direct' if direct else ''}"
    t = time.perf_counter()
    if direct:
        r = run_direct(n, [*args, "--output-dir", str(out)], folder, env)
    else:
        r = subprocess.run(command(n, [*args, "--output-dir", str(out)], free_ports(n)), cwd=folder, env=env,
                           capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t
    index = out / "index.jsonl"
    if not index.is_file():  # mlx.launch exits 0 even when a rank failed: the index tells
        raise SystemExit(f"{n} process(es): no index was written\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    entries = [json.loads(line) for line in index.read_text().splitlines()]
    closing = re.search(r"batch: .* ([\d.]+) images/minute", r.stdout)
    totals = sorted(e["timings"]["total"] for e in entries)
    how = "1 process" if n == 1 else f"mlx.launch -n {n} (ring)" if not direct else f"ring, no launcher, {n} ranks"
    return {"processes": n, "how": how, "images": len(entries), "wall_s": round(wall, 2),
            "images_per_minute_wall": round(60 * len(entries) / wall, 1),
            "images_per_minute_reported": float(closing.group(1)) if closing else None,
            "median_image_s": round(totals[len(totals) // 2], 3),
            "images_by_rank": {str(r): sum(e["rank"] == r for e in entries) for r in range(n)}}


MIXED = ({"width": 256, "height": 256, "steps": 8}, {"width": 64, "height": 64, "steps": 2})


def mixed(a, env: dict) -> None:
    """``--mixed``: the same images (half 256 px / 8 steps, half 64 px / 2 steps) on 2 ranks, in
    two orders: alternating (big, small, big, ...: a round-robin deal gives one rank every big
    image) and paired (big, big, small, small, ...: a round-robin deal splits it evenly, the
    balanced reference).  Prints each run's wall time, the ranks' busy seconds (the sum of their
    images' times, from index.jsonl) and alternating / paired."""
    n = a.prompts - a.prompts % 4
    kinds = {"alternating": [MIXED[i % 2] for i in range(n)],
             "paired": [MIXED[(i // 2) % 2] for i in range(n)]}
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        folder = Path(tmp)
        (folder / "warm.txt").write_text("warm up\n")
        subprocess.run(command(1, ["--model", a.model, "--prompts-file", "warm.txt", "--output-dir", "warm"], 0),
                       cwd=folder, env=env, capture_output=True, text=True, timeout=3600, check=True)
        for name, sizes in kinds.items():
            (folder / f"{name}.jsonl").write_text("".join(
                json.dumps({"prompt": f"prompt {i}, a small red cup", "seed": i, **s}) + "\n" for i, s in enumerate(sizes)))
            out = folder / name
            t = time.perf_counter()
            r = subprocess.run(command(2, ["--model", a.model, "-q", a.quantize, "--prompts-file", f"{name}.jsonl",
                                           "--output-dir", str(out)], free_ports(2)),
                               cwd=folder, env=env, capture_output=True, text=True, timeout=3600)
            wall = time.perf_counter() - t
            if not (out / "index.jsonl").is_file():
                raise SystemExit(f"{name}: no index was written\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
            entries = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
            busy = {r_: round(sum(e["timings"]["total"] for e in entries if e["rank"] == r_), 2) for r_ in (0, 1)}
            big = {r_: sum(e["rank"] == r_ and e["width"] == 256 for e in entries) for r_ in (0, 1)}
            rows[name] = {"wall_s": round(wall, 2), "busy_s_by_rank": busy, "big_images_by_rank": big}
            print(f"{name}: {len(entries)} images on 2 ranks in {wall:.2f}s; busy seconds by rank {busy}; "
                  f"256 px images by rank {big}", flush=True)
    ratio = rows["alternating"]["wall_s"] / rows["paired"]["wall_s"]
    print(f"alternating / paired (balanced) wall time: {ratio:.2f} (goal: at most 1.25)")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"mixed": rows, "ratio": round(ratio, 3), "images": n}, indent=1) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--prompts", type=int, default=16, help="prompts (one image each); default 16")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--size", type=int, default=None, help="image width and height (default: the model's)")
    p.add_argument("-q", "--quantize", default="4")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts (default 1 2)")
    p.add_argument("--blas-threads", type=int, default=None,
                   help="OPENBLAS_NUM_THREADS for every process (default: OpenBLAS's own, one per core)")
    p.add_argument("--mixed", action="store_true",
                   help="alternating 256 px / 8 steps and 64 px / 2 steps on 2 ranks against the same images paired")
    p.add_argument("--json", default=str(ROOT / "build" / "bench-batch.json"))
    a = p.parse_args(argv)
    if any(n > 1 for n in a.procs) and not LAUNCH.is_file():
        raise SystemExit(f"no mlx.launch beside {sys.executable}")
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    if a.blas_threads:
        env["OPENBLAS_NUM_THREADS"] = str(a.blas_threads)
    if a.mixed:
        return mixed(a, env)
    args = ["--prompts-file", "prompts.txt", "--model", a.model, "--steps", str(a.steps), "-q", a.quantize]
    if a.size:
        args += ["--width", str(a.size), "--height", str(a.size)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        folder = Path(tmp)
        (folder / "prompts.txt").write_text("".join(f"prompt number {i}, a small red cup\n" for i in range(a.prompts)))
        (folder / "warm.txt").write_text("warm up\n")  # writes the demo checkpoint, fills the OS file cache
        subprocess.run(command(1, [*args[2:], "--prompts-file", "warm.txt", "--output-dir", "warm"], 0), cwd=folder,
                       env=env, capture_output=True, text=True, timeout=3600, check=True)
        for n, direct in [(n, d) for n in a.procs for d in ((False, True) if n > 1 else (False,))]:
            rows.append(run_once(n, args, folder, env, direct))
            r = rows[-1]
            print(f"{r['how']}: {r['images']} images in {r['wall_s']:.1f}s = {r['images_per_minute_wall']:.1f} "
                  f"images/minute (closing line: {r['images_per_minute_reported']}); median image "
                  f"{r['median_image_s']:.3f}s; by rank {r['images_by_rank']}", flush=True)
    base = rows[0]["images_per_minute_wall"]
    for r in rows:
        r["speedup"] = round(r["images_per_minute_wall"] / base, 2) if base else None
    report = {"model": a.model, "prompts": a.prompts, "steps": a.steps, "size": a.size, "quantize": a.quantize,
              "blas_threads": a.blas_threads, "machine": f"{platform.system()} {platform.machine()}, "
              f"{os.cpu_count()} CPUs", "runs": rows}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(report, indent=1) + "\n")
    print(f"{'run':<28} {'images/min':>11} {'speedup':>8}")
    for r in rows:
        print(f"{r['how']:<28} {r['images_per_minute_wall']:>11.1f} {r['speedup']:>8.2f}")
    print(f"written to {a.json}")


if __name__ == "__main__":
    main()
