"""The buffers the pager hands to loadblk: views of them that outlive the call
(e.g. caught by another thread's gc.get_objects()) never see pager memory."""
import os
import subprocess
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")


def run_py(code):
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + os.environ.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=240)


def test_gc_get_objects_during_loads_in_faults():
    # Another thread calls gc.get_objects() while blocks are loaded inside page
    # faults, keeps the list for a while and uses the arrays it found that view
    # a loader's buffer.  Before: the load failed ("kept a reference") inside
    # the fault and the process ended with SIGBUS, or the held array showed a
    # staging slot since moved away (SIGSEGV).  In a subprocess: a crash fails
    # the test.
    r = run_py("""
        import gc, threading, time
        import numpy as np, wendelin_cy
        from wendelin_cy.bigfile.file_ram import BigFile_RAM
        BS, NBLK = 65536, 64
        wendelin_cy.set_ram_budget(16 * BS)      # blocks evicted, loaded again
        class Slow(BigFile_RAM):
            def loadblk(self, blk, buf):
                a = np.frombuffer(buf, dtype=np.uint8)
                time.sleep(0.0005)               # (the GIL goes to the other thread)
                a[:] = blk % 251
        v = Slow(BS).fileh_open().mmap(0, NBLK)
        A = np.ndarray((NBLK, BS), np.uint8, buffer=v)
        stop = False
        caught = [0]
        def size(o):
            try:
                return o.nbytes
            except ValueError:                  # (released)
                return 0
        def finished(o):
            try:
                memoryview(o.obj).release()
            except BufferError:                 # (the load is over)
                return True
            return False
        def grab():
            # memoryviews are tracked by the gc (numpy arrays are not): the
            # loader's own one (released when loadblk returns) and the one
            # under np.frombuffer's array (alive as long as it is held here)
            while not stop:
                held = [o for o in gc.get_objects()
                        if type(o) is memoryview and size(o) == BS]
                time.sleep(0.002)
                for o in held:                   # read and write what the loader had
                    try:
                        a = np.frombuffer(o, dtype=np.uint8)
                    except ValueError:           # (released)
                        continue
                    int(a.sum())
                    if finished(o):              # (writes during the load are the
                        a[:] = 255               # block's: only after it)
                        caught[0] += 1
                    del a
                del held
        t = threading.Thread(target=grab)
        t.start()
        bad = 0
        deadline = time.monotonic() + 20
        rounds = 0
        while (rounds < 30 or caught[0] < 20) and time.monotonic() < deadline:
            for blk in range(NBLK):
                bad += int(A[blk, ::4096].max() != blk % 251 or A[blk, ::4096].min() != blk % 251)
            rounds += 1
        stop = True
        t.join()
        print("rounds", rounds, "caught", caught[0], "bad", bad)
    """)
    assert r.returncode == 0, (r.returncode, r.stderr[-3000:])
    words = r.stdout.split()
    assert words[0] == "rounds", r.stdout
    caught, bad = int(words[3]), int(words[5])
    assert bad == 0
    assert caught > 0, "the other thread never caught a loader's array: nothing was tested"
