"""Where the false rejects on clean shifted ads come from: their pictures or their copy (issue 30).

A clean shifted ad differs from a clean test ad in two ways at once: its picture (canvas, title
placement and size, JPEG quality) and its copy (templates and phrasings no training ad uses). To tell
which one a model rejects, every clean shifted ad is paired with a clean test ad of the same industry
(seeded draw), and the model scores four combinations of the pair: shifted picture and shifted copy
(the shifted split itself), shifted picture with the test ad's copy, the test ad's picture with the
shifted copy, and the test ad itself. Same industry, both clean: every combination is a clean ad whose
picture shows what the copy sells, so each rejection is a false one. The rise from "test, test" to
"shifted picture, test copy" is what the new layouts cost; to "test picture, shifted copy" what the new
wording costs.

    python -m benchmarks.false_rejects --model teacher=runs/shifted/teacher-bare \
        --model student=runs/shifted/student-bare --data runs/shifted/data --out benchmarks/results

Writes OUT/<stem>.{json,md} (stem: false-rejects).
"""

from __future__ import annotations

import argparse
import random
import shlex
import sys
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import date
from pathlib import Path

from adaudit.core.files import write_results
from adaudit.data.dataset import DatasetError, read_split
from adaudit.data.encoding import encode_records
from adaudit.models.modeling import AuditModel, ModelFolderError
from adaudit.models.preprocessing import AuditProcessor
from adaudit.training.evaluation import predict_logits

from .shifted import named_models

COMBINATIONS = ("shifted picture, shifted copy", "shifted picture, test copy", "test picture, shifted copy",
                "test picture, test copy")


def clean_pairs(data: Path, seed: int) -> tuple[list, list]:
    """Clean shifted ads and, for each, a clean test ad of the same industry (drawn with `seed`)."""
    clean = lambda split: [r for r in read_split(data, split) if r.labels["violation"] == "none"]  # noqa: E731
    shifted, test = clean("test_shifted"), clean("test")
    by_industry = defaultdict(list)
    for record in test:
        by_industry[record.labels["industry"]].append(record)
    draw = random.Random(seed)
    pairs = [(record, draw.choice(by_industry[record.labels["industry"]])) for record in shifted
             if by_industry[record.labels["industry"]]]
    return [s for s, _ in pairs], [t for _, t in pairs]


def measure(name: str, folder: Path, shifted: list, test: list) -> dict:
    model = AuditModel.from_pretrained(folder).eval()
    processor = AuditProcessor.from_folder(model.config, folder)
    tasks = model.config.tasks
    with_shifted, with_test = (encode_records(records, processor, tasks) for records in (shifted, test))
    combined = {
        COMBINATIONS[0]: with_shifted,
        COMBINATIONS[1]: replace(with_shifted, input_ids=with_test.input_ids, attention_mask=with_test.attention_mask),
        COMBINATIONS[2]: replace(with_shifted, image_bytes=with_test.image_bytes),
        COMBINATIONS[3]: with_test,
    }
    reject, violations = tasks["verdict"].index("reject"), tasks["violation"]
    rows = {}
    for combination, split in combined.items():
        logits = predict_logits(model, split)
        rejected = logits["verdict"].argmax(-1) == reject
        named = Counter(violations[i] for i in logits["violation"].argmax(-1)[rejected].tolist())
        rows[combination] = {"false_reject_rate": rejected.float().mean().item(), "rejected": int(rejected.sum()),
                             "by_violation": dict(named.most_common())}
    return {"name": name, "model": str(folder), "preset": model.config.preset, "combinations": rows}


def markdown(summary: dict) -> str:
    lines = [f"# Clean shifted ads: false rejects from the picture or the copy ({summary['date']})", "",
             f"`{summary['command']}`", "",
             f"{summary['ads']} clean shifted ads of `{summary['data']}`, each paired with a clean test ad of the "
             f"same industry (seed {summary['seed']}); every combination below is a clean ad, so every rejection "
             "is a false one.", "",
             "| model | " + " | ".join(COMBINATIONS) + " |", "| --- |" + " --- |" * len(COMBINATIONS)]
    for row in summary["models"]:
        cells = [f"{100 * row['combinations'][c]['false_reject_rate']:.1f}%" for c in COMBINATIONS]
        lines.append(f"| {row['name']} ({row['preset']}) | " + " | ".join(cells) + " |")
    lines += ["", "The violations the model named for them:", ""]
    for row in summary["models"]:
        for combination in COMBINATIONS:
            named = row["combinations"][combination]["by_violation"]
            lines.append(f"- {row['name']}, {combination}: "
                         + (", ".join(f"{name} {count}" for name, count in named.items()) or "none"))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=FOLDER",
                        help="a teacher or student folder, named; repeat for more")
    parser.add_argument("--data", type=Path, required=True, help="a generator-2 data set (test and test_shifted)")
    parser.add_argument("--seed", type=int, default=0, help="the draw of test partners")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--stem", default="false-rejects", help="OUT/<stem>.json and .md")
    args = parser.parse_args(argv)
    try:
        shifted, test = clean_pairs(args.data, args.seed)
    except DatasetError as error:
        raise SystemExit(f"error: {error}") from None
    models = []
    for name, folder in named_models(args.model):
        try:
            models.append(measure(name, folder, shifted, test))
        except ModelFolderError as error:
            raise SystemExit(f"error: {error}") from None
    command = "python -m benchmarks.false_rejects " + shlex.join(argv if argv is not None else sys.argv[1:])
    summary = {"date": date.today().isoformat(), "command": command, "data": str(args.data), "seed": args.seed,
               "ads": len(shifted), "models": models}
    write_results(args.out, args.stem, summary, markdown(summary))
    print(markdown(summary))


if __name__ == "__main__":
    main()
