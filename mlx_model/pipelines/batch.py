"""Batch generation: many prompts from a file, in one process or in many started by MLX's own
launcher (``mlx.launch -n 2 ...`` on one machine, ``mlx.launch --hostfile hosts.json ...`` on
several Macs).  ``mobileo-generate --prompts-file FILE --output-dir DIR`` runs
:func:`run_batch`; docs/batch-generation.md is the user's guide.

The pieces, in the order a run uses them:

* :func:`read_prompts_file`: the prompts, as :class:`Job` (plain text: one prompt per
  non-empty line; ``.jsonl``: one object per line with ``prompt`` and optional ``seed``,
  ``steps``, ``guidance``, ``width``, ``height``, ``n_images``).
* :func:`plan`: every image the file asks for, as :class:`Task`, with its settings resolved.
  Prompt ``k`` (0-based, in file order) without a seed gets ``--seed + k`` (``--seed``
  default 0); its image ``j`` (of ``n_images``) uses that seed ``+ j``, as mobileo-generate
  does.  Image file: ``{k:05d}_{seed}.png`` in the output folder.
* Every rank checks every image on its own disk (:func:`local_state`): a file with the
  image's name and matching settings (:data:`MATCH_KEYS`) is done; one with other settings
  stops the run (every rank, same error).  The images nobody has are shared round-robin:
  the ``i``-th missing image goes to rank ``i % size``.
* Each rank makes its images one at a time (``n_images=1`` with the image's own seed, so
  the pixels depend on the prompt, the seed and the settings only, never on the number of
  processes), saves each atomically (:func:`mlx_model.support.image_files.save_image`) and appends
  a line to ``DIR/.mobileo-batch/rank-<r>.jsonl`` (timings, rank, host).
* Then all ranks gather their records (an ``all_gather``, which is also the barrier) and
  rank 0 writes ``DIR/index.jsonl`` atomically: one line per image of the file, in file
  order.  The index exists only when the whole set is there.

Without a launcher ``mx.distributed.init()`` is a group of one: the same code path.
Test hook: ``MOBILEO_BATCH_FAIL_AFTER=N`` makes a rank exit hard (``os._exit(17)``) right
after it saved its N-th image (only rank ``MOBILEO_BATCH_FAIL_RANK`` when that is set).
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import secrets
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from weights.core.errors import MobileOError

from mlx_model import cli_common as cc
from mlx_model.support.image_files import read_metadata, save_image

__all__ = ["Job", "Task", "BatchSettings", "read_prompts_file", "plan", "run_batch", "MATCH_KEYS"]

JSONL_SUFFIXES = (".jsonl", ".ndjson")
JOB_KEYS = ("prompt", "seed", "steps", "guidance", "width", "height", "n_images")
# an existing image is the one a task asks for when these settings in it are the task's
MATCH_KEYS = ("prompt", "seed", "steps", "guidance", "scheduler", "size", "quantize", "dtype", "model_hash")
INDEX_FILE = "index.jsonl"
RECORDS_DIR = ".mobileo-batch"  # per-rank logs of the images made (timings, rank, host)
FAIL_AFTER_ENV, FAIL_RANK_ENV = "MOBILEO_BATCH_FAIL_AFTER", "MOBILEO_BATCH_FAIL_RANK"  # test hook


@dataclass(frozen=True)
class Job:
    """One prompt of a prompts file; ``None`` settings take the command's (then the model's) values."""

    index: int  # 0-based among the prompts, in file order
    line: int  # 1-based line of the file
    prompt: str
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None
    n_images: int | None = None


@dataclass(frozen=True)
class Task:
    """One image to make, every setting resolved; ``file`` is its name in the output folder."""

    prompt_index: int
    image: int  # 0-based among the prompt's n_images
    line: int
    prompt: str
    seed: int
    steps: int
    guidance: float
    height: int
    width: int
    file: str


@dataclass(frozen=True)
class BatchSettings:
    """The command's settings, the defaults of every job (``None``: the model's)."""

    model: str = "demo"
    revision: str | None = None
    quantize: int = 4
    dtype: str | None = None
    low_memory: bool | None = None
    scheduler: str = "dpm"
    steps: int | None = None
    guidance: float | None = None
    seed: int = 0  # prompt k without its own seed uses seed + k
    n_images: int = 1
    width: int | None = None
    height: int | None = None
    metadata: bool = False  # also a .json sidecar beside each image
    verbose: bool = False


# ------------------------------------------------------------------ the prompts file
def _bad(where: str, what: str, fix: str) -> MobileOError:
    return MobileOError(f"{where}: {what}", fix=fix)


def _whole(value, low: int, high: int) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and low <= value <= high


def _job_from_json(obj, index: int, line: int, where: str) -> Job:
    if not isinstance(obj, dict):
        raise _bad(where, f"each line must be a JSON object, got {type(obj).__name__}.",
                   fix='write one object per line, e.g. {"prompt": "a red cup", "seed": 3}.')
    unknown = sorted(set(obj) - set(JOB_KEYS))
    if unknown:
        raise _bad(where, f"unknown key {unknown[0]!r}.", fix=f"use only {', '.join(JOB_KEYS)}.")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _bad(where, '"prompt" is missing or empty.', fix='give each line a "prompt", e.g. "a red cup".')
    checks = {
        "seed": (lambda v: _whole(v, 0, cc.SEED_LIMIT - 1), f"a whole number from 0 to {cc.SEED_LIMIT - 1}", "3"),
        "steps": (lambda v: _whole(v, 1, cc.MAX_STEPS), f"a whole number from 1 to {cc.MAX_STEPS}", "20"),
        "guidance": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
                     "a finite number", "1.5"),
        "width": (lambda v: _whole(v, 1, 1 << 20), "a whole number of pixels", "512"),
        "height": (lambda v: _whole(v, 1, 1 << 20), "a whole number of pixels", "512"),
        "n_images": (lambda v: _whole(v, 1, 10_000), "a whole number from 1 to 10000", "4"),
    }
    for key, (ok, what, example) in checks.items():
        if obj.get(key) is not None and not ok(obj[key]):
            raise _bad(where, f'"{key}" must be {what}, got {json.dumps(obj[key])}.',
                       fix=f'write e.g. "{key}": {example}, or leave it out.')
    values = {k: obj.get(k) for k in JOB_KEYS if k != "prompt"}
    if values["guidance"] is not None:
        values["guidance"] = float(values["guidance"])
    return Job(index=index, line=line, prompt=prompt, **values)


def read_prompts_file(path: str | Path) -> list[Job]:
    """The prompts of ``path``: JSON Lines when it ends in ``.jsonl`` / ``.ndjson`` (one object a
    line: ``prompt`` required; ``seed``, ``steps``, ``guidance``, ``width``, ``height``,
    ``n_images`` optional), else plain text (one prompt a non-empty line, stripped).  Blank lines
    are skipped; a bad line is one error naming its line number."""
    path = Path(path).expanduser()
    fix = "pass a text file with one prompt per line, or a .jsonl file of {\"prompt\": ...} objects."
    if not path.is_file():
        raise MobileOError(f"--prompts-file {path} does not exist.", fix=fix)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of the first prompt
    except UnicodeDecodeError:
        raise MobileOError(f"--prompts-file {path} is not UTF-8 text.", fix=fix) from None
    is_jsonl = path.suffix.lower() in JSONL_SUFFIXES
    jobs: list[Job] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{path.name} line {n}"
        if not is_jsonl:
            if raw.lstrip().startswith('{"prompt"'):
                raise _bad(where, "this line is a JSON object, but the file is read as plain text (one prompt "
                           "a line).", fix=f"name the file with .jsonl, e.g. {path.with_suffix('.jsonl').name}.")
            jobs.append(Job(index=len(jobs), line=n, prompt=raw.strip()))
            continue
        try:
            obj = json.loads(raw)
        except ValueError as e:
            raise _bad(where, f"not valid JSON ({e.msg}, column {e.colno}).",
                       fix='write one JSON object per line, e.g. {"prompt": "a red cup"}.') from None
        jobs.append(_job_from_json(obj, len(jobs), n, where))
    if not jobs:
        raise MobileOError(f"--prompts-file {path} holds no prompts.", fix=fix)
    return jobs


def image_name(prompt_index: int, seed: int) -> str:
    """The file of prompt ``prompt_index``'s image with ``seed`` (unique: a prompt's seeds differ)."""
    return f"{prompt_index:05d}_{seed}.png"


def plan(jobs: list[Job], settings: BatchSettings, config, tokenizer=None, source: str = "prompts file") -> list[Task]:
    """Every image of ``jobs``, settings resolved against ``settings`` and the model's
    ``config`` (sizes checked against it); ``tokenizer`` also checks each prompt's length.
    Errors name the job's line."""
    from weights.core.prompts import generation_prompt

    from mlx_model.pipelines.generation import latent_shape

    d = config.defaults
    f = config.vae.spatial_compression
    tasks: list[Task] = []
    for job in jobs:
        where = f"{source} line {job.line}"
        seed = settings.seed + job.index if job.seed is None else job.seed
        n = settings.n_images if job.n_images is None else job.n_images
        steps = next(v for v in (job.steps, settings.steps, d.steps) if v is not None)
        guidance = next(v for v in (job.guidance, settings.guidance, d.guidance) if v is not None)
        width = settings.width if job.width is None else job.width
        height = settings.height if job.height is None else job.height
        try:
            cc.check_seeds(seed, n)
            cc.check_sampling(steps, guidance, n)
            _, h, w = latent_shape(config, height, width)
            cc.check_size(config, height, width)
            if tokenizer is not None:
                tokenizer.encode_prompt(job.prompt, generation_prompt)
        except MobileOError as e:
            raise MobileOError(f"{where}: {e}") from None
        for j in range(n):
            tasks.append(Task(prompt_index=job.index, image=j, line=job.line, prompt=job.prompt, seed=seed + j,
                              steps=int(steps), guidance=float(guidance), height=h * f, width=w * f,
                              file=image_name(job.index, seed + j)))
    return tasks


def image_settings(task: Task, settings: BatchSettings, common: dict) -> dict:
    """The settings saved inside a task's image (the same keys as mobileo-generate writes, so
    ``--config-from-metadata`` remakes it); deterministic: no timings, host or rank in it."""
    return {"prompt": task.prompt, "model": settings.model, "revision": settings.revision, "latents": None,
            **common, "steps": task.steps, "guidance": task.guidance, "n_images": 1, "index": 0,
            "seed": task.seed, "size": [task.height, task.width],
            "batch": {"prompt_index": task.prompt_index, "image": task.image}}


def mismatch(found: dict, expected: dict) -> str | None:
    """The first of :data:`MATCH_KEYS` (``model`` when there is no model hash) on which an
    existing image's settings differ from a task's, described; None when they agree."""
    keys = list(MATCH_KEYS) if expected.get("model_hash") else [*MATCH_KEYS[:-1], "model"]
    for key in keys:
        if found.get(key) != expected.get(key):
            return f"{key} {json.dumps(found.get(key))}, not {json.dumps(expected.get(key))}"
    return None


def local_state(tasks: list[Task], folder: Path, expected: Callable[[Task], dict]) -> tuple[list[int], str | None]:
    """(indices of the tasks whose image is in ``folder`` with matching settings, the first
    conflict described or None).  Hidden temporary files (``.*.partial``) are never looked at."""
    have, conflict = [], None
    for i, task in enumerate(tasks):
        path = folder / task.file
        if not path.exists():
            continue
        try:
            why = mismatch(read_metadata(path), expected(task))
        except MobileOError:
            why = "settings unreadable"
        if why is None:
            have.append(i)
        elif conflict is None:
            conflict = f"{path} already exists with other settings ({why})"
    return have, conflict


# ------------------------------------------------------------------ MLX distributed
def _launcher_size() -> int | None:
    """The number of processes a launcher started, from its environment (None: no launcher seen)."""
    hostfile = os.environ.get("MLX_HOSTFILE")  # ring: a JSON list, one entry per rank
    if hostfile:
        try:
            hosts = json.loads(Path(hostfile).read_text() or "[]")
            if isinstance(hosts, list) and hosts:
                return len(hosts)
        except (OSError, ValueError):
            pass
    for key in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MLX_WORLD_SIZE"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return None


def distributed_group():
    """``mx.distributed.init()`` (a group of one without a launcher); an error when a launcher
    started several processes but they could not connect (each would make every image)."""
    import mlx.core as mx

    group = mx.distributed.init()
    want = _launcher_size()
    if want and want != group.size():
        raise MobileOError(f"this process was started for a group of {want} processes but MLX's distributed "
                           f"init gave {group.size()}.",
                           fix="rerun with mlx.launch --verbose to see why the processes could not connect "
                           "(firewall, ports, hostfile IPs).")
    return group


def gather_json(group, obj) -> list:
    """Every rank's ``obj`` (JSON), in rank order, on every rank: an ``all_sum`` of the lengths and
    an ``all_gather`` of the padded bytes.  A collective, so it is also a barrier."""
    import mlx.core as mx
    import numpy as np

    data = json.dumps(obj).encode()
    n = group.size()
    if n == 1:
        return [json.loads(data)]
    lengths = np.zeros(n, np.int32)
    lengths[group.rank()] = len(data)
    lengths = np.array(mx.distributed.all_sum(mx.array(lengths), group=group, stream=mx.cpu)).astype(int)
    buf = np.zeros((1, max(int(lengths.max()), 1)), np.uint8)
    buf[0, :len(data)] = np.frombuffer(data, np.uint8)
    rows = np.array(mx.distributed.all_gather(mx.array(buf), group=group, stream=mx.cpu))
    return [json.loads(rows[r, :lengths[r]].tobytes()) for r in range(n)]


def barrier(group) -> None:
    """Wait for every rank (an ``all_sum`` of one number)."""
    import mlx.core as mx

    if group.size() > 1:
        mx.eval(mx.distributed.all_sum(mx.array([1.0]), group=group, stream=mx.cpu))


# ------------------------------------------------------------------ files
def _append_record(folder: Path, rank: int, record: dict) -> None:
    logs = folder / RECORDS_DIR
    logs.mkdir(exist_ok=True)
    with open(logs / f"rank-{rank}.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def _read_records(folder: Path) -> dict[str, dict]:
    """The last record of each image file in ``folder``'s per-rank logs (cut lines skipped)."""
    out: dict[str, dict] = {}
    for log_file in sorted((folder / RECORDS_DIR).glob("rank-*.jsonl")):
        for line in log_file.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("file"), str):
                out[rec["file"]] = rec
    return out


def write_index(path: Path, entries: list[dict]) -> None:
    """``entries`` as JSON Lines, written whole under a temporary name and renamed into place."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    try:
        tmp.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _digest(tasks: list[Task]) -> str:
    return hashlib.sha256(json.dumps([asdict(t) for t in tasks]).encode()).hexdigest()[:16]


# ------------------------------------------------------------------ the run
def run_batch(prompts_file: str | Path, output_dir: str | Path, settings: BatchSettings = BatchSettings(),
              log: Callable[[str], None] | None = None) -> dict:
    """Make every image ``prompts_file`` asks for into ``output_dir``, sharing the work among the
    processes of ``mx.distributed.init()``'s group; images already there (same settings) are
    kept.  Returns this rank's summary: ``made`` (paths), ``reused``, ``seconds``, and on rank 0
    ``index`` and ``images_per_minute`` (images made now by all ranks per minute of rank 0's
    wall time, model loading included)."""
    import mlx.core as mx

    from mlx_model.support.platform import default_dtype
    from mlx_model.support.tokenizer import Tokenizer

    t0 = time.perf_counter()
    log = log or (lambda msg: print(msg, flush=True))
    group = distributed_group()
    rank, size = group.rank(), group.size()
    tag = f"[rank {rank}/{size}] " if size > 1 else ""
    host = socket.gethostname()

    folder = Path(output_dir).expanduser()
    if folder.exists() and not folder.is_dir():
        raise MobileOError(f"--output-dir {output_dir} is a file.", fix="pass a folder (it is made if missing).")
    cc.check_writable_folder(folder, f"--output-dir {output_dir}")
    jobs = read_prompts_file(prompts_file)
    if rank != 0:  # `--model demo` writes its checkpoint on first use: rank 0 first, then the others
        barrier(group)
    ckpt = cc.open_checkpoint(settings.model, settings.revision, None, None)
    if rank == 0:
        barrier(group)
    tasks = plan(jobs, settings, ckpt.config, Tokenizer.from_checkpoint(ckpt), source=Path(prompts_file).name)
    dtype = cc.dtype_of(settings.dtype) or default_dtype()
    common = cc.run_settings(scheduler=settings.scheduler, quantize=settings.quantize, dtype=dtype, source=ckpt.folder)

    def expected(task: Task) -> dict:
        return image_settings(task, settings, common)

    have, conflict = local_state(tasks, folder, expected)
    states = gather_json(group, {"digest": _digest(tasks), "have": have, "conflict": conflict, "host": host})
    if len({s["digest"] for s in states}) > 1:
        raise MobileOError("the ranks read different prompts files or settings (their image lists differ).",
                           fix="give every machine the same prompts file and model at the same path.")
    for r, s in enumerate(states):
        if s["conflict"]:
            where = "" if size == 1 else f"on rank {r} ({s['host']}): "
            raise MobileOError(f"{where}{s['conflict']}.",
                               fix="use another --output-dir, or delete that file to make it again.")
    holder: dict[int, int] = {}
    for r, s in enumerate(states):
        for i in s["have"]:
            holder.setdefault(i, r)
    pending = [i for i in range(len(tasks)) if i not in holder]
    mine = pending[rank::size]
    if pending and rank == 0:  # an index in the folder always describes a finished run
        (folder / INDEX_FILE).unlink(missing_ok=True)
    log(f"{tag}{len(mine)} of {len(tasks)} images to make here ({len(holder)} already in {folder}, "
        f"{len(pending)} missing in all)")

    fail_env = os.environ.get(FAIL_AFTER_ENV, "").strip()
    fail_after = int(fail_env) if fail_env.isdigit() else 0
    fail_here = os.environ.get(FAIL_RANK_ENV) in (None, "", str(rank))
    records: dict[int, dict] = {}
    made: list[Path] = []
    if mine:
        import numpy as np

        from mlx_model.pipelines.generation import GenerationPipeline

        folder.mkdir(parents=True, exist_ok=True)
        pipeline = GenerationPipeline.from_checkpoint(ckpt, quantize=settings.quantize, dtype=dtype,
                                                      low_memory=settings.low_memory)
        log(f"{tag}model loaded in {pipeline.load_seconds:.2f}s"
            + (f" ({pipeline.source}; quantize {settings.quantize or 'float'}; dtype {common['dtype']}; "
               f"host {host})" if settings.verbose else ""))
        for done, i in enumerate(mine, start=1):
            task = tasks[i]
            t = time.perf_counter()
            out = pipeline.generate(task.prompt, steps=task.steps, guidance=task.guidance, seed=task.seed,
                                    n_images=1, scheduler=settings.scheduler, height=task.height,
                                    width=task.width)
            if not np.isfinite(out.latents).all():
                raise MobileOError(f"{task.file}: sampling diverged (NaN or infinity; guidance {task.guidance}).",
                                   fix="lower the guidance (Mobile-O uses 1.5).")
            t_save = time.perf_counter()
            target = folder / task.file
            target.with_suffix(".json").unlink(missing_ok=True)  # a --metadata sidecar left without its image
            path = save_image(out.images[0], target, expected(task), write_json=settings.metadata)
            if path != target:  # another run claimed the name meanwhile
                path.unlink(missing_ok=True)
                raise MobileOError(f"{target} appeared while this run was making it: another run is writing "
                                   f"into {folder}.", fix="run one batch per output folder at a time.")
            timings = {**{k: round(v, 4) for k, v in out.timings.items()},
                       "save": round(time.perf_counter() - t_save, 4), "total": round(time.perf_counter() - t, 4)}
            rec = {"file": task.file, "prompt_index": task.prompt_index, "image": task.image, "seed": task.seed,
                   "rank": rank, "size": size, "host": host, "timings": timings}
            _append_record(folder, rank, rec)
            records[i] = {**rec, "reused": False}
            made.append(path)
            short = task.prompt if len(task.prompt) <= 50 else task.prompt[:47] + "..."
            log(f"{tag}{done}/{len(mine)} {task.file} {timings['total']:.2f}s {short!r}")
            if fail_after and fail_here and len(made) >= fail_after:
                log(f"{tag}{FAIL_AFTER_ENV}={fail_after}: exiting now (test hook)")
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(17)
        del pipeline
        mx.clear_cache()
    mine_s = time.perf_counter() - t0
    log(f"{tag}done: {len(made)} made in {mine_s:.1f}s"
        + (f" ({60 * len(made) / mine_s:.1f} images/minute)" if made else ""))

    reused = [i for i, r in holder.items() if r == rank]
    if reused:
        old = _read_records(folder)
        for i in reused:
            rec = old.get(tasks[i].file, {})
            records[i] = {"file": tasks[i].file, "rank": rec.get("rank"), "host": rec.get("host"),
                          "timings": rec.get("timings"), "reused": True}
    gathered = gather_json(group, {str(i): r for i, r in records.items()})  # the barrier before the index
    summary = {"rank": rank, "size": size, "made": made, "reused": len(holder), "seconds": mine_s}
    if rank != 0:
        return summary
    merged: dict[int, dict] = {}
    for part in gathered:
        merged.update({int(i): r for i, r in part.items()})
    missing = [tasks[i].file for i in range(len(tasks)) if i not in merged]
    if missing:
        raise MobileOError(f"{len(missing)} images are missing after the run (first: {missing[0]}).",
                           fix="rerun the same command: it makes only the missing images.")
    entries = []
    for i, task in enumerate(tasks):
        r = merged[i]
        entries.append({"prompt_index": task.prompt_index, "image": task.image, "line": task.line,
                        "prompt": task.prompt, "seed": task.seed, "steps": task.steps, "guidance": task.guidance,
                        "width": task.width, "height": task.height, "file": task.file, "rank": r.get("rank"),
                        "host": r.get("host"), "reused": r["reused"], "timings": r.get("timings")})
    index = folder / INDEX_FILE
    folder.mkdir(parents=True, exist_ok=True)
    write_index(index, entries)
    wall = time.perf_counter() - t0
    n_made = sum(not e["reused"] for e in entries)
    ipm = 60 * n_made / wall if wall > 0 else 0.0
    log(f"batch: {len(entries)} images in {index} ({n_made} made now, {len(entries) - n_made} already there) "
        f"by {size} process{'es' if size > 1 else ''} in {wall:.1f}s: "
        + (f"{ipm:.1f} images/minute" if n_made else "nothing to make"))
    return {**summary, "index": index, "images_per_minute": ipm, "made_by_all": n_made, "seconds": wall}
