"Packaging: the installed library needs no dev tool (nbdev, execnb) at run time, only its declared requirements (fastcore for `@patch`)."
import subprocess, sys, pkgutil, textwrap
from pathlib import Path
import kd_toolkit

ROOT = Path(__file__).resolve().parents[1]

def test_modules_import_without_dev_tools():
    "Every kd_toolkit module imports with nbdev and execnb made unimportable."
    mods = [m.name for m in pkgutil.iter_modules(kd_toolkit.__path__) if not m.name.startswith('_')]
    assert 'core' in mods and 'testing' in mods
    code = textwrap.dedent(f"""
        import sys, importlib
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('nbdev', 'execnb'): raise ImportError('blocked: ' + name)
        sys.meta_path.insert(0, Block())
        for m in {mods!r}: importlib.import_module('kd_toolkit.' + m)
        print('ok')""")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip().endswith('ok'), r.stderr[-2000:]

def test_version_matches_settings():
    ini = (ROOT/'settings.ini').read_text()
    assert f"version = {kd_toolkit.__version__}" in ini

def test_runtime_requirements_cover_fastcore():
    "Exported code may use fastcore.basics.patch, so fastcore is a runtime requirement, not only a dev one."
    ini = (ROOT/'settings.ini').read_text()
    req = next(l for l in ini.splitlines() if l.startswith('requirements ='))
    assert 'fastcore' in req, req
