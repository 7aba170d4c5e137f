"""Issue 15, what TensorRT shares: the engines' bytes with a decode engine of its own, with the base's weight
matrices bound at run time (``--share-weights``), and with decode on the prefill engine (the default), built one
after the other from the same artifacts.

    python benchmarks/tensorrt_engines.py ARTIFACTS [--backend tensorrt_rtx] --json OUT

Every TensorRT engine carries the weights of the graph it was built from, so the engines' bytes on disk are the
weights they would hold on the device once deserialized; with ``--share-weights`` the runtime adds one device copy
of the bound matrices (``bound_mib``: each distinct tensor once). TensorRT-RTX builds ahead of time on the CPU, so this runs
on any machine with ``pip install tensorrt-rtx-cu13``; it cannot measure device memory (no engine runs here). The
last layout built is the default one, so ARTIFACTS is left with the engines ``latentcache build`` makes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def build(artifacts: Path, backend: str, separate_decode: bool, share_weights: bool = False) -> dict:
    from latentcache.export.tensorrt_build import build_engines
    from latentcache.tensorrt_support import EngineMetadata

    started = time.perf_counter()
    paths = build_engines(artifacts, backend, progress=lambda _: None, separate_decode=separate_decode,
                          share_weights=share_weights)
    index = json.loads((artifacts / "weights.json").read_text())["graphs"]
    engines, bound = {}, {}
    for path in paths:
        meta = EngineMetadata.read(path.with_suffix(".json"))
        engines[meta.graph] = {"serves": list(meta.serves), "mib": round(meta.engine_bytes / 2**20, 1),
                               "bound_weights": len(meta.bound_weights), "build_s": meta.build_seconds}
        bound.update({e["offset"]: e["length"] for e in index[meta.graph] if e["name"] in meta.bound_weights})
    engine_mib, bound_mib = sum(e["mib"] for e in engines.values()), sum(bound.values()) / 2**20
    return {"separate_decode": separate_decode, "share_weights": share_weights, "engines": engines,
            "engine_mib": round(engine_mib, 1), "bound_mib": round(bound_mib, 1),
            "total_mib": round(engine_mib + bound_mib, 1), "build_s": round(time.perf_counter() - started, 1)}


def profile_probe(backend: str) -> list[dict]:
    """Engine bytes of a network of one 2048x2048 fp16 matrix read by two MatMuls, built with one and with two
    optimization profiles, the matrix a constant or an input: does the engine keep a copy per profile?"""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from latentcache.tensorrt_support import load_tensorrt, make_logger, network_flags

    trt, _ = load_tensorrt(backend)
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    matrix = numpy_helper.from_array(np.random.default_rng(0).random((2048, 2048)).astype(np.float16), "W")
    rows = []
    for as_input in (False, True):
        nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
                 helper.make_node("MatMul", ["r", "W"], ["y"])]
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, "q", 2048])]
        inputs += [helper.make_tensor_value_info("W", TensorProto.FLOAT16, [2048, 2048])] if as_input else []
        graph = helper.make_graph(nodes, "probe", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT16,
                                                                                         [1, "q", 2048])],
                                  initializer=[] if as_input else [matrix])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()
        for profiles in (1, 2):
            network = builder.create_network(network_flags(trt))
            if not trt.OnnxParser(network, logger).parse(model):
                raise SystemExit(f"the probe network does not parse: {logger.last()}")
            config = builder.create_builder_config()
            for index in range(profiles):  # a prompt's rows, then one decode row
                profile = builder.create_optimization_profile()
                low, opt, high = (1, 1, 1) if index else (1, 64, 512)
                profile.set_shape("x", (1, low, 2048), (1, opt, 2048), (1, high, 2048))
                config.add_optimization_profile(profile)
            engine = builder.build_serialized_network(network, config)
            if engine is None:
                raise SystemExit(f"the probe network does not build: {logger.last()}")
            rows.append({"matrix": "input" if as_input else "constant", "profiles": profiles,
                         "engine_mib": round(engine.nbytes / 2**20, 2)})
            print(f"probe: matrix as {rows[-1]['matrix']}, {profiles} profile(s): {rows[-1]['engine_mib']} MiB")
    return rows


def layout_name(layout: dict) -> str:
    if layout["share_weights"]:
        return "weights bound at run time, decode on the prefill engine"
    return "decode engine of its own" if layout["separate_decode"] else "decode on the prefill engine (default)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("--backend", default="tensorrt_rtx", choices=["tensorrt", "tensorrt_rtx"])
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    from latentcache.contract.manifest import load_manifest

    manifest = load_manifest(args.artifacts)
    weights_mib = round(sum(f.stat().st_size for f in args.artifacts.glob("*.bin")) / 2**20, 1)
    layouts = [build(args.artifacts, args.backend, True), build(args.artifacts, args.backend, False, True),
               build(args.artifacts, args.backend, False)]  # the default last: what `latentcache build` leaves
    for layout in layouts:
        sizes = ", ".join(f"{graph} {engine['mib']}" for graph, engine in layout["engines"].items())
        print(f"{layout_name(layout)}: {layout['total_mib']} MiB = engines {layout['engine_mib']} ({sizes}) + "
              f"bound weights {layout['bound_mib']}, built in {layout['build_s']} s")
    separate, bound, shared = layouts
    probe = profile_probe(args.backend)
    summary = {"artifacts": str(args.artifacts), "dtype": manifest.dtype, "ops": manifest.ops,
               "max_seq": manifest.kv.max_seq, "coprocessor": bool(manifest.num_latents),
               "onnx_weights_mib": weights_mib, "backend": args.backend,
               "mib": {layout_name(layout): layout["total_mib"] for layout in layouts},
               "default_over_separate": round(shared["total_mib"] / separate["total_mib"], 3),
               "bound_over_separate": round(bound["total_mib"] / separate["total_mib"], 3),
               "bound_over_onnx_weights": round(bound["total_mib"] / weights_mib, 3)}
    print(json.dumps(summary, indent=1))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({**summary, "layouts": layouts, "probe": probe}, indent=1) + "\n")


if __name__ == "__main__":
    main()
