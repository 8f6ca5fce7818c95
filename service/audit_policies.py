"""The gateway's audit policies: every policy of the policy folder, by name, reloadable while serving.

Loaded at start from `policy_dir` (default: the shipped default.yaml and strict.yaml); a request
names one (`policy`) or gets `default_policy`. `reload()` reads the whole folder again and swaps the
set in one assignment only once every file, term list and the default check out: a broken policy
never replaces the running ones, and audits in flight keep the set they started with. How reloads are
triggered: `POST /v1/policies/reload` (routes_policies.py), an explicit operator action, rather than
watching files, so a half-copied folder is never picked up.

The classes a policy names belong to a model's taxonomy (models/labels.py), which the gateway learns
from the backend, not at start: the folder is loaded on its shape alone, each audit checks its policy
against the answering model's taxonomy (`fitting`: a policy naming a class the model lacks is a 422
`policy_mismatch` naming it). Start and reload treat the folder alike: every policy is checked for its shape,
the default (what a request naming none gets) must fit the primary model once its taxonomy is known, and the
others that do not fit it are logged.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from adaudit.decisions.policy import SHIPPED, LoadedPolicy, PolicyError, load_policies
from adaudit.models.labels import Taxonomy

from .errors import unprocessable

log = logging.getLogger("adaudit.service")


class AuditPolicies:
    def __init__(self, folder: Path | None, default: str):
        self.folder = Path(folder) if folder is not None else SHIPPED
        self.default = default
        self.taxonomy: Taxonomy | None = None  # the primary model's, once the gateway has read it (reload checks)
        self.loaded: dict[str, LoadedPolicy] = self.load()  # PolicyError at start: the gateway does not start
        self._reloading = asyncio.Lock()

    def load(self) -> dict[str, LoadedPolicy]:
        """The folder's policies on their shape alone, as at start: one that names a class the primary model lacks
        is logged (`mismatches`) and refused per request (`fitting`), since another served model may have it;
        only the default, which every request naming none gets, must fit the primary once its taxonomy is known."""
        loaded = load_policies(self.folder, None)
        if self.default not in loaded:
            raise PolicyError(f"default_policy {self.default!r} is not among the policies in {self.folder} "
                              f"({', '.join(sorted(loaded))})")
        if self.taxonomy is not None:
            loaded[self.default].check(self.taxonomy)
        return loaded

    async def reload(self) -> dict[str, LoadedPolicy]:
        """The folder read again (in a worker thread) and swapped in; PolicyError leaves the running set. The
        policies that do not fit the primary model are logged, as at start."""
        async with self._reloading:
            self.loaded = await asyncio.to_thread(self.load)
            if self.taxonomy is not None:
                for problem in self.mismatches(self.taxonomy):
                    log.warning("audit policy does not fit the primary model's labels: %s", problem)
            return self.loaded

    def get(self, name: str | None) -> LoadedPolicy:
        """The policy a request named (None: the default); 422 `unknown_policy` naming the known ones."""
        loaded = self.loaded
        policy = loaded.get(name or self.default)
        if policy is None:
            raise unprocessable("unknown_policy", f"no audit policy named {name!r}; the policies are "
                                f"{', '.join(sorted(loaded))} (GET /v1/policies)")
        return policy

    @staticmethod
    def fitting(policy: LoadedPolicy, taxonomy: Taxonomy) -> LoadedPolicy:
        """`policy` if it names only classes of `taxonomy` (the answering model's); else 422 `policy_mismatch`
        naming the file, the key and the class."""
        try:
            policy.check(taxonomy)
        except PolicyError as error:
            raise unprocessable("policy_mismatch", f"audit policy {policy.name!r} does not fit the model's "
                                f"labels: {error}") from None
        return policy

    def mismatches(self, taxonomy: Taxonomy) -> list[str]:
        """One line per loaded policy that does not fit `taxonomy` (logged when the primary is first read)."""
        problems = []
        for policy in self.loaded.values():
            try:
                policy.check(taxonomy)
            except PolicyError as error:
                problems.append(str(error))
        return problems
