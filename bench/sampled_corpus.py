"""A data-rich corpus for quality protocols: stories sampled once from the real stories260K teacher, cached on disk.

    .venv/bin/python bench/sampled_corpus.py --tokens 3000000     # build (about 8 min on one core) and print a summary

The TinyStories excerpt in ../shared/data is 30 KB, so any run of a few hundred steps sees it many times over
(LM-only overfits, and distillation partly acts as a regulariser). Sampling from the teacher gives as much
in-distribution text as a protocol needs: ancestral sampling at temperature 1 (no top-k, no top-p), so the text
follows the teacher's own distribution. Stories are split where the model starts a new one (it emits BOS), decoded,
and stripped. Held-out text for these protocols stays the REAL TinyStories excerpt, so a student is never scored on
samples of the teacher it learnt from.

The cache is `$KD_TOOLKIT_CACHE/bench/stories260k-<tokens>-seed<seed>.json` (default `~/.cache/kd_toolkit`), written
atomically; the same arguments give the same stories (seeded torch generator, one thread, batch fixed).
"""
from __future__ import annotations
import argparse, json, os, time
from pathlib import Path
os.environ.setdefault('OMP_NUM_THREADS', '1')
import torch

def cache_path(n_tokens:int, seed:int) -> Path:
    root = Path(os.environ.get('KD_TOOLKIT_CACHE', Path.home()/'.cache'/'kd_toolkit')).expanduser()
    return root/'bench'/f'stories260k-{n_tokens}-seed{seed}.json'

@torch.no_grad()
def _sample(n_tokens:int, seed:int, batch:int=512, new_tokens:int=512, log=print) -> list[str]:
    from kd_toolkit.assets import load_stories260k, load_tokenizer
    model, tok = load_stories260k().eval(), load_tokenizer('tok512')
    bos = tok.bos_token_id
    torch.manual_seed(seed)
    stories, total, t0 = [], 0, time.perf_counter()
    while total < n_tokens:
        out = model.generate(torch.full((batch, 1), bos), do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                             max_new_tokens=new_tokens, pad_token_id=0)
        for row in out[:, 1:].tolist():
            cur = []
            for t in row + [bos]:
                if t == bos:
                    if cur:
                        text = tok.decode(cur, skip_special_tokens=True).strip()
                        if text: stories.append(text); total += len(cur)
                    cur = []
                else: cur.append(t)
        log(f"  sampled {total:,} tokens, {len(stories):,} stories ({time.perf_counter()-t0:.0f} s)")
    return stories

def sampled_stories(n_tokens:int=3_000_000, # tok512 tokens to sample (at least)
                    seed:int=0, # sampling seed
                    log=print) -> list[str]:
    "Stories sampled from stories260K (cached on disk after the first call)."
    p = cache_path(n_tokens, seed)
    if p.is_file(): return json.loads(p.read_text())
    stories = _sample(n_tokens, seed, log=log)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix('.tmp'); tmp.write_text(json.dumps(stories)); os.replace(tmp, p)
    return stories

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--tokens', type=int, default=3_000_000)
    ap.add_argument('--seed', type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    s = sampled_stories(a.tokens, a.seed)
    print(f"{len(s):,} stories, {sum(map(len, s)):,} characters in {cache_path(a.tokens, a.seed)}")
    print(repr(s[0][:300]))
