"""The audit label space: every task the model predicts and the names of its classes.

One place defines it; the data generator, the model heads, the metrics and (later) the
gateway all read it from here. The order of the names is the order of the logits.
"""

TASKS: dict[str, tuple[str, ...]] = {
    # approve or reject: reject exactly when there is a violation.
    "verdict": ("approve", "reject"),
    # why an ad is rejected ("none" when it is approved).
    "violation": (
        "none",
        "exaggeration",  # 极限词 / 虚假宣传: absolute or exaggerated claims
        "medical_claim",  # medical efficacy claims
        "financial_promise",  # promises of financial return
        "gambling",
        "vulgar",
        "prohibited_goods",
        "image_text_mismatch",  # the copy sells one thing, the picture shows another
    ),
    # the industry of the product the copy advertises.
    "industry": (
        "food_beverage",
        "pets",
        "vehicles",
        "toys",
        "education",
        "home",
        "finance",
        "electronics",
        "travel",
        "flowers",
    ),
    "background_colour": ("white", "red", "yellow", "blue", "green", "black"),
    # overlay degree of stickers and badges pasted over the ad (牛皮癣).
    "clutter": ("none", "light", "heavy"),
    "logo": ("absent", "present"),
}

TASK_NAMES: tuple[str, ...] = tuple(TASKS)


def label_index(task: str, name: str) -> int:
    """Index of class `name` in task `task`; ValueError naming the valid classes otherwise."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks are {', '.join(TASK_NAMES)}")
    try:
        return TASKS[task].index(name)
    except ValueError:
        raise ValueError(
            f"unknown label {name!r} for task {task!r}; expected one of {', '.join(TASKS[task])}"
        ) from None
