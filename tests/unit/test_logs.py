"""The batching log writer: every line written, in order, tracebacks included, nothing lost at
close, and the logger's own handlers back afterwards."""

from __future__ import annotations

import io
import logging
import threading

from hsmd.logs import BatchingLogWriter


def test_lines_from_many_threads_are_written_in_order_and_all_by_close() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    before = list(root.handlers)
    writer = BatchingLogWriter(stream, logging.Formatter("%(name)s %(message)s"))
    writer.start()
    log = logging.getLogger("hsmd.test")
    level = root.level
    root.setLevel(logging.INFO)
    try:

        def emit(thread: int) -> None:
            for n in range(200):
                log.info("thread %d line %d", thread, n)

        threads = [threading.Thread(target=emit, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed %s", "here")
    finally:
        writer.close()
        root.setLevel(level)
    lines = stream.getvalue().splitlines()
    for thread in range(4):
        mine = [line for line in lines if line.startswith(f"hsmd.test thread {thread} ")]
        assert mine == [f"hsmd.test thread {thread} line {n}" for n in range(200)]
    assert "hsmd.test failed here" in lines
    assert "ValueError: boom" in lines
    assert root.handlers == before


def test_arguments_are_rendered_when_logged_not_when_written() -> None:
    stream = io.StringIO()
    writer = BatchingLogWriter(stream, logging.Formatter("%(message)s"))
    writer.start()
    state = ["before"]
    try:
        logging.getLogger("hsmd.test").warning("state %s", state)
        state[0] = "after"
    finally:
        writer.close()
    assert stream.getvalue() == "state ['before']\n"


def test_a_line_that_cannot_be_formatted_does_not_stop_the_writer() -> None:
    class Picky(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            if "bad" in record.getMessage():
                raise RuntimeError("cannot format")
            return record.getMessage()

    stream = io.StringIO()
    writer = BatchingLogWriter(stream, Picky())
    writer.start()
    try:
        log = logging.getLogger("hsmd.test")
        log.warning("bad line")
        log.warning("good line")
    finally:
        writer.close()
    assert stream.getvalue().splitlines() == ["WARNING hsmd.test: 'bad line'", "good line"]
