"""On-policy and sequence-level distillation (issue 24): a quality protocol with prompts, and a plain-loop GKD prototype.

    nice -n 10 .venv/bin/python bench/onpolicy.py distill --lr 1.5e-3 --seeds 1 2 --out /tmp/h24/op.jsonl   # kd_toolkit's distill
    nice -n 10 .venv/bin/python bench/onpolicy.py gkd --lmbda 0 0.5 1 --beta 0 0.5 1 --seeds 1 2 --out /tmp/h24/op.jsonl
    nice -n 10 .venv/bin/python bench/onpolicy.py gkd --beta 1 --beta-data 0 --lmbda 0.5 --lmbda-from 0.5 --out ...
    nice -n 10 .venv/bin/python bench/onpolicy.py gkd --student gpt2 --lmbda 0 0.5 --seeds 1 --out ...   # cross-tokenizer
    .venv/bin/python bench/onpolicy.py table /tmp/h24/op.jsonl          # means over seeds, ratios against lmbda = 0

Protocol (MEASUREMENTS.md "On-policy baseline"). Teacher: the real stories260K (tok512). Student: `LlamaConfig(vocab of
its tokenizer, hidden 64, intermediate 172, 2 layers, 4 heads, tied embeddings)` built after `torch.manual_seed(seed)`.
Training data: the stories sampled from the teacher (`sampled_corpus.sampled_stories(3_000_000, 0)`, cached), each
tokenized with tok512 (no specials) and split into a prompt (its first 24 tokens) and a completion (the next <= 104;
stories of at most 24 tokens dropped); a completion that reaches the story's end gets the student's EOS. 300 steps of 8
random pairs (`torch.Generator().manual_seed(2 + seed)`), learning rate 1.5e-3 (distill's default 5e-4 leaves this
student at 2.96 bits/byte after 300 steps; 1.5e-3 reproduces MEASUREMENTS.md's baseline: see BENCHMARKS/the report).

Quality, after training (`score`):
- held-out prompts: the first 24 tok512 tokens of the text from each sentence start in the REAL TinyStories excerpt's
  held-out part (the last 20% of its tokens, as `protocols.reference()`; the excerpt holds 19 stories, so its last 20%
  has ~4 story starts but > 64 sentence starts), BOS first; 64 of them, evenly spread;
- the student samples 64 new tokens per prompt at T = 1 (no top-k/top-p; seeded, `torch.random.fork_rng`), stopping at
  its EOS or BOS (the teacher starts a new story with BOS); the tokens before the stop are the sample;
- `teacher_nll`: the teacher's mean per-token NLL (nats) of those sampled tokens given the prompt (pooled over all);
- `distinct2_words`: distinct whitespace-word bigrams / all word bigrams of the decoded samples, pooled (the measure
  that reproduces MEASUREMENTS.md's 0.90; tokenizer-independent); `distinct2`: the same over tok512 token bigrams;
  `distinct2_each`: per sample, averaged;
- `bpb`: held-out bits/byte on the excerpt's last 20% (`protocols.evaluate(model, protocols.reference())`: consecutive
  128-token windows, the UTF-8 bytes of exactly the predicted tokens).
Across tokenizers (`--student gpt2`) the prompts are the same texts, the student's samples are decoded and re-tokenized
with tok512 for the teacher's NLL (per teacher token, and per byte) and distinct-2; bpb is the student's own on the same
held-out text (`xtok.heldout_bpb`'s windows).

GKD prototype (`train`), a plain loop with the toolkit's losses (`kd_toolkit.losses.kd_loss`, `lm_loss`): each step,
with probability `lmbda` (a `random.Random(seed)`; never drawn at lmbda = 0) the student samples the batch's
completions itself (`model.generate`: KV cache, left padding, EOS/BOS stop, `max_new_tokens`, no grad, eval mode,
sampling temperature `gen_temperature`, not the KD temperature); `seq_kd`: the teacher samples them on the other steps.
Loss: `kd * kd_loss(divergence='jsd', beta)` on the completion positions only (the prompt is never a target) + `lm *
lm_loss` on the completions of data (teacher-forced) batches only (never on the student's own samples). Extensions
measured here: `beta_data` (the divergence of data batches, e.g. forward KL, while sampled batches use `beta`),
`lmbda_from` (no sampling before this share of the steps: a teacher-forced warm-up), `policy_weight` (on-policy KD as
an added component every step instead of a share of the batches). Optimiser as `distill`'s: AdamW, weight decay 0.3 on
matrices only, warmup_stable_decay (last 20% decays), clip 1.0. Left padding needs explicit `position_ids` in the
training forward (`cumsum(mask) - 1`); `generate` makes them itself.
"""
from __future__ import annotations
import argparse, json, math, os, random, re, sys, tempfile, time, warnings
from functools import lru_cache
os.environ.setdefault('OMP_NUM_THREADS', '1')
import torch
import torch.nn.functional as F
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
warnings.filterwarnings('ignore')

PROMPT, COMPLETION, NEW, N_PROMPTS, BATCH = 24, 104, 64, 64, 8

# ------------------------------------------------------------------------------------------------ assets and data
@lru_cache(None)
def tokenizer(name:str='tok512'):
    from kd_toolkit.testing import load_tokenizer
    return load_tokenizer(name)

@lru_cache(None)
def teacher():
    from protocols import teacher as t
    return t()

def stops(tok) -> list[int]:
    "Token ids that end a sample: the tokenizer's EOS, and BOS when it has one (stories260K starts a new story with BOS)."
    return sorted({i for i in (tok.eos_token_id, tok.bos_token_id) if i is not None})

def pad_of(tok) -> int:
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

@lru_cache(None)
def pairs(n_tokens:int=3_000_000, seed:int=0) -> list[tuple[list[int], list[int], bool]]:
    "(prompt ids, completion ids, the story ends inside the completion) in tok512, from the teacher-sampled stories."
    from sampled_corpus import sampled_stories
    enc = tokenizer()(sampled_stories(n_tokens, seed), add_special_tokens=False)['input_ids']
    return [(e[:PROMPT], e[PROMPT:PROMPT + COMPLETION], len(e) <= PROMPT + COMPLETION) for e in enc if len(e) > PROMPT]

@lru_cache(None)
def text_pairs() -> list[tuple[str, str, bool]]:
    "The same pairs as text: (prompt, completion, ends) with prompt + completion == decode(prompt ids + completion ids)."
    tok, out = tokenizer(), []
    for p, c, end in pairs():
        full, pt = tok.decode(p + c), tok.decode(p)
        if full.startswith(pt): out.append((pt, full[len(pt):], end))
    return out

@lru_cache(None)
def heldout_prompts(n:int=N_PROMPTS) -> list[str]:
    "Prompt texts: the first 24 tok512 tokens from each sentence start of the excerpt's held-out 20%, n evenly spread."
    from protocols import _split_excerpt
    tok = tokenizer()
    text = tok.decode(_split_excerpt()[1].tolist())
    starts = [m.end() for m in re.finditer(r'[.!?]["\']?\s+(?=["\']?[A-Z])', text)]
    cands = []
    for s in starts:
        ids = tok(text[s:], add_special_tokens=False)['input_ids'][:PROMPT]
        if len(ids) == PROMPT: cands.append(tok.decode(ids))
    if len(cands) < n: raise RuntimeError(f"only {len(cands)} held-out prompts (need {n})")
    return [cands[round(i * (len(cands) - 1) / (n - 1))] for i in range(n)]

def make_student(tok, seed:int):
    "The protocol's student for tokenizer `tok`: Llama 2 x 64 (intermediate 172, 4 heads), tied, after manual_seed(seed)."
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=pad_of(tok))
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).train()

# ------------------------------------------------------------------------------------------------ generation
def left_pad(seqs:list[list[int]], pad:int) -> tuple[torch.Tensor, torch.Tensor]:
    "Left-padded ids and attention mask (B, P)."
    P = max(map(len, seqs))
    ids = torch.full((len(seqs), P), pad, dtype=torch.long); mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        if s: ids[i, P - len(s):] = torch.tensor(s); mask[i, P - len(s):] = 1
    return ids, mask

@torch.no_grad()
def generate(model, prompts:list[list[int]], tok, max_new_tokens:int, temperature:float=1.0, seed:int|None=None,
             keep_stop:bool=True) -> list[list[int]]:
    "Sampled completions (KV cache, left padding, stop at EOS/BOS), each cut after its stop token (kept or not)."
    was = model.training; model.eval()
    ids, mask = left_pad(prompts, pad_of(tok))
    kw = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
              eos_token_id=stops(tok), pad_token_id=pad_of(tok), use_cache=True)
    if seed is None: out = model.generate(ids, attention_mask=mask, **kw)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed); out = model.generate(ids, attention_mask=mask, **kw)
    model.train(was)
    st, res = set(stops(tok)), []
    for row in out[:, ids.shape[1]:].tolist():
        cut = next((k for k, t in enumerate(row) if t in st), None)
        res.append(row if cut is None else row[:cut + 1] if keep_stop else row[:cut])
    return res

def join(prompts:list[list[int]], completions:list[list[int]], pad:int) -> dict:
    "Left-padded prompts + right-padded completions: ids, mask, position_ids, targets (next token on completion positions)."
    ids_p, mask_p = left_pad(prompts, pad)
    G = max(1, max(map(len, completions)))
    ids_c = torch.full((len(prompts), G), pad, dtype=torch.long); mask_c = torch.zeros_like(ids_c)
    for i, c in enumerate(completions):
        if c: ids_c[i, :len(c)] = torch.tensor(c); mask_c[i, :len(c)] = 1
    ids, mask = torch.cat([ids_p, ids_c], 1), torch.cat([mask_p, mask_c], 1)
    tg = torch.full_like(ids, -100)
    P = ids_p.shape[1]
    tg[:, P - 1:-1] = ids_c.masked_fill(mask_c == 0, -100)          # position j predicts token j + 1
    return dict(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0), targets=tg)

# ------------------------------------------------------------------------------------------------ quality
def _distinct2(samples:list[list[int]]) -> float:
    "Distinct token bigrams / all bigrams, pooled over the samples."
    bg = [(s[k], s[k + 1]) for s in samples for k in range(len(s) - 1)]
    return len(set(bg)) / max(1, len(bg))

def _distinct2_words(texts:list[str]) -> float:
    "Distinct whitespace-word bigrams / all word bigrams, pooled (tokenizer-independent)."
    ws = [t.split() for t in texts]
    bg = [(w[k], w[k + 1]) for w in ws for k in range(len(w) - 1)]
    return len(set(bg)) / max(1, len(bg))

def _distinct2_each(samples:list[list[int]]) -> float:
    "Distinct-2 of each sample (of 2+ tokens), averaged."
    d = [len({(s[k], s[k + 1]) for k in range(len(s) - 1)}) / (len(s) - 1) for s in samples if len(s) > 2]
    return sum(d) / max(1, len(d))

@torch.no_grad()
def teacher_nll(prompts:list[list[int]], samples:list[list[int]]) -> tuple[float, int]:
    "The teacher's summed NLL (nats) of the tok512 samples after their prompts, and the number of tokens."
    b = join(prompts, samples, 0)
    lp = F.log_softmax(teacher()(b['input_ids'], attention_mask=b['attention_mask'], position_ids=b['position_ids']).logits.float(), -1)
    tg = b['targets']; m = tg != -100
    return -float(lp.gather(-1, tg.clamp_min(0)[..., None])[..., 0][m].sum()), int(m.sum())

@torch.no_grad()
def score(model, student_tok='tok512', seed:int=0) -> dict:
    "Teacher NLL per token of the student's samples on the held-out prompts, distinct-2, held-out bits/byte."
    ttok, stok = tokenizer(), tokenizer(student_tok)
    texts = heldout_prompts()
    tp = [[ttok.bos_token_id] + ttok(t, add_special_tokens=False)['input_ids'] for t in texts]
    if student_tok == 'tok512':
        samples = generate(model, tp, stok, NEW, 1.0, seed=seed, keep_stop=False)
        extra = {}
    else:
        sp = [_student_prefix(stok) + stok(t, add_special_tokens=False)['input_ids'] for t in texts]
        raw = generate(model, sp, stok, NEW, 1.0, seed=seed, keep_stop=False)
        # decode the prompt + sample and keep the text after the prompt, re-tokenized for the teacher
        samples, nbytes = [], 0
        for t, p, s in zip(texts, sp, raw):
            cont = _continuation(stok, t, p, s)
            nbytes += len(cont.encode('utf-8'))
            samples.append(_teacher_continuation(t, cont))
        extra = dict(student_tokens=sum(map(len, raw)), sample_bytes=nbytes)
    nll, n = teacher_nll(tp, samples)
    out = dict(teacher_nll=nll / max(n, 1), distinct2=_distinct2(samples), distinct2_each=_distinct2_each(samples),
               distinct2_words=_distinct2_words([ttok.decode(x) for x in samples]), sample_tokens=n, **extra,
               bpb=heldout_bpb(model, student_tok))
    if 'sample_bytes' in out: out['teacher_bits_per_byte'] = nll / math.log(2) / max(out['sample_bytes'], 1)
    return out

def _student_prefix(stok) -> list[int]:
    "What a student's story starts with: its BOS, else its end-of-document token (GPT-2: <|endoftext|> between stories)."
    return [stok.bos_token_id if stok.bos_token_id is not None else stok.eos_token_id]

def _teacher_continuation(prompt:str, cont:str) -> list[int]:
    "tok512 ids of `cont` as it continues `prompt` (the tokens of prompt + cont after those of the prompt)."
    tok = tokenizer()
    pi = tok(prompt, add_special_tokens=False)['input_ids']
    fi = tok(prompt + cont, add_special_tokens=False)['input_ids']
    k = 0
    while k < min(len(pi), len(fi)) and pi[k] == fi[k]: k += 1
    return fi[k:] if k == len(pi) else tok(cont, add_special_tokens=False)['input_ids']

@lru_cache(None)
def _held_student(student_tok):
    from kd_toolkit.data import pack_stream
    from protocols import _split_excerpt
    text = tokenizer().decode(_split_excerpt()[1].tolist())
    return pack_stream([text], tokenizer(student_tok), add_eos=False)

def heldout_bpb(model, student_tok='tok512') -> float:
    if student_tok == 'tok512':
        from protocols import evaluate, reference
        return evaluate(model, reference())['bpb']
    from xtok import heldout_bpb as hb
    r = hb(model, _held_student(student_tok), pad_of(tokenizer(student_tok)))
    model.train(); return r

# ------------------------------------------------------------------------------------------------ the GKD loop
def _optimizer(model, steps, lr=5e-4, weight_decay=0.3):
    "distill's defaults: AdamW, decay on matrices only, warmup_stable_decay with the last 20% decaying."
    from transformers import get_scheduler
    dec = [p for p in model.parameters() if p.dim() >= 2]; nodec = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([dict(params=dec, weight_decay=weight_decay), dict(params=nodec, weight_decay=0.0)], lr=lr)
    sch = get_scheduler('warmup_stable_decay', opt, num_warmup_steps=0, num_training_steps=steps,
                        scheduler_specific_kwargs=dict(num_decay_steps=max(1, round(0.2 * steps))))
    return opt, sch

def train(steps:int=300, seed:int=1, lmbda:float=0.0, beta:float=0.0, kd:float=0.75, lm:float=0.25, temperature:float=1.0,
          gen_temperature:float=1.0, max_new_tokens:int=COMPLETION, seq_kd:bool=False, lr:float=1.5e-3, batch:int=BATCH,
          student_tok:str='tok512', cross_vocab_loss:str='map', kd_topk:int=64, log=None, on_start=None,
          lmbda_from:float=0.0, beta_data:float|None=None, policy_weight:float=0.0) -> dict:
    """The plain-loop GKD prototype; returns the trained model, timings, tokens trained on and per-step records.
    `policy_weight` > 0: on-policy KD as an added component instead of a share of batches: every step (after
    `lmbda_from`) trains on its data batch AND on the student's own completions for the same prompts, the latter weighted
    `policy_weight` (with `beta`; the data batch uses `beta_data`). `lmbda` must then be 0."""
    from kd_toolkit.losses import kd_loss, lm_loss
    torch.set_num_threads(1)
    T, ttok, stok = teacher(), tokenizer(), tokenizer(student_tok)
    model = make_student(stok, seed)
    opt, sch = _optimizer(model, steps, lr)
    g, coin = torch.Generator().manual_seed(2 + seed), random.Random(seed)
    data = pairs() if student_tok == 'tok512' else text_pairs()
    xt = None if student_tok == 'tok512' else _XTok(stok, ttok, cross_vocab_loss, kd_topk)
    gen_s = gen_cpu = 0.0; n_on = tokens = 0; rec = []
    if on_start: on_start()
    t0, c0 = time.perf_counter(), time.process_time()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(data), (batch,), generator=g).tolist()
        on = lmbda > 0 and step > lmbda_from * steps and coin.random() < lmbda   # lmbda_from: teacher-forced warm-up
        tg0, cg0 = time.perf_counter(), time.process_time()
        if xt is None:
            prompts = [[ttok.bos_token_id] + data[i][0] for i in idx]
            if on: comps = generate(model, prompts, stok, max_new_tokens, gen_temperature)
            elif seq_kd: comps = generate(T, prompts, ttok, max_new_tokens, gen_temperature)
            else: comps = [data[i][1] + ([stok.eos_token_id] if data[i][2] else []) for i in idx]
        else:
            ptexts = [data[i][0] for i in idx]
            if on: ctexts = xt.sample(model, ptexts, max_new_tokens, gen_temperature)
            elif seq_kd: ctexts = xt.sample_teacher(T, ptexts, max_new_tokens, gen_temperature)
            else: ctexts = [data[i][1] for i in idx]
        if on or seq_kd: gen_s += time.perf_counter() - tg0; gen_cpu += time.process_time() - cg0
        n_on += on
        if xt is None:
            b = join(prompts, comps, pad_of(stok))
            fw = dict(input_ids=b['input_ids'], attention_mask=b['attention_mask'], position_ids=b['position_ids'])
            logits = model(**fw).logits
            tokens += int(b['attention_mask'].sum())
            with torch.no_grad(): tl = T(**fw).logits
            m = b['targets'] != -100
            k = kd_loss(logits, tl, m, 'jsd', temperature, beta=beta if on or beta_data is None else beta_data)
            loss = kd * k
            lmv = lm_loss(logits, b['targets']) if lm > 0 and not on else None
        else:
            k, lmv, logits = xt.losses(model, T, ptexts, ctexts, temperature,
                                       beta if on or beta_data is None else beta_data, need_lm=lm > 0 and not on,
                                       ends=[data[i][2] and not on for i in idx])
            loss = kd * k
            tokens += xt.last_tokens
        if lmv is not None: loss = loss + lm * lmv
        kp = None
        if policy_weight > 0 and step > lmbda_from * steps:              # the additive on-policy component (tok512)
            tg0, cg0 = time.perf_counter(), time.process_time()
            comps = generate(model, prompts, stok, max_new_tokens, gen_temperature)
            gen_s += time.perf_counter() - tg0; gen_cpu += time.process_time() - cg0; n_on += 1
            bp = join(prompts, comps, pad_of(stok))
            fwp = dict(input_ids=bp['input_ids'], attention_mask=bp['attention_mask'], position_ids=bp['position_ids'])
            lp = model(**fwp).logits; tokens += int(bp['attention_mask'].sum())
            with torch.no_grad(): tlp = T(**fwp).logits
            kp = kd_loss(lp, tlp, bp['targets'] != -100, 'jsd', temperature, beta=beta)
            loss = loss + policy_weight * kp
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); sch.step(); opt.zero_grad(set_to_none=True)
        rec.append(dict(step=step, on_policy=on, kd=float(k), lm=None if lmv is None else float(lmv),
                        kd_policy=None if kp is None else float(kp)))
        if log and (step % 50 == 0 or step == 1): log(f"  step {step} on={on} kd={float(k):.4f} "
                                                      f"gen {gen_s:.0f}s / {time.perf_counter() - t0:.0f}s")
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    return dict(model=model, secs=secs, cpu_secs=cpu, gen_secs=gen_s, gen_cpu_secs=gen_cpu, on_policy_steps=n_on,
                tokens=tokens, records=rec, **({} if xt is None else {'xtok': dict(xt.stats)}))

# ------------------------------------------------------------------------------------------------ across tokenizers
class _XTok:
    "Cross-tokenizer on-policy pieces: sample as text, re-tokenize both sides with offsets, align, the mapped top-k KD."
    def __init__(self, stok, ttok, cross_vocab_loss='map', k=64):
        from kd_toolkit.align import VocabMap
        if cross_vocab_loss != 'map': raise SystemExit("the prototype implements cross_vocab_loss='map' (today's default)")
        self.stok, self.ttok, self.k = stok, ttok, k
        self.vm = VocabMap.from_tokenizers(ttok, stok)
        self.sprefix = _student_prefix(stok)
        self.stats = dict(samples=0, retok_same=0, aligned=0, positions=0)

    def sample(self, model, ptexts, max_new_tokens, temperature):
        "Student completions for text prompts, decoded to text (what the teacher's side re-tokenizes)."
        sp = [self.sprefix + self.stok(t, add_special_tokens=False)['input_ids'] for t in ptexts]
        raw = generate(model, sp, self.stok, max_new_tokens, temperature, keep_stop=False)
        out = []
        for t, p, s in zip(ptexts, sp, raw):
            c = _continuation(self.stok, t, p, s)
            self.stats['samples'] += 1   # does re-tokenizing the text give back the sampled ids?
            self.stats['retok_same'] += self.stok(t + c, add_special_tokens=False)['input_ids'] == p[len(self.sprefix):] + s
            out.append(c)
        return out

    def sample_teacher(self, T, ptexts, max_new_tokens, temperature):
        tp = [[self.ttok.bos_token_id] + self.ttok(t, add_special_tokens=False)['input_ids'] for t in ptexts]
        raw = generate(T, tp, self.ttok, max_new_tokens, temperature, keep_stop=False)
        return [_continuation(self.ttok, t, p, s) for t, p, s in zip(ptexts, tp, raw)]

    def _rows(self, tok, texts, prefix, eos_at_end):
        "Per text: ids and character offsets with the prefix specials at (0, 0) and an appended EOS at (n, n + 1)."
        from kd_toolkit.align import encode_offsets
        ids, offs = encode_offsets(tok, texts, add_special_tokens=False)
        rows = []
        for t, x, o, e in zip(texts, ids, offs, eos_at_end):
            x, o = prefix + x, [(0, 0)] * len(prefix) + list(o)
            if e: x, o = x + [tok.eos_token_id], o + [(len(t), len(t) + 1)]
            rows.append((x, o))
        return rows

    def losses(self, model, T, ptexts, ctexts, temperature, beta, need_lm, ends):
        "KD ('map': the teacher's top-k at aligned positions mapped onto student ids) and LM, on completion positions."
        from kd_toolkit.align import align_offsets, gather_aligned
        from kd_toolkit.losses import kd_loss_topk, topk_teacher, lm_loss
        texts = [p + c for p, c in zip(ptexts, ctexts)]
        srows = self._rows(self.stok, texts, self.sprefix, ends)
        trows = self._rows(self.ttok, texts, [self.ttok.bos_token_id], [False] * len(texts))
        B, Ls, Lt = len(texts), max(len(r[0]) for r in srows), max(len(r[0]) for r in trows)
        sid = torch.full((B, Ls), pad_of(self.stok)); smask = torch.zeros(B, Ls, dtype=torch.long)
        tid = torch.zeros(B, Lt, dtype=torch.long); tmask = torch.zeros(B, Lt, dtype=torch.long)
        idx = torch.zeros(B, Ls, dtype=torch.long); am = torch.zeros(B, Ls, dtype=torch.bool)
        tgt = torch.full((B, Ls), -100)
        for i, ((sx, so), (tx, to)) in enumerate(zip(srows, trows)):
            sid[i, :len(sx)] = torch.tensor(sx); smask[i, :len(sx)] = 1
            tid[i, :len(tx)] = torch.tensor(tx); tmask[i, :len(tx)] = 1
            idx[i, :len(sx)], am[i, :len(sx)] = align_offsets(so, to)     # the prefix (0, 0) meets the teacher's BOS
            plen = len(ptexts[i])
            for j in range(len(sx) - 1):             # position j predicts token j + 1: a target when that is completion text
                if j + 1 >= len(self.sprefix) and so[j + 1][0] >= plen: tgt[i, j] = sx[j + 1]
        kmask = (tgt != -100) & am
        self.stats['aligned'] += int(kmask.sum()); self.stats['positions'] += int((tgt != -100).sum())
        logits = model(sid, attention_mask=smask).logits
        self.last_tokens = int(smask.sum())
        with torch.no_grad():
            tl = T(tid, attention_mask=tmask).logits.float()
            tk = gather_aligned(topk_teacher(tl, k=self.k), idx)       # (B·Ls, k) over teacher ids
        kd = kd_loss_topk(logits.flatten(0, 1), self.vm.map_topk(tk), kmask.flatten(), 'jsd', temperature, beta=beta)
        return kd, (lm_loss(logits, tgt) if need_lm else None), logits

def _continuation(tok, prompt:str, pids:list[int], sids:list[int]) -> str:
    "The text a sample adds to its prompt: decode(prompt ids + sample ids) after the prompt text."
    full = tok.decode(pids + sids, skip_special_tokens=True)
    return full[len(prompt):] if full.startswith(prompt) else tok.decode(sids, skip_special_tokens=True)

# ------------------------------------------------------------------------------------------------ the toolkit's row
def run_distill(seed:int=1, steps:int=300, preset:str|None=None, **cfg) -> dict:
    "The teacher-forced row: kd_toolkit.train.distill (defaults, or a preset) on prompt + completion as plain texts."
    from kd_toolkit.core import make_config
    from kd_toolkit.train import distill
    torch.set_num_threads(1)
    tok = tokenizer()
    texts = [tok.decode(p + c) for p, c, _ in pairs()]
    model = make_student(tok, seed)
    c = make_config(preset, **{**dict(output_dir=tempfile.mkdtemp(prefix='onpolicy_'), seed=seed, max_steps=steps,
                                      per_device_train_batch_size=BATCH, precision='fp32', logging_steps=50, eval_steps=0,
                                      save_steps=10**9, progress_bar=False), **cfg})
    t0, c0 = time.perf_counter(), time.process_time()
    r = distill(c, teacher(), model, texts, None, student_tokenizer=tok, teacher_tokenizer=tok)
    return dict(model=r.student, secs=time.perf_counter() - t0, cpu_secs=time.process_time() - c0, gen_secs=0.0,
                on_policy_steps=0, kd_path=r.trainer.kd_path_label, records=[])

def lib_rows(student_tok:str='tok512', n_pairs:int|None=None) -> list[dict]:
    """The protocol's pairs as kd_toolkit prompt data (`data.prompt_row`): BOS + prompt, completion, EOS where the story
    ends; for another student tokenizer, its tokens of the same texts with the teacher's (tok512) columns and alignment."""
    from kd_toolkit.data import prompt_row
    tok, ttok = tokenizer(student_tok), None if student_tok == 'tok512' else tokenizer()
    return [prompt_row(p, c, tok, ttok, max_length=1 + PROMPT + COMPLETION + 1, max_prompt_length=PROMPT, add_eos=end)
            for p, c, end in text_pairs()[:n_pairs]]

def run_lib(seed:int=1, steps:int=300, lr:float=1.5e-3, kd:float=0.75, lm:float=0.25, policy_weight:float=0.0,
            policy_from:float=0.5, log=None, callbacks=(), student_tok:str='tok512', n_pairs:int|None=None,
            **knobs) -> dict:
    """The toolkit's own on-policy distillation: `kd_toolkit.train.distill` on prompt data with the issue-24 knobs.
    `policy_weight` > 0: the `kd_policy` component, weight `Step(0, policy_weight, at=policy_from)`; `knobs`: KDConfig's
    (`lmbda`, `divergence`, `beta`, `policy_divergence`, `seq_kd`, ...)."""
    import datasets
    from kd_toolkit.core import make_config
    from kd_toolkit.curriculum import Step
    from kd_toolkit.train import distill
    torch.set_num_threads(1)
    tok, xt = tokenizer(student_tok), student_tok != 'tok512'
    ds = _lib_dataset(student_tok, n_pairs)
    model = make_student(tok, seed)
    if xt: knobs = dict(cross_tokenizer=True, kd_topk=64, **knobs)   # (today's default cross_vocab_loss: 'map')
    cur = {k: v for k, v in dict(kd=kd, lm=lm).items() if v > 0}
    if policy_weight > 0: cur['kd_policy'] = Step(0.0, policy_weight, at=policy_from)
    c = make_config(None, **{**dict(output_dir=tempfile.mkdtemp(prefix='onpolicy_lib_'), seed=seed, max_steps=steps,
                                    per_device_train_batch_size=BATCH, precision='fp32', logging_steps=25, eval_steps=0,
                                    save_steps=10**9, progress_bar=False, learning_rate=lr, max_length=1 + PROMPT + COMPLETION + 1,
                                    max_prompt_length=PROMPT, max_new_tokens=COMPLETION), **knobs})
    t0, c0 = time.perf_counter(), time.process_time()
    r = distill(c, teacher(), model, ds, None, student_tokenizer=tok, teacher_tokenizer=tokenizer(), curriculum=cur,
                callbacks=callbacks)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    sm = r.trainer.sampler
    h = r.history
    return dict(model=r.student, secs=secs, cpu_secs=cpu, gen_secs=0.0 if sm is None else sm.seconds,
                gen_tokens=0 if sm is None else sm.tokens, kd_path=r.trainer.kd_path_label, records=[],
                policy_share=float(h['policy_share'].mean()) if 'policy_share' in h else 0.0,
                kd_last=_last(h, 'raw/kd'), kd_policy_last=_last(h, 'raw/kd_policy'))

def _last(h, col):
    "The last logged value of a history column, or None."
    return float(h[col].dropna().iloc[-1]) if col in h and h[col].notna().any() else None

@lru_cache(None)
def _lib_dataset(student_tok:str='tok512', n_pairs:int|None=None):
    import datasets
    return datasets.Dataset.from_list(lib_rows(student_tok, n_pairs))

# ------------------------------------------------------------------------------------------------ CLI
def _write(out, row):
    print(json.dumps(row), flush=True)
    if out:
        with open(out, 'a') as f: f.write(json.dumps(row) + '\n')

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest='cmd', required=True)
    d = sub.add_parser('distill', help='the teacher-forced row through kd_toolkit.train.distill')
    d.add_argument('--seeds', type=int, nargs='+', default=[1, 2]); d.add_argument('--steps', type=int, default=300)
    d.add_argument('--lr', type=float, default=None); d.add_argument('--out')
    d.add_argument('--preset', default=None, help="a kd_toolkit preset (e.g. cpu_demo: lr 1e-3, max_length 128)")
    gk = sub.add_parser('gkd', help='the plain-loop GKD prototype')
    gk.add_argument('--lmbda', type=float, nargs='+', default=[0.0, 0.5]); gk.add_argument('--beta', type=float, nargs='+', default=[0.0])
    gk.add_argument('--seeds', type=int, nargs='+', default=[1, 2]); gk.add_argument('--steps', type=int, nargs='+', default=[300])
    gk.add_argument('--kd', type=float, default=0.75); gk.add_argument('--lm', type=float, default=0.25)
    gk.add_argument('--temperature', type=float, default=1.0, help='KD temperature')
    gk.add_argument('--gen-temperature', type=float, default=1.0, help='sampling temperature of on-policy completions')
    gk.add_argument('--max-new-tokens', type=int, default=COMPLETION)
    gk.add_argument('--seq-kd', action='store_true'); gk.add_argument('--lr', type=float, default=1.5e-3)
    gk.add_argument('--student', default='tok512', choices=['tok512', 'gpt2'])
    gk.add_argument('--lmbda-from', type=float, default=0.0, help='share of the steps before on-policy sampling starts')
    gk.add_argument('--beta-data', type=float, default=None, help='beta on teacher-forced (data) batches; default: --beta')
    gk.add_argument('--policy-weight', type=float, default=0.0, help='on-policy KD as an added component of this weight')
    gk.add_argument('--tag', default=''); gk.add_argument('--out')
    lb = sub.add_parser('lib', help="the toolkit's own on-policy distillation (distill with the issue-24 knobs)")
    lb.add_argument('--seeds', type=int, nargs='+', default=[1, 2]); lb.add_argument('--steps', type=int, nargs='+', default=[300])
    lb.add_argument('--lr', type=float, default=1.5e-3); lb.add_argument('--kd', type=float, default=0.75)
    lb.add_argument('--lm', type=float, default=0.25); lb.add_argument('--lmbda', type=float, default=0.0)
    lb.add_argument('--divergence', default='fkl'); lb.add_argument('--beta', type=float, default=0.5)
    lb.add_argument('--policy-weight', type=float, default=0.0, help='the kd_policy component: Step(0, w, at=--policy-from)')
    lb.add_argument('--policy-from', type=float, default=0.5); lb.add_argument('--policy-divergence', default=None)
    lb.add_argument('--seq-kd', action='store_true'); lb.add_argument('--tag', default=''); lb.add_argument('--out')
    lb.add_argument('--student', default='tok512', choices=['tok512', 'gpt2'])
    lb.add_argument('--pairs', type=int, default=None, help='train on the first N pairs only (cross-tokenizer: faster set-up)')
    sc = sub.add_parser('prompts', help='print the held-out prompts'); sc.add_argument('--n', type=int, default=5)
    t = sub.add_parser('table'); t.add_argument('path'); t.add_argument('--base', default=None)
    a = ap.parse_args()
    if a.cmd == 'table': return table(a.path)
    if a.cmd == 'prompts':
        ps = heldout_prompts(); print(len(ps), 'prompts'); [print(repr(p)) for p in ps[:a.n]]; return
    if a.cmd == 'lib':
        for steps in a.steps:
            for s in a.seeds:
                print(f"lib steps={steps} seed={s} lmbda={a.lmbda} policy_weight={a.policy_weight}", flush=True)
                knobs = dict(lmbda=a.lmbda, divergence=a.divergence, beta=a.beta, seq_kd=a.seq_kd,
                             policy_divergence=a.policy_divergence)
                r = run_lib(s, steps, a.lr, a.kd, a.lm, a.policy_weight, a.policy_from, student_tok=a.student,
                            n_pairs=a.pairs, **knobs)
                beta = {'fkl': 0.0, 'rkl': 1.0}.get(a.divergence, a.beta)
                pbeta = {'fkl': 0.0, 'rkl': 1.0}.get(a.policy_divergence or a.divergence, beta)
                _write(a.out, dict(kind='lib', student=a.student, tag=a.tag or (f'{a.pairs} pairs' if a.pairs else ''), seed=s, steps=steps, lr=a.lr, kd=a.kd, lm=a.lm,
                                   lmbda=a.lmbda, beta=pbeta, beta_data=beta, seq_kd=a.seq_kd, gen_temperature=1.0,
                                   lmbda_from=a.policy_from if a.policy_weight else 0.0, policy_weight=a.policy_weight,
                                   divergence=a.divergence, policy_divergence=a.policy_divergence,
                                   **score(r['model'], a.student),
                                   **{k: v for k, v in r.items() if k not in ('model', 'records')}))
        return
    if a.cmd == 'distill':
        for s in a.seeds:
            r = run_distill(s, a.steps, a.preset, **({} if a.lr is None else dict(learning_rate=a.lr)))
            lr = a.lr or dict(cpu_demo=1e-3).get(a.preset, 5e-4)
            _write(a.out, dict(kind='distill', student='tok512', preset=a.preset, lr=lr, seed=s, steps=a.steps, lmbda=0.0, beta=0.0,
                               **score(r['model']), **{k: v for k, v in r.items() if k not in ('model', 'records')}))
        return
    for steps in a.steps:
        for beta in a.beta:
            for lmbda in a.lmbda:
                for s in a.seeds:
                    print(f"gkd student={a.student} steps={steps} lmbda={lmbda} beta={beta} seed={s}", flush=True)
                    r = train(steps, s, lmbda, beta, a.kd, a.lm, a.temperature, a.gen_temperature, a.max_new_tokens, a.seq_kd,
                              a.lr, student_tok=a.student, log=print, lmbda_from=a.lmbda_from,
                              beta_data=a.beta_data, policy_weight=a.policy_weight)
                    q = score(r['model'], a.student)
                    kd_on = [x['kd'] for x in r['records'] if x['on_policy']]; kd_off = [x['kd'] for x in r['records'] if not x['on_policy']]
                    _write(a.out, dict(kind='gkd', student=a.student, tag=a.tag, seed=s, steps=steps, lmbda=lmbda, beta=beta,
                                       kd=a.kd, lm=a.lm, temperature=a.temperature, gen_temperature=a.gen_temperature,
                                       max_new_tokens=a.max_new_tokens, seq_kd=a.seq_kd, lr=a.lr, lmbda_from=a.lmbda_from,
                                       beta_data=beta if a.beta_data is None else a.beta_data,
                                       policy_weight=a.policy_weight, **q,
                                       **{k: v for k, v in r.items() if k not in ('model', 'records')},
                                       kd_last50_on=_mean(kd_on[-25:]), kd_last50_off=_mean(kd_off[-25:])))

def _mean(xs): return sum(xs) / len(xs) if xs else None

_CFG = ('kind', 'student', 'tag', 'steps', 'beta', 'beta_data', 'lmbda', 'lmbda_from', 'policy_weight', 'seq_kd', 'lr',
        'kd', 'lm', 'gen_temperature', 'preset')

def table(path):
    "Mean over seeds per configuration; the Done-when ratios against lmbda = 0 of the same configuration otherwise."
    from flops import md_table
    rows = [json.loads(l) for l in open(path)]
    dflt = lambda r, k: 0.0 if k in ('lmbda_from', 'policy_weight') else r.get('beta') if k == 'beta_data' else None
    key = lambda r: tuple(r.get(k, dflt(r, k)) for k in _CFG)
    groups = {}
    for r in rows: groups.setdefault(key(r), []).append(r)
    mean = lambda g, k: sum(r.get(k, math.nan) for r in g) / len(g)
    L, F, B, BD, PW = (_CFG.index(k) for k in ('lmbda', 'lmbda_from', 'beta', 'beta_data', 'policy_weight'))
    out = []
    for k, g in sorted(groups.items(), key=lambda x: tuple(str(v) for v in x[0])):
        c = dict(zip(_CFG, k))
        base = groups.get(tuple(0.0 if i in (L, F, PW) else k[BD] if i == B else v for i, v in enumerate(k)))   # no on-policy
        row = {'run': c['kind'] + (f" {c['tag']}" if c['tag'] else '') + (f" {c['preset']}" if c['preset'] else '') + ('' if c['student'] == 'tok512' else f" {c['student']}"),
               'steps': c['steps'], 'lr': c['lr'], 'loss': f"{c['kd']}·D+{c['lm']}·LM" if c['kind'] in ('gkd', 'lib') else 'default',
               'beta': c['beta'] if c['beta_data'] == c['beta'] else f"{c['beta']} (data {c['beta_data']})",
               'lmbda': c['lmbda'], 'from': c['lmbda_from'], 'seeds': ' '.join(str(r['seed']) for r in g),
               'teacher NLL': f"{mean(g, 'teacher_nll'):.3f}", 'distinct-2 (words)': f"{mean(g, 'distinct2_words'):.3f}",
               'distinct-2 (tokens)': f"{mean(g, 'distinct2'):.3f}", 'bpb': f"{mean(g, 'bpb'):.4f}",
               'wall s': f"{mean(g, 'secs'):.0f}", 'cpu s': f"{mean(g, 'cpu_secs'):.0f}",
               'gen share': f"{mean(g, 'gen_secs') / mean(g, 'secs'):.2f}"}
        if c['policy_weight']: row['lmbda'] = f"+{c['policy_weight']}·D(policy)"
        if base and base is not g:
            row['NLL vs λ=0'] = f"{mean(g, 'teacher_nll') / mean(base, 'teacher_nll') - 1:+.1%}"
            row['d2 vs λ=0'] = f"{mean(g, 'distinct2_words') / mean(base, 'distinct2_words'):.2f}x"
            row['bpb vs λ=0'] = f"{mean(g, 'bpb') / mean(base, 'bpb') - 1:+.1%}"
        out.append(row)
    print(md_table(out))

if __name__ == '__main__': main()
