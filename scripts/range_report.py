#!/usr/bin/env python3
"""Summarizes `zeropoint inspect --json --range minmax,mse,...` reports by tensor type.

Usage: range_report.py KIND=REPORT.json ...   (KIND: weights or activations)

For each type (conv weights, matrix weights, biases, activations) prints how much lower the
quantization MSE of the MSE-chosen range is than min-max's, and the SQNR gained.
"""

import json
import sys

import numpy as np


def kind_of(kind, tensor):
    if kind == "activations":
        return "activations"
    rank = len(tensor["shape"])
    return {4: "conv weights", 2: "matrix weights", 1: "1-D (bias, BN)"}.get(rank, f"rank-{rank} tensors")


def main(args):
    groups = {}
    for arg in args:
        kind, path = arg.split("=", 1)
        for t in json.load(open(path))["tensors"]:
            r = {x["method"]: x for x in t["ranges"]}
            if "mse" not in r or "minmax" not in r or r["minmax"]["mse"] == 0:
                continue
            groups.setdefault(kind_of(kind, t), []).append(
                (r["mse"]["mse"] / r["minmax"]["mse"], (r["mse"]["sqnr_db"] or 0) - (r["minmax"]["sqnr_db"] or 0)))
    print(f"{'tensors':<16} {'count':>5} {'MSE ratio median':>17} {'mean':>6} {'worst':>6} {'best':>6} {'SQNR gain median':>17}")
    for name, rows in sorted(groups.items()):
        ratio = np.array([r[0] for r in rows])
        gain = np.array([r[1] for r in rows])
        print(f"{name:<16} {len(rows):>5} {np.median(ratio):>17.3f} {ratio.mean():>6.3f} {ratio.max():>6.3f} "
              f"{ratio.min():>6.3f} {np.median(gain):>14.2f} dB")


if __name__ == "__main__":
    main(sys.argv[1:])
