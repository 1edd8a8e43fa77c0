
import json, os, sys, importlib, importlib.util

def setup(cfg_json):
    cfg = json.loads(cfg_json)
    orig = list(sys.path)
    want = [p for p in cfg.get("sys_path", []) if p]
    sys.path[:] = want + [p for p in orig if p not in want]
    for sp in cfg.get("site_packages", []):
        if sp not in orig and os.path.isdir(sp):
            import site
            site.addsitedir(sp)  # runs its .pth files (editable installs, ...)
    if cfg.get("executable"):
        sys.executable = cfg["executable"]
    if cfg.get("prefix"):
        sys.prefix = cfg["prefix"]
        sys.exec_prefix = cfg.get("exec_prefix") or cfg["prefix"]
    if not getattr(sys, "argv", None) or sys.argv == [""]:
        sys.argv = ["tpprof"]
    for f in (sys.stdout, sys.stderr):
        try:
            f.reconfigure(line_buffering=True)  # tpprof never finalizes: nothing may sit in a buffer
        except Exception:
            pass

def _short(path):
    s = ", ".join(path[:8]) + (", ..." if len(path) > 8 else "")
    return "[" + s + "]"

_files = {}

def load(spec, drivers_dir, init_json):
    init = json.loads(init_json)
    if spec.endswith(".py") or os.sep in spec:
        path = os.path.abspath(spec)
        if not os.path.isfile(path):
            raise FileNotFoundError("driver file %s does not exist" % path)
        d = os.path.dirname(path)
        if d not in sys.path:
            sys.path.insert(0, d)
        mod = _files.get(path)
        if mod is None:
            name = os.path.splitext(os.path.basename(path))[0]
            if name in sys.modules and os.path.abspath(getattr(sys.modules[name], "__file__", "") or "") != path:
                name = "_tpprof_driver_%d_%s" % (len(_files), name)
            s = importlib.util.spec_from_file_location(name, path)
            mod = importlib.util.module_from_spec(s)
            sys.modules[name] = mod
            try:
                s.loader.exec_module(mod)
            except BaseException:
                del sys.modules[name]
                raise
            _files[path] = mod
    else:
        name = "tpprof_driver_" + spec
        if drivers_dir and drivers_dir not in sys.path:
            sys.path.insert(0, drivers_dir)
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            raise ModuleNotFoundError("no driver module `%s` (driver `%s`) on sys.path %s: the shipped drivers are in %s, or use python:/path/to/driver.py"
                                      % (name, spec, _short(sys.path), drivers_dir), name=name) from None
    cls = getattr(mod, "Driver", None)
    if cls is None:
        raise AttributeError("driver module %s (%s) has no class `Driver`" % (mod.__name__, getattr(mod, "__file__", "?")))
    return cls(init)

def call_json(drv, method):
    f = getattr(drv, method, None)
    if f is None:
        return None
    return json.dumps(f(), default=str)

def call_opt(drv, method, *args):
    f = getattr(drv, method, None)
    if f is not None:
        f(*args)

def close(drv):
    try:
        call_opt(drv, "close")
    finally:
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:
                pass
