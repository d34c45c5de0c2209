"""saetrack's Python client against real processes over loopback: a tiny
GPT-NeoX trained by saetrack-tinylm, saetrack-coordinator on a temporary
RocksDB directory, one saetrack-worker, and the saetrack CLI for comparison.

Environment (set by ctest): SAETRACK_BIN_DIR (the built binaries),
SAETRACK_CORPUS (text to train the tiny LM on), SAETRACK_EXAMPLE (the
example script), PYTHONPATH (the build tree's python/ directory).
"""

import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import unittest

import grpc
import numpy as np

import saetrack

BIN_DIR = os.environ.get("SAETRACK_BIN_DIR", "build/bin")
CORPUS = os.environ.get("SAETRACK_CORPUS", "deploy/demo/tinyshakespeare.txt")
EXAMPLE = os.environ.get("SAETRACK_EXAMPLE",
                         "client/python/examples/track_drift.py")
STEPS = [0, 16, 64, 256]
LAYER = 1
D_MODEL = 32
D_SAE = D_MODEL * 4
REQUEST_ID = "python-e2e"


def wait_for(condition, seconds: float, what: str):
    """Polls `condition` until it returns a true value (returned) or
    `seconds` pass (AssertionError naming `what`)."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.05)


def job_file_text(name: str = "python-e2e", tokens_first: int = 60000) -> str:
    """A small job over the tiny LM, with paths relative to the job file."""
    return json.dumps({
        "name": name,
        "model": {"architecture": "gpt_neox", "checkpoints": [
            {"step": s, "path": f"lm/checkpoints/step-{s}"} for s in STEPS]},
        "data": {"tokens_path": "lm/tokens.u16", "context_length": 32,
                 "tokenizer_path": "lm/tokenizer.json"},
        "hooks": [{"layer": LAYER}],
        "sae": {"expansion_factor": 4, "l1_coefficient": 1e-3,
                "lr_first": 1e-3, "lr_later": 3e-4, "warmup_steps_first": 20,
                "warmup_steps_later": 5, "batch_size": 512, "seed": 7},
        "schedule": {"tokens_first": tokens_first, "tokens_later": 12000,
                     "eval_tokens": 4096, "lm_eval_tokens": 2048,
                     "reference_checkpoints": 2},
        "analysis": {"analysis_tokens": 8192, "top_k": 10},
    }, indent=2)


def read_safetensors_header(path: str):
    """The JSON header and the data of a .safetensors file, read by hand."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


class PythonClientEndToEndTest(unittest.TestCase):
    """One job trained once for the whole class (setUpClass)."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="saetrack-python-e2e.")
        cls.processes = []
        try:
            cls._start()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def _start(cls):
        lm = subprocess.run(
            [os.path.join(BIN_DIR, "saetrack-tinylm"), "--corpus", CORPUS,
             "--out", os.path.join(cls.dir, "lm"), "--steps",
             ",".join(map(str, STEPS)), "--d_model", str(D_MODEL), "--layers",
             "2", "--heads", "4", "--ctx", "32", "--batch", "16", "--seed",
             "1", "--threads", "1"],
            capture_output=True, text=True, timeout=300)
        assert lm.returncode == 0, lm.stderr
        port_file = os.path.join(cls.dir, "ports")
        cls.coordinator = cls._spawn(
            "coordinator",
            [os.path.join(BIN_DIR, "saetrack-coordinator"), "--data_dir",
             os.path.join(cls.dir, "data"), "--listen", "127.0.0.1:0",
             "--metrics_listen", "127.0.0.1:0", "--port_file", port_file])

        def ports():
            try:
                with open(port_file) as f:
                    text = f.read()
            except OSError:
                return None
            if "metrics=" not in text:
                return None
            return dict(line.split("=", 1) for line in text.split()
                        if "=" in line)

        port = wait_for(ports, 30, "the port file")["grpc"]
        cls.address = f"127.0.0.1:{port}"
        cls.worker = cls._spawn(
            "worker",
            [os.path.join(BIN_DIR, "saetrack-worker"), "--coordinator",
             cls.address, "--threads", "1", "--metrics_listen", "127.0.0.1:0",
             "--lease_wait", "1s"])
        cls.job_path = os.path.join(cls.dir, "job.json")
        with open(cls.job_path, "w") as f:
            f.write(job_file_text())
        cls.client = saetrack.Client(cls.address)
        cls.submitted = cls.client.submit(cls.job_path, request_id=REQUEST_ID)
        cls.job_id = cls.submitted["job_id"]
        cls.updates = list(cls.client.watch(cls.job_id, timeout=600,
                                            progress=False))
        final = cls.updates[-1]["job"]
        assert final["state"] == "JOB_STATE_SUCCEEDED", (
            final, cls._log("worker"), cls._log("coordinator"))

    @classmethod
    def _spawn(cls, name, args):
        with open(os.path.join(cls.dir, f"{name}.log"), "wb") as err:
            process = subprocess.Popen(
                args, stdout=subprocess.DEVNULL, stderr=err,
                env=dict(os.environ, OMP_NUM_THREADS="1"))
        cls.processes.append(process)
        return process

    @classmethod
    def _log(cls, name) -> str:
        try:
            with open(os.path.join(cls.dir, f"{name}.log"),
                      errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    @classmethod
    def tearDownClass(cls):
        for process in reversed(cls.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if hasattr(cls, "client"):
            cls.client.close()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def cli(self, *args) -> str:
        result = subprocess.run(
            [os.path.join(BIN_DIR, "saetrack"), *args, "--coordinator",
             self.address], capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout

    # --- jobs ------------------------------------------------------------

    def test_submit_again_with_the_request_id_returns_the_same_job(self):
        self.assertTrue(self.submitted.created)
        self.assertEqual(self.submitted["request_id"], REQUEST_ID)
        again = self.client.submit(self.job_path, request_id=REQUEST_ID)
        self.assertFalse(again.created)
        self.assertEqual(again["job_id"], self.job_id)
        self.assertEqual(again["state"], "JOB_STATE_SUCCEEDED")
        waited = self.client.submit(self.job_path, request_id=REQUEST_ID,
                                    wait=True, progress=False, timeout=60)
        self.assertFalse(waited.created)
        self.assertEqual(waited["job_id"], self.job_id)
        self.assertEqual(waited["progress"]["tasks_done"], len(STEPS))
        # The same spec as a dict, relative paths resolved against the
        # current directory instead: another spec, so ALREADY_EXISTS.
        with self.assertRaises(saetrack.AlreadyExists) as caught:
            self.client.submit(json.loads(job_file_text()),
                               request_id=REQUEST_ID)
        self.assertEqual(caught.exception.code, grpc.StatusCode.ALREADY_EXISTS)
        self.assertIn(REQUEST_ID, caught.exception.message)

    def test_job_file_paths_resolve_against_its_directory(self):
        spec = self.client.job(self.job_id)["spec"]
        self.assertEqual(spec["data"]["tokens_path"],
                         os.path.join(self.dir, "lm", "tokens.u16"))
        self.assertEqual(
            [c["path"] for c in spec["model"]["checkpoints"]],
            [os.path.join(self.dir, "lm", "checkpoints", f"step-{s}")
             for s in STEPS])

    def test_watch_streams_progress_to_the_terminal_state(self):
        self.assertGreaterEqual(len(self.updates), 2)
        self.assertEqual(self.updates[0]["job"]["job_id"], self.job_id)
        states = [u["job"]["state"] for u in self.updates]
        self.assertEqual(states.count("JOB_STATE_SUCCEEDED"), 1)
        done = [u["tokens_done"] for u in self.updates]
        self.assertTrue(all(isinstance(t, int) for t in done))
        self.assertEqual(done, sorted(done))
        progress = self.updates[-1]["job"]["progress"]
        self.assertEqual(progress["tasks_total"], len(STEPS))
        self.assertEqual(progress["tasks_done"], len(STEPS))
        # Watching a finished job: its one terminal update, then the end.
        again = list(self.client.watch(self.job_id, progress=False))
        self.assertEqual(len(again), 1)
        self.assertEqual(again[0]["job"]["state"], "JOB_STATE_SUCCEEDED")

    def test_progress_bar_draws_on_the_given_stream(self):
        import io
        stream = io.StringIO()
        list(self.client.watch(self.job_id, progress=True, stream=stream))
        self.assertIn(f"{self.job_id} succeeded", stream.getvalue())
        self.assertIn(f"{len(STEPS) * 2 + 1}/{len(STEPS) * 2 + 1}",
                      stream.getvalue())

    def test_job_dict_equals_the_cli_status_json(self):
        mine = self.client.job(self.job_id)
        cli = json.loads(self.cli("status", self.job_id, "--json"))
        # The CLI prints proto JSON, 64-bit integers as strings; the client
        # gives ints. Everything else is equal, field by field.
        self.assertEqual(mine, self._ints_like(cli, mine))
        self.assertEqual(mine["spec"]["model"]["checkpoints"][0]["step"], 0)
        self.assertIsInstance(mine["create_time_ms"], int)
        self.assertEqual(mine["state"], "JOB_STATE_SUCCEEDED")

    def _ints_like(self, cli, mine):
        """`cli` with each string that is an int in `mine` made an int."""
        if isinstance(cli, dict):
            self.assertEqual(sorted(cli), sorted(mine))
            return {k: self._ints_like(v, mine[k]) for k, v in cli.items()}
        if isinstance(cli, list):
            self.assertEqual(len(cli), len(mine))
            return [self._ints_like(a, b) for a, b in zip(cli, mine)]
        if isinstance(cli, str) and isinstance(mine, int):
            return int(cli)
        return cli

    def test_jobs_lists_the_job(self):
        jobs = self.client.jobs()
        self.assertIn(self.job_id, [j["job_id"] for j in jobs])

    def test_cancel_of_a_finished_job_is_a_failed_precondition(self):
        with self.assertRaises(saetrack.FailedPrecondition) as caught:
            self.client.cancel(self.job_id)
        self.assertEqual(caught.exception.code,
                         grpc.StatusCode.FAILED_PRECONDITION)

    # --- queries ---------------------------------------------------------

    def test_metrics_one_row_per_checkpoint_indexed_by_step(self):
        m = self.client.metrics(self.job_id, LAYER)
        self.assertEqual(list(m.index), STEPS)
        self.assertEqual(m.index.name, "step")
        self.assertEqual(list(m["chain_index"]), [0, 1, 2, 3])
        # tokens_first 60000 in whole batches of 512.
        self.assertEqual(m["tokens_trained"].iloc[0], 118 * 512)
        self.assertTrue(all(m["d_sae"] == D_SAE))
        self.assertTrue(all((m["fvu"] > 0) & (m["fvu"] < 1.5)))
        self.assertTrue(math.isnan(m["median_decoder_cos_prev"].iloc[0]))
        self.assertFalse(any(np.isnan(m["median_decoder_cos_prev"].iloc[1:])))
        self.assertFalse(any(np.isnan(m["loss_recovered"])))
        # lm_eval_tokens 2048: 64 contexts of 32, 31 predicted tokens each.
        self.assertEqual(m["lm_tokens"].iloc[0], 64 * 31)
        self.assertEqual(list(m["has_reference"]), [True, False, False, True])
        self.assertEqual(len(m["density_histogram"].iloc[0]), 15)

    def test_quality_checks_at_the_reference_checkpoints(self):
        q = self.client.quality(self.job_id, LAYER)
        self.assertEqual(list(q.checkpoints.index), [STEPS[0], STEPS[-1]])
        self.assertEqual(list(q.references.index), [STEPS[0], STEPS[-1]])
        self.assertEqual(list(q.references["seed"]), [8, 8])
        self.assertTrue(all(q.references["matched"] > 0))
        self.assertGreaterEqual(len(q.verdicts), 2)
        self.assertEqual(set(q.verdicts[0]),
                         {"check", "step", "passed", "verdict"})

    def test_drift_quantiles_per_checkpoint(self):
        d = self.client.drift(self.job_id, LAYER)
        self.assertEqual(list(d.checkpoints.index), STEPS)
        # Every live feature's decoder equals itself at the final checkpoint.
        self.assertAlmostEqual(d.checkpoints["cos_to_final_q50"].iloc[-1], 1.0,
                               places=5)
        self.assertTrue(
            math.isnan(d.checkpoints["cos_to_previous_q50"].iloc[0]))
        self.assertIsNotNone(d.phases)
        self.assertIn(d.phases["segments"], (1, 2, 3))
        self.assertEqual(sum(k["count"] for k in d.kinds), D_SAE)
        self.assertEqual(d.settings["analysis_tokens"], 8192)
        self.assertEqual(d.settings["top_k"], 10)

    def test_features_every_page_with_filters(self):
        everything = self.client.features(self.job_id, LAYER)
        self.assertEqual(list(everything.index), list(range(D_SAE)))
        self.assertEqual(everything.attrs["total"], D_SAE)
        paged = self.client.features(self.job_id, LAYER, page_size=7)
        self.assertTrue(everything.equals(paged))
        limited = self.client.features(self.job_id, LAYER, order="frequency",
                                       limit=10, page_size=3)
        self.assertEqual(len(limited), 10)
        freqs = list(limited["final_frequency"])
        self.assertEqual(freqs, sorted(freqs, reverse=True))
        self.assertEqual(freqs[0], everything["final_frequency"].max())
        kinds = {k["kind"]: k["count"] for k in
                 self.client.drift(self.job_id, LAYER).kinds}
        dead = self.client.features(self.job_id, LAYER, kind="dead")
        self.assertEqual(len(dead), kinds.get("FEATURE_KIND_DEAD", 0))
        self.assertTrue(all(dead["kind"] == "FEATURE_KIND_DEAD"))
        concept = self.client.features(self.job_id, LAYER, kind="concept")
        self.assertEqual(len(concept),
                         kinds.get("FEATURE_KIND_CONCEPT_LEVEL", 0))
        formed = self.client.features(self.job_id, LAYER, formed_from=16,
                                      formed_to=64)
        self.assertTrue(all((formed["formation_step"] >= 16) &
                            (formed["formation_step"] <= 64)))

    def test_feature_history_curves_decoder_and_contexts(self):
        top = self.client.features(self.job_id, LAYER, order="frequency",
                                   limit=1).index[0]
        f = self.client.feature(self.job_id, LAYER, int(top), contexts=True,
                                decoder=True)
        self.assertEqual(f.feature_id, top)
        self.assertEqual(list(f.curves.index), STEPS)
        self.assertEqual(f.summary["feature_id"], top)
        self.assertEqual(f.decoder.shape, (len(STEPS), D_MODEL))
        self.assertEqual(f.decoder.dtype, np.float32)
        # decoder_cos_final is the cosine of each row with the last.
        rows = f.decoder / np.linalg.norm(f.decoder, axis=1, keepdims=True)
        np.testing.assert_allclose(f.curves["decoder_cos_final"].to_numpy(),
                                   rows @ rows[-1], atol=1e-4)
        np.testing.assert_allclose(
            f.curves["decoder_cos_prev"].to_numpy()[1:],
            np.sum(rows[1:] * rows[:-1], axis=1), atol=1e-4)
        self.assertEqual(len(f.contexts), len(STEPS))
        self.assertEqual(len(f.contexts[-1]), 10)
        self.assertIn("[[", f.contexts[-1][0]["text"])
        # Logit effects: the default 10 per side at every checkpoint, sorted,
        # decoded with the job's tokenizer.
        self.assertEqual(len(f.logit_effects), len(STEPS))
        for effects in f.logit_effects:
            promoted = [e["value"] for e in effects["promoted"]]
            suppressed = [e["value"] for e in effects["suppressed"]]
            self.assertEqual(len(promoted), 10)
            self.assertEqual(len(suppressed), 10)
            self.assertEqual(promoted, sorted(promoted, reverse=True))
            self.assertEqual(suppressed, sorted(suppressed))
            self.assertGreater(promoted[0], suppressed[0])
            decoded = [e["token"] for e in effects["promoted"]
                       + effects["suppressed"] if e["token"]]
            self.assertGreaterEqual(len(decoded), 15)
        plain = self.client.feature(self.job_id, LAYER, int(top))
        self.assertEqual(plain.logit_effects, f.logit_effects)
        self.assertIsNone(plain.decoder)
        self.assertIsNone(plain.contexts)
        self.assertTrue(plain.curves.equals(f.curves))

    def test_export_sae_reloads_with_numpy(self):
        out = os.path.join(self.dir, "export-final")
        exported = self.client.export_sae(self.job_id, LAYER, None, out)
        self.assertEqual(exported["step"], STEPS[-1])
        self.assertEqual(exported["files"],
                         ["cfg.json", "sae_weights.safetensors"])
        with open(os.path.join(out, "cfg.json")) as f:
            cfg = json.load(f)
        self.assertEqual((cfg["d_in"], cfg["d_sae"]), (D_MODEL, D_SAE))
        header, data = read_safetensors_header(
            os.path.join(out, "sae_weights.safetensors"))
        shapes = {k: v["shape"] for k, v in header.items()
                  if k != "__metadata__"}
        self.assertEqual(shapes["W_enc"], [D_MODEL, D_SAE])
        self.assertEqual(shapes["W_dec"], [D_SAE, D_MODEL])
        self.assertEqual(shapes["b_enc"], [D_SAE])
        self.assertEqual(shapes["b_dec"], [D_MODEL])
        begin, end = header["W_dec"]["data_offsets"]
        self.assertEqual(header["W_dec"]["dtype"], "F32")
        w_dec = np.frombuffer(data[begin:end], dtype="<f4").reshape(
            D_SAE, D_MODEL)
        self.assertTrue(np.all(np.isfinite(w_dec)))
        tensors = saetrack.read_safetensors(
            os.path.join(out, "sae_weights.safetensors"))
        np.testing.assert_array_equal(tensors["W_dec"], w_dec)
        # The exported decoder row points where the history's final one does.
        f = self.client.feature(self.job_id, LAYER, 0, decoder=True)
        a, b = w_dec[0], f.decoder[-1]
        self.assertGreater(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)),
                           0.999)

        earlier = self.client.export_sae(self.job_id, LAYER, 16,
                                         os.path.join(self.dir, "export-16"))
        self.assertEqual(earlier["step"], 16)
        with self.assertRaises(saetrack.NotFound):
            self.client.export_sae(self.job_id, LAYER, 17,
                                   os.path.join(self.dir, "export-17"))
        self.assertFalse(os.path.exists(os.path.join(self.dir, "export-17")))

    # --- errors ----------------------------------------------------------

    def test_unknown_job_and_bad_layer_raise_with_the_code(self):
        with self.assertRaises(saetrack.NotFound) as caught:
            self.client.job("no-such-job")
        self.assertEqual(caught.exception.code, grpc.StatusCode.NOT_FOUND)
        self.assertIn("no-such-job", caught.exception.message)
        self.assertIsInstance(caught.exception, saetrack.Error)
        with self.assertRaises(saetrack.NotFound) as caught:
            self.client.metrics("no-such-job", LAYER)
        with self.assertRaises(saetrack.NotFound) as caught:
            self.client.metrics(self.job_id, 7)
        self.assertIn("layer 7", caught.exception.message)
        with self.assertRaises(saetrack.NotFound) as caught:
            self.client.feature(self.job_id, LAYER, D_SAE + 5)
        self.assertIn(str(D_SAE + 5), caught.exception.message)
        with self.assertRaises(saetrack.InvalidArgument) as caught:
            self.client.features(self.job_id, LAYER, kind="bogus")
        self.assertIn("kind", caught.exception.message)

    def test_bad_specs_raise_invalid_argument_naming_the_field(self):
        spec = json.loads(job_file_text())
        spec["model"]["checkpoints"][1]["step"] = "sixteen"
        with self.assertRaises(saetrack.InvalidArgument) as caught:
            self.client.submit(spec)
        self.assertIn("model.checkpoints[1].step", caught.exception.message)
        spec = json.loads(job_file_text())
        spec["hooks"] = [{"layer": -1}]
        with self.assertRaises(saetrack.InvalidArgument) as caught:
            self.client.submit(spec, request_id="bad-layer")
        self.assertIn("spec.hooks[0].layer", caught.exception.message)
        with self.assertRaises(saetrack.NotFound):
            self.client.submit(os.path.join(self.dir, "missing.json"))
        ids = [j["job_id"] for j in self.client.jobs()]
        self.assertEqual(ids, [self.job_id])

    # --- the example -----------------------------------------------------

    def test_example_plots_a_feature_drift_png(self):
        png = os.path.join(self.dir, "drift.png")
        result = subprocess.run(
            [sys.executable, EXAMPLE, "--coordinator", self.address,
             "--job-file", self.job_path, "--request-id", REQUEST_ID,
             "--layer", str(LAYER), "--out", png],
            capture_output=True, text=True, timeout=300,
            env=dict(os.environ, MPLBACKEND="Agg"))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(self.job_id, result.stdout)
        self.assertGreater(os.path.getsize(png), 5000)
        import matplotlib.image
        pixels = matplotlib.image.imread(png)
        self.assertGreater(pixels.shape[0] * pixels.shape[1], 100000)
        self.assertGreater(float(pixels[..., :3].std()), 0.05)


if __name__ == "__main__":
    unittest.main(verbosity=2)
