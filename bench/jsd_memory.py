"""Peak memory of the chunked divergences (issue 24's protocol): one fresh process per measurement.

    .venv/bin/python bench/jsd_memory.py                                  # jsd, rkl, skl (+ fkl) at chunk 64 128 256 auto
    .venv/bin/python bench/jsd_memory.py --losses /tmp/h24/losses_fix.py  # the same with a patched copy of losses.py
    .venv/bin/python bench/jsd_memory.py --div jsd --chunk 128 --beta 0.9 # one cell

Protocol (issue 24, "Generalized JSD memory"): each (divergence, chunk) runs in a fresh Python process that imports
torch and the losses module, runs a warm-up forward + backward of the same call on a tiny input (randn(64, 512) * 2),
then allocates the inputs `randn(N, V) * 2` (student logits with grad, teacher logits; N = 2,048, V = 49,152), resets
the high-water mark (`/proc/self/clear_refs` <- 5), reads VmRSS, runs `kd_loss(...).backward()` once and reads VmHWM.
Peak = VmHWM - VmRSS at the reset, in units of one fp32 (N, V) buffer (the logits' gradient, 1.0 of them, counts: every
method has to produce it). `MALLOC_MMAP_THRESHOLD_=1048576` as in bench/loss_memory.py (glibc would otherwise keep
freed chunks in its heap and the high-water mark would count them); `--glibc-default` measures without it, as the
issue's figures were taken (JSD 2.4x at chunk 128 there is this retention on top of ~10 live chunk buffers). `--dtype fp16` gives fp16 logits (the
gradient is then 0.5 of a unit). Each row also prints the loss and the max relative gradient difference against the
installed kd_toolkit.losses on a small input (shows a patched module computes the same thing).
"""
from __future__ import annotations
import argparse, json, os, subprocess, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loss_memory import _losses, _reset_peak, _status_bytes

DIVS = ('jsd', 'rkl', 'skl', 'srkl', 'fkl', 'tvd')

def _agreement(L, div, beta, torch, g):
    "Loss and max relative gradient difference of L's chunked kd_loss against the installed module's plain one."
    from kd_toolkit import losses as base
    a = (torch.randn(300, 1000, generator=g) * 2).requires_grad_(); b = torch.randn(300, 1000, generator=g) * 2
    m = torch.rand(300, generator=g) > 0.2
    la = L.kd_loss(a, b, m, div, 1.7, beta=beta, chunk_size=64); ga, = torch.autograd.grad(la, a)
    a2 = a.detach().requires_grad_(); lb = base.kd_loss(a2, b, m, div, 1.7, beta=beta); gb, = torch.autograd.grad(lb, a2)
    return dict(dloss=abs(float(la - lb)), dgrad=float((ga - gb).abs().max() / gb.abs().max()))

def worker(div, chunk, N, V, losses_file, beta, dtype, warmup=True):
    import warnings; warnings.filterwarnings('ignore')
    import torch
    torch.set_num_threads(1)
    L = _losses(losses_file)
    dt = dict(fp32=torch.float32, fp16=torch.float16, bf16=torch.bfloat16)[dtype]
    c = chunk if chunk == 'auto' else int(chunk)
    g = torch.Generator().manual_seed(0)
    agree = dict(dloss=float('nan'), dgrad=float('nan'))
    if warmup:                                                   # a warm-up on a tiny input, then the agreement check
        ws = (torch.randn(64, 512, generator=g) * 2).to(dt).requires_grad_(); wt = (torch.randn(64, 512, generator=g) * 2).to(dt)
        L.kd_loss(ws, wt, divergence=div, beta=beta, chunk_size=c).backward()
        agree = _agreement(L, div, beta, torch, g)
    s = (torch.randn(N, V, generator=g) * 2).to(dt).requires_grad_(); t = (torch.randn(N, V, generator=g) * 2).to(dt)
    _reset_peak(); base_rss = _status_bytes('VmRSS:')
    loss = L.kd_loss(s, t, divergence=div, beta=beta, chunk_size=c); loss.backward()
    peak = _status_bytes('VmHWM:') - base_rss
    print(json.dumps(dict(div=div, chunk=str(chunk), units=peak / (N * V * 4), MB=peak / 2**20, loss=float(loss), **agree)))

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--div', nargs='+', default=['jsd', 'rkl', 'skl', 'fkl'], choices=DIVS)
    ap.add_argument('--chunk', nargs='+', default=['64', '128', '256', 'auto'])
    ap.add_argument('--N', type=int, default=2048); ap.add_argument('--V', type=int, default=49152)
    ap.add_argument('--beta', type=float, default=0.5)
    ap.add_argument('--dtype', default='fp32', choices=['fp32', 'fp16', 'bf16'])
    ap.add_argument('--losses', help='a losses.py copy to measure instead of the installed kd_toolkit.losses')
    ap.add_argument('--glibc-default', action='store_true', help="leave glibc's dynamic mmap threshold on (freed "
                    "blocks stay in the heap and count: the way issue 24's figures were taken)")
    ap.add_argument('--no-warmup', action='store_true', help='skip the warm-up (the first call then pays one-off costs)')
    ap.add_argument('--worker', nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker: return worker(a.worker[0], a.worker[1], a.N, a.V, a.losses, a.beta, a.dtype, not a.no_warmup)
    env = dict(os.environ, OMP_NUM_THREADS='1', MALLOC_MMAP_THRESHOLD_='1048576')
    if a.glibc_default: env.pop('MALLOC_MMAP_THRESHOLD_')
    print(f"peak (VmHWM) in fp32 (N, V) buffers, forward + backward; N={a.N} V={a.V} {a.dtype} beta={a.beta} "
          f"module={a.losses or 'kd_toolkit.losses'}{' NO warm-up' if a.no_warmup else ''}"
          f"{' glibc default mmap threshold' if a.glibc_default else ' MALLOC_MMAP_THRESHOLD_=1048576'}")
    print(f"{'div':<5} {'chunk':>5} {'units':>6} {'MB':>6} {'loss':>8} {'dgrad vs base':>13}")
    for d in a.div:
        for c in a.chunk:
            cmd = [sys.executable, os.path.abspath(__file__), '--worker', d, c, '--N', str(a.N), '--V', str(a.V),
                   '--beta', str(a.beta), '--dtype', a.dtype] + (['--losses', a.losses] if a.losses else []) + \
                  (['--no-warmup'] if a.no_warmup else [])
            r = subprocess.run(cmd, capture_output=True, text=True, env=env)
            lines = [l for l in r.stdout.splitlines() if l.startswith('{')]
            if not lines: print(f"{d:<5} {c:>5} failed: {r.stderr.strip().splitlines()[-1:]}", flush=True); continue
            x = json.loads(lines[-1])
            print(f"{d:<5} {c:>5} {x['units']:>6.2f} {x['MB']:>6.0f} {x['loss']:>8.4f} {x['dgrad']:>13.1e}", flush=True)

if __name__ == '__main__': main()
