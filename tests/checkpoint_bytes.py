"""The raw bytes of every tensor of a model directory's safetensors files (optimizer shards
skipped), by name: what the shell tests compare to check which tensors a run changed."""
import glob
import json
import struct


def tensors(directory):
    out = {}
    for path in glob.glob(f"{directory}/*.safetensors"):
        if "optimizer" in path:
            continue
        data = open(path, "rb").read()
        n = struct.unpack("<Q", data[:8])[0]
        header = json.loads(data[8:8 + n])
        for name, entry in header.items():
            if name != "__metadata__":
                begin, end = entry["data_offsets"]
                out[name] = data[8 + n + begin:8 + n + end]
    return out
