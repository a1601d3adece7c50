"""Peak extra memory and time of KD losses (forward + backward), each method in a fresh process.

    .venv/bin/python bench/loss_memory.py                      # N=2048, V=49,152 and 151,936
    .venv/bin/python bench/loss_memory.py --N 512 --V 151936   # smaller N: same ratios, less RAM
    .venv/bin/python bench/loss_memory.py --device cuda        # on a GPU: torch.cuda.max_memory_allocated

Memory is the process high-water mark (VmHWM in /proc/self/status, reset through /proc/self/clear_refs once the
inputs are allocated; tracemalloc does not see torch's allocations) after the method ran once, minus the resident set
at that reset, in units of one fp32 (N, V) buffer. The logits' gradient (one (N, V) buffer for the logit methods) counts: every method must produce it.
Time is the median of `--reps` further runs. Inputs: fp32 student logits (requires grad) and fp32 teacher logits; the
fused methods get hidden states (N, H) and an lm_head weight (V, H) instead of student logits, and Liger (which fuses
the teacher too) teacher hidden states and weight instead of teacher logits. A method whose estimated peak exceeds
the available RAM is skipped with the reason.

Methods: naive KL (log_softmax + kl_div), TRL's generalized_jsd_loss (beta=0.5, when TRL is installed), Liger's
chunked LigerFusedLinearJSDLoss in plain torch (compiled=False, when liger-kernel is installed), and ours: chunked
kd_loss, top-k kd_loss_topk (k=64, teacher top-k built inside), fused_kd_lm_loss (KD only, and KD + LM).
"""
from __future__ import annotations
import argparse, json, os, statistics, subprocess, sys, time

# rough peak of each method in (N, V) fp32 buffers beyond the inputs (from earlier runs), to skip what cannot fit
EST = dict(naive=5, trl_jsd=15, liger_jsd=2, ours_chunked=1.5, ours_topk=1.5, ours_fused=1, ours_fused_lm=1)
HIDDEN = 576  # SmolLM2-135M's width

def _status_bytes(field): # a /proc/self/status line (Linux), in bytes
    for line in open('/proc/self/status'):
        if line.startswith(field): return int(line.split()[1]) * 1024

def _reset_peak(): # reset the high-water mark (VmHWM) to the current RSS. Not ru_maxrss: it survives exec, so a worker
    with open('/proc/self/clear_refs', 'w') as f: f.write('5')   # started from a big process would report 0.

def _mem_available():
    try:
        for line in open('/proc/meminfo'):
            if line.startswith('MemAvailable:'): return int(line.split()[1]) * 1024
    except OSError: pass
    return None

def _make(method, N, V, device, chunk, fused_chunk, torch):
    "Inputs (allocated now) and a closure running forward + backward."
    import torch.nn.functional as F
    g = torch.Generator(device=device).manual_seed(0)
    def rnd(*shape, scale=1.0, grad=False):
        x = torch.randn(*shape, generator=g, device=device).mul_(scale)
        return x.requires_grad_(grad)
    if method in ('ours_fused', 'ours_fused_lm', 'liger_jsd'):
        h, W = rnd(N, HIDDEN, grad=True), rnd(V, HIDDEN, scale=0.05, grad=True)
        params = [h, W]
        if method == 'liger_jsd':
            from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss
            th, tW = rnd(N, HIDDEN), rnd(V, HIDDEN, scale=0.05)
            labels = torch.randint(0, V, (N,), generator=g, device=device)
            loss_fn = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=0.5, compiled=False,
                                              chunk_size=chunk)
            return params, lambda: loss_fn(h, W, th, tW, labels)
        from kd_toolkit.losses import fused_kd_lm_loss
        t = rnd(N, V, scale=2.0)
        targets = torch.randint(0, V, (N,), generator=g, device=device) if method == 'ours_fused_lm' else None
        def run():
            out = fused_kd_lm_loss(h, W, t, targets, chunk_size=fused_chunk)
            return sum(out.values())
        return params, run
    s, t = rnd(N, V, scale=2.0, grad=True), rnd(N, V, scale=2.0)
    if method == 'naive':
        return [s], lambda: F.kl_div(F.log_softmax(s, -1), F.softmax(t, -1), reduction='batchmean')
    if method == 'trl_jsd':
        from trl.experimental.gkd.gkd_trainer import GKDTrainer
        return [s], lambda: GKDTrainer.generalized_jsd_loss(s[None], t[None], beta=0.5)
    from kd_toolkit.losses import kd_loss, kd_loss_topk, topk_teacher
    if method == 'ours_chunked': return [s], lambda: kd_loss(s, t, chunk_size=chunk)
    if method == 'ours_topk': return [s], lambda: kd_loss_topk(s, topk_teacher(t, 64, chunk_size=chunk), chunk_size=chunk)
    raise ValueError(f"unknown method {method!r}")

def worker(method, N, V, device, chunk, fused_chunk, reps):
    "Run one method in this (fresh) process; print one JSON line."
    import warnings; warnings.filterwarnings('ignore')
    os.environ.setdefault('TRL_EXPERIMENTAL_SILENCE', '1')
    import torch
    cuda = device == 'cuda'
    params, run = _make(method, N, V, device, chunk, fused_chunk, torch)
    if cuda: torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
    else: _reset_peak(); base = _status_bytes('VmRSS:')
    loss = run(); loss.backward()
    if cuda: torch.cuda.synchronize(); peak = torch.cuda.max_memory_allocated() - base
    else: peak = _status_bytes('VmHWM:') - base
    times = []
    for _ in range(reps):
        for p in params: p.grad = None
        t0 = time.perf_counter(); run().backward()
        if cuda: torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    print(json.dumps(dict(method=method, N=N, V=V, loss=float(loss), peak_bytes=peak, buf_bytes=N*V*4,
                          time_s=statistics.median(times) if times else float('nan'))))

def _available(method):
    mod = {'trl_jsd': 'trl', 'liger_jsd': 'liger_kernel'}.get(method)
    if mod is None: return None
    import importlib.util
    if importlib.util.find_spec(mod) is None: return f"{mod} not installed (pip install --no-deps -r bench/requirements.txt)"
    return None

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--N', type=int, default=2048, help='positions (B*L)')
    ap.add_argument('--V', type=int, nargs='+', default=[49152, 151936], help='vocabulary sizes')
    ap.add_argument('--chunk', type=int, default=128, help='positions per chunk: ours chunked/top-k and Liger')
    ap.add_argument('--fused-chunk', type=int, default=None, help="ours fused; default: the library's (N/32)")
    ap.add_argument('--reps', type=int, default=3, help='timed runs after the measured one (median)')
    ap.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    ap.add_argument('--methods', nargs='+', default=list(EST))
    ap.add_argument('--worker', help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker: return worker(a.worker, a.N, a.V[0], a.device, a.chunk, a.fused_chunk, a.reps)
    # glibc raises its mmap threshold up to 32 MB after a free, and then keeps freed chunks in the heap: the high-water
    # mark would count allocator fragmentation, not tensors. A fixed threshold returns every large block at once.
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '1'), MALLOC_MMAP_THRESHOLD_='1048576')
    print(f"peak extra memory in units of one fp32 (N, V) buffer, forward + backward; N={a.N}, chunk={a.chunk}, "
          f"fused chunk={a.fused_chunk or max(16, -(-a.N // 32))}, "
          f"device={a.device}, OMP_NUM_THREADS={env['OMP_NUM_THREADS']}", flush=True)
    print(f"{'V':>7} {'method':<14} {'peak (N,V)':>10} {'peak MB':>9} {'time s':>8} {'loss':>9}  note", flush=True)
    for V in a.V:
        buf = a.N * V * 4
        for m in a.methods:
            why = _available(m)
            avail = _mem_available() if a.device == 'cpu' else None
            need = (EST.get(m, 5) + 3) * buf
            if why is None and avail is not None and need > 0.8 * avail:
                why = f"needs ~{need/2**30:.1f} GiB, {avail/2**30:.1f} GiB available: use --N {max(64, a.N//4)}"
            if why: print(f"{V:>7} {m:<14} {'-':>10} {'-':>9} {'-':>8} {'-':>9}  skipped: {why}", flush=True); continue
            cmd = [sys.executable, os.path.abspath(__file__), '--worker', m, '--N', str(a.N), '--V', str(V),
                   '--chunk', str(a.chunk), '--reps', str(a.reps), '--device', a.device]
            if a.fused_chunk: cmd += ['--fused-chunk', str(a.fused_chunk)]
            r = subprocess.run(cmd, capture_output=True, text=True, env=env,
                               cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            lines = [l for l in r.stdout.splitlines() if l.startswith('{')]
            if r.returncode or not lines:
                print(f"{V:>7} {m:<14} {'-':>10} {'-':>9} {'-':>8} {'-':>9}  failed: "
                      f"{(r.stderr.strip().splitlines() or ['?'])[-1][:100]}"); continue
            d = json.loads(lines[-1])
            print(f"{V:>7} {m:<14} {d['peak_bytes']/buf:>10.2f} {d['peak_bytes']/2**20:>9.0f} {d['time_s']:>8.2f} "
                  f"{d['loss']:>9.4f}", flush=True)

if __name__ == '__main__': main()
