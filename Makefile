# The two commands of the README: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Reinstall when requirements.txt changes.
STAMP := $(VENV)/.installed-$(shell sha256sum requirements.txt | cut -c1-12)
OUT ?= out

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing requirements into $(VENV) (first run: about a minute)"
	@$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt 2>&1 \
		| grep -v "is ignored: it is neither a file nor a directory" || true
	@$(PY) -c "import torch, rclpy, onnxruntime, rosbags, numpy, yaml" \
		|| (echo "the install into $(VENV) is incomplete; see the pip output above" && exit 1)
	@rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP)
	$(PY) -m encdec_ros demo --out $(OUT)/demo

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(OUT) build install log .pytest_cache
