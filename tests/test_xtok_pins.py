"""Issue 26 moved the cross-vocabulary objectives out of `align` (into `xvocab`, their loss components into
`components`): the same inputs give the same numbers, bit for bit. The values were computed at commit 3968f4b (before
the move) on CPU (torch 2.13, one thread); a move is bit-identical, so the tolerance is a few float32 ulps, which only
guards against a different CPU's vector math, not against a changed formula."""
import math
from types import SimpleNamespace
import pytest, torch
from kd_toolkit.align import VocabMap
from kd_toolkit.components import MicroBatch, Plan, kd_chunk, kd_hybrid, kd_uld
from kd_toolkit.losses import topk_teacher
from kd_toolkit.xvocab import chunk_likelihood_loss, hybrid_loss, token_logprobs, uld_loss

PINNED = {  # float.hex of each value at 3968f4b
    'uld': '0x1.074cde0000000p-1', 'uld_T2': '0x1.497bc20000000p-2',
    'hybrid': '0x1.9d50640000000p+1', 'hybrid_T2_w05': '0x1.6cdb2e0000000p+1',
    'chunk': '0x1.43bac20000000p-2', 'chunk_tau100_debias': '0x1.67dc1e0000000p+1',
    'kd_chunk': '0x1.66e3420000000p+0', 'kd_chunk_grad': '0x1.15c60edc86dfep-1',
    'kd_uld': '0x1.040d8c0000000p-1', 'kd_hybrid': '0x1.8b6e080000000p+1',
}

def _case():
    g = torch.Generator().manual_seed(26)
    N, Vs, Vt = 40, 50, 60
    s, t = torch.randn(N, Vs, generator=g) * 3, torch.randn(N, Vt, generator=g) * 3
    t2s = torch.randint(0, Vs, (Vt,), generator=g); ex = torch.rand(Vt, generator=g) < 0.6
    m = torch.rand(N, generator=g) < 0.8
    B, Ls, Lt, V = 3, 20, 30, 40
    logits = torch.randn(B, Ls, V, generator=g) * 3
    tg = torch.randint(0, V, (B, Ls), generator=g); tg[:, -1] = -100
    tlp = -torch.rand(B, Lt, generator=g) * 6
    idx = torch.stack([torch.sort(torch.randperm(Lt, generator=g)[:Ls]).values for _ in range(B)])
    am = torch.rand(B, Ls, generator=g) < 0.5
    bm = torch.rand(V, generator=g) < 0.3
    tb = -torch.rand(B, Lt, generator=g) * 3
    return s, t, VocabMap(t2s, ex, Vs), m, logits, tg, tlp, idx, am, bm, tb

@pytest.fixture(scope='module')
def values():
    torch.set_num_threads(1)
    s, t, vm, m, logits, tg, tlp, idx, am, bm, tb = _case()
    k, tk2 = 8, topk_teacher(t, 8, 2.0)
    slp, sb = token_logprobs(logits, tg, bm, chunk_size=7)
    v = dict(uld=uld_loss(s, topk_teacher(t, k), m), uld_T2=uld_loss(s, tk2, m, 2.0),
             hybrid=hybrid_loss(s, topk_teacher(t, k), vm, m), hybrid_T2_w05=hybrid_loss(s, tk2, vm, m, 2.0, 0.5),
             chunk=chunk_likelihood_loss(token_logprobs(logits, tg), tlp, idx, am),
             chunk_tau100_debias=chunk_likelihood_loss(slp, tlp, idx, am, sb, tb, merge_below=0.1, temperature=100.0))
    B, Ls, Lt = 3, 20, 30  # the components on a collated cross-tokenizer batch
    am_ = torch.ones(B, Ls, dtype=torch.long); am_[-1, -4:] = 0
    tam = torch.ones(B, Lt, dtype=torch.long); tam[-1, -6:] = 0
    ids = tg.clamp_min(0)
    batch = dict(input_ids=ids, attention_mask=am_, labels=ids.masked_fill(am_ == 0, -100), align_idx=idx,
                 align_mask=am & am_.bool(), teacher_input_ids=torch.zeros(B, Lt, dtype=torch.long),
                 teacher_attention_mask=tam)
    x = logits.clone().requires_grad_()
    mb = MicroBatch(batch, Plan('cached', 'chunk', temperature=3.0), SimpleNamespace(logits=x),
                    {'token_logprobs': tlp[tam.bool()]})
    v['kd_chunk'] = kd_chunk(mb)
    v['kd_chunk'].backward()
    v['kd_chunk_grad'] = x.grad.double().abs().sum()
    xs = torch.randn(B, Ls, 50, generator=torch.Generator().manual_seed(3)) * 3
    tkk = topk_teacher(torch.randn(int(am_.sum()), 60, generator=torch.Generator().manual_seed(4)) * 3, 8)
    mu = MicroBatch(batch, Plan('topk', 'uld', temperature=1.0, vocab_map=vm), SimpleNamespace(logits=xs), {'topk': tkk})
    v['kd_uld'], v['kd_hybrid'] = kd_uld(mu), kd_hybrid(mu)
    return {n: float(x.detach()) for n, x in v.items()}

@pytest.mark.parametrize('name', list(PINNED))
def test_same_numbers_as_before_the_move(values, name):
    want = float.fromhex(PINNED[name])
    assert math.isclose(values[name], want, rel_tol=4 * 2**-23, abs_tol=0), (name, values[name].hex(), PINNED[name])
