"""Issue #16: ``mobileo-generate --prompts-file`` in one process and under ``mlx.launch -n 2
--backend ring``: the prompts file and its errors, every image made exactly once, the same bytes
whatever the number of processes, a complete index, a rerun that does no work, and a rank
killed mid-run (tests/tools/batch_rank_stops.py: run_batch's on_saved callback) costing only its
unfinished images."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlx_model.pipelines import batch
from mlx_model import generate as generate_mod
from mlx_model.support.image_settings import ImageSettings
from mlx_model.support.image_files import read_metadata
from weights.core.errors import MobileOError

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = Path(sys.executable).parent / "mlx.launch"
PROMPTS = ["a red cup", "a blue bird on a branch", "a green tree", "snow on a mountain",
           "a yellow taxi", "two cats", "a lighthouse at night", "a bowl of soup"]
ARGS = ["--model", "demo", "--steps", "2", "--seed", "10"]  # default -q 4, as users run it
EXPECTED = [f"{k:05d}_{10 + k}.png" for k in range(len(PROMPTS))]


# ---------------------------------------------------------------------- the prompts file (no model)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_text_file_one_prompt_per_non_empty_line(tmp_path):
    jobs = batch.read_prompts_file(write(tmp_path / "p.txt", "a red cup\n\n  a blue bird  \n\n"))
    assert [(j.index, j.line, j.prompt) for j in jobs] == [(0, 1, "a red cup"), (1, 3, "a blue bird")]
    assert all(j.seed is None and j.steps is None for j in jobs)


def test_jsonl_with_per_prompt_settings(tmp_path):
    text = ('{"prompt": "a red cup", "seed": 7, "steps": 3, "guidance": 2, "width": 96, "height": 48}\n'
            '\n{"prompt": "a blue bird", "n_images": 2}\n')
    a, b = batch.read_prompts_file(write(tmp_path / "p.jsonl", text))
    assert (a.index, a.line, a.seed, a.steps, a.guidance, a.width, a.height) == (0, 1, 7, 3, 2.0, 96, 48)
    assert (b.index, b.line, b.seed, b.n_images) == (1, 3, None, 2)


@pytest.mark.parametrize("line,needle", [
    ('{"prompt": "a cup"', "not valid JSON"),
    ('["a cup"]', "must be a JSON object"),
    ('{"prompt": "a cup", "colour": "red"}', "unknown key 'colour'"),
    ('{"seed": 3}', '"prompt" is missing'),
    ('{"prompt": "  "}', '"prompt" is missing'),
    ('{"prompt": "a cup", "seed": -1}', '"seed" -1 is out of range'),
    ('{"prompt": "a cup", "seed": 18446744073709551616}', '"seed" 18446744073709551616 is out of range'),
    ('{"prompt": "a cup", "seed": true}', '"seed" must be a whole number'),
    ('{"prompt": "a cup", "steps": 0}', '"steps" must be from 1 to 1000'),
    ('{"prompt": "a cup", "guidance": NaN}', '"guidance" must be a finite number'),
    ('{"prompt": "a cup", "width": 1.5}', '"width" must be a whole number'),
    ('{"prompt": "a cup", "n_images": 0}', '"n_images" must be'),
])
def test_bad_jsonl_line_is_one_error_naming_the_line(tmp_path, line, needle):
    path = write(tmp_path / "p.jsonl", '{"prompt": "fine"}\n\n' + line + "\n")
    with pytest.raises(MobileOError) as e:
        batch.read_prompts_file(path)
    msg = str(e.value)
    assert msg.startswith("p.jsonl line 3: ") and needle in msg and " Fix: " in msg and "\n" not in msg, msg


def test_json_in_a_text_file_asks_for_jsonl(tmp_path):
    with pytest.raises(MobileOError, match=r"^p.txt line 2: this line is a JSON object.*name the file with .jsonl"):
        batch.read_prompts_file(write(tmp_path / "p.txt", 'a cup\n{"prompt": "a bird", "seed": 3}\n'))


def test_missing_or_empty_prompts_file(tmp_path):
    with pytest.raises(MobileOError, match="does not exist"):
        batch.read_prompts_file(tmp_path / "none.txt")
    with pytest.raises(MobileOError, match="holds no prompts"):
        batch.read_prompts_file(write(tmp_path / "empty.txt", "\n  \n"))


def test_plan_seeds_names_and_sizes(tmp_path):
    from weights.loading.synthetic import tiny_config

    config = tiny_config()
    jobs = batch.read_prompts_file(write(tmp_path / "p.jsonl", '{"prompt": "a"}\n{"prompt": "b", "seed": 100}\n'
                                         '{"prompt": "c", "n_images": 3, "width": 32}\n'))
    base = batch.BatchSettings(image=ImageSettings("(each prompt)", seed=5, steps=2))
    tasks = batch.plan(jobs, base, config)
    assert [(t.prompt_index, t.image, t.settings.seed, t.file) for t in tasks] == [
        (0, 0, 5, "00000_5.png"), (1, 0, 100, "00001_100.png"),
        (2, 0, 7, "00002_7.png"), (2, 1, 8, "00002_8.png"), (2, 2, 9, "00002_9.png")]
    assert {(t.settings.steps, t.settings.guidance) for t in tasks} == {(2, 1.5)}  # the command's steps, the model's guidance
    assert [(t.settings.height, t.settings.width) for t in tasks][-1] == (64, 32)
    bad = batch.read_prompts_file(write(tmp_path / "bad.jsonl", '{"prompt": "a"}\n{"prompt": "b", "height": 20}\n'))
    with pytest.raises(MobileOError, match=r"^bad.jsonl line 2: --height 20 is not a positive multiple of 8"):
        batch.plan(bad, batch.BatchSettings(), config, source="bad.jsonl")


def test_mismatch_names_the_first_differing_setting():
    want = {"prompt": "a", "seed": 1, "steps": 2, "guidance": 1.5, "scheduler": "dpm", "size": [64, 64],
            "quantize": 4, "dtype": "float32", "model_hash": "abc", "model": "demo"}
    assert batch.mismatch(dict(want, version="other", model="/elsewhere"), want) is None  # same weights
    assert batch.mismatch(dict(want, steps=4), want) == "steps 4, not 2"
    assert batch.mismatch(dict(want, model_hash="zzz"), want) == 'model_hash "zzz", not "abc"'


def fails(capsys, *args) -> str:
    with pytest.raises(SystemExit) as e:
        generate_mod.main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert e.value.code == 2 and out == "", (out, err)
    assert err.count("\n") == 1 and err.startswith("error: ") and " Fix: " in err, err
    return err


def test_options_that_do_not_go_with_a_prompts_file(tmp_path, capsys):
    p = write(tmp_path / "p.txt", "a red cup\n")
    base = ["--prompts-file", p, "--output-dir", tmp_path / "out", "--model", "demo"]
    assert "a prompt" in fails(capsys, "a cup", *base)
    assert "--output" in fails(capsys, *base, "--output", tmp_path / "x.png")
    assert "one --seed" in fails(capsys, *base, "--seed", "1", "2")
    assert "--latents" in fails(capsys, *base, "--latents", "x.npy")
    assert "needs --output-dir" in fails(capsys, "--prompts-file", p, "--model", "demo")
    assert "--output-dir is for --prompts-file" in fails(capsys, "a cup", "--output-dir", tmp_path / "out")
    assert "does not exist" in fails(capsys, "--prompts-file", tmp_path / "no.txt", "--output-dir", tmp_path / "o")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------- one process, in this process


@pytest.mark.slow
def test_batch_image_is_the_single_image_of_its_seed(tmp_path, tiny_ckpt_dir, capsys):
    """Per-prompt settings reach the images and the index; each image's pixels are those
    mobileo-generate makes for its prompt and seed alone."""
    from PIL import Image

    p = write(tmp_path / "p.jsonl", '{"prompt": "a red cup", "seed": 3, "width": 48, "height": 32, "steps": 3}\n'
                                    '{"prompt": "a blue bird", "n_images": 2, "guidance": 2.5}\n')
    generate_mod.main(["--prompts-file", str(p), "--output-dir", str(tmp_path / "out"), "--model",
                       str(tiny_ckpt_dir), "--steps", "2", "-q", "0", "--seed", "40"])
    out = capsys.readouterr().out
    assert "batch: 3 images in" in out and "(3 made now, 0 already there) by 1 process" in out
    assert "images/minute" in out.strip().splitlines()[-1]
    index = [json.loads(line) for line in (tmp_path / "out" / "index.jsonl").read_text().splitlines()]
    assert [(e["file"], e["seed"], e["steps"], e["guidance"], e["width"], e["height"]) for e in index] == [
        ("00000_3.png", 3, 3, 1.5, 48, 32), ("00001_41.png", 41, 2, 2.5, 64, 64), ("00001_42.png", 42, 2, 2.5, 64, 64)]
    assert {e["rank"] for e in index} == {0} and not any(e["reused"] for e in index)
    assert all(set(e["timings"]) >= {"text", "denoise", "decode", "total"} for e in index)
    meta = read_metadata(tmp_path / "out" / "00001_42.png")
    assert (meta["prompt"], meta["seed"], meta["guidance"], meta["size"]) == ("a blue bird", 42, 2.5, [64, 64])
    generate_mod.main(["a blue bird", "--seed", "42", "--guidance", "2.5", "--model", str(tiny_ckpt_dir),
                       "--steps", "2", "-q", "0", "--output", str(tmp_path / "alone.png")])
    with Image.open(tmp_path / "alone.png") as a, Image.open(tmp_path / "out" / "00001_42.png") as b:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_existing_image_with_other_settings_stops_the_run(tmp_path, tiny_ckpt_dir, capsys):
    p = write(tmp_path / "p.txt", "a red cup\na blue bird\n")
    args = ["--prompts-file", p, "--output-dir", tmp_path / "out", "--model", tiny_ckpt_dir, "-q", "0"]
    generate_mod.main([str(a) for a in [*args, "--steps", "2"]])
    capsys.readouterr()
    before = sorted(os.listdir(tmp_path / "out"))
    err = fails(capsys, *args, "--steps", "3")
    assert "00000_0.png already exists with other settings (steps 2, not 3)" in err, err
    assert "another --output-dir" in err
    assert sorted(os.listdir(tmp_path / "out")) == before


# ---------------------------------------------------------------------- several processes (mlx.launch, ring)


def env(cache: Path) -> dict:
    return dict(os.environ, MOBILEO_CACHE=str(cache), PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")


def free_port_pair() -> int:
    """A port p with p and p + 1 free (the ring listens on one port per rank)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no two consecutive free ports")


def launch(n: int, args, cwd: Path, cache: Path, program=("-m", "mlx_model.generate")) -> subprocess.CompletedProcess:
    """``mlx.launch -n n --backend ring -- python -m mlx_model.generate args`` (mlx.launch's own exit
    status is 0 even when a rank fails: callers check the files)."""
    cmd = [str(LAUNCH), "-n", str(n), "--backend", "ring", "--starting-port", str(free_port_pair()),
           "--", sys.executable, *program, *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=env(cache), capture_output=True, text=True, timeout=240)


def one_process(args, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlx_model.generate", *map(str, args)], cwd=cwd, env=env(cache),
                          capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A prompts file, a model cache, and the 1-process reference run."""
    root = tmp_path_factory.mktemp("batch")
    write(root / "prompts.txt", "\n".join(PROMPTS) + "\n")
    r = one_process(["--prompts-file", "prompts.txt", "--output-dir", "one", *ARGS], root, root / "cache")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (root / "one").glob("*.png")) == EXPECTED
    return root


@pytest.fixture(scope="module")
def ring(work):
    """Skip (with what failed) when mlx.launch cannot start two ring processes here."""
    if not LAUNCH.is_file():
        pytest.skip(f"no mlx.launch beside {sys.executable}")
    write(work / "probe.py", "import mlx.core as mx\ng = mx.distributed.init()\n"
                             "print('SUM', mx.distributed.all_sum(mx.array([g.rank() + 1.0])).item(), g.size())\n")
    cmd = [str(LAUNCH), "-n", "2", "--backend", "ring", "--starting-port", str(free_port_pair()), "--",
           sys.executable, "probe.py"]
    r = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=60)
    if r.stdout.count("SUM 3.0 2") != 2:
        pytest.skip(f"mlx.launch -n 2 --backend ring does not work here: {(r.stdout + r.stderr).strip()[-400:]}")


def pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def index_of(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "index.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_ranks_make_the_same_images_once_and_a_rerun_does_nothing(work, ring):
    r = launch(2, ["--prompts-file", "prompts.txt", "--output-dir", "two", *ARGS], work, work / "cache")
    assert "batch: 8 images in" in r.stdout and "(8 made now, 0 already there) by 2 processes" in r.stdout, \
        r.stdout + r.stderr
    assert "[rank 0/2] 8 of 8 images to make" in r.stdout and "[rank 1/2] 8 of 8 images to make" in r.stdout
    two = pngs(work / "two")
    assert list(two) == EXPECTED  # each prompt exactly once, nothing renamed to _1
    assert two == pngs(work / "one")  # byte-identical to the 1-process run
    index = index_of(work / "two")
    assert [e["file"] for e in index] == EXPECTED and [e["prompt"] for e in index] == PROMPTS
    assert {e["rank"] for e in index} == {0, 1} and not any(e["reused"] for e in index)
    assert all(e["timings"]["total"] > 0 for e in index)

    stamps = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (work / "two").glob("*.png")}
    again = launch(2, ["--prompts-file", "prompts.txt", "--output-dir", "two", *ARGS], work, work / "cache")
    assert "(0 made now, 8 already there)" in again.stdout and "nothing to make" in again.stdout, again.stdout
    assert again.stdout.count("0 of 8 images to make (8 already") == 2 and "model loaded" not in again.stdout
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (work / "two").glob("*.png")} == stamps
    rerun_index = index_of(work / "two")
    assert all(e["reused"] for e in rerun_index)
    assert [(e["file"], e["rank"]) for e in rerun_index] == [(e["file"], e["rank"]) for e in index]


@pytest.mark.slow
def test_killed_rank_costs_only_its_unfinished_images(work, ring):
    args = ["--prompts-file", "prompts.txt", "--output-dir", "crash", *ARGS]
    stops = (str(Path(__file__).parent / "tools" / "batch_rank_stops.py"), "1", "1")  # rank 1, after 1 image
    r = launch(2, args, work, work / "cache", program=stops)
    assert "rank 1 stops after 1 image(s)" in r.stdout, r.stdout + r.stderr
    crash = work / "crash"
    left = pngs(crash)
    assert not (crash / "index.jsonl").exists()  # no index for an unfinished set
    assert 1 <= len(left) < len(EXPECTED) and set(left) <= set(EXPECTED)
    rank1 = (crash / ".mobileo-batch" / "rank-1.jsonl").read_text().splitlines()
    assert len(rank1) == 1  # rank 1 died right after its first image

    r = launch(2, args, work, work / "cache")
    assert f"({len(EXPECTED) - len(left)} made now, {len(left)} already there)" in r.stdout, r.stdout + r.stderr
    done = pngs(crash)
    assert list(done) == EXPECTED and done == pngs(work / "one")  # complete, no duplicates, same bytes
    assert all(done[name] == data for name, data in left.items())
    index = index_of(crash)
    assert [e["file"] for e in index] == EXPECTED
    assert sorted(e["file"] for e in index if e["reused"]) == sorted(left)


# ---------------------------------------------------------------------- issue 26: lines, healing, balance, peers


def test_lines_end_at_newline_only(tmp_path):
    """U+2028, U+0085 and form feed are characters of a prompt, not line ends (str.splitlines)."""
    jobs = batch.read_prompts_file(write(tmp_path / "p.txt", "a red\u2028cup\r\na blue\x0cbird\u0085sky\n"))
    assert [(j.line, j.prompt) for j in jobs] == [(1, "a red\u2028cup"), (2, "a blue\x0cbird\u0085sky")]
    raw = '{"prompt": "a red\u2028cup"}\n{"prompt": "b", "seed": 2}\n'  # json.dumps(ensure_ascii=False) writes this
    jobs = batch.read_prompts_file(write(tmp_path / "p.jsonl", raw))
    assert [(j.line, j.prompt, j.seed) for j in jobs] == [(1, "a red\u2028cup", None), (2, "b", 2)]


def test_folder_as_prompts_file_says_so(tmp_path):
    with pytest.raises(MobileOError, match=r"--prompts-file .* is a folder, not a file"):
        batch.read_prompts_file(tmp_path)


def test_deal_gives_every_rank_its_share_of_the_costly_images():
    costs = {i: (256 * 256 * 9.0 if i % 2 == 0 else 64 * 64 * 3.0) for i in range(12)}  # alternating 256/8, 64/2
    pending, big_by_rank = list(costs), [0, 0]
    while pending:
        shares = batch.deal(pending, costs, [1.0, 1.0])
        for r, share in enumerate(shares):
            big_by_rank[r] += sum(costs[i] > 1e5 for i in share)
        done = [i for share in shares for i in share]
        assert sorted(done) == sorted(set(done)) and done  # each image once, progress every round
        pending = [i for i in pending if i not in done]
    assert big_by_rank == [3, 3]
    # a rank twice as fast takes the cheap images while the slow one makes a costly one
    assert batch.deal([0, 1, 2, 3], {0: 100.0, 1: 100.0, 2: 10.0, 3: 10.0}, [2.0, 1.0]) == [[0, 3, 2], [1]]


@pytest.mark.slow
def test_damaged_images_are_made_again_and_partials_removed(tmp_path, tiny_ckpt_dir, capsys):
    p = write(tmp_path / "p.txt", "a red cup\na blue bird\na green tree\na yellow taxi\n")
    out = tmp_path / "out"
    args = ["--prompts-file", p, "--output-dir", out, "--model", tiny_ckpt_dir, "-q", "0", "--steps", "1"]
    generate_mod.main([str(a) for a in args])
    good = pngs(out)
    names = sorted(good)
    (out / names[0]).write_bytes(b"")  # empty
    (out / names[1]).write_bytes(good[names[1]][: len(good[names[1]]) // 2])  # half written
    (out / names[2]).write_bytes(good[names[2]][:-12])  # all but its IEND chunk
    write(out / f".{names[3][:-4]}.1234abcd.png.partial", "left by a killed run")
    capsys.readouterr()
    generate_mod.main([str(a) for a in args])
    log = capsys.readouterr().out
    assert "(3 made now, 1 already there)" in log, log
    assert f"{names[0]} is damaged (empty)" in log and f"{names[2]} is damaged (no IEND chunk" in log, log
    assert "removed 1 temporary file(s)" in log
    assert pngs(out) == good and not list(out.glob(".*.partial"))
    index = index_of(out)
    assert [e["reused"] for e in index] == [False, False, False, True]


@pytest.mark.slow
def test_alternating_sizes_are_shared_evenly(work, ring):
    """Alternating costly and cheap images: both ranks make costly ones (a round-robin deal gave
    rank 0 all of them), and the pixels are those of one process."""
    lines = [{"prompt": p, "width": 128 if k % 2 == 0 else 32, "height": 128 if k % 2 == 0 else 32,
              "steps": 4 if k % 2 == 0 else 1} for k, p in enumerate(PROMPTS)]
    write(work / "mixed.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
    args = ["--prompts-file", "mixed.jsonl", "--model", "demo", "--seed", "10"]
    r = launch(2, [*args, "--output-dir", "mixed2"], work, work / "cache")
    assert "(8 made now, 0 already there) by 2 processes" in r.stdout, r.stdout + r.stderr
    index = index_of(work / "mixed2")
    big = [e["rank"] for e in index if e["width"] == 128]
    assert sorted(big) == [0, 0, 1, 1], index
    one = one_process([*args, "--output-dir", "mixed1"], work, work / "cache")
    assert one.returncode == 0, one.stderr
    assert pngs(work / "mixed2") == pngs(work / "mixed1")


@pytest.mark.slow
def test_stopped_rank_share_is_taken_by_the_other(work, ring):
    """Rank 1 stops itself (SIGSTOP) after its first image: rank 0 waits --peer-timeout (plus
    twice a round), names the stall, makes the rest, keeps rank 1's saved image, writes the index."""
    import signal
    import time

    # a peer timeout well above a round's length on a loaded 2-core machine: only the stop counts as a stall
    args = ["--prompts-file", "prompts.txt", "--output-dir", "stall", *ARGS, "--peer-timeout", "10"]
    stops = (str(Path(__file__).parent / "tools" / "batch_rank_stops.py"), "1", "1")
    cmd = [str(LAUNCH), "-n", "2", "--backend", "ring", "--starting-port", str(free_port_pair()), "--",
           sys.executable, *stops, *map(str, args)]
    proc = subprocess.Popen(cmd, cwd=work, env=dict(env(work / "cache"), BATCH_STOP_HOW="sigstop"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    t = time.monotonic()
    try:
        while not (work / "stall" / "index.jsonl").exists() and time.monotonic() - t < 180:
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the stopped rank (and the launcher waiting for it)
        out, err = proc.communicate(timeout=30)
    assert (work / "stall" / "index.jsonl").exists(), out + err
    assert "no answer from the other processes within" in out and "makes the" in out, out + err
    assert pngs(work / "stall") == pngs(work / "one")
    rank1 = (work / "stall" / ".mobileo-batch" / "rank-1.jsonl").read_text().splitlines()
    assert len(rank1) == 1  # rank 1's one image was kept, not made again
    index = index_of(work / "stall")
    assert [e["rank"] for e in index].count(1) == 1 and [e["file"] for e in index] == EXPECTED


@pytest.mark.slow
def test_a_slow_rank_given_up_on_finishes_without_error(work, ring):
    """Rank 1 sleeps (slow, not dead) past rank 0's bound after its first image, until rank 0,
    going on alone, has made every image; when rank 1 wakes, the images rank 0 saved meanwhile are the same bytes, so it counts
    them as made instead of stopping with an error.  Every image once, as one process makes it."""
    args = ["--prompts-file", "prompts.txt", "--output-dir", "slow", *ARGS, "--peer-timeout", "2"]
    stops = (str(Path(__file__).parent / "tools" / "batch_rank_stops.py"), "1", "1")
    cmd = [str(LAUNCH), "-n", "2", "--backend", "ring", "--starting-port", str(free_port_pair()), "--",
           sys.executable, *stops, *map(str, args)]
    r = subprocess.run(cmd, cwd=work, env=dict(env(work / "cache"), BATCH_STOP_HOW=f"until-made:{len(EXPECTED)}"),
                       capture_output=True, text=True, timeout=240)
    assert "appeared while this run was making it" not in r.stdout + r.stderr, r.stdout + r.stderr
    # rank 0 ends while its abandoned collective is still inside MLX: exit 0, no abort (peers.end_process)
    assert "Traceback" not in r.stderr and "terminate called" not in r.stderr and r.returncode == 0, r.stderr
    assert (work / "slow" / "index.jsonl").exists(), r.stdout + r.stderr
    assert pngs(work / "slow") == pngs(work / "one")


@pytest.mark.slow
def test_ranks_with_other_weights_stop_before_any_image(work, ring):
    args = ["--prompts-file", "prompts.txt", "--output-dir", "mixedweights", *ARGS]
    tool = (str(Path(__file__).parent / "tools" / "batch_rank_stops.py"), "99", "1")
    cmd = [str(LAUNCH), "-n", "2", "--backend", "ring", "--starting-port", str(free_port_pair()), "--",
           sys.executable, *tool, *map(str, args)]
    r = subprocess.run(cmd, cwd=work, env=dict(env(work / "cache"), BATCH_RANK_MODEL_HASH="0123456789"),
                       capture_output=True, text=True, timeout=240)
    assert "the processes would make different images: model_hash differs" in r.stderr, r.stdout + r.stderr
    assert "rank 1 (" in r.stderr and "0123456789" in r.stderr
    assert not list((work / "mixedweights").glob("*.png")) and not (work / "mixedweights" / "index.jsonl").exists()


def test_peer_that_never_comes_up_is_named(tmp_path):
    """A launcher's hostfile names two ranks but only rank 0 runs: a bounded wait, one line
    naming rank 1's address, the process ended (MLX's init holds the GIL: a watchdog ends it)."""
    port = free_port_pair()
    hostfile = write(tmp_path / "hosts.json", json.dumps([[f"127.0.0.1:{port}"], [f"127.0.0.1:{port + 1}"]]))
    write(tmp_path / "p.txt", "a red cup\n")
    r = subprocess.run([sys.executable, "-m", "mlx_model.generate", "--prompts-file", "p.txt", "--output-dir", "o",
                        "--model", "demo", "--peer-timeout", "1.5"], cwd=tmp_path, capture_output=True, text=True,
                       env=dict(env(tmp_path / "cache"), MLX_RANK="0", MLX_HOSTFILE=str(hostfile)), timeout=60)
    assert r.returncode != 0, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: the other processes did not answer within 1.5s"), \
        r.stderr
    assert f"rank 1 (127.0.0.1:{port + 1})" in r.stderr and " Fix: " in r.stderr
