"""Issue 27: a teacher dispatched by accelerate (weights on GPU, CPU and disk) through every teacher pass of the library.

    .venv/bin/python bench/offload_cache.py                     # CPU: equalities (disk, CPU+disk), timing
    .venv/bin/python bench/offload_cache.py --device cuda --json $OUT/offload.jsonl   # a GPU: a GPU+CPU map (PCIe)

1. Each teacher pass with the offloaded teacher (`passes`: cache build, teacher_forward, evaluator, projector fit,
   live distillation): 'ok' or the error's first line. Before issue 27 three of the five failed (the first row of
   bench/results/issue27_offload_cpu.jsonl); `core.input_device` and `core.is_dispatched` fixed them.
2. The offloaded and the in-memory teacher give the same cache, the same evaluator numbers, the same projector fit,
   the same live distillation history, and a student trains from the cache.
3. Timing: `build_teacher_cache` seconds per token over batch sizes, a synthetic Llama in memory vs offloaded
   (weights re-read every pass: the per-pass cost is amortised over the batch's tokens).
"""
from __future__ import annotations
import argparse, json, os, shutil, sys, tempfile, time, warnings
import numpy as np, torch
from torch import nn
from kd_toolkit.core import input_device as teacher_device, is_dispatched

warnings.filterwarnings('ignore')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # bench/ (flops.py)
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

# ---- models and data ----
def teacher_folder(root:str, device:str) -> str:
    "stories260K saved as safetensors (or a synthetic tiny Llama where the asset is missing)."
    from kd_toolkit.testing import has_asset, load_stories260k, tiny_llama, STORIES260K
    m = load_stories260k(attn='sdpa') if has_asset(STORIES260K) else tiny_llama(vocab_size=512, seed=1, attn='sdpa')
    if device == 'cuda': m = m.half()
    m.save_pretrained(f'{root}/teacher'); return f'{root}/teacher'

def load(folder:str, placement:str, off:str, budget:dict|None=None, device:str='cpu'):
    "The teacher from `folder`: 'memory' (all on `device`), or dispatched by accelerate over 'cpu+disk', 'disk', 'gpu+cpu'."
    from transformers import AutoModelForCausalLM
    kw = dict(attn_implementation='sdpa')
    if placement == 'memory': return AutoModelForCausalLM.from_pretrained(folder, **kw).to(device)
    mem = budget or {'disk': {'cpu': '1KB'}, 'cpu+disk': {'cpu': '700KB'}}[placement]
    return AutoModelForCausalLM.from_pretrained(folder, device_map='auto', max_memory=mem, offload_folder=off, **kw)

def token_dataset(n:int, lens, vocab:int=512, seed:int=0):
    "A tokenized dataset of random ids (the lengths cycle through `lens`)."
    from datasets import Dataset
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(3, vocab, (lens[i % len(lens)],), generator=g).tolist() for i in range(n)]
    return Dataset.from_dict(dict(input_ids=rows, attention_mask=[[1]*len(r) for r in rows], labels=rows))

def _err(f) -> str:
    try: f(); return 'ok'
    except Exception as e: return f"{type(e).__name__}: {str(e).splitlines()[0][:110]}"

# ---- 1. the library as it is ----
def passes(T, ds, root:str, texts, tok) -> dict:
    "Run every teacher pass of the library with teacher `T`; 'ok' or the first line of the error."
    import kd_toolkit.cache as C, kd_toolkit.evaluate as E, kd_toolkit.calibrate as Ca
    from kd_toolkit.data import KDCollator
    from kd_toolkit.projector import Projector
    from kd_toolkit.testing import tiny_llama
    b = KDCollator(pad_id=0)([ds[i] for i in range(4)])
    s = tiny_llama(vocab_size=512, hidden_size=32, num_layers=1)
    return {'build_teacher_cache': _err(lambda: C.build_teacher_cache(T, ds, f'{root}/c_probe', k=8)),
            'teacher_forward': _err(lambda: C.teacher_forward(T, b)),
            'Evaluator(teacher=T)': _err(lambda: E.Evaluator(s, T).evaluate([b])),
            'calibrate.fit_projector': _err(lambda: Ca.fit_projector(Projector(32, T.config.hidden_size), s, T, b)),
            **({'distill (live KD)': _err(lambda: run_distill(T, texts, tok, f'{root}/d_probe'))} if tok else {})}

def run_distill(T, texts, tok, out:str, cache:str|None=None, steps:int=4):
    from kd_toolkit.core import make_config
    from kd_toolkit.testing import tiny_llama
    from kd_toolkit.train import distill
    cfg = make_config('smoke', output_dir=out, max_length=48, eval_steps=2, max_steps=steps, seed=0,
                      **(dict(teacher_cache=cache, kd_topk=16) if cache else {}))
    return distill(cfg, T, tiny_llama(vocab_size=512, hidden_size=32, num_layers=1, seed=0), texts[:16], texts[-4:],
                   student_tokenizer=tok, overwrite=True)

# ---- 2. equalities with the prototype ----
def equalities(ref, off, ds, root:str, texts, tok) -> dict:
    "The offloaded teacher against the same teacher in memory: cache, evaluator, projector fit, live and cached distillation."
    import kd_toolkit.cache as C, kd_toolkit.evaluate as E, kd_toolkit.calibrate as Ca
    from kd_toolkit.data import KDCollator
    from kd_toolkit.projector import Projector
    from kd_toolkit.testing import tiny_llama
    a = C.build_teacher_cache(ref, ds, f'{root}/c_ref', k=16, batch_size=4)
    b = C.build_teacher_cache(off, ds, f'{root}/c_off', k=16, batch_size=4)
    A, B = a.arrays['topk'], b.arrays['topk']
    la, lb = A['logprobs'][:].astype(np.float32), B['logprobs'][:].astype(np.float32)
    ulp = np.abs(np.spacing(la.astype(np.float16)).astype(np.float32))    # one fp16 step at each stored value
    r = {'cache ids equal': bool(np.array_equal(A['ids'][:], B['ids'][:])),
         'cache max |dlogp|': float(np.abs(la - lb).max()),
         'cache |dlogp| <= 1 fp16 ulp': bool((np.abs(la - lb) <= ulp).all()),
         'cache max |dtail|': float(np.abs(A['tail'][:] - B['tail'][:]).max())}
    bt = KDCollator(pad_id=0)([ds[i] for i in range(4)])
    s = tiny_llama(vocab_size=512, hidden_size=32, num_layers=1).to(teacher_device(ref))
    e1, e2 = E.Evaluator(s, ref).evaluate([bt]), E.Evaluator(s, off).evaluate([bt])
    r['evaluator max |diff| (teacher_ppl, kl, top1)'] = max(abs(e1[k] - e2[k]) / max(1, abs(e1[k])) for k in ('teacher_ppl', 'kl', 'top1_agree'))
    bt = {k: v.to(teacher_device(ref)) for k, v in bt.items()}
    p1, p2 = (Ca.fit_projector(Projector(32, ref.config.hidden_size).to(teacher_device(ref)), s, t, bt) for t in (ref, off))
    r['projector fit max |diff|'] = max(float((x - y).abs().max()) for x, y in zip(p1.parameters(), p2.parameters()))
    if teacher_device(ref).type == 'cpu' and tok is not None:   # (needs the tok512 tokenizer and its texts)
        h1, h2 = (run_distill(t, texts, tok, f'{root}/d_{n}').history for n, t in (('ref', ref), ('off', off)))
        r['live distill: loss histories equal'] = bool(np.allclose(h1['loss'].dropna(), h2['loss'].dropna(), rtol=0, atol=0))
        res = run_distill(off, texts, tok, f'{root}/d_cache', cache=f'{root}/c_distill')
        r['distill from a cache built by the offloaded teacher'] = f"ok, {res.stop_reason}, student ppl {res.eval['student_ppl']:.1f}"
    return r

def faked_gpu_map() -> dict:
    "teacher_device on a CPU-only machine for a GPU+CPU map: hooks as dispatch_model sets them (execution on cuda:0)."
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module
    from kd_toolkit.testing import tiny_llama
    m = tiny_llama()
    emb = m.get_input_embeddings()
    add_hook_to_module(emb, AlignDevicesHook(execution_device=0, offload=True, weights_map={'weight': emb.weight.data}))
    add_hook_to_module(m, AlignDevicesHook(execution_device=0, io_same_device=True))
    return {'embedding on cpu, executed on cuda:0': f"teacher_device -> {teacher_device(m)}; first parameter on "
                                                     f"{next(m.parameters()).device}; is_dispatched {is_dispatched(m)}"}

def pcie(mb:int=1024, reps:int=3) -> dict:
    "Host-to-GPU GB/s of a pageable tensor (what accelerate's hooks copy) and of a pinned one."
    out = {}
    for kind in ('pageable', 'pinned'):
        x = torch.empty(mb << 20, dtype=torch.uint8)
        if kind == 'pinned': x = x.pin_memory()
        best = 0.0
        for _ in range(reps):
            torch.cuda.synchronize(); t = time.perf_counter(); y = x.to('cuda'); torch.cuda.synchronize()
            best = max(best, (mb << 20)/(time.perf_counter() - t)/1e9); del y
        out[f'H2D {kind} GB/s'] = best
    return out

# ---- 3. timing ----
def timing(root:str, device:str, dims:list[int], batches:list[int], seq:int, gpu_gb:float|None=None, reps:int=3) -> list[dict]:
    "Seconds per token of build_teacher_cache, in memory vs offloaded, over batch sizes (synthetic Llama `dims`)."
    import kd_toolkit.cache as C
    from transformers import LlamaConfig, LlamaForCausalLM
    d, L, V = dims
    cfg = LlamaConfig(vocab_size=V, hidden_size=d, intermediate_size=4*d, num_hidden_layers=L, num_attention_heads=max(1, d//64),
                      num_key_value_heads=max(1, d//256), tie_word_embeddings=False, max_position_embeddings=max(2048, seq))
    torch.manual_seed(0)
    with torch.device('meta'): m = LlamaForCausalLM(cfg)
    m = m.to_empty(device='cpu').to(torch.float16 if device == 'cuda' else torch.float32)
    for p in m.parameters(): p.data.normal_(0, 0.02)   # fast init (the rotary buffers are rebuilt when it is loaded)
    m.save_pretrained(f'{root}/big'); n_bytes = sum(p.numel()*p.element_size() for p in m.parameters()); del m
    budget = {0: int(gpu_gb*1e9 if gpu_gb else 0.4*n_bytes), 'cpu': '60GB'} if device == 'cuda' else None   # 60% streamed
    ds, one = token_dataset(max(batches), [seq], vocab=V, seed=1), token_dataset(1, [1], vocab=V, seed=1)
    clock = time.perf_counter if device == 'cuda' else time.process_time   # CPU: this process's CPU time (the machine is shared)
    rows = []
    for placement in ('memory', 'gpu+cpu' if device == 'cuda' else 'disk'):
        T = load(f'{root}/big', placement, f'{root}/off_big', budget, device)
        C.build_teacher_cache(T, ds.select(range(1)), f'{root}/c_t', k=16, batch_size=1)   # warm-up
        pts = []
        for bs in [0] + batches:   # one pass of bs rows (0: a one-token pass), the fastest of `reps`
            sub, ts = (ds.select(range(bs)) if bs else one), []
            for _ in range(reps):
                if device == 'cuda': torch.cuda.synchronize()
                t = clock(); C.build_teacher_cache(T, sub, f'{root}/c_t', k=16, batch_size=max(bs, 1))
                if device == 'cuda': torch.cuda.synchronize()
                ts.append(clock() - t)
            n = bs*seq or 1
            if bs: pts.append((n, min(ts)))
            rows.append(dict(placement=placement, tokens_per_pass=n, s_per_pass=min(ts), ms_per_token=1e3*min(ts)/n,
                             tokens_per_s=n/min(ts)))
        slope, icpt = np.polyfit(*np.array(pts).T, 1)   # pass time = per-pass cost + tokens x per-token cost
        rows[-1]['fit: s per pass + ms per token'] = f"{icpt:.3f} s + {1e3*slope:.3f} ms/token"
        rows[-1]['map'] = str(sorted(set(map(str, (getattr(T, 'hf_device_map', None) or {'': 'memory'}).values()))))
        del T
    return [dict(model=f'Llama d={d} L={L} V={V} ({n_bytes/1e6:.0f} MB)', **r) for r in rows]

from flops import md_table as md   # the project's table printer

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    ap.add_argument('--dims', type=int, nargs=3, default=[512, 8, 8192], help='timing model: d, layers, vocab')
    ap.add_argument('--batches', type=int, nargs='+', default=[1, 2, 4, 8, 16])
    ap.add_argument('--seq', type=int, default=128)
    ap.add_argument('--gpu-gb', type=float, default=None, help='cuda: GPU share of the timing model (default: 40%% of it)')
    ap.add_argument('--skip-timing', action='store_true')
    ap.add_argument('--json', default=None, help='append one JSON line per result')
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix='kd_offload_')
    from kd_toolkit.testing import has_asset, load_tokenizer, read_text, STORIES260K
    tok = load_tokenizer('tok512') if has_asset('tokenizers/tok512') else None
    texts = [s for s in read_text('tinystories').split('\n') if s.strip()][:40] if tok else None
    folder, ds = teacher_folder(root, a.device), token_dataset(6, [32, 20, 32, 7, 32, 15])
    out = {}
    if a.device == 'cpu':
        off = load(folder, 'disk', f'{root}/off')
        out['every teacher pass, weights on disk'] = passes(off, ds, root, texts, tok)
        out['faked GPU map'] = faked_gpu_map()
        ref = load(folder, 'memory', f'{root}/off')
        for placement in ('disk', 'cpu+disk'):
            off = load(folder, placement, f'{root}/off_{placement}')
            out[f'after, {placement} {sorted(set(off.hf_device_map.values()))}'] = (
                {'teacher_device': str(teacher_device(off)), 'is_dispatched': is_dispatched(off)} | equalities(ref, off, ds, root, texts, tok))
    else:
        out['PCIe'] = pcie()
        ref = load(folder, 'memory', f'{root}/off', device='cuda')
        off = load(folder, 'gpu+cpu', f'{root}/off', {0: '300KB', 'cpu': '10GB'})
        out[f'after, gpu+cpu {off.hf_device_map}'] = {'teacher_device': str(teacher_device(off))} | equalities(ref, off, ds, root, texts, tok)
    for k, v in out.items(): print(f'\n## {k}\n' + (v if isinstance(v, str) else '\n'.join(f'- {n}: {x}' for n, x in v.items())))
    rows = []
    if not a.skip_timing:
        rows = timing(root, a.device, a.dims, a.batches, a.seq, a.gpu_gb)
        print(f"\n## build_teacher_cache timing ({a.device}, L={a.seq} tokens per row, k=16)\n\n" + md(rows))
    if a.json:
        with open(a.json, 'a') as f:
            f.write(json.dumps({'part': 'offload', 'results': out}, default=str) + '\n')
            for r in rows: f.write(json.dumps({'part': 'offload_timing', **r}) + '\n')
    shutil.rmtree(root, ignore_errors=True)
