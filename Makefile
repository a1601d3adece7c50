# Two commands for a fresh machine (see README): `make demo` and `make test`.
VENV ?= .venv
BIN = $(VENV)/bin
# torch is unpinned in settings.ini (Kaggle/Colab bring their own); on this kind of machine
# a pinned local CPU build avoids a multi-GB CUDA download. Override: make TORCH=torch test
TORCH ?= torch==2.13.0
export OMP_NUM_THREADS ?= 1

.PHONY: install sync test test-slow demo bench clean wheel floors browser-test

install: $(VENV)/.installed
$(VENV)/.installed: settings.ini setup.py
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

# notebooks and library must agree: cleaning or exporting must not change any tracked file
sync: install
	$(BIN)/nbdev_clean
	@git diff --quiet -- nbs || { git status --porcelain -- nbs; echo "SYNC ERROR: notebooks are not clean. Run 'nbdev_clean' and commit."; exit 1; }
	$(BIN)/nbdev_export
	@test -z "$$(git status --porcelain -- kd_toolkit)" || { git status --porcelain -- kd_toolkit; echo "SYNC ERROR: kd_toolkit/ differs from the notebooks. Run 'nbdev_export' and commit (never hand-edit kd_toolkit/*.py)."; exit 1; }

# the README's test command
test: install
	$(BIN)/nbdev_test --n_workers 2 --timing
	$(BIN)/pytest -q tests || [ $$? -eq 5 ]

# real-asset and long cells/tests too
test-slow: install
	$(BIN)/nbdev_test --n_workers 2 --flags slow
	$(BIN)/pytest -q -m slow tests || [ $$? -eq 5 ]

# kd_toolkit as a wheel, for a Kaggle notebook (upload $(DIST)/ as a dataset, attach it: README), with every pure-Python
# requirement (settings.ini) that a stock torch + transformers image lacks, so the notebook installs offline.
# WHEEL_ASSUMED: what such an image is assumed to ship (torch, transformers and its own dependencies such as tqdm) or
# what is binary and in every notebook image (pandas, matplotlib; datasets needs the binary pyarrow). Kaggle's package
# list is not available to check against: that is the assumption. tests/test_newcomer.py checks that every requirement
# is in one list or the other. `make wheel WHEEL_EXTRAS=` builds kd_toolkit's wheel alone.
DIST ?= dist
WHEEL_EXTRAS ?= accelerate gguf 'fastcore>=1.12.3,<2' ipywidgets widgetsnbextension jupyterlab_widgets comm
WHEEL_ASSUMED = torch transformers tqdm datasets pandas matplotlib
wheel: install
	rm -rf $(DIST) && mkdir -p $(DIST)
	$(BIN)/python -m pip wheel --no-deps --no-build-isolation -q -w $(DIST) .
	$(if $(strip $(WHEEL_EXTRAS)),$(BIN)/python -m pip download --no-deps -q -d $(DIST) $(WHEEL_EXTRAS))
	@ls $(DIST)

# the lowest versions settings.ini claims, in a throwaway venv, then the tests that exercise them (checkpoints, resume,
# cross-tokenizer KD, the CLI). Raise a floor in settings.ini only together with FLOORS here.
FLOORS ?= transformers==5.2.0 'fastcore==1.12.3'
FLOORS_VENV ?= build/floors-venv
floors:
	rm -rf $(FLOORS_VENV) && python3 -m venv $(FLOORS_VENV)
	$(FLOORS_VENV)/bin/python -m pip install -q --upgrade pip
	$(FLOORS_VENV)/bin/python -m pip install -q "$(TORCH)"
	$(FLOORS_VENV)/bin/python -m pip install -q ".[dev]" $(FLOORS)
	$(FLOORS_VENV)/bin/python -m pip list 2>/dev/null | grep -iE '^(torch|transformers|fastcore|datasets|accelerate|tokenizers|huggingface.hub) '
	$(FLOORS_VENV)/bin/nbdev_test --path nbs/07_train.ipynb
	$(FLOORS_VENV)/bin/pytest -q tests/test_train.py tests/test_qwen_pair.py tests/test_cli.py

# the widgets and live chart in a real JupyterLab, driven in headless Chromium (issue 19; ~1-2 min once installed).
# Installs Debian's chromium + chromium-driver when missing (root: apt-get) and the [browser] extra (jupyterlab, selenium).
browser-test: install
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { \
	  echo "installing Debian's chromium and chromium-driver (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null || { \
	    echo "could not install Chromium: run as root: apt-get update && apt-get install -y chromium chromium-driver"; exit 2; }; }
	$(BIN)/python -m pip install -q -e ".[browser]"
	$(BIN)/python bench/browser_check.py $(BROWSER_ARGS)

demo: install
	$(BIN)/kd_toolkit demo --overwrite

clean:
	rm -rf $(VENV) build dist *.egg-info _proc
