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
* The group comes up (:mod:`mlx_model.pipelines.peers`: every wait bounded by
  ``--peer-timeout``); stale temporary files (``.*.partial``) are removed.
* :func:`assign`: every rank checks every image on its own disk (:func:`local_state`): a
  whole file (it decodes completely) with the image's name and matching settings
  (:data:`MATCH_KEYS`) is done; a damaged one (empty, cut short, unreadable) is deleted and
  made again; a whole one with other settings stops the run (every rank, same error).  One
  gather also compares every rank's :data:`FINGERPRINT` (model hash, dtype, quantization,
  scheduler, the planned images, MLX and mobileo-deploy versions): any difference stops every rank, one line,
  before any image is written.
* :func:`make`: the images nobody has are made in rounds: each round :func:`deal` gives each
  rank one of the costliest images left and then cheap ones to ranks that would otherwise
  wait, following each rank's measured speed; one gather ends the round.  Each image is made
  alone (``n_images=1`` with its own seed, so the pixels depend on the prompt, the seed and
  the settings only, never on the number of processes), saved atomically
  (:func:`mlx_model.support.image_files.save_image`) and logged to
  ``DIR/.mobileo-batch/rank-<r>.jsonl`` (timings, rank, host).  When the others do not reach
  a round's end in time (stopped, hung, gone) a rank makes everything left by itself.
* :func:`write_run_index`: rank 0 (or a rank left alone) writes ``DIR/index.jsonl``
  atomically: one line per image of the file, in file order.  The index exists only when
  the whole set is there.

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

from weights.core.errors import MobileOError, SettingError

from mlx_model.pipelines.peers import DEFAULT_PEER_TIMEOUT, PeerLost, Peers, open_group
from mlx_model.support.image_files import check_writable_folder, damage, read_metadata, run_metadata, save_image
from mlx_model.support.image_settings import ImageSettings
from mlx_model.support.platform import dtype_of
from mlx_model.support.quant import DEFAULT_QUANTIZE

__all__ = ["Job", "Task", "BatchSettings", "read_prompts_file", "plan", "assign", "make", "run_batch", "MATCH_KEYS"]

JSONL_SUFFIXES = (".jsonl", ".ndjson")
EACH_PROMPT = "(each prompt of the file)"  # the prompt of BatchSettings.image: every job brings its own
BASE_SEED = 0  # prompt k without a seed of its own uses BASE_SEED + k, unless --seed gives another base
STARTUP_SECONDS = 600  # beyond --peer-timeout, before anything is measured (a rank may be downloading the model)
MAX_IMAGES_PER_PROMPT = 10_000  # a prompts file line asks for at most this many (the plan is held in memory)
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

    image: ImageSettings = field(default_factory=lambda: ImageSettings(EACH_PROMPT, seed=BASE_SEED))
    model: str = "demo"
    revision: str | None = None
    quantize: int = DEFAULT_QUANTIZE
    dtype: str | None = None
    low_memory: bool | None = None
    metadata: bool = False  # also a .json sidecar beside each image
    verbose: bool = False
    peer_timeout: float = DEFAULT_PEER_TIMEOUT  # seconds to wait for the other processes beyond their work


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
    whole = (lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool), "a whole number", "3")
    types = {"seed": whole, "steps": whole, "width": whole, "height": whole,
             "n_images": (lambda v: _whole(v, 1, MAX_IMAGES_PER_PROMPT), f"a whole number from 1 to {MAX_IMAGES_PER_PROMPT}", "4"),
             "guidance": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
                          "a finite number", "1.5")}
    for key, (ok, what, example) in types.items():
        if obj.get(key) is not None and not ok(obj[key]):
            raise _bad(where, f'"{key}" must be {what}, got {json.dumps(obj[key])}.',
                       fix=f'write e.g. "{key}": {example}, or leave it out.')
    values = {k: obj.get(k) for k in JOB_KEYS if k != "prompt"}
    if values["guidance"] is not None:
        values["guidance"] = float(values["guidance"])
    try:  # the ranges are the settings' own (sizes against the model once it is open: plan)
        ImageSettings(prompt, **{k: v for k, v in values.items() if v is not None}).check()
    except SettingError as e:
        quoted = f'"{e.param}"'  # the line's JSON key
        raise MobileOError(f"{where}: {e.named(quoted)}") from None
    return Job(index=index, line=line, prompt=prompt, **values)


def read_prompts_file(path: str | Path) -> list[Job]:
    """The prompts of ``path``: JSON Lines when it ends in ``.jsonl`` / ``.ndjson`` (one object a
    line: ``prompt`` required; ``seed``, ``steps``, ``guidance``, ``width``, ``height``,
    ``n_images`` optional), else plain text (one prompt a non-empty line, stripped).  Blank lines
    are skipped; a bad line is one error naming its line number."""
    path = Path(path).expanduser()
    fix = "pass a text file with one prompt per line, or a .jsonl file of {\"prompt\": ...} objects."
    if path.is_dir():
        raise MobileOError(f"--prompts-file {path} is a folder, not a file.", fix=fix)
    if not path.is_file():
        raise MobileOError(f"--prompts-file {path} does not exist.", fix=fix)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of the first prompt
    except UnicodeDecodeError:
        raise MobileOError(f"--prompts-file {path} is not UTF-8 text.", fix=fix) from None
    is_jsonl = path.suffix.lower() in JSONL_SUFFIXES
    jobs: list[Job] = []
    # lines end at "\n" (or "\r\n") only: str.splitlines() would also split at U+2028, U+0085,
    # form feed ..., shifting line numbers and cutting JSON strings that hold them
    for n, raw in enumerate(text.split("\n"), start=1):
        raw = raw.removesuffix("\r")
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


def local_state(tasks: list[Task], folder: Path,
                expected: Callable[[Task], dict]) -> tuple[list[int], dict[int, str], str | None]:
    """(indices of the tasks whose image is in ``folder``, whole and with matching settings; the
    damaged ones {index: why} (empty, cut short, unreadable: to make again); the first conflict
    (a whole image with other settings) described, or None).  Hidden temporary files
    (``.*.partial``) are never looked at."""
    have, damaged, conflict = [], {}, None
    for i, task in enumerate(tasks):
        path = folder / task.file
        if not path.exists():
            continue
        why = damage(path)
        if why is not None:
            damaged[i] = why
            continue
        try:
            why = mismatch(read_metadata(path), expected(task))
        except MobileOError:
            damaged[i] = "settings unreadable"
            continue
        if why is None:
            have.append(i)
        elif conflict is None:
            conflict = f"{path} already exists with other settings ({why})"
    return have, damaged, conflict


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


def cost(task: Task) -> float:
    """The relative work of a task: pixels x (steps + 1) (the denoiser's steps and the decoder)."""
    s = task.settings
    return float(s.width * s.height * (s.steps + 1))


def deal(pending: list[int], costs: dict[int, float], speeds: list[float]) -> list[list[int]]:
    """One round's share of each rank (``speeds``: work per second of each, measured): the
    costliest images first, one to each rank (the fastest the costliest), then the cheapest
    ones to whichever rank stays below the round's longest estimate.  Deterministic: every
    rank computes the same shares from the same gathered figures."""
    order = sorted(pending, key=lambda i: (-costs[i], i))
    n = len(speeds)
    shares: list[list[int]] = [[] for _ in range(n)]
    est = [0.0] * n
    for r in sorted(range(n), key=lambda r: (-speeds[r], r)):
        if not order:
            break
        i = order.pop(0)
        shares[r].append(i)
        est[r] = costs[i] / speeds[r]
    longest = max(est)
    while order:
        r = min(range(n), key=lambda r: (est[r], r))
        extra = costs[order[-1]] / speeds[r]
        if est[r] + extra > longest * (1 + 1e-9):
            break
        shares[r].append(order.pop())
        est[r] += extra
    return shares


# ------------------------------------------------------------------ the run
FINGERPRINT = ("images", "model_hash", "dtype", "quantize", "scheduler", "mlx", "version")  # what decides the pixels


@dataclass
class Run:
    """One rank's view of a batch run, filled step by step."""

    peers: Peers
    folder: Path
    settings: BatchSettings
    log: Callable[[str], None]
    t0: float = field(default_factory=time.perf_counter)
    host: str = field(default_factory=socket.gethostname)
    tasks: list[Task] = field(default_factory=list)
    metadata: Callable[[Task], dict] | None = None  # what a task's image must carry
    fingerprint: dict = field(default_factory=dict)
    holder: dict[int, int] = field(default_factory=dict)  # task index -> the rank that had its image at the start
    pending: list[int] = field(default_factory=list)  # task indices nobody has made yet
    records: dict[int, dict] = field(default_factory=dict)  # task index -> its index record (all ranks)
    made: list[Path] = field(default_factory=list)
    work: list[list[float]] = field(default_factory=list)  # per rank: [cost made, seconds spent]
    alone: bool = False  # the group was given up: this rank finished the rest by itself

    @property
    def rank(self) -> int:
        return self.peers.rank

    @property
    def size(self) -> int:
        return self.peers.size

    @property
    def tag(self) -> str:
        return f"[rank {self.rank}/{self.size}] " if self.size > 1 else ""


def remove_partials(folder: Path) -> int:
    """Delete the hidden temporary files (``.*.partial``) a killed run left in ``folder``."""
    n = 0
    for p in folder.glob(".*.partial") if folder.is_dir() else ():
        try:
            p.unlink()
            n += 1
        except OSError:
            pass
    return n


def start(prompts_file, output_dir, settings: BatchSettings, log) -> tuple[Run, object]:
    """The group (bounded wait), the folder checked and cleaned of temporary files, the
    checkpoint opened (rank 0 first: ``--model demo`` writes it on first use), every image
    planned and the run's fingerprint.  Returns (run, checkpoint)."""
    import mlx.core as mx

    from mlx_model.support.mlx_folder import open_model
    from mlx_model.support.platform import default_dtype
    from mlx_model.support.tokenizer import Tokenizer

    folder = Path(output_dir).expanduser()
    if folder.exists() and not folder.is_dir():
        raise MobileOError(f"--output-dir {output_dir} is a file.", fix="pass a folder (it is made if missing).")
    check_writable_folder(folder, f"--output-dir {output_dir}")
    jobs = read_prompts_file(prompts_file)
    run = Run(peers=Peers(open_group(settings.peer_timeout)), folder=folder, settings=settings,
              log=log or (lambda msg: print(msg, flush=True)))
    wait = settings.peer_timeout + STARTUP_SECONDS
    if run.rank != 0:
        run.peers.barrier(wait, "the model's first opening")
    ckpt = open_model(settings.model, revision=settings.revision)
    if run.rank == 0:
        run.peers.barrier(wait, "the model's first opening")
    run.tasks = plan(jobs, settings, ckpt.config, Tokenizer.from_checkpoint(ckpt), source=Path(prompts_file).name)
    meta = run_metadata(quantize=settings.quantize, dtype=dtype_of(settings.dtype) or default_dtype(),
                        source=ckpt.folder)
    run.metadata = lambda task: image_metadata(task, settings, meta)
    run.fingerprint = {"images": _digest(run.tasks), "model_hash": meta["model_hash"], "dtype": meta["dtype"],
                       "quantize": meta["quantize"], "scheduler": settings.image.scheduler, "mlx": mx.__version__,
                       "version": meta["version"]}
    removed = remove_partials(folder)
    if removed:
        run.log(f"{run.tag}removed {removed} temporary file(s) a stopped run left in {folder}")
    return run, ckpt


def check_agreement(states: list[dict]) -> None:
    """Every rank's fingerprint is the same, or one error naming what differs on which ranks."""
    for key in FINGERPRINT:
        values = [s["fingerprint"].get(key) for s in states]
        if len(set(map(json.dumps, values))) > 1:
            seen = "; ".join(f"rank {r} ({s['host']}): {values[r]}" for r, s in enumerate(states))
            what = "the prompts file or image settings" if key == "images" else key
            raise MobileOError(f"the processes would make different images: {what} differs ({seen}).",
                               fix="give every machine the same prompts file, flags, model files (same weights "
                               "at the --model path) and MLX version.")


def _reuse_record(run: Run, i: int, old: dict[str, dict]) -> dict:
    rec = old.get(run.tasks[i].file, {})
    return {"file": run.tasks[i].file, "rank": rec.get("rank"), "host": rec.get("host"),
            "timings": rec.get("timings"), "reused": True}


def assign(run: Run) -> None:
    """Every rank checks every image on its own disk (damaged ones are deleted, to be made
    again); one gather compares the ranks' fingerprints and merges what they found; what
    nobody has is pending, handed out round by round in :func:`make`."""
    have, damaged, conflict = local_state(run.tasks, run.folder, run.metadata)
    for i, why in damaged.items():
        (run.folder / run.tasks[i].file).unlink(missing_ok=True)
        run.log(f"{run.tag}{run.tasks[i].file} is damaged ({why}): it is made again")
    old = _read_records(run.folder) if have else {}
    states = run.peers.gather_json({"fingerprint": run.fingerprint, "have": have, "conflict": conflict,
                                    "host": run.host, "reused": {i: _reuse_record(run, i, old) for i in have}},
                                   run.settings.peer_timeout + STARTUP_SECONDS, "the start")
    check_agreement(states)
    for r, s in enumerate(states):
        if s["conflict"]:
            where = "" if run.size == 1 else f"on rank {r} ({s['host']}): "
            raise MobileOError(f"{where}{s['conflict']}.",
                               fix="use another --output-dir, or delete that file to make it again.")
    for r, s in enumerate(states):
        for i in s["have"]:
            if run.holder.setdefault(i, r) == r:
                run.records[i] = s["reused"][str(i)]
    run.pending = [i for i in range(len(run.tasks)) if i not in run.holder]
    run.work = [[0.0, 0.0] for _ in range(run.size)]
    if run.pending and run.rank == 0:  # an index in the folder always describes a finished run
        (run.folder / INDEX_FILE).unlink(missing_ok=True)
    run.log(f"{run.tag}{len(run.pending)} of {len(run.tasks)} images to make ({len(run.holder)} already in "
            f"{run.folder})" + (", shared as the processes finish them" if run.size > 1 and run.pending else ""))


class _Maker:
    """This rank's pipeline (loaded on its first image) and the making and saving of one image."""

    def __init__(self, run: Run, ckpt, on_saved):
        self.run, self.ckpt, self.on_saved, self.pipeline = run, ckpt, on_saved, None

    def load(self):
        from mlx_model.pipelines.generation import GenerationPipeline

        run, s = self.run, self.run.settings
        run.folder.mkdir(parents=True, exist_ok=True)
        self.pipeline = GenerationPipeline.from_checkpoint(self.ckpt, quantize=s.quantize, dtype=dtype_of(s.dtype),
                                                           low_memory=s.low_memory)
        run.log(f"{run.tag}model loaded in {self.pipeline.load_seconds:.2f}s"
                + (f" ({self.pipeline.source}; quantize {s.quantize or 'float'}; host {run.host})" if s.verbose else ""))

    def make(self, i: int) -> dict:
        """Make and save task ``i`` (one image, its own seed), log it; returns its record."""
        run = self.run
        if self.pipeline is None:
            self.load()
        task = run.tasks[i]
        t = time.perf_counter()
        try:
            out = self.pipeline.generate(task.settings)
        except MobileOError as e:
            raise MobileOError(f"{task.file}: {e}") from None
        t_save = time.perf_counter()
        target = run.folder / task.file
        target.with_suffix(".json").unlink(missing_ok=True)  # a --metadata sidecar left without its image
        path = save_image(out.images[0], target, run.metadata(task), write_json=run.settings.metadata)
        if path != target:  # the name was claimed meanwhile
            path.unlink(missing_ok=True)
            path.with_suffix(".json").unlink(missing_ok=True)
            # A rank this one gave up on (slow, not dead) may have saved the same image: whole and with
            # the task's settings it is the same bytes (each image is made alone from its own seed).
            if not _is_done(run, i):
                raise MobileOError(f"{target} appeared while this run was making it: another run is writing "
                                   f"into {run.folder}.", fix="run one batch per output folder at a time.")
        timings = {**{k: round(v, 4) for k, v in out.timings.items()},
                   "save": round(time.perf_counter() - t_save, 4), "total": round(time.perf_counter() - t, 4)}
        rec = {"file": task.file, "prompt_index": task.prompt_index, "image": task.image, "seed": task.settings.seed,
               "rank": run.rank, "size": run.size, "host": run.host, "timings": timings}
        _append_record(run.folder, run.rank, rec)
        run.made.append(path)
        prompt = task.settings.prompt
        short = prompt if len(prompt) <= 50 else prompt[:47] + "..."
        run.log(f"{run.tag}{len(run.made)} {task.file} {timings['total']:.2f}s {short!r}")
        if self.on_saved is not None:
            self.on_saved(run.rank, len(run.made))
        return {**rec, "reused": False}

    def close(self) -> None:
        import mlx.core as mx

        if self.pipeline is not None:
            self.pipeline = None
            if not self.run.peers.lost:  # with a collective left blocked, clear_cache would wait for it
                mx.clear_cache()


def _speeds(run: Run) -> list[float]:
    """Work per second of each rank so far (a rank not yet measured: the others' mean, or 1)."""
    known = [c / s for c, s in run.work if s > 0 and c > 0]
    mean = sum(known) / len(known) if known else 1.0
    return [c / s if s > 0 and c > 0 else mean for c, s in run.work]


def _round(run: Run, maker: _Maker, costs: dict[int, float]) -> None:
    """One round: each rank makes its share (:func:`deal`), then one gather (bounded) shares
    what every rank made and how fast; raises :class:`PeerLost` when the others do not answer."""
    speeds = _speeds(run)
    shares = deal(run.pending, costs, speeds)
    t = time.perf_counter()
    mine = {}
    for i in shares[run.rank]:
        mine[str(i)] = maker.make(i)
    own = time.perf_counter() - t
    slowest = max(sum(costs[i] for i in share) / speeds[r] for r, share in enumerate(shares))
    measured = any(seconds > 0 for _, seconds in run.work)
    if mine:  # this rank's own seconds per cost unit turn the slowest share into seconds
        scale = own / max(sum(costs[i] for i in shares[run.rank]) / speeds[run.rank], 1e-9)
        wait = run.settings.peer_timeout + 2 * max(own, slowest * scale)
    elif measured:  # speeds are work per measured second: the slowest share is in seconds already
        wait = run.settings.peer_timeout + 2 * slowest
    else:  # nothing measured yet (a first round with no share here): the start's bound
        wait = run.settings.peer_timeout + STARTUP_SECONDS
    try:
        states = run.peers.gather_json({"made": mine}, wait, "the end of a round")
    except PeerLost:
        run.records.update({int(i): r for i, r in mine.items()})
        run.pending = [i for i in run.pending if str(i) not in mine]
        raise
    for r, s in enumerate(states):
        for i, rec in s["made"].items():
            run.records[int(i)] = rec
            run.work[r][0] += costs[int(i)]
            run.work[r][1] += rec["timings"]["total"]
    run.pending = [i for i in run.pending if i not in run.records]


def _is_done(run: Run, i: int) -> bool:
    """Task ``i``'s image is in the folder, whole, with the task's settings."""
    path = run.folder / run.tasks[i].file
    try:
        return path.exists() and damage(path) is None and mismatch(read_metadata(path), run.metadata(run.tasks[i])) is None
    except MobileOError:
        return False


def _finish_alone(run: Run, maker: _Maker, why: str) -> None:
    """The group was given up: make every image still pending here, keeping those a stalled
    rank saved meanwhile (whole, matching) - only its unfinished image is made again."""
    run.alone = True
    run.log(f"{run.tag}{why}: this process makes the {len(run.pending)} images left by itself "
            "(any image another process saved meanwhile is kept)")
    old = None
    for i in run.pending:
        path = run.folder / run.tasks[i].file
        if _is_done(run, i):
            old = _read_records(run.folder) if old is None else old
            run.records[i] = {**_reuse_record(run, i, old), "reused": False}
            continue
        path.unlink(missing_ok=True)
        run.records[i] = maker.make(i)
    run.pending = []


def make(run: Run, ckpt, on_saved: Callable[[int, int], None] | None = None) -> None:
    """Make the pending images in rounds (:func:`deal`: a rank that finishes early takes more
    of the cheap ones; the shares follow each rank's measured speed), each image made alone
    with its own seed (the pixels never depend on the number of processes), saved atomically
    and logged; ``on_saved(rank, count)`` after each.  When the others stop answering (the
    bounded wait of :mod:`mlx_model.pipelines.peers`) this rank finishes the rest alone."""
    costs = {i: cost(run.tasks[i]) for i in run.pending}
    maker = _Maker(run, ckpt, on_saved)
    try:
        while run.pending:
            try:
                _round(run, maker, costs)
            except PeerLost as e:
                _finish_alone(run, maker, str(e))
    finally:
        maker.close()


def write_run_index(run: Run) -> dict | None:
    """Rank 0 (or a rank that finished alone) writes ``index.jsonl`` from the records every
    round's gather shared (one line per image, in file order) and returns its figures; other
    ranks return None."""
    if run.rank != 0 and not run.alone:
        return None
    missing = [run.tasks[i].file for i in range(len(run.tasks)) if i not in run.records]
    if missing:
        raise MobileOError(f"{len(missing)} images are missing after the run (first: {missing[0]}).",
                           fix="rerun the same command: it makes only the missing images.")
    entries = []
    for i, task in enumerate(run.tasks):
        r, s = run.records[i], task.settings
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
    processes of ``mx.distributed.init()``'s group as they finish; images already there (whole,
    same settings) are kept.  Returns this rank's summary: ``made`` (paths), ``reused``,
    ``seconds``, and on rank 0 ``index`` and ``images_per_minute`` (images made now by all
    ranks per minute of rank 0's wall time, model loading included)."""
    run, ckpt = start(prompts_file, output_dir, settings, log)
    assign(run)
    make(run, ckpt, on_saved)
    mine_s = time.perf_counter() - run.t0
    run.log(f"{run.tag}done: {len(run.made)} made in {mine_s:.1f}s"
            + (f" ({60 * len(run.made) / mine_s:.1f} images/minute)" if run.made else ""))
    summary = {"rank": run.rank, "size": run.size, "made": run.made, "reused": len(run.holder), "seconds": mine_s}
    index = write_run_index(run)
    return summary if index is None else {**summary, **index}
