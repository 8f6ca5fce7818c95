"""Recombined ads whose labels are known: one training ad's copy over another training ad's picture.

A teacher catches `image_text_mismatch` only if it compares the picture with the copy, and the
training split holds few such ads (7.5%): a teacher whose towers already read each modality well
(the pretrained preset) learns every other class and never this one. Pairing the copy of one
ad with the picture of another makes as many mismatches, and as many matching pairs, as wanted,
and their labels follow from the data's own rules (data/generator.py):

- the copy gives `industry` and any text violation; the picture gives `background_colour`,
  `clutter` and `logo`; `verdict` is reject exactly when there is a violation;
- clean copy selling one industry over a picture of another is an `image_text_mismatch`.

Only ads whose labels say unambiguously what they hold take part: those labelled `none` or a
violation that lives only in the copy. A gambling ad may carry its violation in the picture or
in the copy, and a mismatch ad's picture shows an industry its labels do not name, so neither is
used. A copy with a text violation only goes over a picture of its own industry (two violations
at once have no single label). Unlike the distillation views (compression/augmentation.py),
whose labels come from the teacher, these rows train the teacher itself on labels.

The taxonomy names the classes (models/labels.py): its reason task's `mismatch_class` labels a
mismatch, its clean class a clean copy. A taxonomy without a mismatch class, or without an
`industry` task to tell one picture's product from another's, has no such rows to make: none are.
"""

from __future__ import annotations

import torch

from adaudit.models.labels import DEFAULT_TAXONOMY, Taxonomy

from .encoding import EncodedSplit
from .generator import TEXT_VIOLATIONS

COPY_ONLY_VIOLATIONS = tuple(v for v in TEXT_VIOLATIONS if v != "gambling")  # never drawn in the picture
PICTURE_TASKS = ("background_colour", "clutter", "logo")  # what the picture, not the copy, decides


def makes_pairs(taxonomy: Taxonomy) -> bool:
    """Whether recombined pairs can be labelled under `taxonomy`: it names a mismatch class and an industry."""
    return taxonomy.mismatch_class is not None and "industry" in taxonomy.tasks


def recombined_pairs(split: EncodedSplit, count: int, mismatch_share: float = 0.5, seed: int = 0,
                     taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> EncodedSplit:
    """`count` rows of one ad's copy over another ad's picture, labelled; about `mismatch_share` of them
    image-text mismatches (clean copy over another industry's picture), the rest copy over a picture of
    its own industry (labels of the copy, attributes of the picture). None under a taxonomy that cannot
    label them (`makes_pairs`)."""
    if not 0.0 <= mismatch_share <= 1.0:
        raise ValueError(f"mismatch_share must be within 0..1, got {mismatch_share}")
    if count <= 0 or not makes_pairs(taxonomy):
        return split.subset(torch.zeros(0, dtype=torch.long))
    column = {task: i for i, task in enumerate(split.tasks)}
    verdict_task, reason_task = taxonomy.verdict_task, taxonomy.reason_task
    missing = [task for task in (verdict_task, reason_task, "industry") if task not in column]
    if missing:
        raise ValueError(f"recombined pairs need the tasks {', '.join(missing)}")
    reasons = taxonomy.tasks[reason_task]
    violation = split.labels[:, column[reason_task]]
    industry = split.labels[:, column["industry"]]
    clean = violation == reasons.index(taxonomy.clean_class)
    copy_only = [reasons.index(v) for v in COPY_ONLY_VIOLATIONS if v in reasons]
    usable = clean | torch.isin(violation, torch.tensor(copy_only, dtype=violation.dtype))
    pictures = {int(k): torch.nonzero(usable & (industry == k)).flatten() for k in industry[usable].unique()}
    if not pictures:
        return split.subset(torch.zeros(0, dtype=torch.long))

    generator = torch.Generator().manual_seed(seed)
    pick = lambda pool: int(pool[torch.randint(len(pool), (1,), generator=generator)])  # noqa: E731
    clean_copies = torch.nonzero(clean).flatten()
    all_copies = torch.nonzero(usable).flatten()
    text_source, image_source, mismatched = [], [], []
    for _ in range(count):
        if len(clean_copies) and len(pictures) > 1 and float(torch.rand(1, generator=generator)) < mismatch_share:
            copy = pick(clean_copies)
            others = [k for k in pictures if k != int(industry[copy])]
            picture = pick(pictures[others[int(torch.randint(len(others), (1,), generator=generator))]])
            mismatched.append(True)
        else:
            copy = pick(all_copies)
            same = pictures[int(industry[copy])]
            alternatives = same[same != copy]
            picture = pick(alternatives if len(alternatives) else same)
            mismatched.append(False)
        text_source.append(copy)
        image_source.append(picture)

    text_source, image_source = torch.tensor(text_source), torch.tensor(image_source)
    mismatched = torch.tensor(mismatched)
    labels = split.labels[text_source].clone()
    for task in PICTURE_TASKS:
        if task in column:
            labels[:, column[task]] = split.labels[image_source, column[task]]
    labels[mismatched, column[reason_task]] = reasons.index(taxonomy.mismatch_class)
    labels[mismatched, column[verdict_task]] = taxonomy.tasks[verdict_task].index(taxonomy.reject_class)
    return EncodedSplit([f"{split.ids[t]}~{split.ids[i]}" for t, i in zip(text_source.tolist(), image_source.tolist())],
                        split.image_bytes[image_source], split.input_ids[text_source],
                        split.attention_mask[text_source], labels, split.tasks)
