"""Write an OCI image layout (image-spec 1.1) with one layer made of a directory tree.

    python3 scripts/oci_layout.py ROOTFS OUT_DIR NAME TAG

Writes OUT_DIR/<tag>/ (oci-layout, index.json, blobs/sha256/*) and OUT_DIR/<tag>.oci.tar (the
same layout as one archive). The layer is reproducible: entries sorted, owned by root, mtime 0.
The image runs `vramprobe serve` as user 65532 on port 8947.
"""
import gzip, hashlib, io, json, os, shutil, sys, tarfile

rootfs, out, name, tag = sys.argv[1:5]
layout = os.path.join(out, tag)
shutil.rmtree(layout, ignore_errors=True)
blobs = os.path.join(layout, "blobs", "sha256")
os.makedirs(blobs)


def blob(data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest, len(data)


raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
    paths = []
    for d, dirs, files in os.walk(rootfs):
        dirs.sort()
        for n in sorted(dirs) + sorted(files):
            paths.append(os.path.join(d, n))
    for p in sorted(paths):
        info = t.gettarinfo(p, arcname=os.path.relpath(p, rootfs))
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = 0
        if os.path.relpath(p, rootfs).startswith("var/lib/vramprobe"):
            info.uid = info.gid = 65532
        if info.isfile():
            with open(p, "rb") as f:
                t.addfile(info, f)
        else:
            t.addfile(info)
diff_id = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
gz = io.BytesIO()
with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0) as g:
    g.write(raw.getvalue())
layer_digest, layer_size = blob(gz.getvalue())

config = {
    "architecture": "amd64",
    "os": "linux",
    "config": {
        "User": "65532:65532",
        "Entrypoint": ["/usr/local/bin/vramprobe"],
        "Cmd": ["serve"],
        "Env": [
            "PATH=/usr/local/bin:/usr/bin:/bin",
            "VRAMPROBE_LISTEN=0.0.0.0:8947",
            "VRAMPROBE_RUNS_DIR=/var/lib/vramprobe/runs",
            "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
        ],
        "ExposedPorts": {"8947/tcp": {}},
        "WorkingDir": "/var/lib/vramprobe",
        "Labels": {"org.opencontainers.image.title": "vramprobe", "org.opencontainers.image.version": tag},
    },
    "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    "history": [{"created_by": "scripts/build-image.sh"}],
}
config_digest, config_size = blob(json.dumps(config, sort_keys=True).encode())
manifest = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer_size}],
}
manifest_digest, manifest_size = blob(json.dumps(manifest, sort_keys=True).encode())
index = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest,
        "size": manifest_size,
        "annotations": {
            "org.opencontainers.image.ref.name": tag,
            "io.containerd.image.name": f"{name}:{tag}",
        },
    }],
}
with open(os.path.join(layout, "index.json"), "w") as f:
    json.dump(index, f, sort_keys=True)
with open(os.path.join(layout, "oci-layout"), "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
archive = os.path.join(out, f"{tag}.oci.tar")
with tarfile.open(archive, "w") as t:
    for d, dirs, files in os.walk(layout):
        dirs.sort()
        for n in sorted(files):
            p = os.path.join(d, n)
            t.add(p, arcname=os.path.relpath(p, layout))
print(f"{name}:{tag}: {layout} ({layer_size} bytes compressed), {archive}")
