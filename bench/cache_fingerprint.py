"""Issue 27: what a teacher cache (and a checkpoint) knows about what it was built from, and what knowing it costs.

    .venv/bin/python bench/cache_fingerprint.py            # refusals and acceptances, hash speeds, fingerprint costs
    .venv/bin/python bench/cache_fingerprint.py --big      # + a ~0.85B-parameter synthetic teacher, in memory and on disk
    .venv/bin/python bench/cache_fingerprint.py --smollm2 DIR   # + SmolLM2-135M saved as safetensors in DIR

The fingerprint is the library's (`kd_toolkit.cache.data_fingerprint`, `teacher_fingerprint`, `fingerprint_changes`):
- data: for each token column the teacher pass reads (input_ids, teacher_input_ids, align_idx, align_mask), a hash of
  the per-row lengths and one of the values, read from the Arrow buffers (no Python lists);
- teacher: class, a hash of its config (name, dtype, attention kernel left out), dtype, quantization, and hashes in
  fp32 / fp16 / bf16 of a sample of every weight (8 rows x 16 columns spread over it), read where the weight lives
  (memory, accelerate's CPU map, or only those rows of a disk-offloaded safetensors file);
- a teacher at another precision is the same teacher (compared in the coarser precision).
"""
from __future__ import annotations
import argparse, hashlib, os, shutil, sys, tempfile, time, warnings
import numpy as np, torch
warnings.filterwarnings('ignore')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kd_toolkit.cache import build_teacher_cache, data_fingerprint, teacher_fingerprint

def hash_speeds(mb:int=256) -> list[dict]:
    "GB/s of candidate hashes on one core (process CPU time)."
    import xxhash
    buf = np.random.default_rng(0).integers(0, 255, mb << 20, dtype=np.uint8).tobytes()
    algos = {'xxh3_128 (xxhash, a datasets dependency)': xxhash.xxh3_128, 'xxh64': xxhash.xxh64,
             'blake2b-128 (stdlib; the library\'s)': lambda: hashlib.blake2b(digest_size=16), 'sha256 (stdlib)': hashlib.sha256,
             'md5 (stdlib)': hashlib.md5}
    out = []
    for n, f in algos.items():
        t = time.process_time(); h = f(); h.update(buf); h.hexdigest(); dt = time.process_time() - t
        out.append({'hash': n, 'GB/s (one core)': mb/1024/dt})
    return out

def data_costs(ns=(10**6, 10**7), L=512) -> list[dict]:
    "Seconds to fingerprint a dataset of n tokens, beside reading its lengths through Python lists."
    from datasets import Dataset
    out = []
    for n in ns:
        ds = Dataset.from_dict({'input_ids': np.random.default_rng(0).integers(0, 49152, (n//L, L)).tolist()})
        t = time.process_time(); data_fingerprint(ds); dt = time.process_time() - t
        t = time.process_time(); _ = [len(x) for x in ds['input_ids']]; dl = time.process_time() - t
        out.append({'tokens': n, 'data fingerprint s (Arrow buffers)': dt, 'lengths via Python lists s': dl})
    return out

def teacher_costs(models:dict) -> list[dict]:
    "Seconds to fingerprint each teacher (wall), its size, and the fingerprint's size as JSON."
    import json
    out = []
    for n, m in models.items():
        t = time.perf_counter(); fp = teacher_fingerprint(m); dt = time.perf_counter() - t
        size = sum(p.numel()*p.element_size() for p in m.parameters())
        out.append({'teacher': n, 'params M': sum(p.numel() for p in m.parameters())/1e6, 'weight GB': size/1e9,
                    'fingerprint s (wall)': dt, 'fingerprint JSON bytes': len(json.dumps(fp))})
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
    "The issue's refusals and acceptances, as `TeacherCache.check` words them, on stories260K (or a tiny Llama)."
    from transformers import AutoModelForCausalLM
    from kd_toolkit.testing import has_asset, load_stories260k, tiny_llama, STORIES260K
    from offload_cache import load, token_dataset
    teacher = load_stories260k(attn='sdpa') if has_asset(STORIES260K) else tiny_llama(vocab_size=512, seed=1, attn='sdpa')
    teacher.save_pretrained(f'{root}/t')
    ds = token_dataset(8, [64])                                                    # packed windows: all the same length
    cache = build_teacher_cache(teacher, ds, f'{root}/kd_cache', k=16)
    torch.manual_seed(3); twin = AutoModelForCausalLM.from_config(teacher.config)           # same shapes, other weights
    tuned = AutoModelForCausalLM.from_pretrained(f'{root}/t', attn_implementation='sdpa')
    with torch.no_grad(): tuned.model.layers[2].mlp.up_proj.weight.mul_(1.01)    # a 'fine-tune' of one matrix
    cases = {'same data, same teacher': {}, 'same data, no teacher (training from the cache)': dict(teacher=None),
             'same teacher offloaded to disk': dict(teacher=load(f'{root}/t', 'disk', f'{root}/off')),
             'same teacher in fp16': dict(teacher=AutoModelForCausalLM.from_pretrained(f'{root}/t', dtype=torch.float16)),
             'other text of the same shape': dict(ds=token_dataset(8, [64], seed=7)),
             'the same text in another order': dict(ds=ds.select(range(7, -1, -1))),
             'another teacher': dict(teacher=tiny_llama(vocab_size=512, hidden_size=64, num_layers=5, seed=3)),
             'another teacher of the same shape': dict(teacher=twin),
             'the teacher with one matrix changed by 1%': dict(teacher=tuned), 'kd_topk 32': dict(k=32)}
    rows = []
    for n, kw in cases.items():
        try:
            cache.check(kw.get('ds', ds), ['topk'], 1.0, False, teacher=kw.get('teacher', teacher), k=kw.get('k', 16))
            rows.append({'case': n, 'verdict': 'accepted', 'message': '-'})
        except ValueError as e: rows.append({'case': n, 'verdict': 'refused', 'message': str(e).replace(root, '...')})
    return rows

from flops import md_table as md   # the project's table printer

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--big', action='store_true', help='also a ~0.85B-parameter synthetic teacher (1.7 GB on disk)')
    ap.add_argument('--smollm2', default=None, help='a folder holding SmolLM2-135M as safetensors (bench/quant_agreement.py makes one)')
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix='kd_fp_')
    print('## Refusals and acceptances (TeacherCache.check)\n\n' + md(scenarios(root)))
    print('\n## Hash speed, one core (process CPU time)\n\n' + md(hash_speeds()))
    print('\n## Data fingerprint cost\n\n' + md(data_costs()))
    from offload_cache import load
    from kd_toolkit.testing import has_asset, load_stories260k, STORIES260K
    models, full = {}, []
    if has_asset(STORIES260K): models['stories260K in memory'] = load_stories260k()
    models['stories260K offloaded to disk'] = load(f'{root}/t', 'disk', f'{root}/off')
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
