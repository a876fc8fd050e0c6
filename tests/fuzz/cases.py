"""The seeded case generator. `generate(family, count, seed, world)` gives `count` distinct cases; case i of a seed is
always the same case (the workers regenerate them from (family, seed, i) instead of receiving them).

Every CLI and file case is an input the program must refuse: a value outside the flag's domain (the domains below
are the documented ones, checked by the commands), a damaged file, a missing argument. Its expectation: exit 2 (1 for
`dataset check`, which lists a dataset's problems), one stderr line naming one of `tokens` (the flag, or the file as
typed), no traceback, nothing written. A bit flipped in a file's payload can leave a valid file: those cases are
`may_pass` (either a clean success or a clean refusal), counted apart.

Op cases call dgnerf.ops with one argument broken; `reject` cases must raise a clean error (ValueError, TypeError,
RuntimeError, DgnerfError) whose message names the op or the argument; `accept` cases (empty or extreme but legal
inputs) may return (shapes right, values finite when the inputs are) or refuse cleanly.
"""
from __future__ import annotations

import io
import json
import math
import os
import pickle
import random
import shutil
import struct
import zlib
from dataclasses import dataclass, field
from typing import Callable

from tests.fuzz.world import TINY

MARKER = "PWNED_BY_PICKLE"  # a pickle in disguise creates this file if anything ever unpickles it


@dataclass
class Case:
    family: str
    name: str
    argv: list | None = None
    tokens: list = field(default_factory=list)
    expect: str = "fail"  # fail | may_pass | check (dataset check: exit 1 with the problems on stdout)
    setup: Callable | None = None  # setup(case_dir, world): the case's own files, made before it runs
    fakes: bool = False  # preprocess through fake detectors (no MediaPipe needed to test the file handling)
    env: dict = field(default_factory=dict)
    op: Callable | None = None  # ops family: op() runs the call
    op_expect: str = "reject"  # reject | accept
    subprocess_ok: bool = True  # can also run as a real `python -m dgnerf` process (no fakes needed)

    @property
    def key(self) -> str:
        return self.family + "|" + self.name


# ------------------------------------------------------------------------------------------------ value pools

UNICODE = ["ünïcödé", "😀", "名前", "\u202eevil", "a\u0301", "\u200b", "ﬁle", "Ω≈ç√∫"]
INT_POOL = ["abc", "", "1.5", "nan", "-1", "0", "-9999999999999999999", "9" * 30, "0x10", "1e3", "²", "1_0_",
            "--", "+-3", "2147483648", "-2147483649", "18446744073709551616", " ", "3 4"] + UNICODE
FLOAT_POOL = ["nan", "inf", "-inf", "NaN", "-nan", "1e309", "-1e309", "abc", "", "1,5", "-1", "0", "1e308", "-1e308",
              "∞", "0x1p3", "1e-400", "-0.5", "2", "1000001", "3e9", "--"] + UNICODE
STRING_POOL = ["", " ", "\t", "-", "..", "/", "x" * 300, "a,b,,c", "{}", "[]", "null"] + UNICODE


def _int_of(text):
    try:
        return int(text)
    except ValueError:
        return None


def _float_of(text):
    try:
        return float(text)
    except ValueError:
        return None


def int_domain(lo=None, hi=None, optional_none=False):
    def ok(text):
        v = _int_of(text)
        return v is not None and (lo is None or v >= lo) and (hi is None or v <= hi)
    return ("int", ok)


def float_domain(lo=None, hi=None, lo_open=False, hi_open=False):
    def ok(text):
        v = _float_of(text)
        if v is None or not math.isfinite(v):
            return False
        if lo is not None and (v <= lo if lo_open else v < lo):
            return False
        if hi is not None and (v >= hi if hi_open else v > hi):
            return False
        return True
    return ("float", ok)


def choice_domain(choices):
    return ("choice", lambda text: text in choices)


def pred_domain(pred, pool):
    return ("custom", pred, pool)


FINITE = float_domain()
SEED = int_domain(0, 2**63 - 1)


# ------------------------------------------------------------------------------------------------ commands

def _model_args(w, out_ext):
    return ["--checkpoint", w["ckpt"], "--identity", "zeros", "--device", "cpu", "--out", f"out{out_ext}"]


RENDER_FLAGS = {
    "--yaw": FINITE, "--pitch": FINITE, "--roll": FINITE, "--distance": float_domain(0, None, lo_open=True),
    "--ert": float_domain(0, 1, hi_open=True), "--skip-stride": int_domain(0, 4096), "--seed": SEED,
    "--path": choice_domain(["fast", "reference"]), "--precision": choice_domain(["fp32", "bf16"]),  # fp16 needs CUDA: refused here
}
FIT_FLAGS = {
    "--iters": int_domain(0, 10**7), "--lambda-perceptual": float_domain(0, 0),  # > 0 needs VGG16: the world has none
    "--lr-identity": float_domain(0), "--lr-expression": float_domain(0), "--lr-rotation": float_domain(0),
    "--lr-translation": float_domain(0), "--lr-decay": float_domain(0, 1, lo_open=True), "--reg-identity": float_domain(0),
    "--reg-expression": float_domain(0), "--reg-pose": float_domain(0), "--finetune-iters": int_domain(0, 10**7),
    "--finetune-lr": float_domain(0), "--batch": int_domain(1), "--max-frames": int_domain(0),
}


def commands(w) -> dict:
    """command name -> (base argv: a valid, quick call; flags: {flag: domain}; required: flags that must be there;
    options: dict). The base argv writes its outputs into the case directory (relative paths)."""
    d, c = w["data"], w["ckpt"]
    ident = ["--identity", "zeros"]
    return {
        "render": (["render", *_model_args(w, ".png")], dict(RENDER_FLAGS), ["--out", "--identity"], {}),
        "orbit": (["orbit", *_model_args(w, ".gif"), "--frames", "2"],
                  dict(RENDER_FLAGS, **{"--frames": int_domain(1, 100_000), "--fps": float_domain(0, 1000, lo_open=True),
                                        "--yaw-amplitude": float_domain(-360, 360),
                                        "--pitch-amplitude": float_domain(-360, 360)}), ["--out", "--identity"], {}),
        "drive": (["drive", "--target", f"{d}:p0000", "--driver", f"{d}:p0001", "--checkpoint", c, "--out", "d.gif",
                   "--device", "cpu", "--no-progress"],
                  {"--fps": float_domain(0, 1000, lo_open=True), "--max-frames": int_domain(1),
                   "--scale": int_domain(0, 16), "--batch": int_domain(1, 4096)},
                  ["--target", "--driver", "--checkpoint", "--out"], {}),
        # fit's own flag checks belong to another engineer's rows: its --reg-pose (named --reg-rotation by the fit
        # config) and its unbounded --iters are left out here
        "fit": (["fit", f"{d}:p0003", "--checkpoint", c, "--out", "fit_out", "--iters", "1", "--no-lpips", "--no-csim",
                 "--no-progress", "--device", "cpu"],
                {k: v for k, v in dict(FIT_FLAGS, **{"--iters": int_domain(0), "--finetune-iters": int_domain(0)}).items()
                 if k != "--reg-pose"}, ["--checkpoint", "--out"], {"pre_out": "fit_out"}),
        "eval": (["eval", "--checkpoint", c, "--dataset", d, "--out", "ev", "--iters", "1", "--no-lpips", "--no-csim",
                  "--no-progress", "--device", "cpu"],
                 dict(FIT_FLAGS, **{"--split": choice_domain(["test", "train"]),
                                    "--ablation-lambda": float_domain(0, 0),  # needs VGG16
                                    "--persons": pred_domain(lambda t: t in ("p0003",), STRING_POOL + ["p0000", "p9"])}),
                 ["--checkpoint", "--dataset", "--out"], {}),
        "interp": (["interp", "--checkpoint", c, "--dataset", d, "--person-a", "p0000", "--person-b", "p0001", "--out",
                    "g.png", "--steps", "2", "--yaws", "0", "--device", "cpu"],
                   {"--steps": int_domain(2, 64),
                    "--yaws": pred_domain(_yaws_ok, FLOAT_POOL + ["0,,nan", ",", "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17"]),
                    "--person-a": choice_domain(["p0000", "p0001", "p0002", "p0003"]),
                    "--person-b": choice_domain(["p0000", "p0001", "p0002", "p0003"])},
                   ["--checkpoint", "--dataset", "--person-a", "--person-b", "--out"], {}),
        "gaze": (["gaze", "--checkpoint", w["gaze_ckpt"], "--dataset", d, "--person", "p0000", "--out", "g.png",
                  "--steps", "2", "--x-dims", "0", "--y-dims", "1", "--device", "cpu"],
                 {"--steps": int_domain(2, 32), "--spread": float_domain(0, 100, lo_open=True),
                  "--yaw": float_domain(-360, 360), "--person": choice_domain(["p0000", "p0001", "p0002", "p0003"]),
                  "--x-dims": pred_domain(lambda t: _ints(t) == [0], INT_POOL + ["0,1", "2", "0,,", "1"]),
                  "--y-dims": pred_domain(lambda t: t in ("0", "1") and False, INT_POOL + ["0", "5", "1,0"])},
                 ["--checkpoint", "--dataset", "--person", "--out"], {}),
        "train": (["train", d, "--out", "run", "--steps", "1", "--batch-size", "2", "--lambda-perceptual", "0",
                   "--device", "cpu", "--no-progress", "--model", json.dumps(TINY)],
                  {"--steps": int_domain(1, 10**10), "--batch-size": int_domain(1, 1 << 16),
                   "--lr": float_domain(0, 1e3, lo_open=True), "--lr-final": float_domain(0, 1e3, lo_open=True),
                   "--lambda-perceptual": float_domain(0, 0), "--checkpoint-every": int_domain(1),
                   "--sample-every": int_domain(1), "--log-every": int_domain(1), "--seed": SEED,
                   "--max-minutes": float_domain(0, 1e9, lo_open=True), "--max-bad-steps": int_domain(1, 10**6),
                   "--bad-samples": choice_domain(["stop", "skip"]), "--path": choice_domain(["fast", "reference"]),
                   "--lr-scale": pred_domain(lambda t: False, JSON_POOL + ['{"encoding": 0}', '{"nope": 1}',
                                                                           '{"field": "x"}', '{"field": 1e999}']),
                   "--model": pred_domain(lambda t: False, JSON_POOL + MODEL_POOL)},
                  ["--out"], {}),
        "realvideo": (["realvideo", w["pre"], "--out", "rv", "--train-frames", "0-1", "--test-frames", "2-2", "--steps", "1",
                       "--batch-size", "1", "--checkpoint-every", "1", "--no-lpips", "--no-progress", "--device", "cpu",
                       "--expression-components", "0", "--model", json.dumps(dict(TINY, image_size=32))],
                      {"--steps": int_domain(1), "--batch-size": int_domain(1), "--checkpoint-every": int_domain(1),
                       "--threads": int_domain(1, 1024), "--lr": float_domain(0, 1e9, lo_open=True),
                       "--lr-final": float_domain(0, 1e9, lo_open=True), "--seed": SEED,
                       "--max-minutes": float_domain(0, 1e9, lo_open=True), "--expression-components": int_domain(0, 4),
                       "--identity": choice_domain(["mean", "frame"]),
                       "--train-frames": pred_domain(lambda t: t in ("0-1", "0", "1"), FRAMES_POOL),
                       "--test-frames": pred_domain(lambda t: t in ("2-2", "2"), FRAMES_POOL),
                       "--model": pred_domain(lambda t: False, JSON_POOL + MODEL_POOL)},
                      ["--out"], {}),
        "preprocess": (["preprocess", w["still"], "--out", "set", "--resolution", "32", "--no-progress"],
                       {"--resolution": int_domain(16, 4096), "--fov": float_domain(5, 150),
                        "--smooth": float_domain(0, 1000), "--expression-dim": int_domain(1, 1404),
                        "--max-frames": int_domain(1), "--stride": int_domain(1),
                        "--face": pred_domain(lambda t: t.strip().lower() in ("auto", "largest", "0"),
                                              INT_POOL + ["first", "-1", "1000", "1e3"]),
                        "--split": pred_domain(lambda t: t in ("train", "val", "test") or (t.isprintable() and t and "/" not in t),
                                               ["", "a/b", "\t", "x\n"]),
                        "--identity": choice_domain(["facenet"])},
                       ["--out"], {"fakes": True}),
        "preprocess-import": (["preprocess", "import", "--tracking", w["track"], "--out", "imp", "--resolution", "32",
                               "--full-masks"],
                              {"--resolution": int_domain(16, 4096), "--head-radius": float_domain(0, 1e6, lo_open=True)},
                              ["--out"], {}),
        "dataset-check": (["dataset", "check", d], {"--level": choice_domain(["full", "header", "arrays"])}, [], {}),
        "build-synthetic": (["dataset", "build-synthetic", "--out", "ds", "--size", "tiny", "--persons", "2",
                             "--frames-per-person", "1", "--test-persons", "1", "--resolution", "8"],
                            {"--size": choice_domain(["tiny", "small", "medium", "large"]), "--seed": SEED,
                             "--resolution": int_domain(8, 2048), "--persons": int_domain(2, 100_000),
                             "--frames-per-person": int_domain(1, 5_000_000), "--test-persons": int_domain(0, 1),
                             "--supersample": int_domain(1, 8), "--workers": int_domain(0, 1024),
                             "--identity": choice_domain(["params"])},
                            ["--out"], {}),
        "init-checkpoint": (["init-checkpoint", "init.safetensors"], {"--seed": SEED}, [], {}),
        "assets": (["assets", "fetch", "--only", "nosuch-asset"], {}, [], {"always_bad": True}),
        "info": (["info"], {}, [], {}),
        "demo": (["demo", "--size", "nosuch"], {}, [], {"parser_only": True}),
        # the viewer serves until stopped: only inputs it must refuse before it serves are generated
        "view": (["view", c, "--data", d, "--no-live", "--port", "0", "--device", "cpu", "--host", "0.0.0.0"],
                 {"--port": int_domain(0, 65535), "--components": int_domain(1, 64), "--threads": int_domain(1, 1024),
                  "--preview-size": int_domain(1, 8)}, [], {"always_bad": True}),
        "dataset-identity": (["render", "--checkpoint", c, "--identity", f"{d}:p0001", "--out", "r.png", "--device", "cpu"],
                             {"--identity": pred_domain(lambda t: False, [f"{d}:nobody", f"{d}:", "random:x", "random:-1",
                                                                          f"random:{2**64}", "zeros:1", ":p0000"])},
                             [], {}),
    }


def _ints(text):
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        return None


def _yaws_ok(text):
    try:
        v = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        return False
    return 0 < len(v) <= 16 and all(math.isfinite(x) for x in v)


JSON_POOL = ["", "{", "[]", "1", "null", '"x"', "[" * 5000 + "]" * 5000, '{"a": ' * 3000 + "1" + "}" * 3000,
             '{"steps": NaN}', "{'single': 1}", "😀"]
MODEL_POOL = ['{"nope": 1}', '{"mlp_width": -1}', '{"mlp_width": 1e999}', '{"mlp_width": "wide"}', '{"image_size": 0}',
              '{"n_samples": 100000}', '{"mlp_width": 100000, "mlp_depth": 200}', '{"feature_size": 1000000}',
              '{"position_encoding": "magic"}', '{"renderer_channels": "abc"}', '{"identity_dim": 7}',
              '{"skip_layer": 99}', '{"image_size": 100000}', '{"sigma_activation": 3}']
FRAMES_POOL = ["", "a-b", "5-2", "-1", "0-", "0-999999999999", "100", "1,1", "2-1", "nan", "0-1-2", "😀"]


# ------------------------------------------------------------------------------------------------ CLI cases

def _set_flag(argv, flag, value):
    """argv with `flag` set to value (as --flag=value, so values like -inf stay values), replacing an existing one."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a == flag:
            i += 2
            continue
        if a.startswith(flag + "="):
            i += 1
            continue
        out.append(a)
        i += 1
    return out + [f"{flag}={value}"]


def _drop_flag(argv, flag):
    out, i = [], 0
    while i < len(argv):
        if argv[i] == flag:
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def cli_case(rng: random.Random, w) -> Case:
    cmds = commands(w)
    name = rng.choice(sorted(cmds))
    base, flags, required, opts = cmds[name]
    base = list(base)
    fakes = bool(opts.get("fakes"))
    pre_out = opts.get("pre_out")
    setup = None
    if pre_out:
        def setup(case_dir, world, _d=pre_out):  # fit's --out exists beforehand (fit itself leaves one: other row)
            os.makedirs(os.path.join(case_dir, _d), exist_ok=True)
    if opts.get("always_bad") or opts.get("parser_only"):
        kind = rng.choice(["as_is", "unknown_flag", "extra_positional"]) if not opts.get("parser_only") else rng.choice(
            ["as_is", "bad_int", "bad_float", "unknown_flag"])
        if name == "view" and kind != "as_is":
            kind = "value"
        if name == "demo":
            argv, tok = {"as_is": (base, ["--size"]), "bad_int": (["demo", "--seed=" + rng.choice(["x", "1.5", ""])], ["--seed"]),
                         "bad_float": (["demo", "--lambda-perceptual=" + rng.choice(["x", "", "1,0"])], ["--lambda-perceptual"]),
                         "unknown_flag": (["demo", "--bogus-" + rng.choice(UNICODE + ["x"])], ["--bogus"])}[kind]
        elif name == "view":
            # the base serves on 0.0.0.0 without --allow-remote: refused; or a value outside a flag's range
            flag = rng.choice(["--host"] + sorted(flags))
            if flag == "--host":
                argv, tok = base, ["--host", "--allow-remote"]
            else:
                ok = flags[flag][1]
                value = rng.choice([v for v in INT_POOL if not ok(v)])
                argv, tok = _set_flag(base[:-2], flag, value), [flag]
            kind = f"{flag}"
        elif name == "assets":
            argv, tok = {"as_is": (["assets", "fetch", "--only", rng.choice(UNICODE + ["nosuch", "", "VGG16"])], ["--only"]),
                         "unknown_flag": (["assets", "fetch", "--bogus"], ["--bogus"]),
                         "extra_positional": (["assets", "fetch", "--only", "vgg16", "--from", "no/such/dir" + rng.choice(UNICODE)],
                                              ["--from"])}[kind]
        else:
            argv, tok = base, []
        return Case("cli", f"{name}:{kind}:{' '.join(argv[1:])[:200]}", argv, tok, setup=setup, fakes=fakes,
                    subprocess_ok=not fakes)
    if name == "info":
        extra = rng.choice(["--bogus", "extra", "--json=" + rng.choice(UNICODE)])
        return Case("cli", f"info:{extra}", ["info", extra], [extra.split("=")[0]])
    kinds = ["value"] * 6 + ["unknown_flag", "missing_required", "path", "extra_positional"]
    kind = rng.choice(kinds)
    if kind == "value" and flags:
        flag = rng.choice(sorted(flags))
        dom = flags[flag]
        if dom[0] == "int":
            pool = INT_POOL
        elif dom[0] == "float":
            pool = FLOAT_POOL
        elif dom[0] == "choice":
            pool = STRING_POOL + ["FAST", "fp16" if flag == "--precision" else "nope"]
        else:
            pool = dom[2]
        ok = dom[1]
        bad = [v for v in pool if not ok(v)]
        value = rng.choice(bad)
        argv = _set_flag(base, flag, value)
        return Case("cli", f"{name}:{flag}={value[:60]!r}", argv, [flag], setup=setup, fakes=fakes, subprocess_ok=not fakes)
    if kind == "missing_required" and required:
        flag = rng.choice(required)
        return Case("cli", f"{name}:missing {flag}", _drop_flag(base, flag), [flag], setup=setup, fakes=fakes,
                    subprocess_ok=not fakes)
    if kind == "unknown_flag":
        flag = "--" + rng.choice(["bogus", "no-such-flag", "ñ", "😀", "out2", "x" * 100])
        return Case("cli", f"{name}:unknown {flag}", base + [flag], [flag[:40]], setup=setup, fakes=fakes,
                    subprocess_ok=not fakes)
    if kind == "extra_positional" and name not in ("preprocess",):
        extra = rng.choice(["extra", "😀", "-", "x" * 50, "ünï"])
        return Case("cli", f"{name}:extra {extra}", base + [extra], [extra[:40]], setup=setup, fakes=fakes,
                    subprocess_ok=not fakes)
    return path_case(rng, name, base, w, setup, fakes)


PATH_FLAGS = {  # command -> flags (or positional indexes) that name files or directories to read / write
    "render": {"--checkpoint": "in", "--identity": "code", "--expression": "code", "--out": "out_png", "--opacity-out": "out_png"},
    "orbit": {"--checkpoint": "in", "--identity": "code", "--out": "out_video"},
    "drive": {"--checkpoint": "in", "--target": "code", "--driver": "in", "--out": "out_video"},
    "fit": {"--checkpoint": "in", 1: "in", "--out": "out_dir_file"},
    "eval": {"--checkpoint": "in", "--dataset": "in", "--out": "out_dir_file", "--ablation-identity": "in"},
    "interp": {"--checkpoint": "in", "--dataset": "in", "--out": "out_png"},
    "gaze": {"--checkpoint": "in", "--dataset": "in", "--out": "out_png"},
    "train": {1: "in", "--out": "out_dir_file", "--config": "in", "--vgg-weights": "in_vgg"},
    "realvideo": {1: "in", "--out": "out_dir_file"},
    "preprocess": {1: "in", "--out": "out_dir_file", "--expression-basis": "in", "--adaface": "in_adaface"},
    "preprocess-import": {"--tracking": "in", "--out": "out_dir_file"},
    "dataset-check": {2: "in"},
    "build-synthetic": {"--out": "out_dir_file"},
    "init-checkpoint": {1: "out_ckpt"},
    "dataset-identity": {"--identity": "code"},
}
BAD_PATHS = ["no/such/file", "missing.safetensors", "ünï/cödé.png", "😀.npy", "x" * 300, "/dev/null", "/dev/zero", ".",
             "..", "", " ", "-", "a:b:c"]


def path_case(rng, name, base, w, setup, fakes) -> Case:
    flags = PATH_FLAGS.get(name)
    if not flags:
        return Case("cli", f"{name}:unknown --zz", base + ["--zz"], ["--zz"], setup=setup, fakes=fakes, subprocess_ok=not fakes)
    flag = rng.choice(sorted(flags, key=str))
    role = flags[flag]
    if role.startswith("out"):
        # outputs: a wrong extension, a missing directory, a directory in the way, unicode names
        if role == "out_dir_file":
            value = "file_in_the_way"  # a file where the output directory goes
        elif role == "out_ckpt":
            value = rng.choice(["x.txt", "no/such/dir/x.safetensors", "x.safetensors/", "😀"])
        else:
            value = rng.choice(["out.txt", "out", "no/such/dir/out" + (".png" if role == "out_png" else ".mp4"), "a_dir.png",
                                "ünï.bmp", ".png"])
        inner_setup = setup

        def setup2(case_dir, world, _v=value, _s=inner_setup):
            if _s:
                _s(case_dir, world)
            if _v == "file_in_the_way":
                open(os.path.join(case_dir, _v), "w").write("x")
            if _v == "a_dir.png":
                os.makedirs(os.path.join(case_dir, _v))
        argv = _set_positional(base, flag, value)
        return Case("cli", f"{name}:{flag} out {value[:60]!r}", argv, [str(flag) if isinstance(flag, str) else value[:40], value[:40]],
                    setup=setup2, fakes=fakes, subprocess_ok=not fakes)
    value = rng.choice(BAD_PATHS + ([w["data"]] if role in ("code",) else []) + ([w["ckpt"]] if flag in ("--dataset", 1) else []))
    if role == "in_vgg":
        argv = _set_flag(_set_positional(base, flag, value), "--lambda-perceptual", "1")
    elif role == "in_adaface":
        argv = _set_flag(_set_positional(base, flag, value), "--identity", "adaface")
    else:
        argv = _set_positional(base, flag, value)
    tokens = [value[:40]] if value.strip() else [repr(value)]  # an empty or blank path shows as its repr
    if isinstance(flag, str):
        tokens.append(flag)
    if flag == 1 and name in ("train", "realvideo"):
        tokens.append("DATA")
    # `dataset check` of a directory lists its problems (exit 1); a path that is no directory is an error (exit 2)
    expect = "check" if name == "dataset-check" else "fail"
    return Case("cli", f"{name}:{flag} in {value[:60]!r}", argv, tokens, expect=expect, setup=setup, fakes=fakes,
                subprocess_ok=not fakes)


def _set_positional(argv, flag, value):
    if isinstance(flag, int):
        out = list(argv)
        out[flag] = value
        return out
    return _set_flag(argv, flag, value)


# ------------------------------------------------------------------------------------------------ file damage

def _pickle_bytes():
    """A pickle that, if anything ever unpickled it, would create MARKER in the working directory."""
    class Evil:
        def __reduce__(self):
            return (open, (MARKER, "w"))
    return pickle.dumps({"weights": Evil()}, protocol=2)


def _huge_safetensors_header():
    return struct.pack("<Q", 2**63 - 1) + b"{}"


def _huge_tensor_header():
    h = json.dumps({"w": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 16]}}).encode()
    return struct.pack("<Q", len(h)) + h + b"\0" * 16


def _lying_offsets_header():
    h = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 2**62]}}).encode()
    return struct.pack("<Q", len(h)) + h + b"\0" * 16


def _png_bomb():
    """A PNG whose header claims 2^31-1 x 2^31-1 pixels."""
    def chunk(t, data):
        c = struct.pack(">I", len(data)) + t + data
        return c + struct.pack(">I", zlib.crc32(t + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", 2**31 - 1, 2**31 - 1, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _npy_huge_shape():
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,), }"
    header += " " * (-(len(header) + 11) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"\0" * 64


def _deep_json():
    return ("[" * 100000 + "]" * 100000).encode()


MUTATIONS = ["missing", "empty", "truncate", "bitflip_head", "bitflip_any", "wrong_kind_text", "wrong_kind_png",
             "wrong_kind_dir", "pickle", "huge_header", "zeros", "garbage"]


def damage(path: str, how: str, rng: random.Random, kind: str):
    """Damage the file at `path` in place (it exists; `missing` deletes it)."""
    data = open(path, "rb").read() if os.path.isfile(path) else b""
    if how == "missing":
        os.remove(path)
        return
    if how == "empty":
        data = b""
    elif how == "truncate":  # at most 70%: a cut that only drops a file's tail marker can leave it readable
        data = data[: rng.randrange(1, max(2, int(len(data) * 0.7)))]
    elif how in ("bitflip_head", "bitflip_any"):
        data = bytearray(data)
        span = min(len(data), 256) if how == "bitflip_head" else len(data)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(span)
            data[i] ^= 1 << rng.randrange(8)
        data = bytes(data)
    elif how == "wrong_kind_text":
        data = "just some notes ünïcödé\n".encode()
    elif how == "wrong_kind_png":
        buf = io.BytesIO()
        from PIL import Image
        Image.new("RGB", (4, 4)).save(buf, format="PNG")
        data = buf.getvalue()
    elif how == "wrong_kind_dir":
        os.remove(path)
        os.makedirs(path)
        return
    elif how == "pickle":
        data = _pickle_bytes()
    elif how == "huge_header":
        data = {"safetensors": rng.choice([_huge_safetensors_header(), _huge_tensor_header(), _lying_offsets_header()]),
                "png": _png_bomb(), "npy": _npy_huge_shape(), "json": _deep_json(), "txt": b"1 " * 3_000_000,
                "video": _png_bomb(), "npz": _npy_huge_shape()}[kind]
    elif how == "zeros":
        data = b"\0" * max(16, len(data))
    elif how == "garbage":
        data = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4096)))
    with open(path, "wb") as f:
        f.write(data)


def may_pass(how: str, kind: str) -> bool:
    """Damage that can leave a valid file: bits flipped in a payload (or a header's free text), a cut that lands after
    what the reader needs, the wrong kind where any file of that kind is acceptable."""
    if how in ("bitflip_any", "bitflip_head"):  # no format here has a checksum over its header and payload
        return True
    if how == "truncate" and kind == "video":  # the frames before the cut still decode
        return True
    if how == "wrong_kind_png" and kind == "video":  # ffmpeg reads a still as a one-frame video
        return True
    return False


# (what, the file inside a copy of the world, kind, consumer argv builder, token builder)
def file_targets(w):
    d = w["data"]

    def ds_copy(case_dir, world):
        shutil.copytree(world["data"], os.path.join(case_dir, "fzds"))

    def run_copy(case_dir, world):
        shutil.copytree(world["run"], os.path.join(case_dir, "fzrun"))

    def file_copy(src, dst):
        def f(case_dir, world):
            p = os.path.join(case_dir, dst)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            shutil.copy(world[src] if src in world else src, p)
        return f

    ck = ["--checkpoint", "fzck/model.safetensors"]
    T = []
    # checkpoints, read by every model command
    for argv in (["render", *ck, "--identity", "zeros", "--out", "o.png", "--device", "cpu"],
                 ["interp", *ck, "--dataset", d, "--person-a", "p0000", "--person-b", "p0001", "--out", "g.png",
                  "--steps", "2", "--yaws", "0", "--device", "cpu"],
                 ["drive", "--target", f"{d}:p0000", "--driver", f"{d}:p0001", *ck, "--out", "d.gif", "--device", "cpu",
                  "--no-progress"],
                 ["eval", *ck, "--dataset", d, "--out", "ev", "--iters", "1", "--no-lpips", "--no-csim", "--no-progress",
                  "--device", "cpu"]):
        T.append(("checkpoint", file_copy("ckpt", "fzck/model.safetensors"), "fzck/model.safetensors", "safetensors", argv,
                  ["fzck/model.safetensors", "--checkpoint"]))
    # a training run: the pointer, a step's files (resume and render)
    T.append(("run-latest", run_copy, "fzrun/checkpoints/latest", "txt",
              ["render", "--checkpoint", "fzrun/checkpoints/latest", "--identity", "zeros", "--out", "o.png", "--device", "cpu"],
              ["fzrun/checkpoints/latest", "--checkpoint"]))
    T.append(("run-latest-resume", run_copy, "fzrun/checkpoints/latest", "txt",
              ["train", d, "--out", "fzrun", "--resume", "--steps", "3", "--lambda-perceptual", "0", "--batch-size", "2",
               "--device", "cpu", "--no-progress", "--model", json.dumps(TINY)], ["fzrun"], "may_pass"))
    for f, kind in (("model.safetensors", "safetensors"), ("train_state.safetensors", "safetensors"),
                    ("train_state.json", "json")):
        T.append((f"run-{f}", run_copy, f"fzrun/checkpoints/step_00000002/{f}", kind,
                  ["train", d, "--out", "fzrun", "--resume", "--steps", "3", "--lambda-perceptual", "0", "--batch-size", "2",
                   "--device", "cpu", "--no-progress", "--model", json.dumps(TINY)],
                  ["fzrun/checkpoints/step_00000002", "fzrun"]))
    # code files
    for src, dst, kind, flag in (("id_npy", "fzcodes/id.npy", "npy", "--identity"), ("expr_txt", "fzcodes/ex.txt", "txt", "--expression"),
                                 ("id_st", "fzcodes/id.safetensors", "safetensors", "--identity")):
        argv = ["render", "--checkpoint", w["ckpt"], "--identity", "zeros", "--out", "o.png", "--device", "cpu"]
        argv = _set_flag(argv, flag, dst)
        T.append((f"code-{kind}", file_copy(src, dst), dst, kind, argv, [dst, flag]))
    T.append(("target-code", file_copy("id_st", "fzcodes/t.safetensors"), "fzcodes/t.safetensors", "safetensors",
              ["drive", "--target", "fzcodes/t.safetensors", "--driver", f"{d}:p0001", "--checkpoint", w["ckpt"], "--out",
               "d.gif", "--device", "cpu", "--no-progress"], ["fzcodes/t.safetensors", "--target"]))
    # datasets: the manifest, the arrays, a training person's image and mask, read by every dataset command
    consumers = {
        "check": (["dataset", "check", "fzds"], "check"),
        "train": (["train", "fzds", "--out", "run", "--steps", "1", "--batch-size", "2", "--lambda-perceptual", "0",
                   "--device", "cpu", "--no-progress", "--model", json.dumps(TINY)], "fail"),
        "interp": (["interp", "--checkpoint", w["ckpt"], "--dataset", "fzds", "--person-a", "p0000", "--person-b", "p0001",
                    "--out", "g.png", "--steps", "2", "--yaws", "0", "--device", "cpu"], "fail"),
        "drive": (["drive", "--target", "fzds:p0000", "--driver", "fzds:p0001", "--checkpoint", w["ckpt"], "--out", "d.gif",
                   "--device", "cpu", "--no-progress"], "fail"),
        "render": (["render", "--checkpoint", w["ckpt"], "--identity", "fzds:p0001", "--out", "o.png", "--device", "cpu"], "fail"),
    }
    for inner, kind, users in (("manifest.json", "json", ("check", "train", "interp", "drive", "render")),
                               ("frames.safetensors", "safetensors", ("check", "train", "interp", "drive", "render")),
                               ("images/000004.png", "png", ("check", "train", "drive")),
                               ("masks/000004.png", "png", ("check", "train", "drive"))):
        for u in users:
            argv, mode = consumers[u]
            T.append((f"dataset-{inner}-{u}", ds_copy, f"fzds/{inner}", kind, argv, ["fzds"], mode))
    # media for preprocess (fake detectors) and the user's tracking (preprocess import)
    T.append(("still", file_copy("still", "fzin/face.png"), "fzin/face.png", "png",
              ["preprocess", "fzin/face.png", "--out", "set", "--resolution", "32", "--no-progress"], ["fzin/face.png"], "fail", True))
    T.append(("still-ppm", file_copy("still", "fzin/face.ppm"), "fzin/face.ppm", "png",
              ["preprocess", "fzin/face.ppm", "--out", "set", "--resolution", "32", "--no-progress"], ["fzin/face.ppm"], "fail", True))
    T.append(("video", file_copy("video", "fzin/clip.mp4"), "fzin/clip.mp4", "video",
              ["preprocess", "fzin/clip.mp4", "--out", "set", "--resolution", "32", "--no-progress"], ["fzin/clip.mp4"], "fail", True))
    T.append(("basis", file_copy("basis", "fzin/basis.safetensors"), "fzin/basis.safetensors", "safetensors",
              ["preprocess", w["still"], "--out", "set", "--resolution", "32", "--no-progress", "--expression-basis",
               "fzin/basis.safetensors"], ["fzin/basis.safetensors", "--expression-basis"], "fail", True))

    def track_copy(case_dir, world):
        shutil.copytree(os.path.dirname(world["track"]), os.path.join(case_dir, "fztrack"))
    T.append(("tracking", track_copy, "fztrack/TRACK.json", "json",
              ["preprocess", "import", "--tracking", "fztrack/TRACK.json", "--out", "imp", "--resolution", "32", "--full-masks"],
              ["fztrack/TRACK.json", "--tracking"]))
    T.append(("tracking-image", track_copy, "fztrack/f1.png", "png",
              ["preprocess", "import", "--tracking", "fztrack/TRACK.json", "--out", "imp", "--resolution", "32", "--full-masks"],
              ["fztrack/TRACK.json", "f1.png", "--tracking"], "may_pass"))
    T.append(("config", file_copy("config", "fzcfg/train.json"), "fzcfg/train.json", "json",
              ["train", d, "--out", "run", "--config", "fzcfg/train.json"], ["fzcfg/train.json", "--config"]))
    T.append(("vgg", file_copy("ckpt", "fzw/vgg16.safetensors"), "fzw/vgg16.safetensors", "safetensors",
              ["train", d, "--out", "run", "--steps", "1", "--batch-size", "2", "--lambda-perceptual", "1", "--vgg-weights",
               "fzw/vgg16.safetensors", "--device", "cpu", "--no-progress", "--model", json.dumps(TINY)],
              ["fzw/vgg16.safetensors", "--vgg-weights"]))

    def cache_copy(case_dir, world):
        shutil.copytree(world["cache"], os.path.join(case_dir, "fzcache"))
    T.append(("face-geometry", cache_copy, "fzcache/face_geometry.npz", "npz",
              ["preprocess", w["still"], "--out", "set", "--resolution", "32", "--no-progress"],
              ["face_geometry"], "fail", True, {"DGNERF_CACHE": "fzcache"}))
    return T


def file_case(rng: random.Random, w) -> Case:
    targets = file_targets(w)
    t = rng.choice(targets)
    what, copy, rel, kind, argv, tokens = t[:6]
    mode = t[6] if len(t) > 6 else "fail"
    fakes = t[7] if len(t) > 7 else False
    env = t[8] if len(t) > 8 else {}
    how = rng.choice(MUTATIONS)
    seed = rng.randrange(2**31)
    if how == "wrong_kind_png" and kind == "png":
        how = "wrong_kind_text"
    expect = mode if mode == "check" else ("may_pass" if (may_pass(how, kind) or mode == "may_pass") else "fail")
    if what.startswith("run-train_state") and how in ("missing", "wrong_kind_dir"):
        # a step directory without its train_state.json is an unfinished write: --resume takes the one before it
        expect = "may_pass"

    def setup(case_dir, world, _copy=copy, _rel=rel, _how=how, _seed=seed, _kind=kind):
        _copy(case_dir, world)
        damage(os.path.join(case_dir, _rel), _how, random.Random(_seed), _kind)

    if mode == "check" and may_pass(how, kind):
        expect = "may_pass_check"
    return Case("files", f"{what}:{how}:{seed}", list(argv), list(tokens), expect=expect, setup=setup, fakes=fakes,
                env=dict(env), subprocess_ok=not fakes)


# ------------------------------------------------------------------------------------------------ ops

def op_case(rng: random.Random, w) -> Case:
    from tests.fuzz import opcases
    return opcases.op_case(rng)


# ------------------------------------------------------------------------------------------------ generation

def selftest_case(rng: random.Random, w, _n=[0]) -> Case:
    """The campaign's own check: cases that succeed, crash the worker, hang in Python and hang where no signal
    reaches (the watchdog must catch each)."""
    import signal
    import time

    kinds = ["ok", "crash", "hang_python", "hang_native", "ok2"]
    kind = kinds[rng.randrange(len(kinds))]

    def run(_k=kind):
        if _k == "crash":
            os.kill(os.getpid(), signal.SIGSEGV)
        if _k == "hang_python":
            time.sleep(3600)
        if _k == "hang_native":
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
            time.sleep(3600)
        raise ValueError("dgnerf.selftest: refused")
    return Case("selftest", kind, op=run, tokens=["selftest"], op_expect="reject")


MAKERS = {"cli": cli_case, "files": file_case, "ops": op_case, "selftest": selftest_case}


def generate(family: str, count: int, seed: int, world: dict, start: int = 0) -> list[Case]:
    """Cases start..start+count-1 of the family's distinct sequence for `seed` (the same every time)."""
    out, seen, i = [], set(), 0
    rng = random.Random(f"{family}:{seed}")
    tries = 0
    while len(out) < start + count:
        tries += 1
        if tries > 50 * (start + count) + 1000:
            break  # the family has fewer distinct cases than asked for
        c = MAKERS[family](random.Random(rng.getrandbits(64)), world)
        if c.key in seen:
            continue
        seen.add(c.key)
        out.append(c)
        i += 1
    return out[start:start + count]
