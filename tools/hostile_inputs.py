#!/usr/bin/env python3
"""Runs the instagen binary on a corpus of malformed and hostile inputs and classifies every outcome.

    python3 tools/hostile_inputs.py [--bin target/release/instagen] [--sd DIR] [--only TEXT] [--list]

Classes: clean (non-zero exit, no panic, the message names the culprit), vague (non-zero exit, culprit not named),
panic, abort/signal (killed by a signal or the Rust abort status), timeout, exit0-garbage (status 0 on bad input),
left-files (an error that left partial outputs or temporary files behind), ok (a valid control case that ran).
Each case runs with a 4 GiB address-space limit (so a runaway read or allocation aborts instead of swapping)
and a timeout. --sd is a small diffusers folder as the tests assemble it (tests/common/sd.rs); without it the
script assembles one with `cargo test --test bad_inputs -- --ignored write_sd_fixture`. Only the standard
library is used. Not part of the test command: it is a tool (the per-class tests are tests/bad_inputs.rs).
"""
import argparse, json, os, re, resource, shutil, signal, struct, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---------------------------------------------------------------------------------------------------------------
# safetensors (stdlib only)

def st_read(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    header = json.loads(b[8:8 + n])
    data = b[8 + n:]
    meta = header.pop("__metadata__", None)
    return header, data, meta

def st_write(path, header, data, meta=None):
    h = dict(header)
    if meta is not None:
        h["__metadata__"] = meta
    text = json.dumps(h).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)

def st_fill(path, key_pred, value_bytes_fn):
    """Overwrite the data of every tensor whose name matches with value_bytes_fn(dtype, nbytes)."""
    header, data, meta = st_read(path)
    data = bytearray(data)
    hit = 0
    for k, v in header.items():
        if key_pred(k):
            s, e = v["data_offsets"]
            data[s:e] = value_bytes_fn(v["dtype"], e - s)
            hit += 1
    assert hit, f"no tensor matched in {path}"
    st_write(path, header, bytes(data), meta)

def nan_bytes(dtype, n):
    unit = {"F32": struct.pack("<f", float("nan")), "F16": b"\x00\x7e", "BF16": b"\xc0\x7f"}[dtype]
    return unit * (n // len(unit))

def inf_bytes(dtype, n):
    unit = {"F32": struct.pack("<f", float("inf")), "F16": b"\x00\x7c", "BF16": b"\x80\x7f"}[dtype]
    return unit * (n // len(unit))

def weights_file(d, comp):
    for name in ("model.safetensors", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"):
        p = os.path.join(d, comp, name)
        if os.path.isfile(p):
            return p
    raise FileNotFoundError(comp)

# ---------------------------------------------------------------------------------------------------------------
# Case setup helpers: each returns the argument list given a scratch dir `w` and the clean SD folder copy `sd`.

def edit_json(path, fn):
    j = json.load(open(path))
    fn(j)
    json.dump(j, open(path, "w"))

def set_key(path, key, value):
    return lambda j: j.__setitem__(key, value)

GT = {
    "images": [{"id": 1, "width": 100, "height": 80, "file_name": "a.jpg"}, {"id": 2, "width": 50, "height": 50, "file_name": "b.jpg"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 30], "area": 600, "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 2, "bbox": [5, 5, 10, 10], "area": 100, "iscrowd": 0},
    ],
    "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}],
}
DT = [{"image_id": 1, "category_id": 1, "bbox": [11, 10, 20, 30], "score": 0.9},
      {"image_id": 2, "category_id": 2, "bbox": [5, 6, 10, 10], "score": 0.8}]

class Case:
    def __init__(self, name, args, culprit, setup=None, expect_ok=False, check=None, timeout=None):
        self.name, self.args, self.culprit, self.setup = name, args, culprit, setup
        self.expect_ok, self.check, self.timeout = expect_ok, check, timeout

def cases():
    C = []
    def add(*a, **k):
        C.append(Case(*a, **k))
    S = ["sample", "--weights", "{sd}", "--prompt", "a cat", "--steps", "2", "--batch", "1", "--out", "{w}/out",
         "--backend", "cpu", "--dtype", "f32"]
    def sample(**over):
        a = list(S)
        for k, v in over.items():
            flag = "--" + k.replace("_", "-")
            if flag in a:
                i = a.index(flag)
                if v is None:
                    del a[i:i + 2]
                else:
                    a[i + 1] = v
            elif v is not None:
                a += [flag, v]
        return a

    # Controls: valid runs.
    add("control: sample", sample(), [], expect_ok=True)
    add("control: prompt over 77 tokens (truncated, warned)", sample(prompt=" ".join(["cat"] * 120)), [], expect_ok=True)
    add("control: empty prompt", sample(prompt=""), [], expect_ok=True)
    add("control: bench unet fixture", ["bench", "unet", "--config", "{sd}/unet", "--backend", "cpu", "--min-seconds", "0"], [], expect_ok=True)
    add("control: eval", ["eval", "--gt", "{w}/gt.json", "--dt", "{w}/dt.json"], [], expect_ok=True, setup=write_eval())

    # Numeric flags of sample.
    for v in ["0", "-1", "18446744073709551615", "18446744073709551616", "100000", "abc", "1.5", ""]:
        add(f"sample --batch {v!r}", sample(batch=v), ["--batch"])
    for v in ["0", "-3", "nan", "1e9", "100000", "18446744073709551615", ""]:
        add(f"sample --steps {v!r}", sample(steps=v), ["steps"])
    for v in ["nan", "inf", "-inf", "1e308", "-1", "1000", "abc", ""]:
        add(f"sample --guidance {v!r}", sample(guidance=v), ["--guidance"])
    for v in ["0", "1", "3", "7", "100000", "1073741824", "18446744073709551615", "-8", "x"]:
        add(f"sample --latent {v!r}", sample(latent=v), ["--latent"])
    for v in ["-1", "abc", "18446744073709551616"]:
        add(f"sample --seed {v!r}", sample(seed=v), ["--seed"])
    for v in ["f8", "", "int8"]:
        add(f"sample --dtype {v!r}", sample(dtype=v), ["--dtype"])
    for v in ["gpu", "", "CPU "]:
        add(f"sample --backend {v!r}", sample(backend=v), ["--backend"])
    add("sample without --weights", sample(weights=None), ["--weights"])
    add("sample without --out", sample(out=None), ["--out"])

    # --weights as a file.
    for p, cul in [("/dev/zero", "/dev/zero"), ("/dev/urandom", "/dev/urandom"), ("/dev/null", "/dev/null"),
                   ("{w}/missing", "missing"), ("{w}/empty.safetensors", "empty.safetensors"),
                   ("{w}/text.safetensors", "text.safetensors"), ("{w}/fifo", "fifo")]:
        def mk(w, sd):
            open(os.path.join(w, "empty.safetensors"), "wb").close()
            open(os.path.join(w, "text.safetensors"), "w").write("hello, I am not a checkpoint\n")
            os.mkfifo(os.path.join(w, "fifo"))
        add(f"--weights {p}", sample(weights=p), [cul], setup=mk)
    add("--weights an empty directory", sample(weights="{w}/emptydir"), ["emptydir"], setup=lambda w, sd: os.mkdir(os.path.join(w, "emptydir")))
    def compvis_truncated(w, sd):
        b = open(weights_file(sd, "unet"), "rb").read()
        open(os.path.join(w, "cv.safetensors"), "wb").write(b[: len(b) // 2])
    add("--weights truncated single file", sample(weights="{w}/cv.safetensors", tokenizer="{sd}/tokenizer"), ["cv.safetensors"], setup=compvis_truncated)
    add("--weights a diffusers unet file as CompVis", sample(weights="{sd}/unet/diffusion_pytorch_model.safetensors", tokenizer="{sd}/tokenizer"),
        ["diffusion_pytorch_model.safetensors"])

    # Diffusers folder mutations.
    def rm(rel):
        return lambda w, sd: os.remove(os.path.join(sd, rel))
    for comp in ["unet", "text_encoder", "vae"]:
        add(f"{comp}/config.json missing", sample(), [f"{comp}/config.json", "missing"], setup=rm(f"{comp}/config.json"))
    def link(rel, target):
        def f(w, sd):
            p = os.path.join(sd, rel)
            os.remove(p) if os.path.lexists(p) and not os.path.isdir(p) else None
            os.symlink(target, p)
        return f
    for comp in ["unet", "text_encoder", "vae"]:
        for dev in ["/dev/zero", "/dev/urandom"]:
            add(f"{comp} weights -> {dev}", sample(), [comp], setup=lambda w, sd, comp=comp, dev=dev: link(os.path.relpath(weights_file(sd, comp), sd), dev)(w, sd))
        add(f"{comp}/config.json -> /dev/zero", sample(), [f"{comp}/config.json"], setup=link(f"{comp}/config.json", "/dev/zero"))
        add(f"{comp}/config.json a directory", sample(), [f"{comp}/config.json"],
            setup=lambda w, sd, comp=comp: (os.remove(os.path.join(sd, comp, "config.json")), os.mkdir(os.path.join(sd, comp, "config.json"))))
        add(f"{comp} weights missing", sample(), [comp], setup=lambda w, sd, comp=comp: os.remove(weights_file(sd, comp)))

        def trunc(frac):
            def f(w, sd, comp=comp):
                p = weights_file(sd, comp)
                b = open(p, "rb").read()
                open(p, "wb").write(b[: int(len(b) * frac)])
            return f
        for frac in [0.0, 0.001, 0.5, 0.999]:
            add(f"{comp} weights truncated to {frac}", sample(), [comp], setup=trunc(frac))
        def garbage(w, sd, comp=comp):
            open(weights_file(sd, comp), "wb").write(os.urandom(4096))
        add(f"{comp} weights random bytes", sample(), [comp], setup=garbage)
        def huge_header(w, sd, comp=comp):
            open(weights_file(sd, comp), "wb").write(struct.pack("<Q", 2**63) + b"{}")
        add(f"{comp} weights header length 2^63", sample(), [comp], setup=huge_header)
        def bad_header_json(w, sd, comp=comp):
            open(weights_file(sd, comp), "wb").write(struct.pack("<Q", 10) + b"{not json}")
        add(f"{comp} weights malformed header", sample(), [comp], setup=bad_header_json)
        def offsets(w, sd, comp=comp):
            p = weights_file(sd, comp)
            h, d, m = st_read(p)
            k = sorted(h)[0]
            h[k]["shape"] = [x * 2 if i == 0 else x for i, x in enumerate(h[k]["shape"])] or [2]
            st_write(p, h, d, m)
            return k
        add(f"{comp} weights: a tensor's offsets do not match its shape", sample(), [comp, "tensor '"], setup=offsets)
        def wrong_shape(w, sd, comp=comp):
            p = weights_file(sd, comp)
            h, d, m = st_read(p)
            k = next(k for k in sorted(h) if len(h[k]["shape"]) == 2 and h[k]["shape"][0] % 2 == 0)
            h[k]["shape"] = [h[k]["shape"][0] // 2, h[k]["shape"][1] * 2]
            st_write(p, h, d, m)
        add(f"{comp} weights: a tensor of the wrong shape", sample(), [comp, "shape"], setup=wrong_shape)
        def wrong_dtype(w, sd, comp=comp):
            p = weights_file(sd, comp)
            h, d, m = st_read(p)
            k = next(k for k in sorted(h) if h[k]["dtype"] in ("F32", "F16", "BF16"))
            h[k]["dtype"] = {"F32": "I32", "F16": "I16", "BF16": "I16"}[h[k]["dtype"]]
            st_write(p, h, d, m)
        add(f"{comp} weights: an integer tensor", sample(), [comp, "dtype"], setup=wrong_dtype)
        def drop_entry(w, sd, comp=comp):
            p = weights_file(sd, comp)
            h, d, m = st_read(p)
            del h[sorted(h)[-1]]
            st_write(p, h, d, m)
        add(f"{comp} weights: a header entry removed (data left)", sample(), [comp, "no tensor"], setup=drop_entry)
        def drop_key(w, sd, comp=comp):
            p = weights_file(sd, comp)
            h, d, m = st_read(p)
            k = sorted(x for x in h if comp != "vae" or x.startswith("decoder."))[-1]
            s0, e0 = h.pop(k)["data_offsets"]
            for v in h.values():
                s1, e1 = v["data_offsets"]
                if s1 >= e0:
                    v["data_offsets"] = [s1 - (e0 - s0), e1 - (e0 - s0)]
            st_write(p, h, d[:s0] + d[e0:], m)
        add(f"{comp} weights: a key missing", sample(), [comp, "missing key"], setup=drop_key)
        culp = {"unet": "step", "text_encoder": "text encoder", "vae": "VAE"}[comp]
        add(f"{comp} weights all NaN", sample(), [culp], setup=lambda w, sd, comp=comp: st_fill(weights_file(sd, comp), lambda k: True, nan_bytes))
        add(f"{comp} weights: one bias inf", sample(), [culp],
            setup=lambda w, sd, comp=comp: st_fill(weights_file(sd, comp), lambda k, s=[0]: k.endswith("bias") and s.__setitem__(0, s[0] + 1) is None and s[0] == 1, inf_bytes))

    # Config values.
    U, T, V = "unet/config.json", "text_encoder/config.json", "vae/config.json"
    def cfg(rel, key, value):
        return lambda w, sd: edit_json(os.path.join(sd, rel), set_key(None, key, value))
    for v in [1000000000, 0, 3, -1, 18446744073709551615, "64", None]:
        add(f"unet sample_size {v!r}", sample(), ["sample_size"], setup=cfg(U, "sample_size", v))
    add("unet cross_attention_dim 32", sample(), ["cross_attention_dim"], setup=cfg(U, "cross_attention_dim", 32))
    add("unet block_out_channels []", sample(), ["block_out_channels"], setup=cfg(U, "block_out_channels", []))
    add("unet norm_num_groups 0", sample(), ["norm_num_groups"], setup=cfg(U, "norm_num_groups", 0))
    add("unet norm_num_groups 7", sample(), ["norm_num_groups"], setup=cfg(U, "norm_num_groups", 7))
    add("unet act_fn gelu", sample(), ["act_fn"], setup=cfg(U, "act_fn", "gelu"))
    add("unet in_channels 0", sample(), ["in_channels"], setup=cfg(U, "in_channels", 0))
    add("unet attention_head_dim 0", sample(), ["attention_head_dim"], setup=cfg(U, "attention_head_dim", 0))
    add("unet layers_per_block 0", sample(), ["layers_per_block"], setup=cfg(U, "layers_per_block", 0))
    add("unet down_block_types unknown", sample(), ["down_block_types"], setup=cfg(U, "down_block_types", ["Foo", "Bar"]))
    for v in [0, -0.5, 1e999 if False else "x"]:
        add(f"vae scaling_factor {v!r}", sample(), ["scaling_factor"], setup=cfg(V, "scaling_factor", v))
    add("vae block_out_channels mismatch", sample(), ["block_out_channels"], setup=cfg(V, "block_out_channels", [64]))
    add("vae norm_num_groups 5", sample(), ["norm_num_groups"], setup=cfg(V, "norm_num_groups", 5))
    add("vae latent_channels 3", sample(), ["vae"], setup=cfg(V, "latent_channels", 3))
    add("vae out_channels 4", sample(), ["conv_out", "[4]"], setup=cfg(V, "out_channels", 4))
    add("text_encoder vocab_size 1000 (< tokenizer)", sample(), ["vocab_size", "vocab.json"], setup=cfg(T, "vocab_size", 1000))
    add("text_encoder vocab_size 0", sample(), ["vocab"], setup=cfg(T, "vocab_size", 0))
    add("text_encoder hidden_act relu", sample(), ["hidden_act"], setup=cfg(T, "hidden_act", "relu"))
    add("text_encoder num_attention_heads 0", sample(), ["num_attention_heads"], setup=cfg(T, "num_attention_heads", 0))
    add("text_encoder num_attention_heads 3", sample(), ["num_attention_heads"], setup=cfg(T, "num_attention_heads", 3))
    add("text_encoder max_position_embeddings 10", sample(), ["position"], setup=cfg(T, "max_position_embeddings", 10))
    add("text_encoder hidden_size 65", sample(), ["hidden_size"], setup=cfg(T, "hidden_size", 65))

    # Malformed JSON configs.
    def write(rel, content):
        def f(w, sd):
            p = os.path.join(sd, rel)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            if os.path.lexists(p):
                os.remove(p)
            open(p, "wb").write(content if isinstance(content, bytes) else content.encode())
        return f
    for rel in [U, T, V, "scheduler/scheduler_config.json"]:
        for label, content in [("empty", ""), ("malformed", "{\"sample_size\": "), ("a list", "[1, 2]"),
                               ("nested 100000 deep", "[" * 100000 + "]" * 100000), ("binary", b"\x00\xff\xfe" * 100),
                               ("over 64 MiB", b" " * (65 << 20) + b"{}")]:
            add(f"{rel} {label}", sample(), [rel], setup=write(rel, content))

    # Scheduler.
    SC = "scheduler/scheduler_config.json"
    def sched(**kv):
        def f(w, sd):
            os.makedirs(os.path.join(sd, "scheduler"), exist_ok=True)
            j = {"_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                 "num_train_timesteps": 1000, "set_alpha_to_one": False, "steps_offset": 1, "clip_sample": False}
            j.update(kv)
            json.dump(j, open(os.path.join(sd, SC), "w"))
        return f
    for k, v in [("beta_start", 0), ("beta_start", -1), ("beta_end", 1), ("beta_end", 2), ("beta_start", 1e308),
                 ("beta_end", -0.5), ("num_train_timesteps", 0), ("num_train_timesteps", 1), ("beta_schedule", "foo"),
                 ("trained_betas", [0.1, 0.2]), ("prediction_type", "x"), ("timestep_spacing", "odd")]:
        add(f"scheduler {k} {v!r}", sample(), [k], setup=sched(**{k: v}))
    add("scheduler num_train_timesteps 10 < --steps 50", sample(steps="50"), ["steps"], setup=sched(num_train_timesteps=10))
    add("scheduler config -> /dev/zero", sample(), [SC], setup=lambda w, sd: (os.makedirs(os.path.join(sd, "scheduler"), exist_ok=True), os.symlink("/dev/zero", os.path.join(sd, SC))))

    # Tokenizer.
    TV, TM = "tokenizer/vocab.json", "tokenizer/merges.txt"
    add("merges.txt empty", sample(), ["merges.txt"], setup=write(TM, ""))
    add("merges.txt only the version line", sample(), ["merges.txt"], setup=write(TM, "#version: 0.2\n"))
    add("merges.txt a malformed line", sample(), ["merges.txt"], setup=lambda w, sd: open(os.path.join(sd, TM), "a").write("a b c\n"))
    add("merges.txt -> /dev/zero", sample(), ["merges.txt"], setup=link(TM, "/dev/zero"))
    add("vocab.json -> /dev/urandom", sample(), ["vocab.json"], setup=link(TV, "/dev/urandom"))
    add("vocab.json missing", sample(), ["vocab.json"], setup=rm(TV))
    add("merges.txt missing", sample(), ["merges.txt"], setup=rm(TM))
    add("vocab.json empty object", sample(), ["vocab.json"], setup=write(TV, "{}"))
    add("vocab.json not JSON", sample(), ["vocab.json"], setup=write(TV, "vocab"))
    add("vocab.json a list", sample(), ["vocab.json"], setup=write(TV, "[1,2,3]"))
    def vocab_edit(fn):
        def f(w, sd):
            p = os.path.join(sd, TV)
            j = json.load(open(p))
            fn(j)
            json.dump(j, open(p, "w"))
        return f
    add("vocab.json an id at the vocabulary size", sample(), ["vocab.json"], setup=vocab_edit(lambda j: j.__setitem__("zzzz</w>", len(j))))
    add("vocab.json an id 4e9", sample(), ["vocab.json"], setup=vocab_edit(lambda j: j.__setitem__("a</w>", 4000000000)))
    add("vocab.json an id -1", sample(), ["vocab.json"], setup=vocab_edit(lambda j: j.__setitem__("a</w>", -1)))
    add("vocab.json BOS with another id", sample(), ["vocab.json"], setup=vocab_edit(lambda j: j.__setitem__("<|startoftext|>", 5)))
    add("vocab.json two tokens share an id", sample(), ["vocab.json"], setup=vocab_edit(lambda j: j.__setitem__("a</w>", 0)))
    add("tokenizer folder empty", sample(), ["tokenizer"], setup=lambda w, sd: (shutil.rmtree(os.path.join(sd, "tokenizer")), os.mkdir(os.path.join(sd, "tokenizer"))))
    add("tokenizer.json only, garbage", sample(), ["tokenizer.json"],
        setup=lambda w, sd: (shutil.rmtree(os.path.join(sd, "tokenizer")), write("tokenizer/tokenizer.json", "{\"model\": 5}")(w, sd)))
    add("tokenizer.json only, no merges", sample(), ["tokenizer.json"],
        setup=lambda w, sd: (shutil.rmtree(os.path.join(sd, "tokenizer")), write("tokenizer/tokenizer.json", json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}))(w, sd)))
    add("--tokenizer a missing folder", sample(tokenizer="{w}/nope"), ["nope"])
    add("--tokenizer a file", sample(tokenizer="/etc/hostname"), ["hostname"])

    # Outputs.
    add("--out a regular file", sample(out="{w}/file"), ["file"], setup=lambda w, sd: open(os.path.join(w, "file"), "w").write("x"))
    add("--out under a regular file", sample(out="{w}/file/sub"), ["file"], setup=lambda w, sd: open(os.path.join(w, "file"), "w").write("x"))
    add("--out /dev/null", sample(out="/dev/null"), ["/dev/null"])
    add("--out in /proc", sample(out="/proc/instagen_out"), ["/proc/instagen_out"])
    def json_is_dir(w, sd):
        os.makedirs(os.path.join(w, "out", "42.json"))
    add("--out where 42.json is a directory (no partial outputs left)", sample(), ["42.json"], setup=json_is_dir, check=no_partial)
    def png_is_dir(w, sd):
        os.makedirs(os.path.join(w, "out", "42_0.png", "x"))
    add("--out where 42_0.png is a non-empty directory", sample(), ["42_0.png"], setup=png_is_dir, check=no_partial)
    def feat_is_dir(w, sd):
        os.makedirs(os.path.join(w, "out", "42_features.safetensors", "x"))
    add("--out where the features file is a directory", sample() + ["--features"], ["42_features.safetensors"], setup=feat_is_dir, check=no_partial)

    # bench.
    B = ["bench", "unet", "--config", "{sd}/unet", "--backend", "cpu", "--min-seconds", "0"]
    def bench(what="unet", **over):
        a = list(B)
        a[1] = what
        if what != "unet":
            a[3] = "{sd}/" + {"clip": "text_encoder", "vae": "vae", "kernels": "unet"}[what]
        for k, v in over.items():
            flag = "--" + k.replace("_", "-")
            if flag in a:
                a[a.index(flag) + 1] = v
            else:
                a += [flag, v]
        return a
    for what in ["unet", "clip", "vae"]:
        for v in ["0", "-1", "18446744073709551615", "100000000"]:
            add(f"bench {what} --batch {v}", bench(what, batch=v), ["--batch"])
        for v in ["nan", "inf", "-1", "abc", "1e300"]:
            add(f"bench {what} --min-seconds {v}", bench(what, min_seconds=v), ["--min-seconds"])
        add(f"bench {what} --config missing", bench(what, config="{w}/nope"), ["nope"])
        add(f"bench {what} --config /dev/zero", bench(what, config="/dev/zero"), ["/dev/zero"])
        add(f"bench {what} --dtype f8", bench(what, dtype="f8"), ["--dtype"])
    for v in ["100000", "0", "3", "1073741824", "18446744073709551615"]:
        add(f"bench unet --latent {v}", bench(latent=v), ["--latent"])
    add("bench unet --config sd-v1 --latent 100000", ["bench", "unet", "--config", "sd-v1", "--latent", "100000", "--backend", "cpu"], ["--latent"])
    add("bench unet --config sd-v1 --batch 100000", ["bench", "unet", "--config", "sd-v1", "--batch", "100000", "--backend", "cpu"], ["--batch"])
    add("bench unet sample_size 1e9 config", bench(), ["sample_size"], setup=cfg(U, "sample_size", 1000000000))
    for v in ["0", "100000", "-2"]:
        add(f"bench vae --latent {v}", bench("vae", latent=v), ["--latent"])
    add("bench foo", ["bench", "foo"], ["foo"])
    add("bench kernels --min-seconds nan", ["bench", "kernels", "--backend", "cpu", "--min-seconds", "nan"], ["--min-seconds"])
    add("bench kernels --filter nothing", ["bench", "kernels", "--backend", "cpu", "--filter", "zzzz_no_case"], ["zzzz_no_case"])
    add("bench unet --backend tpu", bench(backend="tpu"), ["--backend"])

    # eval.
    E = ["eval", "--gt", "{w}/gt.json", "--dt", "{w}/dt.json"]
    def ev(gt=None, dt=None, extra=()):
        def f(w, sd):
            write_eval()(w, sd)
            if gt is not None:
                open(os.path.join(w, "gt.json"), "wb").write(gt if isinstance(gt, bytes) else json.dumps(gt).encode())
            if dt is not None:
                open(os.path.join(w, "dt.json"), "wb").write(dt if isinstance(dt, bytes) else json.dumps(dt).encode())
        return f
    for which in ["gt", "dt"]:
        name = f"{which}.json"
        for label, content in [("empty", b""), ("malformed", b"{\"images\": ["), ("nested 100000 deep", b"[" * 100000 + b"]" * 100000),
                               ("binary", os.urandom(1000)), ("a number", b"5"), ("a string", b"\"x\"")]:
            add(f"eval --{which} {label}", E, [name], setup=ev(**{which: content}))
        for dev in ["/dev/zero", "/dev/urandom", "/dev/null"]:
            a = list(E)
            a[a.index("--" + which) + 1] = dev
            add(f"eval --{which} {dev}", a, [dev], setup=write_eval())
        a = list(E)
        a[a.index("--" + which) + 1] = "{w}"
        add(f"eval --{which} a directory", a, ["is a directory"], setup=write_eval())
        a = list(E)
        a[a.index("--" + which) + 1] = "{w}/missing.json"
        add(f"eval --{which} missing", a, ["missing.json"], setup=write_eval())
        a = list(E)
        a[a.index("--" + which) + 1] = "{w}/fifo"
        add(f"eval --{which} a FIFO", a, ["fifo"], setup=lambda w, sd: (write_eval()(w, sd), os.mkfifo(os.path.join(w, "fifo"))))
    g = json.loads(json.dumps(GT))
    for label, fn, cul in [
        ("gt images missing", lambda j: j.pop("images"), "images"),
        ("gt annotation bbox negative width", lambda j: j["annotations"][0].__setitem__("bbox", [1, 1, -5, 3]), "bbox"),
        ("gt annotation bbox 3 numbers", lambda j: j["annotations"][0].__setitem__("bbox", [1, 1, 5]), "bbox"),
        ("gt image width a string", lambda j: j["images"][0].__setitem__("width", "wide"), "width"),
        ("gt annotation on an unknown image", lambda j: j["annotations"][0].__setitem__("image_id", 99), "99"),
        ("gt annotation with an unknown category", lambda j: j["annotations"][0].__setitem__("category_id", 77), "77"),
        ("gt duplicate image id", lambda j: j["images"].append(dict(j["images"][0])), "image"),
        ("gt duplicate annotation id", lambda j: j["annotations"][1].__setitem__("id", 1), "id"),
        ("gt category id a string", lambda j: j["categories"][0].__setitem__("id", "one"), "gt.json"),
        ("gt bbox 1e309", lambda j: None, "gt.json"),
    ]:
        j = json.loads(json.dumps(GT))
        fn(j)
        content = json.dumps(j).encode()
        if "1e309" in label:
            content = content.replace(b"[10, 10, 20, 30]", b"[10, 10, 1e309, 30]")
        add(f"eval {label}", E, [cul], setup=ev(gt=content))
    for label, dt, cul in [
        ("dt an object, not a list", {"image_id": 1}, "dt.json"),
        ("dt unknown category", [dict(DT[0], category_id=55)], "55"),
        ("dt on an image not in the GT", [dict(DT[0], image_id=42)], "42"),
        ("dt bbox 2 numbers", [dict(DT[0], bbox=[1, 2])], "bbox"),
        ("dt bbox negative", [dict(DT[0], bbox=[1, 2, -3, 4])], "bbox"),
        ("dt score a string", [dict(DT[0], score="high")], "score"),
        ("dt score missing", [{k: v for k, v in DT[0].items() if k != "score"}], "score"),
        ("dt score 1e999", None, "dt.json"),
        ("dt image_id -1", [dict(DT[0], image_id=-1)], "dt.json"),
        ("dt image_id 2^64", None, "dt.json"),
    ]:
        content = json.dumps(dt).encode() if dt is not None else json.dumps(DT).replace(
            '"image_id": 1' if "2^64" in label else '"score": 0.9', '"image_id": 18446744073709551616' if "2^64" in label else '"score": 1e999').encode()
        add(f"eval {label}", E, [cul], setup=ev(dt=content))
    add("eval --json is --dt", E + ["--json", "{w}/dt.json"], ["--json"], setup=write_eval(), check=unchanged("dt.json"))
    add("eval --json is --gt via ..", E + ["--json", "{w}/sub/../gt.json"], ["--json"],
        setup=lambda w, sd: (write_eval()(w, sd), os.mkdir(os.path.join(w, "sub"))), check=unchanged("gt.json"))
    add("eval --json is a symlink to --dt", E + ["--json", "{w}/alias.json"], ["--json"],
        setup=lambda w, sd: (write_eval()(w, sd), os.symlink(os.path.join(w, "dt.json"), os.path.join(w, "alias.json"))), check=unchanged("dt.json"))
    add("eval --json in a missing folder", E + ["--json", "{w}/no/such/f.json"], ["f.json"], setup=write_eval())
    add("eval --json a directory", E + ["--json", "{w}/jd"], ["jd"], setup=lambda w, sd: (write_eval()(w, sd), os.makedirs(os.path.join(w, "jd", "x"))))
    add("eval --split lvis", E + ["--split", "lvis"], ["lvis"], setup=write_eval())

    # parity / selfcheck / info flags.
    add("parity --backend gpu", ["parity", "--backend", "gpu"], ["--backend"])
    add("parity --seed -1", ["parity", "--backend", "cpu", "--seed", "-1"], ["--seed"])
    add("parity --filter nothing", ["parity", "--backend", "cpu", "--filter", "zzzz_no_case"], ["zzzz_no_case"])
    add("selfcheck --backend foo", ["selfcheck", "--backend", "foo"], ["--backend"])
    add("unknown subcommand", ["frobnicate"], ["frobnicate"])
    add("unknown flag", ["sample", "--wieghts", "x"], ["--wieghts"])
    return C

def write_eval():
    def f(w, sd):
        json.dump(GT, open(os.path.join(w, "gt.json"), "w"))
        json.dump(DT, open(os.path.join(w, "dt.json"), "w"))
    return f

def no_partial(w):
    out = os.path.join(w, "out")
    if not os.path.isdir(out):
        return None
    bad = [n for n in os.listdir(out) if (n.endswith(".png") and os.path.isfile(os.path.join(out, n)))
           or ".tmp" in n or (n.endswith(".safetensors") and os.path.isfile(os.path.join(out, n)))]
    return f"left {bad}" if bad else None

def unchanged(name):
    def f(w):
        j = json.load(open(os.path.join(w, name))) if os.path.getsize(os.path.join(w, name)) else None
        return None if j in (GT, DT) else f"{name} was overwritten"
    return f

# ---------------------------------------------------------------------------------------------------------------

def limit():
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    os.setsid()

def classify(case, rc, out, err, timed_out, w):
    text = out + err
    if timed_out:
        return "timeout"
    if "panicked" in text:
        return "panic"
    if rc < 0 or rc in (134, 137, 139):
        return "abort/signal"
    if case.expect_ok:
        return "ok" if rc == 0 else "vague"
    if rc == 0:
        return "exit0-garbage"
    if case.check:
        issue = case.check(w)
        if issue:
            return "left-files"
    tmp_left = [os.path.join(dp, n) for dp, _, ns in os.walk(w) for n in ns if ".tmp" in n]
    if tmp_left:
        return "left-files"
    if all(c.lower() in err.lower() for c in case.culprit):
        return "clean"
    return "vague"

def assemble(sd_out):
    env = dict(os.environ, INSTAGEN_SD_FIXTURE_OUT=sd_out)
    r = subprocess.run(["cargo", "test", "--test", "bad_inputs", "--", "--ignored", "--exact", "write_sd_fixture"],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0 or not os.path.isdir(os.path.join(sd_out, "unet")):
        sys.exit(f"could not assemble the SD fixture:\n{r.stdout}\n{r.stderr}")

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/instagen"))
    ap.add_argument("--sd", help="the assembled SD fixture folder (default: assemble one)")
    ap.add_argument("--only", default="", help="only cases whose name contains this")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--verbose", action="store_true", help="print every message")
    a = ap.parse_args()
    a.bin = os.path.abspath(a.bin)  # cases run in their own working directories
    if a.sd:
        a.sd = os.path.abspath(a.sd)
    all_cases = [c for c in cases() if a.only in c.name]
    if a.list:
        for c in all_cases:
            print(c.name)
        print(f"{len(all_cases)} cases")
        return
    base = tempfile.mkdtemp(prefix="instagen_hostile_")
    sd0 = a.sd or os.path.join(base, "sd")
    if not a.sd:
        assemble(sd0)
    counts, rows = {}, []
    for i, c in enumerate(all_cases):
        w = os.path.join(base, f"case{i}")
        os.makedirs(w)
        sd = os.path.join(w, "sd")
        shutil.copytree(sd0, sd, symlinks=True)
        if c.setup:
            try:
                c.setup(w, sd)
            except Exception as e:
                print(f"{'setup-error':14s} {c.name[:58]:58s} {e!r}", flush=True)
                counts["setup-error"] = counts.get("setup-error", 0) + 1
                shutil.rmtree(w, ignore_errors=True)
                continue
        args = [x.replace("{sd}", sd).replace("{w}", w) for x in c.args]
        t0 = time.time()
        timed_out = False
        p = subprocess.Popen([a.bin] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=limit, cwd=w)
        try:
            out, err = p.communicate(timeout=c.timeout or a.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
            timed_out = True
        out, err = out.decode(errors="replace"), err.decode(errors="replace")
        rc = p.returncode
        cls = classify(c, rc, out, err, timed_out, w)
        counts[cls] = counts.get(cls, 0) + 1
        lines = [l.strip() for l in err.strip().splitlines() if l.strip() and "step " not in l[:12]]
        key = [l for l in lines if "error" in l or "panicked" in l or "memory allocation" in l]
        msg = (key or lines or [""])[0]
        msg = re.sub(re.escape(w), "W", msg)[:150]
        rows.append((cls, c.name, rc, time.time() - t0, msg))
        print(f"{cls:14s} {c.name[:58]:58s} rc={rc:<4} {time.time() - t0:5.1f}s  {msg if (a.verbose or cls != 'clean') else ''}", flush=True)
        shutil.rmtree(w, ignore_errors=True)
    shutil.rmtree(base, ignore_errors=True)
    print()
    print(f"{len(rows)} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])))

if __name__ == "__main__":
    main()
