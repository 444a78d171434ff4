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
:func:`run_batch` is those four steps: :func:`plan` -> :func:`assign` -> :func:`make` ->
:func:`write_run_index`; its ``on_saved(rank, count)`` callback sees every saved image (the
tests stop a rank there).
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import secrets
import socket
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from weights.core.errors import MobileOError

from mlx_model.support.image_files import check_writable_folder, read_metadata, run_metadata, save_image
from mlx_model.support.image_settings import MAX_STEPS, SEED_LIMIT, ImageSettings
from mlx_model.support.platform import dtype_of
from mlx_model.support.quant import DEFAULT_QUANTIZE

__all__ = ["Job", "Task", "BatchSettings", "read_prompts_file", "plan", "assign", "make", "run_batch", "MATCH_KEYS"]

JSONL_SUFFIXES = (".jsonl", ".ndjson")
JOB_KEYS = ("prompt", "seed", "steps", "guidance", "width", "height", "n_images")
# an existing image is the one a task asks for when these settings in it are the task's
MATCH_KEYS = ("prompt", "seed", "steps", "guidance", "scheduler", "size", "quantize", "dtype", "model_hash")
INDEX_FILE = "index.jsonl"
RECORDS_DIR = ".mobileo-batch"  # per-rank logs of the images made (timings, rank, host)


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
    """One image to make, its settings resolved (one image, its own seed); ``file`` is its name
    in the output folder."""

    prompt_index: int
    image: int  # 0-based among the prompt's n_images
    line: int
    settings: ImageSettings
    file: str


@dataclass(frozen=True)
class BatchSettings:
    """The command's settings: ``image`` holds every job's defaults (``None``: the model's;
    its seed is the base: prompt k without its own seed uses ``seed + k``)."""

    image: ImageSettings = field(default_factory=lambda: ImageSettings("(each prompt of the file)", seed=0))
    model: str = "demo"
    revision: str | None = None
    quantize: int = DEFAULT_QUANTIZE
    dtype: str | None = None
    low_memory: bool | None = None
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
        "seed": (lambda v: _whole(v, 0, SEED_LIMIT - 1), f"a whole number from 0 to {SEED_LIMIT - 1}", "3"),
        "steps": (lambda v: _whole(v, 1, MAX_STEPS), f"a whole number from 1 to {MAX_STEPS}", "20"),
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

    base = settings.image
    tasks: list[Task] = []
    for job in jobs:
        given = {k: getattr(job, k) for k in ("steps", "guidance", "width", "height", "n_images")
                 if getattr(job, k) is not None}
        seed = base.seed + job.index if job.seed is None else job.seed
        first = replace(base, prompt=job.prompt, seed=seed, **given)
        try:
            first = first.resolved(config)
            if tokenizer is not None:
                tokenizer.encode_prompt(job.prompt, generation_prompt)
        except MobileOError as e:
            raise MobileOError(f"{source} line {job.line}: {e}") from None
        for j in range(first.n_images):
            one = replace(first, seed=first.seed + j, n_images=1)
            tasks.append(Task(prompt_index=job.index, image=j, line=job.line, settings=one,
                              file=image_name(job.index, one.seed)))
    return tasks


def image_metadata(task: Task, settings: BatchSettings, run: dict) -> dict:
    """The settings saved inside a task's image (the same keys as mobileo-generate writes, so
    ``--config-from-metadata`` remakes it); deterministic: no timings, host or rank in it."""
    return {"model": settings.model, "revision": settings.revision, "latents": None, **run,
            **task.settings.metadata(), "batch": {"prompt_index": task.prompt_index, "image": task.image}}


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
@dataclass
class Run:
    """One rank's view of a batch run, filled step by step."""

    group: object
    folder: Path
    settings: BatchSettings
    log: Callable[[str], None]
    t0: float = field(default_factory=time.perf_counter)
    host: str = field(default_factory=socket.gethostname)
    tasks: list[Task] = field(default_factory=list)
    metadata: Callable[[Task], dict] | None = None  # what a task's image must carry
    holder: dict[int, int] = field(default_factory=dict)  # task index -> the rank that has its image
    mine: list[int] = field(default_factory=list)  # task indices this rank makes
    records: dict[int, dict] = field(default_factory=dict)
    made: list[Path] = field(default_factory=list)

    @property
    def rank(self) -> int:
        return self.group.rank()

    @property
    def size(self) -> int:
        return self.group.size()

    @property
    def tag(self) -> str:
        return f"[rank {self.rank}/{self.size}] " if self.size > 1 else ""


def start(prompts_file, output_dir, settings: BatchSettings, log) -> tuple[Run, object]:
    """The group, the folder checked, the checkpoint opened (rank 0 first: ``--model demo``
    writes it on first use) and every image planned.  Returns (run, checkpoint)."""
    from mlx_model.support.mlx_folder import open_model

    from mlx_model.support.platform import default_dtype
    from mlx_model.support.tokenizer import Tokenizer

    run = Run(group=distributed_group(), folder=Path(output_dir).expanduser(), settings=settings,
              log=log or (lambda msg: print(msg, flush=True)))
    if run.folder.exists() and not run.folder.is_dir():
        raise MobileOError(f"--output-dir {output_dir} is a file.", fix="pass a folder (it is made if missing).")
    check_writable_folder(run.folder, f"--output-dir {output_dir}")
    jobs = read_prompts_file(prompts_file)
    if run.rank != 0:
        barrier(run.group)
    ckpt = open_model(settings.model, revision=settings.revision)
    if run.rank == 0:
        barrier(run.group)
    run.tasks = plan(jobs, settings, ckpt.config, Tokenizer.from_checkpoint(ckpt), source=Path(prompts_file).name)
    meta = run_metadata(quantize=settings.quantize, dtype=dtype_of(settings.dtype) or default_dtype(),
                        source=ckpt.folder)
    run.metadata = lambda task: image_metadata(task, settings, meta)
    return run, ckpt


def assign(run: Run) -> None:
    """Every rank checks every image on its own disk; one gather merges what they found; the
    missing images are dealt round-robin (the i-th missing one to rank ``i % size``)."""
    have, conflict = local_state(run.tasks, run.folder, run.metadata)
    states = gather_json(run.group, {"digest": _digest(run.tasks), "have": have, "conflict": conflict,
                                     "host": run.host})
    if len({s["digest"] for s in states}) > 1:
        raise MobileOError("the ranks read different prompts files or settings (their image lists differ).",
                           fix="give every machine the same prompts file and model at the same path.")
    for r, s in enumerate(states):
        if s["conflict"]:
            where = "" if run.size == 1 else f"on rank {r} ({s['host']}): "
            raise MobileOError(f"{where}{s['conflict']}.",
                               fix="use another --output-dir, or delete that file to make it again.")
    for r, s in enumerate(states):
        for i in s["have"]:
            run.holder.setdefault(i, r)
    pending = [i for i in range(len(run.tasks)) if i not in run.holder]
    run.mine = pending[run.rank::run.size]
    if pending and run.rank == 0:  # an index in the folder always describes a finished run
        (run.folder / INDEX_FILE).unlink(missing_ok=True)
    run.log(f"{run.tag}{len(run.mine)} of {len(run.tasks)} images to make here ({len(run.holder)} already in "
            f"{run.folder}, {len(pending)} missing in all)")


def make(run: Run, ckpt, on_saved: Callable[[int, int], None] | None = None) -> None:
    """Make this rank's images one at a time (one image, its own seed: the pixels never depend
    on the number of processes), each saved atomically and logged; ``on_saved(rank, count)``
    after each."""
    import mlx.core as mx

    from mlx_model.pipelines.generation import GenerationPipeline

    if not run.mine:
        return
    s = run.settings
    run.folder.mkdir(parents=True, exist_ok=True)
    pipeline = GenerationPipeline.from_checkpoint(ckpt, quantize=s.quantize, dtype=dtype_of(s.dtype),
                                                  low_memory=s.low_memory)
    run.log(f"{run.tag}model loaded in {pipeline.load_seconds:.2f}s"
            + (f" ({pipeline.source}; quantize {s.quantize or 'float'}; host {run.host})" if s.verbose else ""))
    for done, i in enumerate(run.mine, start=1):
        task = run.tasks[i]
        t = time.perf_counter()
        try:
            out = pipeline.generate(task.settings)
        except MobileOError as e:
            raise MobileOError(f"{task.file}: {e}") from None
        t_save = time.perf_counter()
        target = run.folder / task.file
        target.with_suffix(".json").unlink(missing_ok=True)  # a --metadata sidecar left without its image
        path = save_image(out.images[0], target, run.metadata(task), write_json=s.metadata)
        if path != target:  # another run claimed the name meanwhile
            path.unlink(missing_ok=True)
            raise MobileOError(f"{target} appeared while this run was making it: another run is writing "
                               f"into {run.folder}.", fix="run one batch per output folder at a time.")
        timings = {**{k: round(v, 4) for k, v in out.timings.items()},
                   "save": round(time.perf_counter() - t_save, 4), "total": round(time.perf_counter() - t, 4)}
        rec = {"file": task.file, "prompt_index": task.prompt_index, "image": task.image, "seed": task.settings.seed,
               "rank": run.rank, "size": run.size, "host": run.host, "timings": timings}
        _append_record(run.folder, run.rank, rec)
        run.records[i] = {**rec, "reused": False}
        run.made.append(path)
        prompt = task.settings.prompt
        short = prompt if len(prompt) <= 50 else prompt[:47] + "..."
        run.log(f"{run.tag}{done}/{len(run.mine)} {task.file} {timings['total']:.2f}s {short!r}")
        if on_saved is not None:
            on_saved(run.rank, len(run.made))
    del pipeline
    mx.clear_cache()


def write_run_index(run: Run) -> dict | None:
    """Gather every rank's records (the barrier before the index); rank 0 writes ``index.jsonl``
    (one line per image, in file order) and returns its figures; other ranks return None."""
    reused = [i for i, r in run.holder.items() if r == run.rank]
    if reused:
        old = _read_records(run.folder)
        for i in reused:
            rec = old.get(run.tasks[i].file, {})
            run.records[i] = {"file": run.tasks[i].file, "rank": rec.get("rank"), "host": rec.get("host"),
                              "timings": rec.get("timings"), "reused": True}
    gathered = gather_json(run.group, {str(i): r for i, r in run.records.items()})
    if run.rank != 0:
        return None
    merged: dict[int, dict] = {}
    for part in gathered:
        merged.update({int(i): r for i, r in part.items()})
    missing = [run.tasks[i].file for i in range(len(run.tasks)) if i not in merged]
    if missing:
        raise MobileOError(f"{len(missing)} images are missing after the run (first: {missing[0]}).",
                           fix="rerun the same command: it makes only the missing images.")
    entries = []
    for i, task in enumerate(run.tasks):
        r, s = merged[i], task.settings
        entries.append({"prompt_index": task.prompt_index, "image": task.image, "line": task.line,
                        "prompt": s.prompt, "seed": s.seed, "steps": s.steps, "guidance": s.guidance,
                        "width": s.width, "height": s.height, "file": task.file, "rank": r.get("rank"),
                        "host": r.get("host"), "reused": r["reused"], "timings": r.get("timings")})
    index = run.folder / INDEX_FILE
    run.folder.mkdir(parents=True, exist_ok=True)
    write_index(index, entries)
    wall = time.perf_counter() - run.t0
    n_made = sum(not e["reused"] for e in entries)
    ipm = 60 * n_made / wall if wall > 0 else 0.0
    run.log(f"batch: {len(entries)} images in {index} ({n_made} made now, {len(entries) - n_made} already there) "
            f"by {run.size} process{'es' if run.size > 1 else ''} in {wall:.1f}s: "
            + (f"{ipm:.1f} images/minute" if n_made else "nothing to make"))
    return {"index": index, "images_per_minute": ipm, "made_by_all": n_made, "seconds": wall}


def run_batch(prompts_file: str | Path, output_dir: str | Path, settings: BatchSettings = BatchSettings(),
              log: Callable[[str], None] | None = None,
              on_saved: Callable[[int, int], None] | None = None) -> dict:
    """Make every image ``prompts_file`` asks for into ``output_dir``, sharing the work among the
    processes of ``mx.distributed.init()``'s group; images already there (same settings) are
    kept.  Returns this rank's summary: ``made`` (paths), ``reused``, ``seconds``, and on rank 0
    ``index`` and ``images_per_minute`` (images made now by all ranks per minute of rank 0's
    wall time, model loading included)."""
    run, ckpt = start(prompts_file, output_dir, settings, log)
    assign(run)
    make(run, ckpt, on_saved)
    mine_s = time.perf_counter() - run.t0
    run.log(f"{run.tag}done: {len(run.made)} made in {mine_s:.1f}s"
            + (f" ({60 * len(run.made) / mine_s:.1f} images/minute)" if run.made else ""))
    summary = {"rank": run.rank, "size": run.size, "made": run.made, "reused": len(run.holder), "seconds": mine_s}
    index = write_run_index(run)
    return summary if index is None else {**summary, **index}
