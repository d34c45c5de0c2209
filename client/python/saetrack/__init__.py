"""saetrack: a Python client for the saetrack coordinator.

    import saetrack
    c = saetrack.Client("127.0.0.1:7070")          # token=..., tls_ca=...
    job = c.submit("job.json", request_id="pythia-70m-l3", wait=True)
    c.metrics(job["job_id"], 3)                     # DataFrame, step as index
    c.drift(job["job_id"], 3).checkpoints           # quantiles per checkpoint
    c.features(job["job_id"], 3, kind="concept", order="drift", limit=20)
    f = c.feature(job["job_id"], 3, 17, decoder=True)
    f.curves, f.summary, f.decoder                  # DataFrame, dict, ndarray
    c.export_sae(job["job_id"], 3, None, "sae-l3")  # SAELens directory
    c.add_checkpoint(live_id, 48, "run/checkpoint-48")  # following jobs:
    c.refresh_analysis(live_id); c.close_job(live_id)    # Job dicts

Dicts use the field names of the CLI's --json output (snake_case, enums as
their names, steps and counts as ints). Tables are pandas DataFrames when
pandas is installed, else dicts of numpy arrays. Failed calls raise
saetrack.Error subclasses (NotFound, InvalidArgument, ...) carrying the
gRPC code and the coordinator's message. See help(saetrack.Client).
"""

try:
    from saetrack.v1 import job_pb2 as _job_pb2  # noqa: F401
except ImportError as _e:  # pragma: no cover - a source tree, not built
    raise ImportError(
        "saetrack's generated gRPC stubs (saetrack.v1) are missing: import "
        "saetrack from the build tree (PYTHONPATH=build/python after "
        "building the saetrack_python target) or install the package "
        "(pip install ./client/python)") from _e

from saetrack._client import (DEFAULT_TARGET, CheckpointAdded, Client,
                              DriftSummary, FeatureHistory, QualityChecks,
                              SubmittedJob, is_terminal)
from saetrack._convert import have_pandas, to_dict
from saetrack._errors import (Aborted, AlreadyExists, DataLoss,
                              DeadlineExceeded, Error, FailedPrecondition,
                              Internal, InvalidArgument, NotFound,
                              PermissionDenied, ResourceExhausted,
                              Unauthenticated, Unavailable, Unimplemented)
from saetrack._files import read_safetensors
from saetrack._job_file import load_job_spec

__version__ = "0.1.0"

__all__ = [
    "Client", "DEFAULT_TARGET", "DriftSummary", "FeatureHistory",
    "QualityChecks", "SubmittedJob", "CheckpointAdded", "is_terminal", "have_pandas", "to_dict",
    "read_safetensors", "load_job_spec", "Error", "Aborted", "AlreadyExists",
    "DataLoss", "DeadlineExceeded", "FailedPrecondition", "Internal",
    "InvalidArgument", "NotFound", "PermissionDenied", "ResourceExhausted",
    "Unauthenticated", "Unavailable", "Unimplemented",
]
