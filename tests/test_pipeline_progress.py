"""Sharding and synth progress: a tqdm bar on a terminal, plain timed lines elsewhere."""
import io

from tqdm import tqdm

from pipeline.progress import PlainProgress, clip_progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_and_a_pipe_gets_lines():
    bar = clip_progress(10, desc="shard train task 0/1", stream=_Terminal())
    assert isinstance(bar, tqdm)
    bar.close()
    assert isinstance(clip_progress(10, desc="x", stream=io.StringIO()), PlainProgress)


def test_plain_lines_are_timed_and_the_last_one_says_where_it_ended():
    stream = io.StringIO()
    progress = clip_progress(4, desc="avsiam synth", stream=stream, every_s=3600)
    for _ in range(3):
        progress.update()
    progress.set_postfix(ok=3, failed=0)
    assert stream.getvalue() == ""           # nothing before every_s has passed
    progress.close()
    line = stream.getvalue()
    assert line.startswith("avsiam synth: 3/4 clips (75%), ") and line.endswith("ok=3 failed=0\n")
    assert "\r" not in line

    every_update = io.StringIO()
    progress = clip_progress(2, desc="d", stream=every_update, every_s=0)
    progress.update()
    progress.update()
    assert every_update.getvalue().count("\n") == 2


def test_disabled_progress_is_silent():
    stream = io.StringIO()
    progress = clip_progress(2, desc="d", stream=stream, enabled=False, every_s=0)
    progress.update()
    progress.close()
    assert stream.getvalue() == ""
