# The two commands of the README: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
# Reinstall when requirements.txt or the packaging changes.
STAMP := $(VENV)/.installed-$(shell cat requirements.txt setup.py setup.cfg | sha256sum | cut -c1-12)
OUT ?= out

.PHONY: demo test venv clean

venv: $(STAMP)

# The package itself goes in editable (PEP 660, no build isolation: setuptools comes from
# requirements.txt), so that `encdec`, `anomaly_detector`, `denoiser` and `control_allocator`
# land in $(VENV)/bin; setup.cfg's script_dir (lib/encdec_ros, for `ros2 run` after
# `colcon build`) does not apply to this install.
$(STAMP): requirements.txt setup.py setup.cfg
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing requirements into $(VENV) (first run: about a minute)"
	@$(PIP) -r requirements.txt 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
	@$(PY) -c "import torch, rclpy, onnxruntime, rosbags, numpy, yaml" \
		|| (echo "the install into $(VENV) is incomplete; see the pip output above" && exit 1)
	@$(PIP) --no-deps --no-build-isolation -e . \
		&& test -x $(VENV)/bin/encdec && test -x $(VENV)/bin/anomaly_detector \
		|| (echo "installing encdec_ros into $(VENV) failed; see the pip output above" && exit 1)
	@rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP)
	$(VENV)/bin/encdec demo --out $(OUT)/demo

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(OUT) build install log .pytest_cache
