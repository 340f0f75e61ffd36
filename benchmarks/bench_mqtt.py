"""What `--mqtt` costs the pipeline: frames per second without MQTT, with it, and with the broker stopped and
restarted in the middle of the run (the issue's target: within 10% of the run without MQTT).

    python benchmarks/bench_mqtt.py [--seconds 8] [--rounds 3] [--period 1.0]

The pipeline classifies an unpaced test:// camera (frames as fast as it can render them) with the hand-built
linear arrow model of the tests (tests/mqtt_helpers.py), overlay drawn, so the pipeline itself is the bottleneck and
any time MQTT takes from it shows. The scene's arrow flips every `period` seconds of scene time (frame / 30), so at
a couple of hundred fps there are several label changes a second: each one an event (QoS 1), a state and an
annotated JPEG encoded and published on the MQTT thread. Needs mosquitto (Debian: apt install mosquitto) and
paho-mqtt. Rounds are interleaved; the median round of each mode is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from mqtt_helpers import Broker, arrow_model  # noqa: E402 - after sys.path takes in tests/ for the helpers
from serve_helpers import free_port  # noqa: E402 - after sys.path takes in tests/ for the helpers

MODES = ("none", "mqtt", "mqtt+outage")


def run(model: Path, mode: str, broker: Broker, seconds: float, period: float) -> dict:
    from edge.runtime.backends import load_backend
    from edge.runtime.camera import Camera
    from edge.runtime.outputs.changes import LabelChanges
    from edge.runtime.outputs.mqtt import MqttOutput
    from edge.runtime.outputs.mqtt_topics import parse_mqtt_url
    from edge.runtime.pipeline import Pipeline

    backend = load_backend(str(model), "onnxruntime", "cpu")
    camera = Camera(f"test://?width=160&height=120&fps=30&period={period:g}", realtime=False)
    outputs = []
    if mode != "none":
        outputs.append(MqttOutput(parse_mqtt_url(f"mqtt://127.0.0.1:{broker.port}/bench"), changes=LabelChanges(),
                                  max_backoff=1))
    pipe = Pipeline(camera, backend, outputs=outputs, max_batch=1)
    pipe.start()
    try:
        time.sleep(2.0)  # warm-up: model, broker connection
        f0, t0 = pipe.stats["cameras"][0]["frames"], time.monotonic()
        if mode == "mqtt+outage":
            stopper = threading.Timer(seconds / 4, broker.stop)
            starter = threading.Timer(seconds / 2, broker.start)
            stopper.start()
            starter.start()
        time.sleep(seconds)
        f1, t1 = pipe.stats["cameras"][0]["frames"], time.monotonic()
        if mode == "mqtt+outage":
            starter.join()
            time.sleep(2.0)  # let the queued events go out before measuring what was sent
        out = outputs[0].stats() if outputs else {}
    finally:
        pipe.stop()
        backend.close()
    return {"mode": mode, "fps": (f1 - f0) / (t1 - t0), **out}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--period", type=float, default=1.0, help="seconds of scene time between arrow flips")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = arrow_model(work / "arrows.onnx")
        broker = Broker(work, free_port()).start()
        results: dict[str, list[dict]] = {m: [] for m in MODES}
        try:
            for r in range(args.rounds):
                for mode in MODES:
                    res = run(model, mode, broker, args.seconds, args.period)
                    results[mode].append(res)
                    print(f"round {r} {json.dumps(res)}", file=sys.stderr)
        finally:
            broker.stop()
    median = {m: sorted(rs, key=lambda x: x["fps"])[len(rs) // 2] for m, rs in results.items()}
    base = median["none"]["fps"]
    for m in MODES:
        median[m]["vs_none"] = round(median[m]["fps"] / base, 3)
        median[m]["fps"] = round(median[m]["fps"], 1)
    print(json.dumps({"rounds": args.rounds, "seconds": args.seconds, "median": median,
                      "spread_none": round(statistics.pstdev(x["fps"] for x in results["none"]), 1)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
