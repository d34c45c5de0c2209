"""saetrack's Python client without a coordinator: job files, conversions,
errors, checksums, and the calls against an in-process fake gRPC server
(token metadata, streams, tables with and without pandas)."""

import json
import math
import os
import shutil
import struct
import tempfile
import unittest
from concurrent import futures

import grpc
import numpy as np

import saetrack
from saetrack import _convert
from saetrack._files import crc32c
from saetrack.v1 import job_pb2, job_pb2_grpc, query_pb2, query_pb2_grpc


class JobSpecTest(unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="saetrack-python-unit.")
        self.addCleanup(shutil.rmtree, self.dir)

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_job_file_paths_resolve_against_the_files_directory(self):
        path = self.write("jobs/job.json", json.dumps({
            "name": "x",
            "model": {"architecture": "gpt_neox", "checkpoints": [
                {"step": 0, "path": "../lm/step-0"},
                {"step": "16", "path": "/abs/step-16"}]},
            "data": {"tokensPath": "tokens.u16"},
            "hooks": [{"layer": 1}],
        }))
        spec = saetrack.load_job_spec(path)
        self.assertEqual(spec.model.checkpoints[0].path,
                         os.path.join(self.dir, "lm", "step-0"))
        self.assertEqual(spec.model.checkpoints[1].path, "/abs/step-16")
        self.assertEqual(spec.model.checkpoints[1].step, 16)
        self.assertEqual(spec.data.tokens_path,
                         os.path.join(self.dir, "jobs", "tokens.u16"))
        self.assertEqual(spec.data.tokenizer_path, "")  # Empty stays empty.

    def test_dicts_and_json_strings_resolve_against_the_current_directory(self):
        spec = saetrack.load_job_spec({"data": {"tokens_path": "t.u16"}})
        self.assertEqual(spec.data.tokens_path,
                         os.path.join(os.getcwd(), "t.u16"))
        spec = saetrack.load_job_spec(
            '  {"data": {"tokens_path": "a/../t.u16"}}')
        self.assertEqual(spec.data.tokens_path,
                         os.path.join(os.getcwd(), "t.u16"))

    def test_errors_name_the_field(self):
        cases = [
            ({"model": {"chekpoints": []}},
             "spec: model.chekpoints: unknown field"),
            ({"sae": {"expansion_factor": 1.5}},
             "spec: sae.expansion_factor: expected an integer"),
            ({"sae": {"expansion_factor": True}},
             "spec: sae.expansion_factor: expected an integer"),
            ({"model": {"checkpoints": [{"step": 1}, {"step": "x"}]}},
             "spec: model.checkpoints[1].step: expected an integer"),
            ({"hooks": {"layer": 1}}, "spec: hooks: expected a list"),
            ({"schedule": {"direction": "SIDEWAYS"}},
             "spec: schedule.direction: expected one of DIRECTION_UNSPECIFIED, "
             "FORWARD, BACKWARD"),
            ({"sae": {"ghost_grads": 1}},
             "spec: sae.ghost_grads: expected true or false"),
            ({"sae": {"l1_coefficient": "0.1"}},
             "spec: sae.l1_coefficient: expected a number"),
            ({"name": 3}, "spec: name: expected a string"),
            ({"model": []}, "spec: model: expected an object"),
        ]
        for spec, message in cases:
            with self.subTest(message=message):
                with self.assertRaises(saetrack.InvalidArgument) as caught:
                    saetrack.load_job_spec(spec)
                self.assertEqual(caught.exception.message, message)
                self.assertEqual(caught.exception.code,
                                 grpc.StatusCode.INVALID_ARGUMENT)

    def test_syntax_errors_missing_files_and_wrong_types(self):
        path = self.write("bad.json", '{"name": "x",, }')
        with self.assertRaises(saetrack.InvalidArgument) as caught:
            saetrack.load_job_spec(path)
        self.assertEqual(caught.exception.message,
                         f"{path}: JSON syntax error at byte 13: Expecting "
                         "property name enclosed in double quotes")
        path = self.write("list.json", "[1]")
        with self.assertRaises(saetrack.InvalidArgument) as caught:
            saetrack.load_job_spec(path)
        self.assertEqual(caught.exception.message,
                         f"{path}: a job file must hold a JSON object")
        missing = os.path.join(self.dir, "missing.json")
        with self.assertRaises(saetrack.NotFound) as caught:
            saetrack.load_job_spec(missing)
        self.assertEqual(caught.exception.message,
                         f"{missing}: cannot read job file")
        with self.assertRaises(saetrack.InvalidArgument):
            saetrack.load_job_spec(42)


class ConversionTest(unittest.TestCase):

    def test_to_dict_matches_the_cli_json_with_ints(self):
        job = job_pb2.Job(job_id="j1", state=job_pb2.JOB_STATE_RUNNING,
                          create_time_ms=1700000000123)
        job.spec.model.checkpoints.add(step=0, path="/a")
        job.spec.model.checkpoints.add(step=143000, path="/b")
        d = saetrack.to_dict(job)
        self.assertEqual(d["state"], "JOB_STATE_RUNNING")
        self.assertEqual(d["create_time_ms"], 1700000000123)
        self.assertEqual(d["spec"]["model"]["checkpoints"],
                         [{"step": 0, "path": "/a"},
                          {"step": 143000, "path": "/b"}])
        # Defaults included, unset sub-messages left out, as the CLI's --json.
        self.assertEqual(d["error"], "")
        self.assertEqual(d["update_time_ms"], 0)
        self.assertNotIn("progress", d)
        self.assertNotIn("data", d["spec"])
        self.assertEqual(d["spec"]["hooks"], [])

    def test_optional_fields_absent_and_nan_as_float(self):
        point = query_pb2.FeaturePoint(step=5, frequency=float("nan"))
        d = saetrack.to_dict(point)
        self.assertNotIn("decoder_cos_prev", d)
        self.assertTrue(math.isnan(d["frequency"]))
        point.decoder_cos_prev = 0.5
        self.assertEqual(saetrack.to_dict(point)["decoder_cos_prev"], 0.5)
        self.assertEqual(saetrack.to_dict(point)["step"], 5)

    def test_crc32c_and_safetensors(self):
        self.assertEqual(crc32c(b"123456789"), 0xE3069283)
        self.assertEqual(crc32c(b""), 0)
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        w = np.arange(6, dtype="<f4").reshape(2, 3)
        header = json.dumps({"W": {"dtype": "F32", "shape": [2, 3],
                                   "data_offsets": [0, 24]},
                             "__metadata__": {"format": "pt"}}).encode()
        path = os.path.join(directory, "t.safetensors")
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(header)) + header + w.tobytes())
        tensors = saetrack.read_safetensors(path)
        self.assertEqual(list(tensors), ["W"])
        np.testing.assert_array_equal(tensors["W"], w)


class ErrorTest(unittest.TestCase):

    def test_codes_map_to_subclasses(self):
        from saetrack._errors import error_for
        e = error_for(grpc.StatusCode.NOT_FOUND, "job x not found")
        self.assertIsInstance(e, saetrack.NotFound)
        self.assertIsInstance(e, saetrack.Error)
        self.assertEqual(e.code, grpc.StatusCode.NOT_FOUND)
        self.assertEqual(str(e), "NOT_FOUND: job x not found")
        e = error_for(grpc.StatusCode.CANCELLED, "stop")
        self.assertIs(type(e), saetrack.Error)
        self.assertEqual(e.code, grpc.StatusCode.CANCELLED)

    def test_client_arguments(self):
        with self.assertRaises(saetrack.InvalidArgument):
            saetrack.Client("127.0.0.1:1", token="a", token_file="/x")
        with self.assertRaises(saetrack.InvalidArgument) as caught:
            saetrack.Client("127.0.0.1:1", tls_cert="/c.pem")
        self.assertIn("tls_key", caught.exception.message)
        with self.assertRaises(saetrack.NotFound) as caught:
            saetrack.Client("127.0.0.1:1", tls_ca="/no/such/ca.pem")
        self.assertIn("tls_ca", caught.exception.message)

    def test_no_coordinator_is_unavailable(self):
        with socket_port() as port:
            pass  # Free the port: nothing listens there now.
        client = saetrack.Client(f"127.0.0.1:{port}", timeout=10)
        with self.assertRaises(saetrack.Unavailable) as caught:
            client.job("j1")
        self.assertEqual(caught.exception.code, grpc.StatusCode.UNAVAILABLE)


class socket_port:
    """A free loopback port (bound while inside the with block)."""

    def __enter__(self):
        import socket
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc):
        self.sock.close()


class FakeJobs(job_pb2_grpc.JobServiceServicer):
    """GetJob and WatchJob of job "j1", recording each call's metadata."""

    def __init__(self):
        self.metadata = []
        self.watch = True
        # Follow mode: the requests AddCheckpoint got, and whether step 48
        # is taken already.
        self.added = []
        self.taken = set()

    def _following(self, request, context):
        """j1 as a following job, waiting after step 32."""
        if request.job_id != "j1":
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"job {request.job_id} not found")
        job = job_pb2.Job(job_id="j1", state=job_pb2.JOB_STATE_RUNNING)
        job.spec.model.follow.dir = "/runs/live"
        job.follow.state = job_pb2.FOLLOW_STATE_WAITING
        job.follow.last_step = 32
        for step in sorted(self.taken | {0, 32}):
            job.follow.checkpoints.add(step=step, path=f"/runs/live/s{step}")
        return job

    def AddCheckpoint(self, request, context):
        job = self._following(request, context)
        self.added.append(request)
        created = request.step not in self.taken
        if request.step < 32:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"step {request.step} is older than step 32, the "
                          "latest taken")
        self.taken.add(request.step)
        return job_pb2.AddCheckpointResponse(job=self._following(request,
                                                                 context),
                                             created=created)

    def CloseJob(self, request, context):
        job = self._following(request, context)
        job.follow.state = job_pb2.FOLLOW_STATE_CLOSED
        job.follow.close_reason = "closed by request"
        return job_pb2.CloseJobResponse(job=job)

    def RefreshAnalysis(self, request, context):
        job = self._following(request, context)
        job.follow.analysis_round = 1
        job.follow.analysed_checkpoints = 2
        job.follow.analysis_running = True
        return job_pb2.RefreshAnalysisResponse(job=job)

    def GetJob(self, request, context):
        self.metadata.append(dict(context.invocation_metadata()))
        if request.job_id != "j1":
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"job {request.job_id} not found")
        return job_pb2.Job(job_id="j1", state=job_pb2.JOB_STATE_SUCCEEDED)

    def WatchJob(self, request, context):
        self.metadata.append(dict(context.invocation_metadata()))
        if not self.watch:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "no WatchJob")
        if self.watch == "stall":  # Ends the stream before the job ends.
            update = job_pb2.JobUpdate()
            update.job.job_id = "j1"
            update.job.state = job_pb2.JOB_STATE_RUNNING
            yield update
            return
        for i, state in enumerate((job_pb2.JOB_STATE_QUEUED,
                                   job_pb2.JOB_STATE_RUNNING,
                                   job_pb2.JOB_STATE_SUCCEEDED)):
            update = job_pb2.JobUpdate(tokens_done=1000 * i)
            update.job.job_id = "j1"
            update.job.state = state
            update.job.progress.tasks_total = 2
            update.job.progress.tasks_done = i
            if state == job_pb2.JOB_STATE_RUNNING:
                update.eta_seconds = 65
                update.tokens_per_second = 2500.0
            yield update


class FakeQueries(query_pb2_grpc.QueryServiceServicer):

    def __init__(self):
        self.crc_offset = 0
        # Answers as for a following job before its final analysis.
        self.provisional = False

    def GetDriftSummary(self, request, context):
        drift = query_pb2.DriftSummary(job_id=request.job_id,
                                       layer=request.layer, top_k=25)
        for i, step in enumerate((0, 10, 1000)):
            c = drift.checkpoints.add(step=step, chain_index=i, formed=i)
            c.cos_to_final.q50 = [0.2, 0.6, 1.0][i]
        if self.provisional:
            drift.provisional = True
            drift.through_step = 1000
        return drift

    def GetFeatureHistory(self, request, context):
        history = query_pb2.FeatureHistory(job_id=request.job_id, layer=2,
                                           feature_id=request.feature_id,
                                           provisional=self.provisional)
        for i, step in enumerate((0, 10, 1000)):
            p = history.points.add(step=step, chain_index=i, frequency=0.1 * i)
            if i > 0:
                p.decoder_cos_prev = 0.9
            p.decoder_cos_final = [0.2, 0.6, 1.0][i]
            if request.include_decoder:
                p.decoder.extend([float(i), 1.0, 2.0])
        return history

    def ExportSae(self, request, context):
        for name, data in (("sae_weights.safetensors", b"w" * 10),
                           ("cfg.json", b'{"d_in": 3, "d_sae": 8}')):
            yield query_pb2.ExportChunk(file=name, offset=0, data=data[:4],
                                        step=1000)
            yield query_pb2.ExportChunk(
                file=name, offset=4, data=data[4:], last=True,
                total_size=len(data), crc32c=crc32c(data) + self.crc_offset,
                step=1000)


class FakeServerTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        cls.jobs = FakeJobs()
        cls.queries = FakeQueries()
        job_pb2_grpc.add_JobServiceServicer_to_server(cls.jobs, cls.server)
        query_pb2_grpc.add_QueryServiceServicer_to_server(cls.queries,
                                                          cls.server)
        cls.port = cls.server.add_insecure_port("127.0.0.1:0")
        cls.server.start()
        cls.address = f"127.0.0.1:{cls.port}"

    @classmethod
    def tearDownClass(cls):
        cls.server.stop(None)

    def setUp(self):
        self.jobs.metadata.clear()
        self.jobs.watch = True
        self.jobs.added.clear()
        self.jobs.taken.clear()
        self.queries.crc_offset = 0
        self.queries.provisional = False
        self.dir = tempfile.mkdtemp(prefix="saetrack-python-unit.")
        self.addCleanup(shutil.rmtree, self.dir)

    def test_the_token_goes_with_every_call(self):
        client = saetrack.Client(self.address, token="s3cret")
        client.job("j1")
        list(client.watch("j1", progress=False))
        self.assertEqual(len(self.jobs.metadata), 2)
        for metadata in self.jobs.metadata:
            self.assertEqual(metadata["authorization"], "Bearer s3cret")

    def test_token_file_and_no_token(self):
        path = os.path.join(self.dir, "token")
        with open(path, "w") as f:
            f.write("  from-file\n")
        saetrack.Client(self.address, token_file=path).job("j1")
        saetrack.Client(self.address).job("j1")
        self.assertEqual(self.jobs.metadata[0]["authorization"],
                         "Bearer from-file")
        self.assertNotIn("authorization", self.jobs.metadata[1])
        with open(path, "w") as f:
            f.write("\n")
        with self.assertRaises(saetrack.InvalidArgument):
            saetrack.Client(self.address, token_file=path)

    def test_not_found_carries_the_code_and_message(self):
        with self.assertRaises(saetrack.NotFound) as caught:
            saetrack.Client(self.address).job("j2")
        self.assertEqual(caught.exception.code, grpc.StatusCode.NOT_FOUND)
        self.assertEqual(caught.exception.message, "job j2 not found")

    def test_watch_yields_every_update_and_draws_a_bar(self):
        import io
        stream = io.StringIO()
        client = saetrack.Client(self.address)
        updates = list(client.watch("j1", progress=True, stream=stream))
        self.assertEqual([u["job"]["state"] for u in updates],
                         ["JOB_STATE_QUEUED", "JOB_STATE_RUNNING",
                          "JOB_STATE_SUCCEEDED"])
        self.assertEqual([u["tokens_done"] for u in updates], [0, 1000, 2000])
        self.assertEqual(updates[1]["eta_seconds"], 65)
        self.assertNotIn("eta_seconds", updates[2])
        text = stream.getvalue()
        self.assertIn("j1 running   [############............] 1/2", text)
        self.assertIn("2.5k tok/s  eta 1m05s", text)
        self.assertTrue(text.endswith("2/2  tokens 2.0k\n"))
        self.assertEqual(client.wait("j1")["state"], "JOB_STATE_SUCCEEDED")

    def test_watch_polls_a_coordinator_without_watch_job(self):
        self.jobs.watch = False
        updates = list(saetrack.Client(self.address).watch("j1",
                                                           progress=False))
        self.assertEqual(len(updates), 1)
        self.assertEqual(updates[0]["job"]["state"], "JOB_STATE_SUCCEEDED")

    def test_watch_past_its_timeout_is_deadline_exceeded(self):
        self.jobs.watch = "stall"
        updates = []
        with self.assertRaises(saetrack.DeadlineExceeded) as caught:
            for update in saetrack.Client(self.address).watch(
                    "j1", progress=False, timeout=0.5):
                updates.append(update)
        self.assertEqual(caught.exception.code,
                         grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertEqual(caught.exception.message,
                         "job j1 still running after timeout=0.5")
        # The stream ended early; the deadline passed before it was
        # followed again.
        self.assertEqual([u["job"]["state"] for u in updates],
                         ["JOB_STATE_RUNNING"])

    def test_feature_curves_with_nan_where_absent(self):
        f = saetrack.Client(self.address).feature("j1", 2, 7, decoder=True)
        self.assertEqual(f.feature_id, 7)
        self.assertEqual(list(f.curves.index), [0, 10, 1000])
        self.assertTrue(math.isnan(f.curves["decoder_cos_prev"].iloc[0]))
        self.assertEqual(list(f.curves["decoder_cos_final"]), [0.2, 0.6, 1.0])
        self.assertTrue(math.isnan(f.curves["progress_activation"].iloc[2]))
        self.assertEqual(f.decoder.shape, (3, 3))
        np.testing.assert_array_equal(f.decoder[:, 0], [0, 1, 2])
        self.assertIsNone(f.summary)
        self.assertIsNone(f.contexts)

    def test_tables_without_pandas_are_dicts_of_numpy_arrays(self):
        saved = _convert._pd
        _convert._pd = None
        try:
            f = saetrack.Client(self.address).feature("j1", 2, 7)
        finally:
            _convert._pd = saved
        self.assertIsInstance(f.curves, dict)
        self.assertEqual(list(f.curves)[0], "step")
        np.testing.assert_array_equal(f.curves["step"], [0, 10, 1000])
        self.assertEqual(f.curves["step"].dtype, np.int64)
        self.assertEqual(f.curves["chain_index"].dtype, np.int64)
        self.assertTrue(np.isnan(f.curves["decoder_cos_prev"][0]))

    def test_add_checkpoint_sends_an_absolute_path_and_says_if_created(self):
        client = saetrack.Client(self.address)
        job = client.add_checkpoint("j1", 48, "runs/./live/s48")
        self.assertIsInstance(job, saetrack.CheckpointAdded)
        self.assertTrue(job.created)
        self.assertEqual(self.jobs.added[0].path,
                         os.path.join(os.getcwd(), "runs", "live", "s48"))
        self.assertEqual(self.jobs.added[0].step, 48)
        self.assertEqual([c["step"] for c in job["follow"]["checkpoints"]],
                         [0, 32, 48])
        self.assertEqual(job["follow"]["state"], "FOLLOW_STATE_WAITING")
        again = client.add_checkpoint("j1", 48, "/runs/live/s48")
        self.assertFalse(again.created)
        self.assertEqual(self.jobs.added[1].path, "/runs/live/s48")
        with self.assertRaises(saetrack.FailedPrecondition) as caught:
            client.add_checkpoint("j1", 8, "/runs/live/s8")
        self.assertEqual(caught.exception.message,
                         "step 8 is older than step 32, the latest taken")
        with self.assertRaises(saetrack.NotFound):
            client.add_checkpoint("j2", 48, "/runs/live/s48")

    def test_close_job_and_refresh_analysis_return_the_job(self):
        client = saetrack.Client(self.address)
        closed = client.close_job("j1")
        self.assertEqual(closed["job_id"], "j1")
        self.assertEqual(closed["follow"]["state"], "FOLLOW_STATE_CLOSED")
        self.assertEqual(closed["follow"]["close_reason"], "closed by request")
        refreshed = client.refresh_analysis("j1")
        self.assertEqual(refreshed["follow"]["analysis_round"], 1)
        self.assertTrue(refreshed["follow"]["analysis_running"])
        with self.assertRaises(saetrack.NotFound) as caught:
            client.close_job("j2")
        self.assertEqual(caught.exception.message, "job j2 not found")
        with self.assertRaises(saetrack.NotFound):
            client.refresh_analysis("j2")

    def test_drift_and_feature_say_whether_they_are_provisional(self):
        client = saetrack.Client(self.address)
        drift = client.drift("j1", 2)
        self.assertFalse(drift.provisional)
        self.assertIsNone(drift.through_step)
        self.assertEqual(list(drift.checkpoints["cos_to_final_q50"]),
                         [0.2, 0.6, 1.0])
        self.assertFalse(client.feature("j1", 2, 7).provisional)
        self.queries.provisional = True
        drift = client.drift("j1", 2)
        self.assertTrue(drift.provisional)
        self.assertEqual(drift.through_step, 1000)
        self.assertTrue(client.feature("j1", 2, 7).provisional)

    def test_export_writes_the_files(self):
        out = os.path.join(self.dir, "sae")
        result = saetrack.Client(self.address).export_sae("j1", 2, None, out)
        self.assertEqual(result["step"], 1000)
        self.assertEqual(result["files"],
                         ["cfg.json", "sae_weights.safetensors"])
        self.assertEqual((result["d_in"], result["d_sae"]), (3, 8))
        with open(os.path.join(out, "sae_weights.safetensors"), "rb") as f:
            self.assertEqual(f.read(), b"w" * 10)
        self.assertEqual(sorted(os.listdir(out)),
                         ["cfg.json", "sae_weights.safetensors"])

    def test_export_with_a_bad_checksum_writes_nothing(self):
        self.queries.crc_offset = 1
        out = os.path.join(self.dir, "sae")
        with self.assertRaises(saetrack.DataLoss) as caught:
            saetrack.Client(self.address).export_sae("j1", 2, None, out)
        self.assertIn("CRC-32C mismatch", caught.exception.message)
        self.assertIn("sae_weights.safetensors", caught.exception.message)
        self.assertFalse(os.path.exists(out))



class TlsTest(unittest.TestCase):
    """TLS with a CA file, and mutual TLS, against a fake server whose
    certificates openssl makes for the test."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="saetrack-python-tls.")
        cls.ca_key, cls.ca = cls._path("ca.key"), cls._path("ca.pem")
        cls._openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes",
                     "-keyout", cls.ca_key, "-out", cls.ca, "-days", "2",
                     "-subj", "/CN=saetrack test CA")
        cls.server_key, cls.server_cert = cls._signed("server", "localhost")
        cls.client_key, cls.client_cert = cls._signed("client", "researcher")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir)

    @classmethod
    def _path(cls, name):
        return os.path.join(cls.dir, name)

    @classmethod
    def _openssl(cls, *args):
        import subprocess
        subprocess.run(["openssl", *args], check=True, capture_output=True,
                       timeout=60)

    @classmethod
    def _signed(cls, name, common_name):
        key, csr, cert = (cls._path(f"{name}.key"), cls._path(f"{name}.csr"),
                          cls._path(f"{name}.pem"))
        ext = cls._path(f"{name}.ext")
        with open(ext, "w") as f:
            f.write(f"subjectAltName=DNS:{common_name}\n")
        cls._openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                     "-out", csr, "-subj", f"/CN={common_name}")
        cls._openssl("x509", "-req", "-in", csr, "-CA", cls.ca, "-CAkey",
                     cls.ca_key, "-CAcreateserial", "-out", cert, "-days", "2",
                     "-extfile", ext)
        return key, cert

    def _read(self, path):
        with open(path, "rb") as f:
            return f.read()

    def _start(self, require_client_auth):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        jobs = FakeJobs()
        job_pb2_grpc.add_JobServiceServicer_to_server(jobs, server)
        credentials = grpc.ssl_server_credentials(
            [(self._read(self.server_key), self._read(self.server_cert))],
            root_certificates=self._read(self.ca),
            require_client_auth=require_client_auth)
        port = server.add_secure_port("localhost:0", credentials)
        server.start()
        self.addCleanup(server.stop, None)
        return f"localhost:{port}", jobs

    def test_tls_with_the_ca_file_and_the_token(self):
        address, jobs = self._start(require_client_auth=False)
        client = saetrack.Client(address, tls_ca=self.ca, token="t0k")
        self.assertEqual(client.job("j1")["job_id"], "j1")
        self.assertEqual(jobs.metadata[0]["authorization"], "Bearer t0k")
        # Without TLS the same server is unreachable.
        with self.assertRaises(saetrack.Unavailable):
            saetrack.Client(address, timeout=10).job("j1")

    def test_mutual_tls(self):
        address, _ = self._start(require_client_auth=True)
        client = saetrack.Client(address, tls_ca=self.ca,
                                 tls_cert=self.client_cert,
                                 tls_key=self.client_key)
        self.assertEqual(client.job("j1")["state"], "JOB_STATE_SUCCEEDED")
        with self.assertRaises(saetrack.Unavailable):
            saetrack.Client(address, tls_ca=self.ca, timeout=10).job("j1")


if __name__ == "__main__":
    unittest.main(verbosity=2)
