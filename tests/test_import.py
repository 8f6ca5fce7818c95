"""`adaudit data import`: a table of ads (CSV or Parquet) becomes a data set folder that reads back and
trains; advertisers stay on one side of the split; duplicates are kept out; bad input is one error line
and nothing written."""

import csv
import json
import shutil

import pyarrow
import pyarrow.parquet
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from adaudit.cli import app
from adaudit.data.dataset import SPLITS, read_split
from adaudit.data.importer import REPORT_NAME
from adaudit.models.labels import TASKS

N_ADS, N_ADVERTISERS = 30, 6
LABEL_COLUMNS = "verdict=审核结果,violation=reason,industry,background_colour,clutter,logo"


def _labels(k: int) -> dict[str, str]:
    violation = TASKS["violation"][k % len(TASKS["violation"])]
    return {"审核结果": "approve" if violation == "none" else "reject", "reason": violation,
            **{task: TASKS[task][k % len(TASKS[task])] for task in ("industry", "background_colour", "clutter", "logo")}}


def _draw(path, k: int) -> None:
    """A distinct small picture per ad; PNG or JPEG by the path's suffix."""
    image = Image.new("RGB", (48 + k % 5, 40), ((k * 37) % 256, (k * 91) % 256, (k * 53) % 256))
    ImageDraw.Draw(image).rectangle((k % 20, 5, k % 20 + 12, 30), fill=(255 - k * 8, 20, 200))
    image.save(path)


@pytest.fixture
def rows(tmp_path):
    """30 ads of 6 advertisers; pictures in photos/ beside the table, half PNG, half JPEG (one absolute path)."""
    (tmp_path / "photos").mkdir()
    table = []
    for k in range(N_ADS):
        picture = f"photos/ad{k}.{'png' if k % 2 else 'jpg'}"
        _draw(tmp_path / picture, k)
        table.append({"ad_id": f"A-{k:03d}", "advertiser": f"shop{k % N_ADVERTISERS}",
                      "picture": str(tmp_path / picture) if k == 3 else picture,
                      "copy": f"第{k}号好物上新，品质保障" + "，现货速发" * (k % 4) + f"，仅需{k + 9}元",
                      **_labels(k)})
    return table


def write_csv(path, table, bom=True):
    with path.open("w", encoding="utf-8-sig" if bom else "utf-8", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    return path


def write_parquet(path, table):
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(table), path)
    return path


def run_import(table_path, out, *extra):
    arguments = ["data", "import", "--table", table_path, "--image-column", "picture", "--text-column", "copy",
                 "--label-columns", LABEL_COLUMNS, "--id-column", "ad_id", "--out", out, *extra]
    return CliRunner().invoke(app, [str(argument) for argument in arguments])


def assert_refused(result, out, *fragments):
    """One `error:` line naming the problem, exit 1, and nothing written: no folder, no staging left beside it."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not out.exists()
    assert not [path for path in out.parent.iterdir() if path.name.startswith(f".{out.name}.")]


def read_back(out) -> dict:
    return {split: read_split(out, split) for split in SPLITS if (out / f"{split}.jsonl").is_file()}


def test_a_csv_table_imports_reads_back_and_keeps_advertisers_together(tmp_path, rows):
    out = tmp_path / "imported"
    result = run_import(write_csv(tmp_path / "ads.csv", rows), out, "--group-column", "advertiser")
    assert result.exit_code == 0, result.output
    splits = read_back(out)
    assert set(splits) == set(SPLITS)
    by_id = {row["ad_id"]: row for row in rows}
    seen = [record.id for records in splits.values() for record in records]
    assert sorted(seen) == sorted(by_id)  # every ad once
    side_of: dict[str, set] = {}
    for split, records in splits.items():
        for record in records:
            row = by_id[record.id]
            side_of.setdefault(row["advertiser"], set()).add(split)
            assert record.text == row["copy"]
            assert record.labels["verdict"] == row["审核结果"] and record.labels["violation"] == row["reason"]
            source = tmp_path / row["picture"]
            assert record.image_path.read_bytes() == source.read_bytes()  # copied byte for byte, format kept
            assert record.image_path.suffix == source.suffix
            assert record.image_path.parent == out / "images"
    assert all(len(sides) == 1 for sides in side_of.values()), side_of
    report = json.loads((out / REPORT_NAME).read_text(encoding="utf-8"))
    assert report["ads"] == {split: len(records) for split, records in splits.items()}
    assert sum(report["groups"].values()) == N_ADVERTISERS
    for task, by_split in report["class_counts"].items():
        assert sum(sum(counts.values()) for counts in by_split.values()) == N_ADS
        assert list(next(iter(by_split.values()))) == list(TASKS[task])
    lengths = [len(row["copy"]) for row in rows]
    assert (report["copy_length"]["min"], report["copy_length"]["max"]) == (min(lengths), max(lengths))
    assert report["dropped"] == {"bad_image": 0, "duplicate": 0}
    assert "imported 30 of 30 rows" in result.stdout and "审核结果" not in result.stderr


def test_the_group_split_is_deterministic_and_follows_the_seed(tmp_path, rows):
    table = write_csv(tmp_path / "ads.csv", rows)

    def sides(name, seed):
        assert run_import(table, tmp_path / name, "--group-column", "advertiser", "--seed", seed).exit_code == 0
        return {split: sorted(record.id for record in records) for split, records in read_back(tmp_path / name).items()}

    first = sides("a", 0)
    assert sides("b", 0) == first
    assert any(sides(f"seed{seed}", seed) != first for seed in (1, 2, 3))


def test_parquet_gives_the_same_folder_as_csv(tmp_path, rows):
    csv_out, parquet_out = tmp_path / "from-csv", tmp_path / "from-parquet"
    assert run_import(write_csv(tmp_path / "ads.csv", rows, bom=False), csv_out).exit_code == 0
    result = run_import(write_parquet(tmp_path / "ads.parquet", rows), parquet_out)
    assert result.exit_code == 0, result.output
    for split in SPLITS:
        assert (csv_out / f"{split}.jsonl").read_text() == (parquet_out / f"{split}.jsonl").read_text()


def test_duplicate_ads_are_named_and_kept_out(tmp_path, rows):
    shutil.copy(tmp_path / rows[4]["picture"], tmp_path / "photos" / "again.jpg")
    again = dict(rows[4], ad_id="A-900", advertiser="another-shop", picture="photos/again.jpg")
    other_copy = dict(rows[4], ad_id="A-901", copy=rows[4]["copy"] + "！")  # same picture, new copy: not a duplicate
    out = tmp_path / "imported"
    result = run_import(write_csv(tmp_path / "ads.csv", rows + [again, other_copy]), out)
    assert result.exit_code == 0, result.output
    ids = {record.id for records in read_back(out).values() for record in records}
    assert "A-900" not in ids and {"A-004", "A-901"} <= ids
    report = json.loads((out / REPORT_NAME).read_text(encoding="utf-8"))
    assert report["dropped"]["duplicate"] == 1
    [duplicate] = report["duplicates"]
    assert (duplicate["row"], duplicate["id"], duplicate["duplicate_of_row"]) == (31, "A-900", 5)
    assert "row 31 (id 'A-900'): duplicate of row 5 (id 'A-004')" in result.stdout


def test_bad_pictures_are_refused_or_skipped_and_reported(tmp_path, rows):
    (tmp_path / rows[6]["picture"]).write_bytes(b"not a picture at all")
    truncated = tmp_path / rows[9]["picture"]
    truncated.write_bytes(truncated.read_bytes()[:60])
    rows[12]["picture"] = "photos/nowhere.png"
    table = write_csv(tmp_path / "ads.csv", rows)
    assert_refused(run_import(table, tmp_path / "refused"), tmp_path / "refused",
                   "row 7 (id 'A-006')", "cannot be decoded", "3 bad picture(s)", "--skip-bad-images")

    out = tmp_path / "skipped"
    result = run_import(table, out, "--skip-bad-images")
    assert result.exit_code == 0, result.output
    ids = {record.id for records in read_back(out).values() for record in records}
    assert len(ids) == N_ADS - 3 and not ids & {"A-006", "A-009", "A-012"}
    report = json.loads((out / REPORT_NAME).read_text(encoding="utf-8"))
    assert [(entry["row"], entry["id"]) for entry in report["bad_images"]] == [(7, "A-006"), (10, "A-009"), (13, "A-012")]
    assert "not found" in report["bad_images"][2]["reason"]
    assert "row 13 (id 'A-012'): picture photos/nowhere.png not found" in result.stdout


def test_a_missing_column_is_named_with_the_tables_columns(tmp_path, rows):
    for row in rows:
        del row["reason"]
    out = tmp_path / "imported"
    assert_refused(run_import(write_csv(tmp_path / "ads.csv", rows), out), out,
                   "no column 'reason' (--label-columns violation=reason)", "its columns are ad_id, advertiser, picture")


@pytest.mark.parametrize("column, value, fragments", [
    ("reason", "spam", ("row 5 (id 'A-004')", "violation label 'spam' (column 'reason') is not in the taxonomy",
                        "expected one of none, exaggeration")),
    ("审核结果", "", ("row 5 (id 'A-004')", "no verdict label (column '审核结果' is empty)")),
    ("审核结果", "approve", ("row 5 (id 'A-004')", "verdict 'approve' contradicts violation 'gambling'")),
    ("copy", "\u200b\t\x07 ", ("row 5 (id 'A-004')", "the copy (column 'copy') is empty")),
    ("ad_id", "A-001", ("row 5 (id 'A-001')", "also the id of row 2")),
])
def test_a_bad_row_is_named(tmp_path, rows, column, value, fragments):
    assert rows[4]["reason"] == "gambling"
    rows[4][column] = value
    out = tmp_path / "imported"
    assert_refused(run_import(write_parquet(tmp_path / "ads.parquet", rows), out), out, *fragments)


@pytest.mark.parametrize("content, fragment", [
    (b"", "holds no rows"),
    ("ad_id,picture,copy\n".encode(), "holds no rows (columns: ad_id, picture, copy)"),
    ("ad_id,copy\n1,好\n".encode("gb18030") + "广告".encode("gb18030"), "not UTF-8 text"),
    (b"ad_id,picture\n1,a.png,extra\n", "row 1 has more cells than the header"),
])
def test_an_empty_or_unreadable_csv_is_refused(tmp_path, content, fragment):
    (tmp_path / "ads.csv").write_bytes(content)
    out = tmp_path / "imported"
    assert_refused(run_import(tmp_path / "ads.csv", out), out, fragment)


def test_an_unreadable_parquet_table_is_refused(tmp_path):
    (tmp_path / "ads.parquet").write_bytes(b"PAR1 this is not parquet")
    out = tmp_path / "imported"
    assert_refused(run_import(tmp_path / "ads.parquet", out), out, "not a readable Parquet file")


@pytest.mark.parametrize("label_columns, fragment", [
    ("verdict=审核结果,violation=reason", "no column for task(s) industry, background_colour, clutter, logo"),
    (LABEL_COLUMNS + ",colour=x", "'colour' is not a task"),
    (LABEL_COLUMNS + ",logo=x", "task 'logo' is given twice"),
])
def test_label_columns_must_map_every_task_once(tmp_path, rows, label_columns, fragment):
    out = tmp_path / "imported"
    result = CliRunner().invoke(app, ["data", "import", "--table", str(write_csv(tmp_path / "ads.csv", rows)),
                                      "--image-column", "picture", "--text-column", "copy",
                                      "--label-columns", label_columns, "--out", str(out)])
    assert_refused(result, out, fragment)


def test_groups_that_leave_no_training_ads_are_refused(tmp_path, rows):
    for row in rows:
        row["advertiser"] = "one-big-shop" if row["ad_id"] != "A-000" else "small-shop"
    out = tmp_path / "imported"
    assert_refused(run_import(write_csv(tmp_path / "ads.csv", rows), out, "--group-column", "advertiser"), out,
                   "leave no training ads")


def test_an_existing_folder_is_left_alone(tmp_path, rows):
    out = tmp_path / "imported"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_import(write_csv(tmp_path / "ads.csv", rows), out)
    assert result.exit_code == 1 and "already exists" in result.stderr
    assert [path.name for path in out.iterdir()] == ["keep.txt"]


def test_the_tiny_teacher_trains_on_an_imported_folder(tmp_path, rows):
    out = tmp_path / "imported"
    assert run_import(write_parquet(tmp_path / "ads.parquet", rows), out, "--group-column", "advertiser").exit_code == 0
    teacher = tmp_path / "teacher"
    result = CliRunner().invoke(app, ["teacher", "train", "--data", str(out), "--out", str(teacher),
                                      "--preset", "tiny", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((teacher / "metrics.json").read_text())
    assert metrics["train_samples"] == len(read_split(out, "train"))
    assert (teacher / "model.safetensors").is_file()


def test_ids_name_the_pictures_and_default_to_row_numbers(tmp_path, rows):
    rows[0]["ad_id"], rows[2]["ad_id"] = "shop/1", "SHOP_1"  # '/' becomes '_': both .jpg, the same name but for case
    out = tmp_path / "imported"
    assert run_import(write_csv(tmp_path / "ads.csv", rows), out).exit_code == 0
    names = {record.id: record.image_path.name for records in read_back(out).values() for record in records}
    assert names["shop/1"] == "shop_1.jpg" and names["SHOP_1"] == "SHOP_1-row3.jpg"
    assert len(set(names.values())) == N_ADS

    without_ids = CliRunner().invoke(app, ["data", "import", "--table", str(tmp_path / "ads.csv"), "--image-column",
                                           "picture", "--text-column", "copy", "--label-columns", LABEL_COLUMNS,
                                           "--out", str(tmp_path / "numbered")])
    assert without_ids.exit_code == 0, without_ids.output
    ids = sorted(record.id for records in read_back(tmp_path / "numbered").values() for record in records)
    assert ids == [f"row-{number:06d}" for number in range(1, N_ADS + 1)]
