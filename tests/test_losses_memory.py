"""Issue 24: every chunked divergence within 1.5 fp32 (N, V) buffers at every chunk size, measured as the issue does.

The process high-water mark (VmHWM) of one `kd_loss(...).backward()` in a fresh process, after a warm-up on a tiny
input, with glibc's default allocator settings (freed blocks that stay in the heap count): `bench/jsd_memory.py`.
"""
import json, os, subprocess, sys
from pathlib import Path
import pytest
from kd_toolkit.core import DIVERGENCES

ROOT = Path(__file__).resolve().parents[1]

def _units(div, chunk, N=1024, V=16384, dtype='fp32', beta=0.5):
    "Peak extra memory of forward + backward in fp32 (N, V) buffers, the gradient included (fresh process)."
    env = {k: v for k, v in os.environ.items() if not k.startswith('MALLOC_')}
    r = subprocess.run([sys.executable, str(ROOT/'bench'/'jsd_memory.py'), '--worker', div, str(chunk), '--N', str(N),
                        '--V', str(V), '--dtype', dtype, '--beta', str(beta), '--reps', '0'],
                       capture_output=True, text=True, env=dict(env, OMP_NUM_THREADS='1'), cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])['units']

def test_jsd_one_big_chunk():
    "JSD with the whole batch in one chunk (6.0 buffers before the closed form): the gradient and a few blocks."
    assert _units('jsd', 1024) <= 1.5

@pytest.mark.slow  # a measurement per fresh process (~3 s each): `make test-slow`, or bench/jsd_memory.py at full size
@pytest.mark.parametrize('div', DIVERGENCES)
@pytest.mark.parametrize('chunk', [64, 128, 256, 512, 1024, 'auto'])
def test_every_divergence_every_chunk(div, chunk):
    assert _units(div, chunk) <= 1.5

@pytest.mark.slow
@pytest.mark.parametrize('beta', [0.1, 0.9])
def test_jsd_other_betas(beta):
    assert _units('jsd', 128, beta=beta) <= 1.5

@pytest.mark.slow
@pytest.mark.parametrize('div', ['jsd', 'rkl', 'skl'])
def test_fp16_logits(div):
    "fp16 logits: the fp16 gradient (0.5) and fp32 blocks; the chunk gradient is remade in backward."
    assert _units(div, 128, dtype='fp16') <= 1.0
