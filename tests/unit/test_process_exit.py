"""A process that leaves its heap to the OS still ends as Python ends one: atexit handlers
run, an open file's buffer reaches the disk, the exit status is kept."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_the_end_of_a_process_still_runs_atexit_and_flushes_files(tmp_path):
    out = tmp_path / "out.txt"
    script = textwrap.dedent(f"""
        import atexit, gc, sys
        from dfp_core.process_exit import leave_heap_to_the_os

        log = open({str(out)!r}, "w")  # buffered, never closed by hand
        log.write("written before the end\\n")
        cycle = [[]]; cycle[0].append(cycle)  # garbage a full collection would look at
        atexit.register(lambda: print("atexit ran", flush=True))
        try:
            sys.exit(3)
        finally:
            leave_heap_to_the_os()
            assert gc.get_freeze_count() > 0
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "atexit ran\n"
    assert out.read_text() == "written before the end\n"


def test_a_process_with_triton_loaded_keeps_pythons_own_exit():
    # Triton's bindings would list every object the freeze kept alive as leaked.
    script = textwrap.dedent("""
        import gc, sys, types
        sys.modules["triton"] = types.ModuleType("triton")
        from dfp_core.process_exit import leave_heap_to_the_os
        leave_heap_to_the_os()
        print(gc.get_freeze_count())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "0\n", done.stderr
