"""``tabby delete -f`` takes a file's objects last to first, so a file written in apply
order (a Tier before its policies, a Namespace before what lives in it) deletes cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest

from tabby.cli.main import main

TIERED = """\
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: security.block-db}
spec:
  tier: security
  selector: app == 'db'
  ingress: [{action: Deny}]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: security.web, namespace: shop}
spec:
  tier: security
  selector: app == 'web'
  ingress: [{action: Allow}]
"""


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite://{tmp_path}/tabby.db"
    monkeypatch.setenv("TABBY_DATASTORE", url)
    monkeypatch.setenv("TABBY_LAB", "no-such-lab-for-cli-tests")
    return url


def test_a_tier_listed_before_its_policies_deletes_last(
        store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tiered.yaml"
    path.write_text(TIERED)
    assert main(["apply", "-f", str(path)]) == 0
    capsys.readouterr()
    code = main(["delete", "-f", str(path)])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert out.splitlines() == ["networkpolicy.tabby.dev/security.web deleted",
                                "globalnetworkpolicy.tabby.dev/security.block-db deleted",
                                "tier.tabby.dev/security deleted"]
    assert main(["get", "tier", "security"]) == 1  # gone
    assert "not found" in capsys.readouterr().err


def test_delete_reports_every_object_it_could_not_delete(
        store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Objects that are already gone are reported (in the order deleted), the rest go."""
    path = tmp_path / "tiered.yaml"
    path.write_text(TIERED)
    assert main(["apply", "-f", str(path)]) == 0
    assert main(["delete", "globalnetworkpolicy", "security.block-db"]) == 0
    capsys.readouterr()
    code = main(["delete", "-f", str(path)])
    out, err = capsys.readouterr()
    assert code == 1
    assert out.splitlines() == ["networkpolicy.tabby.dev/security.web deleted",
                                "tier.tabby.dev/security deleted"]
    assert "security.block-db not found" in err
