"""saetrack.Client: the coordinator's JobService and QueryService as Python
calls returning dicts, pandas DataFrames and numpy arrays."""

import dataclasses
import math
import operator
import os
import sys
import time
from typing import (Any, Dict, Iterator, List, Mapping, Optional, Sequence,
                    TextIO)

import grpc
import numpy as np

from saetrack import _convert
from saetrack._convert import Column, make_table, scalar_values, to_dict
from saetrack._errors import (DataLoss, DeadlineExceeded, InvalidArgument,
                              NotFound, from_rpc_error)
from saetrack._files import crc32c, write_atomically
from saetrack._job_file import SpecLike, load_job_spec
from saetrack.v1 import job_pb2, job_pb2_grpc, query_pb2, query_pb2_grpc

#: The CLI's default coordinator address.
DEFAULT_TARGET = "127.0.0.1:7070"

_TERMINAL = frozenset(("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED",
                       "JOB_STATE_CANCELLED"))

# --kind and --order of `saetrack features`, and the enum names.
_KINDS = {
    "token": query_pb2.FEATURE_KIND_TOKEN_LEVEL,
    "concept": query_pb2.FEATURE_KIND_CONCEPT_LEVEL,
    "dead": query_pb2.FEATURE_KIND_DEAD,
}
_ORDERS = {
    "id": query_pb2.ListFeaturesRequest.FEATURE_ID,
    "formation": query_pb2.ListFeaturesRequest.FORMATION_STEP,
    "drift": query_pb2.ListFeaturesRequest.FINAL_DRIFT,
    "frequency": query_pb2.ListFeaturesRequest.FREQUENCY,
}
# Features asked for per ListFeatures page (the coordinator's maximum).
_FEATURE_PAGE = 10000


def is_terminal(job: Mapping[str, Any]) -> bool:
    """True when a job dict's state is SUCCEEDED, FAILED or CANCELLED."""
    return job.get("state") in _TERMINAL


class SubmittedJob(dict):
    """The job dict `submit` returns; `created` is False when the request id
    matched a job submitted before (which is returned instead)."""

    created: bool = True


class CheckpointAdded(dict):
    """The job dict `add_checkpoint` returns; `created` is False when the
    job had already taken the step with this path (nothing changed)."""

    created: bool = True


@dataclasses.dataclass
class FeatureHistory:
    """One feature of one layer over the whole chain (GetFeatureHistory).

    Attributes:
      job_id, layer, feature_id: what was asked for.
      curves: one row per checkpoint, step as index, in chain order: the
        FeaturePoint fields chain_index, frequency, mean_activation,
        max_activation, decoder_cos_prev (cos to the previous checkpoint's
        decoder row), encoder_norm, analysed, decoder_cos_final (cos to the
        final one), progress_activation, progress_feature,
        progress_token_controlled, pca_x, pca_y; NaN where absent.
      summary: the FeatureSummary dict (kind, formation_step, phases, ...),
        None before the job's analysis summary for the layer is stored.
      decoder: with decoder=True, the decoder rows, float32
        [n_checkpoints, d_in], in the order of curves; else None.
      contexts: with contexts=True, per checkpoint the list of its top
        activating contexts (dicts: position, activation, token, window,
        focus, text); else None.
      logit_effects: per checkpoint, in the order of curves, the tokens the
        unit decoder direction promotes and suppresses most through that
        checkpoint's unembedding: a dict {"promoted": [...], "suppressed":
        [...]} of dicts token_id, value (the logit) and token (decoded with
        the job's tokenizer; "" without one), promoted by descending value,
        suppressed by ascending; None for a checkpoint without them (not
        analysed yet, or spec.analysis.logit_effects_k 0).
      provisional: True for a following job before its final analysis: the
        analysis fields show the run so far, against the latest analysed
        checkpoint (the last row whose `analysed` is true).
    """

    job_id: str
    layer: int
    feature_id: int
    curves: Any
    summary: Optional[Dict[str, Any]]
    decoder: Optional[np.ndarray] = None
    contexts: Optional[List[List[Dict[str, Any]]]] = None
    logit_effects: Optional[List[Optional[Dict[str, List[Dict[str, Any]]]]]] = None
    provisional: bool = False


@dataclasses.dataclass
class DriftSummary:
    """Decoder drift across the features of one layer (GetDriftSummary).

    Attributes:
      checkpoints: one row per checkpoint, step as index: chain_index,
        formed, and the quantiles q10..q90 of cos_to_final, cos_to_previous,
        progress_activation, progress_feature and progress_token_controlled
        as columns such as "cos_to_final_q50" (NaN where absent).
      phases: the phase fit of the median cos_to_final (PhaseFit dict), None
        with fewer than four checkpoints.
      kinds: per kind of feature (token-level, concept-level, dead) its
        KindSummary dict: count, formed, formation steps, final progress.
      settings: formation_tau, token_level_threshold, top_k,
        analysis_tokens.
      provisional: True for a following job before its final analysis: the
        summary covers the checkpoints up to through_step, against that one
        as the final checkpoint.
      through_step: with provisional, the last step analysed; else None.
    """

    job_id: str
    layer: int
    checkpoints: Any
    phases: Optional[Dict[str, Any]]
    kinds: List[Dict[str, Any]]
    settings: Dict[str, Any]
    provisional: bool = False
    through_step: Optional[int] = None


@dataclasses.dataclass
class QualityChecks:
    """The trust checks of one layer (GetQualityChecks).

    Attributes:
      checkpoints: the chain's metrics at the reference checkpoints (the
        same columns as Client.metrics), step as index.
      references: the independent SAEs trained there and how the chain's
        compare (ReferenceCheck fields: seed, fvu, l0, matched,
        match_median_cosine, random_median_cosine, ...), step as index.
      verdicts: one dict per verdict: check, step, passed, verdict.
    """

    checkpoints: Any
    references: Any
    verdicts: List[Dict[str, Any]]


class Client:
    """A connection to a saetrack coordinator.

    Every method raises a saetrack.Error subclass carrying the gRPC code and
    the coordinator's message (NotFound for an unknown job, layer or
    feature; InvalidArgument naming a bad field; FailedPrecondition for
    what is not computed yet; Unavailable when the coordinator cannot be
    reached). Dicts use the CLI's --json field names (snake_case, enums as
    their names) with 64-bit integers as ints. Tables are pandas DataFrames
    indexed by step when pandas is installed, else dicts of numpy arrays.

    Thread-safe: one Client may serve many threads.

    Example:
      c = saetrack.Client("127.0.0.1:7070")
      job = c.submit("job.json", request_id="run-1", wait=True)
      m = c.metrics(job["job_id"], layer=3)          # DataFrame by step
      f = c.feature(job["job_id"], 3, 17, decoder=True)
      f.curves["decoder_cos_final"].plot(logx=True)
    """

    def __init__(self, target: str = DEFAULT_TARGET, *,
                 token: Optional[str] = None,
                 token_file: Optional[str] = None,
                 tls_ca: Optional[str] = None,
                 tls_cert: Optional[str] = None,
                 tls_key: Optional[str] = None,
                 timeout: Optional[float] = 60.0,
                 options: Sequence = ()):
        """Connects (lazily) to the coordinator at `target` ("host:port").

        Args:
          token: a bearer token, sent as `authorization: Bearer <token>`
            metadata on every call.
          token_file: a file holding the token (surrounding whitespace
            stripped); instead of `token`.
          tls_ca: PEM file of the CA that signed the coordinator's
            certificate; turns TLS on.
          tls_cert, tls_key: PEM client certificate and key for mutual TLS
            (both or neither); turn TLS on.
          timeout: seconds each unary call may take (None: no limit).
            watch() and submit(wait=True) take their own timeout.
          options: extra gRPC channel options, (name, value) pairs.

        Raises:
          InvalidArgument: token and token_file together, or only one of
            tls_cert and tls_key.
          NotFound: a token, CA, certificate or key file cannot be read.
        """
        if token is not None and token_file is not None:
            raise InvalidArgument("token and token_file: give one, not both")
        if (tls_cert is None) != (tls_key is None):
            raise InvalidArgument("tls_cert and tls_key: give both or neither")
        if token_file is not None:
            token = _read_file(token_file, "token_file").decode("utf-8").strip()
            if not token:
                raise InvalidArgument(f"token_file: {token_file} is empty")
        self.target = target
        self.timeout = timeout
        self._metadata = ((("authorization", f"Bearer {token}"),)
                          if token else ())
        options = ([("grpc.max_receive_message_length", 256 << 20)] +
                   list(options))
        if tls_ca is not None or tls_cert is not None:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=(_read_file(tls_ca, "tls_ca")
                                   if tls_ca else None),
                private_key=_read_file(tls_key, "tls_key") if tls_key else None,
                certificate_chain=(_read_file(tls_cert, "tls_cert")
                                   if tls_cert else None))
            self._channel = grpc.secure_channel(target, credentials, options)
        else:
            self._channel = grpc.insecure_channel(target, options)
        self._jobs = job_pb2_grpc.JobServiceStub(self._channel)
        self._queries = query_pb2_grpc.QueryServiceStub(self._channel)

    def __repr__(self) -> str:
        return f"saetrack.Client({self.target!r})"

    def close(self) -> None:
        """Closes the channel; calls after this fail."""
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- calls -----------------------------------------------------------

    def _call(self, method, request, timeout: Optional[float] = ...):
        try:
            return method(request,
                          timeout=self.timeout if timeout is ... else timeout,
                          metadata=self._metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    # --- jobs ------------------------------------------------------------

    def jobs(self) -> List[Dict[str, Any]]:
        """Every job the coordinator holds (all pages of ListJobs), as job
        dicts (job_id, spec, state, progress, error, create_time_ms, ...)."""
        jobs: List[Dict[str, Any]] = []
        token = ""
        while True:
            page = self._call(self._jobs.ListJobs,
                              job_pb2.ListJobsRequest(page_size=500,
                                                      page_token=token))
            jobs.extend(to_dict(j) for j in page.jobs)
            token = page.next_page_token
            if not token:
                return jobs

    def job(self, job_id: str) -> Dict[str, Any]:
        """The job as `saetrack status JOB --json` prints it (with 64-bit
        integers as ints). Raises NotFound for an unknown job."""
        return to_dict(self._call(self._jobs.GetJob,
                                  job_pb2.GetJobRequest(job_id=job_id)))

    def submit(self, spec_or_path: SpecLike, request_id: Optional[str] = None,
               wait: bool = False, *, progress: Optional[bool] = None,
               timeout: Optional[float] = None) -> SubmittedJob:
        """Submits a job and returns its job dict (a SubmittedJob).

        Args:
          spec_or_path: a job file path, a JSON string, a dict of JobSpec
            fields or a JobSpec. Relative paths in it resolve against the
            job file's directory (the current directory for a dict or
            string), as with `saetrack submit`.
          request_id: idempotency key: submitting again with the same id and
            spec returns the first job (created False); with another spec
            raises AlreadyExists.
          wait: follow the job until it ends (see watch) and return it in
            its final state.
          progress, timeout: as for watch, when waiting.

        Raises:
          InvalidArgument naming the field; NotFound for an unreadable job
          file; AlreadyExists; DeadlineExceeded when waiting past timeout.
        """
        spec = load_job_spec(spec_or_path)
        response = self._call(
            self._jobs.SubmitJob,
            job_pb2.SubmitJobRequest(spec=spec, request_id=request_id or ""))
        job = SubmittedJob(to_dict(response.job))
        job.created = response.created
        if not wait:
            return job
        final = self.wait(job["job_id"], progress=progress, timeout=timeout)
        result = SubmittedJob(final)
        result.created = response.created
        return result

    def cancel(self, job_id: str) -> Dict[str, Any]:
        """Cancels a queued or running job and returns it (CANCELLED).
        Idempotent. Raises FailedPrecondition for a finished job, NotFound.
        """
        response = self._call(self._jobs.CancelJob,
                              job_pb2.CancelJobRequest(job_id=job_id))
        return to_dict(response.job)

    # --- follow mode: jobs with spec.model.follow ----------------------

    def add_checkpoint(self, job_id: str, step: int,
                       path: str) -> CheckpointAdded:
        """Gives a following job the checkpoint of `step` in directory
        `path` (made absolute against the current directory, as job files'
        paths; the coordinator reads it there) and returns the job dict (a
        CheckpointAdded: created False when the step was already taken with
        this path).

        Raises:
          InvalidArgument naming the field; AlreadyExists for a step taken
          with another path; FailedPrecondition for a job that does not
          follow or is closed, and for a step older than the latest taken
          (unless the job re-trains late checkpoints); NotFound.
        """
        response = self._call(
            self._jobs.AddCheckpoint,
            job_pb2.AddCheckpointRequest(job_id=job_id, step=step,
                                         path=os.path.abspath(path)))
        job = CheckpointAdded(to_dict(response.job))
        job.created = response.created
        return job

    def close_job(self, job_id: str) -> Dict[str, Any]:
        """Ends a following job's following and returns the job dict: the
        final analysis runs over the checkpoints taken and the job then
        ends as a fixed-list job (wait() follows it there). Idempotent.
        Raises FailedPrecondition for a job that does not follow, NotFound.
        """
        response = self._call(self._jobs.CloseJob,
                              job_pb2.CloseJobRequest(job_id=job_id))
        return to_dict(response.job)

    def refresh_analysis(self, job_id: str) -> Dict[str, Any]:
        """Starts a provisional analysis round of a following job over its
        trained checkpoints (after the round running, if one is; see the
        job's follow.refresh_pending) and returns the job dict. Raises
        FailedPrecondition (not following, closed, no analysis pass,
        nothing trained yet), NotFound."""
        response = self._call(self._jobs.RefreshAnalysis,
                              job_pb2.RefreshAnalysisRequest(job_id=job_id))
        return to_dict(response.job)

    def watch(self, job_id: str, *, progress: Optional[bool] = None,
              timeout: Optional[float] = None,
              stream: Optional[TextIO] = None) -> Iterator[Dict[str, Any]]:
        """Yields the job's updates until it ends: JobUpdate dicts (job,
        tokens_done, tokens_per_second, and loss and eta_seconds when
        known), the last one carrying the terminal state.

        Follows JobService.WatchJob, reconnecting while the coordinator is
        unavailable; polls GetJob (about every second) when the coordinator
        lacks WatchJob.

        Args:
          progress: draw a one-line progress bar on `stream`; None (the
            default): only when `stream` is a terminal.
          timeout: seconds to follow the job in all (None: until it ends);
            then DeadlineExceeded.
          stream: where the bar goes; sys.stderr by default.

        Raises:
          NotFound for an unknown job; DeadlineExceeded.
        """
        stream = sys.stderr if stream is None else stream
        if progress is None:
            progress = hasattr(stream, "isatty") and stream.isatty()
        bar = _ProgressBar(stream) if progress else None
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            for update in self._follow(job_id, deadline, timeout):
                if bar is not None:
                    bar.show(update)
                yield update
        finally:
            if bar is not None:
                bar.end()

    def wait(self, job_id: str, *, progress: Optional[bool] = None,
             timeout: Optional[float] = None) -> Dict[str, Any]:
        """Follows the job (see watch) and returns its job dict once it
        has ended (SUCCEEDED, FAILED with its error, or CANCELLED)."""
        last = None
        for update in self.watch(job_id, progress=progress, timeout=timeout):
            last = update
        return last["job"]

    def _follow(self, job_id: str, deadline: Optional[float],
                timeout: Optional[float]) -> Iterator[Dict[str, Any]]:
        def left() -> Optional[float]:
            if deadline is None:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(
                    f"job {job_id} still running after timeout={timeout}")
            return remaining

        use_watch = True
        while True:
            if use_watch:
                call = self._jobs.WatchJob(
                    job_pb2.WatchJobRequest(job_id=job_id), timeout=left(),
                    metadata=self._metadata)
                try:
                    for message in call:
                        update = to_dict(message)
                        yield update
                        if is_terminal(update["job"]):
                            call.cancel()
                            return
                except grpc.RpcError as e:
                    code = e.code()
                    if code == grpc.StatusCode.UNIMPLEMENTED:
                        use_watch = False  # An older coordinator: poll.
                        continue
                    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                        left()  # Raises when our own deadline passed.
                    if code != grpc.StatusCode.UNAVAILABLE:
                        raise from_rpc_error(e) from None
                finally:
                    call.cancel()
            else:
                job = self._call(self._jobs.GetJob,
                                 job_pb2.GetJobRequest(job_id=job_id),
                                 timeout=left())
                update = {"job": to_dict(job),
                          "tokens_done": job.progress.tokens_trained,
                          "tokens_per_second": 0.0}
                yield update
                if is_terminal(update["job"]):
                    return
            # The stream ended early or the coordinator is restarting: wait
            # a moment within the deadline and follow again.
            remaining = left()
            time.sleep(1.0 if remaining is None else min(1.0, remaining))

    # --- queries ---------------------------------------------------------

    def metrics(self, job_id: str, layer: int):
        """Quality of every stored SAE of the layer's chain: one row per
        checkpoint, step as index, in chain order. Columns: the
        CheckpointMetrics fields (chain_index, tokens_trained, fvu, l0,
        dead_fraction, init_fvu, median_decoder_cos_prev, held_out_loss,
        converged, ...), the LM evaluation's (ce_clean, ce_spliced,
        ce_zero_ablated, loss_recovered, kl_divergence, lm_tokens; NaN when
        it did not run), density_histogram (a list per row) and
        has_reference (a trust check ran there; see quality()).

        Raises NotFound for an unknown job or layer."""
        response = self._call(
            self._queries.GetCheckpointMetrics,
            query_pb2.GetCheckpointMetricsRequest(job_id=job_id, layer=layer))
        return _metrics_table(response.checkpoints)

    def quality(self, job_id: str, layer: int) -> QualityChecks:
        """The layer's trust checks: the reference checkpoints' metrics, the
        independent SAEs there, and the verdicts (`saetrack quality`)."""
        response = self._call(
            self._queries.GetQualityChecks,
            query_pb2.GetQualityChecksRequest(job_id=job_id, layer=layer))
        kinds = _convert.field_kinds(query_pb2.ReferenceCheck.DESCRIPTOR)
        rows = []
        for m in response.checkpoints:
            reference = m.reference if m.HasField("reference") else None
            row = scalar_values(reference, query_pb2.ReferenceCheck.DESCRIPTOR)
            row["step"] = m.step
            rows.append(row)
        return QualityChecks(
            checkpoints=_metrics_table(response.checkpoints),
            references=_convert.rows_to_table("step", rows, kinds),
            verdicts=[to_dict(v) for v in response.verdicts])

    def drift(self, job_id: str, layer: int) -> DriftSummary:
        """The layer's drift summary (`saetrack drift`); see DriftSummary.
        Raises FailedPrecondition before the analysis summary is stored."""
        drift = self._call(
            self._queries.GetDriftSummary,
            query_pb2.GetDriftSummaryRequest(job_id=job_id, layer=layer))
        quantiles = ("cos_to_final", "cos_to_previous", "progress_activation",
                     "progress_feature", "progress_token_controlled")
        q_names = [f.name for f in query_pb2.Quantiles.DESCRIPTOR.fields]
        columns = {"chain_index": Column("int"), "formed": Column("int")}
        for name in quantiles:
            for q in q_names:
                columns[f"{name}_{q}"] = Column("float")
        steps = []
        for c in drift.checkpoints:
            steps.append(c.step)
            columns["chain_index"].values.append(c.chain_index)
            columns["formed"].values.append(c.formed)
            for name in quantiles:
                present = c.HasField(name)
                sub = getattr(c, name)
                for q in q_names:
                    columns[f"{name}_{q}"].values.append(
                        getattr(sub, q) if present else None)
        d = to_dict(drift)
        return DriftSummary(
            job_id=drift.job_id, layer=drift.layer,
            checkpoints=make_table("step", steps, columns),
            phases=d.get("phases"), kinds=d["kinds"],
            settings={k: d[k] for k in ("formation_tau",
                                        "token_level_threshold", "top_k",
                                        "analysis_tokens")},
            provisional=drift.provisional,
            through_step=drift.through_step if drift.provisional else None)

    def features(self, job_id: str, layer: int, *,
                 kind: Optional[str] = None,
                 formed_from: Optional[int] = None,
                 formed_to: Optional[int] = None,
                 min_freq: Optional[float] = None,
                 max_freq: Optional[float] = None,
                 order: Optional[str] = None,
                 limit: Optional[int] = None,
                 page_size: int = _FEATURE_PAGE):
        """The layer's features from the analysis summary, every page
        (`saetrack features`): one row per feature, feature_id as index, in
        the order asked for. Columns: the FeatureSummary fields (kind,
        top_token, top_token_share, top_token_text, formation_step,
        formation_chain_index, formation_step_feature, final_frequency,
        cos_first_to_final, pca_explained1, pca_explained2) and the phase
        fit's as phases_<field> (NaN where absent). The table's
        attrs["total"] (pandas) or ["total"] entry is the number of
        features matching the filter.

        Args:
          kind: "token", "concept" or "dead" (or FEATURE_KIND_* names).
          formed_from, formed_to: formation step range, inclusive; a bound
            excludes features that never formed.
          min_freq, max_freq: final frequency range in [0, 1].
          order: "id" (default), "formation" (earliest first), "drift"
            (most drifted first) or "frequency" (most frequent first).
          limit: at most this many features (all when None).
          page_size: features per ListFeatures call (1 to 10000).

        Raises:
          InvalidArgument naming the argument; NotFound;
          FailedPrecondition before the analysis summary is stored.
        """
        request = query_pb2.ListFeaturesRequest(job_id=job_id, layer=layer)
        if kind is not None:
            request.kind = _enum_arg("kind", kind, _KINDS,
                                     query_pb2.FeatureKind)
        if order is not None:
            request.order_by = _enum_arg("order", order, _ORDERS,
                                         query_pb2.ListFeaturesRequest.Order)
        if (formed_from is not None and formed_to is not None and
                formed_from > formed_to):
            raise InvalidArgument(
                f"formed_from {formed_from} is after formed_to {formed_to}")
        if (min_freq is not None and max_freq is not None and
                min_freq > max_freq):
            raise InvalidArgument(
                f"min_freq {min_freq} is above max_freq {max_freq}")
        if not 1 <= page_size <= _FEATURE_PAGE:
            raise InvalidArgument(
                f"page_size: {page_size} out of range (must be 1 to "
                f"{_FEATURE_PAGE})")
        if limit is not None and limit < 0:
            raise InvalidArgument(f"limit: {limit} is negative")
        if formed_from is not None:
            request.min_formation_step = formed_from
        if formed_to is not None:
            request.max_formation_step = formed_to
        if min_freq is not None:
            request.min_frequency = min_freq
        if max_freq is not None:
            request.max_frequency = max_freq
        summary_kinds = _convert.field_kinds(
            query_pb2.FeatureSummary.DESCRIPTOR)
        summary_kinds.update(_convert.field_kinds(query_pb2.PhaseFit.DESCRIPTOR,
                                                  prefix="phases_"))
        rows = []
        total = 0
        while limit is None or len(rows) < limit:
            want = page_size if limit is None else min(page_size,
                                                       limit - len(rows))
            request.page_size = max(1, want)
            page = self._call(self._queries.ListFeatures, request)
            total = page.total
            for f in page.features:
                if limit is not None and len(rows) >= limit:
                    break
                row = scalar_values(f, query_pb2.FeatureSummary.DESCRIPTOR)
                scalar_values(f.phases if f.HasField("phases") else None,
                              query_pb2.PhaseFit.DESCRIPTOR, "phases_", row)
                rows.append(row)
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
        table = _convert.rows_to_table("feature_id", rows, summary_kinds)
        if _convert.have_pandas():
            table.attrs["total"] = total
        else:
            table["total"] = total
        return table

    def feature(self, job_id: str, layer: int, feature_id: int, *,
                contexts: bool = False,
                decoder: bool = False) -> FeatureHistory:
        """One feature's history over the chain (`saetrack feature`); see
        FeatureHistory. contexts: fetch each checkpoint's top activating
        contexts (reads the token file); decoder: fetch the decoder rows
        (reads every SAE of the chain).

        Raises NotFound naming the unknown job, layer or feature."""
        history = self._call(
            self._queries.GetFeatureHistory,
            query_pb2.GetFeatureHistoryRequest(
                job_id=job_id, layer=layer, feature_id=feature_id,
                include_contexts=contexts, include_decoder=decoder))
        return _feature_history(history, contexts, decoder)

    def feature_raw(self, job_id: str, layer: int,
                    feature_id: int) -> query_pb2.FeatureHistory:
        """GetFeatureHistory's protobuf answer, unconverted."""
        return self._call(
            self._queries.GetFeatureHistory,
            query_pb2.GetFeatureHistoryRequest(job_id=job_id, layer=layer,
                                               feature_id=feature_id))

    def export_sae(self, job_id: str, layer: int, step: Optional[int],
                   dir: str, *,
                   timeout: Optional[float] = None) -> Dict[str, Any]:
        """Writes the SAE of one checkpoint as a SAELens directory
        (cfg.json, sae_weights.safetensors with W_enc [d_in, d_sae], b_enc,
        W_dec [d_sae, d_in], b_dec) into `dir`, created when missing; each
        file atomically, cfg.json last. step None: the final checkpoint.
        timeout: seconds for the whole transfer (None: no limit; an SAE may
        be gigabytes).

        Returns a dict as `saetrack export --json` prints it: job_id, layer,
        step, files, dir, and the cfg.json fields architecture, d_in, d_sae,
        hook_name, model_name.

        Raises:
          NotFound for an unknown job, layer or step; DataLoss when the
          chunks do not add up (offsets, sizes or CRC-32C); nothing is
          written then.
        """
        request = query_pb2.ExportSaeRequest(job_id=job_id, layer=layer)
        if step is not None:
            request.step = step
        files: Dict[str, bytes] = {}
        exported_step = None
        call = self._queries.ExportSae(request, timeout=timeout,
                                       metadata=self._metadata)
        try:
            parts: List[bytes] = []
            size = 0
            for chunk in call:
                exported_step = chunk.step
                if chunk.file in files:
                    raise DataLoss(f"export of job {job_id} layer {layer}: "
                                   f"{chunk.file} sent twice")
                if (not chunk.file or "/" in chunk.file or "\0" in chunk.file
                        or chunk.file in (".", "..")):
                    raise DataLoss(f"export of job {job_id} layer {layer}: "
                                   f"bad file name {chunk.file!r}")
                if chunk.offset != size:
                    raise DataLoss(
                        f"export of {chunk.file}: chunk at offset "
                        f"{chunk.offset}, expected offset {size}")
                parts.append(chunk.data)
                size += len(chunk.data)
                if chunk.last:
                    data = b"".join(parts)
                    if chunk.total_size != len(data):
                        raise DataLoss(
                            f"export of {chunk.file}: the last chunk says "
                            f"total_size {chunk.total_size}, but {len(data)} "
                            "bytes arrived")
                    crc = crc32c(data)
                    if crc != chunk.crc32c:
                        raise DataLoss(
                            f"export of {chunk.file}: CRC-32C mismatch: the "
                            f"last chunk says 0x{chunk.crc32c:08x}, the bytes "
                            f"have 0x{crc:08x}")
                    files[chunk.file] = data
                    parts, size = [], 0
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        finally:
            call.cancel()
        if parts or size:
            raise DataLoss(f"export of job {job_id} layer {layer}: the stream "
                           "ended without a file's last chunk")
        for required in ("cfg.json", "sae_weights.safetensors"):
            if required not in files:
                raise DataLoss(f"the coordinator's export of job {job_id} "
                               f"layer {layer} lacks {required}")
        import json
        try:
            cfg = json.loads(files["cfg.json"].decode("utf-8"))
        except ValueError as e:
            raise DataLoss(f"export of job {job_id} layer {layer}: cfg.json "
                           f"does not parse: {e}") from None
        os.makedirs(dir, exist_ok=True)
        for name, data in files.items():
            if name != "cfg.json":
                write_atomically(os.path.join(dir, name), data)
        write_atomically(os.path.join(dir, "cfg.json"), files["cfg.json"])
        result = {"job_id": job_id, "layer": layer, "step": exported_step,
                  "files": sorted(files), "dir": dir}
        for key in ("architecture", "d_in", "d_sae", "hook_name", "model_name"):
            if key in cfg:
                result[key] = cfg[key]
        return result


def _read_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise NotFound(f"{what}: cannot read {path}: {e.strerror}") from None


def _enum_arg(name: str, value: str, short: Mapping[str, int], enum) -> int:
    if value in short:
        return short[value]
    if value in enum.keys() and enum.Value(value) != 0:
        return enum.Value(value)
    raise InvalidArgument(f"{name}: {value!r} is not one of "
                          f"{', '.join(short)}")


_METRICS_SKIP = ("lm", "density_histogram", "reference")


def _metrics_table(checkpoints) -> Any:
    descriptor = query_pb2.CheckpointMetrics.DESCRIPTOR
    lm_descriptor = query_pb2.LmEvaluation.DESCRIPTOR
    kinds = _convert.field_kinds(descriptor, skip=("step",))
    lm_kinds = _convert.field_kinds(lm_descriptor)
    lm_names = {name: ("lm_tokens" if name == "tokens" else name)
                for name in lm_kinds}
    for name, kind in lm_kinds.items():
        kinds[lm_names[name]] = kind
    kinds["density_histogram"] = "object"
    kinds["has_reference"] = "bool"
    rows = []
    for m in checkpoints:
        row = scalar_values(m, descriptor)
        lm = scalar_values(m.lm if m.HasField("lm") else None, lm_descriptor)
        for name, value in lm.items():
            row[lm_names[name]] = value
        row["density_histogram"] = list(m.density_histogram)
        row["has_reference"] = m.HasField("reference")
        rows.append(row)
    return _convert.rows_to_table("step", rows, kinds)


# FeaturePoint's fields in curves, in proto order (without step, the index).
_POINT_FIELDS = ("chain_index", "frequency", "mean_activation",
                 "max_activation", "decoder_cos_prev", "encoder_norm",
                 "analysed", "decoder_cos_final", "progress_activation",
                 "progress_feature", "progress_token_controlled", "pca_x",
                 "pca_y")
_POINT_KINDS = {"chain_index": "int", "analysed": "bool"}
# One C call per point for all of them (a feature history has one point
# per checkpoint: this is the client's hot path).
_POINT_GETTER = operator.attrgetter("step", *_POINT_FIELDS)
# Columns of optional fields: (column in a getter tuple, field name).
_POINT_OPTIONAL = tuple(
    (i + 1, name) for i, name in enumerate(_POINT_FIELDS)
    if query_pb2.FeaturePoint.DESCRIPTOR.fields_by_name[name].has_presence)


def _feature_history(history: query_pb2.FeatureHistory, contexts: bool,
                     decoder: bool) -> FeatureHistory:
    points = history.points
    n = len(points)
    values = np.array([_POINT_GETTER(p) for p in points],
                      dtype=np.float64).reshape(n, len(_POINT_FIELDS) + 1)
    # An unset optional field reads 0: only zeros need HasField.
    for column, name in _POINT_OPTIONAL:
        for i in np.flatnonzero(values[:, column] == 0):
            if not points[int(i)].HasField(name):
                values[i, column] = math.nan
    columns: Dict[str, Column] = {}
    for i, name in enumerate(_POINT_FIELDS):
        column = Column(_POINT_KINDS.get(name, "float"))
        column.values = values[:, i + 1]
        columns[name] = column
    steps = values[:, 0].astype(np.int64)
    decoder_rows = None
    if decoder:
        d_in = len(points[0].decoder) if n else 0
        decoder_rows = np.zeros((n, d_in), dtype=np.float32)
        for i, p in enumerate(points):
            if len(p.decoder) != d_in:
                raise DataLoss(f"feature {history.feature_id}: decoder row of "
                               f"step {p.step} has {len(p.decoder)} values, "
                               f"the first {d_in}")
            decoder_rows[i] = p.decoder
    context_lists = None
    if contexts:
        context_lists = [[to_dict(c) for c in p.contexts] for p in points]
    summary = to_dict(history.summary) if history.HasField("summary") else None

    def effects(p):
        if not p.HasField("logit_effects"):
            return None
        return {side: [{"token_id": e.token_id, "value": e.value,
                        "token": e.token}
                       for e in getattr(p.logit_effects, side)]
                for side in ("promoted", "suppressed")}

    logit_effects = [effects(p) for p in points]
    return FeatureHistory(
        job_id=history.job_id, layer=history.layer,
        feature_id=history.feature_id,
        curves=make_table("step", steps, columns), summary=summary,
        decoder=decoder_rows, contexts=context_lists,
        logit_effects=logit_effects, provisional=history.provisional)


class _ProgressBar:
    """One line redrawn in place on a terminal: state, a bar of the tasks
    done, tokens, rate and ETA."""

    def __init__(self, stream: TextIO):
        self._stream = stream
        self._last = ""

    def show(self, update: Mapping[str, Any]) -> None:
        job = update["job"]
        progress = job.get("progress", {})
        total = progress.get("tasks_total", 0) + progress.get(
            "analysis_tasks_total", 0)
        done = progress.get("tasks_done", 0) + progress.get(
            "analysis_tasks_done", 0)
        width = 24
        filled = int(width * done / total) if total else 0
        state = job.get("state", "").replace("JOB_STATE_", "").lower()
        line = (f"{job.get('job_id', '')} {state:9s} "
                f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
                f"  tokens {_human(update.get('tokens_done', 0))}")
        rate = update.get("tokens_per_second", 0)
        if rate:
            line += f"  {_human(rate)} tok/s"
        if "loss" in update:
            line += f"  loss {update['loss']:.4g}"
        if "eta_seconds" in update:
            eta = int(update["eta_seconds"])
            line += f"  eta {eta // 60}m{eta % 60:02d}s"
        if line != self._last:
            self._stream.write("\r\033[K" + line)
            self._stream.flush()
            self._last = line

    def end(self) -> None:
        if self._last:
            self._stream.write("\n")
            self._stream.flush()


def _human(n: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.1f}{suffix}"
    return f"{n:.0f}" if isinstance(n, float) else str(n)
