# Two commands set everything up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PY310 ?= $(shell PYENV_VERSION=3.10.13 pyenv which python3.10 2>/dev/null || command -v python3.10)
VENV ?= .venv
BIN := $(VENV)/bin
SHARED ?= ../shared
MNV2_WEIGHTS := $(SHARED)/weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5
# The demo uses real ImageNet weights: Keras' own download when online, the
# copy in ../shared/weights on the air-gapped development machines.
DEMO_WEIGHTS ?= $(if $(wildcard $(MNV2_WEIGHTS)),$(abspath $(MNV2_WEIGHTS)),imagenet)
PYTEST_ARGS ?=

.PHONY: venv demo test test-slow test-all offline-weights constraints clean image base-image FORCE

$(VENV)/.installed: setup.py constraints.txt
	@test -n "$(PY310)" || { echo "Python 3.10 is required (TFX 1.16): install it or set PY310=/path/to/python3.10"; exit 1; }
	test -x $(BIN)/python || $(PY310) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/tfx-transfer run --config examples/demo.yaml --weights $(DEMO_WEIGHTS)

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# pytest exits 5 when no test is selected; that is not a failure here. The
# podman run of the compiled pipeline is opt-in (.ci/run with CI_PODMAN=1):
# it needs `make image` first, about a quarter of an hour on vfs storage.
test-slow: venv
	$(BIN)/python -m pytest -m "slow and not podman" $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-all: venv
	$(BIN)/python -m pytest -m "" $(PYTEST_ARGS)

# Re-resolve every pin (needs uv: pip install uv).
constraints:
	uv pip compile --python-version 3.10 requirements.in -o /tmp/resolved.txt
	{ sed -n '1,/^$$/p' constraints.txt; grep -E '^[A-Za-z0-9].*==' /tmp/resolved.txt; } > constraints.new && mv constraints.new constraints.txt

# Air-gapped machines: put the ImageNet weight files where tf_keras looks.
offline-weights:
	mkdir -p $(HOME)/.keras/models && cp -n $(SHARED)/weights/*.h5 $(HOME)/.keras/models/

# The container image (Dockerfile), with podman or docker, whichever exists.
# By default on a base made here (base-image) and a wheelhouse downloaded on
# the host, since no registry image can be pulled on the development machines;
# `make image BASE_IMAGE=tensorflow/tfx:1.16.0` builds the production image.
IMAGE ?= tfx-transfer:dev
LOCAL_BASE := localhost/tfx-transfer-base:py3.10
BASE_IMAGE ?= $(LOCAL_BASE)
ENGINE ?= k8s/image/engine.sh

base-image:
	k8s/image/base-image.sh $(LOCAL_BASE)

build/wheelhouse/.done: setup.py constraints.txt $(VENV)/.installed
	PY=$(BIN)/python k8s/image/wheelhouse.sh build/wheelhouse
	touch $@

# WEIGHTS=DIR bakes DIR's ImageNet weight files into the image (air-gapped
# clusters): `make image WEIGHTS=../shared/weights`.
WEIGHTS ?=
WEIGHTS_ARG = $(if $(WEIGHTS),--build-arg WEIGHTS=build/weights)

build/weights: FORCE
	rm -rf $@ && mkdir -p $@ $(if $(WEIGHTS),&& cp $(WEIGHTS)/*.h5 $@/)

# The Dockerfile's Beam stage, locally: a tiny image of k8s/image/beam-stub/.
# Not the base itself: podman 4.3 (buildah) deletes a stage's image after a
# --layers=false build, and a stage that is only FROM BASE is the base image.
BEAM_STUB := localhost/tfx-transfer-beam-stub:none

ifeq ($(BASE_IMAGE),$(LOCAL_BASE))
image: build/wheelhouse/.done build/weights
	$(ENGINE) image inspect $(LOCAL_BASE) >/dev/null 2>&1 || $(MAKE) base-image
	tar -C k8s/image/beam-stub -cf - . | $(ENGINE) import - $(BEAM_STUB) >/dev/null
	$(ENGINE) build $(if $(shell command -v podman),--layers=false) -t $(IMAGE) --build-arg BASE_IMAGE=$(LOCAL_BASE) \
	    --build-arg BEAM_IMAGE=$(BEAM_STUB) $(WEIGHTS_ARG) \
	    --build-arg PIP_ARGS="--no-index --find-links /context/build/wheelhouse" .
else
image: build/weights
	$(ENGINE) build -t $(IMAGE) --build-arg BASE_IMAGE=$(BASE_IMAGE) $(WEIGHTS_ARG) .
endif
	k8s/image/smoke.sh $(IMAGE) tfx-transfer --help >/dev/null
	@echo "$(IMAGE): $$($(ENGINE) image inspect --format '{{.Size}}' $(IMAGE) | awk '{printf "%.2f GB", $$1/1e9}')"

clean:
	rm -rf runs .pytest_cache
