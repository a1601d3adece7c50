"""fp16 gradients of the chunked, top-k and fused losses under a loss scale, before and after the fix (issue 14).

    .venv/bin/python bench/fp16_grads.py                                  # the issue's shapes: N=4096, V=49152, chunk 1024, scale 8192
    .venv/bin/python bench/fp16_grads.py --V 1024 --scale 8192            # small vocabulary: relative error
    .venv/bin/python bench/fp16_grads.py --before /tmp/losses_old.py      # also the old module (git show fb6f790:kd_toolkit/losses.py)

Student logits are fp32 randn (× --logit-std) rounded to fp16 (what autocast hands the loss), teacher logits the same,
targets uniform; every position counts. For each path the gradient of `scale · loss` with respect to the fp16 logits
is divided by the scale and compared with the fp32 plain-autograd gradient of the same loss on the same rounded values:
share of exact zeros (the ideal: the fp32 gradient rounded once to fp16 after the scale), relative norm error (and that
of the ideal: what one rounding to fp16 costs), cosine, non-finite entries. Memory: a few fp32 (N, V) buffers (N=4096, V=49152: ~0.8 GB each, ~5 GB in all).
"""
from __future__ import annotations
import argparse, importlib.util, sys, time
import torch, torch.nn.functional as F

def load(path): # a losses module from a file (e.g. the version before the fix)
    import kd_toolkit   # the file imports `.core`: load it inside the package
    spec = importlib.util.spec_from_file_location('kd_toolkit._losses_before', path)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod

def grad_of(fn, x, scale): # gradient of scale·fn(x) w.r.t. a leaf copy of x, divided by the scale (fp32)
    x = x.detach().clone().requires_grad_()
    (fn(x) * scale).backward()
    return x.grad.float().div_(scale)

def stats(g, ref, scale, rows=256): # one row: zeros (got, ideal), relative error, cosine, non-finite; float64 sums by row chunks
    acc = dict(z=0., zi=0., gg=0., rr=0., gr=0., dd=0., nf=0., di=0.)
    for i in range(0, g.shape[0], rows):
        gc, rc = g[i:i+rows].double(), ref[i:i+rows].double()
        ideal = (rc * scale).half().double() / scale
        acc['z'] += (gc == 0).sum().item(); acc['zi'] += (ideal == 0).sum().item()
        acc['di'] += (ideal - rc).pow(2).sum().item()
        acc['nf'] += (~torch.isfinite(gc)).sum().item()
        acc['gg'] += gc.pow(2).sum().item(); acc['rr'] += rc.pow(2).sum().item(); acc['gr'] += (gc * rc).sum().item()
        acc['dd'] += (gc - rc).pow(2).sum().item()
    n, ok = g.numel(), acc['nf'] == 0
    return dict(zeros=acc['z'] / n, zeros_ideal=acc['zi'] / n, nonfinite=acc['nf'] / n,
                rel_err=(acc['dd'] / acc['rr']) ** 0.5 if ok else float('nan'), ideal_err=(acc['di'] / acc['rr']) ** 0.5,
                cos=acc['gr'] / (acc['gg'] * acc['rr']) ** 0.5 if ok else float('nan'))

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--N', type=int, default=4096); ap.add_argument('--V', type=int, default=49152)
    ap.add_argument('--chunk', type=int, default=1024); ap.add_argument('--k', type=int, default=64)
    ap.add_argument('--scale', type=float, nargs='+', default=[8192.])
    ap.add_argument('--before', help='path of the losses module before the fix, to measure side by side')
    ap.add_argument('--paths', nargs='+', default=['lm', 'kd_fkl', 'kd_jsd', 'topk'])
    ap.add_argument('--plain', action='store_true', help='also the plain autograd path on the fp16 logits (slow at full size)')
    ap.add_argument('--logit-std', type=float, default=1.0, help='student and teacher logits: randn times this')
    a = ap.parse_args()
    from kd_toolkit import losses as after
    mods = {'after': after} | ({'before': load(a.before)} if a.before else {})
    g = torch.Generator().manual_seed(0)
    s = (torch.randn(a.N, a.V, generator=g) * a.logit_std).half()
    t = (torch.randn(a.N, a.V, generator=g) * a.logit_std).half()
    tg = torch.randint(0, a.V, (a.N,), generator=g)
    tk = after.topk_teacher(t, a.k, chunk_size=a.chunk)
    fns = lambda L, c: {'lm': lambda x: L.lm_loss(x, tg, chunk_size=c), 'kd_fkl': lambda x: L.kd_loss(x, t, chunk_size=c),
                        'kd_jsd': lambda x: L.kd_loss(x, t, divergence='jsd', chunk_size=c),
                        'topk': lambda x: L.kd_loss_topk(x, L.TopK(*tk), chunk_size=c)}
    print(f"N={a.N} V={a.V} chunk={a.chunk} k={a.k} fp16 logits; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    print(f"{'path':<8} {'scale':>9} {'impl':<14} {'zeros %':>8} {'ideal %':>8} {'rel err':>9} {'ideal err':>9} {'cos':>9} {'nonfinite %':>11} {'s':>6}")
    for p in a.paths:
        ref = grad_of(fns(after, None)[p], s.float(), 1.)       # fp32 plain autograd on the same rounded values
        for sc in a.scale:
            for name, L in [('plain fp16', after)] * a.plain + [(f'chunked {n}', m) for n, m in mods.items()]:
                t0 = time.perf_counter()
                gr = grad_of(fns(L, None if name == 'plain fp16' else a.chunk)[p], s, sc)
                r = stats(gr, ref, sc); del gr
                print(f"{p:<8} {sc:>9.0f} {name:<14} {100*r['zeros']:>8.2f} {100*r['zeros_ideal']:>8.2f} {r['rel_err']:>9.2e} {r['ideal_err']:>9.2e} "
                      f"{r['cos']:>9.6f} {100*r['nonfinite']:>11.2f} {time.perf_counter()-t0:>6.1f}", flush=True)
        del ref

if __name__ == '__main__': main()
