"""Start ``mobileo-server --model demo`` N times and stop it with SIGINT or SIGTERM (idle, or
with requests in flight); count the clean exits (exit 0, no abort, no traceback) and check that
every request in flight got an answer (200 or an OpenAI-shaped 503).  Not collected by pytest.

    python tests/tools/server_shutdown.py --runs 50 --signal INT [--busy]
"""

import argparse
import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request


def start():
    proc = subprocess.Popen([sys.executable, "-m", "mlx_model.server", "--model", "demo", "-q", "0", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.search(r"(http://\S+/v1)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"did not start: {line!r} {proc.stderr.read()[-2000:]}")
    return proc, m.group(1)


def request(url, answers):
    body = json.dumps({"model": "demo", "prompt": "slow", "steps": 900}).encode()
    req = urllib.request.Request(url + "/images/generations", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            answers.append(r.status)
    except urllib.error.HTTPError as e:
        err = json.loads(e.read()).get("error", {})
        answers.append(f"{e.code}:{err.get('code')}")
    except Exception as e:  # a dropped connection
        answers.append(type(e).__name__)


def one(sig, busy):
    proc, url = start()
    answers, threads = [], []
    if busy:
        threads = [threading.Thread(target=request, args=(url, answers)) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(1.5)
    else:
        time.sleep(0.5)
    t0 = time.time()
    proc.send_signal(sig)
    rc = proc.wait(60)
    seconds = time.time() - t0
    for t in threads:
        t.join(60)
    err = proc.stderr.read()
    clean = rc == 0 and "terminate called" not in err and "Traceback" not in err
    return clean, rc, seconds, answers, err


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--signal", choices=("INT", "TERM"), default="INT")
    p.add_argument("--busy", action="store_true", help="three image requests in flight when the signal comes")
    a = p.parse_args()
    sig = getattr(signal, f"SIG{a.signal}")
    clean, worst, bad_answers = 0, 0.0, []
    for i in range(a.runs):
        ok, rc, seconds, answers, err = one(sig, a.busy)
        clean += ok
        worst = max(worst, seconds)
        bad_answers += [x for x in answers if x != "503:server_shutting_down"]
        if not ok:
            print(f"run {i}: exit {rc}: {err[-500:]}", file=sys.stderr)
    print(f"SIG{a.signal}{' busy' if a.busy else ''}: {clean} of {a.runs} clean exits; slowest exit "
          f"{worst:.1f} s; answers other than 503 server_shutting_down: {bad_answers or 'none'}")
    return 0 if clean == a.runs and not bad_answers else 1


if __name__ == "__main__":
    sys.exit(main())
