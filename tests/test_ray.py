"""llmzip on a Ray cluster: a local cluster with 2 worker slots, started once for the module.

Checks that bench results and compressed files are exactly a local run's, that a worker killed
mid-task is survived with exact results, that Ctrl-C leaves no output and cancels the tasks,
and that a worker whose model differs, or a missing Ray, gives one clear line.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray

from conftest import SAMPLE_TEXT, default_sigint
from llmzip import api, bench, cluster
from llmzip.cli import main

BITS_FIELDS = ["scope", "corpus", "file", "compressor", "kind", "raw_bytes", "compressed_bytes", "bits_per_byte",
               "cross_entropy_bits_per_byte", "model_coded_bytes", "tokens", "verified", "sha256", "note"]


@pytest.fixture(scope="module")
def address():
    """A local Ray cluster of 2 worker slots; tasks take one each, so 2 worker processes run them."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def prose(size: int, seed: int) -> bytes:
    words = SAMPLE_TEXT.replace("\n", " ").split(" ")
    rng = random.Random(seed)
    lines = []
    while sum(map(len, lines)) < size:
        lines.append(" ".join(rng.choice(words) for _ in range(rng.randrange(4, 14))) + "\n")
    return "".join(lines).encode()[:size]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ray") / "corpus"
    directory.mkdir()
    (directory / "long.txt").write_bytes(prose(2500, 1))  # cut into shards below
    (directory / "short.txt").write_bytes(prose(300, 2))
    (directory / "chinese.txt").write_text("红楼梦是中国古典小说。\n" * 20, encoding="utf-8")
    return directory


def ray_processes(title: str) -> list[int]:
    """This test's worker processes running a task of this function now (Ray names them ray::FUNCTION).

    Only descendants of this process (the local cluster's raylet started them), never another
    user's Ray workers on the same machine."""
    found = []
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        pid = int(path.split("/")[2])
        try:
            with open(path, "rb") as stream:
                if stream.read().split(b"\0")[0].strip() == f"ray::{title}".encode() and is_descendant(pid):
                    found.append(pid)
        except OSError:
            continue
    return found


def is_descendant(pid: int) -> bool:
    while pid > 1:
        with open(f"/proc/{pid}/stat", "rb") as stream:
            pid = int(stream.read().rsplit(b")", 1)[1].split()[1])  # the parent's id
        if pid == os.getpid():
            return True
    return False


def bits_rows(out: Path) -> list[dict]:
    rows = json.loads((out / "results.json").read_text(encoding="utf-8"))["rows"]
    return [{name: row[name] for name in BITS_FIELDS} for row in rows]


def bits_table(out: Path) -> str:
    markdown = (out / "results.md").read_text(encoding="utf-8")
    return markdown[markdown.index("## Bits per byte"):markdown.index("## Details")]


# -- shards ---------------------------------------------------------------------------------------


def test_shards_cut_at_line_ends_and_their_streams_decode_as_the_whole_file(tiny_model):
    data = prose(2500, 1)
    shards = bench.split_shards(data, 1000)
    assert b"".join(shards) == data and len(shards) == 3
    assert all(len(shard) <= 1000 and shard.endswith(b"\n") for shard in shards[:-1])
    text = "红楼梦是中国古典小说。".encode() * 40  # no line end: cuts fall on character starts
    assert all(shard.decode() for shard in bench.split_shards(text, 100))
    assert bench.split_shards(data, None) == [data] == bench.split_shards(data, len(data))
    # Each shard is its own stream, so a file's row is the exact size of a real .llmz of the whole file.
    streams = [api.compress(shard, model=tiny_model) for shard in shards]
    assert api.decompress(b"".join(streams), model=tiny_model) == data


# -- bench ----------------------------------------------------------------------------------------


def test_bench_on_ray_equals_the_local_run(address, corpus, tiny_model, tmp_path):
    common = ["bench", str(corpus), "--models", tiny_model, "--baselines", "gzip,xz", "--model-only",
              "--shard-bytes", "1000", "-q"]
    assert main(common + ["--out", str(tmp_path / "local"), "--no-plots"]) == 0
    assert main(common + ["--out", str(tmp_path / "ray"), "--ray", address]) == 0
    local, remote = bits_rows(tmp_path / "local"), bits_rows(tmp_path / "ray")
    assert remote == local
    assert bits_table(tmp_path / "ray") == bits_table(tmp_path / "local")
    long_rows = [row for row in remote if row["file"] == "long.txt"]
    assert long_rows and all(row["note"] == "sum of 3 shards of at most 1,000 bytes" for row in long_rows)
    assert {row["scope"] for row in remote} == {"file", "corpus"} and all(row["verified"] for row in remote)
    for plot in ("bits_per_byte.png", "scaling.png"):
        assert (tmp_path / "ray" / plot).read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "ray" / "results.csv").read_text(encoding="utf-8").count("\n") == len(remote) + 1
    # Run again: everything comes from the cache the first Ray run wrote.
    assert main(common + ["--out", str(tmp_path / "ray"), "--ray", address, "--no-plots"]) == 0
    document = json.loads((tmp_path / "ray" / "results.json").read_text(encoding="utf-8"))
    assert all(row["cached"] for row in document["rows"])
    assert bits_rows(tmp_path / "ray") == local


def kill_one_worker_mid_task(function: str, killed: list, into: float = 0.3) -> threading.Thread:
    """A thread that SIGKILLs the first worker seen running `function`, once it is `into` seconds
    into the task; it appends the pid to `killed`, and stops when something else is appended."""

    def watch():
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            running = ray_processes(function)
            if running:
                time.sleep(into)  # into the task: the model is loaded and coding has begun
                if running[0] in ray_processes(function):
                    os.kill(running[0], signal.SIGKILL)
                    killed.append(running[0])
            time.sleep(0.02)

    thread = threading.Thread(target=watch)
    thread.start()
    return thread


def test_a_worker_killed_mid_task_is_survived(address, tmp_path):
    (tmp_path / "a.txt").write_bytes(prose(12000, 3))
    (tmp_path / "b.txt").write_bytes(prose(12000, 4))
    inputs = bench.collect_inputs([str(tmp_path)])
    codecs = [bench.ModelCodec("llmzip-tiny", threads=1, xz_fallback=False)]
    expected = bench.run_benchmark(inputs, codecs, progress=False, shard_bytes=6000)
    killed = []
    killer = kill_one_worker_mid_task("_measure_task", killed)
    try:
        with cluster.session(address) as connection:
            measured = bench.run_benchmark(inputs, codecs, progress=False, shard_bytes=6000,
                                           executor=cluster.RayExecutor(connection))
    finally:
        killed.append(None)  # stops the killer if the run ended first
        killer.join()
    assert killed[0] is not None, "no worker was killed: the test proved nothing"
    assert [{name: row[name] for name in BITS_FIELDS} for row in measured.rows] == \
        [{name: row[name] for name in BITS_FIELDS} for row in expected.rows]
    assert all(row["verified"] for row in measured.rows)


def test_a_worker_with_another_model_is_refused(address, tiny_model, other_model, corpus, tmp_path):
    model = tmp_path / "tiny"
    shutil.copytree(tiny_model, model)
    codec = bench.ModelCodec(str(model))  # the driver's model, loaded before the node's copy changes
    for path in Path(other_model).iterdir():  # the same path now holds other weights
        shutil.copyfile(path, model / path.name)
    inputs = bench.collect_inputs([str(corpus / "short.txt")])
    with cluster.session(address) as connection:
        with pytest.raises(cluster.WorkerModelError) as refused:
            bench.run_benchmark(inputs, [codec], progress=False, executor=cluster.RayExecutor(connection))
    message = str(refused.value)
    assert "on Ray node" in message and codec.identity["fingerprint"][:12] in message
    assert "install the same model on every node" in message

    shutil.rmtree(model)  # a node without the model: one clear error, not a hang
    with cluster.session(address) as connection:
        with pytest.raises(cluster.WorkerModelError, match="not found"):
            bench.run_benchmark(inputs, [codec], progress=False, executor=cluster.RayExecutor(connection))


# -- files ----------------------------------------------------------------------------------------


def test_compressed_files_are_byte_identical_to_local_ones(address, tiny_model, tmp_path, capsys):
    names = {"prose.txt": prose(3000, 5), "random.bin": random.Random(6).randbytes(2000), "empty.txt": b"",
             "chinese.txt": "红楼梦是中国古典小说。\n".encode() * 30}
    for name, data in names.items():
        (tmp_path / name).write_bytes(data)
    paths = [str(tmp_path / name) for name in names]
    local = {name: api.Compressor(model=tiny_model, threads=1).compress(data) if data else api.compress(b"")
             for name, data in names.items()}
    assert main(["--ray", address, "-m", tiny_model, "-q", *paths]) == 0
    for name in names:
        assert (tmp_path / f"{name}.llmz").read_bytes() == local[name], name
        (tmp_path / name).unlink()
    assert main(["--ray", address, "-t", *[path + ".llmz" for path in paths], "-m", tiny_model]) == 0
    assert capsys.readouterr().err.count(": OK (") == len(names)
    assert main(["--ray", address, "-d", "-m", tiny_model, *[path + ".llmz" for path in paths]]) == 0
    for name, data in names.items():
        assert (tmp_path / name).read_bytes() == data
    # -c writes the streams in input order; they decode as the files one after another.
    packed = subprocess.run([sys.executable, "-m", "llmzip.cli", "--ray", address, "-c", "-1", *paths[:2]],
                            capture_output=True, timeout=300)
    assert packed.returncode == 0, packed.stderr
    assert packed.stdout == b"".join(api.compress(names[name], level=1) for name in list(names)[:2])


def test_a_worker_killed_while_compressing_is_survived(address, tmp_path):
    paths = []
    for index in range(2):
        (tmp_path / f"{index}.txt").write_bytes(prose(30000, 20 + index))
        paths.append(tmp_path / f"{index}.txt")
    killed = []
    killer = kill_one_worker_mid_task("_compress_task", killed)
    try:
        assert main(["--ray", address, "-1", "-q", *map(str, paths)]) == 0
    finally:
        killed.append(None)
        killer.join()
    assert killed[0] is not None, "no worker was killed: the test proved nothing"
    for path in paths:
        assert Path(f"{path}.llmz").read_bytes() == api.compress(path.read_bytes(), level=1)


def test_one_file_has_its_chunks_spread_and_survives_a_killed_worker(address, tmp_path):
    path = tmp_path / "one.txt"
    # English the fast level's model codes better than xz does (the word salad of prose() is not).
    docs = Path(__file__).resolve().parent.parent / "docs"
    path.write_bytes(b"".join(page.read_bytes() for page in sorted(docs.glob("*.md")))[:30000])
    killed = []
    killer = kill_one_worker_mid_task("_full_pass_task", killed, into=0.05)  # a chunk's pass is short
    try:
        assert main(["--ray", address, "-1", "-q", "-k", str(path)]) == 0
    finally:
        killed.append(None)
        killer.join()
    assert killed[0] is not None, "no chunk task was killed: the test proved nothing"
    packed = Path(f"{path}.llmz").read_bytes()
    assert packed == api.compress(path.read_bytes(), level=1)
    assert api.info(packed).model_settings["online"] and api.info(packed).chunks["model"] > 2


def test_spread_chunks_give_the_local_rows(address, tiny_model):
    compressor = api.Compressor(model=tiny_model, threads=1)
    token_lists = [compressor.model.tokenizer.tokenize(prose(size, 41 + size)) for size in (900, 0, 400, 700)]
    token_lists = [tokens[: compressor.chunk_tokens] for tokens in token_lists]
    local = list(compressor.engine.sequence_pieces(token_lists))
    with cluster.session(address) as connection:
        spread = list(cluster.ChunkEngine(connection, compressor).sequence_pieces(token_lists))
    assert sorted((index, start) for index, start, _ in spread) == sorted((index, start) for index, start, _ in local)
    spread_rows = {(index, start): rows for index, start, rows in spread}
    for index, start, rows in local:
        assert spread_rows[index, start].dtype == rows.dtype and (spread_rows[index, start] == rows).all()


def test_without_an_address_a_local_cluster_is_started(tmp_path):
    (tmp_path / "a.txt").write_bytes(prose(2000, 30))
    environment = {name: value for name, value in os.environ.items() if name != "RAY_ADDRESS"}
    # `--ray FILE`: FILE is a file to compress, not an address (an address has a port).
    done = subprocess.run([sys.executable, "-m", "llmzip.cli", "--ray", str(tmp_path / "a.txt"), "-1"],
                          capture_output=True, timeout=300, env=environment)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "a.txt.llmz").read_bytes() == api.compress((tmp_path / "a.txt").read_bytes(), level=1)


def test_a_worker_with_another_model_is_refused_by_the_command_line(address, tiny_model, tmp_path, capsys,
                                                                      monkeypatch):
    (tmp_path / "a.txt").write_bytes(prose(500, 7))
    real_settings = api.Compressor.model_settings

    def settings_of_another_model(self):  # the driver's model differs from the workers'
        settings = real_settings(self)
        settings["model"] = dict(settings["model"], fingerprint="0" * 64)
        return settings

    monkeypatch.setattr(api.Compressor, "model_settings", settings_of_another_model)
    assert main(["--ray", address, "-m", tiny_model, str(tmp_path / "a.txt")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert error.startswith("llmzip: on Ray node") and "not 000000000000…" in error
    assert sorted(os.listdir(tmp_path)) == ["a.txt"]


def test_ctrl_c_cancels_the_tasks_and_leaves_no_output(address, tmp_path):
    paths = []
    for index in range(3):
        (tmp_path / f"big{index}.txt").write_bytes(prose(150_000, 10 + index))
        paths.append(str(tmp_path / f"big{index}.txt"))
    process = subprocess.Popen([sys.executable, "-m", "llmzip.cli", "--ray", address, "-1", *paths],
                               stderr=subprocess.PIPE, preexec_fn=default_sigint)
    try:
        deadline = time.monotonic() + 120
        while not ray_processes("_compress_task"):
            assert process.poll() is None and time.monotonic() < deadline, "no compression task started"
            time.sleep(0.05)
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        _, error = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1
    assert error.decode().strip().splitlines()[-1] == "llmzip: interrupted"
    assert sorted(os.listdir(tmp_path)) == ["big0.txt", "big1.txt", "big2.txt"]  # no output, no partial file
    wait_until_none_runs("_compress_task")


def test_ctrl_c_while_one_file_is_spread_leaves_no_output(address, tmp_path):
    path = tmp_path / "big.txt"
    docs = Path(__file__).resolve().parent.parent / "docs"
    path.write_bytes(b"".join(page.read_bytes() for page in sorted(docs.glob("*.md"))) * 3)
    process = subprocess.Popen([sys.executable, "-m", "llmzip.cli", "--ray", address, "-1", str(path)],
                               stderr=subprocess.PIPE, preexec_fn=default_sigint)
    try:
        deadline = time.monotonic() + 120
        while not ray_processes("_full_pass_task"):
            assert process.poll() is None and time.monotonic() < deadline, "no chunk task started"
            time.sleep(0.05)
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        _, error = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1
    assert error.decode().strip().splitlines()[-1] == "llmzip: interrupted"
    assert os.listdir(tmp_path) == ["big.txt"]  # no output, no partial file, the input kept
    wait_until_none_runs("_full_pass_task")


def wait_until_none_runs(function: str) -> None:
    deadline = time.monotonic() + 30
    while ray_processes(function):  # the workers stop too
        assert time.monotonic() < deadline, f"{function} tasks still run after Ctrl-C"
        time.sleep(0.1)


# -- without Ray ----------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--ray", "{file}"], ["bench", "{file}", "--models", "", "--out", "{out}", "--ray"]])
def test_without_ray_the_flag_says_how_to_install_it(argv, tmp_path, capsys, monkeypatch):
    (tmp_path / "a.txt").write_bytes(b"text")
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails, as where it is not installed
    assert main([argument.format(file=tmp_path / "a.txt", out=tmp_path / "out") for argument in argv]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "pip install 'llmzip[ray]'" in error and "Traceback" not in error
    assert sorted(os.listdir(tmp_path)) == ["a.txt"]


def test_an_address_nothing_answers_at_is_one_line(tmp_path, capsys):
    (tmp_path / "a.txt").write_bytes(b"text")
    started = time.monotonic()
    assert main(["--ray", "127.0.0.1:1", "-1", str(tmp_path / "a.txt")]) == 1
    assert time.monotonic() - started < 30
    error = capsys.readouterr().err
    assert error.startswith("llmzip: cannot reach the Ray cluster at 127.0.0.1:1") and error.count("\n") == 1


def test_work_no_node_could_take_is_refused_at_once(address, tmp_path, capsys):
    (tmp_path / "a.txt").write_bytes(b"text")
    assert main(["--ray", address, "-T", "3", "-1", str(tmp_path / "a.txt")]) == 1  # the cluster's node has 2 CPUs
    error = capsys.readouterr().err
    assert error == "llmzip: no node of the Ray cluster has 3 CPUs for a task (-T); the largest has 2\n"
    assert sorted(os.listdir(tmp_path)) == ["a.txt"]
