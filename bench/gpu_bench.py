"""Measured on a CUDA GPU: fp16 distillation steps of SmolLM2-360M -> SmolLM2-135M shapes at L=512 (random weights).

    python bench/gpu_bench.py                     # B=8, L=512: 3 warm-up + 10 timed steps per method
    python bench/gpu_bench.py --batch 4 --steps 20
    python bench/gpu_bench.py --smoke             # tiny shapes, runs anywhere (CPU: fp32 for kd_toolkit, no memory figures)

Every method starts from the same weights (same seed, built on the GPU; no download: the configs are the published
shapes, written in bench/flops.py) and trains on the same random batches: fp16 teacher, fp32 student master weights
under fp16 autocast with a GradScaler, forward KL (T=1) + next-token CE, AdamW, clip at 1.0. That is what a P100 or
T4 runs (neither has bf16); on a newer GPU the same fp16 path is measured.

  hand naive      the ~30-line loop people write: full (B, L, V) logits of both models, fp32 log-softmax
  hand chunked    a careful hand loop: last hidden states, lm_head + losses 1,024 tokens at a time
  kd_toolkit ...  KDTrainer(precision='fp16'), kd_path 'chunked' (chunk 1,024), 'topk' (k=64 + tail), 'fused'

tokens/s = B*L / median step time (CUDA-synchronised); "peak GB" = torch.cuda.max_memory_allocated over the timed
steps (weights, fp32 master + Adam state and the step's working memory); "working GB" = that peak minus what was
allocated before the timed steps (activations, logits and losses alone). MFU uses the FLOP model of bench/flops.py
(2 FLOPs per teacher weight, 6 per student weight, attention and output layers counted) against the GPU's dense fp16
peak given with --peak-tflops. The kd_toolkit rows include what a real run does and the hand loops skip: the engine's
dataloader (host-to-device copy of each batch), the curriculum, the non-finite guard and the per-group LR bookkeeping.
"""
from __future__ import annotations
import argparse, gc, os, statistics, sys, tempfile, time
import torch, torch.nn.functional as F
from transformers import AutoModelForCausalLM, TrainerCallback
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flops import CONFIGS, md_table, memory_estimate, step_flops
from kd_toolkit.core import make_config

GB = 1e9
CHUNK = 1024
DEV = 'cuda' if torch.cuda.is_available() else 'cpu'

def _sync():
    if DEV == 'cuda': torch.cuda.synchronize()

def _models(teacher, student, seed=0):
    "Teacher (fp16, frozen, eval) and student (fp32, train) built on the GPU from their configs, same weights every call."
    torch.manual_seed(seed)
    with torch.device(DEV):
        t = AutoModelForCausalLM.from_config(CONFIGS[teacher], attn_implementation='sdpa').to(torch.float16).eval()
        s = AutoModelForCausalLM.from_config(CONFIGS[student], attn_implementation='sdpa').train()
    for p in t.parameters(): p.requires_grad_(False)
    return t, s

class _Hand:
    "A hand-written fp16 loop; `naive` materialises the full logits, else it goes 1,024 tokens at a time."
    def __init__(self, t, s, naive, lr):
        self.t, self.s, self.naive = t, s, naive
        self.opt = torch.optim.AdamW(s.parameters(), lr=lr, weight_decay=0.0)
        self.scaler = torch.amp.GradScaler(DEV)
    def loss(self, ids):
        tgt = ids[:, 1:]
        if self.naive:
            with torch.no_grad(): tl = self.t(input_ids=ids).logits
            with torch.autocast(DEV, dtype=torch.float16): sl = self.s(input_ids=ids).logits
            s_lp, t_lp = F.log_softmax(sl[:, :-1].float(), -1), F.log_softmax(tl[:, :-1].float(), -1)
            kd = (t_lp.exp()*(t_lp - s_lp)).sum(-1).mean()
            return kd + F.nll_loss(s_lp.flatten(0, 1), tgt.flatten())
        with torch.no_grad(): th = self.t.model(input_ids=ids).last_hidden_state
        with torch.autocast(DEV, dtype=torch.float16): sh = self.s.model(input_ids=ids).last_hidden_state
        sh, th, tgt = sh[:, :-1].flatten(0, 1), th[:, :-1].flatten(0, 1), tgt.flatten()
        n, total = sh.shape[0], 0.
        for i in range(0, n, CHUNK):
            with torch.no_grad(): t_lp = F.log_softmax(self.t.lm_head(th[i:i+CHUNK]).float(), -1)
            with torch.autocast(DEV, dtype=torch.float16): sl = self.s.lm_head(sh[i:i+CHUNK])
            s_lp = F.log_softmax(sl.float(), -1)
            total = total + ((t_lp.exp()*(t_lp - s_lp)).sum() + F.nll_loss(s_lp, tgt[i:i+CHUNK], reduction='sum'))/n
        return total
    def run(self, batches, warmup, mem):
        times = []
        for i, ids in enumerate(batches):
            if i == warmup: mem.start()
            _sync(); t0 = time.perf_counter()
            loss = self.loss(ids)
            self.opt.zero_grad(set_to_none=True); self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt); torch.nn.utils.clip_grad_norm_(self.s.parameters(), 1.0)
            self.scaler.step(self.opt); self.scaler.update()
            _sync(); times.append(time.perf_counter() - t0)
        return times[warmup:]

class _Mem:
    "Peak allocated memory from `start()` on, and what was allocated at `start()`."
    base = None
    def start(self):
        if DEV == 'cuda': _sync(); torch.cuda.reset_peak_memory_stats(); self.base = torch.cuda.memory_allocated()
    def read(self):
        if self.base is None: return float('nan'), float('nan')
        _sync(); return torch.cuda.max_memory_allocated()/GB, (torch.cuda.max_memory_allocated() - self.base)/GB

class _Ours:
    "kd_toolkit's KDTrainer on the same batches (one optimizer step each), timed by a callback."
    def __init__(self, t, s, lr, **kd):
        from datasets import Dataset
        from kd_toolkit.train import KDTrainer
        self.t, self.s, self.kd, self.lr, self.Dataset, self.KDTrainer = t, s, kd, lr, Dataset, KDTrainer
    def run(self, batches, warmup, mem):
        times, marks = [], {}
        class _Timer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                if state.global_step == warmup: mem.start()
                _sync(); marks['t0'] = time.perf_counter()
            def on_step_end(self, *a, **kw): _sync(); times.append(time.perf_counter() - marks['t0'])
        B, L = batches[0].shape
        ds = self.Dataset.from_dict({'input_ids': torch.cat(batches).tolist()})
        collate = lambda rows: (lambda ids: {'input_ids': ids, 'attention_mask': torch.ones_like(ids), 'labels': ids})(
            torch.tensor([r['input_ids'] for r in rows]))
        cfg = make_config(None, output_dir=tempfile.mkdtemp(prefix='kd_gpu_bench_'), max_steps=len(batches),
                        per_device_train_batch_size=B, max_length=L, learning_rate=self.lr, weight_decay=0.0,
                        warmup_steps=0.0, max_grad_norm=1.0,
                        precision='fp16' if DEV == 'cuda' else 'fp32',   # (fp16 training needs a GPU)
                        divergence='fkl', temperature=1.0, logging_steps=10**6, eval_steps=0, save_steps=10**9,
                        progress_bar=False, **self.kd)
        tr = self.KDTrainer(cfg, self.t, self.s, ds, None, collate, {'kd': 1.0, 'lm': 1.0}, callbacks=[_Timer()])
        tr.args.save_strategy = 'no'
        tr.train()
        return times[warmup:]

METHODS = {
    'hand naive': lambda t, s, lr: _Hand(t, s, True, lr),
    'hand chunked': lambda t, s, lr: _Hand(t, s, False, lr),
    'kd_toolkit chunked': lambda t, s, lr: _Ours(t, s, lr, kd_path='chunked', chunk_size=CHUNK),
    'kd_toolkit topk64': lambda t, s, lr: _Ours(t, s, lr, kd_topk=64, chunk_size=CHUNK),
    'kd_toolkit fused': lambda t, s, lr: _Ours(t, s, lr, kd_path='fused', chunk_size=CHUNK),
}

def measure(teacher='SmolLM2-360M', student='SmolLM2-135M', batch=8, seq_len=512, steps=10, warmup=3, peak_tflops=None,
            methods=tuple(METHODS)):
    "One row per method: tokens/s, MFU, peak and working memory; and ratios against the hand loops."
    g = torch.Generator().manual_seed(0)
    V = CONFIGS[student].vocab_size
    batches = [torch.randint(0, V, (batch, seq_len), generator=g) for _ in range(warmup + steps)]
    flop_tok = step_flops(CONFIGS[teacher], CONFIGS[student], seq_len)['total']
    rows, med = [], {}
    for name in methods:
        t, s = _models(teacher, student)
        m, mem = METHODS[name](t, s, 1e-4), _Mem()
        try:
            times = m.run([b.to(DEV) for b in batches] if name.startswith('hand') else batches, warmup, mem)
        except torch.OutOfMemoryError as e:
            rows.append({'method': name, 'error': f"out of memory: {str(e)[:80]}"}); continue
        finally:
            peak, work = mem.read()
            del t, s, m; gc.collect()
            if DEV == 'cuda': torch.cuda.empty_cache()
        med[name] = statistics.median(times)
        tps = batch*seq_len/med[name]
        row = {'method': name, 'step ms (median)': 1e3*med[name], 'tokens/s': tps, 'peak GB': peak, 'working GB': work}
        if peak_tflops: row['MFU'] = tps*flop_tok/(peak_tflops*1e12)
        rows.append(row)
    for r in rows:
        for base in ('hand naive', 'hand chunked'):
            if r['method'] in med and base in med:
                r[f'speed / {base}'] = med[base]/med[r['method']] if r['method'] != base else ''
    est = sum(memory_estimate(CONFIGS[teacher], CONFIGS[student], batch*seq_len, seq_len, 'chunked', 'sdpa').values())
    where = (f"{torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))})" if DEV == 'cuda'
             else "CPU (smoke: no fp16 training, no memory figures)")
    head = (f"## Measured: {teacher} -> {student} shapes (random weights), B={batch}, L={seq_len}, fp16 autocast + GradScaler, "
            f"{warmup} warm-up + {steps} timed steps\n\n{where}, torch {torch.__version__}; "
            f"FLOP model: {flop_tok/1e9:.2f} GFLOP/token; memory model (chunked, sdpa): {est:.1f} GB\n")
    return head + "\n" + md_table(rows)

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--teacher', default='SmolLM2-360M', choices=list(CONFIGS))
    ap.add_argument('--student', default='SmolLM2-135M', choices=list(CONFIGS))
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--seq-len', type=int, default=512)
    ap.add_argument('--steps', type=int, default=10)
    ap.add_argument('--warmup', type=int, default=3)
    ap.add_argument('--peak-tflops', type=float, default=None, help="the GPU's dense fp16 peak, for the MFU column")
    ap.add_argument('--methods', nargs='*', default=list(METHODS), choices=list(METHODS))
    ap.add_argument('--smoke', action='store_true', help='tiny shapes (2 x 64 -> 1 x 32, V=512), L=64, 2 steps: checks the script anywhere')
    a = ap.parse_args()
    if a.smoke:
        from transformers import LlamaConfig
        tiny = lambda n, d: LlamaConfig(vocab_size=512, hidden_size=d, intermediate_size=2*d, num_hidden_layers=n,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
        CONFIGS.update({'tiny-teacher': tiny(2, 64), 'tiny-student': tiny(1, 32)})
        a.teacher, a.student, a.batch, a.seq_len, a.steps, a.warmup = 'tiny-teacher', 'tiny-student', 2, 64, 2, 1
    print(measure(a.teacher, a.student, a.batch, a.seq_len, a.steps, a.warmup, a.peak_tflops, a.methods))
