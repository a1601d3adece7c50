"""How fast the `kd_toolkit` command answers when it has nothing to run: its help, and arguments it refuses.

    .venv/bin/python bench/cli_startup.py              # 5 runs of each call, median and slowest, wall seconds
    .venv/bin/python bench/cli_startup.py --runs 9

Issue 25's goal: under 1.5 s for `kd_toolkit --help` and argument errors (`kd_toolkit` imports no torch,
transformers or pandas until a command runs; the first lines below show what `import torch` alone costs here).
Each call is a fresh process of the installed console script (as a user types it), its exit code and the first line
it printed are shown. On a busy 2-core machine the numbers move with the load: compare within one run.
"""
from __future__ import annotations
import argparse, os, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

KD = shutil.which('kd_toolkit', path=str(Path(sys.executable).parent)) or 'kd_toolkit'

def calls(tmp:Path) -> dict[str, list[str]]:
    "The calls timed: help, usage errors, and a refused file or folder (each answered before any model loads)."
    return {'python -c pass (floor)': [sys.executable, '-c', 'pass'],
            'python -c "import torch" (reference)': [sys.executable, '-c', 'import torch'],
            'kd_toolkit --help': [KD, '--help'],
            'kd_toolkit demo --help': [KD, 'demo', '--help'],
            'kd_toolkit (no command)': [KD],
            'kd_toolkit demo --max-length 0': [KD, 'demo', '--max-length', '0'],
            'kd_toolkit demo --steps 0': [KD, 'demo', '--steps', '0', '--out', str(tmp/'out')],
            'kd_toolkit evaluate --model NOPE --data NOPE.txt': [KD, 'evaluate', '--model', str(tmp/'nope'),
                                                                 '--data', str(tmp/'nope.txt')],
            'kd_toolkit distill --config NOPE.json': [KD, 'distill', '--config', str(tmp/'nope.json')]}

def once(cmd:list[str]) -> tuple[float, int, str]:
    "(wall seconds, exit code, first line of output) of one call."
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    secs = time.perf_counter() - t0
    first = next((l for l in (r.stderr + r.stdout).splitlines() if l.strip()), '')
    return secs, r.returncode, first

def main(runs:int):
    print(f"{'call':50s} {'median s':>9s} {'max s':>7s}  exit  first line")
    with tempfile.TemporaryDirectory() as d:
        for name, cmd in calls(Path(d)).items():
            res = [once(cmd) for _ in range(runs)]
            ts = [t for t, _, _ in res]
            print(f"{name:50s} {statistics.median(ts):9.2f} {max(ts):7.2f}  {res[0][1]:4d}  {res[0][2][:70]}")

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--runs', type=int, default=5, help="calls of each command (default: 5)")
    main(p.parse_args().runs)
