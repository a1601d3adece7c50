"The KD data pipeline on real tokenizer pairs: chunks cover the same text for both tokenizers, alignment checked on bytes."
import warnings, pytest, torch, datasets
from types import SimpleNamespace
from kd_toolkit.testing import load_tokenizer, read_text, require_asset
from kd_toolkit.align import token_bytes, coverage, _kind
from kd_toolkit.data import load_texts, build_kd_dataset, KDCollator, special_tokens, pack_stream, packed_windows, RandomWindows

PAIRS = [('gpt2', 'llama2-spm'), ('gpt2', 'smollm2'), ('smollm2', 'tok512'), ('llama2-spm', 'tok512')]
BOTH = PAIRS + [(t, s) for s, t in PAIRS]
HARD = ["  two  spaces\tTab\r\nCRLF café 😀 naïve", "emoji 👩‍👩‍👧 and flags 🇫🇷!\r\n\r\nÜnïcödé àccents — “quotes” …",
        "tabs\t\t\tand\r\n\r\nlines 日本語のテキスト", " leading", "trailing   "]

def _prefix_bytes(spm, tb, ids, n, text, start): # bytes of the first n tokens (specials skipped), SPM dummy prefix removed
    out = b''.join(tb[i] for i in ids[:n] if tb[i] is not None)
    if start == 0 and spm and not text.startswith(' ') and out.startswith(b' '): out = out[1:]
    return out

@pytest.mark.slow
@pytest.mark.parametrize('student,teacher', BOTH)
def test_chunks_cover_the_same_text_and_align_on_bytes(student, teacher):
    st, tt = load_tokenizer(student), load_tokenizer(teacher)
    docs = read_text('shakespeare', 40_000).split('\n\n') + HARD
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        ds = build_kd_dataset(docs, st, tt, max_length=48)
    sb, _ = token_bytes(st); tb, _ = token_bytes(tt)
    sspm, tspm = _kind(st) == 'spm', _kind(tt) == 'spm'
    covered = sum(e - a for a, e in zip(ds['start'], ds['end'])) / sum(len(d) for d in docs)
    pairs = 0
    for r in ds:
        text, a, e = docs[r['doc']], r['start'], r['end']
        assert len(r['input_ids']) <= 48
        assert _prefix_bytes(sspm, sb, r['input_ids'], len(r['input_ids']), text, a) == text[a:e].encode()
        assert _prefix_bytes(tspm, tb, r['teacher_input_ids'], len(r['teacher_input_ids']), text, a) == text[a:e].encode()
        for i, (j, m) in enumerate(zip(r['align_idx'], r['align_mask'])):
            if not m: continue
            ps = _prefix_bytes(sspm, sb, r['input_ids'], i + 1, text, a)
            pt = _prefix_bytes(tspm, tb, r['teacher_input_ids'], j + 1, text, a)
            assert ps == pt, (student, teacher, text[a:e], i, j, ps, pt)
            pairs += 1
    b = KDCollator(st.eos_token_id if st.eos_token_id is not None else 0, tt.eos_token_id or 0)([ds[i] for i in range(len(ds))])
    cov = coverage(b['align_mask'], b['attention_mask'])
    print(f"\nstudent {student:>10}, teacher {teacher:<10}: {len(ds)} chunks, text covered {covered:.4f}, "
          f"aligned pairs {pairs} checked on bytes, coverage {cov:.4f}")
    assert covered > 0.999 and pairs > 0

def _toks():
    require_asset('tokenizers/gpt2'); require_asset('tokenizers/llama2-spm')
    return load_tokenizer('gpt2'), load_tokenizer('llama2-spm')

def test_bad_inputs_raise_clear_errors():
    gpt2, llama = _toks()
    with pytest.raises(ValueError, match='use_fast=True'): build_kd_dataset(["hi"], SimpleNamespace(is_fast=False))
    with pytest.raises(ValueError, match='use_fast=True'): build_kd_dataset(["hi"], gpt2, SimpleNamespace(is_fast=False))
    with pytest.raises(ValueError, match='empty'): build_kd_dataset([], gpt2, llama)
    with pytest.raises(ValueError, match='no chunk'): build_kd_dataset(["", ""], gpt2, llama)
    with pytest.raises(ValueError, match='at least'): build_kd_dataset(["hello"], gpt2, llama, max_length=1)
    with pytest.raises(ValueError, match='teacher_max_length'): build_kd_dataset(["hi"], gpt2, llama, teacher_max_length=1)
    with pytest.raises(TypeError, match='one split'): load_texts(datasets.DatasetDict(train=datasets.Dataset.from_dict({'text': ['a']})))
    with pytest.raises(TypeError, match='strings'): load_texts(["a", 3])
    with pytest.raises(ValueError, match='eos_token_id'): KDCollator(gpt2.pad_token_id)

def test_short_texts_are_skipped_with_a_count():
    gpt2, llama = _toks()
    with pytest.warns(UserWarning, match='skipped 2 of 3 texts'):
        ds = build_kd_dataset(["", " ", "Hello there"], gpt2, llama, max_length=16, add_eos=False)
    assert list(ds['doc']) == [2]

def test_same_tokenizer_has_no_teacher_columns_and_identity():
    gpt2, _ = _toks()
    ds = build_kd_dataset(datasets.Dataset.from_dict({'body': HARD}), gpt2, gpt2, text_column='body', max_length=12)
    assert 'teacher_input_ids' not in ds.column_names
    b = KDCollator(gpt2.eos_token_id)([ds[i] for i in range(len(ds))])
    assert set(b) == {'input_ids', 'attention_mask', 'labels', 'n_bytes'}
    assert (b['labels'][b['attention_mask'] == 0] == -100).all()
    assert b['input_ids'].shape[1] <= 12

def test_bos_eos_conventions_and_n_bytes():
    gpt2, llama = _toks()
    assert special_tokens(gpt2) == ([], [gpt2.eos_token_id]) and special_tokens(gpt2, add_eos=False) == ([], [])
    assert special_tokens(llama) == ([llama.bos_token_id], [llama.eos_token_id])
    text = "Hello world, café."
    r = build_kd_dataset([text], gpt2, llama)[0]
    assert r['input_ids'][-1] == gpt2.eos_token_id and r['teacher_input_ids'][0] == llama.bos_token_id
    assert r['teacher_input_ids'][-1] == llama.eos_token_id
    assert r['align_mask'][-1] and r['align_idx'][-1] == len(r['teacher_input_ids']) - 1  # EOS aligns with EOS
    assert r['n_bytes'] == len(text[5:].encode())  # GPT-2 has no BOS: the first token 'Hello' is never predicted

@pytest.mark.slow
@pytest.mark.parametrize('student,teacher', BOTH)
def test_packed_windows_cover_the_same_text_and_align_on_bytes(student, teacher):
    "Packed streams of real pairs: consecutive and random windows start and end at common boundaries; every aligned pair spells the same bytes."
    st, tt = load_tokenizer(student), load_tokenizer(teacher)
    docs = read_text('shakespeare', 20_000).split('\n\n') + HARD
    stream = pack_stream(docs, st, tt)
    sb, _ = token_bytes(st); tb, _ = token_bytes(tt)
    spell = lambda bts, ids: b''.join(bts[i] or b'' for i in ids).replace(b' ', b'')  # SPM dummy-prefix spaces: compare without spaces
    windows = list(packed_windows(stream, 48, teacher_length=64))
    windows += list(RandomWindows(stream, 48, 8, seed=2, teacher_length=64, steps=4))
    pairs = 0
    for r in windows:
        assert len(r['input_ids']) <= 48 and len(r['teacher_input_ids']) <= 64
        assert spell(sb, r['input_ids']) == spell(tb, r['teacher_input_ids'])
        for i, (j, m) in enumerate(zip(r['align_idx'], r['align_mask'])):
            if m: assert spell(sb, r['input_ids'][:i+1]) == spell(tb, r['teacher_input_ids'][:j+1]); pairs += 1
    tiled = sum(len(r['input_ids']) for r in packed_windows(stream, 48, teacher_length=64))
    print(f"\nstudent {student:>10}, teacher {teacher:<10}: {len(stream)} tokens packed, windows tile {tiled / len(stream):.4f}, "
          f"{pairs} aligned pairs checked, {len(stream.bounds)} common boundaries")
    assert tiled / len(stream) > 0.99 and pairs > 1000
