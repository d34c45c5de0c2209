#!/usr/bin/env python3
"""Submits a small saetrack job (or takes one already submitted), watches it
to the end, and plots how one feature's decoder direction drifts over the
checkpoints: cos to the final decoder row and cos to the previous one
against the training step (log x axis), to a PNG.

    PYTHONPATH=build/python /usr/bin/python3 client/python/examples/track_drift.py \\
        --coordinator 127.0.0.1:7070 --job-file deploy/jobs/demo-job.json \\
        --request-id demo-1 --layer 1 --out drift.png

Without --feature it plots the most drifted live feature of the layer.
Needs pandas (Debian: python3-pandas) and matplotlib (python3-matplotlib);
without matplotlib it prints the curves only.
"""

import argparse
import sys

import saetrack


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coordinator", default=saetrack.DEFAULT_TARGET,
                        help="coordinator address (default %(default)s)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--job-file", help="job file to submit")
    source.add_argument("--job-id", help="a job already submitted")
    parser.add_argument("--request-id",
                        help="idempotency key: submitting again returns the "
                        "same job")
    parser.add_argument("--layer", type=int, required=True)
    parser.add_argument("--feature", type=int,
                        help="feature id (default: the most drifted live one)")
    parser.add_argument("--out", default="drift.png", help="the PNG to write")
    parser.add_argument("--token", help="bearer token")
    parser.add_argument("--tls-ca", help="CA certificate (PEM): use TLS")
    args = parser.parse_args()

    client = saetrack.Client(args.coordinator, token=args.token,
                             tls_ca=args.tls_ca)
    try:
        if args.job_file:
            job = client.submit(args.job_file, request_id=args.request_id)
            print(f"job {job['job_id']}"
                  f"{'' if job.created else ' (submitted before)'}")
            job_id = job["job_id"]
        else:
            job_id = args.job_id
        final = client.wait(job_id)  # A progress bar on a terminal.
        if final["state"] != "JOB_STATE_SUCCEEDED":
            print(f"job {job_id} {final['state']}: {final.get('error', '')}",
                  file=sys.stderr)
            return 1
        feature = args.feature
        if feature is None:
            live = client.features(job_id, args.layer, order="drift", limit=50)
            live = live[live["kind"] != "FEATURE_KIND_DEAD"]
            if live.empty:
                print(f"track_drift: layer {args.layer} of job {job_id} has "
                      "no live feature", file=sys.stderr)
                return 1
            feature = int(live.index[0])
        history = client.feature(job_id, args.layer, feature)
    except saetrack.Error as e:
        print(f"track_drift: {e}", file=sys.stderr)
        return 1

    curves = history.curves
    kind = history.summary["kind"] if history.summary else "not analysed"
    title = f"job {job_id} layer {args.layer} feature {feature} ({kind})"
    print(title)
    print(curves[["decoder_cos_final", "decoder_cos_prev", "frequency"]])
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return 0
    # log x: step 0 is drawn at 1, as log(step + 1) in the phase fit.
    x = curves.index.to_numpy() + 1
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(x, curves["decoder_cos_final"], "o-", label="cos to final decoder")
    ax.plot(x, curves["decoder_cos_prev"], "s--", label="cos to previous")
    ax.set_xscale("log")
    ax.set_xlabel("training step + 1")
    ax.set_ylabel("cosine similarity")
    # Autoscaled: late in training the drift is a few thousandths.
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
