"""Quality protocols of issue 15 and a plain PyTorch loop that trains on them with the toolkit's own loss functions.

    .venv/bin/python bench/protocols.py                    # teacher scores + a plain-loop check of the reference numbers

Two protocols, both with the real stories260K teacher and its tokenizer (tok512), a random-init student
`LlamaConfig(vocab 512, hidden 32, intermediate 86, 2 layers, 4 heads, tied embeddings)` built after
`torch.manual_seed(1 + seed)`, 16 random windows of 128 tokens per step drawn from `torch.Generator().manual_seed(2 + seed)`
with `torch.randint(0, n - 129, (16,))`, and held-out perplexity over consecutive 128-token windows (127 predictions
each), with bits/byte from the UTF-8 bytes of exactly the tokens predicted:

- `reference()`: the TinyStories excerpt tokenized whole (no BOS: 15,536 tokens); the first 80% of tokens train, the last 20% are held out
  (MEASUREMENTS.md). 12,428 training tokens: 1,000 steps see them ~165 times, so LM-only overfits.
- `data_rich()`: 3M tokens sampled once from the teacher (`sampled_corpus.sampled_stories`), each story tokenized
  with BOS, concatenated; held out: the same last 20% of the REAL excerpt as `reference()` (so the two protocols'
  numbers compare). 1,000 steps see 2M tokens: less than one pass, LM-only is still improving at the end.

`train_loop(...)` is the plain loop: AdamW (weight decay on every parameter, as `torch.optim.AdamW` does), the
engine's schedulers (`transformers.get_scheduler`), the toolkit's `lm_loss` and `kd_loss` (`kd_toolkit.losses`),
optional gradient clipping. Everything the sweep changes is an argument; the defaults are the reference protocol's
plain loop (constant LR, no warmup, no clipping).
"""
from __future__ import annotations
import argparse, math, os, sys, time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
import numpy as np
os.environ.setdefault('OMP_NUM_THREADS', '1')
import torch
import torch.nn.functional as F
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

BATCH, LENGTH = 16, 128

@dataclass
class Protocol:
    "Token streams of one protocol: training ids, held-out windows and the bytes of each held-out prediction."
    name:str
    train:torch.Tensor # (n,) training token ids
    held:torch.Tensor # (w, LENGTH) consecutive held-out windows
    held_bytes:int # UTF-8 bytes of the tokens predicted in `held` (positions 1..LENGTH-1 of each window)
    info:dict = field(default_factory=dict)

@lru_cache(None)
def tokenizer():
    from kd_toolkit.assets import load_tokenizer
    return load_tokenizer('tok512')

@lru_cache(None)
def teacher():
    "stories260K with sdpa attention (2.3x faster than eager on CPU; logits within 3e-5)."
    from kd_toolkit.assets import load_stories260k
    return load_stories260k(attn='sdpa').eval().requires_grad_(False)

@lru_cache(None)
def _token_bytes() -> torch.Tensor:
    "UTF-8 bytes of each tok512 token as it appears inside text ('▁' is a space, <0xNN> one byte, specials none)."
    tok = tokenizer(); out = []
    for i in range(len(tok)):
        p = tok.convert_ids_to_tokens(i)
        if i in tok.all_special_ids: out.append(0)
        elif p.startswith('<0x') and p.endswith('>') and len(p) == 6: out.append(1)
        else: out.append(len(p.replace('\u2581', ' ').encode('utf-8')))
    return torch.tensor(out)

def _windows(ids:torch.Tensor) -> tuple[torch.Tensor, int]:
    "Consecutive LENGTH-token windows (the tail shorter than a window dropped) and the bytes of their predicted tokens."
    w = ids[:len(ids) // LENGTH * LENGTH].view(-1, LENGTH)
    return w, int(_token_bytes()[w[:, 1:]].sum())

def _split_excerpt():
    from kd_toolkit.assets import read_text
    ids = torch.tensor(tokenizer()(read_text('tinystories'), add_special_tokens=False)['input_ids'])   # no BOS (as measured)
    n = int(0.8 * len(ids))
    return ids[:n], ids[n:]

@lru_cache(None)
def reference() -> Protocol:
    "The reference protocol: the TinyStories excerpt tokenized whole, first 80% of tokens train, last 20% held out."
    train, held = _split_excerpt()
    w, b = _windows(held)
    return Protocol('reference', train, w, b, dict(train_tokens=len(train), held_tokens=len(held)))

@lru_cache(None)
def data_rich(n_tokens:int=3_000_000, seed:int=0) -> Protocol:
    "The data-rich protocol: stories sampled from the teacher (cached on disk) train; the real excerpt's last 20% held out."
    from sampled_corpus import sampled_stories, cache_path
    p = cache_path(n_tokens, seed).with_suffix('.tok512.pt')
    if p.is_file(): train = torch.load(p)
    else:
        enc = tokenizer()(sampled_stories(n_tokens, seed))['input_ids']   # BOS before each story
        train = torch.tensor([t for e in enc for t in e], dtype=torch.long)
        torch.save(train, p)
    _, held = _split_excerpt()
    w, b = _windows(held)
    return Protocol('data-rich', train, w, b, dict(train_tokens=len(train), held_tokens=len(held)))

PROTOCOLS = {'reference': reference, 'rich': data_rich}

def student(seed:int=0, init:str=''):
    """The reference student after `torch.manual_seed(1 + seed)`. `init='teacher:k'`: the teacher's width with k layers,
    initialised by `kd_toolkit.prepare.init_from_teacher` (embeddings, every (n-1)//(k-1)-th layer, final norm, head);
    'teacher:k/e': every e-th layer; 'random:k': the same shape, random init."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(1 + seed)
    if init:
        kind, _, spec = init.partition(':')
        k, _, e = spec.partition('/')
        if kind not in ('teacher', 'random') or not k.isdigit(): raise ValueError(f"init={init!r}: use 'teacher:k', 'teacher:k/every' or 'random:k'")
        tc, k = teacher().config, int(k)
        s = LlamaForCausalLM(LlamaConfig(**{**tc.to_dict(), 'num_hidden_layers': k}))
        if kind == 'teacher':
            from kd_toolkit.prepare import init_from_teacher
            init_from_teacher(s, teacher(), every=int(e) if e else max((tc.num_hidden_layers - 1) // max(k - 1, 1), 1))
        return s.train()
    cfg = LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=86, num_hidden_layers=2, num_attention_heads=4,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).train()

@torch.no_grad()
def evaluate(model, proto:Protocol, bs:int=32) -> dict:
    "Held-out perplexity and bits/byte of `model` on the protocol's consecutive windows (127 predictions each)."
    was = model.training; model.eval()
    nll, n = 0.0, 0
    for i in range(0, len(proto.held), bs):
        x = proto.held[i:i+bs]
        lp = F.log_softmax(model(x).logits[:, :-1].float(), -1)
        nll -= lp.gather(-1, x[:, 1:, None]).sum().item(); n += x[:, 1:].numel()
    model.train(was)
    return dict(ppl=math.exp(nll / n), bpb=nll / math.log(2) / proto.held_bytes)

def windows(proto:Protocol, g:torch.Generator) -> torch.Tensor:
    "One step's batch: BATCH random LENGTH-token windows of the training stream."
    idx = torch.randint(0, len(proto.train) - 129, (BATCH,), generator=g)
    return torch.stack([proto.train[i:i+LENGTH] for i in idx.tolist()])

def _cache_dir() -> Path:
    return Path(os.environ.get('KD_TOOLKIT_CACHE', Path.home()/'.cache'/'kd_toolkit')).expanduser()/'bench'

class TeacherLogits:
    "The teacher's logits on every step's windows of one (protocol, seed), computed once and memory-mapped from disk (fp32, exact)."
    def __init__(self, proto:Protocol, seed:int, steps:int):
        self.path = _cache_dir()/f'tlogits-{proto.name}-seed{seed}-{steps}x{BATCH}x{LENGTH}.f32'
        self.idx_path = self.path.with_suffix('.windows.pt')
        shape = (steps, BATCH, LENGTH, 512)
        if not self.path.is_file():
            g, T = torch.Generator().manual_seed(2 + seed), teacher()
            tmp = self.path.with_suffix('.tmp'); tmp.parent.mkdir(parents=True, exist_ok=True)
            mm = np.memmap(tmp, dtype=np.float32, mode='w+', shape=shape)
            xs = []
            with torch.no_grad():
                for i in range(steps):
                    x = windows(proto, g); xs.append(x[:, 0].clone())
                    mm[i] = T(x).logits.numpy()
            mm.flush(); del mm
            torch.save(torch.stack(xs), self.idx_path); os.replace(tmp, self.path)
        self.mm, self.first = np.memmap(self.path, dtype=np.float32, mode='r', shape=shape), torch.load(self.idx_path)
    def __len__(self): return len(self.mm)
    def __call__(self, step:int, x:torch.Tensor) -> torch.Tensor: # step counted from 1
        if not torch.equal(self.first[step - 1], x[:, 0]): raise RuntimeError(f"{self.path}: step {step}'s windows differ from the cached ones")
        return torch.from_numpy(np.array(self.mm[step - 1]))

def train_loop(proto:Protocol, steps:int, seed:int=0, lm:float=0.0, kd:float=0.0, temperature:float=1.0,
               divergence:str='fkl', schedule:str='constant', warmup:float=0, clip:float=0.0, lr:float=3e-3,
               weight_decay:float=0.01, eval_at=(), init:str='', kd_last:bool=True, sched_kwargs=None,
               tcache:TeacherLogits|None=None) -> dict:
    """Plain loop: `lm * lm_loss + kd * kd_loss(divergence, temperature)` with AdamW and `get_scheduler(schedule)`.
    `warmup` in steps (or a ratio when < 1); `clip` the max gradient norm (0: off); `eval_at` steps scored on the way
    (the last step always); `tcache` reads the teacher's logits from disk instead of running it. Returns {'ppl', 'bpb', 'secs', 'curve': {step: (ppl, bpb)}}."""
    from transformers import get_scheduler
    from kd_toolkit.losses import kd_loss, lm_loss, next_token_targets
    if lm <= 0 and kd <= 0: raise ValueError("train_loop: lm and kd weights are both 0: nothing to train on")
    s = student(seed, init)
    T = teacher() if kd > 0 else None
    opt = torch.optim.AdamW(s.parameters(), lr=lr, weight_decay=weight_decay)
    w = int(round(warmup * steps)) if 0 < warmup < 1 else int(warmup)
    sch = get_scheduler(schedule, opt, num_warmup_steps=w, num_training_steps=steps, scheduler_specific_kwargs=sched_kwargs or {})
    g = torch.Generator().manual_seed(2 + seed)
    curve, secs, evals = {}, 0.0, set(eval_at) | {steps}
    if 0 in evals: e = evaluate(s, proto); curve[0] = (e['ppl'], e['bpb'])   # the initial student
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        x = windows(proto, g)
        logits = s(x).logits
        loss = 0.0
        if lm > 0: loss = loss + lm * lm_loss(logits, next_token_targets(x))
        if kd > 0:
            if tcache is not None and step <= len(tcache): t = tcache(step, x)
            else:
                with torch.no_grad(): t = T(x).logits
            sl, tl = (logits, t) if kd_last else (logits[:, :-1], t[:, :-1])
            loss = loss + kd * kd_loss(sl, tl, divergence=divergence, temperature=temperature)
        loss.backward()
        if clip > 0: torch.nn.utils.clip_grad_norm_(s.parameters(), clip)
        opt.step(); sch.step(); opt.zero_grad(set_to_none=True)
        if step in evals:
            secs += time.perf_counter() - t0
            e = evaluate(s, proto); curve[step] = (e['ppl'], e['bpb'])
            t0 = time.perf_counter()
    return dict(ppl=curve[steps][0], bpb=curve[steps][1], secs=secs, curve=curve, model=s)

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--protocol', choices=list(PROTOCOLS), default='reference')
    ap.add_argument('--steps', type=int, default=1000)
    a = ap.parse_args()
    torch.set_num_threads(1)
    P = PROTOCOLS[a.protocol]()
    print(P.name, P.info, 'held windows', tuple(P.held.shape), 'bytes', P.held_bytes)
    print('teacher', evaluate(teacher(), P))
    for name, kw in [('LM only', dict(lm=1.0)), ('0.5 CE + 0.5 KL', dict(lm=0.5, kd=0.5))]:
        r = train_loop(P, a.steps, eval_at=(300,), **kw)
        print(name, {k: tuple(round(v, 3) for v in c) for k, c in r['curve'].items()}, f"{r['secs']:.1f} s", flush=True)
