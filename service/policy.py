"""The traffic policy: which model answers an ad (primary or canary) and whether it is mirrored.

Canary / A-B: `canary_fraction` of the ads are answered by `canary_model` (the teacher, or a new
student version). With an `ad_id` the choice is sticky: the ad's bucket is
sha256(canary model, canary version, ad_id) mapped to [0, 1), canary when below the fraction,
so the same ad always gets the same arm in every replica, raising the fraction only moves ads
into the canary, and a new canary reshuffles. Without an ad id the choice is random per request.

Shadow: `shadow_fraction` of the answered ads are mirrored to `shadow_model`, chosen at random.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

PRIMARY, CANARY = "primary", "canary"


@dataclass(frozen=True)
class Target:
    arm: str
    model: str
    version: str | None


class TrafficPolicy:
    def __init__(self, settings, rng: random.Random | None = None):
        self.primary = Target(PRIMARY, settings.primary_model, settings.primary_version)
        self.canary_fraction, self.shadow_fraction = settings.canary_fraction, settings.shadow_fraction
        self.canary = (Target(CANARY, settings.canary_model, settings.canary_version)
                       if settings.canary_model and self.canary_fraction > 0 else None)
        self.shadow = (Target("shadow", settings.shadow_model, settings.shadow_version)
                       if settings.shadow_model and self.shadow_fraction > 0 else None)
        self.rng = rng or random.Random()

    def bucket(self, ad_id: str) -> float:
        salt = f"{self.canary.model}\x00{self.canary.version or ''}\x00{ad_id}".encode()
        return int.from_bytes(hashlib.sha256(salt).digest()[:8], "big") / 2**64

    def target(self, ad_id: str | None) -> Target:
        if self.canary is None:
            return self.primary
        draw = self.bucket(ad_id) if ad_id else self.rng.random()
        return self.canary if draw < self.canary_fraction else self.primary

    def mirror(self) -> bool:
        return self.shadow is not None and self.rng.random() < self.shadow_fraction
