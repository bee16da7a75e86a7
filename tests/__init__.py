"""tabby's tests; shared suites here get pytest's assertion rewriting."""

import pytest

pytest.register_assert_rewrite("tests.store_contract")
