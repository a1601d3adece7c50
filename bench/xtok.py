"""Cross-tokenizer distillation in a plain PyTorch loop, on the toolkit's data and align functions (issue 16).

    nice -n 10 .venv/bin/python bench/xtok.py run --student gpt2 --method chunk --alpha 10 --steps 300 --out /tmp/xtok.jsonl
    .venv/bin/python bench/xtok.py table /tmp/xtok.jsonl        # the markdown table, with each row's share of the same-tokenizer KD gain

Teacher: the real stories260K (tok512, 5 x 64). Students: `LlamaConfig(vocab of the student tokenizer, hidden 32,
intermediate 86, 2 layers, 4 heads, tied embeddings)`, `torch.manual_seed(seed)` before building; AdamW lr 3e-3,
weight decay 0.01, constant LR, fp32, one thread. Every step: 16 windows of 129 student tokens (128 predictions) at
seeded random offsets of the packed training stream (`data.RandomWindows`, `torch.Generator().manual_seed(2)`,
`torch.randint(0, n - 129, (16,))`); across tokenizers each window is cut at common boundaries and carries the
teacher tokens of the same text (`data.pack_stream`).

Protocols (`--protocol`):
- `rich` (default): training text = stories sampled from stories260K (`bench/sampled_corpus.py`,
  `sampled_stories(3_000_000, 0)`, ~20k stories), packed with each tokenizer's end-of-document token on the student
  side and the teacher's own convention (BOS per story, no EOS) on the teacher side; held out = the whole REAL
  TinyStories excerpt. 300 steps x 16 x 128 tokens see about a third of the training stream once: LM-only cannot
  overfit.
- `excerpt`: the MEASUREMENTS.md plain loop: the excerpt split by characters (first 80% train, last 20% held out).

Held-out: bits per byte = summed next-token NLL (nats, / ln 2) over the held-out text in consecutive windows of 128
student tokens overlapping by one (every token after the first predicted exactly once) / its UTF-8 bytes.

Methods (`--method`): `lm` (CE only); `kd` (same tokenizer: (1 - a)·CE + a·KL(teacher || student), T=1, a = --alpha
default 0.5); cross-tokenizer, all `CE + alpha·term` at aligned positions: `chunk` (xvocab.chunk_likelihood_loss,
options --tau --debias --merge --match), `map` (teacher top-32 mapped onto student ids, forward KL, the toolkit's
default `cross_vocab_loss`), `uld`, `hybrid`, `trunc` (the seed's pairing of position i with position i + map).
"""
from __future__ import annotations
import argparse, json, math, os, sys, time
os.environ.setdefault('OMP_NUM_THREADS', '1')
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kd_toolkit.assets import load_stories260k, load_tokenizer, read_text
from kd_toolkit.data import KDCollator, RandomWindows, pack_stream, pad_id
from kd_toolkit.align import VocabMap, gather_aligned
from kd_toolkit.xvocab import (boundary_tokens, chunk_likelihood_loss, hybrid_loss, next_token_match, token_logprobs,
                               uld_loss)
from pathmap import PathMap, path_topk
from kd_toolkit.losses import kd_loss, kd_loss_topk, next_token_targets, topk_teacher

def student_model(vocab:int, seed:int):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=86, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=True,
                      bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).train()

def excerpt_split(frac=0.8):
    "The TinyStories excerpt cut at the last space before `frac` of its characters."
    text = read_text('tinystories')
    cut = text.rfind(' ', 0, int(frac * len(text)))
    return [text[:cut]], [text[cut:]]

def streams(protocol, stok, ttok):
    "(training stream, held-out stream of the student's tokens only)."
    same = stok is ttok
    if protocol == 'rich':
        from sampled_corpus import sampled_stories
        train, held = sampled_stories(3_000_000, 0), [read_text('tinystories')]
        tr = pack_stream(train, stok, None if same else ttok, add_eos=not same, teacher_add_eos=False)
    else:
        train, held = excerpt_split()
        tr = pack_stream(train, stok, None if same else ttok, add_eos=False)
    return tr, pack_stream(held, stok, add_eos=False)


from xtok_rich import stream_bpb as heldout_bpb   # held-out bits/byte over consecutive 128-token windows

def truncate(b):
    "The seed's pairing: student position i with teacher position i."
    Ls, Lt = b['input_ids'].shape[1], b['teacher_input_ids'].shape[1]
    idx = torch.arange(Ls).clamp(max=Lt - 1).expand_as(b['input_ids']).contiguous()
    n_t = b['teacher_attention_mask'].sum(1, keepdim=True)
    return idx, (idx < n_t) & b['attention_mask'].bool() & (torch.arange(Ls) < Lt)

def step_loss(a, b, model, teacher, ctx):
    "The training loss of one batch and its parts."
    logits = model(b['input_ids'], attention_mask=b['attention_mask']).logits
    tg = next_token_targets(b['labels'])
    valid = tg != -100
    need_b = a.method == 'chunk' and a.debias
    out = token_logprobs(logits, tg, ctx.get('s_bound') if need_b else None, chunk_size=512)
    slp, sb = out if need_b else (out, None)
    ce = -(slp[valid]).mean()
    parts = {'ce': float(ce)}
    if a.method == 'lm': return ce, parts
    with torch.no_grad():
        tids = b['teacher_input_ids'] if 'teacher_input_ids' in b else b['input_ids']
        tmask = b['teacher_attention_mask'] if 'teacher_input_ids' in b else b['attention_mask']
        tl = teacher(tids, attention_mask=tmask).logits.float()
    if a.method == 'kd':
        kl = kd_loss(logits, tl, b['attention_mask'], 'fkl')
        parts['kd'] = float(kl)
        return (1 - a.alpha) * ce + a.alpha * kl, parts
    if 'align_idx' not in b:  # the same tokenizer (a diagnostic): every position is a common boundary
        b['align_idx'] = torch.arange(b['input_ids'].shape[1]).expand_as(b['input_ids']).contiguous()
        b['align_mask'] = b['attention_mask'].bool()
    idx, am = truncate(b) if a.method == 'trunc' else (b['align_idx'], b['align_mask'] & b['attention_mask'].bool())
    if a.method == 'path':
        with torch.no_grad():
            ttg = next_token_targets(tids.masked_fill(tmask == 0, -100))
            tlp = token_logprobs(tl, ttg)
            tk, m = path_topk(ctx['path'], b['input_ids'], tids, idx, am, topk_teacher(tl, k=a.k), tlp, b['attention_mask'], tmask, k=a.k)
        term = kd_loss_topk(logits.flatten(0, 1), tk, m)
        parts['kd'] = float(term); parts['path_share'] = float(m.float().sum() / am.sum().clamp_min(1))
        return (1 - a.alpha) * ce + a.alpha * term, parts
    if a.method == 'chunk':
        with torch.no_grad():
            ttg = next_token_targets(tids.masked_fill(tmask == 0, -100))
            tout = token_logprobs(tl, ttg, ctx['t_bound'] if a.debias else None)
            tlp, tb = tout if a.debias else (tout, None)
        term = chunk_likelihood_loss(slp, tlp, idx, am, sb, tb, merge_below=a.merge, temperature=a.tau)
        if a.match:
            mt = next_token_match(b['input_ids'], tids, idx, am, ctx['vm'], tmask)
            tk = ctx['vm'].map_topk(gather_aligned(topk_teacher(tl, k=32), idx))
            mterm = kd_loss_topk(logits.flatten(0, 1), tk, mt.flatten())
            parts['match'] = float(mterm); parts['match_share'] = float(mt.sum() / am.sum().clamp_min(1))
            term = term + a.match * mterm
    else:
        tk = gather_aligned(topk_teacher(tl, k=a.k), idx)  # (B·Ls, k) over teacher ids
        flat, m = logits.flatten(0, 1), am.flatten()
        if a.method in ('map', 'trunc'): term = kd_loss_topk(flat, ctx['vm'].map_topk(tk), m)
        elif a.method == 'uld': term = uld_loss(flat, tk, m)
        elif a.method == 'hybrid': term = hybrid_loss(flat, tk, ctx['vm'], m)
        else: raise SystemExit(f"unknown method {a.method}")
    parts['kd'] = float(term)
    return ((1 - a.alpha) * ce if a.mix else ce) + a.alpha * term, parts

def run(a):
    torch.set_num_threads(1)
    ttok, stok = load_tokenizer('tok512'), load_tokenizer(a.student)
    if a.student == 'tok512': stok = ttok
    t0 = time.perf_counter()
    train, held = streams(a.protocol, stok, ttok)
    teacher = load_stories260k().eval()
    model = student_model(len(stok), a.seed)
    ctx = {}
    ctx['vm'] = VocabMap.from_tokenizers(ttok, stok)
    if a.method == 'path':
        ctx['path'] = PathMap.from_tokenizers(ttok, stok, torch.bincount(train.input_ids, minlength=len(stok)) if a.spread == 'unigram' else None)
    ctx['s_bound'], ctx['t_bound'] = boundary_tokens(stok, len(stok)), boundary_tokens(ttok, 512)
    prep = time.perf_counter() - t0
    windows = iter(RandomWindows(train, 129, 16, seed=2))
    col = KDCollator(pad_id(stok), pad_id(ttok))
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.01)
    evals, hist, t1 = {}, [], time.perf_counter()
    for step in range(1, a.steps + 1):
        b = col([next(windows) for _ in range(16)])
        loss, parts = step_loss(a, b, model, teacher, ctx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == 1: hist.append({'step': step, **parts}); print(step, parts, flush=True)
        if step % a.eval_every == 0 or step == a.steps: evals[step] = heldout_bpb(model, held, pad_id(stok)); print('eval', step, evals[step], flush=True)
    row = dict(protocol=a.protocol, student=a.student, method=a.method, alpha=a.alpha, tau=a.tau, debias=a.debias,
               merge=a.merge, match=a.match, k=a.k, mix=a.mix, spread=a.spread, seed=a.seed, steps=a.steps, bpb=evals[a.steps], evals=evals,
               train_tokens=len(train), secs=time.perf_counter() - t1, prep_secs=prep, hist=hist)
    if a.out:
        with open(a.out, 'a') as f: f.write(json.dumps(row) + '\n')
    print(json.dumps({k: v for k, v in row.items() if k != 'hist'}))

def label(r):
    if r['method'] in ('lm',): return 'LM only'
    if r['method'] == 'kd': return f"same-tokenizer KD (a={r['alpha']:g})"
    if r['method'] == 'chunk':
        s = f"chunk likelihood a={r['alpha']:g} tau={r['tau']:g}"
        if r['debias']: s += ' debiased'
        if r['merge']: s += f" merge<{r['merge']:g}"
        if r['match']: s += f" + match KD x{r['match']:g}"
        return s
    if r['method'] == 'path': return f"path target ({r.get('spread', 'prefix')}), (1-a)·CE + a·KL, a={r['alpha']:g}, k={r.get('k', 32)}"
    return {'map': 'map (top-k mapped, fkl)', 'uld': 'ULD', 'hybrid': 'hybrid', 'trunc': "seed's truncation + map"}[r['method']] + \
        (f" (1-a)·CE + a·term, a={r['alpha']:g}" if r.get('mix') else f" CE + a·term, a={r['alpha']:g}") + f", k={r.get('k', 32)}"

def table(path):
    "Per protocol: mean over seeds of each (student, method) row; gains are against LM only of the same student and seed."
    from flops import md_table
    rows = [json.loads(l) for l in open(path)]
    for proto in sorted({r['protocol'] for r in rows}):
        rs = [r for r in rows if r['protocol'] == proto]
        lm = {}  # LM only at every evaluated step (constant LR, same windows: a shorter run is the same run stopped earlier)
        for r in rs:
            if r['method'] == 'lm':
                for k_, v in r['evals'].items(): lm[(r['student'], r['seed'], int(k_))] = v
        groups = {}
        for r in rs: groups.setdefault((r['student'], label(r), r['steps']), []).append(r)
        def gain(g): return [lm[(r['student'], r['seed'], r['steps'])] - r['bpb'] for r in g if (r['student'], r['seed'], r['steps']) in lm]
        mean = lambda xs: sum(xs) / len(xs) if xs else math.nan
        same = max((mean(gain(g)) for (st, lab, _), g in groups.items() if st == 'tok512' and g[0]['method'] == 'kd'), default=math.nan)
        out = []
        for (st, lab, steps), g in sorted(groups.items(), key=lambda x: (x[0][0], x[1][0]['method'] != 'lm', -mean(gain(x[1])))):
            ev = lambda k: mean([r['evals'].get(k, math.nan) for r in g])
            out.append({'student': st, 'method': lab, 'steps': steps, 'seeds': ' '.join(str(r['seed']) for r in g),
                        'bpb': mean([r['bpb'] for r in g]), 'bpb @100': ev('100'), 'bpb @200': ev('200'),
                        'gain vs LM': mean(gain(g)), 'gain per seed': ' '.join(f"{x:+.3f}" for x in gain(g)),
                        'share of same-tok KD gain': mean(gain(g)) / same if g[0]['method'] != 'lm' else math.nan,
                        'train s': mean([r['secs'] for r in g])})
        print(f"\n## protocol {proto}: same-tokenizer KD gain {same:.4f} bits/byte (best KD weight, mean over seeds)\n")
        print(md_table(out))

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest='cmd', required=True)
    r = sub.add_parser('run')
    r.add_argument('--protocol', choices=['rich', 'excerpt'], default='rich')
    r.add_argument('--student', choices=['gpt2', 'llama2-spm', 'tok512', 'smollm2'], default='gpt2')
    r.add_argument('--method', choices=['lm', 'kd', 'chunk', 'path', 'map', 'uld', 'hybrid', 'trunc'], default='chunk')
    r.add_argument('--alpha', type=float, default=None, help="weight of the KD term (kd: its share; default 0.5 for kd, else 1)")
    r.add_argument('--tau', type=float, default=1.0)
    r.add_argument('--debias', type=int, default=0, help='chunk: add each side\'s log P(next token starts a word) at chunk ends')
    r.add_argument('--merge', type=float, default=0.0, help='chunk: keep boundaries where the teacher\'s P(word start) > this')
    r.add_argument('--match', type=float, default=0.0, help='chunk: + this x mapped top-32 KL where the next tokens coincide')
    r.add_argument('--spread', choices=['prefix', 'unigram'], default='prefix', help="path: a teacher piece that starts longer student tokens: to its longest student prefix, or over the seen student tokens extending it by frequency")
    r.add_argument('--k', type=int, default=32, help='teacher top-k of the distribution-level targets (map, uld, hybrid, trunc, path)')
    r.add_argument('--mix', type=int, default=0, help='map/uld/hybrid/trunc: (1 - alpha)·CE + alpha·term instead of CE + alpha·term')
    r.add_argument('--steps', type=int, default=300)
    r.add_argument('--eval-every', type=int, default=100)
    r.add_argument('--lr', type=float, default=3e-3)
    r.add_argument('--seed', type=int, default=1)
    r.add_argument('--out', default=None)
    t = sub.add_parser('table'); t.add_argument('path')
    a = ap.parse_args()
    if a.cmd == 'table': table(a.path)
    else:
        if a.alpha is None: a.alpha = 0.5 if a.method in ('kd', 'path') else 1.0
        if a.student != 'tok512' and a.method == 'kd':
            raise SystemExit("--method kd needs the teacher's tokenizer (--student tok512); across tokenizers use chunk/map/uld/hybrid/trunc")
        run(a)
