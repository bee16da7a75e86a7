# tabby: the two commands are `make demo` and `make test`; both set up the machine first.
PY := .venv/bin/python
PYTEST := $(PY) -m pytest

.PHONY: bootstrap demo demo-k8s test test-unit test-netns bench lint crds clean

bootstrap:
	@scripts/bootstrap

demo: bootstrap
	@$(PY) -m tabby.demo

demo-k8s: bootstrap
	@$(PY) -m tabby.demo_k8s

test: bootstrap
	$(PYTEST) -q tests/unit tests/golden
	$(PYTEST) -q tests/netns

test-unit: bootstrap
	$(PYTEST) -q tests/unit tests/golden

test-netns: bootstrap
	$(PYTEST) -q tests/netns

bench: bootstrap
	$(PY) -m bench

# tabby's CustomResourceDefinitions, generated from the model (tests/unit/test_crds.py checks).
crds: bootstrap
	$(PY) -m tabby.kube.crds > manifests/crds.yaml

lint: bootstrap
	.venv/bin/ruff check src tests bench
	.venv/bin/mypy

clean:
	rm -rf .venv build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
