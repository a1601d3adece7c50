"""The dependency floors settings.ini states are the ones `make floors` installs and tests (a throwaway venv with exactly
those versions: the trainer's notebook, the trainer, the Qwen pair and the CLI tests). Measured: transformers 5.1.0
lacks `trainer_utils.rotate_checkpoints` (train.py imports it); 5.2.0 passes."""
import configparser, re, subprocess, sys
from pathlib import Path
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]

def _floors_in_settings() -> dict:
    c = configparser.ConfigParser(); c.read(ROOT/'settings.ini')
    out = {}
    for r in map(Requirement, c['DEFAULT']['requirements'].split()):
        lows = [s.version for s in r.specifier if s.operator == '>=']
        if lows: out[r.name] = Version(lows[0])
    return out

def _floors_in_makefile() -> dict:
    line = next(l for l in (ROOT/'Makefile').read_text().splitlines() if l.startswith('FLOORS ?='))
    return {m[1]: Version(m[2]) for m in re.finditer(r"'?([A-Za-z0-9_.-]+)==([\w.]+)'?", line)}

def test_every_stated_floor_is_the_one_make_floors_tests():
    stated, tested = _floors_in_settings(), _floors_in_makefile()
    assert {'transformers', 'fastcore'} <= set(stated), stated
    assert stated == tested, f"settings.ini floors {stated} != `make floors` pins {tested}: change both together"

def test_the_transformers_floor_has_what_train_imports():
    "The installed transformers (at or above the floor) has every name train.py takes from it."
    import transformers.trainer_utils as tu
    assert Version(__import__('transformers').__version__) >= _floors_in_settings()['transformers']
    assert hasattr(tu, 'rotate_checkpoints') and hasattr(tu, 'get_last_checkpoint')

@pytest.mark.slow
def test_make_floors(tmp_path):
    "The floors in a throwaway venv pass the tests that use them (about 15 minutes on 2 cores)."
    r = subprocess.run(['make', '-s', 'floors', f'FLOORS_VENV={tmp_path/"venv"}'], cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    for name, v in _floors_in_settings().items():
        assert re.search(rf'^{name}\s+{re.escape(str(v))}', r.stdout, re.M | re.I), (name, v, r.stdout[-2000:])
