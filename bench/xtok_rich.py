"""Issue 23's cross-tokenizer protocols, where nothing overfits, through the toolkit's `distill`.

    .venv/bin/python bench/quality.py --only xrich --seeds 0 1 --steps 300     # the capacity-matched, data-rich protocol
    .venv/bin/python bench/quality.py --only xrich --seeds 0 1 --steps 1000
    .venv/bin/python bench/xtok_rich.py table bench/results/xtok_rich.jsonl  # the tables (mean over seeds, share of the same-tokenizer gain)

Teacher: the real stories260K (tok512). Students of one architecture, `LlamaConfig(hidden 64, intermediate 172, 2 layers,
4 heads, tied)` built after `torch.manual_seed(1 + seed)`, one per tokenizer:
- `tok512`: the teacher's own tokenizer (the same-tokenizer rows: LM only and the default KD);
- `bpe512`: a byte-level BPE of the teacher's vocabulary size, trained here with `tokenizers` on the training text
  (capacity-matched: the issue's protocol);
- `bpe1024`: a larger vocabulary (student tokens longer than the teacher's pieces);
- `bpe171`: a smaller one, the teacher's vocabulary 3x the student's (the seeds' direction: Qwen2.5's 151k pieces against
  SmolLM2's 49k), its alphabet the bytes of the corpus.
Training text: 3M tok512 tokens of stories sampled from the teacher (`sampled_corpus.py`), packed (`data.pack_stream`:
each tokenizer's end-of-document token on the student side, the teacher's BOS per story), `steps` x 8 windows of at most
129 student tokens cut at common boundaries, at seeded random offsets (`data.RandomWindows(seed=2 + seed)`): 1,000 steps
read ~1M of ~2.7M tokens, nothing repeats. Held out: the REAL TinyStories excerpt's last 20% (cut at a space),
bits/byte over consecutive 128-token windows overlapping by one (every token after the first predicted once).
Knobs: the toolkit's defaults (KD 0.75 + LM 0.25, forward KL, T = 1, WSD, weight decay 0.3, clip 1) with
`learning_rate=3e-3` (the protocols' user setting), `kd_topk=64`, fp32; only `cross_vocab_loss` (and the data collator
for the seed's truncation) change between rows.
"""
from __future__ import annotations
import json, math, os, sys, tempfile, time
from functools import lru_cache
from pathlib import Path
os.environ.setdefault('OMP_NUM_THREADS', '1')
import torch, torch.nn.functional as F
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

STUDENTS = ('bpe512', 'bpe171', 'bpe1024')
METHODS = {  # row name: (curriculum, knobs, truncation collator)
    'LM only': ({'lm': 1.0}, {}, False),
    'default (trie)': (None, {}, False),
    'map': (None, dict(cross_vocab_loss='map'), False),
    'chunk': (None, dict(cross_vocab_loss='chunk'), False),
    'hybrid (GOLD-style)': (None, dict(cross_vocab_loss='hybrid'), False),
    'uld': (None, dict(cross_vocab_loss='uld'), False),
    "seed's truncation + map": (None, dict(cross_vocab_loss='map'), True),
}

def _cache() -> Path:
    return Path(os.environ.get('KD_TOOLKIT_CACHE', Path.home()/'.cache'/'kd_toolkit')).expanduser()/'bench'

@lru_cache(None)
def excerpt_split(frac=0.8) -> tuple[str, str]:
    "The TinyStories excerpt cut at the last space before `frac` of its characters (train, held out)."
    from kd_toolkit.assets import read_text
    text = read_text('tinystories')
    cut = text.rfind(' ', 0, int(frac * len(text)))
    return text[:cut], text[cut:]

@lru_cache(None)
def train_texts() -> list:
    from sampled_corpus import sampled_stories
    return sampled_stories(3_000_000, 0)

@lru_cache(None)
def tokenizer(name:str):
    "tok512 (the teacher's), bpe<N> (trained here, cached), or a tokenizer of ../shared/data (gpt2, llama2-spm, ...)."
    from kd_toolkit.assets import load_tokenizer
    if not name.startswith('bpe'): return load_tokenizer(name)
    from transformers import AutoTokenizer
    d = _cache()/name
    if not (d/'tokenizer.json').is_file(): _train_bpe(int(name[3:]), d)
    return AutoTokenizer.from_pretrained(str(d))

def _train_bpe(size:int, d:Path):
    "A byte-level BPE of `size` tokens on the training stories (fewer than 256: the alphabet is the corpus's bytes)."
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer, tk.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    texts = train_texts()
    if size > 300: alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        b2u = bytes_to_unicode()
        alphabet = sorted({b2u[b] for t in texts[:5000] + [excerpt_split()[1]] for b in t.encode()})
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=size, special_tokens=['<|endoftext|>'],
                                                      initial_alphabet=alphabet, show_progress=False))
    tmp = d.with_suffix('.tmp'); PreTrainedTokenizerFast(tokenizer_object=tk, eos_token='<|endoftext|>').save_pretrained(tmp)
    os.replace(tmp, d)

@lru_cache(None)
def streams(name:str):
    "(student tokenizer, packed training stream with the teacher's tokens, held-out stream of the student's tokens)."
    from kd_toolkit.data import pack_stream
    ttok, stok = tokenizer('tok512'), tokenizer(name)
    same = name == 'tok512'
    p = _cache()/f'xrich-stream-{name}.pt'
    if p.is_file(): train, held = torch.load(p, weights_only=False)
    else:
        train = pack_stream(train_texts(), stok, None if same else ttok, add_eos=not same, teacher_add_eos=False)
        held = pack_stream([excerpt_split()[1]], stok, add_eos=False)
        torch.save((train, held), p)
    return stok, train, held

def student(vocab:int, seed:int):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=True,
                      bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(1 + seed)
    return LlamaForCausalLM(cfg).train()

@torch.no_grad()
def stream_bpb(model, held, pad:int, bs:int=16) -> float:
    "Held-out bits/byte over consecutive 128-token windows of `held` (overlap 1: every token after the first once)."
    from kd_toolkit.data import KDCollator, packed_windows
    from kd_toolkit.losses import next_token_targets
    was = model.training; model.eval()
    ds, col, nll, nbytes = packed_windows(held, 128, overlap=1), KDCollator(pad), 0.0, 0
    for i in range(0, len(ds), bs):
        b = col([ds[j] for j in range(i, min(i + bs, len(ds)))])
        logits = model(b['input_ids'], attention_mask=b['attention_mask']).logits
        tg = next_token_targets(b['labels'])
        nll += float(F.cross_entropy(logits.flatten(0, 1).float(), tg.flatten(), ignore_index=-100, reduction='sum'))
        nbytes += int(b['n_bytes'].sum())
    model.train(was)
    return nll / math.log(2) / nbytes

def one_run(name:str, method:str, steps:int, seed:int) -> dict:
    "One `distill` on the protocol; the held-out bits/byte and the seconds it took."
    from kd_toolkit.core import KDConfig
    from kd_toolkit.data import KDCollator, RandomWindows, pad_id
    from kd_toolkit.train import distill
    from kd_toolkit.assets import load_stories260k
    from quality import _truncation_collator
    cur, knobs, trunc = METHODS[method] if name != 'tok512' else ({'lm': 1.0} if method == 'LM only' else None, {}, False)
    stok, train, held = streams(name)
    ttok = tokenizer('tok512')
    xtok = name != 'tok512'
    col = KDCollator(pad_id(stok), pad_id(ttok) if xtok else None)
    cfg = KDConfig(**{**dict(output_dir=tempfile.mkdtemp(prefix=f'xrich_{name}_'), seed=seed, max_steps=steps,
                             per_device_train_batch_size=8, max_length=129, learning_rate=3e-3, precision='fp32',
                             kd_topk=64, cross_tokenizer=xtok, logging_steps=max(steps // 10, 1), eval_steps=0,
                             save_steps=10**9, progress_bar=False), **knobs})
    teacher = load_stories260k(attn='sdpa').eval()
    t0 = time.perf_counter()
    r = distill(cfg, teacher, student(len(stok), seed), RandomWindows(train, 129, 8, seed=2 + seed), None,
                student_tokenizer=stok, teacher_tokenizer=ttok if xtok else None, curriculum=cur,
                data_collator=_truncation_collator(col) if trunc else col)
    return dict(student=name, method=method, steps=steps, seed=seed, bpb=stream_bpb(r.student, held, pad_id(stok)),
                secs=time.perf_counter() - t0, kd_path=str(r.history['kd_path'].dropna().iloc[-1]))

def table(rows:list) -> list:
    "Mean over seeds per (student, method, steps): bits/byte, the gain over LM only (same student, seed, steps) and its share of the same-tokenizer gain."
    lm = {(r['student'], r['seed'], r['steps']): r['bpb'] for r in rows if r['method'] == 'LM only'}
    mean = lambda xs: sum(xs) / len(xs) if xs else math.nan
    groups = {}
    for r in rows: groups.setdefault((r['student'], r['method'], r['steps']), []).append(r)
    def gain(g): return [lm[(r['student'], r['seed'], r['steps'])] - r['bpb'] for r in g if (r['student'], r['seed'], r['steps']) in lm]
    same = {k[2]: mean(gain(g)) for k, g in groups.items() if k[0] == 'tok512' and k[1] != 'LM only'}
    out = []
    for (st, m, steps), g in sorted(groups.items(), key=lambda x: (x[0][2], STUDENTS.index(x[0][0]) if x[0][0] in STUDENTS else -1,
                                                                    list(METHODS).index(x[0][1]) if x[0][1] in METHODS else 0)):
        d = mean(gain(g))
        base = mean([lm[(r['student'], r['seed'], r['steps'])] for r in g if (r['student'], r['seed'], r['steps']) in lm])
        out.append({'student': st, 'method': m, 'steps': steps, 'seeds': ' '.join(str(r['seed']) for r in g),
                    'bits/byte': mean([r['bpb'] for r in g]), 'vs LM only': f"{-d / base:+.1%}" if m != 'LM only' else '',
                    'gain per seed': ' '.join(f"{x:+.3f}" for x in gain(g)) if m != 'LM only' else '',
                    'share of same-tokenizer gain': f"{d / same[steps]:.0%}" if m != 'LM only' and steps in same else '',
                    's': mean([r['secs'] for r in g])})
    return out

def run_protocol(steps:int, seeds, students=STUDENTS, methods=None, out:str|None=None) -> list:
    "The same-tokenizer rows, then every (student, method): one jsonl row each (appended to `out`), and the table."
    rows = []
    todo = [('tok512', m) for m in ('LM only', 'default (trie)')] + [(s, m) for s in students for m in (methods or METHODS)]
    for seed in seeds:
        for name, method in todo:
            r = one_run(name, method, steps, seed); rows.append(r)
            print(json.dumps(r), flush=True)
            if out:
                with open(out, 'a') as f: f.write(json.dumps(r) + '\n')
    return table(rows)

if __name__ == '__main__':
    from flops import md_table
    if sys.argv[1:2] == ['table']:
        rows = [json.loads(l) for p in sys.argv[2:] for l in open(p)]
        print(md_table(table(rows)))
