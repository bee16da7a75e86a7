"""The agent's BIRD reconciler: bird.conf follows the DesiredState, BIRD follows bird.conf.

Each pass renders the node's ``BirdConfig`` (``DesiredState.bird``, computed by
``tabby.calc.bird``) as bird.conf text (``tabby.bgp.config.render``) and, when
the text changed since the last one BIRD accepted (or on a full pass, when
BIRD does not run that text), hands it to ``Bird.apply``: parse check, swap,
``configure`` (or start). Most passes change nothing BIRD sees (a pod in an
existing block is not in bird.conf), so most passes cost one render.

BIRD is started when the first config is applied and restarted by the
``Bird`` supervisor whenever it dies; stopping the agent leaves it running.
``health_notes`` tells /healthz when BIRD is down or refused the last config.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tabby.bgp.config import render
from tabby.bgp.daemon import Bird
from tabby.calc.bird import BirdConfig

log = logging.getLogger(__name__)

DEFAULT_DIR = "/run/tabby/bird"


class BirdController:
    name = "bird"

    def __init__(self, node: str, bird: Bird) -> None:
        self.node = node
        self.bird = bird
        self.applied: str | None = None  # the text BIRD runs, once it accepted one
        self.problems: list[str] = []  # of the last pass
        self.reloads = 0
        bird.supervise()

    @classmethod
    def in_directory(cls, node: str, directory: Path | str) -> BirdController:
        return cls(node, Bird(directory))

    def apply(self, config: BirdConfig, *, full: bool) -> list[str]:
        """Make BIRD run ``config``; the problems met (BIRD refused it, could not start)."""
        text = render(config)
        if text == self.applied and (not full or self._runs(text)):
            return []
        self.problems = problems = self.bird.apply(text)
        if problems:
            self.applied = None
            return problems
        self.applied = text
        self.reloads += 1
        log.info("BIRD runs the new bird.conf (%d peers in %s)", text.count("protocol bgp "),
                 self.bird.conf)
        return []

    def _runs(self, text: str) -> bool:
        try:
            on_disk = self.bird.conf.read_text()
        except OSError:
            return False
        return on_disk == text and self.bird.running()

    def health_notes(self) -> tuple[str, ...]:
        """For /healthz: BIRD down (the supervisor restarts it) or a config it refused."""
        if self.applied is not None and not self.bird.running():
            return ("bird: BIRD is not running (being restarted)",)
        return tuple(f"bird: {p}" for p in self.problems)

    def close(self) -> None:
        self.bird.close()
