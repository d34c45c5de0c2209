#!/usr/bin/env python3
"""Time to fetch one feature's history into a DataFrame with the Python
client, against the raw gRPC call measured in the same run.

Starts build/bin/query_load_bench --hold (a coordinator on a temporary
RocksDB filled with a synthetic analysed job: 150 checkpoints x 16,384
features by default), then for --calls random features times
Client.feature() (GetFeatureHistory + conversion to a FeatureHistory with
its curves DataFrame) and, interleaved, the raw stub call alone
(Client.feature_raw). One client, one call at a time. Run:

    PYTHONPATH=build/python /usr/bin/python3 \\
        client/python/bench/feature_history_bench.py [--calls 1000] [--json]
"""

import argparse
import json
import os
import random
import subprocess
import sys
import time

import saetrack
from saetrack import _client


def percentile(sorted_ms, q):
    i = min(len(sorted_ms) - 1, int(q * (len(sorted_ms) - 1) + 0.5))
    return sorted_ms[i]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", default="build/bin/query_load_bench",
                        help="query_load_bench binary (default %(default)s)")
    parser.add_argument("--checkpoints", type=int, default=150)
    parser.add_argument("--features", type=int, default=16384)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    server = subprocess.Popen(
        [args.bench, "--hold", f"--checkpoints={args.checkpoints}",
         f"--features={args.features}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline().split()
        if not line or line[0] != "serving":
            print(f"feature_history_bench: {args.bench} did not start",
                  file=sys.stderr)
            return 1
        target, job_id, layer = line[1], line[3], int(line[5])
        client = saetrack.Client(target)
        rng = random.Random(1)
        for _ in range(20):  # Warm up the connection.
            client.feature(job_id, layer, rng.randrange(args.features))
        raw_ms, full_ms, convert_ms = [], [], []
        for _ in range(args.calls):
            feature = rng.randrange(args.features)
            start = time.perf_counter()
            history = client.feature_raw(job_id, layer, feature)
            raw_ms.append((time.perf_counter() - start) * 1e3)
            start = time.perf_counter()
            _client._feature_history(history, False, False)
            convert_ms.append((time.perf_counter() - start) * 1e3)
            start = time.perf_counter()
            f = client.feature(job_id, layer, feature)
            full_ms.append((time.perf_counter() - start) * 1e3)
            if len(f.curves) != args.checkpoints:
                print(f"feature {feature}: {len(f.curves)} rows",
                      file=sys.stderr)
                return 1
        client.close()
    finally:
        server.stdin.close()
        server.wait(timeout=60)
    raw_ms.sort()
    full_ms.sort()
    convert_ms.sort()
    result = {
        "checkpoints": args.checkpoints, "features": args.features,
        "calls": args.calls, "pandas": saetrack.have_pandas(),
        "dataframe_p50_ms": round(percentile(full_ms, 0.5), 3),
        "dataframe_p99_ms": round(percentile(full_ms, 0.99), 3),
        "raw_grpc_p50_ms": round(percentile(raw_ms, 0.5), 3),
        "raw_grpc_p99_ms": round(percentile(raw_ms, 0.99), 3),
        "conversion_p50_ms": round(percentile(convert_ms, 0.5), 3),
        "cpu_cores": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"feature_history_bench: {args.calls} calls, {args.checkpoints} "
              f"checkpoints x {args.features} features, {os.cpu_count()} cores")
        r = result
        print(f"  Client.feature -> DataFrame  p50 {r['dataframe_p50_ms']:.3f}"
              f" ms   p99 {r['dataframe_p99_ms']:.3f} ms")
        print(f"  raw gRPC GetFeatureHistory   p50 {r['raw_grpc_p50_ms']:.3f}"
              f" ms   p99 {r['raw_grpc_p99_ms']:.3f} ms")
        print(f"  conversion alone             p50 "
              f"{r['conversion_p50_ms']:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
