"""What the queue refuses, and why (docs/queue.md §9): a queue folder that overlaps the user's files, links
planted in the queue folder or the output folder, a second launcher on the same output, forged job files.
In every case the user's files must survive."""
import json
import os

import pytest
from filelock import FileLock

import launch
from common.config import load_config
from common.jobqueue.job import Job
from common.jobqueue.planner import plan
from common.jobqueue.recovery import clear_queue, recover
from common.workers.worker import Worker
from queue_fixtures import graph_of, one_line_exit, write_config

pytestmark = pytest.mark.timeout(60)


def refused(capsys, path, *args, code=2):
    """Launch with `path`; it must exit `code` with one line on stderr, which is returned."""
    return one_line_exit(capsys, ["--config", path, "--gpus", "cpu", *args], code=code)


def precious(folder):
    """A folder of the user's with one file in it; returns the file."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "keep.txt").write_text("mine")
    return folder / "keep.txt"


# -- A1: the queue folder is the queue's alone ------------------------------------------------------------
@pytest.mark.parametrize("where, relation", [
    ("{root}", "contains"),             # queue_dir: . (the project root holding data/ and out/)
    ("{root}/data", "is"),              # the dataset itself
    ("{root}/data/00/q", "lies inside"),
    ("{root}/out", "is"),
    ("{root}/out/q", "lies inside"),
    ("{root}/loras", "is"),
    ("{root}/model/q", "lies inside"),
    ("{root}/link-to-out", "is"),       # a link resolved: it is the output folder
])
@pytest.mark.parametrize("fresh", [False, True])
def test_a_queue_dir_overlapping_the_users_files_is_refused(tmp_path, capsys, where, relation, fresh):
    (tmp_path / "link-to-out").symlink_to(tmp_path / "out")
    path = write_config(tmp_path, queue_dir=where.format(root=tmp_path), lora={"missing": "warn",
                        "dir": str(tmp_path / "loras")}, model={"path": str(tmp_path / "model")})
    kept = [precious(tmp_path / d) for d in ("out/00", "loras/style_00", "model/unet")]
    kept.append(tmp_path / "data" / "00" / "prompt.json")
    err = refused(capsys, path, *(["--fresh"] if fresh else []))
    assert f" {relation} the " in err and "queue_dir" in err and "of its own" in err
    assert all(p.exists() for p in kept)
    assert not list(tmp_path.rglob("manifest.json")) and not list(tmp_path.rglob("launcher.lock"))


def test_a_queue_dir_holding_a_single_file_model_is_refused(tmp_path, capsys):
    model = tmp_path / "models" / "v2-1_768-ema-pruned.safetensors"
    model.parent.mkdir()
    model.write_bytes(b"the user's checkpoint")
    path = write_config(tmp_path, queue_dir=str(model.parent), lora={"missing": "warn"}, model={"path": str(model)})
    err = refused(capsys, path, "--fresh")
    assert " contains the model.path file " in err and model.read_bytes() == b"the user's checkpoint"


@pytest.mark.parametrize("fresh", [False, True])
def test_a_folder_holding_other_files_and_no_queue_is_refused(tmp_path, capsys, fresh):
    home = tmp_path / "home"
    kept = [precious(home / "logs"), precious(home / "tmp"), precious(home)]
    path = write_config(tmp_path, queue_dir=str(home))
    err = refused(capsys, path, *(["--fresh"] if fresh else []))
    assert "'keep.txt'" in err and "no queue" in err and "new or empty folder" in err
    assert all(p.read_text() == "mine" for p in kept) and not (home / "manifest.json").exists()


def test_a_queue_of_the_first_layout_is_the_queues_own_and_fresh_clears_it(tmp_path):
    """gen/, sty/ and content/ are what the first two-stage layout made (Graph.former_folders): the folder
    is not refused as someone else's, and --fresh removes them but not a file the queue never made."""
    old = tmp_path / "q"
    for name in ("gen/pending", "sty/done", "content"):
        (old / name).mkdir(parents=True)
        (old / name / "x.json").write_text("{}")
    stranger = old / "notes.txt"
    path = write_config(tmp_path, queue_dir=str(old))
    config, graph, _, q = graph_of(path)
    launch.check_queue_folder(q, graph.former_folders)  # the folder is recognised: no error
    with pytest.raises(launch.QueueFolderError, match="'content'"):
        launch.check_queue_folder(q, ())  # the same folder, without the former names, is someone else's
    stranger.write_text("mine")
    notes = clear_queue(q, grace=0.1, former=graph.former_folders)
    assert not any((old / n).exists() for n in ("gen", "sty", "content"))
    assert stranger.read_text() == "mine" and any("notes.txt" in n for n in notes)


# -- A4: one launcher per output folder -------------------------------------------------------------------
def test_a_second_launcher_with_another_queue_on_the_same_output_exits_75_naming_the_holder(tmp_path, capsys):
    first = write_config(tmp_path)
    config = load_config(first)
    holder_queue = graph_of(first)[3]
    lock = launch.acquire_output_lock(tmp_path / "out", holder_queue)  # the first launcher, mid-run
    try:
        second = write_config(tmp_path, queue_dir=str(tmp_path / "q2"))
        err = refused(capsys, second, code=75)
        assert f"output folder {tmp_path / 'out'} is in use by pid {os.getpid()}" in err
        assert str(holder_queue.layout.root) in err
        assert not (tmp_path / "q2" / "manifest.json").exists()  # refused before planning anything
        assert not (tmp_path / "q2" / "launcher.json").exists()  # and the queue lock was given back
    finally:
        launch._release(lock, tmp_path / "out" / launch.OUTPUT_HOLDER)
    assert config.output == str(tmp_path / "out")


def test_the_output_lock_is_released_after_a_run(tmp_path):
    path = write_config(tmp_path)
    queue = graph_of(path)[3]
    queue.layout.make()
    lock = launch.acquire_output_lock(tmp_path / "out", queue)
    launch._release(lock, tmp_path / "out" / launch.OUTPUT_HOLDER)
    again = FileLock(str(tmp_path / "out" / launch.OUTPUT_LOCK))
    again.acquire(timeout=0)  # free again
    again.release()
    assert not (tmp_path / "out" / launch.OUTPUT_HOLDER).exists()


# -- B5: links planted in the queue folder ----------------------------------------------------------------
@pytest.mark.parametrize("planted", ["launcher.json", "launcher.lock", "manifest.json", "tmp", "workers", "logs",
                                     "gen/pending/00", "handoff/gen"])
@pytest.mark.parametrize("fresh", [False, True])
def test_a_link_planted_in_the_queue_folder_is_refused_and_its_target_survives(tmp_path, capsys, planted, fresh):
    path = write_config(tmp_path)
    graph_of(path)[3].layout.make()
    elsewhere = tmp_path / "elsewhere"
    target = precious(elsewhere)
    (elsewhere / ".x.123.y.tmp").write_text("mine too")
    link = tmp_path / "q" / planted
    if link.is_dir():
        link.rmdir()
    link.symlink_to(target if "." in planted else elsewhere)
    err = refused(capsys, path, *(["--fresh"] if fresh else []))
    assert str(link) in err and "symbolic link" in err
    assert target.read_text() == "mine" and (elsewhere / ".x.123.y.tmp").read_text() == "mine too"
    assert link.is_symlink()


def test_recovery_and_reclaim_never_delete_through_a_linked_folder(tmp_path):
    """Beneath the launch check: the clean-ups themselves refuse a link where a folder should be."""
    path = write_config(tmp_path)
    config, graph, nodes, q = graph_of(path)
    q.layout.make()
    elsewhere = tmp_path / "elsewhere"
    target = precious(elsewhere)
    (elsewhere / ".job.4242.abc.tmp").write_text("mine too")
    for folder in (q.layout.tmp, q.layout.workers):
        folder.rmdir()
        folder.symlink_to(elsewhere)
    with pytest.raises(OSError, match="symbolic link"):
        q.reclaim("host-gcpu-4242", counted=False, reason="test")
    with pytest.raises(OSError, match="symbolic link"):
        recover(q, graph.output_dirs(), grace=0.1)
    notes = clear_queue(q, grace=0.1)
    assert any("left" in n and "tmp" in n for n in notes)
    assert target.read_text() == "mine" and (elsewhere / ".job.4242.abc.tmp").exists()


# -- B6: forged jobs and linked style folders in the output -----------------------------------------------
def test_forged_jobs_are_quarantined_and_nothing_is_written_outside_the_output(tmp_path):
    path = write_config(tmp_path, styles={"00": ["Dolphin"]})
    config, graph, nodes, q = graph_of(path)
    q.layout.make()
    plan(q, nodes)
    real = next(n.job for n in nodes if n.job.stage == "gen")
    forged = {
        "ffff000000000000000a": dict(payload=dict(real.payload, name="../../x")),
        "ffff000000000000000b": dict(group="../.."),
        "ffff000000000000000c": dict(payload=dict(real.payload, name="/tmp/abs")),
    }
    for jid, fields in forged.items():
        job = Job(**{**real.__dict__, "id": jid, "stage": "sty", **fields})
        (q.layout.pending_dir("sty", "00", jid) / f"{jid}.json").parent.mkdir(parents=True, exist_ok=True)
        (q.layout.pending_dir("sty", "00", jid) / f"{jid}.json").write_bytes(job.dumps())
    extra = json.loads(real.dumps())
    extra.update(id="ffff000000000000000d", stage="sty", output_png=str(tmp_path / "x.png"))
    (q.layout.pending_dir("sty", "00", "ff") / "ffff000000000000000d.json").write_text(json.dumps(extra))
    before = {p for p in tmp_path.rglob("*") if not str(p).startswith(str(tmp_path / "q"))}
    assert Worker(config, "cpu").run() == 0
    after = {p for p in tmp_path.rglob("*") if not str(p).startswith(str(tmp_path / "q"))}
    assert {p.relative_to(tmp_path) for p in after - before} <= {p.relative_to(tmp_path) for p in [
        tmp_path / "out", tmp_path / "out" / "00", tmp_path / "out" / "00" / "content", tmp_path / "out" / "00" / "Dolphin.png",
        tmp_path / "out" / "00" / "content" / "Dolphin.png"]}
    corrupt = sorted(p.name for p in q.layout.corrupt_dir("sty").glob("*.why"))
    assert len(corrupt) == 4, corrupt
    whys = " ".join(p.read_text() for p in q.layout.corrupt_dir("sty").glob("*.why"))
    assert "not a plain file name" in whys and "unknown field 'output_png'" in whys
    assert not (tmp_path / "x.png").exists() and not (tmp_path.parent / "x.png").exists()


def test_a_linked_style_folder_in_the_output_is_refused_at_launch(tmp_path, capsys):
    path = write_config(tmp_path)
    target = precious(tmp_path / "elsewhere")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "01").symlink_to(tmp_path / "elsewhere")
    err = refused(capsys, path)
    assert str(tmp_path / "out" / "01") in err and "symbolic link" in err
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == ["keep.txt"] and target.exists()


def test_a_style_folder_linked_after_launch_makes_workers_write_nothing_through_it(tmp_path):
    path = write_config(tmp_path)
    config, graph, nodes, q = graph_of(path)
    q.layout.make()
    plan(q, nodes)
    precious(tmp_path / "elsewhere")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "01").symlink_to(tmp_path / "elsewhere")
    assert Worker(config, "cpu").run() == 0
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == ["keep.txt"]
    results = sorted(p.name for p in (tmp_path / "out").glob("*/*.png"))
    assert results == ["A cat _ dog.png", "Dolphin.png", "Lighthouse.png"]  # style 00's, none through the link
    assert len(list(q.layout.corrupt_dir("gen").glob("*.why"))) == 3


# -- B6: a forged lease names a process that is not a worker ------------------------------------------------
@pytest.mark.parametrize("forged_pid", ["its own", "a string", "a bool"])
def test_a_forged_lease_never_makes_recovery_signal_a_process_that_is_not_a_worker(tmp_path, forged_pid):
    """Recovery stops a dead launcher's workers by what their leases name; a planted lease naming some other
    live process of ours (host, boot and start time all right) must not get it signalled, nor crash it."""
    import subprocess
    import sys
    from common.jobqueue import lease
    path = write_config(tmp_path)
    config, graph, nodes, q = graph_of(path)
    q.layout.make()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pid = {"its own": bystander.pid, "a string": str(bystander.pid), "a bool": True}[forged_pid]
        forged = {"wid": "host-g0-1", "pid": pid, "host": lease.HOST, "boot_id": lease.boot_id(),
                  "start": lease.proc_start(bystander.pid), "phase": "working"}
        (q.layout.workers / "host-g0-1.json").write_text(json.dumps(forged))
        assert recover(q, graph.output_dirs(), grace=0.2) == []
        assert bystander.poll() is None  # still running: never signalled
    finally:
        bystander.kill()
        bystander.wait()
