#!/usr/bin/env python3
"""Write an OCI image layout with the test images the registry tests pull, and expected.json
with their digests. Offline and deterministic apart from the random "big" layer.

usage: mkimage.py OUTDIR HOST_ARCH OTHER_ARCH
"""
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

out, host_arch, other_arch = sys.argv[1], sys.argv[2], sys.argv[3]
layout = os.path.join(out, "layout")
blobs = os.path.join(layout, "blobs", "sha256")
os.makedirs(blobs, exist_ok=True)


def put(data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest


def layer(files: dict) -> tuple:
    """A gzip tar layer of {path: bytes}: (descriptor, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            t.addfile(info, io.BytesIO(data))
    tar = raw.getvalue()
    gz = gzip.compress(tar, compresslevel=1, mtime=0)
    desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": len(gz), "digest": put(gz)}
    return desc, "sha256:" + hashlib.sha256(tar).hexdigest()


def image(layers: list, arch: str, cmd: str) -> dict:
    config = json.dumps({
        "architecture": arch, "os": "linux",
        "config": {"Cmd": ["/bin/sh", "-c", cmd]},
        "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]},
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": len(config),
                   "digest": put(config)},
        "layers": [l for l, _ in layers],
    }).encode()
    return {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": len(manifest),
            "digest": put(manifest), "platform": {"architecture": arch, "os": "linux"}}


base1 = layer({f"etc/base1-{i}": b"base one %d\n" % i for i in range(20)})
base2 = layer({"usr/share/base2": b"base two\n" * 5000})
a_top = layer({"a.txt": b"image a\n"})
b_top = layer({"b.txt": b"image b\n"})
big = layer({"big.bin": os.urandom(16 << 20)})
corrupt = layer({"corrupt.txt": b"will be damaged in the registry\n" * 100})

refs = {}
expected = {}


def tag(name: str, desc: dict) -> None:
    d = dict(desc)
    d["annotations"] = {"org.opencontainers.image.ref.name": name}
    refs[name] = d


def record(name: str, desc: dict, layers: list) -> None:
    manifest = json.load(open(os.path.join(blobs, desc["digest"].split(":")[1])))
    expected[name] = {"manifest": desc["digest"], "config": manifest["config"]["digest"],
                      "layers": [l["digest"] for l, _ in layers],
                      "sizes": [l["size"] for l, _ in layers]}


for name, layers in [("a", [base1, base2, a_top]), ("b", [base1, base2, b_top]),
                     ("big", [big]), ("corrupt", [base1, corrupt])]:
    desc = image(layers, host_arch, name)
    tag(name, desc)
    record(name, desc, layers)

# An index whose first entry is another architecture, so taking the first entry is wrong.
other = image([base1, layer({"arch.txt": other_arch.encode()})], other_arch, "other")
host_layers = [base1, layer({"arch.txt": host_arch.encode()})]
host = image(host_layers, host_arch, "host")
index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                    "manifests": [other, host]}).encode()
index_desc = {"mediaType": "application/vnd.oci.image.index.v1+json", "size": len(index),
              "digest": put(index)}
tag("multi", index_desc)
record("multi", host, host_layers)
expected["multi"]["index"] = index_desc["digest"]
expected["multi"]["other_manifest"] = other["digest"]

with open(os.path.join(layout, "oci-layout"), "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
with open(os.path.join(layout, "index.json"), "w") as f:
    json.dump({"schemaVersion": 2, "manifests": list(refs.values())}, f)
with open(os.path.join(out, "expected.json"), "w") as f:
    json.dump(expected, f, indent=1)
