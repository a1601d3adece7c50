"""Issue 23's cross-tokenizer objectives in a plain PyTorch loop: the experiments that chose the piece trie.

    .venv/bin/python bench/xtok_plain.py --student bpe512 --method trie --steps 300 --seed 1 --out bench/results/xtok_plain.jsonl
    .venv/bin/python bench/xtok_plain.py table bench/results/xtok_plain.jsonl

The protocol of `bench/xtok_rich.py` (stories260K teacher, students of one architecture with tok512 or a trained BPE,
3M sampled tokens packed, the real excerpt's last 20% held out), in a plain loop: AdamW lr 3e-3, weight decay 0.3, the
engine's `warmup_stable_decay` (20% decay), clip 1, batch 8 windows of <= 129 tokens (`data.RandomWindows(seed=2 + seed)`),
loss `kd * term + lm * CE` (default 0.75 / 0.25), the teacher's top-64 (+ tail) live. Methods:
- `lm`: CE only; `kd`: same tokenizer, `losses.kd_loss_topk` at every position;
- `map`: the top-k mapped onto student ids (`VocabMap.map_topk`, the toolkit's `'map'`);
- `class`: MEASUREMENTS.md's classes — student token v in the class of the longest teacher piece prefixing its bytes, a
  teacher piece heading no student token in the class of its longest student prefix; one KL over classes (+ rest) at
  the aligned positions;
- `trie`: the library's piece trie (`xvocab.PieceTrie`, `trie_levels`, `trie_kl`): what `cross_vocab_loss='trie'` runs.
`bench/results/xtok_plain.jsonl` also holds the rows of the prototypes measured on the way (their `method`/`classes`
fields name them: `class join` = connected components of the (teacher, student) next-token pairs seen at common
boundaries; `trie` with `classes` '' = one KL over the final partition (flat); `trie cond` and `tkl` = the per-level
conditional KL the library keeps; `tkl .../greedy` = spellings by greedy longest-prefix bytes instead of the teacher's
tokenizer; `bin` = a binary KL on the written token's probability (same tokenizer); `class rand<K>`/`firstbyte` =
same-tokenizer KD over random / first-byte classes): the diagnostics of BENCHMARKS.md's issue-23 section.
"""
from __future__ import annotations
import argparse, json, math, os, sys, time
os.environ.setdefault('OMP_NUM_THREADS', '1')
import torch, torch.nn.functional as F
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kd_toolkit.align import VocabMap, gather_aligned, token_bytes
from kd_toolkit.losses import TopK, kd_loss_topk, next_token_targets, topk_teacher
from kd_toolkit.xvocab import PieceTrie, trie_kl, trie_levels
import xtok_rich as X

def prefix_classes(ttok, stok):
    "(teacher class (Vt,), student class (Vs,), K): MEASUREMENTS.md's longest-prefix classes."
    tb, sb = token_bytes(ttok)[0], token_bytes(stok)[0]
    t_by, s_by = {}, {}
    for i, b in enumerate(tb):
        if b: t_by.setdefault(b, i)
    for i, b in enumerate(sb):
        if b: s_by.setdefault(b, i)
    def longest(d, w):
        for n in range(min(len(w), max(map(len, d))), 0, -1):
            if w[:n] in d: return d[w[:n]]
    S = len(tb)   # one class for special tokens and what has no prefix
    cls_s = torch.tensor([S if not b or longest(t_by, b) is None else longest(t_by, b) for b in sb])
    heads = set(cls_s.tolist())
    cls_t = torch.full((len(tb),), S, dtype=torch.long)
    for t, b in enumerate(tb):
        if b: v = longest(s_by, b); cls_t[t] = t if t in heads else S if v is None else cls_s[v]
    u, inv = torch.unique(torch.cat([cls_t, cls_s]), return_inverse=True)
    return inv[:len(tb)], inv[len(tb):], len(u)

def class_kl(logits, tk:TopK, cls_t, cls_s, K, mask):
    "KL(teacher class masses || student class masses) over the classes the top-k lists, plus a rest bucket; mean over `mask`."
    q = torch.softmax(logits.float(), -1)
    Q = torch.zeros(len(q), K).index_add_(1, cls_s, q)
    P = torch.zeros(len(q), K).scatter_add_(1, cls_t[tk.ids], tk.logprobs.float().exp())
    on, tail = P > 0, tk.tail.float().exp()
    qr = torch.where(on, 0., Q).sum(-1)
    kl = torch.where(on, P * (P.clamp_min(1e-30).log() - Q.clamp_min(1e-30).log()), 0.).sum(-1)
    kl = kl + tail * (tail.clamp_min(1e-30).log() - qr.clamp_min(1e-30).log())
    return (kl * mask).sum() / mask.sum().clamp_min(1)

def run(a):
    from transformers import get_scheduler
    from kd_toolkit.assets import load_stories260k
    from kd_toolkit.data import KDCollator, RandomWindows, pad_id
    torch.set_num_threads(1)
    stok, train, held = X.streams(a.student)
    ttok, same = X.tokenizer('tok512'), a.student == 'tok512'
    teacher = load_stories260k(attn='sdpa').eval().requires_grad_(False)
    model = X.student(len(stok), a.seed)
    vm = None if same else VocabMap.from_tokenizers(ttok, stok)
    cls = prefix_classes(ttok, stok) if a.method == 'class' else None
    trie = PieceTrie.from_tokenizers(ttok, stok) if a.method == 'trie' else None
    windows, col = iter(RandomWindows(train, 129, a.batch, seed=2 + a.seed)), KDCollator(pad_id(stok), pad_id(ttok))
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=a.wd)
    sch = get_scheduler('warmup_stable_decay', opt, num_warmup_steps=0, num_training_steps=a.steps,
                        scheduler_specific_kwargs=dict(num_decay_steps=max(1, round(0.2 * a.steps))))
    t0, evals = time.perf_counter(), {}
    for step in range(1, a.steps + 1):
        b = col([next(windows) for _ in range(a.batch)])
        logits = model(b['input_ids'], attention_mask=b['attention_mask']).logits
        tg = next_token_targets(b['labels'])
        ce = F.cross_entropy(logits.flatten(0, 1).float(), tg.flatten(), ignore_index=-100)
        loss = ce
        if a.method != 'lm':
            tids, tmask = b.get('teacher_input_ids', b['input_ids']), b.get('teacher_attention_mask', b['attention_mask'])
            with torch.no_grad(): tl = teacher(tids, attention_mask=tmask).logits.float()
            idx = b.get('align_idx', torch.arange(b['input_ids'].shape[1]).expand_as(b['input_ids']))
            am = b.get('align_mask', torch.ones_like(b['attention_mask'])).bool() & b['attention_mask'].bool()
            flat = logits.flatten(0, 1)
            if a.method == 'trie':
                tk = topk_teacher(tl, k=a.k)
                r, tp, nd = trie_levels(trie, tg, tids, tmask, idx, am)
                term = trie_kl(flat, TopK(tk.logprobs[tp], tk.ids[tp], tk.tail[tp]), r, nd, trie, chunk_size='auto')
            else:
                tk = gather_aligned(topk_teacher(tl, k=a.k), idx)
                if a.method == 'kd': term = kd_loss_topk(flat, tk, am.flatten())
                elif a.method == 'map': term = kd_loss_topk(flat, vm.map_topk(tk), am.flatten())
                else: term = class_kl(flat, tk, *cls, am.flatten().float())
            loss = a.kd * term + a.lm * ce
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); sch.step(); opt.zero_grad(set_to_none=True)
        if step in a.eval_at or step == a.steps: evals[step] = X.stream_bpb(model, held, pad_id(stok))
    row = dict(student=a.student, method=a.method, classes={'class': 'prefix', 'trie': 'library'}.get(a.method, ''), kd=a.kd if a.method != 'lm' else 0.0,
               lm=a.lm if a.method != 'lm' else 1.0, k=a.k, seed=a.seed, steps=a.steps, bpb=evals[a.steps], evals=evals,
               secs=time.perf_counter() - t0, tag='xtok_plain')
    if a.out:
        with open(a.out, 'a') as f: f.write(json.dumps(row) + '\n')
    print(json.dumps(row), flush=True)

def table(rows:list) -> list:
    "Mean over seeds per (student, method, classes, weights, steps); gains against LM only of the same student, seed and steps."
    lm = {(r['student'], r['seed'], int(k)): v for r in rows if r['method'] == 'lm' for k, v in r['evals'].items()}
    name = lambda r: ' '.join(x for x in (r['method'], r.get('classes') or ('cond' if r.get('tag') == 'w5' else '')) if x)
    groups = {}
    for r in rows:
        for k, v in r['evals'].items(): groups.setdefault((r['student'], name(r), r['kd'], r['lm'], int(k)), []).append((r['seed'], v))
    mean = lambda xs: sum(xs) / len(xs) if xs else math.nan
    gain = lambda g, st, n: [lm[(st, s, n)] - v for s, v in g if (st, s, n) in lm]
    same = {k[4]: mean(gain(g, 'tok512', k[4])) for k, g in groups.items() if k[0] == 'tok512' and k[1] == 'kd'}
    out = []
    for (st, m, kd, lmw, n), g in sorted(groups.items(), key=lambda x: (x[0][4], x[0][0], x[0][1] != 'lm', x[0][1])):
        d = mean(gain(g, st, n))
        out.append({'student': st, 'method': m, 'KD + LM': f'{kd:g} + {lmw:g}', 'steps': n, 'seeds': ' '.join(str(s) for s, _ in g),
                    'bits/byte': mean([v for _, v in g]), 'gain vs LM only': d if m != 'lm' else math.nan,
                    'share of same-tokenizer gain': d / same[n] if m != 'lm' and n in same else math.nan})
    return out

if __name__ == '__main__':
    if sys.argv[1:2] == ['table']:
        from flops import md_table
        print(md_table(table([json.loads(l) for p in sys.argv[2:] for l in open(p)]))); sys.exit()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--student', default='bpe512', help='tok512, bpe171, bpe512, bpe1024 (bench/xtok_rich.py)')
    ap.add_argument('--method', default='trie', choices=['lm', 'kd', 'map', 'class', 'trie'])
    ap.add_argument('--kd', type=float, default=0.75); ap.add_argument('--lm', type=float, default=0.25)
    ap.add_argument('--k', type=int, default=64); ap.add_argument('--steps', type=int, default=300)
    ap.add_argument('--eval-at', type=int, nargs='*', default=[]); ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--lr', type=float, default=3e-3); ap.add_argument('--wd', type=float, default=0.3)
    ap.add_argument('--seed', type=int, default=0); ap.add_argument('--out', default=None)
    run(ap.parse_args())
