"""cross_vocab_loss='trie', the piece trie (issue 23): spellings on real tokenizer pairs, fp16/bf16 gradients under loss
scaling against fp32, chunked = plain, and a tiny cross-tokenizer `distill` that trains live, from the teacher cache and
with no teacher model at all, with the same losses."""
import collections, copy, math
import pytest, torch
from kd_toolkit.losses import TopK, topk_teacher
from kd_toolkit.testing import fp16_grad_check, load_tokenizer, read_text, require_asset, tiny_llama
from kd_toolkit.xvocab import PieceTrie, trie_kl, trie_levels

PAIRS = [('tok512', 'gpt2'), ('smollm2', 'gpt2'), ('qwen2.5', 'smollm2'), ('smollm2', 'qwen2.5'), ('gpt2', 'llama2-spm')]

def _spellings_in_text(t_tok, s_tok, text):
    "{student id: Counter(teacher pieces)} between consecutive common boundaries of one real text (`data.pack_stream`)."
    from kd_toolkit.data import pack_stream
    st = pack_stream([text], s_tok, t_tok, add_eos=False, min_coverage=0)
    out = collections.defaultdict(collections.Counter)
    bd, s, t = st.bounds.tolist(), st.input_ids.tolist(), st.teacher_input_ids.tolist()
    for (s0, t0), (s1, t1) in zip(bd[:-1], bd[1:]):
        if s1 == s0 + 1 and t1 > t0: out[s[s0]][tuple(t[t0:t1])] += 1
    return out

def _tok(name):
    from kd_toolkit.assets import QWEN_TOKENIZER
    if name != 'qwen2.5': return load_tokenizer(name)   # (skips where the asset is absent)
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(require_asset(QWEN_TOKENIZER)))

@pytest.mark.slow
@pytest.mark.parametrize('teacher,student', PAIRS, ids=[f'{t}->{s}' for t, s in PAIRS])
def test_spellings_match_the_text(teacher, student):
    """The trie spells each student token as the teacher's tokenizer reads it inside real text: on TinyStories and
    Shakespeare, >= 97% of the student tokens that fill a span between two common boundaries are spelled there exactly
    as the trie spells them (measured 99.2-100%)."""
    t_tok, s_tok = _tok(teacher), _tok(student)
    trie = PieceTrie.from_tokenizers(t_tok, s_tok)
    seen = _spellings_in_text(t_tok, s_tok, read_text('tinystories', 20_000) + read_text('shakespeare', 20_000))
    hit = tot = 0
    for v, c in seen.items():
        sp = tuple(x for x in trie.spell[v].tolist() if x >= 0)
        hit += c.get(sp, 0); tot += sum(c.values())
    print(f"\n{teacher} -> {student}: {hit / tot:.4f} of {tot} spans spelled as in the text")
    assert tot > 1000 and hit / tot >= 0.97

def _case(seed=0, B=4, Ls=256, V=300, Vt=200, k=16):
    "A random pair: student token v spelled as 1-3 random teacher pieces (distinct spellings), random aligned text."
    g = torch.Generator().manual_seed(seed)
    sp = set()
    while len(sp) < V: sp.add(tuple(torch.randint(0, Vt, (int(torch.randint(1, 4, (1,), generator=g)),), generator=g).tolist()))
    sp = sorted(sp)
    trie = PieceTrie.from_spellings(sp, Vt)
    s_ids = torch.randint(0, V, (B, Ls), generator=g)
    t_ids, idx = [], []
    for b in range(B):
        row, pos = [0], []
        for v in s_ids[b].tolist(): pos.append(len(row) - 1); row += list(sp[v])
        t_ids.append(row); idx.append(pos)
    Lt = max(map(len, t_ids))
    tid = torch.tensor([r + [0] * (Lt - len(r)) for r in t_ids]); tm = (torch.arange(Lt) < torch.tensor([len(r) for r in t_ids])[:, None])
    tg = torch.cat([s_ids[:, 1:], torch.full((B, 1), -100)], 1)
    rows, tpos, nodes = trie_levels(trie, tg, tid, tm.long(), torch.tensor(idx), torch.ones(B, Ls, dtype=torch.bool))
    tl = torch.randn(B * Lt, Vt, generator=g) * 3
    tk = topk_teacher(tl, k)
    tk = TopK(tk.logprobs[tpos].half().float(), tk.ids[tpos], tk.tail[tpos])
    logits = torch.randn(B * Ls, V, generator=g) * 3
    return trie, logits, tk, rows, nodes

def test_levels_walk_the_spellings():
    "Every aligned position has a root level; deeper levels exist exactly where a spelling is longer than one piece and its node has children."
    trie, logits, tk, rows, nodes = _case()
    assert (nodes == 0).sum() == 4 * 255 and len(rows) > 4 * 255 and bool((rows[1:] >= rows[:-1]).all())

@pytest.mark.parametrize('chunk', [None, 64, 'auto'])
def test_fp16_gradient_matches_fp32(chunk):
    """fp16/bf16 student logits, loss scales 1 .. 2^24: the gradient equals fp32's on the same values (issue 14's bounds);
    chunked paths recompute each chunk in fp32 and round once."""
    trie, logits, tk, rows, nodes = _case()
    fn = lambda s: trie_kl(s, tk, rows, nodes, trie, chunk_size=chunk)
    df = fp16_grad_check(fn, dict(s=logits), ['s'], reference=lambda s: trie_kl(s, tk, rows, nodes, trie))
    assert df.ok.all() and (df.nonfinite == 0).all(), df.to_string()
    f = df[(df.dtype == 'float16') & (df.scale >= 2**8)]
    assert (f.cos >= 0.9999).all() and (f.rel_err <= 1e-3).all(), f.to_string()

def test_chunked_equals_plain_and_temperature():
    "Chunking never changes the value or the gradient (fp32); temperature T scales like T² x KL at logits / T."
    trie, logits, tk, rows, nodes = _case(1)
    a = logits.clone().requires_grad_(); b = logits.clone().requires_grad_()
    va, vb = trie_kl(a, tk, rows, nodes, trie), trie_kl(b, tk, rows, nodes, trie, chunk_size=37)
    va.backward(); vb.backward()
    torch.testing.assert_close(va, vb, rtol=1e-6, atol=0); torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-9)
    assert math.isfinite(float(va)) and float(va) > 0
    torch.testing.assert_close(trie_kl(logits, tk, rows, nodes, trie, temperature=2.0), 4 * trie_kl(logits / 2, tk, rows, nodes, trie))

from test_xtok_chunk import ds, pair   # the GPT-2 student / tok512 teacher pair and its tiny dataset (fixtures)

def test_distill_trie_live_equals_cached(pair, ds, tmp_path):
    """Three steps of the default cross-tokenizer objective ('trie'): finite KD terms > 0, the student moves, and the
    run from the teacher cache (field 'teacher_topk', one row per teacher token) and with no teacher model give the
    live run's losses."""
    from kd_toolkit.core import make_config
    from kd_toolkit.train import distill
    s_tok, t_tok = pair
    teacher = tiny_llama(vocab_size=len(t_tok), hidden_size=32, num_layers=1, seed=1)
    student = tiny_llama(vocab_size=len(s_tok), hidden_size=32, num_layers=1)
    s0 = copy.deepcopy(student)
    kw = dict(max_steps=3, warmup_steps=0, cross_tokenizer=True, kd_topk=8, eval_steps=0)
    cfg = make_config('smoke', output_dir=str(tmp_path/'live'), **kw)
    assert cfg.cross_vocab_loss == 'trie'   # the default across tokenizers
    live = distill(cfg, teacher, student, ds, None, s_tok, t_tok).history
    assert set(live['kd_path']) == {'topk+trie'} and len(live) == 3
    assert all(math.isfinite(x) and x > 0 for x in live['raw/kd']) and (live['weight/kd'] > 0).all()
    assert any(not torch.equal(a, b) for a, b in zip(s0.parameters(), student.parameters()))
    cfg = make_config('smoke', output_dir=str(tmp_path/'cached'), teacher_cache=str(tmp_path/'cache'), **kw)
    cached = distill(cfg, teacher, copy.deepcopy(s0), ds, None, s_tok, t_tok).history
    assert set(cached['kd_path']) == {'cached+trie'} and sorted((tmp_path/'cache').glob('teacher_topk.*.npy'))
    torch.testing.assert_close(torch.tensor(cached['raw/kd'].values), torch.tensor(live['raw/kd'].values), rtol=1e-5, atol=1e-7)
    cfg = make_config('smoke', output_dir=str(tmp_path/'alone'), teacher_cache=str(tmp_path/'cache'), **kw)
    alone = distill(cfg, None, copy.deepcopy(s0), ds, None, s_tok, t_tok).history
    torch.testing.assert_close(torch.tensor(alone['raw/kd'].values), torch.tensor(live['raw/kd'].values), rtol=1e-5, atol=1e-7)
