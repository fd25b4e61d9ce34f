#!/usr/bin/env python3
"""Write an OCI image layout with the "large" images of tests/bench/images.sh, offline.

usage: mkbigimage.py OUTDIR ARCH [SCALE_MB]

Tags in OUTDIR/layout:
  big   5 gzip layers, about SCALE_MB (default 400) MB uncompressed:
          1. a static busybox (/bin/busybox + applet links) and /etc basics   (~2 MB)
          2. files of <= 256 KiB from the machine's /usr/share, sorted, 35 % of SCALE
          3. files of <= 1 MiB from the machine's /usr/lib, sorted, 30 % of SCALE
          4. random data, 25 % of SCALE, in 4 MiB files                       (incompressible)
          5. an "app" layer: random data, 8 % of SCALE, and a few small files
  big2  layers 1-4 of big and a different layer 5 (for the incremental pull).
Prints a JSON summary (sizes, digests) on stdout. gzip level 6, as docker and podman push.
"""
import hashlib
import json
import os
import subprocess
import sys
import zlib

out, arch = sys.argv[1], sys.argv[2]
scale = int(sys.argv[3]) << 20 if len(sys.argv) > 3 else 400 << 20
layout = os.path.join(out, "layout")
blobs = os.path.join(layout, "blobs", "sha256")
work = os.path.join(out, "work")
os.makedirs(blobs, exist_ok=True)
os.makedirs(work, exist_ok=True)


def put(data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest


def layer(tar_args: list) -> dict:
    """Run GNU tar with tar_args (writing to stdout); gzip and store its output as a blob."""
    tar = subprocess.Popen(["tar", "--numeric-owner", "--owner=0", "--group=0", "-cf", "-"]
                           + tar_args, stdout=subprocess.PIPE)
    raw, gz = hashlib.sha256(), hashlib.sha256()
    z = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: gzip framing
    tmp = os.path.join(blobs, "tmp")
    usize = csize = 0
    with open(tmp, "wb") as f:
        def emit(b):
            nonlocal csize
            if b:
                gz.update(b)
                f.write(b)
                csize += len(b)
        while True:
            chunk = tar.stdout.read(1 << 20)
            if not chunk:
                break
            raw.update(chunk)
            usize += len(chunk)
            emit(z.compress(chunk))
        emit(z.flush())
    if tar.wait() != 0:
        sys.exit("tar failed: %s" % tar_args)
    digest = "sha256:" + gz.hexdigest()
    os.rename(tmp, os.path.join(blobs, gz.hexdigest()))
    return {"desc": {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                     "size": csize, "digest": digest},
            "diff_id": "sha256:" + raw.hexdigest(), "usize": usize}


def pick(root: str, budget: int, max_file: int) -> list:
    """Directories, symlinks and regular files of at most max_file bytes under root, in sorted
    order, up to budget bytes in all."""
    picked, total = [], 0
    for d, dirs, files in os.walk(root):
        dirs.sort()
        picked.append(d)
        for name in sorted(files):
            p = os.path.join(d, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if not (os.path.islink(p) or os.path.isfile(p)) or not os.access(p, os.R_OK):
                continue
            size = 0 if os.path.islink(p) else st.st_size
            if size > max_file:
                continue
            if total + size > budget:
                return picked
            picked.append(p)
            total += size
    return picked


def files_layer(root: str, budget: int, max_file: int) -> dict:
    lst = os.path.join(work, os.path.basename(root) + ".list")
    with open(lst, "w") as f:
        for p in pick(root, budget, max_file):
            f.write(p.lstrip("/") + "\n")
    return layer(["-C", "/", "--no-recursion", "--files-from", lst])


def random_layer(name: str, total: int, chunk: int = 4 << 20, extra: dict = None) -> dict:
    d = os.path.join(work, name)
    os.makedirs(os.path.join(d, "opt", name), exist_ok=True)
    for i in range(max(1, total // chunk)):
        with open(os.path.join(d, "opt", name, "blob%03d.bin" % i), "wb") as f:
            f.write(os.urandom(chunk))
    for rel, text in (extra or {}).items():
        os.makedirs(os.path.dirname(os.path.join(d, rel)), exist_ok=True)
        with open(os.path.join(d, rel), "w") as f:
            f.write(text)
    return layer(["-C", d, "--sort=name", "."])


# 1. busybox root.
base = os.path.join(work, "base")
for sub in ("bin", "etc", "tmp", "root", "usr/bin", "var", "dev", "proc", "sys", "run"):
    os.makedirs(os.path.join(base, sub), exist_ok=True)
os.chmod(os.path.join(base, "tmp"), 0o1777)
with open("/bin/busybox", "rb") as src, open(os.path.join(base, "bin/busybox"), "wb") as dst:
    dst.write(src.read())
os.chmod(os.path.join(base, "bin/busybox"), 0o755)
applets = subprocess.run([os.path.join(base, "bin/busybox"), "--list"], check=True,
                         capture_output=True, text=True).stdout.split()
for a in applets:
    if not os.path.lexists(os.path.join(base, "bin", a)):
        os.symlink("busybox", os.path.join(base, "bin", a))
with open(os.path.join(base, "etc/passwd"), "w") as f:
    f.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
with open(os.path.join(base, "etc/group"), "w") as f:
    f.write("root:x:0:\nnogroup:x:65534:\n")
layers = [layer(["-C", base, "--sort=name", "."])]
# 2., 3. many small files (compressible), 4. incompressible.
layers.append(files_layer("/usr/share", scale * 35 // 100, 256 << 10))
layers.append(files_layer("/usr/lib", scale * 30 // 100, 1 << 20))
layers.append(random_layer("random", scale * 25 // 100))
app = random_layer("app", scale * 8 // 100, extra={"etc/app.conf": "version=1\n"})
app2 = random_layer("app2", scale * 8 // 100, extra={"etc/app.conf": "version=2\n"})

refs, summary = [], {}
for name, ls in (("big", layers + [app]), ("big2", layers + [app2])):
    config = json.dumps({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin:/usr/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [l["diff_id"] for l in ls]},
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "size": len(config), "digest": put(config)},
        "layers": [l["desc"] for l in ls],
    }).encode()
    refs.append({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                 "size": len(manifest), "digest": put(manifest),
                 "annotations": {"org.opencontainers.image.ref.name": name}})
    summary[name] = {"layers": len(ls),
                     "compressed": sum(l["desc"]["size"] for l in ls),
                     "uncompressed": sum(l["usize"] for l in ls),
                     "layer_compressed": [l["desc"]["size"] for l in ls],
                     "layer_uncompressed": [l["usize"] for l in ls]}
summary["files"] = {"usr/share": sum(1 for _ in open(os.path.join(work, "share.list"))),
                    "usr/lib": sum(1 for _ in open(os.path.join(work, "lib.list")))}

with open(os.path.join(layout, "oci-layout"), "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
with open(os.path.join(layout, "index.json"), "w") as f:
    json.dump({"schemaVersion": 2, "manifests": refs}, f)
subprocess.run(["rm", "-rf", work], check=True)
json.dump(summary, sys.stdout)
print()
