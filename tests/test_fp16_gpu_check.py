"bench/gpu_check.sh (the prepared GPU check of issue 14) runs end to end in its CPU smoke mode and prints its table."
import os, subprocess
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

def test_gpu_check_smoke(tmp_path):
    "Every Python part of the GPU check runs on tiny shapes (CPU, fp32 for the trainer) and the final table lists them."
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=str(ROOT / '.venv' / 'bin' / 'python') if (ROOT / '.venv').exists() else 'python3')
    r = subprocess.run(['bash', str(ROOT / 'bench' / 'gpu_check.sh'), '--smoke'], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    table = r.stdout[r.stdout.index('## gpu_check'):]
    assert 'all parts exited 0' in table
    for case in ('tests/test_gpu.py', 'chunked autocast seed 1', 'topk cast seed 1', 'fused fp32 seed 1', 'preset (top-64, chunk 1024)', 'fused |'):
        assert case in table, (case, table)
    assert (tmp_path / 'results.jsonl').read_text().count('"part": "training"') == 9
