"""tpprof test driver: scripted tokens and latency, pure Python (no numpy, no torch).

The known truth the Python engine's tests measure against (like the C mock adapter).
Run with ``tpprof run --engine python:test --engine-options '{"token_us": 300}'``.

Options (``init["options"]``, from --engine-options):
  vocab_size    int, default 32000; token ids are (sample*31 + step*7 + 1) % vocab_size
  token_us      busy-wait per decode step, microseconds (time.perf_counter_ns loop), default 0
  prefill_us_per_token  busy-wait per prompt token before the first step, default 0
  token_us_growth  added to token_us at every further step (step k waits token_us + k * growth), default 0
  slow_generates, slow_factor  the first slow_generates generate() calls of the process run every
                busy-wait slow_factor times longer, for their whole length (defaults 0, 1)
  fail_create   str: raise RuntimeError(str) in Driver(init)
  fail_at_step  int k: raise RuntimeError("injected failure at step k") at step k (k tokens arrive)
  eos_at_step   int k: finish=2 (eos) at step k when exact_length is false
  topology      "all_ranks" (default) or "one_process"; "one_process": true also works
  thread        true: call on_token from a threading.Thread
  host_bytes    int: reported by memory() as host_bytes (default: absent)
  max_context   int: reported by info() (default 32768)
  import        list of module names imported in Driver(init) (e.g. ["torch"]: the embedded path's cost
                with a heavy library loaded in the same interpreter); their versions go into info()
  bad_callback  "str" (token as a str), "arity" (3 arguments), "late" (keep the callable and call
                it at the start of the next generate(), after the previous one returned)
  signal_handlers  true: install Python handlers of SIGINT and SIGTERM that only count (as some
                serving libraries do); tpprof must take its own back so an interrupt still ends the run
  fork_child    true: every generate() forks a child that ends at once with os._exit(7) (as a
                multiprocessing worker does) and checks that it did: the child's exits are its own
  exit_at_step  int k: the engine ends its own process with os._exit(exit_code) at step k, as some
                engines do on a fatal error (exit_code default 3)

An unknown key is an error (a typo cannot pass silently).

See tpprof_driver.py in README.md for the driver interface.
"""

import importlib
import os
import signal
import threading
import time


def _busy_wait_us(us):
    if us <= 0:
        return
    end = time.perf_counter_ns() + int(us * 1000)
    while time.perf_counter_ns() < end:
        pass


OPTIONS = (
    "vocab_size", "token_us", "prefill_us_per_token", "token_us_growth", "slow_generates", "slow_factor",
    "fail_create", "fail_at_step", "eos_at_step", "topology", "one_process", "thread", "host_bytes",
    "max_context", "import", "bad_callback", "exit_at_step", "exit_code", "signal_handlers", "fork_child", "python",
)


class Driver:
    def __init__(self, init):
        self.init = dict(init)
        o = dict(init.get("options") or {})
        self.o = o
        unknown = sorted(k for k in o if k not in OPTIONS)
        if unknown:
            raise ValueError("unknown option(s) %s: the test driver takes %s" % (", ".join(unknown), ", ".join(OPTIONS)))
        self.exit_at_step = o.get("exit_at_step")
        self.signals_seen = 0
        if o.get("signal_handlers") is True:
            def count(signum, frame):
                self.signals_seen += 1
            signal.signal(signal.SIGINT, count)
            signal.signal(signal.SIGTERM, count)
        self.exit_code = int(o.get("exit_code", 3))
        if "fail_create" in o:
            raise RuntimeError(str(o["fail_create"]))
        self.vocab = int(o.get("vocab_size", 32000))
        self.token_us = float(o.get("token_us", 0))
        self.prefill_us = float(o.get("prefill_us_per_token", 0))
        self.token_us_growth = float(o.get("token_us_growth", 0))
        self.slow_generates = int(o.get("slow_generates", 0))
        self.slow_factor = float(o.get("slow_factor", 1))
        self.calls = 0
        self.fail_at_step = o.get("fail_at_step")
        self.eos_at_step = o.get("eos_at_step")
        topo = o.get("topology", "all_ranks")
        if o.get("one_process") is True:
            topo = "one_process"
        if topo not in ("all_ranks", "one_process"):
            raise ValueError("topology must be all_ranks or one_process, not %r" % (topo,))
        self.topo = topo
        self.thread = bool(o.get("thread", False))
        self.bad_callback = o.get("bad_callback")
        self.kept = None
        self.generated = 0
        mods = o.get("import", [])
        if not isinstance(mods, list) or not all(isinstance(m, str) for m in mods):
            raise ValueError("import must be a list of module names, not %r" % (mods,))
        self.imported = {}
        for m in mods:
            mod = importlib.import_module(m)
            self.imported[m] = str(getattr(mod, "__version__", "?"))

    def info(self):
        return {
            "name": "python-test",
            "version": "1",
            "vocab_size": self.vocab,
            "max_context": int(self.o.get("max_context", 32768)),
            "init": self.init,
            "imported": self.imported,
        }

    def topology(self):
        return self.topo

    def memory(self):
        m = {"weights_bytes": None}
        if "host_bytes" in self.o:
            m["host_bytes"] = int(self.o["host_bytes"])
        return m

    def generate(self, prompts, max_new_tokens, exact_length, on_token):
        if not isinstance(prompts, list) or not all(isinstance(p, list) and all(isinstance(t, int) for t in p) for p in prompts):
            raise TypeError("prompts must be a list of lists of int")
        if self.bad_callback == "late":
            if self.kept is not None:
                self.kept(0, 0, 1, 0)  # raises: the previous generate() is over
            self.kept = on_token
        if self.thread:
            errors = []

            def run():
                try:
                    self._run(prompts, max_new_tokens, exact_length, on_token)
                except BaseException as e:  # re-raised on the calling thread
                    errors.append(e)

            t = threading.Thread(target=run, name="tpprof-test-driver")
            t.start()
            t.join()
            if errors:
                raise errors[0]
        else:
            self._run(prompts, max_new_tokens, exact_length, on_token)

    def _run(self, prompts, max_new_tokens, exact_length, on_token):
        if self.o.get("fork_child") is True:
            pid = os.fork()
            if pid == 0:
                os._exit(7)
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            if code != 7:
                raise RuntimeError("a forked child's os._exit(7) ended it with %r" % (code,))
        n = len(prompts)
        self.calls += 1
        slow = self.slow_factor if self.calls <= self.slow_generates else 1.0
        _busy_wait_us(slow * self.prefill_us * sum(len(p) for p in prompts))
        done = [False] * n
        for step in range(max_new_tokens):
            if self.fail_at_step is not None and step == int(self.fail_at_step):
                raise RuntimeError("injected failure at step %d" % step)
            if self.exit_at_step is not None and step == int(self.exit_at_step):
                os._exit(self.exit_code)
            _busy_wait_us(slow * (self.token_us + self.token_us_growth * step))
            for s in range(n):
                if done[s]:
                    continue
                tok = (s * 31 + step * 7 + 1) % self.vocab
                finish = 1 if step == max_new_tokens - 1 else 0
                if not exact_length and self.eos_at_step is not None and step == int(self.eos_at_step):
                    finish = 2
                if self.bad_callback == "str":
                    on_token(s, step, str(tok), finish)
                elif self.bad_callback == "arity":
                    on_token(s, step, tok)
                else:
                    on_token(s, step, tok, finish)
                self.generated += 1
                if finish:
                    done[s] = True
            if all(done):
                break

    def close(self):
        self.kept = None
