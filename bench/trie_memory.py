"""Memory and time of the piece trie's loss (`xvocab.trie_kl`, `cross_vocab_loss='trie'`) against top-k KD.

    .venv/bin/python bench/trie_memory.py            # one fresh process per chunk size; the table

Method (issue 24's loss-memory protocol): a fresh process per cell, a warm-up call on a tiny input, then
`/proc/self/clear_refs` and the process high-water mark (VmHWM) over one forward + backward, minus VmRSS before it,
as a multiple of one fp32 (N, V) buffer. Inputs: N = 2048 student rows (8 x 256), V = 49,152 (SmolLM2's vocabulary),
student logits `randn * 3` with grad; a random trie (every student token spelled as 1-3 of 49,152 teacher pieces,
`tests/test_xtok_trie._case`), the teacher's top-64 at every level. Time: the same call, and `losses.kd_loss_topk` over
the same rows and chunk size (what the same-tokenizer default runs), one thread.
"""
from __future__ import annotations
import json, os, subprocess, sys, time
os.environ.setdefault('OMP_NUM_THREADS', '1')
HERE = os.path.dirname(os.path.abspath(__file__))

def _status(field:str) -> int:
    for l in open('/proc/self/status'):
        if l.startswith(field): return int(l.split()[1]) * 1024

def cell(chunk) -> dict:
    "One measurement in this process."
    import torch
    sys.path.insert(0, os.path.join(HERE, '..', 'tests'))
    from kd_toolkit.losses import TopK, kd_loss_topk, topk_teacher
    from kd_toolkit.xvocab import trie_kl
    from test_xtok_trie import _case
    trie, logits, tk, rows, nodes = _case(0, B=8, Ls=256, V=49152, Vt=49152, k=64)
    x = logits.clone().requires_grad_()
    small = TopK(tk.logprobs[:10], tk.ids[:10], tk.tail[:10])
    trie_kl(x[:64], small, rows[:10], nodes[:10], trie, chunk_size=chunk).backward()   # warm-up
    x.grad = None
    with open('/proc/self/clear_refs', 'w') as f: f.write('5')
    base, t0 = _status('VmRSS:'), time.perf_counter()
    trie_kl(x, tk, rows, nodes, trie, chunk_size=chunk).backward()
    secs, peak = time.perf_counter() - t0, _status('VmHWM:')
    x.grad = None
    ref = topk_teacher(torch.randn(x.shape[0], x.shape[1]) * 3, 64)
    t0 = time.perf_counter()
    kd_loss_topk(x, ref, torch.ones(x.shape[0], dtype=torch.bool), chunk_size=chunk).backward()
    return dict(chunk=str(chunk), levels=len(rows), peak_x_buffer=round((peak - base) / (x.numel() * 4), 2),
                trie_s=round(secs, 2), topk_kd_s=round(time.perf_counter() - t0, 2))

if __name__ == '__main__':
    if sys.argv[1:2] == ['--cell']:
        c = sys.argv[2]
        print(json.dumps(cell(None if c == 'None' else c if c == 'auto' else int(c))))
    else:
        print('| chunk_size | levels | peak / one fp32 (N, V) buffer | trie_kl fwd+bwd s | kd_loss_topk s | time ratio |')
        print('|---|---|---|---|---|---|')
        for c in ('None', '64', '256', '1024', 'auto'):
            out = subprocess.run([sys.executable, __file__, '--cell', c], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {r['chunk']} | {r['levels']} | {r['peak_x_buffer']:.2f} | {r['trie_s']:.2f} | {r['topk_kd_s']:.2f} "
                  f"| {r['trie_s'] / r['topk_kd_s']:.1f}x |", flush=True)
