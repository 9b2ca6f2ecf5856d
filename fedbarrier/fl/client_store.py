"""Each client's own persistent state (its model when layers stay personal, its SGD momentum).

State lives on the client's side, in a folder per client: under the simulation engine
``RUN_DIR/clients/client-K/``. It is versioned by round (``round-NNNN.pt``): a client training in
round r reads the newest state of a round before r. That makes resuming exact: after a crash in
round r + 1, the resumed round r + 1 reads the state of round r, whatever the crashed attempt
wrote. Keeping state on disk rather than in Flower's ``Context.state`` also means it is not
shipped to a Ray worker with every message, and idle clients' personal layers are not held in
memory (1,000 clients with personal layers fit on one machine).
"""

from __future__ import annotations

from pathlib import Path

import torch

from fedbarrier.errors import RunAborted
from fedbarrier.fl.protocol import STORAGE_FAULT
from fedbarrier.runtime.rundir import client_folder, save_torch, state_file, state_rounds

KEEP = 2  # rounds of state kept per client: the newest and the one a resume may need


class StorageFault(Exception):
    """A client's state could not be written (a full disk): its message starts with the
    protocol's ``STORAGE_FAULT``; the ClientApp replies with it as an error message."""


class ClientStore:
    """Round-versioned state files of one client."""

    def __init__(self, root: str | Path, client: int) -> None:
        self.folder = client_folder(Path(root), client)

    def _rounds(self) -> list[int]:
        return state_rounds(self.folder)

    def load_before(self, server_round: int) -> dict[str, dict[str, torch.Tensor]] | None:
        """The newest saved state of a round < ``server_round`` (None if there is none)."""
        earlier = [r for r in self._rounds() if r < server_round]
        if not earlier:
            return None
        return torch.load(state_file(self.folder, earlier[-1]), weights_only=True)

    def load(self, server_round: int) -> dict[str, dict[str, torch.Tensor]] | None:
        """The state saved in exactly ``server_round`` (None if the client saved none then)."""
        path = state_file(self.folder, server_round)
        return torch.load(path, weights_only=True) if path.is_file() else None

    def save(self, server_round: int, state: dict[str, dict[str, torch.Tensor]]) -> None:
        """Write this round's state atomically and drop states older than the last ``KEEP``."""
        path = state_file(self.folder, server_round)
        try:
            save_torch(path, {name: {k: v.detach().cpu() for k, v in part.items()}
                              for name, part in state.items()})
        except RunAborted as exc:  # the server must stop the run, not leave this client out
            raise StorageFault(f"{STORAGE_FAULT}: {exc}") from exc
        for old in self._rounds()[:-KEEP]:
            state_file(self.folder, old).unlink(missing_ok=True)

