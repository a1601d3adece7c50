"Loss properties that do not read well as notebook lessons: real models through the fused path, dtype mixes, memory."
import json, os, subprocess, sys
from pathlib import Path
import pytest, torch
import torch.nn.functional as F
from kd_toolkit.losses import (DIVERGENCES, TopK, attention_loss, check_vocab, contrastive_loss, fused_kd_lm_loss,
                               hidden_loss, kd_loss, kd_loss_topk, layer_map, lm_loss, next_token_targets, topk_teacher)
from kd_toolkit.testing import rand_batch, tiny_gpt2, tiny_llama, tiny_moe

ROOT = Path(__file__).resolve().parents[1]

def _close(a, b, rel=1e-5):
    a, b = a.detach().double(), b.detach().double()
    assert (a - b).abs().max() <= rel * max(b.abs().max().item(), 1e-6), ((a - b).abs().max().item(), b.abs().max().item())

@pytest.mark.parametrize('make', [tiny_llama, tiny_gpt2])
def test_fused_equals_model_logits(make):
    "The fused loss on (last hidden state, lm_head.weight) equals KD + LM on the model's own logits, grads included."
    student, teacher = make(300, 32, seed=0), make(300, 32, seed=1)
    b = rand_batch(300, 2, 24, pad_frac=0.25)
    with torch.no_grad(): t_logits = teacher(b['input_ids'], attention_mask=b['attention_mask']).logits
    tgt, m = next_token_targets(b['labels']), b['attention_mask']
    W = student.get_output_embeddings().weight
    def run(fused):
        student.zero_grad()
        out = student(b['input_ids'], attention_mask=m, output_hidden_states=True)
        if fused:
            v = fused_kd_lm_loss(out.hidden_states[-1].reshape(-1, 32), W, t_logits.reshape(-1, 300), tgt.reshape(-1),
                                 m.reshape(-1), 'jsd', 2.0, chunk_size=7)
        else: v = dict(kd=kd_loss(out.logits, t_logits, m, 'jsd', 2.0), lm=lm_loss(out.logits, tgt))
        (v['kd'] + 0.5 * v['lm']).backward()
        return [v['kd'], v['lm']] + [p.grad.clone() for p in student.parameters() if p.grad is not None]
    for a, b_ in zip(run(True), run(False)): _close(a, b_)

def test_fused_mixed_dtypes():
    "fp16 hidden states with an fp32 weight (autocast-style): finite, close to the fp32 result, grads in input dtypes."
    g = torch.Generator().manual_seed(0)
    h, W = torch.randn(40, 16, generator=g), torch.randn(200, 16, generator=g) * 0.3
    t = torch.randn(40, 200, generator=g) * 3
    h16 = h.half().requires_grad_(); W32 = W.clone().requires_grad_()
    v = fused_kd_lm_loss(h16, W32, t, torch.randint(0, 200, (40,), generator=g), chunk_size=9)
    (v['kd'] + v['lm']).backward()
    assert h16.grad.dtype == torch.float16 and W32.grad.dtype == torch.float32
    assert torch.isfinite(h16.grad).all() and torch.isfinite(W32.grad).all()
    _close(v['kd'], kd_loss(F.linear(h.half().float(), W), t), rel=1e-4)

def test_fused_lm_only_and_topk_teacher():
    g = torch.Generator().manual_seed(1)
    h, W, t = torch.randn(30, 8, generator=g), torch.randn(50, 8, generator=g), torch.randn(30, 50, generator=g)
    tg = torch.randint(0, 50, (30,), generator=g)
    test = fused_kd_lm_loss(h, W, None, tg)
    assert set(test) == {'lm'}; _close(test['lm'], lm_loss(h @ W.T, tg))
    tk = topk_teacher(t, 5)
    _close(fused_kd_lm_loss(h, W, tk, chunk_size=4)['kd'], kd_loss_topk(h @ W.T, tk))
    with pytest.raises(ValueError, match='teacher'): fused_kd_lm_loss(h, W, None)
    with pytest.raises(ValueError, match='lm_head_weight'): fused_kd_lm_loss(h, W[:, :4], t)

@pytest.mark.parametrize('divergence', DIVERGENCES)
def test_kd_float64_reference_bf16_fp16_inputs(divergence):
    "Low-precision inputs are upcast: the loss equals the fp32 loss of the same (rounded) values."
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(3, 5, 64, generator=g) * 5, torch.randn(3, 5, 64, generator=g) * 5
    for dt in (torch.float16, torch.bfloat16):
        v = kd_loss(s.to(dt), t.to(dt), divergence=divergence)
        assert v.dtype == torch.float32
        _close(v, kd_loss(s.to(dt).float(), t.to(dt).float(), divergence=divergence), rel=1e-6)

def test_bad_inputs_raise_clear_errors():
    s = torch.randn(2, 3, 10)
    with pytest.raises(ValueError, match='unknown divergence'): kd_loss(s, s, divergence='kl')
    with pytest.raises(ValueError, match='temperature'): kd_loss(s, s, temperature=0)
    with pytest.raises(ValueError, match='beta'): kd_loss(s, s, divergence='jsd', beta=1.5)
    with pytest.raises(ValueError, match='mask has shape'): kd_loss(s, s, torch.ones(3, 2))
    with pytest.raises(ValueError, match='gather_aligned'): kd_loss(s, torch.randn(2, 4, 10))
    with pytest.raises(ValueError, match='chunk_size'): kd_loss(s, s, chunk_size=0)
    with pytest.raises(ValueError, match='flatten'): kd_loss_topk(s, topk_teacher(s, 2))
    with pytest.raises(ValueError, match='map_topk'): kd_loss_topk(torch.randn(6, 5), topk_teacher(s, 2))
    with pytest.raises(TypeError, match='TopK'): kd_loss_topk(torch.randn(6, 10), s)
    with pytest.raises(ValueError, match='k must be'): topk_teacher(s, 11)
    with pytest.raises(ValueError, match='match the logits'): lm_loss(s, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match='kind'): hidden_loss(s, s, kind='mse')
    with pytest.raises(ValueError, match='layer_map'): attention_loss([torch.rand(1, 2, 3, 3)], [torch.rand(1, 2, 3, 3)], layer_map=[1])
    with pytest.raises(ValueError, match='same tokens'): attention_loss([torch.rand(1, 2, 3, 3)], [torch.rand(1, 2, 4, 4)])
    with pytest.raises(ValueError, match='attn_implementation="eager"'): attention_loss([], [torch.rand(1, 2, 3, 3)])
    with pytest.raises(ValueError, match='Projector'): contrastive_loss(s, torch.randn(2, 3, 12))
    with pytest.raises(ValueError, match='>= 1'): layer_map(0, 3)

def test_check_vocab_accepts_a_tokenizer():
    class Tok:
        def __len__(self): return 151665
    assert check_vocab(151936, 152064, Tok()) == 151665

def test_sdpa_model_attention_error():
    "A model loaded with SDPA returns no attention maps: the loss says to load it with eager attention."
    m = tiny_llama(100, 32, attn='sdpa')
    out = m(torch.randint(0, 100, (1, 8)), output_attentions=True)
    with pytest.raises(ValueError, match='attn_implementation="eager"'): attention_loss(out.attentions, out.attentions)

def test_attention_gqa_and_deeper_student():
    "A 3-layer, 4-head student under a 2-layer 8-head (GQA 4 kv) MoE teacher: finite, of order 1, gradient flows."
    st, te = tiny_llama(128, 32, num_layers=3, num_heads=4), tiny_moe(128, 32, num_layers=2, num_heads=8, num_kv_heads=4)
    b = rand_batch(128, 2, 20, pad_frac=0.3)
    so = st(b['input_ids'], attention_mask=b['attention_mask'], output_attentions=True)
    with torch.no_grad(): to = te(b['input_ids'], attention_mask=b['attention_mask'], output_attentions=True)
    v = attention_loss(so.attentions, to.attentions, b['attention_mask'])
    v.backward()
    assert 0 < v.item() < 5 and all(torch.isfinite(p.grad).all() for p in st.parameters() if p.grad is not None)

def _bench(method, N, V, chunk):
    env = dict(os.environ, OMP_NUM_THREADS='1', MALLOC_MMAP_THRESHOLD_='1048576')
    r = subprocess.run([sys.executable, str(ROOT/'bench'/'loss_memory.py'), '--worker', method, '--N', str(N),
                        '--V', str(V), '--chunk', str(chunk), '--reps', '0'], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads(r.stdout.strip().splitlines()[-1])
    return d['peak_bytes'] / d['buf_bytes']

@pytest.mark.slow  # a measurement (RSS high-water mark), noisy on a shared machine: run with `make test-slow` / bench/loss_memory.py
def test_chunked_memory_fresh_process():
    "Peak extra memory of forward + backward, in fp32 (N, V) buffers: chunked <= 1.5, naive about 5."
    chunked, naive = _bench('ours_chunked', 1024, 16384, 64), _bench('naive', 1024, 16384, 64)
    assert chunked <= 1.5 and naive >= 3.5, (chunked, naive)

@pytest.mark.slow
@pytest.mark.parametrize('method', [f'chunked_{d}' for d in DIVERGENCES] + ['chunked_lm', 'ours_topk'])
def test_auto_chunk_memory_every_divergence(method):
    "chunk_size='auto' (N/32 positions): every divergence's chunked path within 1.5 fp32 (N, V) buffers (fresh process)."
    assert _bench(method, 2048, 16384, 'auto') <= 1.5

def test_chunk_size_auto_equals_plain():
    "'auto' picks N/32 positions (at least 16, at most 2^24/V): the same values and gradients as plain autograd."
    from kd_toolkit.losses import auto_chunk
    assert auto_chunk(2048, 49152) == 64 and auto_chunk(10, 50) == 16 and auto_chunk(4096, 151936) == 110
    g = torch.Generator().manual_seed(9)
    s, t = torch.randn(700, 40, generator=g), torch.randn(700, 40, generator=g)
    for d in DIVERGENCES:
        a, b = s.clone().requires_grad_(), s.clone().requires_grad_()
        va, vb = kd_loss(a, t, divergence=d, chunk_size='auto'), kd_loss(b, t, divergence=d)
        (va * 3).backward(); (vb * 3).backward()
        _close(va, vb); _close(a.grad, b.grad)
    with pytest.raises(ValueError, match="'auto' or None"): kd_loss(s, t, chunk_size='big')
    with pytest.raises(ValueError, match="'auto' or None"): lm_loss(s, torch.zeros(700, dtype=torch.long), chunk_size=1.5)
    with pytest.raises(ValueError, match="'auto' or None"): fused_kd_lm_loss(s, torch.randn(9, 40), None, torch.zeros(700, dtype=torch.long), chunk_size=0)

@pytest.mark.parametrize('divergence', DIVERGENCES)
def test_fused_fp16_extremes_finite(divergence):
    "fp16 hidden states and weight giving logits near ±60, teacher columns at -inf: finite losses and gradients."
    g = torch.Generator().manual_seed(3)
    h = (torch.randn(24, 16, generator=g) * 4).half().requires_grad_()
    W = (torch.randn(40, 16, generator=g) * 4).half().requires_grad_()
    t = (torch.rand(24, 40, generator=g) * 120 - 60).half(); t[:, -6:] = float('-inf')
    for teacher in (t, topk_teacher(t, 5)):
        v = fused_kd_lm_loss(h, W, teacher, torch.randint(0, 34, (24,), generator=g), divergence=divergence, chunk_size=5)
        (v['kd'] + v['lm']).backward()
        assert all(torch.isfinite(x).all() for x in (v['kd'], v['lm'], h.grad, W.grad)), divergence
        h.grad = W.grad = None
