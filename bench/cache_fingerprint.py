"""Issue 27 (phase A): what a teacher cache (and a checkpoint) should know about what it was built from; a prototype.

    .venv/bin/python bench/cache_fingerprint.py            # hashing speeds, fingerprint costs, the refusals, disk estimate
    .venv/bin/python bench/cache_fingerprint.py --big      # + a ~0.85B-parameter synthetic teacher, in memory and on disk

A fingerprint is a small JSON dict stored in the cache's meta.json (and in each checkpoint's kd_state.json):
- data: one hash per column the teacher pass reads (input_ids, teacher_input_ids, align_idx, align_mask): the lengths
  and the values, read from the Arrow buffers (no Python lists), so the same text in the same order hashes the same;
- teacher: the class, a hash of its config (volatile keys dropped), its dtype and quantization, and a SAMPLE of every
  weight tensor (up to 8 evenly spaced rows x 64 evenly spaced columns; stored, fp32) with an exact hash of the
  samples. Rows are read where the weight lives: GPU/CPU memory, accelerate's CPU weights map, or the safetensors
  file of a disk-offloaded weight (only those rows), so checking a 7B offloaded teacher costs well under a second;
- k, temperature, fields (with their on-disk dtypes), the id space and a hash of the vocabulary map.
`compare` names each difference in one line; the same teacher at another precision is accepted with a note.
"""
from __future__ import annotations
import argparse, hashlib, json, os, shutil, sys, tempfile, time, warnings
import numpy as np, torch
from torch import nn
warnings.filterwarnings('ignore')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

FORMAT = 1
DATA_COLUMNS = ('input_ids', 'teacher_input_ids', 'align_idx', 'align_mask')
VOLATILE = {'_name_or_path', 'transformers_version', 'dtype', 'torch_dtype', '_attn_implementation', 'attn_implementation',
            '_attn_implementation_autoset', 'use_cache', 'output_hidden_states', 'output_attentions', 'return_dict',
            '_commit_hash', 'architectures', 'quantization_config', 'tie_word_embeddings'}

def _h(): return hashlib.blake2b(digest_size=16)   # stdlib; ~1 GB/s is plenty for what is hashed here

# ---- data ----
def _column_chunks(dataset, col):
    "The (lengths, values) int64 arrays of list column `col`, chunk by chunk, in the dataset's row order."
    import pyarrow as pa, pyarrow.compute as pc
    if hasattr(dataset, 'with_format'):
        for ch in dataset.with_format('arrow')[col].chunks:
            vals = ch.flatten()
            yield (np.asarray(pc.list_value_length(ch).to_numpy(zero_copy_only=False), np.int64),
                   np.asarray(vals.to_numpy(zero_copy_only=False), np.int64))
    else:                                          # a list of dicts (tests, notebooks)
        rows = [np.asarray(r[col], np.int64).ravel() for r in dataset]
        yield np.array([len(r) for r in rows], np.int64), np.concatenate(rows) if rows else np.zeros(0, np.int64)

def data_fingerprint(dataset) -> dict:
    "{column: hash of its per-row lengths and values} for the columns the teacher pass reads, and the row count."
    names = dataset.column_names if hasattr(dataset, 'column_names') else list(dataset[0])
    out = {'rows': len(dataset)}
    for col in DATA_COLUMNS:
        if col not in names: continue
        h = _h()
        for lens, vals in _column_chunks(dataset, col): h.update(lens.tobytes()); h.update(vals.tobytes())
        out[col] = h.hexdigest()
    return out

# ---- teacher ----
def _config_dict(model) -> dict:
    cfg = getattr(model, 'config', None)
    d = cfg.to_dict() if cfg is not None else {}
    return {k: v for k, v in sorted(d.items()) if k not in VOLATILE}

def _offloaded(model, name):
    "Where a meta (offloaded) weight really is: (module's weights map, key) through accelerate's hook."
    mod_name, _, leaf = name.rpartition('.')
    mod = model.get_submodule(mod_name)
    while mod is not None:
        wm = getattr(getattr(mod, '_hf_hook', None), 'weights_map', None)
        if wm is not None: return wm, leaf
        if not mod_name: break
        mod_name, _, head = mod_name.rpartition('.'); leaf = f'{head}.{leaf}'
        mod = model.get_submodule(mod_name) if mod_name else model
    raise ValueError(f"{name} is on the meta device and no accelerate hook holds its weights")

def _rows(t_or_src, shape, rows:np.ndarray, cols:np.ndarray, dtype) -> np.ndarray:
    "rows x cols of a weight, read from a tensor or from a disk-offloaded safetensors entry (only those rows)."
    if isinstance(t_or_src, torch.Tensor):
        t = t_or_src.reshape(shape[0], -1) if len(shape) > 1 else t_or_src.reshape(1, -1)
        return t[torch.as_tensor(rows, device=t.device)][:, torch.as_tensor(cols, device=t.device)].to('cpu', torch.float32).numpy()
    wm, key = t_or_src
    idx = wm.dataset.index.get(wm.prefix + key) if hasattr(wm, 'dataset') and hasattr(wm.dataset, 'index') else None
    if idx and 'safetensors_file' in idx:
        from safetensors import safe_open
        with safe_open(idx['safetensors_file'], framework='pt') as f:
            sl = f.get_slice(idx['weight_name'])
            if len(shape) < 2: r = sl[:][None]
            else: r = torch.stack([sl[int(i):int(i) + 1] for i in rows]).reshape(len(rows), -1)
            r = r.to(dtype)           # what the hook hands the module (the model's dtype)
            return r[:, torch.as_tensor(cols)].float().numpy()
    return _rows(wm[key], shape, rows, cols, dtype)

def teacher_fingerprint(model:nn.Module, n_rows:int=8, n_cols:int=64) -> dict:
    "Class, config hash, dtype, quantization, and a sample of every weight (its exact hash; the values, fp32)."
    h, samples, seen = _h(), {}, set()
    named = [(n, t) for n, t in model.named_parameters(remove_duplicate=True)] + \
            [(n, b) for n, b in model.named_buffers() if not n.endswith(('inv_freq', 'original_inv_freq'))]
    for name, t in sorted(named):
        if id(t) in seen: continue
        seen.add(id(t))
        shape = tuple(t.shape)
        R = shape[0] if len(shape) > 1 else 1
        C = int(np.prod(shape[1:])) if len(shape) > 1 else int(np.prod(shape) or 1)
        rows = np.unique(np.linspace(0, R - 1, min(n_rows, R)).round().astype(np.int64))
        cols = np.unique(np.linspace(0, C - 1, min(n_cols, C)).round().astype(np.int64))
        src = _offloaded(model, name) if t.device.type == 'meta' else t.detach()
        s = _rows(src, shape, rows, cols, t.dtype) if t.numel() else np.zeros((0,), np.float32)
        h.update(f'{name}{shape}{t.dtype}'.encode()); h.update(np.ascontiguousarray(s).tobytes())
        samples[name] = s.ravel()
    q = getattr(getattr(model, 'config', None), 'quantization_config', None)
    q = (q if isinstance(q, dict) else q.to_dict()) if q is not None else None
    return {'class': type(model).__name__, 'name': getattr(getattr(model, 'config', None), '_name_or_path', ''),
            'config': _h_json(_config_dict(model)), 'dtype': str(next(model.parameters()).dtype).removeprefix('torch.'),
            'quantization': (q or {}).get('quant_method'), 'weights': h.hexdigest(), 'samples': samples}

def _h_json(d) -> str:
    h = _h(); h.update(json.dumps(d, sort_keys=True, default=str).encode()); return h.hexdigest()

_ULP = {'float32': 2**-23, 'float16': 2**-10, 'bfloat16': 2**-7}   # relative rounding step of each dtype

# ---- the cache's fingerprint and its one-line differences ----
def cache_fingerprint(dataset, teacher, k, temperature, fields, vocab_map=None) -> dict:
    vm = None if vocab_map is None else _h_json({n: getattr(vocab_map, n).tolist() for n in ('s2t', 't2s') if hasattr(vocab_map, n)})
    return {'format': FORMAT, 'data': data_fingerprint(dataset), 'teacher': teacher_fingerprint(teacher), 'k': k,
            'temperature': temperature, 'fields': sorted(fields), 'vocab_map': vm}

def teacher_differences(old:dict, new:dict) -> tuple[list[str], list[str]]:
    "(refusals, notes) between two teacher fingerprints."
    bad, notes = [], []
    if old['class'] != new['class']: bad.append(f"teacher class {old['class']} vs {new['class']}")
    if old['config'] != new['config']: bad.append("teacher config differs (another architecture or size)")
    if old['quantization'] != new['quantization']: bad.append(f"teacher quantization {old['quantization']} vs {new['quantization']}")
    if bad or old['weights'] == new['weights']: return bad, notes
    if old['dtype'] == new['dtype']: return [f"teacher weights differ ({_which(old, new, 0)})"], notes
    tol = _ULP.get(old['dtype'], 2**-7) + _ULP.get(new['dtype'], 2**-7)     # the same values rounded to another precision?
    off = _which(old, new, tol)
    if off: return [f"teacher weights differ beyond {old['dtype']}/{new['dtype']} rounding ({off})"], notes
    return [], [f"the cache was built by this teacher in {old['dtype']}, the run's is {new['dtype']}"]

def _which(old, new, tol) -> str:
    names = [n for n in old['samples'] if n not in new['samples'] or len(old['samples'][n]) != len(new['samples'][n])
             or not np.allclose(old['samples'][n], new['samples'][n], rtol=tol, atol=1e-6 if tol else 0)]
    return f"{len(names)} of {len(old['samples'])} tensors, e.g. {names[0]}" if names else ''

def differences(old:dict, new:dict) -> tuple[list[str], list[str]]:
    "One line per difference between a stored and a current cache fingerprint: (refusals, notes)."
    bad = [f"{n} {old[n]} vs {new[n]}" for n in ('k', 'temperature', 'fields', 'vocab_map') if old.get(n) != new.get(n)]
    if old['data']['rows'] != new['data']['rows']: bad.append(f"{old['data']['rows']} examples vs {new['data']['rows']}")
    bad += [f"other {c} (same shape, other tokens)" if old['data']['rows'] == new['data']['rows'] else f"other {c}"
            for c in DATA_COLUMNS if old['data'].get(c) != new['data'].get(c)]
    tb, notes = teacher_differences(old['teacher'], new['teacher']) if old.get('teacher') and new.get('teacher') else ([], [])
    return bad + tb, notes

def refusal(path, bad) -> str:
    return f"teacher cache {path} was built from something else: {'; '.join(bad)}: rebuild it (or point teacher_cache elsewhere)"

# ---- checkpoints: which knobs may change on resume ----
SAFE_ON_RESUME = {   # presentation, bookkeeping and pure speed: changing them does not change what is learned
    'output_dir', 'logging_steps', 'eval_steps', 'save_steps', 'save_total_limit', 'report_to', 'progress_bar',
    'disable_tqdm', 'dataloader_num_workers', 'per_device_eval_batch_size', 'eval_batches', 'push_to_hub', 'hub_model_id',
    'hub_token', 'early_stopping_patience', 'early_stopping_warmup', 'time_budget_hours', 'max_nonfinite_steps',
    'chunk_size', 'torch_compile', 'gradient_checkpointing', 'teacher_cache', 'init_from_teacher', 'run_name', 'eval_strategy',
    'save_strategy', 'load_best_model_at_end', 'resume_from_checkpoint'}
# Everything else warns, max_steps included: the LR schedule (WSD's decay is 20% of max_steps) and the curriculum's
# progress p = step / max_steps are functions of it, so a longer run re-times both from the resumed step on.

def knob_changes(old:dict, new:dict) -> list[str]:
    return [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if k not in SAFE_ON_RESUME and old.get(k) != new.get(k)]

# ---- disk space ----
def cache_bytes(dataset, fields=('topk',), k:int=64) -> int:
    "Bytes a cache of `fields` takes: per real position (topk: k x (fp16 + int32) + fp32 tail; token_logprobs: fp32)."
    per = {'topk': 6*k + 4, 'token_logprobs': 4}
    n = {'student': sum(int(l.sum()) for l, _ in _column_chunks(dataset, 'input_ids'))}
    cols = dataset.column_names if hasattr(dataset, 'column_names') else list(dataset[0])
    n['teacher'] = sum(int(l.sum()) for l, _ in _column_chunks(dataset, 'teacher_input_ids')) if 'teacher_input_ids' in cols else n['student']
    rows = {'topk': 'student', 'token_logprobs': 'teacher'}
    return sum(per[f]*n[rows[f]] for f in fields) + 8*(len(dataset) + 1)*len({rows[f] for f in fields}) + 4096

def check_disk(path, need:int, old:int=0):
    "Refuse, before the teacher runs, a cache the disk cannot hold (the old cache stays until the new one is complete)."
    p = os.path.abspath(path)
    while not os.path.exists(p): p = os.path.dirname(p)
    free = shutil.disk_usage(p).free
    if need > free:
        raise OSError(f"the teacher cache needs about {need/1e9:.2f} GB at {path} (free: {free/1e9:.2f} GB"
                      + (f", and the old cache's {old/1e9:.2f} GB stays until the new one is complete" if old else '')
                      + "): free space, lower kd_topk, or put teacher_cache on a bigger disk")

# ---- measurements ----
def hash_speeds(mb:int=256) -> list[dict]:
    import xxhash
    buf = np.random.default_rng(0).integers(0, 255, mb << 20, dtype=np.uint8).tobytes()
    algos = {'xxh3_128 (xxhash, a datasets dependency)': xxhash.xxh3_128, 'xxh64': xxhash.xxh64,
             'blake2b-128 (stdlib)': lambda: hashlib.blake2b(digest_size=16), 'sha256 (stdlib)': hashlib.sha256,
             'md5 (stdlib)': hashlib.md5}
    out = []
    for n, f in algos.items():
        t = time.process_time(); h = f(); h.update(buf); h.hexdigest(); dt = time.process_time() - t
        out.append({'hash': n, 'GB/s (one core)': mb/1024/dt})
    return out

def data_costs(ns=(10**6, 10**7), L=512) -> list[dict]:
    from datasets import Dataset
    out = []
    for n in ns:
        ids = np.random.default_rng(0).integers(0, 49152, (n//L, L))
        ds = Dataset.from_dict({'input_ids': ids.tolist()})
        t = time.process_time(); fp = data_fingerprint(ds); dt = time.process_time() - t
        t = time.process_time(); _ = [len(x) for x in ds['input_ids']]; dl = time.process_time() - t
        out.append({'tokens': n, 'data fingerprint s (Arrow buffers)': dt,
                    'lengths via Python lists s (what TeacherCache.check does today)': dl})
    return out

def teacher_costs(models:dict) -> list[dict]:
    out = []
    for n, m in models.items():
        t = time.perf_counter(); fp = teacher_fingerprint(m); dt = time.perf_counter() - t
        size = sum(p.numel()*p.element_size() for p in m.parameters())
        out.append({'teacher': n, 'params M': sum(p.numel() for p in m.parameters())/1e6, 'weight GB': size/1e9,
                    'fingerprint s (wall)': dt, 'sampled values': sum(len(s) for s in fp['samples'].values()),
                    'JSON KB (samples as fp16 base64)': sum(len(s)*2 for s in fp['samples'].values())*4/3/1e3})
    return out

def full_hash_cost(folder:str) -> dict:
    "Reading and hashing every byte of a teacher's safetensors (what a full checksum would cost)."
    import xxhash
    files = [os.path.join(folder, f) for f in os.listdir(folder) if f.endswith('.safetensors')]
    n = sum(os.path.getsize(f) for f in files)
    t = time.perf_counter(); h = xxhash.xxh3_128()
    for f in files:
        with open(f, 'rb') as fh:
            while b := fh.read(64 << 20): h.update(b)
    return {'bytes GB': n/1e9, 'full xxh3 hash s (page-cached)': time.perf_counter() - t}

def scenarios(root:str) -> list[dict]:
    "The refusals and acceptances the issue asks for, on stories260K (or a tiny Llama) and random-token datasets."
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from kd_toolkit.testing import has_asset, load_stories260k, tiny_llama, STORIES260K
    from offload_cache import load, token_dataset
    teacher = load_stories260k(attn='sdpa') if has_asset(STORIES260K) else tiny_llama(vocab_size=512, seed=1, attn='sdpa')
    teacher.save_pretrained(f'{root}/t')
    ds = token_dataset(8, [64])                                                    # packed windows: all the same length
    other_text = token_dataset(8, [64], seed=7)
    base = cache_fingerprint(ds, teacher, 16, 1.0, ['topk'])
    fresh = lambda **kw: cache_fingerprint(kw.get('ds', ds), kw.get('t', teacher), kw.get('k', 16), kw.get('T', 1.0), ['topk'])
    off = load(f'{root}/t', 'disk', f'{root}/off')
    other = tiny_llama(vocab_size=512, hidden_size=64, num_layers=5, seed=3)
    torch.manual_seed(3); twin = AutoModelForCausalLM.from_config(teacher.config)           # same shapes, other weights
    tuned = AutoModelForCausalLM.from_pretrained(f'{root}/t', attn_implementation='sdpa')
    with torch.no_grad(): tuned.model.layers[2].mlp.up_proj.weight.mul_(1.01)    # a 'fine-tune' of one matrix
    cases = {'same data, same teacher': fresh(), 'same teacher offloaded to disk': fresh(t=off),
             'same teacher in fp16': fresh(t=AutoModelForCausalLM.from_pretrained(f'{root}/t', dtype=torch.float16)),
             'other text of the same shape': fresh(ds=other_text), 'another teacher': fresh(t=other),
             'another teacher of the same shape': fresh(t=twin), 'the same text in another order': fresh(ds=ds.select(range(7, -1, -1))),
             'the teacher with one matrix changed by 1%': fresh(t=tuned), 'k 32': fresh(k=32), 'temperature 2': fresh(T=2.0)}
    rows = []
    for n, fp in cases.items():
        bad, notes = differences(base, fp)
        rows.append({'case': n, 'verdict': 'refused' if bad else 'accepted',
                     'message': refusal('kd_cache', bad) if bad else ('; '.join(notes) or '-')})
    return rows

from flops import md_table as md   # the project's table printer

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--big', action='store_true', help='also a ~0.85B-parameter synthetic teacher (1.7 GB on disk)')
    ap.add_argument('--smollm2', default=None, help='a folder holding SmolLM2-135M as safetensors (bench/quant_agreement.py makes one)')
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix='kd_fp_')
    print('## Refusals and acceptances (prototype)\n\n' + md(scenarios(root)))
    print('\n## Hash speed, one core (process CPU time)\n\n' + md(hash_speeds()))
    print('\n## Data fingerprint cost\n\n' + md(data_costs()))
    from offload_cache import load
    from kd_toolkit.testing import has_asset, load_stories260k, STORIES260K
    models = {}
    if has_asset(STORIES260K): models['stories260K in memory'] = load_stories260k()
    models['stories260K offloaded to disk'] = load(f'{root}/t', 'disk', f'{root}/off')
    full = []
    if a.smollm2:
        models['SmolLM2-135M in memory'] = load(a.smollm2, 'memory', None)
        models['SmolLM2-135M offloaded to disk'] = load(a.smollm2, 'disk', f'{root}/off_s')
        full.append({'teacher': 'SmolLM2-135M (fp32)', **full_hash_cost(a.smollm2)})
    if a.big:
        from transformers import LlamaConfig, LlamaForCausalLM
        cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16,
                          num_key_value_heads=4, tie_word_embeddings=False)
        with torch.device('meta'): m = LlamaForCausalLM(cfg)
        m = m.to_empty(device='cpu').to(torch.float16)
        for p in m.parameters(): p.data.normal_(0, 0.02)
        m.save_pretrained(f'{root}/big'); del m
        models['synthetic 0.85B fp16 in memory'] = load(f'{root}/big', 'memory', None)
        models['synthetic 0.85B fp16 offloaded to disk'] = load(f'{root}/big', 'disk', f'{root}/off_b')
        full.append({'teacher': 'synthetic 0.85B (fp16)', **full_hash_cost(f'{root}/big')})
    print('\n## Teacher fingerprint cost (sampled rows)\n\n' + md(teacher_costs(models)))
    if full: print('\n## A full checksum instead\n\n' + md(full))
    shutil.rmtree(root, ignore_errors=True)
