"""Memory sampling and the plot of the demos.

A background thread samples every ~50 ms the pager's resident and dirty bytes
(``pager_stats()``) and the process RSS (``/proc/self/statm``, else psutil);
phases are recorded as (name, start, end).  ``plot()`` draws them with
matplotlib's Agg backend, imported only then.
"""

import os
import resource
import shutil
import sys
import threading
import time

import transaction

import wendelin_cy

MiB = 1 << 20


def _rss_reader():
    try:
        f = open('/proc/self/statm', 'rb')     # noqa: SIM115 (kept open, read often)
    except OSError:
        f = None
    if f is not None:
        page = os.sysconf('SC_PAGE_SIZE')

        def rss():
            f.seek(0)
            return int(f.read().split()[1]) * page
        return rss
    import psutil
    proc = psutil.Process()
    return lambda: proc.memory_info().rss


def current_rss():
    """RSS of this process now, in bytes."""
    return _rss_reader()()


def ru_maxrss():
    """ru_maxrss of this process, in bytes.

    On Linux it is inherited across fork and exec: a process started by a big
    process (pytest, a joblib parent) reports at least the RSS its parent had
    when it forked.  ``vm_hwm()`` does not have that problem."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == 'darwin' else r * 1024


def vm_hwm():
    """Peak RSS of this process image (VmHWM of /proc/self/status) in bytes,
    or None where there is no /proc."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss():
    """Peak RSS of this process in bytes: VmHWM where available, else ru_maxrss."""
    h = vm_hwm()
    return h if h is not None else ru_maxrss()


def peak_rss_text():
    """'345.0 MiB (ru_maxrss)', with VmHWM too when ru_maxrss was inherited."""
    ru, h = ru_maxrss(), vm_hwm()
    if h is None or ru <= h * 1.05 + (4 << 20):
        return '%s (ru_maxrss)' % fmt_bytes(ru)
    return ('%s (VmHWM; ru_maxrss %s includes the RSS of the parent at fork)'
            % (fmt_bytes(h), fmt_bytes(ru)))


def fmt_bytes(n):
    n = float(n)
    for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB'):
        if abs(n) < 1024 or unit == 'TiB':
            return ('%d %s' % (n, unit)) if unit == 'B' else ('%.1f %s' % (n, unit))
        n /= 1024


class Monitor:
    """Samples memory in a thread; ``with mon.phase('ingest'): ...``."""

    def __init__(self, interval=0.05):
        self.interval = interval
        self.t0 = time.monotonic()
        self.samples = []           # (t, pager resident, pager dirty, rss)
        self.phases = []            # (name, t_start, t_end)
        self._rss = _rss_reader()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name='wcy-demo-monitor',
                                        daemon=True)

    def start(self):
        self.sample()
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.sample()

    def sample(self):
        st = wendelin_cy.pager_stats()
        self.samples.append((time.monotonic() - self.t0, st['resident'], st['dirty'],
                             self._rss()))

    def _run(self):
        while not self._stop.wait(self.interval):
            self.sample()

    def phase(self, name):
        return _Phase(self, name)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class _Phase:
    def __init__(self, mon, name):
        self.mon, self.name = mon, name

    note = ''           # shown under the name in the plot (e.g. a throughput)

    def __enter__(self):
        self.t = time.monotonic()
        return self

    def __exit__(self, *exc):
        t1 = time.monotonic()
        self.seconds = t1 - self.t
        self.mon.phases.append((self, self.t - self.mon.t0, t1 - self.mon.t0))


def plot(mon, path, budget, title, peak=None):
    """Write the memory plot to `path` (PNG).  Returns None, or a note saying
    why no plot was written (matplotlib missing)."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError as e:
        return ('plot skipped: matplotlib is not installed (%s); '
                "pip install 'wendelin_cy[demo]' to get it" % e)
    import numpy as np
    s = np.array(mon.samples, dtype=float)
    t, res, dirty, rss = s[:, 0], s[:, 1] / MiB, s[:, 2] / MiB, s[:, 3] / MiB
    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=110)
    colors = ['#dbe9f6', '#fde9d4', '#e2f2dc', '#f3e0f0', '#fff5c2', '#e6e6e6']
    ymax = max(rss.max(), res.max(), budget / MiB) * 1.18
    for k, (ph, a, b) in enumerate(mon.phases):
        ax.axvspan(a, b, color=colors[k % len(colors)], zorder=0)
        wide = (b - a) > (t[-1] - t[0]) / 8
        label = ph.name + (('\n' if wide else ' ') + ph.note if ph.note else '')
        ax.text((a + b) / 2, ymax * 0.98, label, ha='center', va='top', fontsize=8,
                rotation=0 if wide else 90)
    ax.plot(t, rss, color='#d62728', lw=1.6, label='process RSS')
    ax.plot(t, res, color='#1f77b4', lw=1.6, label="pager resident (pager_stats()['resident'])")
    ax.plot(t, dirty, color='#ff7f0e', lw=1.0, ls='--', label='pager dirty')
    ax.axhline(budget / MiB, color='black', lw=1.2, ls=':',
               label='RAM budget (%s)' % fmt_bytes(budget))
    if peak is not None:
        ax.axhline(peak / MiB, color='#d62728', lw=0.8, ls=':',
                   label='peak RSS (%s)' % fmt_bytes(peak))
    ax.set_ylim(0, ymax)
    ax.set_xlim(t[0], t[-1])
    ax.set_xlabel('time [s]')
    ax.set_ylabel('memory [MiB]')
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc='lower right', fontsize=8, framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path, format='png')
    plt.close(fig)
    return None


def finish(say, mon, st, budget, rss0, peak, plot_path, title, kept, ok):
    """A demo's closing report: peak RSS against the budget, the pager's
    counters `st`, the plot (titled `title`) if asked for, where the
    database was kept (`kept`, or None) -> the exit status."""
    say('peak RSS %s vs RAM budget %s: budget + %s (RSS before any data, after '
        'imports: %s); pager peak resident %s, loads %d, evictions %d'
        % (peak_rss_text(), fmt_bytes(budget), fmt_bytes(peak - budget), fmt_bytes(rss0),
           fmt_bytes(st['peak_resident']), st['loads'], st['evictions']))
    if plot_path:
        note = plot(mon, plot_path, budget, title, peak=peak)
        say(note if note else 'plot written to %s' % plot_path)
    if kept is not None:
        say('database kept: %s' % kept)
    say('OK' if ok else 'FAILED')
    return 0 if ok else 1


def close(root, dbclose, mon, tmpdir, keep):
    """A demo's end, whatever happened: abort, close the database of `root`
    (if opened), stop monitor `mon`, remove `tmpdir` unless `keep`."""
    if root is not None:
        try:
            transaction.abort()
        except Exception:
            pass
        dbclose(root)
    mon.stop()
    if tmpdir is not None and not keep:
        shutil.rmtree(tmpdir, ignore_errors=True)
