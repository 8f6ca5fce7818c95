"""The picture on the wire to Triton: float32 pixel_values (before) against uint8 image_bytes (now).

One real Triton serves the same student twice: as `adaudit export` writes it now (uint8, the
instance normalises), and as it was written before (float32 `pixel_values`, the gateway normalises;
that model.py is taken from git history, commit FLOAT32_COMMIT). The gateway's own steps are
timed per call for one ad: preprocessing (resize, tokenise, and for float32 normalise) and the
asyncio gRPC call through `service.triton_grpc.GrpcTransport`, in alternating blocks of 100
calls with a pause between blocks. Both answer with the same logits (checked).

    python -m benchmarks.wire_format --student runs/shape/student --data runs/bench/data --out benchmarks/results

Writes OUT/wire_format.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FLOAT32_COMMIT = "a3454f1"  # the last commit whose export sent the picture as float32 pixel_values
BLOCK = 100


def float32_twin(repository: Path, name: str) -> str:
    """A copy of model `name` in `repository` that takes float32 pixel_values, with the model.py of that time."""
    from adaudit.export.repository import CHECKSUMS_FILE, file_checksums

    twin = f"{name}_float32"
    source, target = repository / name, repository / twin
    subprocess.run(["cp", "-r", str(source), str(target)], check=True)
    old = subprocess.run(["git", "show", f"{FLOAT32_COMMIT}:export/triton_model.py"], check=True, capture_output=True,
                         text=True, cwd=Path(__file__).resolve().parents[1]).stdout
    (target / "1" / "model.py").write_text(old)
    config = (target / "config.pbtxt").read_text().replace(f'name: "{name}"', f'name: "{twin}"', 1)
    (target / "config.pbtxt").write_text(config.replace('name: "image_bytes" data_type: TYPE_UINT8',
                                                        'name: "pixel_values" data_type: TYPE_FP32'))
    (target / "1" / CHECKSUMS_FILE).write_text(json.dumps(file_checksums(target / "1"), indent=2) + "\n")
    return twin


async def measure(url: str, student: Path, data: Path, rounds: int) -> dict:
    from tritonclient.grpc import InferInput

    from adaudit.data.dataset import load_image, read_split
    from adaudit.models.modeling import AuditModel
    from adaudit.models.preprocessing import SERVED_INPUTS, AuditProcessor
    from adaudit.service.triton_grpc import GrpcTransport

    model = AuditModel.from_pretrained(student)
    processor = AuditProcessor(model.config, model.tokenizer)
    records = read_split(data, "test")[:64]
    images = [load_image(record.image_path, processor.image_size) for record in records]
    backend = GrpcTransport(url)

    async def infer(name: str, arrays: dict, kinds: dict) -> dict:
        request = []
        for input_name, array in arrays.items():
            item = InferInput(input_name, list(array.shape), kinds[input_name])
            item.set_data_from_numpy(np.ascontiguousarray(array))
            request.append(item)
        result = await (await backend.client()).infer(name, request, model_version="1")
        return {output.name: result.as_numpy(output.name) for output in result.get_response().outputs}

    async def uint8(i: int) -> dict:
        ids, mask = processor.texts([records[i].text])
        arrays = {"image_bytes": processor.image_bytes([images[i]]).numpy(), "input_ids": ids.numpy(),
                  "attention_mask": mask.numpy()}
        return await infer("student", arrays, SERVED_INPUTS)

    async def float32(i: int) -> dict:
        ids, mask = processor.texts([records[i].text])
        arrays = {"pixel_values": processor.normalise(processor.image_bytes([images[i]])).numpy(),
                  "input_ids": ids.numpy(), "attention_mask": mask.numpy()}
        return await infer("student_float32", arrays, {"pixel_values": "FP32", **SERVED_INPUTS})

    calls = {"uint8 image_bytes (now)": uint8, "float32 pixel_values (before)": float32}
    first = [await call(0) for call in calls.values()]
    same = all(np.allclose(first[0][task], first[1][task], atol=1e-5) for task in first[0])
    blocks: dict[str, list[float]] = {label: [] for label in calls}
    for _ in range(rounds):
        for label, call in calls.items():
            await asyncio.sleep(0.2)
            timings = []
            for i in range(BLOCK):
                started = time.perf_counter()
                await call(i % len(records))
                timings.append((time.perf_counter() - started) * 1000)
            blocks[label].append(statistics.median(timings))
    await backend.close()
    payload = {"uint8 image_bytes (now)": 3 * model.config.image_size ** 2,
               "float32 pixel_values (before)": 4 * 3 * model.config.image_size ** 2}
    return {"same_logits": same, "rounds": rounds, "calls_per_block": BLOCK,
            "p50_ms": {label: statistics.median(values) for label, values in blocks.items()},
            "block_p50s_ms": blocks, "picture_bytes": payload}


def report(result: dict) -> str:
    lines = ["# The picture on the wire to Triton", "", f"`{result['command']}`", "",
             f"{result['machine']['cpu']}, {result['machine']['cores']} cores. One Triton serves the student as "
             "exported now and as exported before; per call for one ad, the gateway's preprocessing and its asyncio "
             f"gRPC call, p50 of {result['calls_per_block']} calls per block, median over {result['rounds']} "
             f"alternating blocks. Same logits from both: {result['same_logits']}.", "",
             "| picture sent as | bytes per ad | p50 ms (median of blocks) | each block's p50 |", "| --- | --- | --- | --- |"]
    for label, p50 in result["p50_ms"].items():
        blocks = ", ".join(f"{value:.2f}" for value in result["block_p50s_ms"][label])
        lines.append(f"| {label} | {result['picture_bytes'][label]:,} | {p50:.3f} | {blocks} |")
    saved = result["p50_ms"]["float32 pixel_values (before)"] - result["p50_ms"]["uint8 image_bytes (now)"]
    lines += ["", f"uint8 saves {saved:.3f} ms per ad at the median.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    from adaudit.export.repository import ServingSettings, export_model
    from adaudit.export.server import TritonServer
    from adaudit.core.files import write_results
    from adaudit.training.measure import machine
    from benchmarks.serving import free_ports

    with tempfile.TemporaryDirectory(prefix="adaudit-wire-") as work:
        repository = Path(work) / "repo"
        export_model(args.student, repository, "student", 1, ServingSettings(threads=1))
        float32_twin(repository, "student")
        with TritonServer(repository, *free_ports(3), log_file=Path(work) / "tritonserver.log", ready_timeout=120) as server:
            result = asyncio.run(measure(server.url, args.student, args.data, args.rounds))
    result = {"command": " ".join(["python", "-m", "benchmarks.wire_format", *sys.argv[1:]]), "machine": machine(), **result}
    write_results(args.out, "wire_format", result, report(result))
    print(report(result))
    return 0 if result["same_logits"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
