"""FLOP and memory model of one distillation step, with P100 / T4 upper bounds (and `--measure` on a CUDA GPU).

    .venv/bin/python bench/flops.py                 # the model: tables for the P100 and the T4
    .venv/bin/python bench/flops.py --measure       # + measured tokens/s and peak memory (needs CUDA; bench/gpu_bench.py)

Per token, the teacher does a forward pass (2 FLOPs per active matmul weight) and the student a forward and a
backward pass (6 per weight), with the output layer (lm_head, V*d) and attention scores (QK^T and AV: 4*L*d_q
FLOPs per layer per token, forward, full L as dense kernels compute it) counted. No download: the configs are
written here from the published model cards.
"""
from __future__ import annotations
import argparse, math
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3MoeConfig

GB = 1e9

def _llama(L, d, h, kv, ffn, V=49152):
    return LlamaConfig(vocab_size=V, hidden_size=d, intermediate_size=ffn, num_hidden_layers=L, num_attention_heads=h,
                       num_key_value_heads=kv, tie_word_embeddings=True, max_position_embeddings=8192)

CONFIGS = {
    'SmolLM2-135M': _llama(30, 576, 9, 3, 1536),   # also SmolLM-135M (v1): same shapes
    'SmolLM2-360M': _llama(32, 960, 15, 5, 2560),
    # The seed's teacher, Huihui-MoE-1B-A0.6B (Qwen3-0.6B-derived MoE). The seed gives 24 layers, d=1024 and the
    # 151,936 Qwen vocabulary; heads, head_dim and experts are ASSUMED from Qwen3-0.6B (16 q / 8 kv heads of 128,
    # FFN 3072) and from the name (3 experts, 1 active: ~1.0B total, ~0.5B active).
    'Qwen-vocab MoE teacher (seed)': Qwen3MoeConfig(
        vocab_size=151936, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8,
        head_dim=128, intermediate_size=3072, moe_intermediate_size=3072, num_experts=3, num_experts_per_tok=1,
        decoder_sparse_step=1, mlp_only_layers=[], tie_word_embeddings=True),
}
PAIRS = [('SmolLM2-360M', 'SmolLM2-135M'), ('Qwen-vocab MoE teacher (seed)', 'SmolLM2-135M')]

# fp16 dense peak, memory, bandwidth. "sustained" is an ASSUMED model-FLOP utilisation for small-d models in PyTorch
# eager with autocast (P100: no tensor cores, fp16 at 2x fp32 rate; T4: 70 W card that throttles well below its
# tensor-core peak). They are stated so the reader can rescale, not measured.
GPUS = {'P100': dict(tflops=18.7, mem_gb=16, bw_gbs=732, mfu=0.40),
        'T4':   dict(tflops=65.0, mem_gb=16, bw_gbs=320, mfu=0.20)}

def _dims(cfg):
    d, h, kv = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, 'head_dim', None) or d // h
    return d, h*hd, kv*hd  # d, d_q, d_kv

def _ffn(cfg):
    "Active FFN width per token (experts_per_tok x expert width for MoE)."
    if getattr(cfg, 'num_experts', None): return cfg.num_experts_per_tok * cfg.moe_intermediate_size
    return cfg.intermediate_size

def layer_params(cfg, active:bool=True) -> int:
    "Matmul weights of one decoder layer (all experts when `active=False`); norms and routers are negligible."
    d, dq, dkv = _dims(cfg)
    attn = d*dq + 2*d*dkv + dq*d
    if getattr(cfg, 'num_experts', None):
        n = cfg.num_experts_per_tok if active else cfg.num_experts
        return attn + n*3*d*cfg.moe_intermediate_size + d*cfg.num_experts  # + router
    return attn + 3*d*cfg.intermediate_size

def param_counts(cfg) -> dict:
    "Total, embedding and active non-embedding parameters; the total is checked against a meta-device model."
    with torch.device('meta'): m = AutoModelForCausalLM.from_config(cfg)
    total = sum(p.numel() for p in m.parameters())  # tied embeddings counted once
    emb = cfg.vocab_size * cfg.hidden_size
    formula = emb*(1 if cfg.tie_word_embeddings else 2) + cfg.num_hidden_layers*layer_params(cfg, active=False)
    assert abs(formula - total) / total < 0.01, f"param formula {formula} vs model {total}"
    return dict(total=total, embedding=emb, active_layers=cfg.num_hidden_layers*layer_params(cfg, active=True))

def forward_flops(cfg, seq_len:int) -> dict:
    "Forward FLOPs per token: decoder matmuls, attention scores (QK^T, AV) and the output layer."
    d, dq, _ = _dims(cfg)
    return dict(layers=2*cfg.num_hidden_layers*layer_params(cfg), attention=4*cfg.num_hidden_layers*seq_len*dq,
                lm_head=2*cfg.vocab_size*d)

def step_flops(teacher, student, seq_len:int) -> dict:
    "FLOPs per token of one distillation step: teacher forward (x1) + student forward and backward (x3)."
    t, s = sum(forward_flops(teacher, seq_len).values()), sum(forward_flops(student, seq_len).values())
    return dict(teacher=t, student=3*s, total=t + 3*s)

def act_bytes_per_token(cfg, seq_len:int, attn:str='sdpa') -> float:
    "Bytes saved for backward per token, all layers, under fp16 autocast with an fp32 residual stream."
    d, dq, dkv = _dims(cfg)
    per_layer = (2*4*d + 2*2*d          # two RMSNorm inputs (fp32) and outputs (fp16)
                 + 2*2*(dq + 2*dkv)     # q, k, v before and after RoPE (fp16)
                 + 2*2*dq               # attention output and o_proj input
                 + 4*2*_ffn(cfg))       # gate, up, act(gate), down input (fp16)
    if attn == 'eager': per_layer += 2*2*cfg.num_attention_heads*seq_len  # scores and probs (fp16)
    return cfg.num_hidden_layers*per_layer

def logit_bytes_per_token(V_s:int, V_t:int, kd_path:str) -> float:
    "Peak bytes per token held for the logits and the KD + CE losses."
    if kd_path == 'naive':   # fp16 student logits, fp32 upcast, fp32 log-softmax saved, fp32 grad; teacher fp16 + fp32 logprobs
        return (2 + 4 + 4 + 4)*V_s + (2 + 4)*V_t
    if kd_path == 'chunked': # fp16 student logits + their grad; teacher fp16 logits; fp32 work only per chunk
        return (2 + 2)*V_s + 2*V_t
    if kd_path == 'fused':   # no (N, V) student logits; teacher top-k (k=64: fp16 values, int32 ids)
        return 64*(2 + 4) + 4
    raise ValueError(f"unknown kd_path {kd_path!r}: use 'naive', 'chunked' or 'fused'")

def memory_estimate(teacher, student, tokens:int, seq_len:int, kd_path:str='chunked', attn:str='sdpa') -> dict:
    "Peak GPU memory of one step in GB: weights, fp32 master + Adam, activations and logits for `tokens` tokens."
    nt, ns = param_counts(teacher)['total'], param_counts(student)['total']
    return {'teacher fp16 weights': 2*nt/GB,
            'student fp32 master + grads': 8*ns/GB,
            'Adam states (fp32 m, v)': 8*ns/GB,
            'autocast fp16 weight copies': 2*ns/GB,
            f'student activations ({attn})': tokens*act_bytes_per_token(student, seq_len, attn)/GB,
            f'logits + losses ({kd_path})': tokens*logit_bytes_per_token(student.vocab_size, teacher.vocab_size, kd_path)/GB,
            'teacher transient (2 layers of hidden)': tokens*2*(2*teacher.hidden_size + 2*_ffn(teacher))/GB,
            'CUDA context + allocator slack': 0.8}

def max_tokens(teacher, student, seq_len, kd_path, attn, mem_gb=16.0) -> int:
    "Largest multiple of `seq_len` tokens per micro-batch that fits `mem_gb`."
    b = 0
    while sum(memory_estimate(teacher, student, (b+1)*seq_len, seq_len, kd_path, attn).values()) <= mem_gb: b += 1
    return b*seq_len

def flops_table(seq_len:int=512):
    rows = []
    for tn, sn in PAIRS:
        t, s = CONFIGS[tn], CONFIGS[sn]
        f = step_flops(t, s, seq_len)
        row = dict(pair=f"{tn} -> {sn}", **{f"{k} GFLOP/tok": v/1e9 for k, v in f.items()})
        for g, spec in GPUS.items():
            bound = spec['tflops']*1e12/f['total']
            row[f"{g} bound tok/s"] = bound
            row[f"{g} @{spec['mfu']:.0%} MFU tok/s"] = bound*spec['mfu']
            # the naive path's logit traffic: every (N, V) buffer written once and read once
            row[f"{g} logit-traffic bound tok/s (naive)"] = spec['bw_gbs']*1e9/(2*logit_bytes_per_token(s.vocab_size, t.vocab_size, 'naive'))
        rows.append(row)
    return rows

def md_table(rows:list[dict]) -> str:
    "A list of dicts as a GitHub markdown table (3 significant digits for floats); no extra dependency."
    def f(v):
        if isinstance(v, float): return 'nan' if math.isnan(v) else f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
        return str(v)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    out = ['| ' + ' | '.join(cols) + ' |', '|' + '|'.join('---' for _ in cols) + '|']
    out += ['| ' + ' | '.join(f(r.get(c, '')) for c in cols) + ' |' for r in rows]
    return "\n".join(out)

_fmt = md_table

def model_report(seq_len:int=512, tokens:int=4096):
    lines = [f"## Parameters (configs written locally; MoE active = experts_per_tok of num_experts)", ""]
    prow = []
    for n, c in CONFIGS.items():
        p = param_counts(c)
        prow.append(dict(model=n, layers=c.num_hidden_layers, d=c.hidden_size, vocab=c.vocab_size,
                         **{'total M': p['total']/1e6, 'embedding M': p['embedding']/1e6, 'active layers M': p['active_layers']/1e6}))
    lines += [_fmt(prow), "", f"## FLOPs per token and upper bounds, L={seq_len}", "", _fmt(flops_table(seq_len)), ""]
    for tn, sn in PAIRS:
        t, s = CONFIGS[tn], CONFIGS[sn]
        lines += [f"## Memory estimate, {tn} -> {sn}, {tokens} tokens/micro-batch (B={tokens//seq_len}, L={seq_len})", ""]
        mrows = []
        for kd_path, attn in [('naive', 'eager'), ('chunked', 'sdpa'), ('fused', 'sdpa')]:
            m = memory_estimate(t, s, tokens, seq_len, kd_path, attn)
            mrows.append(dict(setting=f"{kd_path} KD, {attn} attention", **{k.split(' (')[0]: v for k, v in m.items()},
                              **{'total GB': sum(m.values()), 'fits 16 GB': sum(m.values()) <= 16,
                                 'max tokens/micro-batch': max_tokens(t, s, seq_len, kd_path, attn)}))
        lines += [_fmt(mrows), ""]
    return "\n".join(lines)

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--seq-len', type=int, default=512)
    ap.add_argument('--tokens', type=int, default=4096, help='tokens per micro-batch for the memory estimate')
    ap.add_argument('--measure', action='store_true', help='also measure tokens/s and peak memory on CUDA')
    ap.add_argument('--batch', type=int, default=8)
    a = ap.parse_args()
    print(model_report(a.seq_len, a.tokens))
    if a.measure and torch.cuda.is_available():
        from gpu_bench import measure   # the measured side lives in bench/gpu_bench.py (same pair, more methods)
        print(); print(measure('SmolLM2-360M', 'SmolLM2-135M', a.batch, a.seq_len))
    else:
        print(f"\nNo measurement: run with --measure on a CUDA machine (CUDA available here: {torch.cuda.is_available()}).")
