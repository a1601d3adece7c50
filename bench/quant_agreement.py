"""Quantized teachers (issue 27): how far a quantized teacher's cache is from the full-precision teacher's, on CPU.

    python bench/quant_agreement.py                           # stories260K (../shared/data), every method installed
    python bench/quant_agreement.py --models stories260k smollm2 --k 16 64

The quantization libraries are NOT project dependencies: run this from a separate environment that has them, e.g.
    python -m venv /tmp/q    # then let it see the project's packages (kd_toolkit, torch, transformers) without copying them:
    echo "import site; site.addsitedir('$PWD/.venv/lib/python3.11/site-packages')" > /tmp/q/lib/python3.11/site-packages/zz.pth
    /tmp/q/bin/pip install --no-deps bitsandbytes torchao optimum-quanto termcolor && /tmp/q/bin/python bench/quant_agreement.py
A method whose library is missing, or that cannot run here, gets a row saying why.

Per real position of held-out text (TinyStories windows), against the fp32 teacher:
- top1: the quantized teacher's argmax equals the reference's;
- overlap@k: |top-k ids of both| / k (the id sets the cache stores);
- MB: transformers' get_memory_footprint (blank for torchao/quanto: their tensor subclasses report the full size);
- KL top-k+tail: KL(reference || quantized) over the reference's k top ids plus one tail bucket, what the cached KD
  loss sees of the teacher (nats per position); the full-vocabulary KL beside it.
"""
from __future__ import annotations
import argparse, json, os, sys, tempfile, time, warnings
import torch
warnings.filterwarnings('ignore')
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # bench/ (flops.py)
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

def methods() -> dict:
    "name -> (what to load it with, or a cast; the library it needs)."
    import transformers as tf
    def ao(make):
        def f():
            import torchao.quantization as Q
            from torchao.quantization.granularity import PerAxis, PerGroup
            return tf.TorchAoConfig(make(Q, PerAxis, PerGroup))
        return f
    return {
        'fp16 (rounding only)': ('cast', torch.float16, None),
        'bf16 (rounding only)': ('cast', torch.bfloat16, None),
        'bnb LLM.int8 (threshold 6)': ('quant', lambda: tf.BitsAndBytesConfig(load_in_8bit=True), 'bitsandbytes'),
        'bnb NF4 (blocks of 64)': ('quant', lambda: tf.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4',
                                                                         bnb_4bit_compute_dtype=torch.float32), 'bitsandbytes'),
        'bnb NF4 + double quant': ('quant', lambda: tf.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4',
                                   bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32), 'bitsandbytes'),
        'bnb FP4': ('quant', lambda: tf.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='fp4',
                                                          bnb_4bit_compute_dtype=torch.float32), 'bitsandbytes'),
        'torchao int8 weight-only': ('quant', ao(lambda Q, A, G: Q.Int8WeightOnlyConfig()), 'torchao'),
        'torchao int8 dynamic act+weight': ('quant', ao(lambda Q, A, G: Q.Int8DynamicActivationInt8WeightConfig()), 'torchao'),
        'torchao int4 weight-only (per channel)': ('quant', ao(lambda Q, A, G: Q.IntxWeightOnlyConfig(weight_dtype=torch.int4,
                                                                                                   granularity=A(0))), 'torchao'),
        'torchao int4 weight-only (groups of 32)': ('quant', ao(lambda Q, A, G: Q.IntxWeightOnlyConfig(weight_dtype=torch.int4,
                                                                                                    granularity=G(32))), 'torchao'),
        'quanto int8 weights': ('quant', lambda: tf.QuantoConfig(weights='int8'), 'optimum.quanto'),
        'quanto int4 weights': ('quant', lambda: tf.QuantoConfig(weights='int4'), 'optimum.quanto'),
        'HQQ 4-bit (groups of 64)': ('quant', lambda: tf.HqqConfig(nbits=4, group_size=64), 'hqq'),
    }

def model_folder(name:str, root:str) -> tuple[str, object]:
    "A folder holding the fp32 teacher as safetensors (quantizers load from there), and its tokenizer."
    from transformers import AutoTokenizer
    from kd_toolkit.testing import STORIES260K, require_asset, load_tokenizer
    if name == 'stories260k': return str(require_asset(STORIES260K)), load_tokenizer('tok512')
    if name == 'smollm2':
        folder = os.path.join(root, 'smollm2_fp32')
        if not os.path.isfile(os.path.join(folder, 'config.json')):
            from kd_toolkit.sources import load_model
            from transformers import AutoModelForCausalLM
            g, tok = load_model('smollm2', dtype=torch.float32)   # the Q4_1 GGUF of the PyPI wheel, dequantized to fp32
            cfg = g.config; cfg.__dict__.pop('quantization_config', None)   # (a GGUF-loaded model refuses save_pretrained)
            m = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
            m.load_state_dict(g.state_dict()); m.save_pretrained(folder); tok.save_pretrained(folder)
        return folder, AutoTokenizer.from_pretrained(folder)
    raise ValueError(f"unknown model {name!r}: stories260k or smollm2")

def windows(tok, n:int, length:int) -> torch.Tensor:
    "n windows of `length` token ids of the TinyStories excerpt (held-out text for both teachers)."
    from kd_toolkit.testing import read_text
    ids = tok(read_text('tinystories'))['input_ids']
    if len(ids) < n*length: raise ValueError(f"the text has {len(ids)} tokens, fewer than {n} x {length}")
    step = (len(ids) - length)//max(1, n - 1)
    return torch.tensor([ids[i*step:i*step + length] for i in range(n)])

@torch.no_grad()
def logprobs(model, ids, batch:int=4) -> torch.Tensor:
    "fp32 log-probabilities (N, V) of `model` at every position of `ids`."
    out = [torch.log_softmax(model(input_ids=ids[i:i + batch], use_cache=False).logits.float(), -1).flatten(0, 1)
           for i in range(0, len(ids), batch)]
    return torch.cat(out)

def agreement(ref:torch.Tensor, q:torch.Tensor, ks) -> dict:
    "Top-1 agreement, top-k overlap and the KL over the reference's top-k + tail, per position, averaged."
    r = {'top1': float((ref.argmax(-1) == q.argmax(-1)).float().mean())}
    for k in ks:
        rv, ri = ref.topk(k, -1)
        qi = q.topk(k, -1).indices
        r[f'overlap@{k}'] = float((ri[..., :, None] == qi[..., None, :]).any(-1).float().mean())
        p = torch.cat([rv.exp(), (1 - rv.exp().sum(-1, keepdim=True)).clamp_min(1e-12)], -1)     # (N, k+1)
        qv = q.gather(-1, ri).exp()
        pq = torch.cat([qv, (1 - qv.sum(-1, keepdim=True)).clamp_min(1e-12)], -1)
        r[f'KL top-{k}+tail'] = float((p*(p.log() - pq.log())).sum(-1).mean())
    r['KL full'] = float((ref.exp()*(ref - q)).sum(-1).mean())
    return r

def run(name:str, ks, n:int, length:int, root:str, only=None) -> list[dict]:
    from transformers import AutoModelForCausalLM
    folder, tok = model_folder(name, root)
    ids = windows(tok, n, length)
    load = lambda **kw: AutoModelForCausalLM.from_pretrained(folder, attn_implementation='sdpa', **kw).eval()
    ref_model = load(dtype=torch.float32)
    t = time.process_time(); ref = logprobs(ref_model, ids); t_ref = time.process_time() - t
    mb = lambda m: m.get_memory_footprint()/1e6
    rows = [dict(model=name, method='fp32 (reference)', MB=mb(ref_model), cpu_s=t_ref, positions=len(ref))]
    del ref_model
    for meth, (kind, what, lib) in methods().items():
        if only and not any(o.lower() in meth.lower() for o in only): continue
        row = dict(model=name, method=meth)
        try:
            if lib: __import__(lib)
        except ImportError as e:
            rows.append(row | {'note': f'not installed ({e.name})'}); continue
        try:
            m = load(dtype=what) if kind == 'cast' else load(dtype=torch.float32, device_map='cpu', quantization_config=what())
            t = time.process_time(); q = logprobs(m, ids)
            row |= ({} if lib in ('torchao', 'optimum.quanto') else {'MB': mb(m)}) | {'cpu_s': time.process_time() - t}
            rows.append(row | agreement(ref, q, ks)); del m
        except Exception as e:
            msg = str(e).splitlines()[0][:150] if str(e) else ''
            rows.append(row | {'note': f"fails here: {type(e).__name__}: {msg}"})
    return rows

from flops import md_table as md   # the project's table printer

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--models', nargs='+', default=['stories260k'])
    ap.add_argument('--k', type=int, nargs='+', default=[16], help='top-k sizes (the cache stores kd_topk; 64 by default in runs)')
    ap.add_argument('--n', type=int, default=16, help='windows of held-out text')
    ap.add_argument('--length', type=int, default=128)
    ap.add_argument('--only', nargs='*', default=None, help='methods whose name contains one of these')
    ap.add_argument('--root', default=os.path.join(tempfile.gettempdir(), 'kd_quant'))
    ap.add_argument('--json', default=None)
    a = ap.parse_args()
    os.makedirs(a.root, exist_ok=True)
    import importlib.metadata as im
    vers = {}
    for p in ('torch', 'transformers', 'bitsandbytes', 'torchao', 'optimum-quanto', 'hqq'):
        try: vers[p] = im.version(p)
        except im.PackageNotFoundError: pass
    print('versions:', vers)
    rows = [r for m in a.models for r in run(m, a.k, a.n, a.length, a.root, a.only)]
    print(md(rows))
    if a.json:
        with open(a.json, 'a') as f:
            for r in rows: f.write(json.dumps({'part': 'quant_agreement', **r, 'versions': vers}) + '\n')
