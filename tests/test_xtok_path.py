"""bench/pathmap.py's `path_topk` (moved out of `kd_toolkit.align` in issue 26): the hand-checked tables and one
position, then real tokenizer pairs: valid student-id targets, mass kept, the actual token's chained probability."""
import math, sys
from pathlib import Path
import pytest, torch
from kd_toolkit.testing import has_asset, load_tokenizer, require_asset, read_text
from kd_toolkit.align import VocabMap, gather_aligned, token_bytes
from kd_toolkit.data import pack_stream, packed_windows, KDCollator
from kd_toolkit.losses import topk_teacher, kd_loss_topk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]/'bench'))
pathmap = pytest.importorskip('pathmap', reason='bench/pathmap.py is not in this checkout')
PathMap, path_topk = pathmap.PathMap, pathmap.path_topk

def test_moved_out_of_the_library():
    import kd_toolkit.align as align
    for name in ('PathMap', 'path_topk'):
        with pytest.raises(ImportError, match='bench/pathmap.py'): getattr(align, name)

# ------------------------------------------------------------------ hand-made: the text ` once the`
def _pm(counts=True):
    tb = [None, b' on', b'ce', b'ly', b' the', b' o']
    sb = [None, b' on', b' once', b' only', b' the', b' o']
    return PathMap(tb, sb, [0, 1, 1, 3, 4, 5], counts=torch.tensor([0, 4, 3, 1, 9, 0]) if counts else None)

def test_tables():
    pm = _pm()
    assert pm.lookup[b' once'] == 2
    assert pm.ext[b' o'] == [(1, 0.5), (2, 0.375), (3, 0.125)]  # ' on' 4, ' once' 3, ' only' 1 (' o' never seen)
    assert (pm.longest(b' on the'), pm.longest(b' oncely'), pm.longest(b'x')) == (1, 2, None)

def test_give_and_ends_here():
    pm, out = _pm(), {}
    assert (pm._give(out, b' o', 1.0), out) == (0.0, {1: 0.5, 2: 0.375, 3: 0.125})  # spread by frequency
    assert (pm._ends_here(b' on the', 3), pm._ends_here(b' once', 3)) == (True, False)
    assert _pm(counts=False)._give({}, b'zz', 1.0) == 1.0  # no student token starts 'zz': left to the tail

def test_position_hand_checked():
    """The teacher reads ` on|ce| the`, the student ` once| the`. Top-k at the start: ` on` 0.5, ` the` 0.3, ` o` 0.2;
    after ` on`: `ce` 0.6, `ly` 0.2, ` the` 0.2; after ` once`: ` the` 0.9, `ly` 0.1."""
    t_ids, tk_ids = [0, 1, 2, 4], [[1, 4, 5], [2, 3, 4], [4, 3, 1]]
    tk_p, t_lp = [[0.5, 0.3, 0.2], [0.6, 0.2, 0.2], [0.9, 0.1, 0.0]], [math.log(0.5), math.log(0.6), math.log(0.9)]
    d = _pm(counts=False).position(2, 0, t_ids, 4, tk_ids, tk_p, t_lp)
    assert torch.allclose(torch.tensor([d[i] for i in (1, 2, 3, 4, 5)], dtype=torch.float64),
                          torch.tensor([0.1, 0.3, 0.1, 0.3, 0.2], dtype=torch.float64), atol=1e-9)
    assert abs(sum(d.values()) - 1.0) < 1e-9
    ds = _pm().position(2, 0, t_ids, 4, tk_ids, tk_p, t_lp)
    assert torch.allclose(torch.tensor([ds.get(i, 0.) for i in (1, 2, 3, 4, 5)], dtype=torch.float64),
                          torch.tensor([0.2, 0.375, 0.125, 0.3, 0.], dtype=torch.float64), atol=1e-9)
    assert _pm(counts=False).position(2, 0, t_ids, 2, tk_ids, tk_p, t_lp) is None  # the text ends inside ` once`

def test_rows_topk():
    tk = pathmap._rows_topk({1: {3: 0.5, 7: 0.25}}, 2, 3, 10)
    assert tk.ids[1].tolist() == [3, 7, 9]  # the free slot holds an id not listed, with mass 0
    assert torch.allclose(tk.logprobs[1, :2].exp(), torch.tensor([0.5, 0.25]))
    assert torch.allclose(tk.tail[1].exp(), torch.tensor(0.25))

def test_real_pair_longest():
    for t in ('gpt2', 'llama2-spm'): require_asset(f'tokenizers/{t}')
    gpt2, llama = load_tokenizer('gpt2'), load_tokenizer('llama2-spm')
    assert PathMap.from_tokenizers(llama, gpt2).longest(b' Citizens') == gpt2.convert_tokens_to_ids('ĠCitizens')

# ------------------------------------------------------------------ real tokenizer pairs

def _batch(student, teacher, n=4, length=48):
    for t in (student, teacher): require_asset(f'tokenizers/{t}')
    st, tt = load_tokenizer(student), load_tokenizer(teacher)
    stream = pack_stream(read_text('shakespeare', 4000).split('\n\n'), st, tt)
    b = KDCollator(0, 0)(list(packed_windows(stream, length))[:n])
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(*b['teacher_input_ids'].shape, len(tt), generator=g) * 4
    tlp = logits.log_softmax(-1)[:, :-1].gather(-1, b['teacher_input_ids'][:, 1:, None])[..., 0]
    tlp = torch.cat([tlp, torch.zeros(len(tlp), 1)], 1)
    return st, tt, b, logits, tlp

@pytest.mark.parametrize('student,teacher', [('gpt2', 'llama2-spm'), ('llama2-spm', 'gpt2')])
def test_path_targets_are_valid_distributions(student, teacher):
    st, tt, b, logits, tlp = _batch(student, teacher)
    am = b['align_mask'] & b['attention_mask'].bool()
    counts = torch.bincount(b['input_ids'].flatten(), minlength=len(st))
    for pm in (PathMap.from_tokenizers(tt, st), PathMap.from_tokenizers(tt, st, counts)):
        tk, m = path_topk(pm, b['input_ids'], b['teacher_input_ids'], b['align_idx'], am, topk_teacher(logits, 16), tlp,
                          b['attention_mask'], b['teacher_attention_mask'], k=16)
        assert m.sum() > 0.8 * am.sum() and not (m & ~am.flatten()).any()
        total = tk.logprobs[m].exp().sum(-1) + tk.tail[m].exp()
        assert torch.allclose(total, torch.ones_like(total), atol=1e-4)  # listed mass + tail = 1
        assert all(len(set(r)) == len(r) for r in tk.ids[m].tolist())  # distinct ids (fillers carry mass 0)
        assert int(tk.ids.max()) < len(st)
        x = torch.randn(len(tk.ids), len(st), requires_grad=True)
        loss = kd_loss_topk(x, tk, m)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all()

def test_actual_token_gets_its_chained_teacher_probability():
    "Where the teacher spells the student's next token in whole pieces, its target is the product of their probabilities times the share of next pieces that do not extend it."
    st, tt, b, logits, tlp = _batch('gpt2', 'llama2-spm', n=2)
    am = b['align_mask'] & b['attention_mask'].bool()
    K = 512  # a top-k wide enough that the checked pieces are in it
    full = topk_teacher(logits, K)
    pm = PathMap.from_tokenizers(tt, st)
    tk, m = path_topk(pm, b['input_ids'], b['teacher_input_ids'], b['align_idx'], am, full, tlp,
                      b['attention_mask'], b['teacher_attention_mask'], k=K)
    sb, tb = token_bytes(st)[0], token_bytes(tt)[0]
    probs = logits.softmax(-1)
    checked = equal = 0
    Ls = b['input_ids'].shape[1]
    for bi in range(2):
        pos = torch.nonzero(am[bi]).flatten().tolist()
        for i, i2 in zip(pos, pos[1:]):
            if i2 != i + 1: continue  # the next student token ends at the next common boundary
            j, j2 = int(b['align_idx'][bi, i]), int(b['align_idx'][bi, i2])
            s_next = int(b['input_ids'][bi, i + 1])
            if sb[s_next] is None: continue  # a document end: no bytes to spell
            chained = math.prod(float(probs[bi, p, b['teacher_input_ids'][bi, p + 1]]) for p in range(j, j2))
            stay = sum(float(probs[bi, j2, c]) for c in range(len(tt))
                       if tb[c] is None or pm._ends_here(sb[s_next] + tb[c], len(sb[s_next])))
            got = float((tk.logprobs[bi * Ls + i].exp() * (tk.ids[bi * Ls + i] == s_next)).sum())
            # alternatives on the path that spell s* again (other teacher splits of the same bytes) add to it
            assert got >= chained * stay * (1 - 1e-3) - 1e-6
            checked += 1; equal += abs(got - chained * stay) <= 1e-3 * max(got, 1e-6) + 1e-7
    assert checked > 20 and equal > 0.5 * checked  # mostly nothing else spells s*: exactly the chained probability


def test_path_target_beats_the_mapped_one_on_a_real_teacher():
    """stories260K (tok512) teaching a GPT-2-tokenizer student on TinyStories text: the path target gives the
    student's actual next token a far higher probability than the mapped top-k does, and keeps its mass."""
    require_asset('tokenizers/gpt2'); require_asset('models/stories260K')
    from kd_toolkit.testing import load_stories260k
    from kd_toolkit.losses import next_token_targets
    from kd_toolkit.xvocab import token_logprobs
    gpt2, t512, model = load_tokenizer('gpt2'), load_tokenizer('tok512'), load_stories260k()
    st = pack_stream([read_text('tinystories', 6000)], gpt2, t512, add_eos=False)
    b = KDCollator(0, 0)(list(packed_windows(st, 64))[:8])
    with torch.no_grad(): tl = model(b['teacher_input_ids'], attention_mask=b['teacher_attention_mask']).logits
    tlp = token_logprobs(tl, next_token_targets(b['teacher_input_ids'].masked_fill(b['teacher_attention_mask'] == 0, -100)))
    am = b['align_mask'] & b['attention_mask'].bool()
    ptk, pmask = path_topk(PathMap.from_tokenizers(t512, gpt2), b['input_ids'], b['teacher_input_ids'], b['align_idx'], am,
                           topk_teacher(tl, k=32), tlp, b['attention_mask'], b['teacher_attention_mask'])
    mtk = VocabMap.from_tokenizers(t512, gpt2).map_topk(gather_aligned(topk_teacher(tl, k=32), b['align_idx']))
    nxt = next_token_targets(b['labels']).flatten()
    rows = torch.nonzero(pmask).flatten()
    p_actual = lambda t: torch.stack([(t.logprobs[r].exp() * (t.ids[r] == nxt[r])).sum() for r in rows])
    path, mapped = (float(-p_actual(t).clamp_min(1e-6).log().mean()) for t in (ptk, mtk))
    total = ptk.logprobs[pmask].exp().sum(-1) + ptk.tail[pmask].exp()
    assert torch.allclose(total, torch.ones_like(total), atol=1e-4)
    assert path < mapped - 1 and float(pmask.sum() / am.sum()) > 0.9, (path, mapped)
