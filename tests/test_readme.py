"""The README's usage block runs as written, from the repository root (its text file is examples/train.txt), with only its
model names swapped for local ones (no hub at test time); on a CPU its 'auto' preset is cpu_demo."""
import os, re, shutil
from pathlib import Path
from kd_toolkit.testing import require_asset, tiny_llama, load_tokenizer, STORIES260K

ROOT = Path(__file__).resolve().parents[1]
README = ROOT/'README.md'

def _usage_block() -> str:
    text = README.read_text(encoding='utf-8')
    section = text.split('## From another notebook', 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)

def test_readme_usage_block_runs(tmp_path, capsys, monkeypatch):
    teacher = require_asset(STORIES260K)
    student = tmp_path/'student'
    tiny_llama(vocab_size=512, hidden_size=32, num_layers=1).save_pretrained(student)
    load_tokenizer('tok512').save_pretrained(student)
    code = _usage_block()
    line = 'TEACHER, STUDENT = "HuggingFaceTB/SmolLM2-360M", "HuggingFaceTB/SmolLM2-135M"'
    assert line in code, "the README's usage block changed: update this test's substitution"
    code = code.replace(line, f'TEACHER, STUDENT = {str(teacher)!r}, {str(student)!r}')   # the only change
    assert len(code.strip().splitlines()) <= 14
    run = tmp_path/'repo'; (run/'examples').mkdir(parents=True)   # the repository root as the README assumes it
    shutil.copy(ROOT/'examples'/'train.txt', run/'examples'/'train.txt')
    monkeypatch.chdir(run)
    exec(compile(code, 'README.md', 'exec'), {})                  # TEXTS and OUT come from the block itself
    out = capsys.readouterr().out
    for k in ('student_ppl', 'student_bpb', 'kl', 'top1_agree'): assert k in out
    from transformers import AutoTokenizer   # the student folder is hub-ready: model, tokenizer, model card
    sd = run/'kd_out'/'student'
    assert AutoTokenizer.from_pretrained(sd)('Once upon a time')['input_ids'] == load_tokenizer('tok512')('Once upon a time')['input_ids']
    assert (sd/'config.json').exists() and '## Results' in (sd/'README.md').read_text()
    assert 'precision | fp32' in (sd/'README.md').read_text()   # 'auto' on a CPU: cpu_demo
