"""Peak extra memory and time of KD losses (forward + backward), each method in a fresh process.

    .venv/bin/python bench/loss_memory.py                      # N=2048, V=49,152 and 151,936, the methods below
    .venv/bin/python bench/loss_memory.py --divergences        # the per-divergence table: every divergence chunked,
                                                               #   at --chunk 1024 (the presets) and 'auto', V=49,152
    .venv/bin/python bench/loss_memory.py --divergences --dtype fp16 --before /tmp/losses_before.py
                                                               # fp16 logits; speed against the module before the fix
    .venv/bin/python bench/loss_memory.py --N 512 --V 151936   # smaller N: same ratios, less RAM
    .venv/bin/python bench/loss_memory.py --device cuda        # on a GPU: torch.cuda.max_memory_allocated

Memory is the process high-water mark (VmHWM in /proc/self/status, reset through /proc/self/clear_refs once the
inputs are allocated; tracemalloc does not see torch's allocations) after the method ran once, minus the resident set
at that reset, in units of one fp32 (N, V) buffer. The logits' gradient (one (N, V) buffer in the logits' dtype for
the logit methods: 1.0 in fp32, 0.5 in fp16) counts: every method must produce it. Time is the median of `--reps`
further runs. Inputs: student logits (requires grad) and teacher logits in `--dtype` (fp32 by default); the fused
methods get hidden states (N, H) and an lm_head weight (V, H) instead of student logits, and Liger (which fuses
the teacher too) teacher hidden states and weight instead of teacher logits. A method whose estimated peak exceeds
the available RAM is skipped with the reason.

Methods: naive KL (log_softmax + kl_div), TRL's generalized_jsd_loss (beta=0.5, when TRL is installed), Liger's
chunked LigerFusedLinearJSDLoss in plain torch (compiled=False, when liger-kernel is installed), and ours: chunked
kd_loss (`ours_chunked` = forward KL; `chunked_<divergence>` for each divergence), top-k kd_loss_topk (k=64, teacher
top-k built inside), fused_kd_lm_loss (KD only, and KD + LM), lm_loss chunked (`chunked_lm`). `--chunk` takes a
number of positions or `auto` (`kd_toolkit.losses.auto_chunk`: N/32 here). With `--before FILE` (a losses module from
an older commit, e.g. `git show fb6f790:kd_toolkit/losses.py > FILE`), every `ours`/`chunked` method also runs with
that module, interleaved, as `<method>@before`: the speed of the fix in the same run.
"""
from __future__ import annotations
import argparse, json, os, statistics, subprocess, sys, time

# rough peak of each method in (N, V) fp32 buffers beyond the inputs (from earlier runs), to skip what cannot fit
EST = dict(naive=5, trl_jsd=15, liger_jsd=2, ours_chunked=2.5, ours_topk=2.5, ours_fused=1, ours_fused_lm=1)
HIDDEN = 576  # SmolLM2-135M's width
DTYPES = dict(fp32='float32', fp16='float16', bf16='bfloat16')

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

def _losses(before): # kd_toolkit.losses, or an older copy of it loaded from a file
    if not before:
        from kd_toolkit import losses
        return losses
    import importlib.util, kd_toolkit   # the file imports `.core`: load it inside the package
    spec = importlib.util.spec_from_file_location('kd_toolkit._losses_before', before)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod

def _chunk(c): return c if c in (None, 'auto') else int(c)

def _make(method, N, V, device, chunk, fused_chunk, torch, dtype='fp32', before=None):
    "Inputs (allocated now) and a closure running forward + backward."
    import torch.nn.functional as F
    g = torch.Generator(device=device).manual_seed(0)
    dt = getattr(torch, DTYPES[dtype])
    def rnd(*shape, scale=1.0, grad=False):
        x = torch.randn(*shape, generator=g, device=device).mul_(scale).to(dt)
        return x.requires_grad_(grad)
    if method in ('ours_fused', 'ours_fused_lm', 'liger_jsd'):
        h, W = rnd(N, HIDDEN, grad=True), rnd(V, HIDDEN, scale=0.05, grad=True)
        params = [h, W]
        if method == 'liger_jsd':
            from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss
            th, tW = rnd(N, HIDDEN), rnd(V, HIDDEN, scale=0.05)
            labels = torch.randint(0, V, (N,), generator=g, device=device)
            loss_fn = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=0.5, compiled=False,
                                              chunk_size=chunk if isinstance(chunk, int) else 1024)
            return params, lambda: loss_fn(h, W, th, tW, labels)
        L = _losses(before)
        t = rnd(N, V, scale=2.0)
        targets = torch.randint(0, V, (N,), generator=g, device=device) if method == 'ours_fused_lm' else None
        def run():
            out = L.fused_kd_lm_loss(h, W, t, targets, chunk_size=fused_chunk)
            return sum(out.values())
        return params, run
    s, t = rnd(N, V, scale=2.0, grad=True), rnd(N, V, scale=2.0)
    if method == 'naive':
        return [s], lambda: F.kl_div(F.log_softmax(s.float(), -1), F.softmax(t.float(), -1), reduction='batchmean')
    if method == 'trl_jsd':
        from trl.experimental.gkd.gkd_trainer import GKDTrainer
        return [s], lambda: GKDTrainer.generalized_jsd_loss(s[None], t[None], beta=0.5)
    L = _losses(before)
    if method == 'ours_chunked': method = 'chunked_fkl'
    if method == 'chunked_lm':
        tg = torch.randint(0, V, (N,), generator=g, device=device)
        return [s], lambda: L.lm_loss(s, tg, chunk_size=chunk)
    if method.startswith('chunked_'): return [s], lambda: L.kd_loss(s, t, divergence=method[8:], chunk_size=chunk)
    if method == 'ours_topk': return [s], lambda: L.kd_loss_topk(s, L.topk_teacher(t, 64, chunk_size=chunk), chunk_size=chunk)
    raise ValueError(f"unknown method {method!r}")

def worker(method, N, V, device, chunk, fused_chunk, reps, dtype='fp32', before=None):
    "Run one method in this (fresh) process; print one JSON line."
    import warnings; warnings.filterwarnings('ignore')
    os.environ.setdefault('TRL_EXPERIMENTAL_SILENCE', '1')
    import torch
    cuda = device == 'cuda'
    params, run = _make(method, N, V, device, chunk, fused_chunk, torch, dtype, before)
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

def _run(a, env, m, V, chunk, before):
    cmd = [sys.executable, os.path.abspath(__file__), '--worker', m, '--N', str(a.N), '--V', str(V), '--chunk', str(chunk),
           '--reps', str(a.reps), '--device', a.device, '--dtype', a.dtype]
    if a.fused_chunk: cmd += ['--fused-chunk', str(a.fused_chunk)]
    if before: cmd += ['--before', before]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    lines = [l for l in r.stdout.splitlines() if l.startswith('{')]
    if r.returncode or not lines: return None, (r.stderr.strip().splitlines() or ['?'])[-1][:100]
    return json.loads(lines[-1]), None

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--N', type=int, default=2048, help='positions (B*L)')
    ap.add_argument('--V', type=int, nargs='+', default=None, help='vocabulary sizes (default 49152 151936; 49152 with --divergences)')
    ap.add_argument('--chunk', nargs='+', default=None, help="positions per chunk or 'auto' (default 128; 1024 auto with --divergences)")
    ap.add_argument('--fused-chunk', type=int, default=None, help="ours fused; default: the library's (auto_chunk)")
    ap.add_argument('--reps', type=int, default=3, help='timed runs after the measured one (median)')
    ap.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    ap.add_argument('--dtype', default='fp32', choices=list(DTYPES), help='student and teacher logits (and hidden states)')
    ap.add_argument('--methods', nargs='+', default=None)
    ap.add_argument('--divergences', action='store_true', help='every divergence chunked (+ chunked_lm, ours_topk, ours_fused)')
    ap.add_argument('--before', help='a losses module from an older commit: its methods run too, as <method>@before')
    ap.add_argument('--worker', help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a.worker, a.N, a.V[0], a.device, _chunk(a.chunk[0]), a.fused_chunk, a.reps, a.dtype, a.before)
    V_list = a.V or ([49152] if a.divergences else [49152, 151936])
    chunks = a.chunk or (['1024', 'auto'] if a.divergences else ['128'])
    from kd_toolkit.core import DIVERGENCES   # the one list of divergence names (the parent only)
    methods = a.methods or ([f'chunked_{d}' for d in DIVERGENCES] + ['chunked_lm', 'ours_topk', 'ours_fused'] if a.divergences
                            else list(EST))
    # glibc raises its mmap threshold up to 32 MB after a free, and then keeps freed chunks in the heap: the high-water
    # mark would count allocator fragmentation, not tensors. A fixed threshold returns every large block at once.
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '1'), MALLOC_MMAP_THRESHOLD_='1048576')
    print(f"peak extra memory in units of one fp32 (N, V) buffer, forward + backward; N={a.N}, {a.dtype} logits, "
          f"fused chunk={a.fused_chunk or 'auto'}, device={a.device}, OMP_NUM_THREADS={env['OMP_NUM_THREADS']}", flush=True)
    print(f"{'V':>7} {'chunk':>5} {'method':<22} {'peak (N,V)':>10} {'peak MB':>9} {'time s':>8} {'loss':>9}  note", flush=True)
    for V in V_list:
        buf = a.N * V * 4
        for chunk in chunks:
            for m in methods:
                if m in ('naive', 'trl_jsd', 'liger_jsd', 'ours_fused', 'ours_fused_lm') and chunk != chunks[0]: continue
                why = _available(m)
                avail = _mem_available() if a.device == 'cpu' else None
                need = (EST.get(m, 2.5) + 3) * buf
                if why is None and avail is not None and need > 0.8 * avail:
                    why = f"needs ~{need/2**30:.1f} GiB, {avail/2**30:.1f} GiB available: use --N {max(64, a.N//4)}"
                shown = '-' if m in ('naive', 'trl_jsd', 'liger_jsd', 'ours_fused', 'ours_fused_lm') else chunk
                if why:
                    print(f"{V:>7} {shown:>5} {m:<22} {'-':>10} {'-':>9} {'-':>8} {'-':>9}  skipped: {why}", flush=True); continue
                impls = [(m, None)] + ([(m + '@before', a.before)] if a.before and m not in ('naive', 'trl_jsd', 'liger_jsd') else [])
                for name, before in impls:
                    c = chunk
                    if before and chunk == 'auto':   # the older module has no 'auto': give it the same number of positions
                        from kd_toolkit.losses import auto_chunk
                        c = auto_chunk(a.N, V)
                    d, err = _run(a, env, m, V, c, before)
                    if d is None:
                        print(f"{V:>7} {shown:>5} {name:<22} {'-':>10} {'-':>9} {'-':>8} {'-':>9}  failed: {err}"); continue
                    print(f"{V:>7} {shown:>5} {name:<22} {d['peak_bytes']/buf:>10.2f} {d['peak_bytes']/2**20:>9.0f} "
                          f"{d['time_s']:>8.2f} {d['loss']:>9.4f}", flush=True)

if __name__ == '__main__': main()
