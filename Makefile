# The two commands of the README. Both create .venv in this checkout (once; again when pyproject.toml changes).
#   make run    set up, then run the main job (pretraining) on the embedded default
#   make test   set up, then run the whole test suite offline
#   make test-fast   the same without the tests marked slow (services: Ray, MLflow, Flower; training runs)
PY := .venv/bin/python

.PHONY: run test test-fast setup clean
setup: .venv/.installed

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --compile -e '.[test]'
	touch $@

run: setup
	HF_HUB_OFFLINE=1 $(PY) platform/pretrain.py

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder

test-fast: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder -m "not slow"

clean:
	rm -rf .venv *.egg-info
