# tabby: the two commands are `make demo` and `make test`; both set up the machine first.
PY := .venv/bin/python
PYTEST := $(PY) -m pytest

.PHONY: bootstrap demo demo-k8s test test-unit test-netns faults bench lint crds fields manifests clean

bootstrap:
	@scripts/bootstrap

demo: bootstrap
	@$(PY) -m tabby.demo

demo-k8s: bootstrap
	@$(PY) -m tabby.demo_k8s

test: bootstrap
	$(PYTEST) -q tests/unit tests/golden tests/faults
	$(PYTEST) -q tests/netns

test-unit: bootstrap
	$(PYTEST) -q tests/unit tests/golden tests/faults

test-netns: bootstrap
	$(PYTEST) -q tests/netns

# The fault and bad-input suite in full (make test runs a slice of it): seeded, prints
# tried/held/lost per test. TABBY_FAULTS_SEED=S replays a run.
faults: bootstrap
	TABBY_FAULTS_N=$${TABBY_FAULTS_N:-1000} $(PYTEST) -q -s tests/faults

bench: bootstrap
	$(PY) -m bench

# tabby's CustomResourceDefinitions, generated from the model (tests/unit/test_crds.py checks).
crds: bootstrap
	$(PY) -m tabby.kube.crds > manifests/crds.yaml

# The field reference of every kind, generated from the model (tests/unit/test_fields_reference.py checks).
fields: bootstrap
	$(PY) -m tabby.model.reference > docs/fields.md

# tabby's install for a cluster, `tabby manifests` with its defaults (tests/unit/test_manifests.py checks).
manifests: bootstrap
	$(PY) -m tabby.cli.main manifests > manifests/tabby.yaml

lint: bootstrap
	.venv/bin/ruff check src tests bench
	.venv/bin/mypy

clean:
	rm -rf .venv build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
