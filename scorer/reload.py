"""Hot model reload: a running worker switches to a new checkpoint in its model folder without restarting.

Every ``model_reload_s`` seconds the reloader takes a :func:`folder_state` of ``EXITREC_SCORER_CHECKPOINT``
(name, size and modification time of every file under it). When it differs from the state last seen, it loads
the folder in a worker thread (the event loop keeps scoring with the old model), scores a probe prompt with it,
and only if both succeed hands the new :class:`~scorer.scoring.Scorer` to the impression loop: the next
micro-batch is scored with it and its outputs carry the new ``model_version`` (a batch in flight finishes on the
model it started with). A folder that fails to load or to score (missing or corrupt files, a half-written
folder) is refused with a logged reason and the old model keeps serving; the reloader tries again when the folder
changes again (a copy that completes later is picked up then).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import structlog

from schemas.messages import ImpressionRequest
from scorer.prompt import NeighbourEvidence, PromptInputs
from scorer.scoring import RequestContext, Scorer

log = structlog.get_logger("scorer")
PROBE = PromptInputs("a probe item", (("an earlier item", 1),), NeighbourEvidence(1, 1), (1, 2), (3, 5), 0.1)


def folder_state(folder: Path) -> str:
    """A digest of the relative path, size and mtime of every file under ``folder`` ('' when it is missing)."""
    folder = Path(folder)
    if not folder.is_dir():
        return ""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        h.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()


def probe(scorer: Scorer) -> None:
    """Score one fixed prompt end to end; raise unless the ctr is a finite probability."""
    request = ImpressionRequest(request_id="model-probe", user_id="probe", item_ids=["probe"], ts=946_684_800_000)
    ctr = scorer.infer([RequestContext(request, 0.0, inputs=[PROBE])]).ctr
    if not (np.isfinite(ctr).all() and ((ctr >= 0) & (ctr <= 1)).all()):
        raise ValueError(f"the probe prompt scored {ctr.tolist()}: not a probability")


class ModelReloader:
    """Watches the model folder and swaps the scorer of ``target`` (anything with a ``scorer`` attribute)."""

    def __init__(self, folder: Path, load: Callable[[], Scorer], target, on_swap: Callable[[Scorer], None]
                 = lambda _: None, on_refuse: Callable[[Exception], None] = lambda _: None) -> None:
        self.folder, self.load, self.target, self.on_swap, self.on_refuse = Path(folder), load, target, on_swap, \
            on_refuse
        self.seen = folder_state(self.folder)
        self.reloads = self.refusals = 0

    async def check(self) -> bool:
        """One look at the folder; True when a new model was swapped in."""
        state = folder_state(self.folder)
        if state == self.seen:
            return False
        self.seen = state
        old = self.target.scorer.model_version
        try:
            scorer = await asyncio.to_thread(self._load_and_probe)
        except Exception as exc:
            self.refusals += 1
            log.error("model_reload_refused", folder=str(self.folder), serving=old, reason=repr(exc)[:500])
            self.on_refuse(exc)
            return False
        self.target.scorer = scorer
        self.reloads += 1
        self.on_swap(scorer)
        log.info("model_reloaded", folder=str(self.folder), previous=old, model_version=scorer.model_version)
        return True

    def _load_and_probe(self) -> Scorer:
        scorer = self.load()
        probe(scorer)
        return scorer

    async def run(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.check()
