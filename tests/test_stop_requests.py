"""Stop requests a rank must not lose: early signals, the stop-request file and its
acknowledgement, and the time-based checkpoint cadence (one process; the collective path runs in
the SLURM tests)."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.engine import signals
from trainer.engine.signals import ACK_FILE, STOP_FILE, StopRequest

REPO = Path(__file__).resolve().parents[1]


def test_a_signal_before_the_loop_is_kept_by_the_early_handlers(monkeypatch):
    monkeypatch.setitem(signals._early, "received", None)
    previous = {s: signal.getsignal(s) for s in signals.DEFAULT_SIGNALS}
    try:
        signals.install_early_handlers()
        os.kill(os.getpid(), signal.SIGUSR1)        # would kill the process without a handler
        with StopRequest() as stop:
            assert stop.should_stop() == "SIGUSR1"
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_stop_file_stops_once_and_is_acknowledged(tmp_path):
    (tmp_path / STOP_FILE).write_text("USR1\n")
    with StopRequest(run_dir=tmp_path, is_main=True) as stop:
        assert stop.should_stop() == STOP_FILE
    assert not (tmp_path / STOP_FILE).exists()
    assert (tmp_path / ACK_FILE).read_text() == "USR1\n"
    with StopRequest(run_dir=tmp_path, is_main=True) as stop:   # the next run is not stopped
        assert stop.should_stop() is None


def test_a_signal_is_acknowledged_but_stop_at_step_is_not(tmp_path):
    with StopRequest(run_dir=tmp_path, is_main=True) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.should_stop() == "SIGTERM"
    assert (tmp_path / ACK_FILE).read_text() == "SIGTERM\n"
    (tmp_path / ACK_FILE).unlink()
    with StopRequest(run_dir=tmp_path, is_main=True) as stop:
        stop.request()
        assert stop.should_stop() == "requested"
    assert not (tmp_path / ACK_FILE).exists()
    with StopRequest(run_dir=tmp_path, is_main=False) as stop:   # only rank 0 writes it
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.should_stop() == "SIGUSR1"
    assert not (tmp_path / ACK_FILE).exists()


def test_time_based_checkpoint_is_due_every_n_minutes_of_rank_0():
    now = [1000.0]
    with StopRequest(every_minutes=2, is_main=True, clock=lambda: now[0]) as stop:
        stop.should_stop()
        assert not stop.save_now
        now[0] += 119
        stop.should_stop()
        assert not stop.save_now
        now[0] += 2
        stop.should_stop()
        assert stop.save_now
        stop.should_stop()                            # counted again from that save
        assert not stop.save_now
    with StopRequest(every_minutes=0, is_main=True, clock=lambda: now[0]) as stop:
        now[0] += 10 ** 6
        stop.should_stop()
        assert not stop.save_now


def test_training_commands_catch_stop_signals_before_heavy_imports():
    """`avsiam pretrain` installs the handlers before it imports torch (the early window)."""
    probe = ("import importlib, signal, sys; from cluster import cli; "
             "m = importlib.import_module(cli.COMMANDS['pretrain'][0]); "
             "m.main = lambda args: print(signal.getsignal(signal.SIGUSR1).__name__, "
             "'torch' in sys.modules) or 0; m.add_arguments = lambda p: None; "
             "sys.exit(cli.main(['pretrain']))")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["_record_early", "False"]


# --- in the training loop (one process, real DeepSpeed on CPU) ----------------------------------

@pytest.mark.e2e
def test_the_loop_saves_every_n_minutes_and_stops_on_the_stop_request_file(tmp_path):
    from test_loader_shards import write_split
    from test_training_loop import KINDS, config, run

    shards = tmp_path / "shards"
    write_split(shards, [4, 4], num_frames=2, frame_size=32, fbank_frames=200)
    timed = tmp_path / "timed"
    summary = run(config("pretrain", shards, timed, "checkpoint.every_minutes=1e-9",
                         "checkpoint.save_final=false"), KINDS["pretrain"])
    assert summary.stopped == "finished"
    saved = sorted(p.name for p in (timed / "checkpoints").iterdir() if (p / "complete.json").exists())
    assert saved == [f"step_{step:08d}" for step in range(1, summary.step + 1)]

    class RequestedAfterTwo(KINDS["pretrain"]):
        def after_step(self, loop, step):
            if step == 2:                        # as the batch shell does on a warning
                (Path(loop.cfg.out_dir) / STOP_FILE).write_text("USR1\n")
            return super().after_step(loop, step)

    out = tmp_path / "requested"
    stopped = run(config("pretrain", shards, out), RequestedAfterTwo)
    assert (stopped.stopped, stopped.step) == (STOP_FILE, 2)
    assert (out / ACK_FILE).read_text() == "USR1\n" and not (out / STOP_FILE).exists()
    assert (out / "checkpoints" / "step_00000002" / "complete.json").exists()
