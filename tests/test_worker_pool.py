"""worker_pool.imap: ordered results from spawned workers, from any __main__, and an error
instead of a hang when a worker dies."""
import math
import os

import pytest

import worker_pool
from conftest import env_with_path, run_python


def test_results_come_back_in_order_whatever_the_workers():
    items = list(range(37))
    assert list(worker_pool.imap(math.factorial, items, 3, batch=2)) == [math.factorial(i) for i in items]
    assert list(worker_pool.imap(math.factorial, items, 1)) == [math.factorial(i) for i in items]


def test_a_worker_that_dies_is_an_error_not_a_hang():
    with pytest.raises(worker_pool.WorkerPoolError, match=r"a worker process \(pid \d+\) stopped .*exit status 7"):
        list(worker_pool.imap(os._exit, [7, 7, 7, 7], 2, batch=1))


UNGUARDED = """
import math
import worker_pool
print(sum(worker_pool.imap(math.isqrt, range(100), 2)))
"""


@pytest.mark.parametrize("how", ["script file", "stdin"])
def test_an_unguarded_caller_is_not_re_run_by_the_workers(tmp_path, how):
    """spawn re-runs __main__ in every worker: an unguarded script would recurse, stdin has no file."""
    script = tmp_path / "script.py"
    script.write_text(UNGUARDED)
    args = [str(script)] if how == "script file" else ["-"]
    done = run_python(*args, input=None if how == "script file" else UNGUARDED, timeout=60, cwd=tmp_path,
                      env=env_with_path())    # the repository's modules, from a script outside it
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(sum(math.isqrt(i) for i in range(100)))]   # printed once: no re-run
